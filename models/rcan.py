"""RCAN: Image Super-Resolution Using Very Deep Residual Channel Attention Networks (ECCV 2018).

Zhang et al.'s residual-in-residual network: 3x3 stem -> 10 residual groups, each of 20 residual
channel-attention blocks (conv-ReLU-conv, then squeeze-excitation gating: global average pool ->
1x1 C -> C/16 -> ReLU -> 1x1 C/16 -> C -> sigmoid) plus a 3x3 conv and a group skip -> 3x3 conv +
long skip -> log2(scale) x (3x3 conv to 4C + PixelShuffle(2)) -> 3x3 conv to 1 channel.
No RGB MeanShift (LST is one channel).

Reproduces upstream GrokLST `groklst/models/editors/rcan/rcan.py::RCAN` (n_resgroups=10,
n_resblocks=20, n_feats=64, reduction=16, hard-coded upstream, exposed here as kwargs with those
defaults). Parameters: x2 15,442,337 / x4 15,590,049 / x8 15,737,761. state_dict keys match upstream
(head, body, tail); outputs were compared with upstream on shared weights (identical).
Input size: any h, w.
"""
import math

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


class RCAN(nn.Module):
    """RCAN for 1-channel LST (the LST channel count `n_colors` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (log2(scale) conv + PixelShuffle(2) stages).
        n_resgroups: number of residual groups (10).
        n_resblocks: residual channel-attention blocks (RCAB) per group (20).
        n_feats: channel width of the stem, body and upsampler (64).
        reduction: channel-attention squeeze ratio (16).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16):
        super().__init__()
        self.head = nn.Sequential(default_conv(LST_CHANNELS, n_feats, 3))
        groups = [ResidualGroup(n_feats, 3, reduction, n_resblocks) for _ in range(n_resgroups)]
        self.body = nn.Sequential(*groups, default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, LST_CHANNELS, 3))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        x = self.head(lr_lst)
        return self.tail(x + self.body(x))
