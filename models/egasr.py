"""EGASR: Cross-sensor remote sensing imagery super-resolution via an edge-guided attention-based network (ISPRS JPRS 2023).

An RCAN-like residual-in-residual CNN (Qiu et al.): a 3x3 head, 10 Residual Edge-enhanced Groups (REG) of 16
Edge-guided Residual Attention Blocks (EGRAB), a PixelShuffle upsampler and a bilinear skip of the input.
Each EGRAB = conv-PReLU-conv followed by a CoreModule that fuses a plain residual branch with an edge branch
(1x1 conv then fixed Sobel-x / Sobel-y / Laplacian 3x3 depthwise templates with learned per-channel scale,
concatenated, reduced, spatial attention) by an SK-style softmax selection over the two branches.
Reproduces upstream GrokLST `models/editors/egasr` class `EGASR` (n_feats 64, n_resgroups 10, n_resblocks 16).
Parameters: x2 35,443,298 / x4 35,591,010 / x8 35,738,722 (equal to upstream). The 3x3 body conv `conv` is
applied twice (before and after the groups) with shared weights, as upstream; `gamma` (init 0) scales the
group-level skip from the first body feature.

Parameters that never receive a gradient, kept so the count and state_dict match upstream (listed in
`unused_parameters`, which is built per instance for the actual depth):
  * `...CoreModule.conv3x3` (36,928 per block, 5.9 M in total): created upstream but never used in forward.
  * `...edgeconvs.i.0.template` (576 per edge conv): fixed Sobel/Laplacian kernels stored as
    nn.Parameter(requires_grad=False) upstream.
`reduction`, `res_scale` are accepted for config compatibility and unused (as upstream).
state_dict keys match upstream (head.0, REGs.g.body.b.{0,1,2,3}, ...); outputs were compared on shared weights.
Any input size works (lr_multiple 1).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


def default_conv(in_channels, out_channels, kernel_size, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class Upsampler(nn.Sequential):
    """log2(scale) x [3x3 conv C -> 4C, PixelShuffle(2)] (scale 3: one conv C -> 9C, PixelShuffle(3))."""

    def __init__(self, conv, scale, n_feat, bias=True):
        layers = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv(n_feat, 4 * n_feat, 3, bias), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv(n_feat, 9 * n_feat, 3, bias), nn.PixelShuffle(3)]
        else:
            raise NotImplementedError(f"scale {scale}")
        super().__init__(*layers)


# 3x3 edge templates (row-major): Sobel-x, Sobel-y, Laplacian
EDGE_TEMPLATES = {
    "conv1-sobelx": ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0)),
    "conv1-sobely": ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0)),
    "conv1-laplacian": ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
}


class EdgeConv(nn.Module):
    """1x1 conv (k0, b0) then a depthwise 3x3 edge filter (scale_c * template) + bias.
    The 1x1 output is padded with its own bias (= the 1x1 conv of a zero-padded input). (B,C,H,W)->(B,C',H,W)."""

    def __init__(self, conv_edge, in_channels, out_channels):
        super().__init__()
        if conv_edge not in EDGE_TEMPLATES:
            raise ValueError(f"unknown edge conv {conv_edge}")
        conv0 = nn.Conv2d(in_channels, out_channels, 1)  # default init, parameters taken over
        self.k0, self.b0 = conv0.weight, conv0.bias
        self.scale = nn.Parameter(torch.randn(out_channels, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_channels) * 1e-3)
        t = torch.tensor(EDGE_TEMPLATES[conv_edge]).view(1, 1, 3, 3).repeat(out_channels, 1, 1, 1)
        self.template = nn.Parameter(t, requires_grad=False)  # fixed (upstream stores it as a frozen parameter)

    def forward(self, x):
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.k0, self.b0)
        return F.conv2d(y, self.scale * self.template, self.bias, groups=self.template.shape[0])


