"""NGswin: N-Gram in Swin Transformers for Efficient Lightweight Image Super-Resolution (CVPR 2023).

NGswin (Choi et al.) is a lightweight U-shaped Swin SR network. A 3x3 conv gives shallow features; three
encoder stages (6/4/4 N-Gram Swin Transformer Blocks, dim 64, window 8) run at 1, 1/2, 1/4 resolution with
patch merging in between and "across-stage pooling cascading" (max-pooled earlier inputs concatenated and
linearly projected); an SCDP bottleneck pixel-shuffles the three stage outputs back to full resolution,
concatenates them, applies a depth-wise 3x3 conv + GELU, a point-wise projection and LayerNorm; one decoder
stage of 6 NSTBs, LayerNorm, a global skip and a conv-PixelShuffle-conv reconstruction. Each NSTB is a
post-norm Swin-V2-style block (scaled cosine window attention with a relative position bias table) whose
windows first receive an "N-gram context": every 8x8 window is embedded into one token, each token attends
to its 2x2 neighbourhood of window tokens (forward and backward, with the window sequence reflect-padded),
and the merged context is added to every pixel of the window.
Reproduces upstream GrokLST `models/editors/ngswin` class `NGswin` (in_chans 1, default hyper-parameters).
Parameters: x2 992,542 / x4 999,466 (equal to upstream); upstream supports x2/x3/x4, GrokLST uses x2/x4.

`target_mode` (light_x{scale}) and `training_img_size` (512 // scale: 256 / 128) are derived from `scale`.
`training_img_size` only selected which shifted-window mask upstream cached; here masks are computed for the
actual size, so it has no effect. Upstream's RGB mean/std (`img_norm`, off in the configs) is dropped.

Input size: as upstream, the LR input is zero-padded at the bottom/right to a multiple of 4 * window_size (32)
and the output cropped, so lr_multiple = 1. Fix of an upstream failure (no parameter change, the code path
only differs where upstream crashed): when a padded side is 32 (any LR side <= 32) the coarsest stage has a
single window along that side, and upstream's n-gram "sequential reflect" padding of the window sequence
slices an empty range and raises a RuntimeError (verified: upstream fails for LR 8x8, runs for 40x40). Here
a window sequence shorter than n falls back to replicating its edge window, and the context is added
out-of-place (upstream's in-place `windows += context` also writes into the block input when a stage is a
single window wide). For every size upstream runs (both padded sides >= 64) outputs equal upstream's
(compared on shared weights).
state_dict: parameter names equal upstream's; the derived buffers `relative_position_index` / `attn_mask`
are not stored (load upstream checkpoints with strict=False).
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
    """In-place truncated normal (cut at +-2 std)."""
    with torch.no_grad():
        return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-2 * std, b=2 * std)


def drop_path(x, p: float = 0.0, training: bool = False):
    """Stochastic depth: zero whole samples of a residual branch with prob p, rescale the rest by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep) / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


def window_partition(x, ws: int):
    """(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().view(-1, ws, ws, C)


def window_reverse(windows, ws: int, H: int, W: int):
    """(B * nW, ws, ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().view(-1, H, W, C)


def shifted_window_mask(H: int, W: int, ws: int, shift: int, device=None):
    """Additive mask (nW, ws*ws, ws*ws): 0 inside a region of the rolled image, -100 across regions."""
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


def relative_position_index(ws: int):
    """(ws*ws, ws*ws) index into a (2ws-1)^2 bias table for every token pair of a window."""
    yy, xx = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    c = torch.stack([yy.flatten(), xx.flatten()])
    rel = c[:, :, None] - c[:, None, :] + (ws - 1)
    return rel[0] * (2 * ws - 1) + rel[1]


def tokens_to_image(x, hw):
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)


