"""Bicubic and bilinear interpolation: the parameter-free baselines (Keys, IEEE TASSP 1981, for bicubic).

They have the same interface as every model, so they can be trained (a no-op), tested and
used for scene prediction without a checkpoint. Interpolation is linear in the input, so
doing it on normalised LST gives the same Kelvin result as doing it on Kelvin.
PyTorch's bicubic uses a = -0.75 with clamped borders (align_corners=False), as the
original toolkit's `nn.Upsample(mode="bicubic")` skip connection.
"""
import torch.nn as nn
import torch.nn.functional as F


class Interpolation(nn.Module):
    """Upsample the LR LST by `scale` (no parameters).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8.
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()
    mode = "bicubic"

    def __init__(self, scale: int = 8):
        super().__init__()
        self.scale = scale

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        return F.interpolate(lr_lst, scale_factor=self.scale, mode=self.mode, align_corners=False)


class Bicubic(Interpolation):
    """Bicubic upsampling of the LR LST (a = -0.75, clamped borders); no parameters.

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8.
    """

    mode = "bicubic"


class Bilinear(Interpolation):
    """Bilinear upsampling of the LR LST; no parameters.

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8.
    """

    mode = "bilinear"
