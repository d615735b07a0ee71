"""DJF / DJFR: Joint Image Filtering with Deep Convolutional Networks (TPAMI 2019; DJF first at ECCV 2016).

Deep Joint Filter: the LR LST is bicubically upsampled to the guidance grid, a small three-layer CNN
(9x9 -> 1x1 -> 5x5) encodes it, a twin CNN encodes the guidance bands, and a third CNN fuses the two
feature maps into the HR LST. DJFR is the residual variant of the paper with 3-channel encoder outputs and
a global skip from the bicubic LST.

Reproduces upstream `groklst/models/editors/djf` (class DJF, config `residual=False`, `init_weights=False`)
and `groklst/models/editors/djfr` (class DJFR). Both share this file because they are one family.
Parameter counts (guidance_channels=10, all scales): DJF 110,755; DJFR 136,295. The weights do not depend
on the scale. state_dict keys match upstream (`cnn_t.feature.0.weight`, `depth_encoder.0.layers.weight`, ...).
No upstream bug was found. Input size: any h, w (the padding keeps the HR size exactly).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class CNN(nn.Module):
    """Three convs (ReLU between, none after the last). The paddings (2, 2, 2) with kernels (9, 1, 5) shrink
    by 4, grow by 4, keep: the output has the input's spatial size."""

    def __init__(self, c_in=1, channel=(96, 48, 1), kernel_size=(9, 1, 5), padding=(2, 2, 2)):
        super().__init__()
        layers = []
        for i in range(3):
            layers.append(nn.Conv2d(c_in if i == 0 else channel[i - 1], channel[i], kernel_size[i], 1, padding[i]))
            if i != 2:
                layers.append(nn.ReLU(inplace=True))
        self.feature = nn.Sequential(*layers)

    def forward(self, x):
        return self.feature(x)


class DJF(nn.Module):
    """Deep Joint Filter (the LST channel count `dep_in_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (only sets the bicubic pre-upsampling: all layers run at HR).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        init_weights: apply the pix2pix-style N(0, 0.02) init of the upstream code (upstream config: False).
        residual: add the bicubic LST to the output (upstream default and config: False).
    """
    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, init_weights: bool = False,
                 residual: bool = False):
        super().__init__()
        self.scale = scale
        self.residual = residual
        self.cnn_t = CNN(c_in=LST_CHANNELS, channel=(96, 48, 1))
        self.cnn_g = CNN(c_in=guidance_channels, channel=(96, 48, 1))
        self.cnn_f = CNN(c_in=2, channel=(64, 32, 1))
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    nn.init.zeros_(m.bias)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        up = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        out = self.cnn_f(torch.cat([self.cnn_t(up), self.cnn_g(hr_guidance)], dim=1))
        return out + up if self.residual else out


class ConvAct(nn.Module):
    """Conv2d followed by an optional ReLU (attribute `layers` keeps upstream's ConvBNReLU2D key names)."""

    def __init__(self, c_in, c_out, k, padding=0, act=False):
        super().__init__()
        self.layers = nn.Conv2d(c_in, c_out, k, 1, padding)
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x):
        x = self.layers(x)
        return self.act(x) if self.act is not None else x


class DJFR(nn.Module):
    """Residual Deep Joint Filter (the LST channel count `dep_in_channels` is fixed to 1).

    Encoders: 9x9 (96) -> 1x1 (48) -> 5x5 (3) for LST and guidance; decoder on the 6-channel concat:
    9x9 (64) -> 1x1 (32) -> 5x5 (1); output = decoder + bicubic LST.

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (only sets the bicubic pre-upsampling: all layers run at HR).
        guidance_channels: number of guidance bands C (10 in GrokLST).
    """
    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10):
        super().__init__()
        self.scale = scale

        def encoder(c_in):
            return nn.Sequential(ConvAct(c_in, 96, 9, 2, act=True), ConvAct(96, 48, 1, 2, act=True),
                                 ConvAct(48, 3, 5, 2))

        self.depth_encoder = encoder(LST_CHANNELS)
        self.rgb_encoder = encoder(guidance_channels)
        self.decoder = nn.Sequential(ConvAct(6, 64, 9, 4, act=True), ConvAct(64, 32, 1, 0, act=True),
                                     ConvAct(32, LST_CHANNELS, 5, 2))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        up = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        feats = torch.cat([self.rgb_encoder(hr_guidance), self.depth_encoder(up)], dim=1)
        return self.decoder(feats) + up
