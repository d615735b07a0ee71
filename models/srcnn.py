"""SRCNN: Learning a Deep Convolutional Network for Image Super-Resolution (ECCV 2014).

The first CNN super-resolver (Dong et al.): the LR image is bicubic-upsampled to the target size and then
refined by three convolutions (9x9 patch extraction -> 1x1 non-linear mapping -> 5x5 reconstruction).
The network itself is scale-free; `scale` only sets the bicubic pre-upsampling.

Reproduces upstream GrokLST `groklst/models/editors/srcnn/srcnn_net.py::SRCNN` with the config values
channels=(1, 64, 32, 1), kernel_sizes=(9, 1, 5). Parameters: x2 8,129 / x4 8,129 / x8 8,129.
state_dict keys match upstream (conv1, conv2, conv3). Input size: any h, w.
"""
import torch.nn as nn
import torch.nn.functional as F


class SRCNN(nn.Module):
    """SRCNN for 1-channel LST.

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (only sets the bicubic pre-upsampling).
        channels: widths (in, hidden 1, hidden 2, out) of the three convs ((1, 64, 32, 1); in and out
            are the LST band and must stay 1; upstream's name, so ported configs keep working).
        kernel_sizes: sides of the three convs, in HR pixels ((9, 1, 5)).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, channels=(1, 64, 32, 1), kernel_sizes=(9, 1, 5)):
        super().__init__()
        assert len(channels) == 4 and len(kernel_sizes) == 3
        self.scale = scale
        self.conv1 = nn.Conv2d(channels[0], channels[1], kernel_sizes[0], padding=kernel_sizes[0] // 2)
        self.conv2 = nn.Conv2d(channels[1], channels[2], kernel_sizes[1], padding=kernel_sizes[1] // 2)
        self.conv3 = nn.Conv2d(channels[2], channels[3], kernel_sizes[2], padding=kernel_sizes[2] // 2)
        self.relu = nn.ReLU()

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        x = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.conv3(x)
