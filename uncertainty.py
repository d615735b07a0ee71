"""Per-pixel uncertainty of a downscaled LST, and its calibration where no fine truth exists.

    model = WithSpread([net], normalizer)                  # forward -> (B, 2, H, W): mean and sigma, K
    out = scene_scores(model, lr_lst, hr_guidance, fp)     # the scene's own reduced-resolution errors
    q = conformal_quantile(out["scores"], alpha=0.1)       # K: the 90 % error of the reduced experiment
    k = scene_transfer(lr_lst, fp)[0]                      # or a factor measured where truth exists
    half = k * q * relative_sigma(sigma)                   # about 90 % of fine pixels within mean +- half

Spread (WithSpread, spread_source). A member set gives mean and sigma per pixel: several checkpoints (a deep
ensemble: their mean, sample std), the draws of a stochastic model (PGDM: engine.downscale's spread),
the trees of rf / dms (their spread about the forest's prediction), or test-time augmentation (tta: the
8 flips / rotations, 8 forwards). tsharp / linreg, pixel-wise regressions plus a block residual, and any
model that commutes with the flips (bicubic) have none: sigma 0. Its scale is not trusted; only its
shape is used (relative_sigma: sigma over its scene mean), the calibration below sets the scale.

Split conformal (Angelopoulos & Bates 2021, "A gentle introduction to conformal prediction", section 2.3:
normalised scores). From n residuals with a known truth and their sigmas, the scores |residual| / sigma
(sigma floored at SIGMA_FLOOR K, so a member set that agrees exactly still gets an interval) give

    q = the ceil((n + 1)(1 - alpha))-th smallest score      (infinite when that exceeds n)

and mean +- q sigma covers a new exchangeable pixel with probability at least 1 - alpha (and below
1 - alpha + 1 / (n + 1) for continuous scores). Pixels of one scene are spatially correlated, so coverage
holds on average over scenes like the calibration ones, not pixel by pixel.

Scene anchoring (scene_scores). For a sensor without fine truth (MODIS / VIIRS / Sentinel-3 at ~1 km), the
calibration residuals come from the scene itself by the reduced-resolution experiment (Wald's protocol):
the coarse LST is block-averaged s-fold, the model downscales that back to the coarse grid with the fine
guidance averaged onto the coarse grid (footprint means), and the result is compared with the coarse LST
after the scene's own coarse-consistency correction (engine.make_consistent's modes, or atpk): a level
shift of the whole scene (a model trained on other days) is removed by the correction at both scales and
does not inflate q. Scores are |residual| / relative_sigma, so q is in Kelvin (the error at the scene's
mean sigma). A sharpener fitted on the whole scene (fit_scene) is refitted on the reduced LST, as its
scene fit was made on the coarse one, when that has enough pixels (its min_samples); else it keeps the
scene's fit (a 16 x 16 tile at x8 leaves 2 x 2 reduced pixels): its residuals are then in-sample and q
too small ('in_sample'). Keeping it where a refit is possible would hide the change of the regression
with the support.

Scale transfer. The experiment measures errors of downscaling sP -> P, the output P -> F (F the fine
pixel, P = s x s of them). Errors shrink with the pixel size: surfaces hold more variance between P and sP
than below P, and q is 2.4-7 times too large on layout.synth_scene (docs/notruth.md). A factor k carries it:
 - scene_transfer, from the scene alone: Krige's relation gives the expected squared error of recovering
   the pixels of a block from its mean, for a field of point variogram gamma, as the dispersion variance
   D^2(F|P) = gamma_bar(P, P) - gamma_bar(F, F) (dispersion_variance), and in the reduced experiment
   D^2(P|sP); k = sqrt(D^2(F|P) / D^2(P|sP)) (variogram_transfer) with gamma the coarse LST's variogram
   deconvolved by atpk.fit_variogram, its point nugget dropped: coarse data do not determine it (a point
   nugget c0 shows as c0 / s^2 at the coarse scale but enters D^2(F|P) whole; where the fit finds one, k
   exceeds 1, worse than none). What remains extrapolates the fitted model below P (exponential: rough,
   linear at the origin); it does not see how much of that variance a model recovers: conservative where
   the surface is smoother than that, too narrow where q is in-sample (docs/notruth.md: 93-99.6 % and
   54-87 % coverage of the 90 % interval).
 - calibrated_transfer, measured where a fine truth exists (a validation split; a scene with an
   independent fine thermal): the conformal quantile of |error| / (q_scene relative_sigma) pooled over
   the pixels of those images, q_scene each image's own anchored q. It is split conformal with the scene's
   q as the score's scale, so k q_scene relative_sigma covers 1 - alpha of the pixels of images
   exchangeable with those, and each scene keeps its own error level.
"""
import math

