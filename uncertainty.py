"""Per-pixel uncertainty of a downscaled LST, and its calibration where no fine truth exists.

    mean, sigma = tta(predict, lr_lst, hr_guidance)             # spread over the 8 flips / rotations
    mean, sigma = spread(torch.stack([p1, p2, p3]))             # an ensemble, tree spreads, diffusion draws
    scores = scene_scores(predict, lr_lst, hr_guidance, fp)     # the scene's own reduced-resolution errors
    q = conformal_quantile(scores, alpha=0.1)
    lo, hi = interval(mean, sigma, q)                           # about 90 % of fine pixels inside

Spread. A member set (test-time augmentation, several checkpoints, the trees of a random forest, draws of a
diffusion model) gives mean and sigma (the sample standard deviation, ddof = 1) per pixel. Its scale is not
trusted: the calibration below rescales it.

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
does not inflate q. The assumption is scale invariance: the normalised errors of downscaling s-fold from
s x coarse to coarse are distributed as those from coarse to fine. It is an assumption, not a measurement
(surfaces have more structure at 30 m than the coarse guidance shows); docs/notruth.md says how to check it
where a fine thermal scene exists.
"""
import math

import torch

from errors import ConfigError, DataError

SIGMA_FLOOR = 0.01   # K: smallest sigma a score is divided by (members that agree exactly)
DIHEDRAL = 8         # identity, 3 rotations, and the 4 of them after a left-right flip


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


