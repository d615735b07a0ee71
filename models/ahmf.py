"""AHMF: High-Resolution Depth Maps Imaging via Attention-Based Hierarchical Multi-Modal Fusion (TIP 2022).

Guided LST super-resolution working at LR. The HR guidance is brought to LR by log2(scale) pixel-unshuffle
+ conv stages; LST and guidance each go through 3 more convs, giving 4-level feature hierarchies. Each level
pair is fused (gated convs + MMAB: squeeze conv, mean+variance pooled channel attention on both modalities +
residual block); the 4 fused levels are treated as a sequence and passed through a forward and a backward
2-layer ConvGRU; per level the two hidden states are summed and refined (residual block); the 4 results are
concatenated, upsampled (conv + pixel shuffle stages) and added to the bicubic-upsampled LST.
Reproduces upstream GrokLST `ahmf/AHMF` (editors/ahmf/ahmf_net.py + common.py); state_dict keys match
upstream (upstream `dep_in_channels` is fixed to 1: LST).

Parameters (guidance_channels=10, act='PReLU'): x2 2,509,864  x4 2,542,954  x8 3,362,476
(the down/up-sampler convs are 1x1 for x2/x4 and 3x3 for x8, as upstream).

Input sizes: any h, w (lr_multiple = 1). Upstream's ConvGRU allocated its zero state with `.cuda()`; here
it follows the input's device/dtype (no numerical change).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def get_act(act):
    return {"PReLU": lambda: nn.PReLU(), "ReLU": lambda: nn.ReLU(True), "Sigmoid": lambda: nn.Sigmoid(),
            "LeakyReLU": lambda: nn.LeakyReLU(0.02, True), "ELU": lambda: nn.ELU(inplace=True)}[act]()


class ConvBNReLU2D(nn.Module):
    """Conv2d (`layers`) -> optional activation (no normalisation is used by AHMF)."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, act=None):
        super().__init__()
        self.layers = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.act = get_act(act) if act else None

    def forward(self, x):
        x = self.layers(x)
        return self.act(x) if self.act is not None else x


def _sampler_kernel(scale):
    return 3 if scale == 8 else 5 if scale == 16 else 1