import torch
import torch.nn as nn

from errors import ConfigError, DataError

SIGMA_FLOOR = 0.01   # K: smallest sigma a score is divided by (members that agree exactly)
DIHEDRAL = 8         # identity, 3 rotations, and the 4 of them after a left-right flip
SOURCES = {          # where sigma comes from -> its cost per prediction
    "ensemble": "one forward per checkpoint",
    "draws": "the model's num_samples draws (model.num_samples; 1 draw has no spread)",
    "trees": "one pass over the trees",
    "tta": "8 forwards (the flips and rotations)",
    "none": "1 forward (sigma 0)",
}
TREE_MODELS = ("rf", "dms")  # sharpeners with trees (sharpeners.py model_name)
BLOCK_POINTS = 128   # block_semivariance: sample points per block side beyond which the pairs are subsampled


# --------------------------------------------------------------------------- spread


def dihedral(x, t):
    """The t-th of the 8 flips / rotations of the last two dims of x (t in 0..7; t >= 4 flips first)."""
    if t >= 4:
        x = x.flip(-1)
    return torch.rot90(x, t % 4, (-2, -1))


def undo_dihedral(x, t):
    """The inverse of dihedral(., t)."""
    x = torch.rot90(x, -(t % 4), (-2, -1))
    return x.flip(-1) if t >= 4 else x


def spread(members):
    """(mean, sigma) over the first dim of members (M, ...) K: sigma is the sample standard deviation
    (ddof = 1; 0 for one member). A pixel NaN in any member is NaN."""
    mean = members.mean(0)
    sigma = members.std(0, correction=1) if len(members) > 1 else torch.zeros_like(mean)
    return mean, sigma


@torch.no_grad()
def tta(predict, lr_lst, hr_guidance=None):
    """Test-time augmentation: predict(lr, g) -> K on each of the 8 flips / rotations of the inputs, each
    prediction turned back. lr_lst (B, 1, h, w) K, hr_guidance (B, C, H, W) or None (an aligned pair: the
    rotations keep it aligned) -> (mean, sigma), each (B, 1, H, W) K (spread)."""
    outs = []
    for t in range(DIHEDRAL):
        g = dihedral(hr_guidance, t) if hr_guidance is not None else None
        outs.append(undo_dihedral(predict(dihedral(lr_lst, t), g), t))
    return spread(torch.stack(outs))


def spread_source(model, members=1):
    """Where a model's sigma comes from (SOURCES): 'ensemble' for several checkpoints, 'draws' for a
    stochastic model (attribute stochastic), 'trees' for rf / dms, 'none' for the other sharpeners
    (physical_units: pixel-wise regressions, sigma 0), 'tta' for every other model."""
    if members > 1:
        return "ensemble"
    if getattr(model, "stochastic", False):
        return "draws"
    if getattr(model, "model_name", None) in TREE_MODELS:
        return "trees"
    if getattr(model, "physical_units", False):
        return "none"
    return "tta"