def image_to_tokens(x):
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------- attention
class WindowAttention(nn.Module):
    """Scaled cosine attention inside ws x ws windows + relative position bias (Swin-V2 logit scale, V1 table).
    x: (B*nW, ws*ws, dim) -> same; head_dim defaults to dim // num_heads (so heads*head_dim may be < dim)."""

    def __init__(self, dim, num_heads, window_size, head_dim=None, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        attn_dim = (head_dim or dim // num_heads) * num_heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, attn_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        B_, N, _ = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(B_, N, 3, h, -1).permute(2, 0, 3, 1, 4)  # each B_, h, N, d
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, h)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = (attn.view(B_ // nW, nW, h, N, N) + mask[None, :, None]).view(B_, h, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


def _seq_pad(u, n: int, back: bool):
    """Pad the (B, C, wh, ww) map of window tokens by n-1 windows at the bottom/right (back=False) or the
    top/left (back=True) with the neighbouring windows (upstream's "sequential reflect" padding: rows L-n..L-2
    resp. 1..n-1, a reflection for n = 2). A side with fewer than n windows replicates its edge instead
    (upstream crashed there)."""
    if n == 1:
        return u
    k = n - 1
    for dim in (2, 3):  # rows first, then columns of the row-padded map (as upstream)
        L = u.shape[dim]
        if L >= n:
            extra = u.narrow(dim, 1, k) if back else u.narrow(dim, L - n, k)
        else:
            edge = u.narrow(dim, 0, 1) if back else u.narrow(dim, L - 1, 1)
            extra = torch.cat([edge] * k, dim)
        u = torch.cat([extra, u] if back else [u, extra], dim)
    return u


class NGramContext(nn.Module):
    """N-gram context of every window. x: (B, ph, pw, D) -> (B, ph/ws, pw/ws, D)."""

    def __init__(self, dim, window_size, ngram, ngram_num_heads):
        super().__init__()
        self.ngram = ngram
        self.unigram_embed = nn.Conv2d(dim, dim // 2, window_size, stride=window_size, groups=dim // 2)
        self.ngram_attn = WindowAttention(dim // 2, ngram_num_heads, ngram)
        self.merge = nn.Conv2d(dim, dim, 1)

    def sliding_window_attention(self, u):
        """u: (B, C, wh+n-1, ww+n-1) padded window tokens -> (B, C, wh, ww): mean over each n x n
        neighbourhood of the attention output within that neighbourhood."""
        n = self.ngram
        nb = u.unfold(2, n, 1).unfold(3, n, 1)  # B, C, wh, ww, n(rows), n(cols)
        B, C, wh, ww = nb.shape[:4]
        nb = nb.permute(0, 2, 3, 4, 5, 1).reshape(B * wh * ww, n * n, C)
        ctx = self.ngram_attn(nb).mean(1)  # = AvgPool2d(n) over the unpartitioned neighbourhoods
        return ctx.view(B, wh, ww, C).permute(0, 3, 1, 2)

    def forward(self, x):
        u = self.unigram_embed(x.permute(0, 3, 1, 2))  # B, D/2, wh, ww
        fwd = self.sliding_window_attention(_seq_pad(u, self.ngram, back=False))
        bwd = self.sliding_window_attention(_seq_pad(u, self.ngram, back=True))
        return self.merge(torch.cat([fwd, bwd], 1)).permute(0, 2, 3, 1)  # B, wh, ww, D


class NGramWindowPartition(nn.Module):
    """Add each window's n-gram context to its pixels, (cyclic shift), partition.
    x: (B, ph, pw, D) -> (B*wh*ww, ws, ws, D)."""

    def __init__(self, dim, window_size, ngram, ngram_num_heads, shift_size=0):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.ngram_context = NGramContext(dim, window_size, ngram, ngram_num_heads)

    def forward(self, x):
        B, ph, pw, D = x.shape
        ws = self.window_size
        wh, ww = ph // ws, pw // ws
        assert wh > 0 and ww > 0, "feature map must be at least one window"
        ctx = self.ngram_context(x)  # B, wh, ww, D
        x = (x.view(B, wh, ws, ww, ws, D) + ctx[:, :, None, :, None, :]).view(B, ph, pw, D)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        return window_partition(x, ws)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class NSTB(nn.Module):
    """N-Gram Swin Transformer Block (post-norm). x: (B, ph*pw, D) -> (B, ph*pw, D)."""

    def __init__(self, dim, ngram, num_heads, window_size, shift_size, head_dim=None, mlp_ratio=2.0,
                 qkv_bias=True, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        assert 0 <= shift_size < window_size
        self.window_size, self.shift_size = window_size, shift_size
        self.ngram_window_partition = NGramWindowPartition(dim, window_size, ngram, num_heads, shift_size)
        self.attn = WindowAttention(dim, num_heads, window_size, head_dim, qkv_bias, attn_drop, drop)
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ffn = Mlp(dim, int(dim * mlp_ratio), drop)
        self.norm2 = nn.LayerNorm(dim)

    def _attention(self, x, hw):
        ph, pw = hw
        B, L, D = x.shape
        ws, sh = self.window_size, self.shift_size
        mask = shifted_window_mask(ph, pw, ws, sh, x.device).to(x.dtype) if sh > 0 else None
        win = self.ngram_window_partition(x.view(B, ph, pw, D)).view(-1, ws * ws, D)
        y = window_reverse(self.attn(win, mask).view(-1, ws, ws, D), ws, ph, pw)
        if sh > 0:
            y = torch.roll(y, shifts=(sh, sh), dims=(1, 2))
        return y.reshape(B, L, D)

    def forward(self, x, hw):
        x = x + self.drop_path(self.norm1(self._attention(x, hw)))
        return x + self.drop_path(self.norm2(self.ffn(x)))


# ----------------------------------------------------------------------------------------------- stages
class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm(4D) -> Linear(4D, D'). (B, ph*pw, D) -> (B, ph*pw/4, D')."""

    def __init__(self, dim, downsample_dim=None):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, downsample_dim or dim, bias=False)

    def forward(self, x, hw):
        ph, pw = hw
        B, _, D = x.shape
        x = x.view(B, ph, pw, D)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * D))), (ph // 2, pw // 2)


def _run_blocks(blocks, x, hw):
    """Within-stage residual: every block's input is added to its output before the next block.
    Returns (last block output, last block input + output)."""
    x_prev = 0
    for blk in blocks:
        inp = x + x_prev
        x, x_prev = blk(inp, hw), inp
    return x, x + x_prev


class EncoderLayer(nn.Module):
    """Across-cascade projection -> NSTBs -> (patch merging of output + last input).
    Returns (stage output (B, ph*pw, D), downsampled (B, ph*pw/4, D) or the output, new hw)."""

    def __init__(self, dim, ngram, depth, num_heads, window_size, head_dim=None, mlp_ratio=2.0, qkv_bias=True,
                 drop=0.0, attn_drop=0.0, drop_path=(), downsample=True, num_cas=1):
        super().__init__()
        self.across_cascade_proj = nn.Linear(dim * num_cas, dim) if num_cas != 1 else nn.Identity()
        self.blocks = nn.Sequential(*[
            NSTB(dim, ngram, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, head_dim, mlp_ratio,
                 qkv_bias, drop, attn_drop, drop_path[i]) for i in range(depth)])
        self.downsample = PatchMerging(dim, dim) if downsample else None

    def forward(self, x, hw):
        x, x_sum = _run_blocks(self.blocks, self.across_cascade_proj(x), hw)
        if self.downsample is None:
            return x, x, hw
        x_down, hw = self.downsample(x_sum, hw)
        return x, x_down, hw


class DecoderLayer(nn.Module):
    def __init__(self, dim, ngram, depth, num_heads, window_size, head_dim=None, mlp_ratio=2.0, qkv_bias=True,
                 drop=0.0, attn_drop=0.0, drop_path=()):
        super().__init__()
        self.blocks = nn.Sequential(*[
            NSTB(dim, ngram, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, head_dim, mlp_ratio,
                 qkv_bias, drop, attn_drop, drop_path[i]) for i in range(depth)])

    def forward(self, x, hw):
        return _run_blocks(self.blocks, x, hw)[0]


class SCDPBottleneck(nn.Module):
    """pixel-Shuffle each encoder output (+ pooled shallow features) to full size, Concatenate, Depth-wise
    3x3 conv + GELU, Point-wise Linear, LayerNorm. Returns (B, H*W, dec_dim)."""

    def __init__(self, num_encoder_stages, enc_dim, dec_dim):
        super().__init__()
        self.concat_dim = sum(4 ** i for i in range(num_encoder_stages)) * (enc_dim // 16)
        self.depthwise = nn.Conv2d(self.concat_dim, self.concat_dim, 3, 1, 1, groups=self.concat_dim)
        self.act = nn.GELU()
        self.pointwise = nn.Linear(self.concat_dim, dec_dim)
        self.norm = nn.LayerNorm(dec_dim)

    def forward(self, shallow, xs, hws):
        feats = []
        for i, (x, hw) in enumerate(zip(xs, hws)):
            pooled = shallow
            for _ in range(i):  # BottleneckPool: i max-pools then LeakyReLU
                pooled = F.max_pool2d(pooled, 2)
            y = tokens_to_image(x, hw) + F.leaky_relu(pooled, 0.01)
            feats.append(F.pixel_shuffle(y, 2 ** i))
        x = self.act(self.depthwise(torch.cat(feats, 1)))
        return self.norm(self.pointwise(image_to_tokens(x)))


# ----------------------------------------------------------------------------------------------- model
class NGswin(nn.Module):
    """NGswin for single-image LST super-resolution (the LST channel count `in_chans` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2 or 4 (one conv + PixelShuffle(scale) reconstruction).
        training_img_size: upstream's training LR size (default 512 // scale); no effect (module docstring).
        target_mode: upstream's 'light_x{scale}' (default derived from scale; must match it).
        ngrams: N of the N-gram window context, per encoder stage and then the decoder ((2, 2, 2, 2)).
        embed_dim: token width of the encoder stages (64).
        depths: N-Gram Swin blocks (NSTB) per encoder stage, at 1, 1/2, 1/4 LR size ((6, 4, 4)).
        num_heads: attention heads per encoder stage ((6, 4, 4)).
        head_dim: width of each encoder attention head (None: embed_dim // heads).
        dec_dim: token width of the decoder stage (64).
        dec_depths: NSTBs in the decoder stage (6).
        dec_num_heads: attention heads of the decoder stage (6).
        dec_head_dim: width of each decoder attention head (None: dec_dim // dec_num_heads).
        window_size: side of the attention windows, in LR pixels (8; inputs are padded to 4 * window_size).
        mlp_ratio: MLP hidden width as a multiple of the token width (2.0).
        qkv_bias: learn a bias in the q, k, v projections (True).
        drop_rate: dropout probability of the attention output projection and of the MLPs (0.0).
        attn_drop_rate: dropout probability on the attention weights (0.0).
        drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0 (0.0).
    """

    kind = "sisr"
    scales = (2, 4)
    lr_multiple = 1  # zero-pads to a multiple of 4 * window_size internally and crops back
    unused_parameters = ()

    def __init__(self, scale: int = 4, training_img_size: int = None, target_mode: str = None,
                 ngrams=(2, 2, 2, 2), embed_dim: int = 64, depths=(6, 4, 4), num_heads=(6, 4, 4), head_dim=None,
                 dec_dim: int = 64, dec_depths: int = 6, dec_num_heads: int = 6, dec_head_dim=None,
                 window_size: int = 8, mlp_ratio: float = 2.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        target_mode = target_mode or f"light_x{scale}"
        assert target_mode in ("light_x2", "light_x3", "light_x4") and int(target_mode[-1]) == scale
        self.training_img_size = training_img_size or 512 // scale  # kept for reference; no effect (see doc)
        self.scale, self.window_size = scale, window_size
        n_enc = len(depths)
        assert n_enc == 3, "the encoder/bottleneck wiring assumes three encoder stages"
        dpr = [drop_path_rate * i / max(sum(depths) + dec_depths - 1, 1) for i in range(sum(depths) + dec_depths)]  # linspace, device-free

        self.shallow_extract = nn.Module()
        self.shallow_extract.conv1 = nn.Conv2d(LST_CHANNELS, embed_dim, 3, 1, 1)
        for i in range(n_enc):
            self.add_module(f"encoder_layer{i + 1}", EncoderLayer(
                embed_dim, ngrams[i], depths[i], num_heads[i], window_size, head_dim, mlp_ratio, qkv_bias,
                drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i + 1 != n_enc, num_cas=i + 1))
        self.bottleneck = SCDPBottleneck(n_enc, embed_dim, dec_dim)
        self.decoder_layer1 = DecoderLayer(dec_dim, ngrams[n_enc], dec_depths, dec_num_heads, window_size,
                                           dec_head_dim, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                           dpr[sum(depths):])
        self.norm = nn.LayerNorm(dec_dim)
        self.to_target = nn.Sequential()
        self.to_target.add_module("before_shuffle", nn.Conv2d(dec_dim, LST_CHANNELS * scale ** 2, 3, 1, 1))
        self.to_target.add_module("shuffler", nn.PixelShuffle(scale))
        self.to_target.add_module("to_origin", nn.Conv2d(LST_CHANNELS, LST_CHANNELS, 3, 1, 1))
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

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        h0, w0 = lr_lst.shape[-2:]
        unit = 4 * self.window_size
        x = F.pad(lr_lst, (0, (-w0) % unit, 0, (-h0) % unit))  # zeros, bottom/right (as upstream)
        H, W = x.shape[-2:]

        shallow = self.shallow_extract.conv1(x)  # B, D, H, W
        c0, hw0 = image_to_tokens(shallow), (H, W)
        # encoder with across-stage pooling cascading: each stage also sees the max-pooled previous input
        e1_, e1, hw1 = self.encoder_layer1(c0, hw0)
        c1 = torch.cat([image_to_tokens(F.max_pool2d(tokens_to_image(c0, hw0), 2)), e1], -1)
        e2_, e2, hw2 = self.encoder_layer2(c1, hw1)
        c2 = torch.cat([image_to_tokens(F.max_pool2d(tokens_to_image(c1, hw1), 2)), e2], -1)
        e3_, _, _ = self.encoder_layer3(c2, hw2)

        x = self.bottleneck(shallow, [e1_, e2_, e3_], [hw0, hw1, hw2])  # B, H*W, dec_dim
        x = self.norm(self.decoder_layer1(x + e1_, hw0)) + c0  # enc-dec skip, global skip
        out = self.to_target(tokens_to_image(x, hw0))
        return out[:, :, :h0 * self.scale, :w0 * self.scale]
