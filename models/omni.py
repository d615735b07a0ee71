"""OmniSR: Omni Aggregation Networks for Lightweight Image Super-Resolution (CVPR 2023).

A lightweight SR transformer (Wang et al.). A 3x3 stem (64 ch) feeds 5 omni self-attention groups
(OSAG); each is 4 OSA blocks + a 1x1 conv with a residual, followed by enhanced spatial attention
(ESA). An OSA block is: MBConv (1x1, depthwise 3x3, squeeze-excitation, 1x1, residual); window
(block) self-attention over 8x8 windows with a learned relative position bias; gated-dconv FFN;
channel attention inside each 8x8 window (over channels, features = the 64 window pixels); FFN; then
the same three steps in "grid" form (attention over pixels strided by H/8, channel attention over the
same offset of every window); all pre-norm residual. A 3x3 conv adds the stem (long skip) and a 3x3
conv + PixelShuffle head produces the image. There is no interpolation skip.

Reproduces upstream GrokLST `groklst/models/editors/omni/omnisr.py::OmniSR` (num_feat=64, res_num=5,
block_num=4, window_size=8, with_pe=True, ffn_bias=True). Parameters: x2 2,827,716 / x4 2,834,640 /
x8 2,862,336. The upstream rearrange calls are written as plain view/permute; the hand-written LayerNorm2d
autograd function upstream is replaced by the same maths under ordinary autograd. state_dict keys
match upstream; outputs were compared with upstream on shared weights (identical to float precision).

Input size: any h, w. As upstream, the LR input is zero-padded to a multiple of 8 (the window size)
and the output is cropped. Upstream's ESA needs padded sides >= 15 (stride-2 3x3 conv, then a 7x7
max-pool), i.e. it crashes for LR sides <= 8; here the ESA context branch replicate-pads its input up
to 15 in that case, a no-op for every size upstream accepts (no parameters involved).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of (B, C, H, W), eps inside the sqrt."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class PreNormResidual(nn.Module):
    """x + fn(LayerNorm(x)) on channels-last tensors."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x)) + x