def forest_spread(model, hr_guidance, fit, chunk=1 << 16):
    """The trees' spread of a fitted rf sharpener at the fine pixels: the sample std (ddof 1) over the
    forest's trees of their predictions from the guidance (C, H, W) tensor -> (H, W) float32 K, NaN where a
    band is not finite. The residual correction shifts every tree alike and does not enter."""
    gui = hr_guidance.detach().double().cpu().numpy().reshape(len(hr_guidance), -1)
    x = model.features(gui, fit["stats"]).astype("float32")
    trees = fit["coef"].estimators_
    out = torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
    ok = torch.from_numpy(x).isfinite().all(1)
    rows = torch.nonzero(ok).flatten()
    for start in range(0, len(rows), chunk):  # sum and sum of squares over trees, a chunk of pixels at a time
        part = x[rows[start:start + chunk].numpy()]
        total = torch.zeros(len(part), dtype=torch.float64)
        squares = torch.zeros(len(part), dtype=torch.float64)
        first = torch.from_numpy(trees[0].predict(part)).double()  # about the first tree: 0 where all agree
        for tree in trees:
            d = torch.from_numpy(tree.predict(part)).double() - first
            total += d
            squares += d * d
        m = len(trees)
        var = (squares - total * total / m) / max(m - 1, 1)
        out[rows[start:start + chunk]] = var.clamp(min=0.0).sqrt()
    return out.reshape(hr_guidance.shape[-2:]).float()


class WithSpread(nn.Module):
    """A model (or several checkpoints of one) that returns its prediction and its spread.

    WithSpread(members, normalizer=None, source=None, amp='none'): members, a list of models (several: a
    deep ensemble); normalizer: the config's (engine.downscale; None for sharpeners); source: SOURCES key
    (default spread_source); amp: engine.downscale's autocast ('none': float32).
    forward(lr_lst (B, 1, h, w) K, hr_guidance (B, C, H, W) or None) -> (B, 2, H, W) float32 K: channel 0
    the prediction (mean of the members), 1 sigma (>= 0; NaN where the prediction is). No consistency is
    applied here. `physical_units = True`: engine.downscale hands it Kelvin and takes Kelvin back; the
    members are run through engine.downscale themselves. A sharpener is fitted per image unless fitted on
    the whole scene first (fit_scene)."""

    physical_units = True

    def __init__(self, members, normalizer=None, source=None, amp="none"):
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("WithSpread: no model given")
        self.members = nn.ModuleList(members)
        self.normalizer, self.amp = normalizer, amp
        self.source = source or spread_source(members[0], len(members))
        if self.source not in SOURCES:
            raise ConfigError(f"spread source {self.source!r}: expected one of {', '.join(SOURCES)}")
        if self.source == "ensemble" and len(members) < 2:
            raise ConfigError("a deep ensemble needs at least 2 checkpoints")
        self.lr_multiple = getattr(members[0], "lr_multiple", 1)
        self.guided = getattr(members[0], "kind", "gisr") != "sisr"  # a single-image model is given no guidance

    def _run(self, model, lr_lst, hr_guidance):
        import engine
        return engine.downscale(model, self.normalizer, lr_lst, hr_guidance, self.amp).float()

    @torch.no_grad()
    def forward(self, lr_lst, hr_guidance=None):
        first = self.members[0]
        hr_guidance = hr_guidance if self.guided else None
        if self.source == "ensemble":
            mean, sigma = spread(torch.stack([self._run(m, lr_lst, hr_guidance) for m in self.members]))
        elif self.source == "tta":
            mean, sigma = tta(lambda x, g: self._run(first, x, g), lr_lst, hr_guidance)
        elif self.source == "draws":
            import engine
            mean, sigma = engine.downscale(first, self.normalizer, lr_lst, hr_guidance, self.amp, spread=True)
        elif self.source == "trees":
            mean, sigma = self._trees(first, lr_lst, hr_guidance)
        else:
            mean = self._run(first, lr_lst, hr_guidance)
            sigma = torch.where(torch.isfinite(mean), 0.0, float("nan"))
        return torch.cat([mean.float(), sigma.float().to(mean.device)], 1)

    @staticmethod
    def _trees(model, lr_lst, hr_guidance, footprint=None):
        """(mean, sigma) (B, 1, H, W) of rf / dms, image by image, with the scene's fit if there is one; with a
        footprint (the LST on a sensor's own grid) fitted and applied through it (sharpeners.py)."""
        if hr_guidance is None:
            raise ConfigError(f"{type(model).__name__} is guided: it needs hr_guidance")
        means, sigmas = [], []
        for lr, gui in zip(lr_lst, hr_guidance):
            fit = model.fit(lr, gui, footprint) if footprint is not None else model.fitted or model.fit(lr, gui)
            if hasattr(model, "sharpen_with_spread"):
                mean, sigma = (torch.as_tensor(a).float() for a in model.sharpen_with_spread(lr, gui, fit, footprint))
            else:
                mean = torch.as_tensor(model.sharpen(lr, gui, fit, footprint)).float()
                sigma = forest_spread(model, gui, fit)
            means.append(mean)
            sigmas.append(sigma)
        device = lr_lst.device
        return torch.stack(means)[:, None].to(device), torch.stack(sigmas)[:, None].to(device)


