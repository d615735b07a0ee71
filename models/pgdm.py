"""PGDM: "PGDM: Physically guided diffusion model for land surface temperature downscaling"
(Zhang, Tang, Hu, Jiang, Li, Remote Sensing of Environment 2025, arXiv 2511.05964), a ResShift
diffusion model (Yue, Wang, Loy, "ResShift: Efficient Diffusion Model for Image Super-resolution by
Residual Shifting", NeurIPS 2023) with a physically guided U-Net.

Recipe. y is the LR LST upsampled to HR (bicubic), x_0 the HR LST. The forward process shifts x_0
towards y and adds noise, q(x_t | x_0, y) = N(x_0 + eta_t (y - x_0), kappa^2 eta_t I), t = 0..T-1,
with sqrt(eta_t) rising from ~0 to ~1. A U-Net predicts x_0 from x_t / (3 kappa sqrt(eta_t) + 1), t,
y and the guidance; it has a geo branch (a conv stem over y plus a stem over the guidance bands and a
land-cover embedding, both multiplied by a channel-validity mask, the guidance features optionally
re-weighted by a hybrid gate; residual blocks without time input) and an x_t branch (a stem and
time-embedded residual blocks, FiLM from a sinusoidal step embedding); the skips of both encoders are
summed, then a time-embedded bridge, pixel-shuffle decoders, self-attention at `attn_levels`, and a
1x1 head give a residual that is clamped to +-residual_limit (the physical bound on dLST) and added
to y. Training: MSE between the predicted and true x_0 at a random step (`training_loss`).
Sampling: x_{T-1} = y + kappa sqrt(eta_{T-1}) noise, then T posterior steps
x_{t-1} = (eta_{t-1}/eta_t) x_t + (alpha_t/eta_t) x0_hat + sqrt(kappa^2 eta_{t-1} alpha_t / eta_t) noise,
alpha_t = eta_t - eta_{t-1}; the last step returns x0_hat. Inference averages `num_samples` draws;
their spread is the model's uncertainty (the paper: scene std correlates with the error).

Upstream: cas222huan/PGDM @256876c, lib/models.py `denosing_unet` (the U-Net), lib/resshift.py
`resshift_diffusion` and `get_eta_schedule` (the diffusion), lib/trainer.py `ResShiftTrainer` (the
training step and the sampler call). The state-dict keys and their order are the original's, so its
checkpoints load as they are; `convert_original_state_dict` only reorders the guidance input
columns from the original's GrokLST band order to the toolkit's. Parameters (all, incl. the frozen
T x temb_dim step-embedding table), equal to the original's (tests/test_pgdm.py):
  GrokLST x8 (configs/var.yaml resshift_8x_groklst_v3; the defaults here)      48,108,217
  Landsat 10x / 20x (resshift_v1_10x, resshift_v1_20x)                          12,172,473
  configs/base.yaml (no x_t branch: a deterministic regressor, diffusion=False)  8,079,746
Any scale works (the U-Net runs at HR on the upsampled LR); the toolkit's data has x2, x4, x8,
the paper also 10x, 20x. The HR size is replicate-padded to a multiple of 2**(len(ch_mult) - 1)
and the output cropped back, so lr_multiple = 1.

Cost: one output = num_samples x sampling_steps U-Net evaluations (3 at the defaults); the geo
branch does not depend on x_t or t and runs once per call.

Units. The toolkit normalises outside the model (z-score by default: (K - 282.51) / 14.59); the
original min-max normalised LST to [-1, 1] with its 30 m range 242.13..330.92 K, i.e. one of its units
is ORIGINAL_UNIT_K = 44.395 K. The only unit-dependent constants, kappa (noise) and residual_limit
(clamp), default to the original's values in Kelvin (0.02 and 40/180 original units: 0.888 K and
9.87 K) expressed in the toolkit's default z unit (14.59 K). To run an original GrokLST checkpoint
exactly, give the toolkit the original's normalisation (norm.lst zscore mean 286.525, std 44.395;
each guidance band zscore with mean (min + max) / 2 and std (max - min) / 2 of lib/dataset_groklst.py),
set model.kappa = 0.02 and model.residual_limit = 0.2222.

GrokLST has no land-cover band: the original feeds a dummy class map and a mask whose land-cover
entry is 0 (lib/dataset_groklst.py:97-99), so the embedding channels are zero. Here land_cover=None
does the same (the channels are zero, the embedding table is unused), and channel_mask defaults to
1 for every guidance band. The toolkit never passes land_cover or channel_mask.

Reproduced as in the original: with num_affine = 2 its residual block reads the FiLM output as
(gate, scale) and adds a constant shift of 1 (its FiLM layer returns (scale, shift, gate), the block
unpacks (gate, scale, shift)); no published diffusion config uses num_affine = 2.

Imports torch only.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ORIGINAL_UNIT_K = (330.92 - 242.13) / 2  # Kelvin per unit of the original's [-1, 1] GrokLST LST
TOOLKIT_UNIT_K = 14.59                   # Kelvin per unit of the toolkit's default z-score (norm.lst.std)
# the original's GrokLST guidance order (lib/dataset_groklst.py: ref, ndxi, dem); land cover comes after
ORIGINAL_BANDS = ("deepblue", "blue", "green", "red", "vre", "nir", "ndmvi", "ndvi", "ndwi", "dem")


def eta_schedule(timesteps, kappa, min_noise_level=0.04, etas_end=0.99, power=0.3):
    """sqrt(eta_t), t = 0..T-1 (float64, ResShift's schedule): start * (etas_end / start) ** ((t / (T-1)) ** power)
    with start = min(min_noise_level / kappa, min_noise_level)."""
    if timesteps < 2:
        raise ValueError(f"timesteps={timesteps}: the eta schedule needs at least 2 steps (or give sqrt_etas)")
    start = min(min_noise_level / kappa, min_noise_level) if kappa > 0 else min_noise_level
    frac = torch.linspace(0, 1, timesteps, dtype=torch.float64, device="cpu") ** power
    return start * (etas_end / start) ** frac


def posterior(etas, kappa):
    """Coefficients of p(x_{t-1} | x_t, x0_hat) between consecutive entries of `etas` (float64, (n,)):
    (coef of x_t, coef of x0_hat, noise std). The std at the first step is the second step's
    (it is never used: the last sampling step adds no noise)."""
    prev = torch.cat([etas.new_zeros(1), etas[:-1]])
    alpha = etas - prev
    variance = kappa ** 2 * prev / etas * alpha
    if len(variance) > 1:
        variance = torch.cat([variance[1:2], variance[1:]])
    return prev / etas, alpha / etas, variance.sqrt()


def pad_to(x, height, width):
    """Replicate-pad the last two dims of x (any dtype) at the bottom and right to height x width."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    rows = torch.arange(height, device=x.device).clamp(max=h - 1)
    cols = torch.arange(width, device=x.device).clamp(max=w - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


class TimestepEmbedder(nn.Module):
    """t (B,) int -> (B, dim): a frozen sinusoid table (one row per step) and an MLP."""

    def __init__(self, steps, dim=128, max_period=10000.0, mlp_ratio=2):
        super().__init__()
        if dim % 2:
            raise ValueError(f"temb_dim={dim} must be even")
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        angle = torch.arange(steps, dtype=torch.float32)[:, None] * freqs
        self.embedding = nn.Embedding(steps, dim)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.stack([angle.sin(), angle.cos()], -1).flatten(1))  # sin, cos interleaved
        self.embedding.requires_grad_(False)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.SiLU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, t):
        return self.time_mlp(self.embedding(t.long()))


