"""SwinIR: Image Restoration Using Swin Transformer (ICCVW 2021).

Classical-SR SwinIR (Liang et al.): a 3x3 conv stem, six Residual Swin Transformer Blocks (RSTB; each six
Swin blocks with (shifted) 8x8 window self-attention + a 3x3 conv + residual), LayerNorm, a conv after the
body with a long skip, then conv + LeakyReLU and a PixelShuffle(2)^n upsampler. Reproduces upstream GrokLST
`models/editors/swinir` class `SwinIR` with the config kwargs (embed_dim 180, depths/heads 6x6, window 8,
mlp_ratio 2, upsampler 'pixelshuffle', resi_connection '1conv', drop_path_rate 0.1, 1 channel in/out,
img_range 1, no mean shift). Parameters: x2 11,748,093 / x4 11,895,805 / x8 12,043,517 (equal to upstream).

`img_size` only matters through upstream's rule "if min(img_size) <= window_size, shrink the window and drop
the shift"; it defaults to 512 // scale (256/128/64) as in the upstream configs, so the rule never fires.
The model works for any LR size: it reflect-pads to a multiple of window_size, computes the shifted-window
attention mask for the actual padded size, and crops the output back. So lr_multiple = 1.

state_dict: parameter names equal upstream's (conv_first, patch_embed.norm, layers.i.residual_group.blocks.j
.attn.qkv, ...). The derived buffers `relative_position_index` and `attn_mask` are not stored (they are
recomputed), so load an upstream checkpoint with strict=False (or drop those keys).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


# ----------------------------------------------------------------------------------------------- helpers
def trunc_normal_(t, std=0.02):
    """In-place truncated normal (cut at +-2 std), as used for ViT/Swin weights."""
    with torch.no_grad():
        return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-2 * std, b=2 * std)


def drop_path(x, p: float = 0.0, training: bool = False):
    """Stochastic depth: zero whole samples of a residual branch with prob p, rescale the rest by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


def window_partition(x, ws: int):
    """(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C); H, W multiples of ws."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().view(-1, ws, ws, C)


def window_reverse(windows, ws: int, H: int, W: int):
    """Inverse of window_partition: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().view(-1, H, W, C)


