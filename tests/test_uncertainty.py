"""uncertainty.py: spreads (test-time augmentation), split-conformal quantiles and intervals, and the
scene-anchored calibration scores, against hand values and simulated errors of known distribution."""
import math

import numpy as np
import pytest
import torch

import uncertainty as U
from errors import ConfigError, DataError
from footprint import Footprint, Grid


def upsample(lr, s):
    return lr.repeat_interleave(s, -2).repeat_interleave(s, -1)


def block_mean(x, s):
    h, w = x.shape[-2] // s, x.shape[-1] // s
    return x.reshape(x.shape[:-2] + (h, s, w, s)).mean((-3, -1))


# --------------------------------------------------------------------------- spread


def test_tta_of_an_equivariant_predictor_has_no_spread():
    torch.manual_seed(0)
    lr, g = 290 + torch.rand(2, 1, 6, 6) * 10, torch.rand(2, 3, 24, 24)

    def predict(lr, g):  # flips and rotations commute with it exactly
        return upsample(lr, 4) + g.mean(1, keepdim=True)

    mean, sigma = U.tta(predict, lr, g)
    assert torch.equal(sigma, torch.zeros_like(sigma))
    assert torch.allclose(mean, predict(lr, g), atol=1e-4)  # float32 mean of 8 equal values


def test_tta_turns_each_prediction_back():
    """A predictor that adds its input's column index: each member, turned back, adds one of the four
    coordinate ramps j, i, n-1-j, n-1-i of the original (each twice over the 8 transforms)."""
    n = 8
    lr = torch.full((1, 1, 2, 2), 300.0, dtype=torch.float64)

    def predict(lr, g):
        return upsample(lr, 4) + torch.arange(n, dtype=torch.float64)

    mean, sigma = U.tta(predict, lr)
    i, j = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    members = torch.stack([j, i, n - 1 - j, n - 1 - i] * 2)
    assert torch.allclose(mean[0, 0], 300 + members.mean(0)) and torch.allclose(mean, torch.full_like(mean, 303.5))
    assert torch.allclose(sigma[0, 0], members.std(0, correction=1))
    assert torch.equal(U.undo_dihedral(U.dihedral(i, 5), 5), i)


# --------------------------------------------------------------------------- split conformal


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = torch.tensor([7.0, 1, 9, 3, 5, 2, 8, 4, 6])  # 1..9 shuffled
    assert U.conformal_quantile(scores, 0.1) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert U.conformal_quantile(scores, 0.2) == 8.0  # ceil(10 * 0.8) = 8th
    assert U.conformal_quantile(scores, 0.5) == 5.0  # ceil(10 * 0.5) = 5th
    assert U.conformal_quantile(scores[:8], 0.1) == math.inf  # ceil(9 * 0.9) = 9 > 8 scores
    assert U.conformal_quantile(torch.arange(1.0, 20.0), 0.1) == 18.0  # ceil(20 * 0.9) = 18
    assert U.conformal_quantile(torch.tensor([2.0, float("nan"), 1.0, 3.0]), 0.25) == 3.0  # NaN ignored: n = 3
    with pytest.raises(ConfigError, match="alpha=1.5"):
        U.conformal_quantile(scores, 1.5)


def test_conformal_coverage_guarantee_with_few_scores():
    """Exchangeable scores, n = 19: P(new score <= q) is between 1 - alpha and 1 - alpha + 1/(n+1)."""
    rng = np.random.default_rng(0)
    trials, n = 4000, 19
    draws = torch.from_numpy(rng.exponential(size=(trials, n + 1)))
    hits = [float(d[-1]) <= U.conformal_quantile(d[:-1], 0.1) for d in draws]
    assert 0.9 - 0.015 < np.mean(hits) < 0.95 + 0.015  # Monte Carlo sd 0.005


def test_normalised_intervals_cover_90_percent_where_sigma_is_known():
    """Gaussian errors with heteroscedastic sigma (0.3..3 K); sigma known up to a factor 2.5 (the scale of
    a member spread is not trusted: calibration absorbs it)."""
    rng = np.random.default_rng(1)
    n = 20000
    sigma = torch.from_numpy(rng.uniform(0.3, 3.0, 2 * n))
    truth = torch.from_numpy(300 + rng.normal(size=2 * n))
    mean = truth + sigma * torch.from_numpy(rng.normal(size=2 * n))
    spread = sigma / 2.5
    q = U.conformal_quantile(U.normalised_scores(mean[:n] - truth[:n], spread[:n]), 0.1)
    assert abs(q - 1.645 * 2.5) < 0.1
    lo, hi = U.interval(mean[n:], spread[n:], q)
    assert abs(U.coverage(truth[n:], lo, hi) - 0.90) < 0.03
    assert abs(U.mean_width(lo, hi) - 2 * q * float(spread[n:].mean())) < 1e-9
    # normalised: 90 % in the wide-sigma half too; a constant width under-covers there
    wide = sigma[n:] > 1.65
    assert abs(U.coverage(truth[n:][wide], lo[wide], hi[wide]) - 0.90) < 0.03
    q_plain = U.conformal_quantile(U.normalised_scores(mean[:n] - truth[:n]), 0.1)
    lo_p, hi_p = U.interval(mean[n:], None, q_plain)
    assert abs(U.coverage(truth[n:], lo_p, hi_p) - 0.90) < 0.03
    assert U.coverage(truth[n:][wide], lo_p[wide], hi_p[wide]) < 0.85
    with pytest.raises(DataError, match="sigma of shape"):
        U.normalised_scores(mean, spread[:10])


