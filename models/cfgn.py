"""CFGN: A Lightweight Context Feature Guided Network for Image Super-Resolution (IEEE TETCI 2023).

A lightweight SR CNN (Peng et al.). A 3x3 stem (48 ch) feeds 6 main blocks; each main block runs
three shallow residual blocks (3x3 conv + identity, LeakyReLU 0.05) and taps a 24-channel 1x1
projection before each of them plus a 24-channel 3x3 projection after the last, concatenates the four
taps (96 ch), fuses them with 1x1 conv + LeakyReLU, applies contrast-aware channel attention (CCA:
per-channel std + mean -> squeeze/excite) and adds its input. The stem output and all 6 block outputs
(7 x 48 ch) are fused (1x1, LeakyReLU, 3x3), added to the stem, and a 3x3 conv + PixelShuffle head
produces the image. There is no interpolation skip.

Reproduces upstream GrokLST `groklst/models/editors/cfgn/cfgn.py::CFGN`, whose constructor hard-codes
n_feats=48, n_resgroups=6, act="identity", block_type="base" (SRB); only that configuration is
written here (the unused CFGM / butterfly block variants are omitted). Parameters: x2 528,520 /
x4 533,716 / x8 554,500. state_dict keys match upstream; outputs were compared with upstream on
shared weights (identical to float precision). Input size: any h, w.
"""
import torch
import torch.nn as nn

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


def stdv_channels(x):
    """Per-channel spatial standard deviation, (B, C, H, W) -> (B, C, 1, 1)."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    return (x - mu).pow(2).mean(dim=(2, 3), keepdim=True).pow(0.5)


class CCALayer(nn.Module):
    """Contrast-aware channel attention: x * sigmoid(MLP(std(x) + mean(x)))."""

    def __init__(self, channel, reduction=8):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=True), nn.LeakyReLU(0.05, inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=True), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(stdv_channels(x) + self.avg_pool(x))


class SRB(nn.Module):
    """Shallow residual block: LeakyReLU(conv3x3(x) + x)."""

    def __init__(self, in_channels):
        super().__init__()
        self.conv3x3 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.act = nn.LeakyReLU(0.05, inplace=True)

    def forward(self, x):
        return self.act(self.conv3x3(x) + x)


class MainBlock(nn.Module):
    """Three SRBs with 1x1 taps (C/2 each) + final 3x3 tap (C/2), fused by 1x1 + LeakyReLU, CCA, residual.

    The projection activations are identity (upstream act="identity"); they are kept as nn.Identity
    inside the Sequentials so parameter names match upstream.
    """

    def __init__(self, in_channels, num=3):
        super().__init__()
        self.num = num
        c, half = in_channels, in_channels // 2
        self.blocks = nn.Sequential(*[SRB(c) for _ in range(num)])
        self.conv1x1s = nn.Sequential(*[nn.Sequential(nn.Conv2d(c, half, 1, 1, 0), nn.Identity()) for _ in range(num)])
        self.conv3x3 = nn.Sequential(nn.Conv2d(c, half, 3, 1, 1), nn.Identity())
        self.conv1x1_act = nn.Sequential(nn.Conv2d(half * (num + 1), c, 1, 1, 0), nn.LeakyReLU(0.05, inplace=True))
        self.cca = CCALayer(c)

    def forward(self, x):
        now, taps = x, []
        for i in range(self.num):
            taps.append(self.conv1x1s[i](now))
            now = self.blocks[i](now)
        taps.append(self.conv3x3(now))
        return self.cca(self.conv1x1_act(torch.cat(taps, 1))) + x


class CFGN(nn.Module):
    """CFGN for 1-channel LST (the LST channel count `lst_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (one conv + PixelShuffle(scale) head).
        n_feats: channel width of the stem and of every main block (48).
        n_resgroups: number of main blocks (6); all their outputs are fused before the head.
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, n_feats=48, n_resgroups=6):
        super().__init__()
        self.head_conv = nn.Conv2d(LST_CHANNELS, n_feats, 3, 1, 1)
        self.body = nn.Sequential(*[MainBlock(n_feats) for _ in range(n_resgroups)])
        self.features_fusion_module = nn.Sequential(
            nn.Conv2d(n_feats * (n_resgroups + 1), n_feats, 1, 1, 0), nn.LeakyReLU(0.05, inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, 1, 1), nn.Identity())
        self.upsampler = nn.Sequential(nn.Conv2d(n_feats, LST_CHANNELS * scale * scale, 3, 1, 1),
                                       nn.PixelShuffle(scale))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        x = self.head_conv(lr_lst)
        now, outs = x, [x]
        for block in self.body:
            now = block(now)
            outs.append(now)
        return self.upsampler(self.features_fusion_module(torch.cat(outs, 1)) + x)
