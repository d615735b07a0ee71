"""DSRN: Depth Super-Resolution based on Deep Edge-Aware Learning (Pattern Recognition 2020).

A U-Net on the guidance grid. Encoder: the bicubic LST passes 4 levels of two conv3x3+BN+ReLU blocks
(64, 128, 256, 512 channels) with 2x2 max-pooling; at each coarser level the pooled features are
concatenated with features of the max-pooled bicubic LST (input_1..4, one conv each). A guidance pyramid
(rgb_1..4: conv+BN+ReLU, 64..512 channels, max-pooled) is concatenated with the skip features in the
decoder (conv, conv, deconv 3x3/2 per level, 1024 -> 64 channels); the tail (3 conv+BN+ReLU, last to 1
channel) gives a residual added to the bicubic LST. Every conv has BatchNorm (upstream's addition to the
paper) and Xavier-normal init.

Reproduces upstream `groklst/models/editors/dsrn` (class DSRN). 45,495,171 parameters at every scale.
state_dict keys match upstream (`rgb_1.conv.weight`, `encoder_1.0.bn.running_mean`, `decoder_1.2.conv`,
`tail.2.bn`, ...); outputs were compared with upstream on the same weights (identical). No upstream bug fixed.
Note (kept as upstream): the tail's last block ends with BN + ReLU, so the learned residual is >= 0.
The upstream x2 config normalises LST with min-max (configs/dsrn_x2.yaml says so); x4/x8 use z-score.

Input size: upstream needs the HR grid divisible by 16 (four 2x2 poolings). Here the bicubic LST and the
guidance are replicate-padded internally to a multiple of 16 and the output is cropped, so any LR size
works (lr_multiple = 1); on inputs already divisible, results equal upstream's.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class ConvReLU(nn.Module):
    """conv3x3 (Xavier-normal, zero bias) -> BatchNorm -> ReLU."""

    def __init__(self, c_in, c_out, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(True)
        nn.init.xavier_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class DeConvReLU(nn.Module):
    """Transposed conv 3x3 / 2 (exact 2x) -> BatchNorm -> ReLU."""

    def __init__(self, c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=1):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, kernel_size, stride, padding, output_padding)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(True)
        nn.init.xavier_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class DSRN(nn.Module):
    """DSRN (upstream dsrn/DSRN; the LST channel count `dep_in_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (only sets the bicubic pre-upsampling: the U-Net runs at HR).
        guidance_channels: number of guidance bands C (10 in GrokLST).
    """
    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10):
        super().__init__()
        self.scale = scale
        C = ConvReLU
        self.rgb_1, self.rgb_2 = C(guidance_channels, 64), C(64, 128)
        self.rgb_3, self.rgb_4 = C(128, 256), C(256, 512)
        self.encoder_1 = nn.Sequential(C(1, 64), C(64, 64))
        self.encoder_2 = nn.Sequential(C(128, 128), C(128, 128))
        self.encoder_3 = nn.Sequential(C(256, 256), C(256, 256))
        self.encoder_4 = nn.Sequential(C(512, 512), C(512, 512))
        self.input_1, self.input_2 = C(LST_CHANNELS, 64), C(LST_CHANNELS, 128)
        self.input_3, self.input_4 = C(LST_CHANNELS, 256), C(LST_CHANNELS, 512)
        self.decoder_1 = nn.Sequential(C(1024, 1024), C(1024, 1024), DeConvReLU(1024, 512))
        self.decoder_2 = nn.Sequential(C(512 * 3, 512), C(512, 512), DeConvReLU(512, 256))
        self.decoder_3 = nn.Sequential(C(256 * 3, 256), C(256, 256), DeConvReLU(256, 128))
        self.decoder_4 = nn.Sequential(C(128 * 3, 128), C(128, 128), DeConvReLU(128, 64))
        self.tail = nn.Sequential(C(64 * 3, 64), C(64, 64), C(64, LST_CHANNELS))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        up = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        H, W = up.shape[-2:]
        ph, pw = -H % 16, -W % 16
        d, g = F.pad(up, (0, pw, 0, ph), mode="replicate"), F.pad(hr_guidance, (0, pw, 0, ph), mode="replicate")
        pool = lambda t: F.max_pool2d(t, 2)

        rgb1 = self.rgb_1(g)
        rgb2 = self.rgb_2(pool(rgb1))
        rgb3 = self.rgb_3(pool(rgb2))
        rgb4 = self.rgb_4(pool(rgb3))

        d1 = pool(d)
        d2 = pool(d1)
        d3 = pool(d2)
        d4 = pool(d3)

        enc1 = self.encoder_1(d)
        enc3 = self.encoder_2(torch.cat([pool(enc1), self.input_1(d1)], 1))
        enc5 = self.encoder_3(torch.cat([pool(enc3), self.input_2(d2)], 1))
        enc7 = self.encoder_4(torch.cat([pool(enc5), self.input_3(d3)], 1))
        dec1 = self.decoder_1(torch.cat([pool(enc7), self.input_4(d4)], 1))
        dec2 = self.decoder_2(torch.cat([dec1, rgb4, enc7], 1))
        dec3 = self.decoder_3(torch.cat([dec2, rgb3, enc5], 1))
        dec4 = self.decoder_4(torch.cat([dec3, rgb2, enc3], 1))
        out = self.tail(torch.cat([dec4, rgb1, enc1], 1))[..., :H, :W]
        return out + up
