"""ACT: Enriched CNN-Transformer Feature Aggregation Networks for Super-Resolution (WACV 2023).

ACT (Yoo et al.) runs two branches side by side on the shallow features of a 3x3 conv + two 5x5 ResBlocks:
a CNN branch (RCAN residual groups of 12 channel-attention blocks) and a Transformer branch on 3x3-pixel
tokens (64*9 = 576-dim): per stage, self-attention + FFN, then cross-scale token attention (half of the
channels re-tokenised into overlapping 6x6 "large" tokens, two cross-attentions between small and large
tokens), then an FFN. After each of the 4 stages both branches are folded back to images, concatenated and
fused by four 1x1-conv residual blocks, then split and fed back (through an MLP / two convs). The last fused
map goes through a 3x3 conv, a long skip and an EDSR PixelShuffle tail. Reproduces upstream GrokLST
`models/editors/act` class `ACT` (n_feats 64, 4 groups x 12 blocks, 8 transformer layers, 8 heads, 4 fusion
blocks; all hyper-parameters are hard-coded upstream and are constructor kwargs here with the same values).
Parameters: x2 46,027,393 / x4 46,175,105 / x8 46,322,817 (equal to upstream).

unused_parameters = ("cnn_branch.4.",): upstream appends a final 3x3 conv to `cnn_branch` but the forward only
runs its first n_fusionblocks (= 4) groups, so that conv (36,928 params) never gets a gradient. Kept for the
count and for state_dict compatibility.

Input size: the token fold/unfold tiles the image with 3x3 tokens. As upstream, H and W need not be multiples
of token_size: F.unfold drops the last H%3 rows / W%3 columns from the transformer branch and F.fold gives them
zero token features there (the CNN branch still covers them); this is kept by default so outputs equal
upstream's for every size (GrokLST LR sizes 256/128/64 are not multiples of 3). `pad_to_tokens=True`
instead replicate-pads the LR input to a multiple of 3 and crops the output. Inputs smaller than 2*token_size
(upstream would fail) are replicate-padded to 6 and cropped. lr_multiple = 1.
state_dict keys match upstream; outputs were compared with upstream on shared weights (LR 12x21 and 16x20).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


def default_conv(in_channels, out_channels, kernel_size, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


def to_tokens(x, k, s):
    """(B, C, H, W) -> (B, T, C*k*k) patches of size k, stride s."""
    return F.unfold(x, k, stride=s).transpose(1, 2)


def from_tokens(t, size, k, s):
    """(B, T, C*k*k) -> (B, C, H, W); overlapping patches are summed (F.fold)."""
    return F.fold(t.transpose(1, 2), size, k, stride=s)


# ----------------------------------------------------------------------------------------------- CNN parts
class ResBlock(nn.Module):
    """x + conv(ReLU(conv(x)))."""

    def __init__(self, conv, n_feats, kernel_size, bias=True):
        super().__init__()
        self.body = nn.Sequential(conv(n_feats, n_feats, kernel_size, bias=bias), nn.ReLU(True),
                                  conv(n_feats, n_feats, kernel_size, bias=bias))

    def forward(self, x):
        return self.body(x) + x


FB = ResBlock  # fusion block: same layout (1x1 convs without bias)


class CALayer(nn.Module):
    """Squeeze-excitation channel attention: x * sigmoid(MLP(avgpool(x)))."""

    def __init__(self, channel, reduction=16):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channel, channel // reduction, 1), nn.ReLU(True),
                                     nn.Conv2d(channel // reduction, channel, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(x.mean((2, 3), keepdim=True))


class RCAB(nn.Module):
    """x + CA(conv(ReLU(conv(x))))."""

    def __init__(self, conv, n_feat, kernel_size, reduction):
        super().__init__()
        self.body = nn.Sequential(conv(n_feat, n_feat, kernel_size), nn.ReLU(True),
                                  conv(n_feat, n_feat, kernel_size), CALayer(n_feat, reduction))

    def forward(self, x):
        return self.body(x) + x


class ResidualGroup(nn.Module):
    """x + conv(RCAB^n(x))."""

    def __init__(self, conv, n_feat, kernel_size, reduction, n_resblocks):
        super().__init__()
        self.body = nn.Sequential(*[RCAB(conv, n_feat, kernel_size, reduction) for _ in range(n_resblocks)],
                                  conv(n_feat, n_feat, kernel_size))

    def forward(self, x):
        return self.body(x) + x


class Upsampler(nn.Sequential):
    """log2(scale) x [3x3 conv C -> 4C, PixelShuffle(2)] (scale 3: C -> 9C, PixelShuffle(3))."""

    def __init__(self, conv, scale, n_feats, bias=True):
        layers = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv(n_feats, 4 * n_feats, 3, bias), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv(n_feats, 9 * n_feats, 3, bias), nn.PixelShuffle(3)]
        else:
            raise NotImplementedError(f"scale {scale}")
        super().__init__(*layers)


# ----------------------------------------------------------------------------------------------- Transformer parts
class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class PreNorm2(nn.Module):
    """LayerNorm on both the query tokens and the key/value tokens."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, x2):
        return self.fn(self.norm(x), self.norm2(x2))


