"""PAC: Pixel-Adaptive Convolutional Neural Networks (CVPR 2019).

Guided LST super-resolution with pixel-adaptive transposed convolutions (the "PacJointUpsample" network of
the paper). A target branch (3 convs 5x5) encodes the LR LST; a guidance branch (3 convs 5x5) turns the HR
guidance into 16 adapting features per 2x stage; log2(scale) pixel-adaptive transposed convs (stride 2,
5x5) each upsample by 2, their 5x5 filter being modulated per output pixel by a Gaussian kernel
exp(-0.5 * ||f(p) - f(q)||^2) of the guidance features (bilinearly resized to the stage size); two final
convs predict the HR LST. No residual/bicubic skip (as upstream). Reproduces upstream GrokLST `pac/PAC`
(editors/pac/pac_net.py + pac.py, from NVlabs/pacnet); state_dict keys match upstream.

Parameter counts (guidance_channels=10, default kwargs): x2 150,641  x4 189,089  x8 227,537.

Upstream bug ("bug" in upstream editors/__init__.py): the custom autograd Functions of pac.py
(PacConvTranspose2dFn, GaussKernel2dFn) call `ctx._backend.Im2Col_updateGradInput` in backward, the legacy
THNN backend of PyTorch 0.4; the line that set `ctx._backend` is commented out (THNN no longer exists), so
the first backward raises AttributeError ('PacConvTranspose2dFnBackward' object has no attribute '_backend')
and the model cannot be trained. Fix: the same maths written with differentiable torch ops (F.unfold, exp,
einsum), so autograd derives the backward. No module or parameter changes (counts above are upstream's).
Verified: forward equals upstream's on the same weights (max abs diff 0 at x2/x4/x8), and 200 AdamW steps
(lr 1e-4, L1, batch 1, x2, smooth synthetic data at LR 16, ~N(0,1)) give a finite, falling loss:
mean of the first 10 steps 0.804 -> last 10 steps 0.250 (PAC has no bicubic skip, so it starts at ~0.8).

Memory: upstream unfolds the whole zero-inserted input (C*25 values per HR pixel: 840 MB for the last x8
stage at HR 512, plus same-size products and grads). Here `pac_conv_transpose2d` works on bands of output
rows under activation checkpointing (torch.utils.checkpoint), so only one band's unfold lives at a time.
Measured at HR 512x512, B=1, x8 (LR 64), CPU 2 threads, one forward+backward in a fresh process:
see PAC's docstring.

Input sizes: any h, w (lr_multiple = 1); scale must be a power of 2.
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


def _pac_band(xp, gp, weight, bias, r0, r1):
    """Output rows [r0, r1) of a pixel-adaptive 'same' 5x5 correlation on pre-padded inputs.

    xp: (B, C, H+k-1, W+k-1) zero-inserted + padded input; gp: (B, G, H+k-1, W+k-1) zero-padded guidance.
    out[o, y, x] = bias[o] + sum_{c, dy, dx} weight[c, o, dy, dx] * K[dy, dx, y, x] * xp[c, y+dy, x+dx],
    K = exp(-0.5 * sum_g (gp[g, y+dy, x+dx] - gp[g, y+k//2, x+k//2])^2)   (upstream: no kernel flip).
    """
    B, C = xp.shape[:2]
    k = weight.shape[-1]
    R, W = r1 - r0, xp.shape[-1] - k + 1
    gs = gp[:, :, r0:r1 + k - 1]
    cols = F.unfold(gs, k).view(B, gs.shape[1], k * k, R, W)
    center = gs[:, :, k // 2:k // 2 + R, k // 2:k // 2 + W].unsqueeze(2)
    K = torch.exp(-0.5 * (cols - center).pow(2).sum(1))  # (B, k*k, R, W)
    cols = F.unfold(xp[:, :, r0:r1 + k - 1], k).view(B, C, k * k, R, W) * K.unsqueeze(1)
    out = torch.einsum("bckrw,cok->borw", cols, weight.reshape(C, weight.shape[1], k * k))
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def pac_conv_transpose2d(x, guide, weight, bias=None, stride=2, padding=2, output_padding=1, budget=2**24):
    """Pixel-adaptive transposed conv (PacConvTranspose2d, Gaussian kernel, dilation 1, no normalisation).

    x: (B, C, h, w); guide: (B, G, H, W) adapting features at output size H = (h-1)*stride - 2*padding + k
    + output_padding; weight: (C, O, k, k); bias: (O,). Returns (B, O, H, W).
    Computed in bands of rows holding ~`budget` unfolded values each; with grad enabled each band is
    checkpointed, so peak memory is one band, not the full (B, (C+G)*k*k, H*W) unfold.
    """
    B, C, h, w = x.shape
    k = weight.shape[-1]
    xu = F.conv_transpose2d(x, x.new_ones(C, 1, 1, 1), stride=stride, groups=C)  # zero insertion
    p = k - 1 - padding
    xp = F.pad(xu, (p, p + output_padding, p, p + output_padding))
    gp = F.pad(guide, (k // 2,) * 4)
    H, W = xp.shape[-2] - k + 1, xp.shape[-1] - k + 1
    assert guide.shape[-2:] == (H, W), (guide.shape, H, W)
    rows = max(1, budget // (B * W * k * k * (C + guide.shape[1])))
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, guide, weight, bias))
    outs = []
    for r0 in range(0, H, rows):
        args = (xp, gp, weight, bias, r0, min(H, r0 + rows))
        if grad and rows < H:
            outs.append(torch.utils.checkpoint.checkpoint(_pac_band, *args, use_reentrant=False))
        else:
            outs.append(_pac_band(*args))
    return torch.cat(outs, 2)


class PacConvTranspose2d(nn.Module):
    """Upstream PacConvTranspose2d with its defaults (kernel 'gaussian', no smoothing/normalisation,
    'uniform' filler). weight (in, out, k, k), bias (out,). forward(x (B, in, h, w), guide (B, G, H, W))."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, bias=True):
        super().__init__()
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x, guide):
        return pac_conv_transpose2d(x, guide, self.weight, self.bias, self.stride, self.padding, self.output_padding)


def _branch(channels, f_sz, bn):
    """Plain conv stack 'conv1, [bn1], relu1, conv2, ...' (no ReLU after the last conv), upstream names."""
    layers = []
    for l in range(len(channels) - 1):
        layers.append((f"conv{l + 1}", nn.Conv2d(channels[l], channels[l + 1], f_sz, padding=f_sz // 2)))
        if bn:
            layers.append((f"bn{l + 1}", nn.BatchNorm2d(channels[l + 1])))
        if l < len(channels) - 2:
            layers.append((f"relu{l + 1}", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


class PAC(nn.Module):
    """PAC joint upsampler (upstream pac/PAC). Params x2 150,641  x4 189,089  x8 227,537.

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (a power of 2: log2(scale) pixel-adaptive 2x stages).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        n_t_layers: convs of the target (LR LST) branch (3).
        n_g_layers: convs of the guidance branch (3).
        n_f_layers: convs of the final branch, after the upsampling stages (2).
        n_t_filters: width of the target-branch convs (32; or a list of n_t_layers widths).
        n_g_filters: width of the guidance-branch hidden convs (32; or a list of n_g_layers - 1 widths).
        n_f_filters: width of the upsampling stages and final hidden convs (32; or a list of
            n_f_layers + log2(scale) - 1 widths).
        k_ch: adapting guidance features per 2x stage (16); the guidance branch outputs k_ch * log2(scale).
        f_sz_1: kernel side of the branch convs (5; odd).
        f_sz_2: kernel side of the pixel-adaptive transposed convs (5).
        t_bn: BatchNorm after each target-branch conv (False).
        g_bn: BatchNorm after each guidance-branch conv (False).
        u_bn: BatchNorm after each upsampling stage (False).
        f_bn: BatchNorm after each final-branch conv (False).

    HR 512x512, B=1, x8 (LR 64), one forward+backward, CPU 2 threads (fresh process, max RSS; shared
    2-core machine at load ~9, so seconds are pessimistic): peak RSS 1.68 GB, 56 s.
    """

    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, n_t_layers=3, n_g_layers=3, n_f_layers=2,
                 n_t_filters=32, n_g_filters=32, n_f_filters=32, k_ch=16, f_sz_1=5, f_sz_2=5,
                 t_bn=False, g_bn=False, u_bn=False, f_bn=False):
        super().__init__()
        assert math.log2(scale) % 1 == 0 and f_sz_1 % 2 == 1
        num_ups = int(math.log2(scale))
        self.scale, self.k_ch = scale, k_ch
        tup = lambda v, n: (v,) * n if isinstance(v, int) else tuple(v)
        n_t = (1,) + tup(n_t_filters, n_t_layers)
        n_g = (guidance_channels,) + tup(n_g_filters, n_g_layers - 1) + (k_ch * num_ups,)
        n_f = (n_t[-1],) + tup(n_f_filters, n_f_layers + num_ups - 1) + (1,)
        self.branch_t = _branch(n_t, f_sz_1, t_bn)
        self.branch_g = _branch(n_g, f_sz_1, g_bn)
        p, op = (f_sz_2 - 1) // 2, f_sz_2 % 2
        self.up_convts = nn.ModuleList(PacConvTranspose2d(n_f[l], n_f[l + 1], f_sz_2, stride=2, padding=p,
                                                          output_padding=op) for l in range(num_ups))
        self.up_bns = nn.ModuleList(nn.BatchNorm2d(n_f[l + 1]) for l in range(num_ups)) if u_bn else nn.ModuleList()
        self.branch_f = _branch(n_f[num_ups:], f_sz_1, f_bn)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        x = self.branch_t(lr_lst)
        g = self.branch_g(hr_guidance)
        for i, up in enumerate(self.up_convts):
            guide = g[:, i * self.k_ch:(i + 1) * self.k_ch]
            factor = 2 ** (i + 1) / self.scale
            if factor != 1:
                guide = F.interpolate(guide, scale_factor=factor, mode="bilinear", align_corners=False)
            x = up(x, guide)
            if len(self.up_bns):
                x = self.up_bns[i](x)
            x = F.relu(x)
        return self.branch_f(x)
