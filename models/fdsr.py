"""FDSR: Towards Fast and Accurate Real-World Depth Super-Resolution: Benchmark Dataset and Baseline (CVPR 2021).

Fast depth super-resolution network adapted to LST: the LR LST is bicubically upsampled; it and the HR
guidance are folded 4x4 space-to-depth (resample_data) so that all work happens at 1/4 of the HR grid.
A guidance branch of octave convolutions (high/low frequency features, alpha 0.25) feeds its high-frequency
part into four multi-scale residual blocks (MS_RB, dilations 1 and 2) of the LST branch, whose width grows
32 -> 56 -> 80 -> 104 by concatenation; two conv + PixelShuffle(2) stages return to the HR grid and a 3x3
conv predicts a residual added to the bicubic LST.

Reproduces upstream `groklst/models/editors/fdsr/fdsr_net.py` (class FDSR, num_feats=32, kernel_size=3).
642,577 parameters at every scale. state_dict keys match upstream (`conv_rgb1`, `rgb_cbl2.conv.conv_h2l`,
`MSB1.conv1`, `conv_recon1`, ...); outputs were compared with upstream on the same weights (identical).
No upstream bug was found.

unused_parameters: upstream discards the low-frequency output of the last octave block (rgb_cbl4), so its
`conv_h2l` and `conv_l2l` (2 x 1,152 weights) never receive a gradient; they are kept so that the count and
keys match upstream, and they are not evaluated in forward (the output is unaffected).

Input size: upstream needs HR h, w divisible by 8 (4x4 folding, then the octave 2x2 pooling). Here the
bicubic LST and the guidance are replicate-padded internally to a multiple of 8 and the output is cropped,
so any LR size works (lr_multiple = 1); on inputs already divisible, results equal upstream's.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


def resample_data(x, s):
    """Space-to-depth (B,C,H,W) -> (B,C*s*s,H/s,W/s); channel order (i, j, c) as upstream (not pixel_unshuffle's)."""
    return torch.cat([x[:, :, i::s, j::s] for i in range(s) for j in range(s)], dim=1)


class OctaveConv(nn.Module):
    """Octave convolution: (x_h, x_l) at (H, H/2) -> (y_h, y_l). Only the alpha in {0, 0.25} cases used here."""

    def __init__(self, in_channels, out_channels, kernel_size, alpha_in=0.25, alpha_out=0.25, padding=1):
        super().__init__()
        c = lambda a, n: int(a * n)
        lo_in, lo_out = c(alpha_in, in_channels), c(alpha_out, out_channels)
        hi_in, hi_out = in_channels - lo_in, out_channels - lo_out
        conv = lambda i, o: nn.Conv2d(i, o, kernel_size, 1, padding, bias=False)
        self.alpha_in = alpha_in
        self.conv_l2l = conv(lo_in, lo_out) if alpha_in > 0 else None
        self.conv_l2h = conv(lo_in, hi_out) if alpha_in > 0 else None
        self.conv_h2l = conv(hi_in, lo_out)
        self.conv_h2h = conv(hi_in, hi_out)

    def forward(self, x, need_low=True):
        x_h, x_l = x if isinstance(x, tuple) else (x, None)
        y_h = self.conv_h2h(x_h)
        if x_l is not None:
            y_h = y_h + F.interpolate(self.conv_l2h(x_l), scale_factor=2, mode="nearest")
        if not need_low:
            return y_h, None
        y_l = self.conv_h2l(F.avg_pool2d(x_h, 2))
        if x_l is not None:
            y_l = y_l + self.conv_l2l(x_l)
        return y_h, y_l


class Conv_BN_ACT(nn.Module):
    """Octave conv followed by LeakyReLU(0.2) on both outputs (upstream's name; it has no BN)."""

    def __init__(self, in_channels, out_channels, kernel_size, alpha_in, alpha_out):
        super().__init__()
        self.conv = OctaveConv(in_channels, out_channels, kernel_size, alpha_in, alpha_out)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x, need_low=True):
        x_h, x_l = self.conv(x, need_low)
        return self.act(x_h), (self.act(x_l) if x_l is not None else None)