class FeedForward(nn.Module):
    def __init__(self, dim, mlp_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


def _heads(t, h):
    """(B, N, h*d) -> (B, h, N, d)."""
    B, N, _ = t.shape
    return t.view(B, N, h, -1).transpose(1, 2)


def _merge(t):
    """(B, h, N, d) -> (B, N, h*d)."""
    B, h, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x):
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))  # scale dim_head^-0.5


class CrossAttention(nn.Module):
    """Queries from x_q (B, Nq, dim), keys/values from x_kv (B, Nkv, dim) -> (B, Nq, dim)."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x_q, x_kv):
        q = _heads(self.to_q(x_q), self.heads)
        k, v = (_heads(t, self.heads) for t in self.to_kv(x_kv).chunk(2, dim=-1))
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))


# ----------------------------------------------------------------------------------------------- model
class ACT(nn.Module):
    """ACT for single-image LST super-resolution (the LST channel count `lst_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (the tail has log2(scale) conv + PixelShuffle(2) steps).
        n_feats: channel width of the CNN branch (64); a token holds n_feats * token_size**2 values.
        n_resgroups: residual groups built in the CNN branch (4); only the first n_fusionblocks run.
        n_resblocks: channel-attention blocks (RCAB) per residual group (12).
        reduction: channel-attention squeeze ratio of each RCAB (16).
        token_size: side of the square tokens of the Transformer branch, in LR pixels (3).
        n_heads: attention heads of the self-attentions (8; the cross-attentions use n_heads // 2).
        n_layers: Transformer layers (8); n_layers // 2 must equal n_fusionblocks.
        dropout_rate: dropout probability in the attentions and feed-forwards (0.0).
        n_fusionblocks: CNN/Transformer fusion stages (4); must not exceed n_resgroups.
        expansion_ratio: feed-forward hidden width as a multiple of the token width (4).
        pad_to_tokens: replicate-pad the LR input to a multiple of token_size and crop the output
            (False: upstream's behaviour, see the module docstring).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ("cnn_branch.4.",)  # trailing conv of cnn_branch, never called (as upstream)

    def __init__(self, scale: int = 8, n_feats: int = 64, n_resgroups: int = 4,
                 n_resblocks: int = 12, reduction: int = 16, token_size: int = 3, n_heads: int = 8,
                 n_layers: int = 8, dropout_rate: float = 0.0, n_fusionblocks: int = 4, expansion_ratio: int = 4,
                 pad_to_tokens: bool = False):
        super().__init__()
        conv = default_conv
        assert n_layers // 2 == n_fusionblocks <= n_resgroups
        self.scale, self.n_feats, self.token_size, self.n_fusionblocks = scale, n_feats, token_size, n_fusionblocks
        self.pad_to_tokens = pad_to_tokens
        self.embedding_dim = dim = n_feats * token_size ** 2
        hidden, dim_head = dim * expansion_ratio, dim // n_heads

        self.head = nn.Sequential(conv(LST_CHANNELS, n_feats, 3), ResBlock(conv, n_feats, 5),
                                  ResBlock(conv, n_feats, 5))
        self.linear_encoding = nn.Linear(dim, dim)
        self.mhsa_block = nn.ModuleList([
            nn.ModuleList([PreNorm(dim, SelfAttention(dim, n_heads, dim_head, dropout_rate)),
                           PreNorm(dim, FeedForward(dim, hidden, dropout_rate))])
            for _ in range(n_layers // 2)])
        self.csta_block = nn.ModuleList([
            nn.ModuleList([
                # large tokens (2*dim) -> dim/2 before the cross-attentions
                nn.Sequential(nn.LayerNorm(dim * 2), nn.Linear(dim * 2, dim // 2), nn.GELU(),
                              nn.Linear(dim // 2, dim // 2)),
                PreNorm2(dim // 2, CrossAttention(dim // 2, n_heads // 2, dim_head, dropout_rate)),
                PreNorm2(dim // 2, CrossAttention(dim // 2, n_heads // 2, dim_head, dropout_rate)),
                # back to large-token width after the cross-attentions
                nn.Sequential(nn.LayerNorm(dim // 2), nn.Linear(dim // 2, dim // 2), nn.GELU(),
                              nn.Linear(dim // 2, dim * 2)),
                PreNorm(dim, FeedForward(dim, hidden, dropout_rate)),
            ])
            for _ in range(n_layers // 2)])
        self.cnn_branch = nn.Sequential(
            *[ResidualGroup(conv, n_feats, 3, reduction, n_resblocks) for _ in range(n_resgroups)],
            conv(n_feats, n_feats, 3))  # the trailing conv is never used (upstream quirk, kept for the count)
        self.fusion_block = nn.ModuleList([
            nn.Sequential(*[FB(conv, n_feats * 2, 1, bias=False) for _ in range(4)]) for _ in range(n_fusionblocks)])
        self.fusion_mlp = nn.ModuleList([
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(n_fusionblocks - 1)])
        self.fusion_cnn = nn.ModuleList([
            nn.Sequential(conv(n_feats, n_feats, 3), nn.ReLU(True), conv(n_feats, n_feats, 3))
            for _ in range(n_fusionblocks - 1)])
        self.conv_last = conv(n_feats * 2, n_feats, 3)
        self.tail = nn.Sequential(Upsampler(conv, scale, n_feats), conv(n_feats, LST_CHANNELS, 3))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        h0, w0 = lr_lst.shape[-2:]
        ts = self.token_size
        h, w = (-(-h0 // ts) * ts, -(-w0 // ts) * ts) if self.pad_to_tokens else (h0, w0)
        h, w = max(2 * ts, h), max(2 * ts, w)
        x = F.pad(lr_lst, (0, w - w0, 0, h - h0), mode="replicate") if (h, w) != (h0, w0) else lr_lst
        size, half = (h, w), self.embedding_dim // 2

        x = self.head(x)
        identity = x
        t = to_tokens(x, ts, ts)  # B, T, 576
        t = self.linear_encoding(t) + t
        for i in range(self.n_fusionblocks):
            attn, ffn = self.mhsa_block[i]
            t = attn(t) + t
            t = ffn(t) + t

            # cross-scale token attention: re-tokenise half of the channels into overlapping 2ts x 2ts tokens
            down, cross_a, cross_b, up, ffn2 = self.csta_block[i]
            t_a, t_b = t.split(half, -1)
            t_b = down(to_tokens(from_tokens(t_b, size, ts, ts), 2 * ts, ts))
            t_a, t_b = cross_a(t_a, t_b) + t_a, cross_b(t_b, t_a) + t_b
            t_b = to_tokens(from_tokens(up(t_b), size, 2 * ts, ts), ts, ts)
            t = torch.cat((t_a, t_b), -1)
            t = ffn2(t) + t

            x = self.cnn_branch[i](x)
            t_res, x_res = t, x
            f = torch.cat((x, from_tokens(t, size, ts, ts)), 1)
            f = f + self.fusion_block[i](f)
            if i != self.n_fusionblocks - 1:
                t_img, x = f.split(self.n_feats, 1)
                t = self.fusion_mlp[i](to_tokens(t_img, ts, ts)) + t_res
                x = self.fusion_cnn[i](x) + x_res

        x = self.conv_last(f) + identity
        return self.tail(x)[..., :h0 * self.scale, :w0 * self.scale]