def test_sigma_floor():
    scores = U.normalised_scores(torch.tensor([0.5, -0.02]), torch.tensor([0.0, 0.0]))
    assert torch.allclose(scores, torch.tensor([0.5, 0.02], dtype=torch.float64) / U.SIGMA_FLOOR)


# --------------------------------------------------------------------------- scene anchoring


def scene(n=256, s=4, seed=0):
    """A coarse LST (n/s)^2 that is the footprint mean of a fine field related to a guidance band."""
    rng = np.random.default_rng(seed)
    guidance = torch.from_numpy(rng.normal(size=(1, n, n))).double()
    smooth = torch.from_numpy(rng.normal(size=(n // 32, n // 32))).double()
    fine = 300 + 3 * upsample(smooth, 32) - 2 * guidance[0] + torch.from_numpy(rng.normal(size=(n, n)) * 0.5)
    fp = Footprint.aligned((n, n), s)
    return fp.aggregate(fine), guidance, fp


def sharpener(shift):
    """A guidance-driven predictor of any ratio (the guidance's size over the LR's), off by `shift` K."""
    def predict(lr, g):
        s = g.shape[-1] // lr.shape[-1]
        detail = g[:, :1] - upsample(block_mean(g[:, :1], s), s)
        return upsample(lr, s) - 2 * detail + shift
    return predict


def test_scene_scores_are_the_reduced_resolution_errors():
    lr, guidance, fp = scene()
    out = U.scene_scores(sharpener(0.0), lr, guidance, fp, use_tta=False, consistency="none")
    assert out["scale"] == 4 and out["sigma"] is None and out["residual"].shape == (64, 64)
    # by hand: LST averaged 4-fold, guidance averaged onto the coarse grid, predicted back, minus the LST
    lr_reduced = block_mean(lr, 4)[None, None]
    g_coarse = block_mean(guidance, 4)[None]
    expected = sharpener(0.0)(lr_reduced, g_coarse)[0, 0] - lr
    assert torch.allclose(out["residual"], expected, atol=1e-4)  # the model is given float32
    assert torch.allclose(out["scores"].sort().values, expected.abs().flatten().sort().values, atol=1e-4)


def test_anchoring_removes_a_scene_wide_shift():
    lr, guidance, fp = scene()
    q = {}
    for mode in ("none", "nearest", "atpk"):
        for shift in (0.0, 5.0):
            out = U.scene_scores(sharpener(shift), lr, guidance, fp, use_tta=False, consistency=mode)
            q[mode, shift] = U.conformal_quantile(out["scores"], 0.1)
    assert q["none", 5.0] > q["none", 0.0] + 2  # the shift inflates the unanchored interval
    assert abs(q["nearest", 5.0] - q["nearest", 0.0]) < 1e-6
    assert abs(q["atpk", 5.0] - q["atpk", 0.0]) < 1e-3
    # TTA gives each coarse pixel a sigma; the anchored scores stay blind to the shift
    a, b = (U.scene_scores(sharpener(x), lr, guidance, fp, consistency="nearest") for x in (0.0, 5.0))
    assert a["sigma"].shape == (64, 64)
    assert abs(U.conformal_quantile(a["scores"]) - U.conformal_quantile(b["scores"])) < 1e-6


def test_scene_too_small_and_ratio_of_a_foreign_grid():
    fp = Footprint.aligned((12, 12), 4)
    with pytest.raises(DataError, match="smaller than one 4 x 4 block"):
        U.scene_scores(sharpener(0.0), torch.zeros(3, 3), torch.zeros(1, 12, 12), fp, use_tta=False)
    fine = Grid((90, 90), (0.0, 30.0, 0.0, 2700.0, 0.0, -30.0), None, "fine")
    coarse = Grid((2, 2), (15.0, 900.0, 0.0, 2685.0, 0.0, -900.0), None, "coarse")  # half a fine pixel off
    fp = Footprint(fine, coarse)
    assert fp.scale is None and U._ratio(fp) == 30
