"""MoCoLSK-Net: "GrokLST: Towards High-Resolution Benchmark and Toolkit for Land Surface
Temperature Downscaling" (Dai et al., arXiv 2409.19835, 2024).

Guided LST downscaling: a low-resolution LST branch and a high-resolution guidance branch
(conv stem + residual groups of residual channel-attention blocks), N stages each joined by a
MoCoLSK module between a DBPN up-projection (LST features to HR) and a down-projection (back
to LR), then a reconstruction module (residual group, up-projection, two residual groups at
HR), a projection head and a bicubic skip of the LR input.

The MoCoLSK module (modality-conditioned large selective kernel), at HR with dim channels:
  LSK pathway   A1 = dw5x5(X), A2 = dw7x7_dil3(A1)  (receptive field 23), U1, U2 = 1x1 to dim/2,
                SA = [mean_c, max_c]([U1, U2])  -> (B, 2, H, W)
  MCWG pathway  pyramid pooling (bins 1, 2, 3, 6) of X and of Y -> 50 tokens each; a dynamic MLP
                in which the guidance tokens generate the matrices that transform the LST tokens
                -> one 2x2xkxk kernel per token, averaged over tokens
  selection     M = sigmoid(conv(SA, kernel)); S = 1x1(U1*M0 + U2*M1); Z = S * Y
  output        down-projection of concat([X, Z]).

Reproduces GrokLST's `MoCoLSKNet` (groklst/models/editors/mocolsk, HEAD d5c4740) and the
ablation package of commit 3b47f34 (MoCoLSK-CS, single large kernel, static conv, pooling
variants, Ex variant, baseline block), with identical state-dict keys: a checkpoint of the
original loads after stripping the `generator.` / `generator.module.` prefixes.
Parameters at the default settings: x2 20,011,833; x4 25,430,841; x8 40,913,721.

Two defects of the original are decided here (`reference_compat` restores them exactly):
  * the generated kernel was wrapped in `nn.Parameter(requires_grad=False)`, i.e. detached, so
    the 149,440 dynamic-MLP weights never trained; here the hyper-network is trained;
  * the kernel was averaged over the batch (one kernel per mini-batch); here each sample gets
    its own kernel, applied in one grouped convolution over the batch.

Memory (same outputs and gradients as storing everything): LeakyReLUs in residual blocks are in
place; each residual block's conv + channel-attention tail is one ConvAttention, whose backward
needs neither the conv output nor its recomputation; each MoCoLSK module (~1 GMAC at 512x512)
and each DBPN projection unit is recomputed from its input in backward.
`checkpointing=True` also recomputes the HR stages (guidance groups, bridges, reconstruction
blocks) from their inputs. Step times and peak memory (x8, 512x512): docs/performance.md.

Shapes: lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised
guidance -> (B, 1, h*scale, w*scale) normalised LST. Any h, w >= 1 (the projections are exact
x scale for every size; adaptive pooling needs no divisibility). Imports torch only.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# (kernel, stride, padding) of the DBPN projection convolutions: exact x scale up / down.
PROJECTION = {2: (6, 2, 2), 4: (8, 4, 2), 8: (12, 8, 2), 16: (20, 16, 2)}


def conv3x3(cin, cout, kernel_size=3):
    return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2)


def projection(cin, cout, scale, up):
    k, s, p = PROJECTION[scale]
    return (nn.ConvTranspose2d if up else nn.Conv2d)(cin, cout, k, stride=s, padding=p)


class CALayer(nn.Module):
    """Channel attention (RCAN): x * sigmoid(W2 relu(W1 avgpool(x)))."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(x.mean((2, 3), keepdim=True))