def _make_consistent(pred, lr, scale, mode):
    """pred (1, 1, H, W) made coarse-consistent with lr (1, 1, H/scale, W/scale) K: engine.make_consistent's
    modes, or 'atpk' (atpk.atpk_consistent on the aligned pair)."""
    if mode == "atpk":
        from atpk import atpk_consistent
        from footprint import Footprint
        return atpk_consistent(pred, lr, Footprint.aligned(tuple(pred.shape[-2:]), scale))
    from engine import make_consistent
    return make_consistent(pred, lr, mode)


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

    predict(lr (1, 1, h', w') K, guidance (1, C, h, w)) -> (1, 1, h, w) K, float32 tensors in: the model as
    used at full scale (engine.downscale with its normalizer, or a sharpener), applied here at ratio `scale`.
    lr_lst (h, w) K on footprint.coarse (NaN = no data); hr_guidance (C, H, W) on footprint.fine;
    scale: the s-fold reduction (default: footprint.scale, else the side of a footprint in fine pixels,
    rounded);
    use_tta: sigma from tta (else none: plain |residual| scores); consistency: 'none', 'nearest', 'bicubic'
    (engine.make_consistent) or 'atpk', as the full-scale prediction is corrected.
    Returns {'residual': (h', w') K, prediction - lr_lst on the cropped coarse grid (h' = h - h % scale),
    'sigma': like it or None, 'scores': 1-D float64 (normalised_scores), 'scale': s}."""
    lr = torch.as_tensor(lr_lst).double()
    g = torch.as_tensor(hr_guidance).double()
    if tuple(lr.shape) != tuple(footprint.coarse.shape) or tuple(g.shape[-2:]) != tuple(footprint.fine.shape):
        raise DataError(f"scene_scores: LST {tuple(lr.shape)} and guidance {tuple(g.shape)} are not on "
                        f"{footprint.coarse.describe()} and {footprint.fine.describe()}")
    s = int(scale) if scale is not None else footprint.scale or _ratio(footprint)
    h, w = (lr.shape[0] // s) * s, (lr.shape[1] // s) * s
    if h == 0 or w == 0:
        raise DataError(f"scene_scores: a coarse grid of {tuple(lr.shape)} pixels is smaller than one {s} x {s} "
                        f"block: the scene is too small for the reduced-resolution experiment")
    from footprint import Footprint
    reduced = Footprint.aligned((h, w), s, footprint.min_valid)
    lr = lr[:h, :w]
    guidance = footprint.aggregate(g)[None, :, :h, :w]  # the guidance as the coarse sensor's footprints see it
    lr_reduced = reduced.aggregate(lr)[None, None]
    inputs = lr_reduced.float(), guidance.float()  # what models take; the scores are computed in float64
    if use_tta:
        pred, sigma = tta(predict, *inputs)
        sigma = sigma[0, 0].double()
    else:
        pred, sigma = predict(*inputs), None
    pred = _make_consistent(pred.double(), lr_reduced, s, consistency)[0, 0]
    residual = pred - lr
    return {"residual": residual, "sigma": sigma, "scores": normalised_scores(residual, sigma, floor), "scale": s}


# --------------------------------------------------------------------------- measurements (docs/notruth.md)


def _benchmark(argv=None):
    """Print the tables of docs/notruth.md: split-conformal coverage and width on Gaussian errors with known
    heteroscedastic sigma, and the scene-anchored calibration on synthetic scenes with a fine truth."""
    import argparse

    import numpy as np

    from footprint import Footprint
    from layout import synth_scene
    from sharpeners import LinReg, TsHARP
    p = argparse.ArgumentParser(description="conformal coverage on synthetic cases (docs/notruth.md)")
    p.add_argument("--pixels", type=int, default=20000, help="calibration (and test) pixels of the Gaussian case")
    p.add_argument("--size", type=int, default=1024, help="fine pixels per side of each synthetic scene")
    p.add_argument("--scenes", type=int, default=3)
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    n = args.pixels
    sigma = torch.from_numpy(rng.uniform(0.3, 3.0, 2 * n))
    truth = torch.zeros(2 * n, dtype=torch.float64)
    mean = sigma * torch.from_numpy(rng.normal(size=2 * n))
    wide = sigma[n:] > float(sigma[n:].quantile(0.75))
    print(f"Gaussian errors, sigma uniform in 0.3..3 K, {n} calibration and {n} test pixels\n")
    print("| alpha | scores | q | coverage | coverage, widest-sigma quarter | mean width K |\n" + "|---" * 6 + "|")
    for alpha in (0.2, 0.1, 0.05):
        for name, s in (("normalised by sigma", sigma), ("plain abs residual", None)):
            q = conformal_quantile(normalised_scores(mean[:n] - truth[:n], None if s is None else s[:n]), alpha)
            lo, hi = interval(mean[n:], None if s is None else s[n:], q)
            print(f"| {alpha:g} | {name} | {q:.3f} | {coverage(truth[n:], lo, hi):.3f} | "
                  f"{coverage(truth[n:][wide], lo[wide], hi[wide]):.3f} | {mean_width(lo, hi):.3f} |")

    s = 8
    print(f"\nScene-anchored calibration (scene_scores, alpha 0.1, x{s}) on layout.synth_scene "
          f"{args.size} x {args.size}: q from the scene's own {s}-fold reduction, coverage of the full-scale "
          f"interval against the scene's fine truth\n")
    print("| scene | model | consistency | calibration pixels | q K | coverage | width K | true 90 % abs error K |\n"
          + "|---" * 8 + "|")
    models = {"linreg": LinReg(scale=s), "tsharp": TsHARP(scale=s), "linreg + 2 K": LinReg(scale=s)}
    for seed in range(args.scenes):
        lst, guidance = synth_scene(args.size, args.size, seed=seed)
        fp = Footprint.aligned((args.size, args.size), s)
        fine, g = torch.from_numpy(lst).double(), torch.from_numpy(guidance).double()
        coarse = fp.aggregate(fine)
        for name, model in models.items():
            shift = 2.0 if name.endswith("2 K") else 0.0

            def predict(lr, guide, model=model, shift=shift):
                return model(lr, guide).double() + shift

            for mode in (("none", "nearest") if shift else ("nearest",)):
                scores = scene_scores(predict, coarse, g, fp, scale=s, use_tta=False, consistency=mode)["scores"]
                q = conformal_quantile(scores, 0.1)
                pred = _make_consistent(predict(coarse[None, None], g[None]), coarse[None, None], s, mode)[0, 0]
                lo, hi = interval(pred, None, q)
                oracle = float((pred - fine).abs().flatten().quantile(0.9))  # what q would be with the fine truth
                print(f"| {seed} | {name} | {mode} | {len(scores)} | {q:.3f} | {coverage(fine, lo, hi):.3f} | "
                      f"{mean_width(lo, hi):.3f} | {oracle:.3f} |")


if __name__ == "__main__":
    _benchmark()