# --------------------------------------------------------------------------- split conformal


def normalised_scores(residual, sigma=None, floor=SIGMA_FLOOR):
    """|residual| / max(sigma, floor) over the pixels where both are finite -> 1-D float64 tensor.
    residual, sigma: tensors of one shape, K; sigma None: the plain |residual| (constant-width intervals)."""
    residual = torch.as_tensor(residual).double()
    if sigma is None:
        scores = residual.abs()
    else:
        sigma = torch.as_tensor(sigma).double()
        if sigma.shape != residual.shape:
            raise DataError(f"normalised_scores: sigma of shape {tuple(sigma.shape)} for residuals of shape "
                            f"{tuple(residual.shape)}")
        scores = residual.abs() / sigma.clamp(min=floor)
    return scores[torch.isfinite(scores)]


def conformal_quantile(scores, alpha=0.1):
    """Split-conformal quantile: the ceil((n + 1)(1 - alpha))-th smallest of n scores (1-D), inf when that
    rank exceeds n (too few scores for this alpha)."""
    if not 0.0 < float(alpha) < 1.0:
        raise ConfigError(f"alpha={alpha}: expected a miscoverage level between 0 and 1 (0.1 for 90 % intervals)")
    scores = torch.as_tensor(scores).double().reshape(-1)
    scores = scores[torch.isfinite(scores)]
    n = len(scores)
    rank = math.ceil((n + 1) * (1.0 - float(alpha)) - 1e-9)  # guard 0.9 * 10 = 9.000000000000002
    if rank > n:
        return float("inf")
    return float(torch.kthvalue(scores, rank).values)


def interval(mean, sigma, q, floor=SIGMA_FLOOR):
    """(lo, hi) = mean -+ q * max(sigma, floor); sigma None: mean -+ q. Tensors, K."""
    half = q if sigma is None else q * sigma.clamp(min=floor)
    return mean - half, mean + half


def relative_sigma(sigma, floor=SIGMA_FLOOR):
    """max(sigma, floor) over its mean on the finite pixels (the mean in float64): the shape of the
    uncertainty without its scale, a tensor of sigma's dtype (NaN where sigma is); 1.0 for sigma None. A
    sigma that is 0 everywhere gives 1 everywhere (constant-width intervals)."""
    if sigma is None:
        return 1.0
    s = torch.as_tensor(sigma).clamp(min=floor)
    finite = s[torch.isfinite(s)]
    return s / float(finite.double().mean()) if finite.numel() else s


