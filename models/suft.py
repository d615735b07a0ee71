"""SUFT: Symmetric Uncertainty-aware Feature Transmission for Depth Super-Resolution (ACM MM 2022).

Guided (GISR) super-resolution network of Shi et al. An LST branch of RCAN-style residual groups runs at LR;
a guidance branch of plain residual blocks runs at HR. Three SUFT bridges join them: each lifts the LST
features to HR twice (as is and mirrored left-right), uses the disagreement of the two lifts as an
uncertainty map that gates the guidance features, and projects the concatenation back to LR. A dense
back-projection upsampler, two residual groups and two convolutions then predict a residual that is added to
the bicubic upsampling of the input. Reproduces upstream `suft/SUFTNet` (suft_net.py, in_channels -> our
guidance_channels). Parameter counts: x2 15,734,938, x4 22,014,106, x8 39,954,586. state_dict keys match
upstream. Upstream trains it on min-max normalised LST (norm_flag 2), so its configs use `norm: minmax`.
Any LR size works (the projection convolutions map h <-> h*scale exactly).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def default_conv(in_channels, out_channels, kernel_size, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


def projection_conv(in_channels, out_channels, scale, up=True):
    """Strided (transposed) convolution that maps h <-> h*scale exactly."""
    k, s, p = {2: (6, 2, 2), 4: (8, 4, 2), 8: (12, 8, 2), 16: (20, 16, 2)}[scale]
    conv = nn.ConvTranspose2d if up else nn.Conv2d
    return conv(in_channels, out_channels, k, stride=s, padding=p)


class ResBlock(nn.Module):
    """conv-LeakyReLU-conv plus identity."""

    def __init__(self, n_feats, kernel_size=3):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feats, n_feats, kernel_size), nn.LeakyReLU(0.2, True),
                                  default_conv(n_feats, n_feats, kernel_size))

    def forward(self, x):
        return x + self.body(x)


class CALayer(nn.Module):
    """Squeeze-and-excitation channel attention."""

    def __init__(self, channel, reduction=16):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channel, channel // reduction, 1), nn.ReLU(True),
                                     nn.Conv2d(channel // reduction, channel, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(x.mean((2, 3), keepdim=True))


class RCAB(nn.Module):
    """Residual channel-attention block: conv-LeakyReLU-conv-CA plus identity."""

    def __init__(self, n_feat, kernel_size, reduction):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feat, n_feat, kernel_size), nn.LeakyReLU(0.2, True),
                                  default_conv(n_feat, n_feat, kernel_size), CALayer(n_feat, reduction))

    def forward(self, x):
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """n_resblocks RCABs and a conv, with a long skip."""

    def __init__(self, n_feat, kernel_size, reduction, n_resblocks):
        super().__init__()
        body = [RCAB(n_feat, kernel_size, reduction) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*body, default_conv(n_feat, n_feat, kernel_size))

    def forward(self, x):
        return x + self.body(x)


class DenseProjection(nn.Module):
    """DBPN-style up (or down) projection unit: a0 = P(x); a0 + P(Q(a0) - x). Channels in == out."""

    def __init__(self, in_channels, nr, scale, up=True):
        super().__init__()
        self.conv_1 = nn.Sequential(projection_conv(in_channels, nr, scale, up), nn.PReLU(nr))
        self.conv_2 = nn.Sequential(projection_conv(nr, in_channels, scale, not up), nn.PReLU(in_channels))
        self.conv_3 = nn.Sequential(projection_conv(in_channels, nr, scale, up), nn.PReLU(nr))

    def forward(self, x):
        a0 = self.conv_1(x)
        return a0 + self.conv_3(self.conv_2(a0) - x)


class SUFT(nn.Module):
    """Symmetric uncertainty-aware bridge.

    depth: (B, dp_feats, h, w) LR features; rgb: (B, add_feats, H, W) HR guidance features.
    returns (B, dp_feats + add_feats, h, w).
    """

    def __init__(self, dp_feats, add_feats, scale):
        super().__init__()
        self.dp_up = DenseProjection(dp_feats, dp_feats, scale, up=True)
        self.dpf_up = DenseProjection(dp_feats, dp_feats, scale, up=True)
        self.total_down = DenseProjection(dp_feats + add_feats, dp_feats + add_feats, scale, up=False)
        self.conv_du = nn.Conv2d(2, 1, kernel_size=7, padding=3)

    def forward(self, depth, rgb):
        dp_h = self.dp_up(depth)
        dpf_h = self.dpf_up(depth.flip(-1)).flip(-1)  # lift the mirrored input, mirror back
        dif = (dp_h - dpf_h).abs()
        att = self.conv_du(torch.cat([dif.mean(1, keepdim=True), dif.amax(1, keepdim=True)], 1))
        lo, hi = att.amin((2, 3), keepdim=True), att.amax((2, 3), keepdim=True)
        att = (att - lo) / (hi - lo + 1e-12)  # per-sample min-max to [0, 1]
        return self.total_down(torch.cat([dp_h, rgb * att], 1))


class SUFTNet(nn.Module):
    """SUFTNet (upstream suft/SUFTNet).

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (sets the back-projection kernel / stride / padding).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        num_feats: width of the guidance branch and first LST group (32; upstream hard-codes the
            bridge widths 32/64/96/128, so only 32 works).
        kernel_size: side of the branch convolutions (3; the paddings assume 3).
    """

    kind = "gisr"
    scales = (2, 4, 8, 16)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, num_feats: int = 32, kernel_size: int = 3):
        super().__init__()
        self.scale = scale
        self.conv_rgb1 = nn.Conv2d(guidance_channels, num_feats, kernel_size, padding=1)
        self.rgb_rb2 = ResBlock(num_feats, kernel_size)
        self.rgb_rb3 = ResBlock(num_feats, kernel_size)
        self.rgb_rb4 = ResBlock(num_feats, kernel_size)

        # upstream hard-codes the widths 32/64/96/128 (num_feats + k*32)
        self.conv_dp1 = nn.Conv2d(1, num_feats, kernel_size, padding=1)
        self.dp_rg1 = ResidualGroup(num_feats, kernel_size, 16, 4)
        self.dp_rg2 = ResidualGroup(64, kernel_size, 16, 4)
        self.dp_rg3 = ResidualGroup(96, kernel_size, 16, 4)
        self.dp_rg4 = ResidualGroup(128, kernel_size, 16, 4)
        self.bridge1 = SUFT(32, 32, scale)
        self.bridge2 = SUFT(64, 32, scale)
        self.bridge3 = SUFT(96, 32, scale)

        self.tail = nn.Sequential(ResidualGroup(128, kernel_size, 16, 8), ResidualGroup(128, kernel_size, 16, 8))
        self.upsampler = DenseProjection(128, 128, scale, up=True)
        self.last_conv = nn.Sequential(default_conv(128, num_feats, 3), nn.LeakyReLU(0.2, True),
                                       default_conv(num_feats, 1, 3))
        self.act = nn.LeakyReLU(0.2, True)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        dp1 = self.dp_rg1(self.act(self.conv_dp1(lr_lst)))
        rgb2 = self.rgb_rb2(self.act(self.conv_rgb1(hr_guidance)))
        dp2 = self.dp_rg2(self.bridge1(dp1, rgb2))
        rgb3 = self.rgb_rb3(rgb2)
        dp3 = self.dp_rg3(self.bridge2(dp2, rgb3))
        rgb4 = self.rgb_rb4(rgb3)
        dp4 = self.dp_rg4(self.bridge3(dp3, rgb4))
        out = self.last_conv(self.tail(self.upsampler(dp4)))
        return out + F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic")