class MS_RB(nn.Module):
    """Multi-scale residual block: x + conv1x1(act(conv3x3_d1 x) + act(conv3x3_d2 x))."""

    def __init__(self, num_feats, kernel_size=3):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feats, num_feats, kernel_size, padding=1, dilation=1)
        self.conv2 = nn.Conv2d(num_feats, num_feats, kernel_size, padding=2, dilation=2)
        self.conv4 = nn.Conv2d(num_feats, num_feats, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        return x + self.conv4(self.act(self.conv1(x)) + self.act(self.conv2(x)))


class FDSR(nn.Module):
    """FDSR (upstream fdsr/FDSR; the LST channel count `lst_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (only sets the bicubic pre-upsampling: the net runs at HR / 4).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        num_feats: channel width of the guidance branch and first LST block (32; the LST branch
            grows by 3/4 of it per fusion).
        kernel_size: side of the convolutions (3; the paddings assume 3).
    """
    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ("rgb_cbl4.conv.conv_h2l", "rgb_cbl4.conv.conv_l2l")

    def __init__(self, scale: int = 8, guidance_channels: int = 10, num_feats: int = 32, kernel_size: int = 3):
        super().__init__()
        self.scale = scale
        nf, k = num_feats, kernel_size
        self.conv_rgb1 = nn.Conv2d(guidance_channels * 16, nf, k, padding=1)
        self.rgb_cbl2 = Conv_BN_ACT(nf, nf, k, alpha_in=0, alpha_out=0.25)
        self.rgb_cbl3 = Conv_BN_ACT(nf, nf, k, alpha_in=0.25, alpha_out=0.25)
        self.rgb_cbl4 = Conv_BN_ACT(nf, nf, k, alpha_in=0.25, alpha_out=0.25)
        self.conv_dp1 = nn.Conv2d(LST_CHANNELS * 16, nf, k, padding=1)
        hi = nf - int(0.25 * nf)  # high-frequency guidance width added at each fusion (24)
        self.MSB1 = MS_RB(nf, k)
        self.MSB2 = MS_RB(nf + hi, k)
        self.MSB3 = MS_RB(nf + 2 * hi, k)
        self.MSB4 = MS_RB(nf + 3 * hi, k)
        self.conv_recon1 = nn.Conv2d(nf + 3 * hi, 4 * nf, k, padding=1)
        self.ps1 = nn.PixelShuffle(2)
        self.conv_recon2 = nn.Conv2d(nf, 4 * nf, k, padding=1)
        self.ps2 = nn.PixelShuffle(2)
        self.restore = nn.Conv2d(nf, LST_CHANNELS, k, padding=1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        up = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        H, W = up.shape[-2:]
        ph, pw = -H % 8, -W % 8
        x, g = F.pad(up, (0, pw, 0, ph), mode="replicate"), F.pad(hr_guidance, (0, pw, 0, ph), mode="replicate")

        dp = self.MSB1(self.act(self.conv_dp1(resample_data(x, 4))))
        rgb = self.rgb_cbl2(self.act(self.conv_rgb1(resample_data(g, 4))))
        dp = self.MSB2(torch.cat([dp, rgb[0]], dim=1))
        rgb = self.rgb_cbl3(rgb)
        dp = self.MSB3(torch.cat([dp, rgb[0]], dim=1))
        rgb = self.rgb_cbl4(rgb, need_low=False)  # its low-frequency output is unused upstream
        dp = self.MSB4(torch.cat([dp, rgb[0]], dim=1))

        out = self.ps2(self.conv_recon2(self.ps1(self.conv_recon1(self.act(dp)))))
        out = self.restore(out)[..., :H, :W]
        return up + out
