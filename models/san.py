"""SAN: Second-Order Attention Network for Single Image Super-Resolution (CVPR 2019).

Dai et al.'s network: 3x3 stem -> region non-local block -> 20 local-source residual attention groups
(LSRAG), each of 10 plain residual blocks (conv-ReLU-conv + skip), second-order channel attention
(SOCA) and a 3x3 conv with a group skip; every group output also receives `gamma * (non-local
output)` (share-source skip, gamma learnt, init 0) -> the same region non-local block again -> long
skip from the stem -> log2(scale) x (3x3 conv to 4C + PixelShuffle(2)) -> 3x3 conv to 1 channel.

SOCA: the (C, C) covariance of the feature map over its pixels is square-rooted by 5 Newton-Schulz
iterations (trace pre-normalisation, sqrt(trace) post-compensation, as in iSQRT-COV / MPN-COV);
the column means of the root give a C-vector that goes through a 1x1 C -> C/16 -> C MLP + sigmoid and
gates the channels. Upstream implements covariance pooling and the matrix square root as custom
autograd Functions with hand-written backward passes; those backwards are the exact gradients of the
forwards, so here both are plain torch ops differentiated by autograd (checked against upstream in
forward and gradient). Region non-local: the map is split into 4 quadrants, each goes through an
embedded-Gaussian non-local block (C/8 inner channels; g and phi branches max-pooled by 2 because
upstream's 2-D branch overrides `sub_sample=False`, reproduced here; output conv W zero-initialised).

Reproduces upstream GrokLST `groklst/models/editors/san/san.py::SAN` (n_resgroups=20, n_resblocks=10,
n_feats=64, reduction=16 in the group SOCAs; hard-coded upstream, exposed here as kwargs with those
defaults; the non-local wrapper's own SOCA uses reduction 8).
Parameters: x2 15,710,470 / x4 15,858,182 / x8 16,005,894. state_dict keys match upstream (gamma, RG,
conv_last, non_local, head, tail); outputs were compared with upstream on shared weights (max abs
difference ~6e-6 in float32 on outputs of magnitude ~5; in float64 all parameter gradients agree to 1e-14).

Unused parameters (present upstream and in the reference counts, but never touched by upstream's
forward, so they get no gradient): `conv_last` (top-level 3x3 conv), `non_local.soca` (a SOCA module
built inside the non-local wrapper), and `RG.<i>.gamma` (the per-group gamma; its use is commented
out upstream). They are kept so counts and checkpoint keys match.

Fix (no parameters involved): upstream SOCA centre-crops maps larger than 1000 px per side, but its
branch logic mis-slices when one side is exactly 1000 and the other smaller (negative start index);
here each side is independently centre-cropped to at most 1000, identical in every other case.
Input size: h, w >= 4 (each quadrant must survive the 2x2 max-pool of the non-local block).
"""
import math

import torch
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


