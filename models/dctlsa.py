"""DCTLSA: Densely Connected Transformer With Linear Self-Attention for Lightweight Image Super-Resolution (IEEE TIM 2023).

A lightweight SR transformer (Zeng et al.). A 3x3 stem (nf=55 ch) feeds six linear-self-attention
blocks (LSAB) that are densely connected: block i sees a 1x1-conv + LeakyReLU fusion of the stem and
all earlier block outputs. Each LSAB is 2 x [LayerNorm over tokens, then 2 window transformer blocks
(window 16, alternately cyclic-shifted by 8, no shift mask)]. Each transformer block's attention first
adds a local branch (BN, 1x1, depthwise 3x3, BN, 1x1) to its input, then runs *linear* attention per
window and head (softmax over the tokens of k, out = (q * d**-0.5) @ (k^T v)), projects, and adds the
local-enhanced input back; an MLP (ratio 2, GELU) is added after. The six block outputs are fused by
1x1 conv + LeakyReLU, a 3x3 conv adds the stem (long skip) and a 3x3 conv + PixelShuffle head produces
the image. There is no interpolation skip.

Reproduces upstream GrokLST `groklst/models/editors/dctlsa/dctlsa.py::DCTLSA` (nf=55, num_modules=6,
num_head=5). Parameters: x2 862,514 / x4 868,466 / x8 892,274. state_dict keys (including the
BatchNorm buffers) match upstream; outputs were compared with upstream on shared weights (identical
to float precision).

Input size: any h, w. As upstream, each transformer stage reflect-pads the feature map to a
multiple of 16 and crops back. Reflect padding needs pad < side, so upstream crashes for sides
<= 8 (e.g. a side of 8 needs a pad of 8); here replicate padding is used in exactly those cases,
which leaves every size upstream accepts unchanged (no parameters involved).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


def window_partition(x, ws):
    """(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c)


def window_reverse(windows, ws, h, w):
    """(B * H/ws * W/ws, ws, ws, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


class LocalModule(nn.Sequential):
    """Local enhancement on (B, C, H, W): BN, 1x1, depthwise 3x3, BN, 1x1 (no biases)."""

    def __init__(self, channels):
        super().__init__()
        self.add_module("pointwise_prenorm_0", nn.BatchNorm2d(channels))
        self.add_module("pointwise_conv_0", nn.Conv2d(channels, channels, 1, bias=False))
        self.add_module("depthwise_conv", nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False))
        self.add_module("pointwise_prenorm_1", nn.BatchNorm2d(channels))
        self.add_module("pointwise_conv_1", nn.Conv2d(channels, channels, 1, bias=False))


class WindowAttention(nn.Module):
    """Local branch + per-window linear attention on (B, H, W, C); H, W multiples of window_size."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.local = LocalModule(dim)

    def forward(self, x):
        b, h, w, c = x.shape
        ws, nh = self.window_size, self.num_heads
        t = x.permute(0, 3, 1, 2)
        local = (self.local(t) + t).permute(0, 2, 3, 1)                     # (B, H, W, C)
        qkv = window_partition(self.qkv(local), ws).reshape(-1, ws * ws, 3, nh, c // nh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                 # each (nW*B, nh, N, d)
        k = k.softmax(dim=-2)
        out = (q * self.scale) @ (k.transpose(-2, -1) @ v)                   # linear attention
        out = self.proj(out.transpose(1, 2).reshape(-1, ws * ws, c))
        return window_reverse(out.view(-1, ws, ws, c), ws, h, w) + local


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """(B, H*W, C) -> same: optional cyclic shift, window attention (with its own residual), + MLP."""

    def __init__(self, dim, num_heads, window_size=16, shift_size=0, mlp_ratio=2.0):
        super().__init__()
        self.shift_size = shift_size
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, x_size):
        h, w = x_size
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        s = self.shift_size
        if s > 0:
            x = torch.roll(self.attn(torch.roll(x, (-s, -s), dims=(1, 2))), (s, s), dims=(1, 2))
        else:
            x = self.attn(x)
        x = x.reshape(b, h * w, c)
        return x + self.mlp(x)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> LayerNorm'ed tokens (B, H*W, C)."""

    def __init__(self, embed_dim):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        return self.norm(x.flatten(2).transpose(1, 2))


class BasicLayer(nn.Module):
    """Pad to a multiple of window_size, embed, `depth` (un)shifted blocks, unembed, crop."""

    def __init__(self, dim, depth=2, num_heads=5, window_size=16, mlp_ratio=2.0):
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio)
            for i in range(depth)])
        self.patch_embed = PatchEmbed(dim)

    def forward(self, x):
        b, c, h, w = x.shape
        ws = self.window_size
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"   # reflect is impossible for tiny maps
            x = F.pad(x, (0, pw, 0, ph), mode)
        hp, wp = h + ph, w + pw
        t = self.patch_embed(x)
        for blk in self.blocks:
            t = blk(t, (hp, wp))
        x = t.transpose(1, 2).reshape(b, c, hp, wp)
        return x[:, :, :h, :w]


class SwinT(nn.Module):
    def __init__(self, num_head=5, n_feats=55):
        super().__init__()
        self.transformer_body = nn.Sequential(BasicLayer(n_feats, depth=2, num_heads=num_head, window_size=16,
                                                         mlp_ratio=2.0))

    def forward(self, x):
        return self.transformer_body(x)


class LSAB(nn.Module):
    """Linear self-attention block: two SwinT stages, (B, C, H, W) -> same."""

    def __init__(self, in_channels=55, num_head=5):
        super().__init__()
        self.body = nn.Sequential(*[SwinT(num_head, in_channels) for _ in range(2)])

    def forward(self, x):
        return self.body(x)


def conv1x1_lrelu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.LeakyReLU(0.05, inplace=True))


class DCTLSA(nn.Module):
    """DCTLSA for 1-channel LST (the LST channel counts `in_nc` / `out_nc` are fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (one conv + PixelShuffle(scale) head).
        nf: channel width of the stem and of every attention block (55; divisible by num_head).
        num_modules: number of densely connected attention blocks (LSAB); the wiring needs 6.
        num_head: attention heads per window (5).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, nf=55, num_modules=6, num_head=5):
        super().__init__()
        assert num_modules == 6, "the dense wiring (B1..B6, c1..c5) is fixed to six blocks"
        self.fea_conv = nn.Conv2d(LST_CHANNELS, nf, 3, 1, 1)
        for i in range(1, 7):
            setattr(self, f"B{i}", LSAB(nf, num_head))
        self.c = conv1x1_lrelu(nf * num_modules, nf)
        for i in range(1, 6):
            setattr(self, f"c{i}", conv1x1_lrelu(nf * (i + 1), nf))
        self.LR_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upsampler = nn.Sequential(nn.Conv2d(nf, LST_CHANNELS * scale ** 2, 3, 1, 1), nn.PixelShuffle(scale))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        fea = self.fea_conv(lr_lst)
        dense, outs, x = fea, [], fea
        for i in range(1, 7):
            y = getattr(self, f"B{i}")(x)
            outs.append(y)
            if i < 6:
                dense = torch.cat([dense, y], dim=1)
                x = getattr(self, f"c{i}")(dense)
        out = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(out)