class Conv_PreNormResidual(nn.Module):
    """x + fn(LayerNorm2d(x)) on (B, C, H, W)."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x)) + x


class Gated_Conv_FeedForward(nn.Module):
    """1x1 to 2*hidden, depthwise 3x3, GELU(a) * b, 1x1 back (no biases)."""

    def __init__(self, dim, mult=1, bias=False):
        super().__init__()
        hidden = int(dim * mult)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x):
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class SqueezeExcitation(nn.Module):
    """x * sigmoid(Linear(SiLU(Linear(mean_hw(x))))); gate indices 1 and 3 hold the weights (upstream keys)."""

    def __init__(self, dim, shrinkage_rate=0.25):
        super().__init__()
        hidden = int(dim * shrinkage_rate)
        self.gate = nn.Sequential(nn.Identity(), nn.Linear(dim, hidden, bias=False), nn.SiLU(),
                                  nn.Linear(hidden, dim, bias=False), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


class MBConvResidual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def MBConv(dim, expansion_rate=1, shrinkage_rate=0.25):
    hidden = int(expansion_rate * dim)
    return MBConvResidual(nn.Sequential(
        nn.Conv2d(dim, hidden, 1), nn.GELU(),
        nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden), nn.GELU(),
        SqueezeExcitation(hidden, shrinkage_rate),
        nn.Conv2d(hidden, dim, 1)))


class ToWindows(nn.Module):
    """(B, C, H, W) -> (B, X, Y, w, w, C), X = H/w. block: pixel (x*w + i); grid: pixel (i*X + x)."""

    def __init__(self, w, grid=False):
        super().__init__()
        self.w, self.grid = w, grid

    def forward(self, x):
        b, c, h, wd = x.shape
        w, nx, ny = self.w, h // self.w, wd // self.w
        if self.grid:
            return x.view(b, c, w, nx, w, ny).permute(0, 3, 5, 2, 4, 1)
        return x.view(b, c, nx, w, ny, w).permute(0, 2, 4, 3, 5, 1)


class FromWindows(nn.Module):
    """Inverse of ToWindows: (B, X, Y, w, w, C) -> (B, C, H, W)."""

    def __init__(self, w, grid=False):
        super().__init__()
        self.w, self.grid = w, grid

    def forward(self, t):
        b, nx, ny, w, _, c = t.shape
        if self.grid:
            return t.permute(0, 5, 3, 1, 4, 2).reshape(b, c, w * nx, w * ny)
        return t.permute(0, 5, 1, 3, 2, 4).reshape(b, c, nx * w, ny * w)


class Attention(nn.Module):
    """Multi-head self-attention inside each window with relative position bias; (B, X, Y, w, w, C) -> same."""

    def __init__(self, dim, dim_head=32, window_size=8, with_pe=True):
        super().__init__()
        assert dim % dim_head == 0
        self.heads = dim // dim_head
        self.scale = dim_head ** -0.5
        self.with_pe = with_pe
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False))
        if with_pe:
            self.rel_pos_bias = nn.Embedding((2 * window_size - 1) ** 2, self.heads)
            pos = torch.arange(window_size)
            coords = torch.stack(torch.meshgrid(pos, pos, indexing="ij")).flatten(1).t()      # (N, 2)
            rel = coords[:, None, :] - coords[None, :, :] + window_size - 1                    # (N, N, 2)
            self.register_buffer("rel_pos_indices", rel[..., 0] * (2 * window_size - 1) + rel[..., 1],
                                 persistent=False)

    def forward(self, x):
        b, nx, ny, w1, w2, c = x.shape
        n, h = w1 * w2, self.heads
        q, k, v = self.to_qkv(x.reshape(-1, n, c)).chunk(3, dim=-1)
        q, k, v = (t.reshape(-1, n, h, c // h).transpose(1, 2) for t in (q, k, v))        # (B', h, N, d)
        sim = (q * self.scale) @ k.transpose(-2, -1)
        if self.with_pe:
            sim = sim + self.rel_pos_bias(self.rel_pos_indices).permute(2, 0, 1)
        out = sim.softmax(dim=-1) @ v
        out = self.to_out(out.transpose(1, 2).reshape(-1, w1, w2, c))
        return out.view(b, nx, ny, w1, w2, c)


class Channel_Attention(nn.Module):
    """Transposed (channel) attention per head with L2-normalised q, k and a learned temperature.

    grid=False: groups are the ps x ps windows, features the window's pixels.
    grid=True: groups are the ps*ps in-window offsets, features the same offset across all windows.
    """

    def __init__(self, dim, heads, bias=False, window_size=8, grid=False):
        super().__init__()
        self.heads, self.ps, self.grid = heads, window_size, grid
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, 1, 1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def _split(self, t):
        b, c, h, w = t.shape
        p, hd = self.ps, self.heads
        t = t.view(b, hd, c // hd, h // p, p, w // p, p)          # (b, head, d, h', ph, w', pw)
        if self.grid:
            return t.permute(0, 4, 6, 1, 2, 3, 5).reshape(b, p * p, hd, c // hd, -1)
        return t.permute(0, 3, 5, 1, 2, 4, 6).reshape(b, -1, hd, c // hd, p * p)

    def _merge(self, t, h, w):
        b, _, hd, d, _ = t.shape
        p = self.ps
        if self.grid:
            t = t.view(b, p, p, hd, d, h // p, w // p).permute(0, 3, 4, 5, 1, 6, 2)
        else:
            t = t.view(b, h // p, w // p, hd, d, p, p).permute(0, 3, 4, 1, 5, 2, 6)
        return t.reshape(b, hd * d, h, w)

    def forward(self, x):
        h, w = x.shape[-2:]
        q, k, v = (self._split(t) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out(self._merge(attn @ v, h, w))


class OSA_Block(nn.Module):
    """Omni self-attention block on (B, C, H, W), H and W multiples of window_size.

    `layer` keeps upstream's Sequential indices (1, 3, 7, 9 are the parameter-free window reshapes).
    """

    def __init__(self, channel_num=64, window_size=8, with_pe=True):
        super().__init__()
        c, w = channel_num, window_size
        self.layer = nn.Sequential(
            MBConv(c, expansion_rate=1, shrinkage_rate=0.25),
            ToWindows(w), PreNormResidual(c, Attention(c, c // 4, w, with_pe)), FromWindows(w),
            Conv_PreNormResidual(c, Gated_Conv_FeedForward(c)),
            Conv_PreNormResidual(c, Channel_Attention(c, heads=4, window_size=w)),
            Conv_PreNormResidual(c, Gated_Conv_FeedForward(c)),
            ToWindows(w, grid=True), PreNormResidual(c, Attention(c, c // 4, w, with_pe)), FromWindows(w, grid=True),
            Conv_PreNormResidual(c, Gated_Conv_FeedForward(c)),
            Conv_PreNormResidual(c, Channel_Attention(c, heads=4, window_size=w, grid=True)),
            Conv_PreNormResidual(c, Gated_Conv_FeedForward(c)),
        )

    def forward(self, x):
        return self.layer(x)


class ESA(nn.Module):
    """Enhanced spatial attention: x * sigmoid(1x1(up(conv3(maxpool(strided conv))) + 1x1(x')))."""

    def __init__(self, esa_channels, n_feats):
        super().__init__()
        f = esa_channels
        self.conv1 = nn.Conv2d(n_feats, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, n_feats, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        c1_ = self.conv1(x)
        ctx = c1_
        if h < 15 or w < 15:                       # keep the 7x7 max-pool valid on tiny maps
            ctx = F.pad(ctx, (0, max(0, 15 - w), 0, max(0, 15 - h)), mode="replicate")
        c3 = self.conv3(F.max_pool2d(self.conv2(ctx), kernel_size=7, stride=3))
        c3 = F.interpolate(c3, (h, w), mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))


class OSAG(nn.Module):
    """Omni self-attention group: ESA(x + 1x1(OSA x block_num (x)))."""

    def __init__(self, channel_num=64, block_num=4, window_size=8, with_pe=True):
        super().__init__()
        blocks = [OSA_Block(channel_num, window_size, with_pe) for _ in range(block_num)]
        self.residual_layer = nn.Sequential(*blocks, nn.Conv2d(channel_num, channel_num, 1, 1, 0))
        self.esa = ESA(max(channel_num // 4, 16), channel_num)

    def forward(self, x):
        return self.esa(self.residual_layer(x) + x)


class OmniSR(nn.Module):
    """OmniSR for 1-channel LST (the LST channel counts `num_in_ch` / `num_out_ch` are fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (one conv + PixelShuffle(scale) head).
        num_feat: channel width of the stem and of every attention group (64).
        res_num: number of omni self-attention groups (OSAG) (5).
        block_num: OSA blocks per group (4).
        window_size: side of the block / grid attention windows, in LR pixels (8; the input is
            zero-padded to a multiple of it).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, num_feat=64, res_num=5, block_num=4, window_size=8):
        super().__init__()
        self.scale = scale
        self.window_size = window_size
        self.input = nn.Conv2d(LST_CHANNELS, num_feat, 3, 1, 1)
        self.residual_layer = nn.Sequential(*[OSAG(num_feat, block_num, window_size) for _ in range(res_num)])
        self.output = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.up = nn.Sequential(nn.Conv2d(num_feat, LST_CHANNELS * scale ** 2, 3, 1, 1), nn.PixelShuffle(scale))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        h, w = lr_lst.shape[-2:]
        ws = self.window_size
        x = F.pad(lr_lst, (0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))   # zeros, as upstream
        res = self.input(x)
        out = self.up(self.output(self.residual_layer(res)) + res)
        return out[:, :, :h * self.scale, :w * self.scale]
