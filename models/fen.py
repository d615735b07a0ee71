"""FENet: Frequency-Based Enhancement Network for Efficient Super-Resolution (IEEE Access 2022).

A lightweight SR CNN (Behjati et al.), unrelated to FeNet. Every conv is weight-normalised. A 3x3
stem (64 ch) feeds 12 frequency-based enhancement blocks (FEB): a low-frequency path (1x1, 3x3) and a
high-frequency path (1x1, then FE: x minus its 4x4-average-pooled copy drives a sigmoid gate on a
3x3 conv), merged by a 1x1 conv with a residual. The stem and all 12 block outputs are concatenated
(13 x 64 ch), reduced by 1x1 conv + ReLU, added to the last block output, upsampled by log2(scale)
stages of grouped 3x3 conv (groups=4) + ReLU + PixelShuffle(2), mapped to 1 channel and added to a
bicubic upsampling of the input.

Reproduces upstream GrokLST `groklst/models/editors/FEN/FENet.py::FENet` (group=4, 12 blocks, 64 ch).
Parameters: x2 635,778 / x4 673,154 / x8 710,530. Weight norm is written out as `WNConv2d`
(weight = weight_g * weight_v / ||weight_v||, norm over all dims but the first), with the same
`weight_g` / `weight_v` parameters and initialisation as the legacy `torch.nn.utils.weight_norm`
upstream uses, so state_dict keys match upstream; outputs were compared with upstream on shared
weights (identical to float precision).

Input size: h, w >= 4 (the FE average pool has kernel 4); otherwise any h, w.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class WNConv2d(nn.Conv2d):
    """Conv2d with weight normalisation: parameters weight_g (out, 1, 1, 1), weight_v, bias."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        v = self.weight.detach()
        del self.weight
        self.weight_v = nn.Parameter(v.clone())
        self.weight_g = nn.Parameter(v.flatten(1).norm(dim=1).view(-1, 1, 1, 1))

    def forward(self, x):
        w = self.weight_v * (self.weight_g / self.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        return self._conv_forward(x, w, self.bias)


class BasicConv2d(nn.Module):
    """Weight-normalised conv + ReLU."""

    def __init__(self, in_planes, out_planes, kernel_size, stride, padding=0):
        super().__init__()
        self.conv = WNConv2d(in_planes, out_planes, kernel_size, stride, padding, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv(x))


class _UpsampleBlock(nn.Module):
    """log2(scale) x [grouped 3x3 conv C -> 4C, ReLU, PixelShuffle(2)] (scale 2, 4 or 8)."""

    def __init__(self, n_channels, scale, group=1):
        super().__init__()
        assert scale in (2, 4, 8), scale
        layers = []
        for _ in range(int(math.log2(scale))):
            layers += [WNConv2d(n_channels, 4 * n_channels, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
                       nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class UpsampleBlock(nn.Module):
    """Single-scale wrapper kept so that parameter names match upstream (`upscample.up.body.*`)."""

    def __init__(self, n_channels, scale, group=1):
        super().__init__()
        self.up = _UpsampleBlock(n_channels, scale, group)

    def forward(self, x):
        return self.up(x)


class FE(nn.Module):
    """Frequency enhancement: high-pass h = x - up(avgpool4(x)); out = k4(k3(x) * sigmoid(k2(h) + x))."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=4, stride=4)
        self.k2 = WNConv2d(in_channels, channels, 3, 1, 1, bias=False)
        self.k3 = WNConv2d(in_channels, channels, 3, 1, 1, bias=False)
        self.k4 = WNConv2d(in_channels, channels, 3, 1, 1, bias=False)

    def forward(self, x):
        low = F.interpolate(self.pool(x), x.shape[-2:], mode="nearest")
        gate = torch.sigmoid(self.k2(x - low) + x)
        return self.k4(self.k3(x) * gate)


class FEB(nn.Module):
    """Frequency-based enhancement block: low- and high-frequency paths on C/2 channels, 1x1 merge, residual."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        c = in_channels // 2
        self.path_1 = WNConv2d(in_channels, c, 1, bias=False)
        self.path_2 = WNConv2d(in_channels, c, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.k1 = WNConv2d(c, c, 3, 1, 1, bias=False)
        self.HConv = FE(c, c)
        self.conv = WNConv2d(c * 2, in_channels, 1, bias=False)

    def forward(self, x):
        low = self.relu(self.k1(self.relu(self.path_1(x))))
        high = self.relu(self.HConv(self.relu(self.path_2(x))))
        return self.conv(torch.cat([low, high], dim=1)) + x


class FENet(nn.Module):
    """FENet for 1-channel LST (the LST channel count `lst_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (log2(scale) grouped conv + PixelShuffle(2) stages).
        group: groups of the upsampler's 3x3 convs (4; must divide the 64 channels).
    """

    kind = "sisr"
    scales = (2, 4, 8)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, group=4):
        super().__init__()
        self.scale = scale
        self.n_blocks = 12
        self.entry_1 = WNConv2d(LST_CHANNELS, 64, 3, 1, 1)
        self.body = nn.Sequential(*[FEB(64, 64) for _ in range(self.n_blocks)])
        self.reduction = BasicConv2d(64 * (self.n_blocks + 1), 64, 1, 1, 0)
        self.upscample = UpsampleBlock(64, scale, group)
        self.exit = WNConv2d(64, LST_CHANNELS, 3, 1, 1)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        h, w = lr_lst.shape[-2:]
        x = self.entry_1(lr_lst)
        feats = [x]
        for block in self.body:
            x = block(x)
            feats.append(x)
        out = self.reduction(torch.cat(feats, 1)) + x
        out = self.exit(self.upscample(out))
        skip = F.interpolate(lr_lst, (h * self.scale, w * self.scale), mode="bicubic", align_corners=False)
        return out + skip