def window_sums(a, k, dtype):
    """(B, Cin, H, W) -> (B, Cin, k, k): for each tap of a k x k conv with padding k // 2, the sum of
    the input pixels it sees over all outputs (the conv's weight gradient for a gradient of ones)."""
    p, H, W = k // 2, a.shape[-2], a.shape[-1]

    def taps(n, d):  # the input range tap d sees along an axis of length n
        start = min(n, max(0, d - p))
        return slice(start, max(start, n + min(0, d - p)))

    cols = torch.stack([a[..., taps(W, d)].sum(-1) for d in range(k)], -1).to(dtype)  # (B, Cin, H, k)
    return torch.stack([cols[..., taps(H, d), :].sum(-2) for d in range(k)], -2)


class ConvAttention(torch.autograd.Function):
    """The tail of an RCAB, c = conv(a) then CALayer: out = c * sigmoid(w2 relu(w1 mean_hw(c) + b1) + b2),
    with a backward that keeps only a (which the conv needs anyway) and recomputes nothing.

    The attention needs d(loss)/dy = sum_hw(grad * c) per sample and channel. The conv is linear,
    so that sum equals sum_(i, offset)(weight * G_b) + bias * sum_hw(grad), where G_b is the conv's
    weight gradient for sample b and upstream grad, which backward computes anyway. So c (one HR
    map per block) is not stored, and not recomputed either as checkpointing would. Same outputs
    and gradients as CALayer(conv(a)) to float rounding (tests/test_mocolsk.py).

    a (B, Cin, H, W); weight (C, Cin, k, k), stride 1, padding k // 2; w1 (C/r, C, 1, 1), w2 (C, C/r, 1, 1).
    """

    @staticmethod
    def forward(ctx, a, weight, bias, w1, b1, w2, b2):
        c = F.conv2d(a, weight, bias, padding=weight.shape[-1] // 2)
        pooled = c.mean((2, 3), keepdim=True)
        hidden = F.relu(F.conv2d(pooled, w1, b1))
        y = torch.sigmoid(F.conv2d(hidden, w2, b2))
        ctx.save_for_backward(a, weight, bias, w1, w2, pooled, hidden, y)
        ctx.dtype = c.dtype  # the compute dtype (bf16 under autocast)
        return c.mul_(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, weight, bias, w1, w2, pooled, hidden, y = ctx.saved_tensors
        dtype, (B, C, H, W), (_, Cin, k, _) = ctx.dtype, grad.shape, weight.shape
        a, w, grad = a.to(dtype), weight.to(dtype), grad.to(dtype).contiguous()
        acc = torch.promote_types(dtype, torch.float32)  # small per-channel sums: at least float32
        conv_args = ([k // 2] * 2, [1, 1], False, [0, 0])  # padding, dilation, transposed, output_padding
        conv_grad = torch.ops.aten.convolution_backward
        # per-sample weight gradients G_b for upstream grad: one grouped call, (B, C, Cin, k, k)
        G = conv_grad(grad.reshape(1, B * C, H, W), a.reshape(1, B * Cin, H, W), w.repeat(B, 1, 1, 1), None,
                      [1, 1], *conv_args, B, [False, True, False])[1].view(B, C, Cin, k, k).to(acc)
        grad_sum = grad.sum((2, 3)).to(acc)  # (B, C); summed in grad's dtype: a dtype= argument copies the HR map
        dy = (G * weight.to(acc)).sum((2, 3, 4))  # = sum_hw(grad * (c - bias))
        if bias is not None:
            dy = dy + bias.to(acc) * grad_sum
        # back through the attention MLP (B x C, in acc): sigmoid, 1x1, relu, 1x1, mean
        y, hidden, pooled = y.to(acc).view(B, C), hidden.to(acc).view(B, -1), pooled.to(acc).view(B, C)
        dz = dy * y * (1 - y)
        dhidden = (dz @ w2.to(acc).view(C, -1)) * (hidden > 0)
        dpooled = dhidden @ w1.to(acc).view(-1, C)
        dmean = dpooled / (H * W)  # (B, C): what each pixel of c gets through the mean
        # gradient of c = grad * y + dmean, then the conv's own backward
        dc = (grad * y.to(dtype).view(B, C, 1, 1)).add_(dmean.to(dtype).view(B, C, 1, 1))
        da = conv_grad(dc, a, w, None, [1, 1], *conv_args, 1, [True, False, False])[0]
        # dweight = sum_b y_b G_b + dmean_b x (the weight gradient for a map of ones)
        dweight = torch.einsum("bc,bcikl->cikl", y, G) + torch.einsum("bc,bikl->cikl", dmean, window_sums(a, k, acc))
        dbias = None if bias is None else (y * grad_sum + dpooled).sum(0).to(bias.dtype)
        return (da, dweight.to(weight.dtype), dbias, (dhidden.T @ pooled).view_as(w1).to(w1.dtype),
                dhidden.sum(0).to(w1.dtype), (dz.T @ hidden).view_as(w2).to(w2.dtype), dz.sum(0).to(w2.dtype))


class RCAB(nn.Module):
    """Residual channel-attention block: x + CA(conv(lrelu(conv(x)))).

    Memory: the LeakyReLU is in place and the conv + channel-attention tail is one ConvAttention,
    so a block stores one HR activation besides its input, with no recomputation.
    """

    def __init__(self, channels, kernel_size=3, reduction=16):
        super().__init__()
        self.body = nn.Sequential(conv3x3(channels, channels, kernel_size), nn.LeakyReLU(0.2, inplace=True),
                                  conv3x3(channels, channels, kernel_size), CALayer(channels, reduction))

    def forward(self, x):
        a = self.body[1](self.body[0](x))
        conv, (fc1, _, fc2, _) = self.body[2], self.body[3].conv_du
        return x + ConvAttention.apply(a, conv.weight, conv.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias)


class ResidualGroup(nn.Module):
    """n RCABs and a conv, with a skip over the group."""

    def __init__(self, channels, n_resblocks, kernel_size=3, reduction=16):
        super().__init__()
        blocks = [RCAB(channels, kernel_size, reduction) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*blocks, conv3x3(channels, channels, kernel_size))

    def forward(self, x):
        return x + self.body(x)


class DenseProjection(nn.Module):
    """DBPN up- (LR->HR) or down-projection (HR->LR) unit: a0 + P(P'(a0) - x), a0 = P(x)."""

    def __init__(self, cin, cout, scale, up=True):
        super().__init__()
        self.conv_1 = nn.Sequential(projection(cin, cout, scale, up), nn.PReLU(cout))
        self.conv_2 = nn.Sequential(projection(cout, cin, scale, not up), nn.PReLU(cin))
        self.conv_3 = nn.Sequential(projection(cin, cout, scale, up), nn.PReLU(cout))

    def project(self, x):
        a0 = self.conv_1(x)
        return a0 + self.conv_3(self.conv_2(a0) - x)

    def forward(self, x):
        if torch.is_grad_enabled():
            # recomputed in backward (~2 % of the x8 compute): 3 HR activations per unit not stored
            return torch.utils.checkpoint.checkpoint(self.project, x, use_reentrant=False)
        return self.project(x)


# ----------------------------------------------------------------------------- dynamic MLP


class Basic1d(nn.Module):
    """Linear + ReLU, or (bias=False) Linear without bias + LayerNorm + ReLU."""

    def __init__(self, cin, cout, bias=True):
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module("0", nn.Linear(cin, cout, bias))
        if not bias:
            self.conv.add_module("ln", nn.LayerNorm(cout))
        self.conv.add_module("relu", nn.ReLU())

    def forward(self, x):
        return self.conv(x)


class DynamicMLP(nn.Module):
    """One dynamic-MLP layer (Yang et al., CVPR 2022), versions A, B, C, per token.

    img (B, N, cin), loc (B, N, loc) -> (B, N, cout): the loc tokens generate a (cin x cout)
    matrix per token that multiplies the img token. B and C add small MLPs on both inputs.
    """

    def __init__(self, cin, cout, loc, version="a"):
        super().__init__()
        self.cin, self.cout, self.version = cin, cout, version.lower()
        if self.version == "a":
            self.get_weight = nn.Linear(loc, cin * cout)
            self.norm = nn.LayerNorm(cout)
        elif self.version in ("b", "c"):
            both = self.version == "c"  # C feeds concat([img, loc]) to both paths
            self.conv11 = Basic1d(cin + loc if both else cin, cin)
            self.conv12 = nn.Linear(cin, cin)
            self.conv21 = Basic1d(cin + loc if both else loc, cin)
            self.conv22 = nn.Linear(cin, cin * cout)
            self.br = nn.Sequential(nn.LayerNorm(cout), nn.ReLU())
            self.conv3 = Basic1d(cout, cout, bias=False)
        else:
            raise ValueError(f"mlp_type must be 'a', 'b' or 'c', got {version!r}")

    def forward(self, img, loc):
        shape = img.shape[:-1] + (self.cin, self.cout)
        if self.version == "a":
            out = (img.unsqueeze(-2) @ self.get_weight(loc).view(shape)).squeeze(-2)
            return F.relu(self.norm(out))
        both = torch.cat([img, loc], -1) if self.version == "c" else None
        vec = self.conv12(self.conv11(img if both is None else both))
        mat = self.conv22(self.conv21(loc if both is None else both)).view(shape)
        return self.conv3(self.br((vec.unsqueeze(-2) @ mat).squeeze(-2)))


class RecursiveBlock(nn.Module):
    def __init__(self, cin, cout, loc, version):
        super().__init__()
        self.dynamic_conv = DynamicMLP(cin, cout, loc, version)

    def forward(self, img, loc):
        return self.dynamic_conv(img, loc)


class FusionModule(nn.Module):
    """Token hyper-network: (B, N, inplanes) LST tokens, (B, N, planes) guidance tokens ->
    (B, N, out_dim) = LN(W3 dmlp(W1 img, loc)) + W4 img. out_dim = 2*2*k*k for the spatial
    MoCoLSK (a 2->2 kxk kernel), the attention width for MoCoLSK-CS."""

    def __init__(self, inplanes, planes, hidden=32, num_layers=1, mlp_type="a", out_dim=36):
        super().__init__()
        self.conv1 = nn.Linear(inplanes, planes)
        widths = [planes] + [hidden] * (num_layers - 1) + [planes]
        self.conv2 = nn.ModuleList(RecursiveBlock(widths[i], widths[i + 1], planes, mlp_type)
                                   for i in range(num_layers))
        self.conv3 = nn.Linear(planes, out_dim)
        self.norm3 = nn.LayerNorm(out_dim)
        self.conv4 = nn.Linear(inplanes, out_dim)

    def forward(self, img, loc):
        x = self.conv1(img)
        for block in self.conv2:
            x = block(x, loc)
        return self.norm3(self.conv3(x)) + self.conv4(img)


def pool_matrix(n, bins, device, dtype):
    """(sum(bins), n): row j averages the j-th window of adaptive average pooling of n
    positions into b bins, for each b in bins (window i of b: [floor(i n / b), ceil((i+1) n / b)))."""
    pos = torch.arange(n, device=device)
    rows = []
    for b in bins:
        i = torch.arange(b, device=device)
        start, end = i * n // b, ((i + 1) * n + b - 1) // b
        inside = (pos >= start[:, None]) & (pos < end[:, None])
        rows.append(inside.to(dtype) / (end - start).to(dtype)[:, None])
    return torch.cat(rows)


def pool_tokens(x, pooling, bins):
    """Context tokens of a feature map (B, C, H, W): 'ppm' -> (B, sum(b*b), C) by adaptive average
    pooling at each bin size (row-major, bins in order); 'avg' / 'max' -> (B, 1, C);
    'avgmax' -> (B, 1, 2C).

    The pyramid pooling is two matrix products with averaging matrices (rows, then columns): the
    same windows and values as F.adaptive_avg_pool2d, whose CUDA kernels are slow for large maps
    (one thread per output sums a whole window; backward scatters with atomics: 0.36 s of a 0.56 s
    bf16 train step of MoCoLSK-Net x8 at 512x512 on an H200)."""
    if pooling == "ppm":
        h, w = x.shape[2:]
        ph = pool_matrix(h, bins, x.device, x.dtype)
        pw = ph if w == h else pool_matrix(w, bins, x.device, x.dtype)
        cols = x @ pw.t()  # (B, C, H, sum(bins)): column windows of every bin
        tokens, o = [], 0
        for b in bins:
            tokens.append((ph[o:o + b] @ cols[..., o:o + b]).flatten(2))  # (B, C, b*b)
            o += b
        return torch.cat(tokens, 2).transpose(1, 2)
    avg, mx = x.mean((2, 3))[:, None], x.amax((2, 3))[:, None]
    return {"avg": avg, "max": mx, "avgmax": torch.cat([avg, mx], -1)}[pooling]


# ----------------------------------------------------------------------------- fusion modules


class MoCoLSK(nn.Module):
    """Spatial-selection MoCoLSK (and its ablations). X, Y (B, dim, H, W) -> Z (B, dim, H, W)."""

    def __init__(self, dim, lk_kernels=((5, 1), (7, 3)), dynamic_conv=True, pooling="ppm",
                 ppm_bins=(1, 2, 3, 6), mlp_type="a", mlp_layers=1, mlp_hidden=32, dynamic_kernel_size=3,
                 modality_fusion=True, reference_compat=False):
        super().__init__()
        (k1, d1), (k2, d2) = lk_kernels
        self.k, self.pooling, self.bins = dynamic_kernel_size, pooling, tuple(ppm_bins)
        self.modality_fusion, self.reference_compat = modality_fusion, reference_compat
        self.conv_lst = nn.Conv2d(dim, dim, k1, padding=d1 * (k1 - 1) // 2, dilation=d1, groups=dim)
        self.conv_spatial0 = nn.Conv2d(dim, dim, k2, padding=d2 * (k2 - 1) // 2, dilation=d2, groups=dim)
        self.conv1 = nn.Conv2d(dim, dim // 2, 1)
        self.conv2 = nn.Conv2d(dim, dim // 2, 1)
        if dynamic_conv:
            width = 2 if pooling == "avgmax" else 1
            self.dynamic_mlp = FusionModule(width * dim, width * dim, mlp_hidden, mlp_layers, mlp_type,
                                            out_dim=4 * dynamic_kernel_size ** 2)
        else:  # static 7x7 conv replaces the generated kernel (paper Table II, no DConv)
            self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(dim // 2, dim, 1)

    def select_kernel(self, x, y):
        """The generated kernel: (B, 2, 2, k, k), or (1, 2, 2, k, k) in reference_compat mode."""
        w = self.dynamic_mlp(pool_tokens(x, self.pooling, self.bins), pool_tokens(y, self.pooling, self.bins))
        w = w.mean(1)  # average the per-token candidates (B, 4k^2)
        if self.reference_compat:  # the original: batch mean, detached (never trained)
            w = w.mean(0, keepdim=True).detach()
        return w.view(-1, 2, 2, self.k, self.k)

    def forward(self, x, y):
        a1 = self.conv_lst(x)
        u1, u2 = self.conv1(a1), self.conv2(self.conv_spatial0(a1))
        u = torch.cat([u1, u2], 1)
        sa = torch.cat([u.mean(1, keepdim=True), u.amax(1, keepdim=True)], 1)  # (B, 2, H, W)
        if hasattr(self, "conv_squeeze"):
            logits = self.conv_squeeze(sa)
        else:
            w = self.select_kernel(x, y)
            b, _, h, wd = sa.shape
            if w.shape[0] == 1:
                logits = F.conv2d(sa, w[0], padding=self.k // 2)
            else:  # one kernel per sample: a grouped conv over the batch
                logits = F.conv2d(sa.reshape(1, 2 * b, h, wd), w.reshape(2 * b, 2, self.k, self.k),
                                  padding=self.k // 2, groups=b).view(b, 2, h, wd)
        m = logits.sigmoid()
        s = self.conv(u1 * m[:, :1] + u2 * m[:, 1:])
        return s * (y if self.modality_fusion else x)


class MoCoLSKCS(nn.Module):
    """Channel-selection MoCoLSK-CS (paper Fig. 8): SK-style softmax over the two large-kernel
    branches per channel, the MCWG output added to the branch descriptor. -> attn * Y."""

    def __init__(self, dim, lk_kernels=((5, 1), (7, 3)), pooling="ppm", ppm_bins=(1, 2, 3, 6),
                 mlp_type="a", mlp_layers=1, mlp_hidden=32, modality_fusion=True):
        super().__init__()
        (k1, d1), (k2, d2) = lk_kernels
        d = max(dim // 2, 32)
        self.pooling, self.bins, self.modality_fusion = pooling, tuple(ppm_bins), modality_fusion
        self.lkconv1 = nn.Conv2d(dim, dim, k1, padding=d1 * (k1 - 1) // 2, dilation=d1, groups=dim)
        self.lkconv2 = nn.Conv2d(dim, dim, k2, padding=d2 * (k2 - 1) // 2, dilation=d2, groups=dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.fc = nn.Linear(dim, d)
        self.fcs = nn.ModuleList([nn.Linear(d, dim), nn.Linear(d, dim)])
        width = 2 if pooling == "avgmax" else 1
        self.dynamic_mlp = FusionModule(width * dim, width * dim, mlp_hidden, mlp_layers, mlp_type, out_dim=d)

    def forward(self, x, y):
        a1 = self.lkconv1(x)
        f1, f2 = self.conv1(a1), self.conv2(self.lkconv2(a1))
        z = self.fc((f1 + f2).mean((2, 3)))
        z = z + self.dynamic_mlp(pool_tokens(x, self.pooling, self.bins),
                                 pool_tokens(y, self.pooling, self.bins)).mean(1)
        a = torch.stack([fc(z) for fc in self.fcs], 1).softmax(1)[..., None, None]  # (B, 2, dim, 1, 1)
        return (f1 * a[:, 0] + f2 * a[:, 1]) * (y if self.modality_fusion else x)


class OneLargeKernel(nn.Module):
    """No decomposition: one depthwise kernel of the same receptive field, Z = dwconv(X) * Y
    (the original's MoCoOneLKConv, the paper's single-large-kernel row: no selection, no MCWG)."""

    def __init__(self, dim, receptive_field=23, modality_fusion=True):
        super().__init__()
        self.modality_fusion = modality_fusion
        self.lkconv = nn.Conv2d(dim, dim, receptive_field, padding=receptive_field // 2, groups=dim)

    def forward(self, x, y):
        return self.lkconv(x) * (y if self.modality_fusion else x)


class Bridge(nn.Module):
    """One stage's fusion: X = up(lst) (B, gui_dim, H, W); Z = dlsk(X, Y);
    out = down(concat[X, Z]) (B, lst_dim + gui_dim, h, w). dlsk None = the baseline block
    (identity fusion, Z = Y). swap=True (the 'Ex' variant) feeds the guidance to the LSK
    pathway and fuses with the LST features (the roles of X and Y exchanged)."""

    def __init__(self, lst_dim, gui_dim, scale, dlsk=None, swap=False):
        super().__init__()
        self.swap = swap
        self.lst_up = DenseProjection(lst_dim, gui_dim, scale, up=True)
        if dlsk is not None:
            self.dlsk = dlsk
        self.down = DenseProjection(2 * gui_dim, lst_dim + gui_dim, scale, up=False)

    def forward(self, lst, gui):
        x = self.lst_up(lst)
        if not hasattr(self, "dlsk"):
            z = gui
        else:
            a, b = (gui, x) if self.swap else (x, gui)
            if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
                # ~1 GMAC at 512x512 to recompute, ~10 HR intermediates not stored
                z = torch.utils.checkpoint.checkpoint(self.dlsk, a, b, use_reentrant=False)
            else:
                z = self.dlsk(a, b)
        return self.down(torch.cat([x, z], 1))


# ----------------------------------------------------------------------------- the network


class MoCoLSKNet(nn.Module):
    """MoCoLSK-Net.

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (16 also builds).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        num_feats: base width (32); LST widths grow by num_feats per stage, the reconstruction
            module is (num_stages + 1) * num_feats wide.
        kernel_size: side of the convs of the stems, residual blocks and head (3).
        n_resblocks: RCABs per residual group (4; the reconstruction module's last two groups have 2x).
        reduction: channel-attention squeeze ratio of the RCABs (16; at most num_feats).
        num_stages: number of stages (4).
        stages: fusion module per stage, a list of num_stages letters or one letter for all:
            'S' spatial MoCoLSK, 'C' MoCoLSK-CS, 'B' baseline (identity fusion); None = all 'S'.
        lk_kernels: the two decomposed depthwise kernels [(kernel, dilation), ...] ((5,1), (7,3)).
        lk_decomposition: False replaces the pathway by one depthwise kernel of the same
            receptive field (1 + sum((k-1)*d), 23 by default) with no selection (paper Table III).
        dynamic_conv: False uses a static 7x7 conv instead of the generated kernel.
        modality_fusion: False gives Z = X * S instead of Y * S.
        pooling: token pooling of the MCWG pathway: 'ppm' (bins ppm_bins), 'avg', 'max', 'avgmax'.
        ppm_bins: grid sizes of the pyramid pooling ((1, 2, 3, 6): 1 + 4 + 9 + 36 = 50 tokens per modality).
        mlp_type: dynamic MLP version A, B or C ('a'; any case).
        mlp_layers: layers of the dynamic MLP (1).
        mlp_hidden: hidden width of the dynamic MLP (32).
        dynamic_kernel_size: size k of the generated 2->2 kernel (3; paper tries 3..9).
        lsk_input: 'lst' (default) or 'guidance' (the 'Ex' variant).
        reference_compat: reproduce the original exactly: generated kernel detached (the dynamic
            MLP never trains) and averaged over the batch.
        checkpointing: store only the inputs of the HR stages (guidance residual groups, bridges,
            the reconstruction module's residual blocks) and recompute the rest in backward (less
            memory, same gradients, ~30 % more compute).
    """

    kind = "gisr"
    scales = (2, 4, 8, 16)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, num_feats: int = 32, kernel_size: int = 3,
                 n_resblocks: int = 4, num_stages: int = 4, reduction: int = 16, stages=None,
                 lk_kernels=((5, 1), (7, 3)), lk_decomposition: bool = True, dynamic_conv: bool = True,
                 modality_fusion: bool = True, pooling: str = "ppm", ppm_bins=(1, 2, 3, 6), mlp_type: str = "a",
                 mlp_layers: int = 1, mlp_hidden: int = 32, dynamic_kernel_size: int = 3, lsk_input: str = "lst",
                 reference_compat: bool = False, checkpointing: bool = False):
        super().__init__()
        stages = [stages or "S"] * num_stages if stages is None or isinstance(stages, str) else list(stages)
        if len(stages) != num_stages or any(s.upper() not in "SCB" or len(s) != 1 for s in stages):
            raise ValueError(f"stages={stages}: need {num_stages} letters from S, C, B")
        if len(lk_kernels) != 2:
            raise ValueError(f"lk_kernels={lk_kernels}: need two (kernel, dilation) pairs")
        if pooling not in ("ppm", "avg", "max", "avgmax"):
            raise ValueError(f"pooling={pooling!r}: expected ppm, avg, max or avgmax")
        if lsk_input not in ("lst", "guidance"):
            raise ValueError(f"lsk_input={lsk_input!r}: expected 'lst' or 'guidance'")
        if num_feats < reduction:
            raise ValueError(f"num_feats={num_feats} < reduction={reduction}: channel attention would have no channels")
        if scale not in PROJECTION:
            raise ValueError(f"scale={scale}: expected one of {sorted(PROJECTION)}")
        self.scale, self.num_stages, self.checkpointing = scale, num_stages, checkpointing
        nf, k = num_feats, kernel_size
        self.act = nn.LeakyReLU(0.2)
        self.lst_stem = conv3x3(1, nf, k)
        self.gui_stem = conv3x3(guidance_channels, nf, k)
        self.lst_rgs = nn.ModuleList(ResidualGroup((i + 1) * nf, n_resblocks, k, reduction) for i in range(num_stages))
        self.gui_rgs = nn.ModuleList(ResidualGroup(nf, n_resblocks, k, reduction) for _ in range(num_stages))
        receptive_field = 1 + sum((kk - 1) * d for kk, d in lk_kernels)
        shared = dict(pooling=pooling, ppm_bins=ppm_bins, mlp_type=mlp_type, mlp_layers=mlp_layers,
                      mlp_hidden=mlp_hidden, modality_fusion=modality_fusion)
        bridges = []
        for i, s in enumerate(s.upper() for s in stages):
            if s == "B":
                dlsk = None
            elif not lk_decomposition:
                dlsk = OneLargeKernel(nf, receptive_field, modality_fusion)
            elif s == "C":
                dlsk = MoCoLSKCS(nf, lk_kernels, **shared)
            else:
                dlsk = MoCoLSK(nf, lk_kernels, dynamic_conv, dynamic_kernel_size=dynamic_kernel_size,
                               reference_compat=reference_compat, **shared)
            bridges.append(Bridge((i + 1) * nf, nf, scale, dlsk, swap=lsk_input == "guidance"))
        self.bridges = nn.ModuleList(bridges)
        width = (num_stages + 1) * nf
        self.decoder = nn.Sequential(
            ResidualGroup(width, n_resblocks, k, reduction),
            DenseProjection(width, width, scale, up=True),
            ResidualGroup(width, 2 * n_resblocks, k, reduction),
            ResidualGroup(width, 2 * n_resblocks, k, reduction))
        self.proj_head = nn.Sequential(conv3x3(width, nf, k), nn.LeakyReLU(0.2), conv3x3(nf, 1, k))
        if reference_compat and dynamic_conv and lk_decomposition:
            # the original's detached kernel: these parameters never receive a gradient
            self.unused_parameters = tuple(f"bridges.{i}.dlsk.dynamic_mlp." for i, s in enumerate(stages)
                                           if s.upper() == "S")

    def forward(self, lr_lst, hr_guidance):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        recompute = self.checkpointing and torch.is_grad_enabled()

        def run(module, *inputs):  # with checkpointing, HR stages keep only their inputs
            if recompute:
                return torch.utils.checkpoint.checkpoint(module, *inputs, use_reentrant=False)
            return module(*inputs)

        lst = self.act(self.lst_stem(lr_lst))
        gui = self.act(self.gui_stem(hr_guidance))
        for lst_rg, gui_rg, bridge in zip(self.lst_rgs, self.gui_rgs, self.bridges):
            gui = run(gui_rg, gui)
            lst = run(bridge, lst_rg(lst), gui)
        hr = self._reconstruct(self.decoder[1](self.decoder[0](lst)), run)  # to HR, then the HR groups
        bicubic = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return hr + bicubic

    def _reconstruct(self, x, run):
        """The two HR residual groups and the projection head: 92 % of the x8 compute. With
        checkpointing, each residual block is recomputed in backward from its input, so only the
        block inputs are stored (one HR activation per block)."""
        for group in (self.decoder[2], self.decoder[3]):
            h = x
            for block in group.body[:-1]:
                h = run(block, h)
            x = x + group.body[-1](h)
        return self.proj_head(x)
