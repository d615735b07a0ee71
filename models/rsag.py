"""RSAG: Recurrent Structure Attention Guidance for Depth Super-Resolution (AAAI 2023).

Guided (GISR) network of Yuan et al. The LR LST is upsampled bicubically to HR and split by a small edge
network (DCN) into a high-frequency map and a low-frequency remainder. The high-frequency part is encoded
and downsampled x2 per phase (log2(scale) phases) to LR; a decoder of 30 CBAM blocks + PixelShuffle per phase
climbs back, and at every level concatenates the encoder skip, the LST at that level and a structure
attention map computed from the guidance (encoded by the same downsampling blocks). A low-frequency branch
adds a coarse correction. The whole decoder then runs a second, recurrent time, with the first estimate
(re-encoded) replacing the upsampled LST in the attention, and the result + low-frequency map is returned.
Reproduces upstream `rsag/RSAG` (scale_factor in {4, 8}, gui_channels -> guidance_channels; the upstream
OPTS n_blocks=30, n_feats=16 become kwargs). Parameter counts: x4 12,026,779, x8 57,492,097.
state_dict keys match upstream.

Notes: the first decoder stage and the low-frequency downsampling get exactly the same input in both
recurrent passes, so they are computed once and reused (same outputs and gradients as upstream, ~1/3 less
work at x4). Parameters built upstream but never called in forward (kept for count/key parity, listed in
`unused_parameters`): `att.*.trans_4`, `att.*.ca2`, `att.*.sp2`, `conv35.conv7` and `conv35.relu1` / `conv35.relu2`.
Any LR size works (HR = h*scale is divisible by every 2^k used).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def default_conv(in_channels, out_channels, kernel_size, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class CALayer(nn.Module):
    """Squeeze-and-excitation channel attention."""

    def __init__(self, channel, reduction=16):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channel, channel // reduction, 1), nn.ReLU(True),
                                     nn.Conv2d(channel // reduction, channel, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(x.mean((2, 3), keepdim=True))


class SpatialAttention(nn.Module):
    """x * sigmoid(conv3x3([mean_c(x), max_c(x)]))."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 3, padding=1, bias=False)

    def forward(self, x):
        return x * torch.sigmoid(self.conv1(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


class CBAM(nn.Module):
    """conv-ReLU-conv-channel attention-spatial attention, plus identity."""

    def __init__(self, n_feat, kernel_size=3, reduction=16):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feat, n_feat, kernel_size), nn.ReLU(True),
                                  default_conv(n_feat, n_feat, kernel_size), CALayer(n_feat, reduction),
                                  SpatialAttention())

    def forward(self, x):
        return x + self.body(x)


class Upsampler(nn.Sequential):
    """x2 PixelShuffle upsampler (conv to 4n channels, shuffle)."""

    def __init__(self, n_feats):
        super().__init__(default_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2))


class DownBlock(nn.Module):
    """Stride-2 conv (in -> nFeat) + LeakyReLU(0.2) + conv (nFeat -> out): (B, in, H, W) -> (B, out, H/2, W/2)."""

    def __init__(self, nFeat, in_channels, out_channels, negval=0.2):
        super().__init__()
        self.dual_module = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_channels, nFeat, 3, stride=2, padding=1, bias=False),
                          nn.LeakyReLU(negval, True)),
            nn.Conv2d(nFeat, out_channels, 3, padding=1, bias=False))

    def forward(self, x):
        return self.dual_module(x)


class SAttention(nn.Module):
    """Structure attention: |1x1 - 3x3| responses of guidance and LST, channel+spatial attention, + gamma*rgb."""

    def __init__(self, nfeat):
        super().__init__()
        self.trans_1 = nn.Conv2d(nfeat, nfeat, 1)
        self.trans_2 = nn.Conv2d(nfeat, nfeat, 3, padding=1)
        self.trans_3 = nn.Conv2d(nfeat, nfeat, 1)
        self.trans_4 = nn.Conv2d(nfeat, nfeat, 5, padding=2)  # unused upstream
        self.trans_5 = nn.Conv2d(nfeat, nfeat, 3, padding=1)
        self.trans_6 = nn.Conv2d(nfeat, nfeat, 1)
        self.ca1 = CALayer(nfeat, 16)
        self.ca2 = CALayer(nfeat, 16)  # unused upstream
        self.sp1 = SpatialAttention()
        self.sp2 = SpatialAttention()  # unused upstream
        self.gamma = nn.Parameter(torch.zeros(1))
        self.relu1, self.relu2, self.relu3, self.relu4, self.relu5 = (nn.PReLU() for _ in range(5))

    def forward(self, depth, rgb):
        rgb_att = (self.relu5(self.trans_1(rgb)) - self.relu2(self.trans_2(rgb))).abs()
        depth_att = (self.relu3(self.trans_6(depth)) - self.relu4(self.trans_5(depth))).abs()
        return self.sp1(self.ca1(rgb_att + depth_att)) + self.gamma * self.relu1(self.trans_3(rgb))