class FiLM(nn.Module):
    """temb (B, temb_dim) -> num_affine maps of (B, channels, 1, 1)."""

    def __init__(self, channels, temb_dim, num_affine):
        super().__init__()
        self.num_affine = num_affine
        width = channels * num_affine
        self.mlp = nn.Sequential(nn.Linear(temb_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, temb):
        return [c[:, :, None, None] for c in self.mlp(temb).chunk(self.num_affine, dim=1)]


class SelfAttention(nn.Module):
    """x + proj(MHSA(GroupNorm(x))) over all H*W positions; 1x1 convs without bias."""

    def __init__(self, channels, heads, groups):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels are not divisible by num_att_heads={heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads), scale 1/sqrt(C/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv-GroupNorm-[FiLM]-SiLU-conv(-gate) + residual, then optional attention.
    Reflect-padded 3x3 convs. temb_dim = 0: no time input (the geo branch)."""

    def __init__(self, cin, cout, temb_dim, groups, heads, num_affine):
        super().__init__()
        if cin % groups or cout % groups:
            raise ValueError(f"channels {cin}, {cout} are not divisible by group={groups}")
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, padding_mode="reflect")
        self.film = FiLM(cout, temb_dim, num_affine) if temb_dim > 0 else None
        self.residual = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = SelfAttention(cout, heads, groups) if heads > 0 else None

    def forward(self, x, temb=None):
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.film is not None and temb is not None:
            affine = self.film(temb)
            if len(affine) == 2:  # the original's reading of a 2-map FiLM, see the module docstring
                gate, scale, shift = affine[0], affine[1], 1.0
            else:
                gate, scale, shift = affine
            h = self.conv2(F.silu((scale + 1) * h + shift)) * gate
        else:
            h = self.conv2(F.silu(h))
        h = h + self.residual(x)
        return h if self.attn is None else self.attn(h)


class ConvStem(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.silu(self.conv1(x)))


class GuidanceGate(nn.Module):
    """x * (a * m + (1 - a) * c): m from the channel-validity mask (MLP), c channel attention of x,
    a = sigmoid(fusion_weight) (0.7 before the sigmoid at init)."""

    def __init__(self, mask_channels, channels):
        super().__init__()
        self.mask_attention = nn.Sequential(nn.Linear(mask_channels, channels), nn.SiLU(),
                                            nn.Linear(channels, channels), nn.Sigmoid())
        self.channel_attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels // 4, 1), nn.SiLU(),
                                               nn.Conv2d(channels // 4, channels, 1), nn.Sigmoid())
        self.fusion_weight = nn.Parameter(torch.tensor(0.7))

    def forward(self, x, mask):
        a = torch.sigmoid(self.fusion_weight)
        return x * (a * self.mask_attention(mask)[:, :, None, None] + (1 - a) * self.channel_attention(x))


class PGDM(nn.Module):
    """PGDM: ResShift diffusion with a physically guided U-Net (see the module docstring).

    The toolkit's protocol for models that bring their own objective and sampler (groklst.py): train.py
    trains it with `training_loss` (the ResShift objective, in normalised units: `loss_units`), called
    through forward(lr_lst, hr_guidance, hr_lst=..., mask=...); `stochastic = True` tells engine.downscale
    to call `sample` with a seeded generator, which gives a mean and a spread.

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor (any integer; the toolkit's data has 2, 4, 8).
        guidance_channels: number of guidance bands C (10 in GrokLST), in the toolkit's band order.
        ch_base: width of the stems and the first level (32).
        ch_mult: level widths as multiples of ch_base ((1, 2, 4, 8, 16)); len(ch_mult) - 1 downsamplings.
        attn_levels: levels with self-attention ((3, 4)); level len(ch_mult) - 1 is the bridge.
        num_att_heads: heads of each self-attention (4).
        num_affine: FiLM maps per time-embedded block, 3 (gate, scale, shift) or 2 (see the module docstring).
        use_gate: re-weight the guidance features by the hybrid gate (False).
        len_lulc: number of land-cover classes of the embedding (23).
        dim_lulc_embed: land-cover embedding channels (8; 0 = no land-cover input, no such parameters).
        group: GroupNorm groups (8); every level width must be divisible by it.
        temb_dim: step-embedding width (128).
        mlp_ratio: hidden width of the step-embedding MLP, as a multiple of temb_dim (2).
        max_period: period of the lowest sinusoid of the step embedding (10000).
        residual_limit: clamp of the predicted residual x0_hat - y, normalised units (0.676 = 9.87 K
            at the default z-score: the original's 40/180 of its 44.395 K unit); 0 = no clamp.
        diffusion: True: the x_t branch and the diffusion; False: the geo branch alone, a
            deterministic regressor (the original's ch_in_xt = 0, configs/base.yaml).
        timesteps: diffusion steps T (3), also the rows of the step-embedding table.
        sqrt_etas: sqrt(eta_t) for t = 0..T-1 ((0.05, 0.6, 0.99)); [] or None = the computed schedule
            eta_schedule(timesteps, kappa, min_noise_level, etas_end, power) (in a config write [], null is dropped).
        kappa: noise scale, normalised units (0.0609 = 0.888 K at the default z-score: the original's 0.02).
        min_noise_level: sqrt(eta_0) of the computed schedule is min(this / kappa, this) (0.04).
        etas_end: sqrt(eta_{T-1}) of the computed schedule (0.99).
        power: exponent of the computed schedule (0.3).
        normalize_input: divide x_t by 3 kappa sqrt(eta_t) + 1 before the U-Net (True).
        sampling_steps: steps per draw (None = T); fewer take evenly spaced steps of the T, with the
            posterior between the steps taken.
        num_samples: draws averaged by forward (1, as the original's evaluation).
        loss_type: 'mse' (the original's) or 'mae', between predicted and true x_0 over valid pixels.
        guidance_drop: in training_loss, probability of masking each guidance channel of a sample
            (0; the original's Landsat runs 0.2, its GrokLST run 0).
        antialias: upsample y with torchvision's default bicubic (True: PIL-style, a = -0.5, as the
            original's transforms.Resize on torchvision >= 0.17) or PyTorch's plain bicubic (False, a = -0.75).
    """

    paper = "PGDM: Physically guided diffusion model for land surface temperature downscaling (RSE 2025)."
    kind = "gisr"
    scales = (2, 4, 8, 16, 32)  # the U-Net works on the upsampled LST, so any scale builds and runs
    lr_multiple = 1  # the HR size is padded to a multiple of 2**(len(ch_mult) - 1) internally
    unused_parameters = ()
    stochastic = True  # sample() gives a mean and a spread; forward returns the mean

    def __init__(self, scale: int = 8, guidance_channels: int = 10, ch_base: int = 32, ch_mult=(1, 2, 4, 8, 16),
                 attn_levels=(3, 4), num_att_heads: int = 4, num_affine: int = 3, use_gate: bool = False,
                 len_lulc: int = 23, dim_lulc_embed: int = 8, group: int = 8, temb_dim: int = 128, mlp_ratio: int = 2,
                 max_period: float = 10000.0, residual_limit: float = 40 / 180 * ORIGINAL_UNIT_K / TOOLKIT_UNIT_K,
                 diffusion: bool = True, timesteps: int = 3, sqrt_etas=(0.05, 0.6, 0.99),
                 kappa: float = 0.02 * ORIGINAL_UNIT_K / TOOLKIT_UNIT_K, min_noise_level: float = 0.04,
                 etas_end: float = 0.99, power: float = 0.3, normalize_input: bool = True, sampling_steps=None,
                 num_samples: int = 1, loss_type: str = "mse", guidance_drop: float = 0.0, antialias: bool = True):
        super().__init__()
        if num_affine not in (2, 3):
            raise ValueError(f"num_affine={num_affine}: expected 2 or 3")
        if loss_type not in ("mse", "mae"):
            raise ValueError(f"loss_type={loss_type!r}: expected 'mse' or 'mae'")
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples}: need at least 1")
        if sqrt_etas is None or len(sqrt_etas) == 0:
            sqrt_etas = eta_schedule(timesteps, kappa, min_noise_level, etas_end, power)
        sqrt_etas = torch.as_tensor(sqrt_etas, dtype=torch.float64, device="cpu").flatten()  # also under a meta device
        if len(sqrt_etas) != timesteps or not bool((sqrt_etas[1:] > sqrt_etas[:-1]).all()) or sqrt_etas[0] <= 0:
            raise ValueError(f"sqrt_etas={sqrt_etas.tolist()}: need timesteps={timesteps} increasing positive values")
        sampling_steps = timesteps if sampling_steps is None else sampling_steps
        if not 1 <= sampling_steps <= timesteps:
            raise ValueError(f"sampling_steps={sampling_steps}: expected 1..timesteps={timesteps}")
        self.scale, self.diffusion, self.num_samples, self.loss_type = scale, diffusion, num_samples, loss_type
        self.guidance_channels, self.dim_lulc_embed, self.guidance_drop = guidance_channels, dim_lulc_embed, guidance_drop
        self.residual_limit, self.antialias, self.multiple = residual_limit, antialias, 2 ** (len(ch_mult) - 1)
        self.timesteps, self.kappa, self.normalize_input, self.sampling_steps = timesteps, kappa, normalize_input, sampling_steps
        self.sqrt_etas = sqrt_etas  # a plain float64 tensor, not a buffer: the state dict stays the original's
        self.loss_units = "normalised^2" if loss_type == "mse" else "normalised"  # what training_loss returns

        # registration order = the original's state-dict order (its checkpoints load unchanged)
        chs = [ch_base * m for m in ch_mult]
        levels = len(chs) - 1
        if diffusion:
            self.timestep_embedder = TimestepEmbedder(timesteps, temb_dim, max_period, mlp_ratio)
            self.head_in_xt = ConvStem(1, ch_base)
            self.encoders_xt, self.downs_xt = nn.ModuleList(), nn.ModuleList()
        self.head_in_lst = ConvStem(1, ch_base)
        gui_channels = guidance_channels + dim_lulc_embed
        if dim_lulc_embed > 0:
            self.lulc_embed_layer = nn.Embedding(len_lulc, dim_lulc_embed)
        self.head_in_gui = ConvStem(gui_channels, ch_base)
        self.gate_attention = GuidanceGate(gui_channels, ch_base) if use_gate else None
        self.encoders_geo, self.downs_geo = nn.ModuleList(), nn.ModuleList()
        self.decoders, self.ups = nn.ModuleList(), nn.ModuleList()
        self.head_out = nn.Conv2d(ch_base, 1, 1)

        def heads(level):
            return num_att_heads if level in attn_levels else 0

        for i in range(levels):
            self.encoders_geo.append(ResBlock(chs[i], chs[i + 1], 0, group, heads(i), num_affine))
            self.downs_geo.append(nn.Conv2d(chs[i + 1], chs[i + 1], 3, stride=2, padding=1))
            if diffusion:
                self.encoders_xt.append(ResBlock(chs[i], chs[i + 1], temb_dim, group, heads(i), num_affine))
                self.downs_xt.append(nn.Conv2d(chs[i + 1], chs[i + 1], 3, stride=2, padding=1))
        self.bridge = ResBlock(chs[-1], chs[-1], temb_dim, group, heads(levels), num_affine)
        for i in reversed(range(levels)):
            self.ups.append(nn.Sequential(nn.Conv2d(chs[i + 1], 4 * chs[i + 1], 3, padding=1), nn.PixelShuffle(2)))
            self.decoders.append(ResBlock(2 * chs[i + 1], chs[i], temb_dim, group, heads(i), num_affine))

        unused = []
        if diffusion:
            unused.append("timestep_embedder.embedding.")  # the frozen sinusoid table
        else:  # no step embedding: the FiLM layers of the bridge and decoders never run (as in the original)
            self.stochastic = False
            unused += ["bridge.film."] + [f"decoders.{i}.film." for i in range(levels)]
        if dim_lulc_embed > 0:
            unused.append("lulc_embed_layer.")  # used only when land_cover is passed (the toolkit never does)
        self.unused_parameters = tuple(unused)

    # ------------------------------------------------------------------ the U-Net

    def full_mask(self, guidance, land_cover=None, channel_mask=None):
        """The channel-validity mask (B, C [+ dim_lulc_embed]) that multiplies the guidance input:
        channel_mask (B, C [+ 1]) as the original's (1 = valid; the last entry is land cover, repeated
        over the embedding channels); None = all bands valid, land cover valid iff given."""
        B, C = guidance.shape[:2]
        if channel_mask is None:
            channel_mask = guidance.new_ones(B, C + (self.dim_lulc_embed > 0))
            if self.dim_lulc_embed > 0 and land_cover is None:
                channel_mask[:, -1] = 0
        channel_mask = channel_mask.to(guidance.dtype)
        if self.dim_lulc_embed > 0:
            channel_mask = torch.cat([channel_mask, channel_mask[:, -1:].expand(B, self.dim_lulc_embed - 1)], 1)
        return channel_mask

    def encode_geo(self, lst_itp, guidance, land_cover=None, channel_mask=None):
        """The geo branch (independent of x_t and t): lst_itp (B, 1, H, W) upsampled LR LST, guidance
        (B, C, H, W), land_cover (B, 1, H, W) class indices or None, channel_mask as in full_mask
        -> (per-level skips, bottom features). H, W multiples of 2**(len(ch_mult) - 1)."""
        mask = self.full_mask(guidance, land_cover, channel_mask)
        if self.dim_lulc_embed > 0:
            if land_cover is None:
                lulc = guidance.new_zeros(guidance.shape[0], self.dim_lulc_embed, *guidance.shape[2:])
            else:
                lulc = self.lulc_embed_layer(land_cover[:, 0].long()).permute(0, 3, 1, 2).to(guidance.dtype)
            guidance = torch.cat([guidance, lulc], 1)
        gui = self.head_in_gui(guidance * mask[:, :, None, None])
        if self.gate_attention is not None:
            gui = self.gate_attention(gui, mask)
        x = self.head_in_lst(lst_itp) + gui
        skips = []
        for block, down in zip(self.encoders_geo, self.downs_geo):
            x = block(x)
            skips.append(x)
            x = down(x)
        return skips, x

    def denoise(self, geo, lst_itp, x_t=None, t=None):
        """x0_hat (B, 1, H, W) from the geo features, lst_itp, the scaled state x_t (B, 1, H, W) and
        steps t (B,) (both ignored with diffusion=False)."""
        skips, x = geo
        temb = None
        if self.diffusion:
            temb = self.timestep_embedder(t)
            h = self.head_in_xt(x_t)
            for i, (block, down) in enumerate(zip(self.encoders_xt, self.downs_xt)):
                h = block(h, temb)
                skips = skips[:i] + [h + skips[i]] + skips[i + 1:]
                h = down(h)
            x = x + h
        x = self.bridge(x, temb)
        for up, block, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = block(torch.cat([up(x), skip], 1), temb)
        residual = self.head_out(x)
        if self.residual_limit > 0:
            residual = residual.clamp(-self.residual_limit, self.residual_limit)
        return residual + lst_itp

    def unet(self, lst_itp, guidance, x_t=None, t=None, land_cover=None, channel_mask=None):
        """The original's denosing_unet.forward: x0_hat (B, 1, H, W) (x_t already scaled)."""
        return self.denoise(self.encode_geo(lst_itp, guidance, land_cover, channel_mask), lst_itp, x_t, t)

    # ------------------------------------------------------------------ the diffusion

    def steps(self):
        """The steps a draw takes (ascending, the last is T-1) and their posterior coefficients."""
        T, n = self.timesteps, self.sampling_steps
        taken = sorted({round(i * (T - 1) / max(n - 1, 1)) for i in range(n)}) if n > 1 else [T - 1]
        coef_xt, coef_x0, sigma = posterior(self.sqrt_etas[taken] ** 2, self.kappa)
        return taken, coef_xt, coef_x0, sigma

    def input_scale(self, t):
        """The divisor of x_t before the U-Net (3 sigma of the noise + 1), float64 (B,) for steps t."""
        if not self.normalize_input:
            return torch.ones(len(t), dtype=torch.float64, device="cpu")
        return self.kappa * self.sqrt_etas[t.cpu()] * 3 + 1

    def q_sample(self, x0, y, t, noise):
        """x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise; t (B,) steps."""
        sqrt_eta = self.sqrt_etas[t.cpu()].to(x0.device, x0.dtype)[:, None, None, None]
        return x0 + sqrt_eta ** 2 * (y - x0) + self.kappa * sqrt_eta * noise

    def upsample(self, lr_lst):
        return F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False,
                             antialias=self.antialias)

    def _pad(self, *tensors):
        # a multiple of 2**levels, and at least 2 pixels at the bottom level (its reflect padding needs 2)
        m = self.multiple
        Hp, Wp = (max(-(-n // m) * m, 2 * m) for n in tensors[0].shape[-2:])
        return [None if x is None else pad_to(x, Hp, Wp) for x in tensors]

    def sample_upsampled(self, lst_itp, guidance, num_samples=None, generator=None, land_cover=None, channel_mask=None):
        """sample() from the upsampled LR LST lst_itp (B, 1, H, W): (mean, std), each (B, 1, H, W).

        Noise per draw, in the original's order: x_T's noise, then one per step (the last is
        drawn and unused, as the original's); with one draw and the default steps, the result equals
        the original's resshift_diffusion.sample for the same noise."""
        num_samples = num_samples or self.num_samples
        H, W = lst_itp.shape[-2:]
        y, guidance, land_cover = self._pad(lst_itp, guidance, land_cover)
        geo = self.encode_geo(y, guidance, land_cover, channel_mask)
        if not self.diffusion:  # the last posterior step returns x0_hat, which ignores x_t here
            return self.denoise(geo, y)[..., :H, :W], torch.zeros_like(lst_itp)
        taken, coef_xt, coef_x0, sigma = self.steps()
        device, dtype, B = y.device, y.dtype, y.shape[0]

        def noise():
            gen_device = generator.device if generator is not None else device
            return torch.randn(y.shape, generator=generator, device=gen_device, dtype=dtype).to(device)

        # input_scale's divisors as Python floats (the same float64 arithmetic): no tensor index, so a
        # draw also runs on the meta device (speed.py counts its MACs there)
        divisor = [self.kappa * self.sqrt_etas[step].item() * 3 + 1 if self.normalize_input else 1.0 for step in taken]
        draws = []
        for _ in range(num_samples):
            x_t = y + self.kappa * self.sqrt_etas[-1].item() * noise()
            for k in reversed(range(len(taken))):
                t = torch.full((B,), taken[k], dtype=torch.long, device=device)
                x0 = self.denoise(geo, y, x_t / divisor[k], t)
                x_t = coef_xt[k].item() * x_t + coef_x0[k].item() * x0 + (sigma[k].item() if k > 0 else 0.0) * noise()
            draws.append(x_t[..., :H, :W])
        draws = torch.stack(draws)
        return draws.mean(0), draws.std(0, correction=0)

    def sample(self, lr_lst, hr_guidance, num_samples=None, generator=None, land_cover=None, channel_mask=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        -> (mean, std) of num_samples (default self.num_samples) draws, each (B, 1, h*scale, w*scale)
        normalised units; std is the population spread (0 for one draw). All noise comes from
        `generator` (a torch.Generator, on any device) when given: a fixed generator gives fixed draws.
        land_cover (B, 1, H, W) class indices and channel_mask (B, C + 1): see encode_geo / full_mask."""
        return self.sample_upsampled(self.upsample(lr_lst), hr_guidance, num_samples, generator, land_cover, channel_mask)

    def forward(self, lr_lst, hr_guidance, hr_lst=None, mask=None, land_cover=None, channel_mask=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        -> (B, 1, h*scale, w*scale) normalised LST: the mean of self.num_samples draws (global RNG).
        With hr_lst (B, 1, h*scale, w*scale) normalised and mask (like it, bool, True = valid): the
        training_loss scalar instead (global RNG), so that a wrapper's forward (DDP) sees the training call."""
        if hr_lst is not None:
            return self.training_loss(lr_lst, hr_guidance, hr_lst, mask, land_cover=land_cover, channel_mask=channel_mask)
        return self.sample(lr_lst, hr_guidance, land_cover=land_cover, channel_mask=channel_mask)[0]

    def training_loss(self, lr_lst, hr_guidance, hr_lst, mask, generator=None, land_cover=None, channel_mask=None):
        """The original's training objective (lib/trainer.py ResShiftTrainer.train_step): a uniform
        step t per sample, x_t ~ q(x_t | x_0, y), loss_type between the U-Net's x0_hat and hr_lst over
        the valid pixels (invalid ones enter x_t as y). lr_lst (B, 1, h, w), hr_guidance (B, C, H, W), hr_lst (B, 1, H, W), all
        normalised; mask (B, 1, H, W) bool, True = valid -> scalar (normalised units; 0 with no valid
        pixel). train.py calls it, through forward, instead of its pixel loss. Random draws (t, noise,
        guidance_drop) come from `generator` when given."""
        y = self.upsample(lr_lst)
        H, W = y.shape[-2:]
        B, device = y.shape[0], y.device
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.timesteps, (B,), generator=generator, device=gen_device).to(device)
        noise = torch.randn(y.shape, generator=generator, device=gen_device, dtype=y.dtype).to(device)
        if self.guidance_drop > 0:
            keep = torch.rand(B, hr_guidance.shape[1] + (self.dim_lulc_embed > 0), generator=generator,
                              device=gen_device) >= self.guidance_drop
            channel_mask = self.full_mask(hr_guidance, land_cover, channel_mask)[:, :keep.shape[1]] * keep.to(device)
        # invalid pixels enter the state as y: the network never sees their (arbitrary) HR values
        x0 = torch.where(mask, hr_lst, y)
        y, guidance, x0, noise, land_cover = self._pad(y, hr_guidance, x0, noise, land_cover)
        geo = self.encode_geo(y, guidance, land_cover, channel_mask)
        if self.diffusion:
            x_t = self.q_sample(x0, y, t, noise) / self.input_scale(t).to(device, y.dtype)[:, None, None, None]
            pred = self.denoise(geo, y, x_t, t)
        else:
            pred = self.denoise(geo, y)
        err = torch.where(mask, pred[..., :H, :W] - hr_lst, 0.0)  # NaN at an invalid target pixel stays out
        err = err.square() if self.loss_type == "mse" else err.abs()
        return err.sum() / mask.sum().clamp(min=1)


def convert_original_state_dict(state, guidance_bands):
    """An original GrokLST checkpoint (lib/models.py denosing_unet, bands in ORIGINAL_BANDS order, then
    land cover) -> this model with its guidance in `guidance_bands` order (the toolkit's
    data.guidance_bands, names from ORIGINAL_BANDS). Keys are the same; only the guidance input
    columns of head_in_gui.conv1 and of the gate's mask MLP are reordered; bands not listed are dropped."""
    missing = [b for b in guidance_bands if b not in ORIGINAL_BANDS]
    if missing:
        raise ValueError(f"guidance band {missing[0]!r} is not one of the original's {ORIGINAL_BANDS}")
    n = len(ORIGINAL_BANDS)
    order = [ORIGINAL_BANDS.index(b) for b in guidance_bands]
    out = dict(state)
    for key, dim in (("head_in_gui.conv1.weight", 1), ("gate_attention.mask_attention.0.weight", 1)):
        if key in out:
            w = out[key]
            index = torch.tensor(order + list(range(n, w.shape[dim])), device=w.device)
            out[key] = w.index_select(dim, index)
    return out