def inv_up_sampler(scale, n_feats):
    """log2(scale) x [pixel-unshuffle 2, conv 4F->F, PReLU]: (B, F, H, W) -> (B, F, H/s, W/s)."""
    k, m = _sampler_kernel(scale), []
    for _ in range(int(math.log2(scale))):
        m += [nn.PixelUnshuffle(2), nn.Conv2d(4 * n_feats, n_feats, k, padding=k // 2), nn.PReLU()]
    return m


def up_sampler(scale, n_feats):
    """log2(scale) x [conv F->4F, pixel-shuffle 2, PReLU]: (B, F, h, w) -> (B, F, h*s, w*s)."""
    k, m = _sampler_kernel(scale), []
    for _ in range(int(math.log2(scale))):
        m += [nn.Conv2d(n_feats, 4 * n_feats, k, padding=k // 2), nn.PixelShuffle(2), nn.PReLU()]
    return m


class FeatureInitialization(nn.Module):
    def __init__(self, num_features, scale, guidance_channel):
        super().__init__()
        self.depth_in = nn.Sequential(nn.Conv2d(1, num_features, 3, padding=1), nn.PReLU())
        self.guidance_in = nn.Sequential(nn.Conv2d(guidance_channel, num_features, 3, padding=1), nn.PReLU(),
                                         nn.Sequential(*inv_up_sampler(scale, num_features)))

    def forward(self, depth, guidance):
        return self.depth_in(depth), self.guidance_in(guidance)


class ResNet(nn.Module):
    def __init__(self, num_features, act):
        super().__init__()
        self.layers = nn.Sequential(ConvBNReLU2D(num_features, num_features, 3, padding=1, act=act),
                                    ConvBNReLU2D(num_features, num_features, 3, padding=1))
        self.act = get_act(act)

    def forward(self, x):
        return self.act(self.layers(x) + x)


class Compress(nn.Module):
    """Sum of the two GRU directions -> residual block (upstream fuse_way='add')."""

    def __init__(self, num_features, act):
        super().__init__()
        self.layers = ResNet(num_features, act)

    def forward(self, a, b):
        return self.layers(a + b)


class GateConv2D(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.Attention = nn.Sequential(nn.Conv2d(num_features, num_features, 3, padding=1), nn.Sigmoid())
        self.Feature = nn.Sequential(nn.Conv2d(num_features, num_features, 3, padding=1), nn.PReLU())

    def forward(self, x):
        return self.Attention(x) * self.Feature(x)


class MMAB(nn.Module):
    """Multi-modal attention: channel weights for both modalities from mean + variance pooled joint features."""

    def __init__(self, num_features, reduction_ratio=4):
        super().__init__()
        r = num_features * 2 // reduction_ratio
        self.squeeze = ConvBNReLU2D(num_features * 2, r, 3, padding=1, act="PReLU")
        self.excitation1 = ConvBNReLU2D(r, num_features, 1, act="Sigmoid")
        self.excitation2 = ConvBNReLU2D(r, num_features, 1, act="Sigmoid")

    def forward(self, depth, guidance):
        f = self.squeeze(torch.cat((depth, guidance), 1))
        mean = f.mean((2, 3), keepdim=True)
        stat = mean + (f - mean).pow(2).mean((2, 3), keepdim=True)  # avg pool + variance pool
        return self.excitation1(stat) * depth / 2, self.excitation2(stat) * guidance / 2


class FuseNet(nn.Module):
    def __init__(self, num_features, reduction_ratio, act):
        super().__init__()
        self.filter_conv = GateConv2D(num_features)
        self.filter_conv1 = GateConv2D(num_features)
        self.attention_layer = MMAB(num_features, reduction_ratio)
        self.res_conv = ResNet(num_features, act)

    def forward(self, depth, guide):
        depth, guide = self.attention_layer(self.filter_conv1(depth), self.filter_conv(guide))
        return self.res_conv(depth + guide)


class ConvGRUCell(nn.Module):
    def __init__(self, in_channels, hidden_channels, kernel_size=3):
        super().__init__()
        c, p = in_channels + hidden_channels, kernel_size // 2
        self.update_gate = nn.Conv2d(c, hidden_channels, kernel_size, padding=p)
        self.reset_gate = nn.Conv2d(c, hidden_channels, kernel_size, padding=p)
        self.out_gate = nn.Conv2d(c, hidden_channels, kernel_size, padding=p)

    def forward(self, x, h):
        xh = torch.cat((x, h), 1)
        update, reset = torch.sigmoid(self.update_gate(xh)), torch.sigmoid(self.reset_gate(xh))
        cand = torch.tanh(self.out_gate(torch.cat((x, h * reset), 1)))
        return h * (1 - update) + cand * update


class ConvGRU(nn.Module):
    """Stacked ConvGRU over a sequence (B, T, C, H, W) -> last layer's hidden states (B, T, hidden, H, W)."""

    def __init__(self, in_channels, hidden_channels, kernel_size=3, num_layers=2):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.cell_list = nn.ModuleList(
            ConvGRUCell(in_channels if i == 0 else hidden_channels, hidden_channels, kernel_size)
            for i in range(num_layers))

    def forward(self, seq):
        B, T, _, H, W = seq.shape
        for cell in self.cell_list:
            h, outs = seq.new_zeros(B, self.hidden_channels, H, W), []
            for t in range(T):
                h = cell(seq[:, t], h)
                outs.append(h)
            seq = torch.stack(outs, 1)
        return seq


class AHMF(nn.Module):
    """AHMF (upstream ahmf/AHMF). Params x2 2,509,864  x4 2,542,954  x8 3,362,476.

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (log2(scale) pixel-(un)shuffle stages down and up).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        act: activation of the feature convs: 'PReLU' (default), 'ReLU', 'LeakyReLU', 'ELU' or 'Sigmoid'.
        num_features: channel width of both branches and of the fusion (64).

    HR 512x512, B=1, x8 (LR 64), one forward+backward, CPU 2 threads (fresh process, max RSS; shared 2-core
    machine at load ~9): peak RSS 1.06 GB, 31 s.
    """

    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, act="PReLU", num_features=64):
        super().__init__()
        n = num_features
        self.scale = scale
        self.head = FeatureInitialization(n, scale, guidance_channels)
        self.rgb_conv = nn.ModuleList(ConvBNReLU2D(n, n, 3, padding=1, act=act) for _ in range(3))
        self.depth_conv = nn.ModuleList(ConvBNReLU2D(n, n, 3, padding=1, act=act) for _ in range(3))
        self.fuse_conv = nn.ModuleList(FuseNet(n, 4, act) for _ in range(4))
        self.compress_out = nn.ModuleList(Compress(n, act) for _ in range(4))
        self.forward_gru_cell = ConvGRU(n, n, 3)
        self.reverse_gru_cell = ConvGRU(n, n, 3)
        self.up_conv = nn.Sequential(ConvBNReLU2D(n * 4, n, 1, act=act), *up_sampler(scale, n),
                                     ConvBNReLU2D(n, 1, 3, padding=1))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        hr_lst = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        d, g = self.head(lr_lst, hr_guidance)  # both (B, F, h, w)
        depth_out, guide_out = [d], [g]
        for i in range(3):
            guide_out.append(self.rgb_conv[i](guide_out[-1]))
            depth_out.append(self.depth_conv[i](depth_out[-1]))
        fused = torch.stack([self.fuse_conv[i](depth_out[3 - i], guide_out[3 - i]) for i in range(4)], 1)
        fwd = self.forward_gru_cell(fused)
        bwd = self.reverse_gru_cell(fused.flip(1)).flip(1)
        out = torch.cat([self.compress_out[i](fwd[:, i], bwd[:, i]) for i in range(4)], 1)
        return self.up_conv(out) + hr_lst
