"""HAN: Single Image Super-Resolution via a Holistic Attention Network (ECCV 2020).

Niu et al.'s extension of RCAN (128 features): 3x3 stem -> 10 residual groups of 20 residual
channel-attention blocks (+ a final 3x3 conv; 11 body stages). Two attention heads follow:
  * layer attention (LAM): the 11 stage outputs are stacked (B, 11, C, h, w), an 11x11 affinity
    between whole stage maps re-weights them (softmax of max - energy), scaled by a learnt gamma
    (init 0) and added back; a 3x3 conv fuses the 11*C channels to C;
  * channel-spatial attention (CSAM): a 3x3x3 Conv3d over (C, h, w) of the last stage, sigmoid,
    scaled by a learnt gamma (init 0), used as x * att + x.
Both are concatenated, fused by a 3x3 conv, added to the stem output (long skip) and upsampled by
log2(scale) x (3x3 conv to 4C + PixelShuffle(2)) -> 3x3 conv to 1 channel. No RGB MeanShift.

Reproduces upstream GrokLST `groklst/models/editors/han/han.py::HAN` (n_resgroups=10, n_resblocks=20,
n_feats=128, reduction=16, hard-coded upstream, exposed here as kwargs with those defaults).
Parameters: x2 63,603,807 / x4 64,194,143 / x8 64,784,479. state_dict keys match upstream (head, body,
csa, la, last_conv, last, tail); outputs were compared with upstream on shared weights (identical).
Input size: any h, w.
"""
import math

import torch
import torch.nn as nn

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


def default_conv(in_channels, out_channels, kernel_size, bias=True):
    """'Same'-padded conv."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class Upsampler(nn.Sequential):
    """(B, C, h, w) -> (B, C, scale*h, scale*w): log2(scale) x (conv C -> 4C, PixelShuffle(2)), or one x3 step."""

    def __init__(self, scale, n_feats):
        layers = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [default_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [default_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} not supported (2^n or 3)")
        super().__init__(*layers)


class CALayer(nn.Module):
    """Channel attention: x * sigmoid(MLP(avgpool(x))), MLP = 1x1 convs C -> C/r -> C."""

    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    """Residual channel-attention block: x + CA(conv(relu(conv(x))))."""

    def __init__(self, n_feat, kernel_size=3, reduction=16):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feat, n_feat, kernel_size), nn.ReLU(True),
                                  default_conv(n_feat, n_feat, kernel_size), CALayer(n_feat, reduction))

    def forward(self, x):
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """x + conv(RCAB^n(x))."""

    def __init__(self, n_feat, kernel_size, reduction, n_resblocks):
        super().__init__()
        layers = [RCAB(n_feat, kernel_size, reduction) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*layers, default_conv(n_feat, n_feat, kernel_size))

    def forward(self, x):
        return x + self.body(x)


class LAM_Module(nn.Module):
    """Layer attention: (B, N, C, h, w) -> (B, N*C, h, w)."""

    def __init__(self, in_dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, n, c, h, w = x.shape
        q = x.reshape(b, n, -1)
        energy = torch.bmm(q, q.transpose(1, 2))  # (B, N, N)
        attn = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
        out = torch.bmm(attn, q).view(b, n, c, h, w)
        return (self.gamma * out + x).view(b, n * c, h, w)


class CSAM_Module(nn.Module):
    """Channel-spatial attention: x * (gamma * sigmoid(conv3d(x))) + x, (B, C, h, w) -> same."""

    def __init__(self, in_dim):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, 1, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        att = self.gamma * torch.sigmoid(self.conv(x.unsqueeze(1)))
        return x * att.squeeze(1) + x


class HAN(nn.Module):
    """HAN for 1-channel LST (the LST channel count `n_colors` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (log2(scale) conv + PixelShuffle(2) stages).
        n_resgroups: number of residual groups (10).
        n_resblocks: residual channel-attention blocks (RCAB) per group (20).
        n_feats: channel width of the stem, body and upsampler (128).
        reduction: channel-attention squeeze ratio (16).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, n_resgroups=10, n_resblocks=20, n_feats=128, reduction=16):
        super().__init__()
        self.head = nn.Sequential(default_conv(LST_CHANNELS, n_feats, 3))
        groups = [ResidualGroup(n_feats, 3, reduction, n_resblocks) for _ in range(n_resgroups)]
        self.body = nn.Sequential(*groups, default_conv(n_feats, n_feats, 3))
        self.csa = CSAM_Module(n_feats)
        self.la = LAM_Module(n_feats)
        self.last_conv = nn.Conv2d(n_feats * (n_resgroups + 1), n_feats, 3, 1, 1)
        self.last = nn.Conv2d(n_feats * 2, n_feats, 3, 1, 1)
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, LST_CHANNELS, 3))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        x = self.head(lr_lst)
        res, stages = x, []
        for layer in self.body:
            res = layer(res)
            stages.append(res)
        stacked = torch.stack(stages[::-1], 1)  # (B, 11, C, h, w), newest stage first (as upstream)
        out = torch.cat([self.csa(res), self.last_conv(self.la(stacked))], 1)
        return self.tail(self.last(out) + x)
