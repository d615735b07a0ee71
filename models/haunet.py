"""HAUNet: Hybrid Attention-Based U-Shaped Network for Remote Sensing Image Super-Resolution (IEEE TGRS 2023).

A U-shaped SR transformer (Wang et al.) working at LR resolution with a constant width of 180
channels. A 3x3 stem feeds a two-level encoder (5 S-CEM blocks at 1x, stride-2 conv, 5 CEM blocks at
1/2, stride-2 conv), 5 CEM "middle" blocks at 1/4, a cross-scale lateral block, 5 more middle blocks,
and a decoder mirroring the encoder (2x2 transposed conv up, add the lateral skip, 5 CEM blocks at 1/2;
up, add skip, 5 S-CEM blocks at 1x). A 3x3 conv + PixelShuffle head is added to a bilinear
upsampling of the input.
  CEM block: LayerNorm -> 1x1 + depthwise 3x3 qkv -> transposed (channel) attention with L2-normalised
    q, k, learned temperature, ReLU then softmax -> 1x1, scaled by beta (init 0) and added; then a
    SimpleGate FFN (1x1 to 2C, x1 * x2, 1x1) scaled by gamma (init 0) and added.
  S-CEM block: the same plus a spatial branch (full (h*w) x (h*w) attention over pixels, per head,
    own temperature2 / project_out2 / beta2).
  Lateral block (qkvblock): the three encoder scales are nearest-upsampled to 1x, keys/values come
    from all three concatenated, each scale queries them with channel attention + FFN, and the results
    are nearest-downsampled back to their own scales.

Reproduces upstream GrokLST `groklst/models/editors/haunet/haunet.py::HAUNet` (width=180,
middle_blk_num=10, enc_blk_nums=[5, 5], dec_blk_nums=[5, 5], heads=[1, 2, 4]). Parameters:
x2 8,983,710 / x4 9,003,162 / x8 9,080,970. The upstream rearrange calls are plain view/reshape here
and its hand-written LayerNorm2d autograd function is the same maths under ordinary autograd.
state_dict keys match upstream; outputs were compared with upstream on shared weights (identical
to float precision).

Unused parameters: upstream's lateral block projects the third (1/4-scale) branch with
`project_out1` instead of `project_out2` (a copy-paste slip; the original HAUNet code does the
same), so `lateral_nafblock.qkv.0.project_out2` (32,580 parameters) never gets a gradient. It is
kept unchanged, for exact parameter-count, checkpoint and output parity, and listed in
`unused_parameters`.

Input size: any h, w. Upstream needs h, w multiples of 4 (two stride-2 levels) and defines, but
never calls, a padding helper; here the feature path replicate-pads the LR input to a multiple of 4
and the output is cropped, so multiples of 4 behave exactly as upstream. Memory: the S-CEM spatial
attention is quadratic in h*w (as upstream).
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


def heads_split(x, heads):
    """(B, C, H, W) -> (B, heads, C/heads, H*W)."""
    b, c, h, w = x.shape
    return x.reshape(b, heads, c // heads, h * w)


def channel_attention(q, k, v, temperature):
    """Transposed attention on (B, heads, d, N): softmax(relu(norm(q) @ norm(k)^T * t)) @ v."""
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * temperature
    return torch.relu(attn).softmax(dim=-1) @ v


def simple_gate(x):
    a, b = x.chunk(2, dim=1)
    return a * b


class CEMBlock(nn.Module):
    """Channel-attention block, (B, C, H, W) -> same."""

    def __init__(self, c, num_heads=3, FFN_Expand=2):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Conv2d(c, c * 3, 1)
        self.qkv_dwconv = nn.Conv2d(c * 3, c * 3, 3, padding=1, groups=c * 3)
        self.project_out = nn.Conv2d(c, c, 1)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        ffn = FFN_Expand * c
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def attend(self, x):
        """Returns the residual update of the attention part."""
        q, k, v = (heads_split(t, self.num_heads) for t in self.qkv_dwconv(self.qkv(self.norm1(x))).chunk(3, dim=1))
        return self.project_out(channel_attention(q, k, v, self.temperature).reshape(x.shape)) * self.beta

    def forward(self, inp):
        y = inp + self.attend(inp)
        return y + self.conv5(simple_gate(self.conv4(self.norm2(y)))) * self.gamma


class S_CEMBlock(CEMBlock):
    """CEM block with an extra spatial (pixel x pixel) attention branch, (B, C, H, W) -> same."""

    def __init__(self, c, num_heads=3, FFN_Expand=2):
        super().__init__(c, num_heads, FFN_Expand)
        self.project_out2 = nn.Conv2d(c, c, 1)
        self.temperature2 = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.beta2 = nn.Parameter(torch.zeros(1, c, 1, 1))

    def attend(self, x):
        q, k, v = (heads_split(t, self.num_heads) for t in self.qkv_dwconv(self.qkv(self.norm1(x))).chunk(3, dim=1))
        xc = self.project_out(channel_attention(q, k, v, self.temperature).reshape(x.shape))
        qs, ks, vs = (t.transpose(-2, -1) for t in (q, k, v))                 # (B, heads, N, d)
        xs = channel_attention(qs, ks, vs, self.temperature2).transpose(-2, -1)  # attention over pixels
        xs = self.project_out2(xs.reshape(x.shape))
        return xc * self.beta + xs * self.beta2


class qkvblock(nn.Module):
    """Cross-scale lateral block on [enc0 (1x), enc1 (1/2), enc2 (1/4)] -> same shapes."""

    def __init__(self, c, num_heads=2, FFN_Expand=2):
        super().__init__()
        self.num_heads = num_heads
        self.kv = nn.Conv2d(c * 3, c * 6, 1)
        self.kv_dwconv = nn.Conv2d(c * 6, c * 6, 3, padding=1, groups=c * 6)
        ffn = FFN_Expand * c
        for s in ("", "1", "2"):
            setattr(self, f"q{s}", nn.Conv2d(c, c, 1))
            setattr(self, f"q{s}_dwconv", nn.Conv2d(c, c, 3, padding=1, groups=c))
            setattr(self, f"project_out{s}", nn.Conv2d(c, c, 1))
            setattr(self, f"temperature{s}", nn.Parameter(torch.ones(num_heads, 1, 1)))
        for s in ("", "_1", "_2"):
            setattr(self, f"conv4{s}", nn.Conv2d(c, ffn, 1))
            setattr(self, f"conv5{s}", nn.Conv2d(ffn // 2, c, 1))
        for s in ("q", "q1", "q2"):
            setattr(self, f"norm{s}", LayerNorm2d(c))
        for s in ("2", "2_1", "2_2"):
            setattr(self, f"norm{s}", LayerNorm2d(c))
        for s in ("", "1", "2"):
            setattr(self, f"beta{s}", nn.Parameter(torch.zeros(1, c, 1, 1)))
            setattr(self, f"gamma{s}", nn.Parameter(torch.zeros(1, c, 1, 1)))

    def forward(self, encs):
        ups = [encs[0], F.interpolate(encs[1], scale_factor=2), F.interpolate(encs[2], scale_factor=4)]
        qn = [self.normq(ups[0]), self.normq1(ups[1]), self.normq2(ups[2])]
        k, v = self.kv_dwconv(self.kv(torch.cat(qn, dim=1))).chunk(2, dim=1)
        k, v = heads_split(k, self.num_heads), heads_split(v, self.num_heads)
        outs = []
        # (query suffix, projection, FFN suffix); the 3rd branch reuses project_out1 exactly as upstream does
        for i, (s, proj, f) in enumerate([("", "project_out", ""), ("1", "project_out1", "_1"),
                                          ("2", "project_out1", "_2")]):
            q = getattr(self, f"q{s}_dwconv")(getattr(self, f"q{s}")(qn[i]))
            o = channel_attention(heads_split(q, self.num_heads), k, v, getattr(self, f"temperature{s}"))
            y = ups[i] + getattr(self, proj)(o.reshape(q.shape)) * getattr(self, f"beta{s}")
            x = getattr(self, f"conv5{f}")(simple_gate(getattr(self, f"conv4{f}")(getattr(self, f"norm2{f}")(y))))
            outs.append(y + x * getattr(self, f"gamma{s}"))
        return [outs[0], F.interpolate(outs[1], scale_factor=0.5), F.interpolate(outs[2], scale_factor=0.25)]


class lateral_nafblock(nn.Module):
    def __init__(self, c, num_block=1):
        super().__init__()
        self.qkv = nn.Sequential(*[qkvblock(c) for _ in range(num_block)])

    def forward(self, encs):
        for blk in self.qkv:
            encs = blk(encs)
        return encs


class HAUNet(nn.Module):
    """HAUNet for 1-channel LST (the LST channel count `img_channel` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (one conv + PixelShuffle(scale) head).
        width: channel width at every level of the U-Net (180; divisible by every entry of heads).
        middle_blk_num: CEM blocks at 1/4 LR size, half before and half after the lateral block (10).
        enc_blk_nums: blocks of the two encoder levels, [1x, 1/2] LR size ((5, 5); two levels only).
        dec_blk_nums: blocks of the two decoder levels, [1/2, 1x] LR size ((5, 5); two levels only).
        heads: attention heads at 1x, 1/2 and 1/4 LR size ((1, 2, 4)).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ("lateral_nafblock.qkv.0.project_out2.",)

    def __init__(self, scale: int = 8, width=180, middle_blk_num=10, enc_blk_nums=(5, 5),
                 dec_blk_nums=(5, 5), heads=(1, 2, 4)):
        super().__init__()
        assert len(enc_blk_nums) == 2 and len(dec_blk_nums) == 2, "the lateral block is wired for two levels"
        self.scale = scale
        c = width
        self.intro = nn.Conv2d(LST_CHANNELS, c, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        for i, n in enumerate(enc_blk_nums):
            block = S_CEMBlock if i == 0 else CEMBlock
            self.encoders.append(nn.Sequential(*[block(c, num_heads=heads[i]) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, c, 2, 2))
        self.lateral_nafblock = lateral_nafblock(c)
        self.enc_middle_blks = nn.Sequential(*[CEMBlock(c, num_heads=heads[2]) for _ in range(middle_blk_num // 2)])
        self.dec_middle_blks = nn.Sequential(*[CEMBlock(c, num_heads=heads[2]) for _ in range(middle_blk_num // 2)])
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for i, n in enumerate(dec_blk_nums):
            self.ups.append(nn.Sequential(nn.ConvTranspose2d(c, c, kernel_size=2, stride=2)))
            block = CEMBlock if i == 0 else S_CEMBlock
            self.decoders.append(nn.Sequential(*[block(c, num_heads=heads[1 - i]) for _ in range(n)]))
        self.padder_size = 2 ** len(self.encoders)
        self.up = nn.Sequential(nn.Conv2d(c, LST_CHANNELS * scale ** 2, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        h, w = lr_lst.shape[-2:]
        p = self.padder_size
        base = F.interpolate(lr_lst, scale_factor=self.scale, mode="bilinear", align_corners=False)
        x = F.pad(lr_lst, (0, (p - w % p) % p, 0, (p - h % p) % p), mode="replicate")
        x = self.intro(x)
        encs = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            encs.append(x)
            x = down(x)
        encs.append(self.enc_middle_blks(x))
        outs = self.lateral_nafblock(encs)
        x = self.dec_middle_blks(outs[-1])
        for decoder, up, skip in zip(self.decoders, self.ups, outs[:2][::-1]):
            x = decoder(up(x) + skip)
        x = self.up(x)[:, :, :h * self.scale, :w * self.scale]
        return x + base