def half_width(sigma, q, transfer=1.0, floor=SIGMA_FLOOR):
    """Half-width of the interval, K: transfer * q * relative_sigma(sigma) (a float for sigma None)."""
    return transfer * q * relative_sigma(sigma, floor)


def coverage(truth, lo, hi):
    """Fraction of the pixels with finite truth and bounds where lo <= truth <= hi."""
    ok = torch.isfinite(truth) & torch.isfinite(lo) & torch.isfinite(hi)
    inside = (truth >= lo) & (truth <= hi)
    return float(inside[ok].double().mean()) if bool(ok.any()) else float("nan")


def mean_width(lo, hi):
    """Mean of hi - lo over the pixels where both are finite, K."""
    width = hi - lo
    ok = torch.isfinite(width)
    return float(width[ok].double().mean()) if bool(ok.any()) else float("nan")


# --------------------------------------------------------------------------- scene anchoring


def _sharpener_of(predict):
    """The statistical sharpener behind `predict` (itself, or a WithSpread's first member), else None."""
    model = predict.members[0] if isinstance(predict, WithSpread) else predict
    return model if hasattr(model, "fit_scene") and hasattr(model, "min_samples") else None


def _ratio(footprint):
    """The side of a coarse pixel in fine pixels (the median over footprints, rounded, at least 2)."""
    a = footprint.weights
    rows = torch.repeat_interleave(torch.arange(a.shape[0]), a.crow_indices().long().diff())
    area = torch.zeros(a.shape[0], dtype=torch.float64).index_add_(0, rows, a.values().double())
    return max(2, round(float(area[area > 0].sqrt().median())))


