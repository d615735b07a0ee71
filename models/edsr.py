"""EDSR: Enhanced Deep Residual Networks for Single Image Super-Resolution (CVPRW 2017).

Lim et al.'s residual SR network: 3x3 stem -> `num_blocks` residual blocks without batch norm
(conv-ReLU-conv, scaled by `res_scale`) -> 3x3 conv + global skip -> log2(scale) stages of
(3x3 conv to 4C + PixelShuffle(2)) -> 3x3 conv to 1 channel. No RGB MeanShift (LST is one channel).

Reproduces upstream GrokLST `groklst/models/editors/edsr/edsr_net.py::EDSR` (the MMagic EDSR with
in/out_channels=1, mid_channels=64, num_blocks=16). Parameters: x2 1,367,553 / x4 1,515,265 /
x8 1,662,977. state_dict keys match upstream (conv_first, body.i.conv1/conv2, conv_after_body,
upsample.i.upsample_conv, conv_last); outputs were compared with upstream on shared weights (identical).
Initialisation follows MMagic: residual-block convs kaiming-normal x0.1 (when res_scale == 1),
upsampler convs kaiming-normal, zero biases. Input size: any h, w.
"""
import math

import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


def kaiming_init_(module, scale=1.0):
    """MMagic's default_init_weights: kaiming-normal (fan_in, relu) weights times `scale`, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="relu")
            m.weight.data.mul_(scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResidualBlockNoBN(nn.Module):
    """x + res_scale * conv2(relu(conv1(x))), C -> C, spatial size kept."""

    def __init__(self, mid_channels=64, res_scale=1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        if res_scale == 1.0:
            kaiming_init_(self, 0.1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class PixelShufflePack(nn.Module):
    """Conv (C_in -> C_out * r^2, k x k) then PixelShuffle(r): (B, C_in, h, w) -> (B, C_out, r*h, r*w)."""

    def __init__(self, in_channels, out_channels, scale_factor, upsample_kernel=3):
        super().__init__()
        self.scale_factor = scale_factor
        self.upsample_conv = nn.Conv2d(in_channels, out_channels * scale_factor ** 2, upsample_kernel,
                                       padding=(upsample_kernel - 1) // 2)
        kaiming_init_(self, 1.0)

    def forward(self, x):
        return F.pixel_shuffle(self.upsample_conv(x), self.scale_factor)


class UpsampleModule(nn.Sequential):
    """log2(scale) x2 PixelShufflePacks for scale = 2^n, one x3 pack for scale = 3."""

    def __init__(self, scale, mid_channels):
        if scale & (scale - 1) == 0:
            layers = [PixelShufflePack(mid_channels, mid_channels, 2) for _ in range(int(math.log2(scale)))]
        elif scale == 3:
            layers = [PixelShufflePack(mid_channels, mid_channels, 3)]
        else:
            raise ValueError(f"scale {scale} not supported (2^n or 3)")
        super().__init__(*layers)


class EDSR(nn.Module):
    """EDSR for 1-channel LST (the LST channel counts `in_channels` / `out_channels` are fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (log2(scale) conv + PixelShuffle(2) stages).
        mid_channels: channel width of the stem, residual blocks and upsampler (64).
        num_blocks: number of residual blocks (16).
        res_scale: factor on each residual branch (1; at 1 the block convs start at 0.1 x kaiming).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, mid_channels=64, num_blocks=16, res_scale=1):
        super().__init__()
        self.conv_first = nn.Conv2d(LST_CHANNELS, mid_channels, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(mid_channels, res_scale) for _ in range(num_blocks)])
        self.conv_after_body = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.upsample = UpsampleModule(scale, mid_channels)
        self.conv_last = nn.Conv2d(mid_channels, LST_CHANNELS, 3, 1, 1)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        x = self.conv_first(lr_lst)
        x = x + self.conv_after_body(self.body(x))
        return self.conv_last(self.upsample(x))