def covariance_pool(x):
    """(B, C, h, w) -> (B, C, C) covariance over pixels: Xc Xc^T / (h*w), Xc = X minus its pixel mean."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w)
    x = x - x.mean(-1, keepdim=True)
    return x @ x.transpose(1, 2) / (h * w)


def sqrtm_newton_schulz(a, iters=5):
    """Approximate square root of SPD matrices a (B, C, C) with coupled Newton-Schulz iterations.

    a is divided by its trace (so the iteration converges), iterated `iters` times (Y -> sqrt, Z -> inverse
    sqrt) and multiplied back by sqrt(trace). Matches MPN-COV's Sqrtm forward step by step.
    """
    assert iters >= 2
    b, c, _ = a.shape
    i3 = 3.0 * torch.eye(c, dtype=a.dtype, device=a.device).expand(b, c, c)
    norm = a.diagonal(dim1=-2, dim2=-1).sum(-1).view(b, 1, 1)  # trace
    a = a / norm
    zy = 0.5 * (i3 - a)
    y, z = a @ zy, zy
    for _ in range(iters - 2):
        zy = 0.5 * (i3 - z @ y)
        y, z = y @ zy, zy @ z
    y = 0.5 * y @ (i3 - z @ y)
    return y * norm.sqrt()


class SOCA(nn.Module):
    """Second-order channel attention: x * sigmoid(MLP(mean_rows(sqrtm(cov(x))))), (B, C, h, w) -> same."""

    def __init__(self, channel, reduction=8):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1), nn.Sigmoid())

    def forward(self, x):
        b, c, h, w = x.shape
        top, left = max(h - 1000, 0) // 2, max(w - 1000, 0) // 2  # centre-crop sides > 1000 px (as upstream)
        x_sub = x[:, :, top:top + 1000, left:left + 1000]
        cov_sqrt = sqrtm_newton_schulz(covariance_pool(x_sub), 5)
        return self.conv_du(cov_sqrt.mean(1).view(b, c, 1, 1)) * x


class NonLocalBlock2D(nn.Module):
    """Embedded-Gaussian non-local block, (B, C, h, w) -> same: x + W(softmax(theta^T phi) g).
    g and phi are max-pooled by 2 (keys: h*w/4); W is zero-initialised so the block starts as identity."""

    def __init__(self, in_channels, inter_channels):
        super().__init__()
        self.inter_channels = inter_channels
        self.g = nn.Sequential(nn.Conv2d(in_channels, inter_channels, 1), nn.MaxPool2d(2))
        self.W = nn.Conv2d(inter_channels, in_channels, 1)
        nn.init.zeros_(self.W.weight)
        nn.init.zeros_(self.W.bias)
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)
        self.phi = nn.Sequential(nn.Conv2d(in_channels, inter_channels, 1), nn.MaxPool2d(2))

    def forward(self, x):
        b, _, h, w = x.shape
        ci = self.inter_channels
        g = self.g(x).reshape(b, ci, -1).transpose(1, 2)  # (B, n/4, Ci)
        theta = self.theta(x).reshape(b, ci, -1).transpose(1, 2)  # (B, n, Ci)
        phi = self.phi(x).reshape(b, ci, -1)  # (B, Ci, n/4)
        attn = torch.softmax(theta @ phi, dim=-1)  # (B, n, n/4)
        y = (attn @ g).transpose(1, 2).reshape(b, ci, h, w)
        return self.W(y) + x


class Nonlocal_CA(nn.Module):
    """Region non-local: the same non-local block applied to each of the 4 quadrants.
    `soca` exists upstream but is not used in its forward (kept for parameter / key parity)."""

    def __init__(self, in_feat=64, inter_feat=8, reduction=8):
        super().__init__()
        self.soca = SOCA(in_feat, reduction=reduction)
        self.non_local = NonLocalBlock2D(in_feat, inter_feat)

    def forward(self, x):
        h1, w1 = x.shape[2] // 2, x.shape[3] // 2
        nl = self.non_local
        top = torch.cat([nl(x[:, :, :h1, :w1]), nl(x[:, :, :h1, w1:])], 3)
        bottom = torch.cat([nl(x[:, :, h1:, :w1]), nl(x[:, :, h1:, w1:])], 3)
        return torch.cat([top, bottom], 2)


class RB(nn.Module):
    """Plain residual block: x + conv(relu(conv(x)))."""

    def __init__(self, n_feat, kernel_size=3):
        super().__init__()
        self.conv_first = nn.Sequential(default_conv(n_feat, n_feat, kernel_size), nn.ReLU(inplace=True),
                                        default_conv(n_feat, n_feat, kernel_size))

    def forward(self, x):
        return x + self.conv_first(x)


class LSRAG(nn.Module):
    """Local-source residual attention group: x + conv(SOCA(RB^n(x))).
    `gamma` exists upstream but its use is commented out there (kept for parameter / key parity)."""

    def __init__(self, n_feat, kernel_size, reduction, n_resblocks):
        super().__init__()
        self.rcab = nn.ModuleList([RB(n_feat, kernel_size) for _ in range(n_resblocks)])
        self.soca = SOCA(n_feat, reduction=reduction)
        self.conv_last = default_conv(n_feat, n_feat, kernel_size)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        res = x
        for block in self.rcab:
            res = block(res)
        return self.conv_last(self.soca(res)) + x


class SAN(nn.Module):
    """SAN for 1-channel LST (the LST channel count `n_colors` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (log2(scale) conv + PixelShuffle(2) stages).
        n_resgroups: number of local-source residual attention groups (LSRAG) (20).
        n_resblocks: plain residual blocks per group (10).
        n_feats: channel width of the stem, body and upsampler (64).
        reduction: squeeze ratio of the groups' second-order channel attention (16).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    # never used by the forward pass (see module docstring); RG.<i>.gamma listed for the default 20 groups
    unused_parameters = ("conv_last.", "non_local.soca.") + tuple(f"RG.{i}.gamma" for i in range(20))

    def __init__(self, scale: int = 8, n_resgroups=20, n_resblocks=10, n_feats=64, reduction=16):
        super().__init__()
        self.unused_parameters = ("conv_last.", "non_local.soca.") + tuple(f"RG.{i}.gamma" for i in range(n_resgroups))
        self.gamma = nn.Parameter(torch.zeros(1))
        self.RG = nn.ModuleList([LSRAG(n_feats, 3, reduction, n_resblocks) for _ in range(n_resgroups)])
        self.conv_last = default_conv(n_feats, n_feats, 3)  # unused upstream
        self.non_local = Nonlocal_CA(in_feat=n_feats, inter_feat=n_feats // 8, reduction=8)
        self.head = nn.Sequential(default_conv(LST_CHANNELS, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, LST_CHANNELS, 3))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, h, w >= 4; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        x = self.head(lr_lst)
        xx = self.non_local(x)
        shared = xx
        for group in self.RG:
            xx = group(xx) + self.gamma * shared
        return self.tail(self.non_local(xx) + x)