def shifted_window_mask(H: int, W: int, ws: int, shift: int, device=None):
    """Additive mask (nW, ws*ws, ws*ws) for shifted-window attention: 0 within a region, -100 across regions
    (regions = the pieces that torch.roll glued together)."""
    ids = torch.zeros(1, H, W, 1, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    n = 0
    for hs in cuts:
        for wsl in cuts:
            ids[:, hs, wsl, :] = n
            n += 1
    ids = window_partition(ids, ws).view(-1, ws * ws)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


# ----------------------------------------------------------------------------------------------- blocks
class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative-position bias.
    x: (B*nW, ws*ws, C) -> same; mask: (nW, N, N) additive or None."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.window_size = ws = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        # index of the (dy, dx) offset between every pair of tokens of a window
        yy, xx = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
        coords = torch.stack([yy.flatten(), xx.flatten()])  # 2, N
        rel = (coords[:, :, None] - coords[:, None, :]) + (ws - 1)  # 2, N, N in [0, 2ws-2]
        self.register_buffer("relative_position_index", rel[0] * (2 * ws - 1) + rel[1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(B_, N, 3, h, C // h).permute(2, 0, 3, 1, 4)  # each B_, h, N, d
        attn = (q * self.scale) @ k.transpose(-2, -1)  # B_, h, N, N
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, h)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = (attn.view(B_ // nW, nW, h, N, N) + mask[None, :, None]).view(B_, h, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """Pre-norm (S)W-MSA + MLP block on tokens x: (B, H*W, C) with x_size = (H, W)."""

    def __init__(self, dim, input_resolution, num_heads, window_size=8, shift_size=0, mlp_ratio=2.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        if min(input_resolution) <= window_size:  # upstream rule: window covers the whole image, no shift
            self.shift_size, self.window_size = 0, min(input_resolution)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, x_size, mask=None):
        H, W = x_size
        B, L, C = x.shape
        ws, sh = self.window_size, self.shift_size
        y = self.norm1(x).view(B, H, W, C)
        if sh > 0:
            y = torch.roll(y, shifts=(-sh, -sh), dims=(1, 2))
        y = self.attn(window_partition(y, ws).view(-1, ws * ws, C), mask if sh > 0 else None)
        y = window_reverse(y.view(-1, ws, ws, C), ws, H, W)
        if sh > 0:
            y = torch.roll(y, shifts=(sh, sh), dims=(1, 2))
        x = x + self.drop_path(y.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """`depth` Swin blocks alternating regular / half-window-shifted windows."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                 drop, attn_drop, drop_path):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, mlp_ratio, qkv_bias, qk_scale,
                                 drop, attn_drop, drop_path[i])
            for i in range(depth)])

    def forward(self, x, x_size, mask=None):
        for blk in self.blocks:
            x = blk(x, x_size, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks -> 3x3 conv on the image layout -> + input (tokens)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                 drop, attn_drop, drop_path):
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio,
                                         qkv_bias, qk_scale, drop, attn_drop, drop_path)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, x_size, mask=None):
        B, L, C = x.shape
        y = self.residual_group(x, x_size, mask).transpose(1, 2).reshape(B, C, *x_size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> tokens (B, H*W, C), followed by LayerNorm (patch_size 1, so no projection)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x.flatten(2).transpose(1, 2))


class Upsample(nn.Sequential):
    """log2(scale) x [3x3 conv C -> 4C, PixelShuffle(2)]."""

    def __init__(self, scale, num_feat):
        assert scale & (scale - 1) == 0, "scale must be a power of 2"
        layers = []
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        super().__init__(*layers)


# ----------------------------------------------------------------------------------------------- model
class SwinIR(nn.Module):
    """SwinIR for single-image LST super-resolution (the LST channel count `in_chans` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (log2(scale) conv + PixelShuffle(2) stages).
        img_size: upstream's training LR size (default 512 // scale); it only matters when not larger
            than window_size (window shrunk, no shift), see the module docstring.
        window_size: side of the attention windows, in LR pixels (8; the input is padded to a multiple).
        img_range: the input is multiplied by it before the network and the output divided (1.0).
        depths: Swin blocks per residual Swin Transformer block (RSTB), one entry per RSTB ((6,) * 6).
        embed_dim: token width of the transformer body (180; divisible by every num_heads entry).
        num_heads: attention heads per RSTB ((6,) * 6).
        mlp_ratio: MLP hidden width as a multiple of embed_dim (2.0).
        qkv_bias: learn a bias in the q, k, v projection (True).
        qk_scale: attention logit scale (None: head_dim ** -0.5).
        drop_rate: dropout probability after the patch embedding, the attention projection and in the
            MLPs (0.0).
        attn_drop_rate: dropout probability on the attention weights (0.0).
        drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0 (0.1).
        num_feat: channel width of the upsampler (64).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1  # pads internally to window_size multiples and crops back
    unused_parameters = ()

    def __init__(self, scale: int = 8, img_size: int = None, window_size: int = 8,
                 img_range: float = 1.0, depths=(6, 6, 6, 6, 6, 6), embed_dim: int = 180,
                 num_heads=(6, 6, 6, 6, 6, 6), mlp_ratio: float = 2.0, qkv_bias: bool = True, qk_scale=None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 num_feat: int = 64):
        super().__init__()
        img_size = 512 // scale if img_size is None else img_size  # upstream configs: 256 / 128 / 64
        self.scale, self.img_range, self.window_size = scale, img_range, window_size
        res = (img_size, img_size)
        # the effective window (upstream shrinks it when the training image is not larger than the window)
        self.attn_window = min(res) if min(res) <= window_size else window_size
        self.attn_shift = 0 if min(res) <= window_size else window_size // 2

        self.conv_first = nn.Conv2d(LST_CHANNELS, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]  # linspace, device-free
        self.layers = nn.ModuleList([
            RSTB(embed_dim, res, d, num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale, drop_rate,
                 attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])])
            for i, d in enumerate(depths)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, LST_CHANNELS, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x):
        """x: (B, C, H, W) with H, W multiples of the window -> (B, C, H, W)."""
        B, C, H, W = x.shape
        mask = None
        if self.attn_shift > 0:
            mask = shifted_window_mask(H, W, self.attn_window, self.attn_shift, x.device).to(x.dtype)
        t = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            t = layer(t, (H, W), mask)
        return self.norm(t).transpose(1, 2).reshape(B, C, H, W)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        h, w = lr_lst.shape[-2:]
        ws = self.window_size
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs pad < size
        x = F.pad(lr_lst, (0, pw, 0, ph), mode=mode) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x))) / self.img_range
        return x[:, :, :h * self.scale, :w * self.scale]