class DCN(nn.Module):
    """Edge split of a 1-channel map: three sigmoid(|conv_a - conv_b|) stages -> (edge map, x - edge map)."""

    def __init__(self, nChannels=1):
        super().__init__()
        c = nChannels
        self.conv1 = nn.Conv2d(c, c, 5, padding=2, bias=False)
        self.conv2 = nn.Conv2d(c, c, 7, padding=3, bias=False)
        self.conv3 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv4 = nn.Conv2d(c, c, 5, padding=2, bias=False)
        self.conv5 = nn.Conv2d(c, c, 1, bias=False)
        self.conv6 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv7 = nn.Conv2d(2 * c, c, 3, padding=1, bias=False)  # unused upstream
        self.relu1, self.relu2, self.relu3, self.relu4, self.relu5, self.relu6 = (nn.PReLU() for _ in range(6))

    def forward(self, x):
        e = torch.sigmoid((self.relu4(self.conv2(x)) - self.relu3(self.conv1(x))).abs())
        e = torch.sigmoid((self.relu3(self.conv3(e)) - self.relu4(self.conv4(e))).abs())  # relu3/4 reused upstream
        e = torch.sigmoid((self.relu5(self.conv5(e)) - self.relu6(self.conv6(e))).abs())
        return e, x - e


class RSAG(nn.Module):
    """RSAG (upstream rsag/RSAG).

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 4 or 8 (log2(scale) encoder / decoder phases).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        n_blocks: CBAM blocks per decoder phase (30).
        n_feats: base channel width (16); the width doubles with every encoder phase.
    """

    kind = "gisr"
    scales = (4, 8)
    lr_multiple = 1
    # built upstream but never called in forward (kept for parameter/key parity)
    unused_parameters = ("att.0.trans_4", "att.1.trans_4", "att.2.trans_4", "att.0.ca2", "att.1.ca2", "att.2.ca2",
                         "att.0.sp2", "att.1.sp2", "att.2.sp2", "conv35.relu1", "conv35.relu2", "conv35.conv7")

    def __init__(self, scale: int = 8, guidance_channels: int = 10, n_blocks: int = 30, n_feats: int = 16):
        super().__init__()
        assert scale in (4, 8), "RSAG supports x4 and x8"
        self.scale = scale
        self.phase = P = int(math.log2(scale))
        nf = n_feats
        self.att = nn.ModuleList([SAttention(nf * 2 ** (p - 1)) for p in range(P, 0, -1)])
        self.head = default_conv(1, nf, 3)
        self.rgb_head = default_conv(guidance_channels, nf, 3)
        self.up = nn.ModuleList([default_conv(1, nf * 2 ** (p - 1), 3) for p in range(P, 0, -1)])
        self.down = nn.ModuleList([DownBlock(nf * 2 ** p, nf * 2 ** p, nf * 2 ** (p + 1)) for p in range(P)])
        self.down_lf = nn.ModuleList([DownBlock(nf, nf, 2 * nf)])
        # decoder stage i: n_blocks CBAMs, x2 upsampler, 1x1 conv; width nf*2^P first, then 4*nf*2^(P-1-i)
        widths = [nf * 2 ** P] + [4 * nf * 2 ** (p - 1) for p in range(P, 1, -1)]
        self.up_blocks = nn.ModuleList([
            nn.Sequential(*[CBAM(w) for _ in range(n_blocks)], Upsampler(w), default_conv(w, nf * 2 ** (P - 1 - i), 1))
            for i, w in enumerate(widths)])
        self.up_lf = nn.Sequential()
        self.up_lf.conv = nn.ConvTranspose2d(4 * nf, nf, 5, stride=2, padding=2, output_padding=1)
        self.up_lf.activation = nn.PReLU()
        self.tail = default_conv(4 * nf, 1, 3)
        self.tail_lf = default_conv(2 * nf, 1, 3)
        self.conv35 = DCN()

    def decode(self, x, skips, rgbs, lsts, first=None):
        """Run the decoder from LR features x; returns (HR output features, per-stage outputs)."""
        P, res = self.phase, []
        for i in range(P):
            x = first if (i == 0 and first is not None) else self.up_blocks[i](x)
            res.append(x)
            att = self.att[i](lsts[i], rgbs[P - 1 - i])
            x = torch.cat([x, skips[P - 1 - i], att, lsts[i]], 1)
        return x, res

    def low_freq(self, lf_down, res):
        lf = self.up_lf(torch.cat([lf_down, res[-2]], 1))
        return self.tail_lf(torch.cat([lf, res[-1]], 1))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        P = self.phase
        hr_0, lf_0 = self.conv35(F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False))
        x, g = self.head(hr_0), self.rgb_head(hr_guidance)
        lf_down = self.down_lf[0](self.head(lf_0))
        skips, rgbs = [], []
        for i in range(P):  # encoder (the guidance shares the downsampling blocks)
            skips.append(x)
            rgbs.append(g)
            x, g = self.down[i](x), self.down[i](g)
        lsts, t = [], lr_lst
        for i in range(P):  # LST at 2x, 4x, ... of LR
            t = F.interpolate(t, scale_factor=2, mode="bicubic", align_corners=False)
            lsts.append(self.up[i](t))

        y, res = self.decode(x, skips, rgbs, lsts)
        sr0 = self.tail(y) + lf_0 + self.low_freq(lf_down, res)

        # recurrent pass: the re-encoded first estimate replaces the LST in the attention
        e, ests = self.head(sr0), []
        for i in range(P):
            ests.append(e)
            if i < P - 1:
                e = self.down[i](e)
        y, res = self.decode(x, skips, rgbs, ests[::-1], first=res[0])
        return self.tail(y) + lf_0 + self.low_freq(lf_down, res)