class ResidualBlock_noBN(nn.Module):
    """x + conv(PReLU(conv(x))), convs Kaiming-init scaled by 0.1."""

    def __init__(self, nf=64):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.act = nn.PReLU(num_parameters=nf)
        for c in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(c.weight, a=0, mode="fan_in")
            c.weight.data.mul_(0.1)
            nn.init.zeros_(c.bias)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class SpatialAttention(nn.Module):
    """Sigmoid(conv7x7([mean_c(x), max_c(x)])): (B, C, H, W) -> (B, 1, H, W)."""

    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):
        return torch.sigmoid(self.conv1(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


class CoreModule(nn.Module):
    """Selective fusion of a residual branch and an edge-attention branch (M = 2 branches)."""

    def __init__(self, features, M=2, r=2, L=32):
        super().__init__()
        d = max(features // r, L)
        self.recon_trunk = ResidualBlock_noBN(features)
        self.conv3x3 = nn.Conv2d(features, features, 3, padding=1)  # unused in forward (as upstream)
        kinds = ("conv1-sobelx", "conv1-sobely", "conv1-laplacian")
        self.edgeconvs = nn.ModuleList([nn.Sequential(EdgeConv(k, features, features)) for k in kinds])
        self.conv_reduce = nn.Conv2d(features * len(kinds), features, 1)
        self.sa = SpatialAttention()
        self.fc = nn.Linear(features, d)
        self.fcs = nn.ModuleList([nn.Linear(d, features) for _ in range(M)])

    def _edges(self, x):
        """The three EdgeConvs, concatenated along channels, computed as one 1x1 conv + one depthwise conv
        (same result as torch.cat([ec(x) for ec in self.edgeconvs], 1), fewer kernel launches)."""
        ecs = [seq[0] for seq in self.edgeconvs]
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), torch.cat([e.k0 for e in ecs]), torch.cat([e.b0 for e in ecs]))
        w = torch.cat([e.scale * e.template for e in ecs])
        return F.conv2d(y, w, torch.cat([e.bias for e in ecs]), groups=w.shape[0])

    def forward(self, x):
        out = self.recon_trunk(x)
        edge = self.conv_reduce(self._edges(x))
        edge = self.sa(edge) * edge
        branches = torch.stack([out, edge], 1)  # B, 2, C, H, W
        z = self.fc(branches.sum(1).mean((2, 3)))  # B, d
        weights = torch.stack([fc(z) for fc in self.fcs], 1).softmax(dim=1)  # B, 2, C
        return (branches * weights[..., None, None]).sum(1)


class EGRAB(nn.Module):
    """x + CoreModule(conv(PReLU(conv(x))))."""

    def __init__(self, conv, n_feat, kernel_size):
        super().__init__()
        self.body = nn.Sequential(conv(n_feat, n_feat, kernel_size), nn.PReLU(),
                                  conv(n_feat, n_feat, kernel_size), CoreModule(n_feat))

    def forward(self, x):
        return self.body(x) + x


class REG(nn.Module):
    """x + conv(EGRAB^n(x))."""

    def __init__(self, conv, n_feat, kernel_size, n_resblocks):
        super().__init__()
        self.body = nn.Sequential(*[EGRAB(conv, n_feat, kernel_size) for _ in range(n_resblocks)],
                                  conv(n_feat, n_feat, kernel_size))

    def forward(self, x):
        return self.body(x) + x


def _unused_names(n_resgroups, n_resblocks):
    """Names of the never-updated parameters (unused conv3x3 and frozen edge templates)."""
    names = []
    for g in range(n_resgroups):
        for b in range(n_resblocks):
            core = f"REGs.{g}.body.{b}.body.3."
            names.append(core + "conv3x3.")
            names += [core + f"edgeconvs.{e}.0.template" for e in range(3)]
    return tuple(names)


class EGASR(nn.Module):
    """EGASR for single-image LST super-resolution (the LST channel count `n_colors` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (log2(scale) conv + PixelShuffle(2) stages).
        kernel_size: side of the body convolutions, in LR pixels (3).
        n_feats: channel width of the head, body and upsampler (64).
        n_resgroups: number of residual edge-enhanced groups (REG) (10).
        n_resblocks: edge-guided residual attention blocks (EGRAB) per group (16).
        reduction: accepted for config parity, unused (as upstream).
        res_scale: accepted for config parity, unused (as upstream).
        conv: factory conv(in_channels, out_channels, kernel_size, bias=True) -> nn.Module of the head,
            body, upsampler and tail convs (default_conv: 'same'-padded nn.Conv2d); Python only, not
            settable from YAML.
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = _unused_names(10, 16)  # default depth; the instance attribute follows the real depth

    def __init__(self, scale: int = 8, kernel_size: int = 3, n_feats: int = 64,
                 n_resgroups: int = 10, n_resblocks: int = 16, reduction: int = 16, res_scale: float = 1,
                 conv=default_conv):
        super().__init__()
        self.scale = scale
        self.unused_parameters = _unused_names(n_resgroups, n_resblocks)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.head = nn.Sequential(conv(LST_CHANNELS, n_feats, kernel_size))
        self.REGs = nn.ModuleList([REG(conv, n_feats, kernel_size, n_resblocks) for _ in range(n_resgroups)])
        self.conv = conv(n_feats, n_feats, kernel_size)
        self.tail = nn.Sequential(Upsampler(conv, scale, n_feats), conv(n_feats, LST_CHANNELS, kernel_size))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        x = self.conv(self.head(lr_lst))
        skip = x
        for group in self.REGs:
            x = group(x) + self.gamma * skip
        out = self.tail(self.conv(x))  # the same `conv` again (shared weights, as upstream)
        return out + F.interpolate(lr_lst, scale_factor=self.scale, mode="bilinear", align_corners=False)