@torch.no_grad()
def scene_scores(predict, lr_lst, hr_guidance, footprint, scale=None, use_tta=True, consistency="nearest",
                 floor=SIGMA_FLOOR):
    """Calibration scores of one scene from its own reduced-resolution experiment (module docstring).

    predict(lr (1, 1, h', w') K, guidance (1, C, h, w)) -> (1, 1, h, w) K, or (1, 2, h, w): mean and sigma
    (a WithSpread), float32 tensors in: the model as used at full scale (engine.downscale with its
    normalizer, or a sharpener), applied here at ratio `scale`.
    lr_lst (h, w) K on footprint.coarse (NaN = no data); hr_guidance (C, H, W) on footprint.fine (None for
    a single-image model);
    scale: the s-fold reduction (default: footprint.scale, else the side of a footprint in fine pixels,
    rounded);
    use_tta: sigma from tta of a one-channel predict (else its own second channel, or none: plain
    |residual| scores); consistency: 'none', 'nearest', 'bicubic' (engine.make_consistent) or 'atpk', as the
    full-scale prediction is corrected.
    Returns {'residual': (h', w') K, prediction - lr_lst on the cropped coarse grid (h' = h - h % scale),
    'sigma': like it or None, 'scores': 1-D float64, |residual| / relative_sigma (K), 'scale': s,
    'in_sample': True when a sharpener kept its scene fit (too few reduced pixels to refit: the residuals
    are then those of its own training pixels, and q is too small)}."""
    lr = torch.as_tensor(lr_lst).double()
    if tuple(lr.shape) != tuple(footprint.coarse.shape) or (
            hr_guidance is not None and tuple(hr_guidance.shape[-2:]) != tuple(footprint.fine.shape)):
        raise DataError(f"scene_scores: LST {tuple(lr.shape)} and guidance "
                        f"{None if hr_guidance is None else tuple(hr_guidance.shape)} are not on "
                        f"{footprint.coarse.describe()} and {footprint.fine.describe()}")
    s = int(scale) if scale is not None else footprint.scale or _ratio(footprint)
    h, w = (lr.shape[0] // s) * s, (lr.shape[1] // s) * s
    if h == 0 or w == 0:
        raise DataError(f"scene_scores: a coarse grid of {tuple(lr.shape)} pixels is smaller than one {s} x {s} "
                        f"block: the scene is too small for the reduced-resolution experiment")
    from footprint import Footprint
    reduced = Footprint.aligned((h, w), s, footprint.min_valid)
    lr = lr[:h, :w]
    guidance = None
    if hr_guidance is not None:  # the guidance as the coarse sensor's footprints see it, a band at a time
        guidance = torch.stack([torch.as_tensor(footprint.aggregate(torch.as_tensor(band))).double()
                                for band in hr_guidance])[None, :, :h, :w]
    lr_reduced = reduced.aggregate(lr)[None, None]
    inputs = lr_reduced.float(), None if guidance is None else guidance.float()  # what models take (float32)
    sigma = None
    sharpener = _sharpener_of(predict)
    kept = getattr(sharpener, "fitted", None)
    in_sample = kept is not None and int(torch.isfinite(lr_reduced).sum()) < sharpener.min_samples
    if kept is not None and not in_sample:
        sharpener.fitted = None  # refitted on the reduced LST, as the scene's fit was made on the coarse one
    try:
        if use_tta:
            pred, sigma = tta(predict, *inputs)
        else:
            pred = predict(*inputs)
            if pred.shape[1] == 2:
                pred, sigma = pred[:, :1], pred[:, 1:]
    finally:
        if sharpener is not None:
            sharpener.fitted = kept
    sigma = None if sigma is None else sigma[0, 0].double()
    import engine
    pred = engine.make_consistent(pred.double(), lr_reduced, consistency)[0, 0]
    residual = pred - lr
    scores = residual.abs() / relative_sigma(sigma, floor)
    return {"residual": residual, "sigma": sigma, "scores": scores[torch.isfinite(scores)].reshape(-1), "scale": s,
            "in_sample": in_sample}


# --------------------------------------------------------------------------- scale transfer


def block_semivariance(variogram, side):
    """gamma_bar(B, B): the mean point semivariance over all ordered pairs of fine pixels of a side x side
    block, K^2 (a pixel with itself 0, others atpk.semivariance at their centre distance: the point model at
    pixel support). Pairs counted by offset; beyond BLOCK_POINTS pixels a side, BLOCK_POINTS^2 evenly
    spaced pixels stand for the block (a relative error ~1 / BLOCK_POINTS^2 for a continuous model)."""
    from atpk import semivariance
    side = int(side)
    if side < 1:
        raise ConfigError(f"block side {side}: expected >= 1 fine pixel")
    m = min(side, BLOCK_POINTS)
    step = side / m
    d = torch.arange(1 - m, m, dtype=torch.float64)
    di, dj = torch.meshgrid(d, d, indexing="ij")
    pairs = (m - di.abs()) * (m - dj.abs())
    distance = torch.sqrt(di ** 2 + dj ** 2) * step
    gamma = torch.where(distance > 0, semivariance(distance.clamp(min=1e-12), variogram), 0.0)
    return float((pairs * gamma).sum()) / m ** 4


def dispersion_variance(variogram, inner, outer):
    """D^2(inner | outer) = gamma_bar(outer) - gamma_bar(inner) (Krige's relation), K^2: the expected
    variance of inner x inner fine-pixel blocks within the outer x outer block holding them (the mean
    squared error of their outer block mean as an estimate of them)."""
    return block_semivariance(variogram, outer) - block_semivariance(variogram, inner)


def variogram_transfer(variogram, scale):
    """sqrt(D^2(F | P) / D^2(P | sP)) for P = scale x scale fine pixels F: the ratio of the error scale of
    downscaling P -> F to that of sP -> P, for a field with this point variogram (atpk's dict)."""
    s = int(scale)
    full, reduced = dispersion_variance(variogram, 1, s), dispersion_variance(variogram, s, s * s)
    if reduced <= 0:
        return float("nan")
    return math.sqrt(max(full, 0.0) / reduced)


def scene_transfer(lr_lst, footprint, scale=None, model="exponential"):
    """The variogram transfer of one scene: the coarse LST (h, w) K on footprint.coarse, its point variogram
    deconvolved by atpk.fit_variogram, the point nugget dropped (module docstring) -> (k, variogram)."""
    from atpk import fit_variogram
    s = int(scale) if scale is not None else footprint.scale or _ratio(footprint)
    variogram = fit_variogram(lr_lst, footprint, model)
    return variogram_transfer(dict(variogram, nugget=0.0), s), variogram


def transfer_scores(error, sigma, q_scene, floor=SIGMA_FLOOR):
    """Scores of calibrated_transfer for one image with a fine truth: |error| / (q_scene relative_sigma)
    over its finite pixels -> 1-D float64. error = prediction - truth (K), sigma its spread or None,
    q_scene the image's own anchored quantile (K)."""
    scores = torch.as_tensor(error).double().abs() / (q_scene * relative_sigma(sigma, floor))
    return scores[torch.isfinite(scores)].reshape(-1)


def calibrated_transfer(scores, alpha=0.1):
    """k from the transfer_scores of calibration images (a list of 1-D tensors, or one): their pooled
    conformal quantile, the factor that makes k q_scene relative_sigma cover 1 - alpha of their pixels."""
    if isinstance(scores, (list, tuple)):
        scores = torch.cat([torch.as_tensor(s).double().reshape(-1) for s in scores]) if scores else torch.zeros(0)
    return conformal_quantile(scores, alpha)


def calibrate_scene(predict, lr_lst, hr_guidance, footprint, consistency, alpha=0.1, transfer="variogram",
                    scale=None, use_tta=False):
    """The interval calibration of one scene: its anchored q (scene_scores) and the transfer k.
    transfer: 'variogram' (scene_transfer), 'none' (k = 1) or a number (a calibrated_transfer measured where
    truth exists). Returns {'q' K, 'transfer', 'n' (calibration pixels), 'scale', 'variogram' or None,
    'in_sample' (scene_scores)}."""
    k = parse_transfer(transfer)
    out = scene_scores(predict, lr_lst, hr_guidance, footprint, scale, use_tta, consistency)
    q = conformal_quantile(out["scores"], alpha)
    variogram = None
    if k == "variogram":
        k, variogram = scene_transfer(lr_lst, footprint, out["scale"])
    elif k == "none":
        k = 1.0
    return {"q": q, "transfer": k, "n": len(out["scores"]), "scale": out["scale"], "variogram": variogram,
            "in_sample": out["in_sample"]}


def parse_transfer(value):
    """A transfer setting: 'variogram', 'none', or a factor > 0 (a number or its text) -> str or float;
    ConfigError otherwise."""
    if value in ("variogram", "none"):
        return value
    try:
        k = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"transfer {value!r}: expected 'variogram', 'none' or a factor (what test.py "
                          f"--calibrate measures on a split with truth)") from None
    if not (k > 0 and math.isfinite(k)):
        raise ConfigError(f"transfer {value!r}: expected a factor > 0")
    return k


def pooled(errors, halves):
    """Coverage and mean width of intervals prediction +- half over the finite pixels of several images:
    errors, halves: lists of tensors (prediction - truth, K; half-widths, K, or floats) -> (fraction of
    the pixels with |error| <= half, mean of 2 half over them K, pixels)."""
    inside = width = count = 0.0
    for error, half in zip(errors, halves):
        error = torch.as_tensor(error).double()
        half = torch.as_tensor(half).double().expand_as(error)
        ok = torch.isfinite(error) & torch.isfinite(half)
        inside += float((error.abs() <= half)[ok].sum())
        width += 2 * float(half[ok].sum())
        count += float(ok.sum())
    return (inside / count, width / count, int(count)) if count else (float("nan"), float("nan"), 0)
