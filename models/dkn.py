"""DKN / FDKN: Deformable Kernel Networks for Joint Image Filtering (IJCV 2021).

Guided LST super-resolution by deformable kernels. The LR LST is bicubic-upsampled to HR; two small CNNs
(one on the HR guidance, one on the upsampled LST) each predict, for every HR pixel, r*r = 9 weights and
9 2-D offsets; their products define a sparse deformable 3x3 filter that samples the upsampled LST inside
a 15x15 window (bilinear) and is added as a residual. Reproduces upstream GrokLST `dkn/DKN` and
`dkn/FDKN` (editors/dkn/dkn_net.py); state_dict keys match upstream (`ImageKernel.conv1.weight`, ...).

Parameter counts (guidance_channels=10, kernel_size=3, filter_size=15):
    DKN  x2/x4/x8: 1,169,046 (scale-free)
    FDKN x2: 613,720   x4: 735,328   x8: 1,221,760 (the kernel nets see s*s space-to-depth channels)

Deformable sampling. Upstream unfolds a 15x15 patch for every HR pixel (b*h*w, 1, 15, 15), then calls
F.grid_sample on each patch: 236 MB (+ copies and grads) at HR 512. Here the same bilinear sampling is done
directly on the zero-padded image with 4 gathers of the corner pixels (`deform_filter`): identical numbers
(grid_sample, align_corners=False, zero padding *of the patch*: corners that fall outside the 15x15 window
count as 0, exactly as upstream, even where the image continues), memory O(9*h*w).

DKN shift-and-stitch. Upstream runs each kernel net (convs without padding, two stride-2 layers) 16 times
on zero-padded shifted copies to get a dense HR output. By default (`stitch=False`) this is computed in
one pass by the equivalent "a trous" network (strides removed, later convs dilated 2 and 4, input padded
25/24): identical output in eval mode (checked against upstream: max abs diff 2e-7), 16x less compute on
the first layer; at HR 512 x8 one fwd+bwd takes 2.77 GB / 107 s versus 5.86 GB / 211 s for the 16-pass
loop. Difference in train mode only: BatchNorm batch statistics are taken over all HR positions at once
instead of separately over each of the 16 shifted sub-grids (output differs by ~1% at init), and running
stats get one momentum update per forward instead of 16. `stitch=True` reproduces the upstream
16-pass loop exactly (also in train mode). No parameter differs between the two.

Peak memory / time at HR 512x512, batch 1, x8 (LR 64), one forward+backward, CPU, 2 threads, fresh process
(max RSS via resource.getrusage; the 2-core machine was shared, load ~9, so seconds are pessimistic):
see the class docstrings.

Input sizes: any h, w (lr_multiple = 1). HR guidance is (B, C, h*scale, w*scale).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def deform_filter(x, weight, offset, filter_size, kernel_size):
    """Deformable r x r filter inside a k x k window, as upstream's unfold + grid_sample + bmm.

    x: (B, 1, H, W); weight: (B, r*r, H, W); offset: (B, 2*r*r, H, W) in pixels, channel 2*n is the
    x (column) offset and 2*n+1 the y (row) offset of tap n = a*r + b. Tap n of pixel (i, j) samples the
    k x k window around (i, j) at window coords (column k//2 + a + dx - 0.5, row k//2 + b + dy - 0.5)
    (the -0.5 is grid_sample's align_corners=False convention on the upstream grid (g / k * 2 - 1)).
    Bilinear; window corners outside [0, k-1] are zero. Returns (B, 1, H, W) = sum_n weight_n * sample_n.
    """
    B, _, H, W = x.shape
    k, r, P = filter_size, kernel_size, filter_size // 2
    tap = torch.arange(r, device=x.device, dtype=x.dtype) + (P - 0.5)
    off = offset.view(B, r * r, 2, H, W)
    u = tap.repeat_interleave(r).view(1, r * r, 1, 1) + off[:, :, 0]  # column inside the window
    v = tap.repeat(r).view(1, r * r, 1, 1) + off[:, :, 1]  # row inside the window
    u0, v0 = u.floor(), v.floor()
    fu, fv = u - u0, v - v0
    xp = F.pad(x, (P, P, P, P)).reshape(B, -1)  # window (i, j) starts at padded pixel (i, j)
    Wp = W + 2 * P
    rows = torch.arange(H, device=x.device).view(1, 1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, 1, W)
    out = 0
    for du, dv, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        cu, cv = u0 + du, v0 + dv
        inside = (cu >= 0) & (cu <= k - 1) & (cv >= 0) & (cv <= k - 1)
        cu, cv = cu.clamp(0, k - 1).long(), cv.clamp(0, k - 1).long()
        idx = ((rows + cv) * Wp + cols + cu).reshape(B, -1)
        val = xp.gather(1, idx).view(B, r * r, H, W)
        out = out + val * (w * inside)
    return (out * weight).sum(1, keepdim=True)


class KernelDKN(nn.Module):
    """DKN kernel branch: valid convs with two stride-2 layers; 50-pixel receptive field, output stride 4.

    forward(x, dense): x (B, C, H+49, W+49) zero-padded if dense (a trous: strides -> dilations), else
    (B, C, H+47, W+47) for one shift of the upstream shift-and-stitch. Returns weight (B, r*r, .) in (0, 1)
    and offset (B, 2*r*r, .), at H x W (dense) or H/4 x W/4 (one shift).
    """

    def __init__(self, input_channel, kernel_size):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channel, 32, 7)
        self.conv1_bn = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 2, stride=2)
        self.conv3 = nn.Conv2d(32, 64, 5)
        self.conv3_bn = nn.BatchNorm2d(64)
        self.conv4 = nn.Conv2d(64, 64, 2, stride=2)
        self.conv5 = nn.Conv2d(64, 128, 5)
        self.conv5_bn = nn.BatchNorm2d(128)
        self.conv6 = nn.Conv2d(128, 128, 3)
        self.conv7 = nn.Conv2d(128, 128, 3)
        self.conv_weight = nn.Conv2d(128, kernel_size**2, 1)
        self.conv_offset = nn.Conv2d(128, 2 * kernel_size**2, 1)

    def forward(self, x, dense=True):
        layers = ((self.conv1, self.conv1_bn, 1), (self.conv2, None, 1), (self.conv3, self.conv3_bn, 2),
                  (self.conv4, None, 2), (self.conv5, self.conv5_bn, 4), (self.conv6, None, 4), (self.conv7, None, 4))
        for conv, bn, dil in layers:
            x = F.conv2d(x, conv.weight, conv.bias, dilation=dil) if dense else conv(x)
            x = F.relu(bn(x) if bn is not None else x)
        return torch.sigmoid(self.conv_weight(x)), self.conv_offset(x)


class DKN(nn.Module):
    """DKN (upstream dkn/DKN). 1,169,046 parameters at every scale.

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (only sets the bicubic pre-upsampling: the kernel nets run at HR).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        kernel_size: taps per side r of the deformable filter (3: 9 weights and 9 2-D offsets per HR pixel).
        filter_size: side of the window around each HR pixel that the taps sample inside, in HR pixels (15).
        residual: zero-mean kernel whose output is added to the bicubic LST (True, upstream); False
            normalises the kernel to sum 1 and returns the filtered bicubic LST.
        stitch: False (default): one-pass a trous kernel nets (see module docstring); True: upstream's
            16-pass shift-and-stitch loop (same parameters, differs in train-mode BatchNorm only).

    HR 512x512, B=1, x8, one forward+backward, CPU 2 threads (fresh process, shared machine at load ~9):
        stitch=False: peak RSS 2.77 GB, 107 s      stitch=True (upstream loop): peak RSS 5.86 GB, 211 s
    """

    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, kernel_size: int = 3, filter_size: int = 15,
                 residual: bool = True, stitch: bool = False):
        super().__init__()
        self.scale, self.kernel_size, self.filter_size = scale, kernel_size, filter_size
        self.residual, self.stitch = residual, stitch
        self.ImageKernel = KernelDKN(guidance_channels, kernel_size)
        self.DepthKernel = KernelDKN(1, kernel_size)

    def _combine(self, hr_guidance, x, dense):
        imw, imo = self.ImageKernel(hr_guidance, dense)
        dpw, dpo = self.DepthKernel(x, dense)
        weight, offset = imw * dpw, imo * dpo
        if self.residual:
            return weight - weight.mean(1, keepdim=True), offset
        return weight / weight.sum(1, keepdim=True), offset

    def _kernels(self, hr_guidance, x):
        H, W = x.shape[-2:]
        if not self.stitch:  # dense: row y sees padded rows [y-25, y+24]
            pad = lambda t: F.pad(t, (25, 24, 25, 24))
            return self._combine(pad(hr_guidance), pad(x), True)
        # upstream shift-and-stitch: 16 runs of the stride-4 nets on shifted zero-padded inputs
        H4, W4 = -(-H // 4) * 4, -(-W // 4) * 4
        r2 = self.kernel_size**2
        weight = x.new_zeros(x.shape[0], r2, H4, W4)
        offset = x.new_zeros(x.shape[0], 2 * r2, H4, W4)
        for i in range(4):
            for j in range(4):
                pad = lambda t: F.pad(t, (25 - j, 22 + j + W4 - W, 25 - i, 22 + i + H4 - H))
                w, o = self._combine(pad(hr_guidance), pad(x), False)
                weight[:, :, i::4, j::4] = w
                offset[:, :, i::4, j::4] = o
        return weight[..., :H, :W], offset[..., :H, :W]

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        x = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        weight, offset = self._kernels(hr_guidance, x)
        out = deform_filter(x, weight, offset, self.filter_size, self.kernel_size)
        return out + x if self.residual else out


class KernelFDKN(nn.Module):
    """FDKN kernel branch on space-to-depth input (B, C*s*s, H/s, W/s), 'same' convs.

    Returns weight (B, r*r*s*s, H/s, W/s) in (0, 1) and offset (B, 2*r*r*s*s, H/s, W/s).
    """

    def __init__(self, input_channel, kernel_size, factor=4):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channel, 32, 3, padding=1)
        self.conv1_bn = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3_bn = nn.BatchNorm2d(64)
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv5 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv5_bn = nn.BatchNorm2d(128)
        self.conv6 = nn.Conv2d(128, 128, 3, padding=1)
        self.conv_weight = nn.Conv2d(128, kernel_size**2 * factor**2, 1)
        self.conv_offset = nn.Conv2d(128, 2 * kernel_size**2 * factor**2, 1)

    def forward(self, x):
        x = F.relu(self.conv1_bn(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3_bn(self.conv3(x)))
        x = F.relu(self.conv4(x))
        x = F.relu(self.conv5_bn(self.conv5(x)))
        x = F.relu(self.conv6(x))
        return torch.sigmoid(self.conv_weight(x)), self.conv_offset(x)


def space_to_depth(x, s):
    """(B, C, H, W) -> (B, s*s*C, H/s, W/s), channel (i*s + j)*C + c = x[:, c, i::s, j::s] (upstream order)."""
    B, C, H, W = x.shape
    return F.pixel_unshuffle(x, s).view(B, C, s * s, H // s, W // s).transpose(1, 2).reshape(B, -1, H // s, W // s)


class FDKN(nn.Module):
    """FDKN (upstream dkn/FDKN): fast DKN, kernel nets at LR on s x s space-to-depth input, pixel-shuffled.

    Parameters: x2 613,720, x4 735,328, x8 1,221,760.

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (the kernel nets see scale x scale space-to-depth blocks).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        kernel_size: taps per side r of the deformable filter (3: 9 weights and 9 2-D offsets per HR pixel).
        filter_size: side of the window around each HR pixel that the taps sample inside, in HR pixels (15).
        residual: zero-mean kernel whose output is added to the bicubic LST (True, upstream); False
            normalises the kernel to sum 1 and returns the filtered bicubic LST.

    HR 512x512, B=1, x8, one forward+backward, CPU 2 threads (fresh process, shared machine at load ~9):
        peak RSS 0.76 GB, 8.9 s.
    """

    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, kernel_size: int = 3, filter_size: int = 15,
                 residual: bool = True):
        super().__init__()
        self.scale, self.kernel_size, self.filter_size, self.residual = scale, kernel_size, filter_size, residual
        self.ImageKernel = KernelFDKN(guidance_channels * scale * scale, kernel_size, factor=scale)
        self.DepthKernel = KernelFDKN(scale * scale, kernel_size, factor=scale)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        s = self.scale
        x = F.interpolate(lr_lst, scale_factor=s, mode="bicubic", align_corners=False)
        imw, imo = self.ImageKernel(space_to_depth(hr_guidance, s))
        dpw, dpo = self.DepthKernel(space_to_depth(x, s))
        weight, offset = F.pixel_shuffle(imw * dpw, s), F.pixel_shuffle(imo * dpo, s)
        if self.residual:
            weight = weight - weight.mean(1, keepdim=True)
        else:
            weight = weight / weight.sum(1, keepdim=True)
        out = deform_filter(x, weight, offset, self.filter_size, self.kernel_size)
        return out + x if self.residual else out
