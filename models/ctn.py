"""CTNet: Contextual Transformation Network for Lightweight Remote-Sensing Image Super-Resolution (IEEE TGRS 2022).

A lightweight remote-sensing SR CNN (Wang et al.). A 3x3 stem (nf=64) feeds 16 contextual
transformation blocks (CTB, ghost-bottleneck style: two contextual transformation layers, each a
gated 1x1 "CFE" branch whose gate comes from a 2x2-average-pooled copy, a cheap depthwise 3x3 that
doubles its channels, and a 1x1 enhancement branch added on top), with a contextual enhancement
module (CEM: strided conv + 7x7/3 max-pool context -> sigmoid spatial gate) before every block but
the first. From each block a grouped 3x3 conv taps nf/nb = 4 channels; the 16 taps are concatenated
(64 ch), mixed by a 1x1 conv and added to the stem. Upsampling is nearest x2 (once for x2, twice for
x4), each followed by 3x3 conv (unf=24 ch), pixel attention + LeakyReLU(0.2), 3x3 conv + LeakyReLU;
a 3x3 conv to 1 channel is added to a bilinear upsampling of the input. Supports x2 and x4 only.

Reproduces upstream GrokLST `groklst/models/editors/ctnet/ctnet.py::CTNET` (nf=64, unf=24, nb=16).
Parameters: x2 400,321 / x4 411,337. state_dict keys match upstream; outputs were compared with
upstream on shared weights (identical to float precision for LR sides >= 15).

Unused parameters: every CFE owns two 1x1 convs `k3` and `k4` that its forward never calls (the same
holds in the original CTNet code). They are kept so the parameter count and checkpoint keys match
upstream (16 blocks x (1,024 + 256 + 1,024 + 1,024) = 53,248 of the parameters), and are listed in
`unused_parameters`.

Input size: h, w >= 2. Upstream's CEM needs LR sides >= 15 (stride-2 3x3 conv, then a 7x7 max-pool);
for smaller inputs the CEM context branch here replicate-pads its input up to 15 first, which
is a no-op for sides >= 15 (no parameters involved).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class CEM(nn.Module):
    """Contextual enhancement: x * sigmoid(1x1(up(context(x)) + 1x1(x))), context via stride-2 conv + max-pool."""

    def __init__(self, n_feats):
        super().__init__()
        f = n_feats // 4
        self.conv1 = nn.Conv2d(n_feats, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, n_feats, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h, w = x.shape[-2:]
        c1_ = self.conv1(x)
        ctx = c1_
        if h < 15 or w < 15:                       # keep the 7x7 max-pool valid on tiny maps
            ctx = F.pad(ctx, (0, max(0, 15 - w), 0, max(0, 15 - h)), mode="replicate")
        c1 = self.conv2(ctx)
        v = self.relu(self.conv_max(F.max_pool2d(c1, kernel_size=7, stride=3)))
        c3 = self.conv3_(self.relu(self.conv3(v)))
        c3 = F.interpolate(c3, (h, w), mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))


class CFE(nn.Module):
    """Gated 1x1 conv: y = k1(x); y * sigmoid(y + nearest_up(k2(avgpool2(x)))).

    k3 and k4 are defined upstream but never used (kept for parameter/key parity, get no gradient).
    """

    def __init__(self, inplanes, planes, pooling_r=2):
        super().__init__()
        self.k1 = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False))
        self.k2 = nn.Sequential(nn.AvgPool2d(kernel_size=pooling_r, stride=2),
                                nn.Conv2d(inplanes, planes, 1, bias=False))
        self.k3 = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False))
        self.k4 = nn.Sequential(nn.Conv2d(planes, planes, 1, bias=False))

    def forward(self, x):
        y = self.k1(x)
        return y * torch.sigmoid(y + F.interpolate(self.k2(x), y.shape[2:]))


class CTL(nn.Module):
    """Contextual transformation layer (ghost-module style), (B, inp, H, W) -> (B, oup, H, W)."""

    def __init__(self, inp, oup, ratio=2, dw_size=3, relu=True):
        super().__init__()
        self.oup = oup
        init_ch = math.ceil(oup / ratio)
        new_ch = init_ch * (ratio - 1)
        act = (lambda: nn.ReLU(inplace=True)) if relu else nn.Sequential
        self.cfe = nn.Sequential(CFE(inp, init_ch), act())
        self.cft = nn.Sequential(nn.Conv2d(init_ch, new_ch, dw_size, 1, dw_size // 2, groups=init_ch, bias=False),
                                 act())
        self.feat_enhanced = nn.Sequential(nn.Conv2d(inp, init_ch + new_ch, 1, 1, 0, bias=False), act())

    def forward(self, x):
        x1 = self.cfe(x)
        out = torch.cat([x1, self.cft(x1)], dim=1) + self.feat_enhanced(x)
        return out[:, :self.oup]


class CTB(nn.Module):
    """Contextual transformation block: CTL(C -> C/2, ReLU), CTL(C/2 -> C, linear), identity residual."""

    def __init__(self, in_chs, mid_chs, out_chs):
        super().__init__()
        assert in_chs == out_chs
        self.ctl1 = CTL(in_chs, mid_chs, relu=True)
        self.ctl2 = CTL(mid_chs, out_chs, relu=False)

    def forward(self, x):
        return self.ctl2(self.ctl1(x)) + x


class PA(nn.Module):
    """Pixel attention: x * sigmoid(1x1(x))."""

    def __init__(self, nf):
        super().__init__()
        self.conv = nn.Conv2d(nf, nf, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(x))


class CTNet(nn.Module):
    """CTNet for 1-channel LST (x2 / x4; the LST channel counts `in_nc` / `out_nc` are fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2 or 4 (one or two nearest-x2 upsampling stages).
        nf: channel width of the stem and of the 16 transformation blocks (64).
        unf: channel width of the upsampling stages (24).
        nb: each block taps nf // nb channels for the final fusion; the 16 taps must add up to nf,
            so nb must be 16 (the block count).
    """

    kind = "sisr"
    scales = (2, 4)
    lr_multiple = 1
    unused_parameters = tuple(f"ctb{i}.ctl{j}.cfe.0.k{k}." for i in range(1, 17) for j in (1, 2) for k in (3, 4))

    def __init__(self, scale: int = 4, nf=64, unf=24, nb=16):
        super().__init__()
        assert scale in (2, 4), "CTNet supports x2 and x4"
        self.scale = scale
        self.n_blocks = 16
        self.conv_first = nn.Conv2d(LST_CHANNELS, nf, 3, 1, 1)
        for i in range(1, self.n_blocks + 1):
            if i > 1:
                setattr(self, f"cem{i}", CEM(nf))
            setattr(self, f"ctb{i}", CTB(nf, nf // 2, nf))
            setattr(self, f"cfa{i}", nn.Conv2d(nf, nf // nb, 3, 1, 1, groups=nf // nb, bias=False))
        self.upconv1 = nn.Conv2d(nf, unf, 3, 1, 1)
        self.att1 = PA(unf)
        self.HRconv1 = nn.Conv2d(unf, unf, 3, 1, 1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(unf, unf, 3, 1, 1)
            self.att2 = PA(unf)
            self.HRconv2 = nn.Conv2d(unf, unf, 3, 1, 1)
        self.conv_last = nn.Conv2d(unf, LST_CHANNELS, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.c = nn.Conv2d(nf, nf, 1, 1, 0)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        fea = self.conv_first(lr_lst)
        x, skips = fea, []
        for i in range(1, self.n_blocks + 1):
            if i > 1:
                x = getattr(self, f"cem{i}")(x)
            x = getattr(self, f"ctb{i}")(x)
            skips.append(getattr(self, f"cfa{i}")(x))
        fea = fea + self.c(torch.cat(skips, dim=1))
        stages = [("upconv1", "att1", "HRconv1")] + ([("upconv2", "att2", "HRconv2")] if self.scale == 4 else [])
        for up, att, hr in stages:
            fea = getattr(self, up)(F.interpolate(fea, scale_factor=2, mode="nearest"))
            fea = self.lrelu(getattr(self, att)(fea))
            fea = self.lrelu(getattr(self, hr)(fea))
        base = F.interpolate(lr_lst, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(fea) + base
