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


def test_scene_scores_refit_a_sharpener_only_with_enough_reduced_pixels():
    """A sharpener fitted on the whole scene is refitted on the reduced LST when that has its min_samples
    pixels (and its scene fit restored after); otherwise the scene's fit is applied at the reduced ratio."""
    import sharpeners
    lr, guidance, fp = scene(n=256, s=4)
    model = sharpeners.LinReg(scale=4, guidance_channels=1)
    scene_fit = model.fit_scene(lr, guidance)
    out = U.scene_scores(model, lr, guidance, fp, use_tta=False, consistency="none")
    assert model.fitted is scene_fit
    refit = sharpeners.LinReg(scale=4, guidance_channels=1)  # fitted per image: on the 16 x 16 reduced LST
    expected = U.scene_scores(refit, lr, guidance, fp, use_tta=False, consistency="none")
    assert torch.allclose(out["residual"], expected["residual"], atol=1e-4)
    small, g_small, fp_small = scene(n=64, s=4)  # 4 x 4 reduced pixels, linreg needs 20
    model.fit_scene(small, g_small)
    kept = U.scene_scores(model, small, g_small, fp_small, use_tta=False, consistency="none")
    coef = model.fitted["coef"]  # by hand: the scene's regression on the coarse guidance, plus the reduced residual
    g_coarse = block_mean(g_small, 4)[0].double()
    fine = coef[0] + coef[1] * g_coarse
    reduced = block_mean(small, 4)
    by_hand = fine + upsample(reduced - block_mean(fine, 4), 4) - small
    assert torch.allclose(kept["residual"], by_hand, atol=1e-3)


# --------------------------------------------------------------------------- spread sources


class Ramp(torch.nn.Module):
    """A learned-model stand-in: nearest upsampling plus `bias` times the column index (not equivariant)."""
    kind, physical_units = "sisr", False

    def __init__(self, bias=0.1):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(float(bias)))

    def forward(self, lr, g=None):
        up = upsample(lr, 4)
        return up + self.bias * torch.arange(up.shape[-1], dtype=up.dtype)


def identity_normalizer():
    from data import Normalizer
    return Normalizer({"lst": {"method": "none"}, "guidance": {"method": "none", "stats": {}}})


def test_with_spread_sources():
    import sharpeners
    assert U.spread_source(sharpeners.TsHARP()) == "none" and U.spread_source(sharpeners.DMS()) == "trees"
    assert U.spread_source(sharpeners.RFSharpener()) == "trees" and U.spread_source(Ramp()) == "tta"
    assert U.spread_source(Ramp(), members=3) == "ensemble"
    stochastic = Ramp()
    stochastic.stochastic = True
    assert U.spread_source(stochastic) == "draws"
    lr = 290 + torch.rand(1, 1, 4, 4)
    norm = identity_normalizer()
    # identical checkpoints: no spread, the mean is the single model's prediction
    same = U.WithSpread([Ramp(0.1), Ramp(0.1), Ramp(0.1)], norm)(lr)
    assert same.shape == (1, 2, 16, 16) and torch.equal(same[:, 1], torch.zeros_like(same[:, 1]))
    assert torch.allclose(same[:, :1], Ramp(0.1)(lr), atol=1e-4)
    # members that differ: their sample std
    differ = U.WithSpread([Ramp(0.0), Ramp(0.1), Ramp(0.2)], norm)(lr)
    j = torch.arange(16, dtype=torch.float32)
    assert torch.allclose(differ[0, 1], (0.1 * j).expand(16, 16), atol=1e-4)
    # one learned model: test-time augmentation (the ramp turns with the flips: a spread where it is steep)
    tta = U.WithSpread([Ramp(0.1)], norm)(lr)
    assert float(tta[:, 1].min()) > 0
    with pytest.raises(ConfigError, match="at least 2"):
        U.WithSpread([Ramp()], norm, source="ensemble")


def test_tree_spread_of_rf_is_the_std_over_its_trees():
    """rf: the sample std of the forest's trees at each fine pixel, computed here tree by tree."""
    pytest.importorskip("sklearn")
    import sharpeners
    lr, guidance, _ = scene(n=64, s=4)
    model = sharpeners.RFSharpener(scale=4, guidance_channels=1, n_estimators=6)
    out = U.WithSpread([model])(lr[None, None].float(), guidance[None].float())
    fit = model.fit(lr, guidance)
    x = guidance[0].reshape(-1, 1).float().numpy()
    trees = np.stack([t.predict(x) for t in fit["coef"].estimators_])
    assert torch.allclose(out[0, 1].double(), torch.from_numpy(trees.std(0, ddof=1)).reshape(64, 64), atol=1e-3)
    assert torch.allclose(out[0, 0], model(lr[None, None].float(), guidance[None].float())[0, 0], atol=1e-4)
    dms = U.WithSpread([sharpeners.DMS(scale=4, guidance_channels=1, window=0, n_estimators=5)])
    both = dms(lr[None, None].float(), guidance[None].float())
    assert float(both[:, 1].min()) >= 0 and float(both[:, 1].max()) > 0


# --------------------------------------------------------------------------- scale transfer


def exponential_field(n, range_, sill, nugget, rng):
    """Two independent Gaussian random fields (n, n) with covariance sill exp(-3 d / range_) + nugget [d = 0]
    (circulant embedding on a 2n torus: the real and imaginary parts)."""
    m = 2 * n
    i = np.minimum(np.arange(m), m - np.arange(m))
    eigen = np.fft.fft2(sill * np.exp(-3.0 * np.hypot(i[:, None], i[None, :]) / range_)).real.clip(min=0)
    z = np.fft.ifft2(np.sqrt(eigen) * (rng.standard_normal((m, m)) + 1j * rng.standard_normal((m, m))))[:n, :n] * m
    return [part + np.sqrt(nugget) * rng.standard_normal((n, n)) for part in (z.real, z.imag)]


def within_block_variance(x, side):
    """Mean over side x side blocks of the population variance of their pixels."""
    n = x.shape[0] // side
    blocks = x[:n * side, :n * side].reshape(n, side, n, side)
    return float(blocks.var(axis=(1, 3)).mean())


def test_dispersion_variance_against_monte_carlo():
    """Krige's relation on simulated fields of a known variogram: the mean within-block variance of 4 x 4
    pixel blocks is D^2(1|4), that of the 4 x 4 block means within 16 x 16 blocks D^2(4|16); and the
    transfer factor is the square root of their ratio."""
    rng = np.random.default_rng(0)
    variogram = {"model": "exponential", "nugget": 0.3, "sill": 1.0, "range": 12.0}
    fine, reduced = [], []
    for _ in range(30):
        for x in exponential_field(128, 12.0, 1.0, 0.3, rng):
            fine.append(within_block_variance(x, 4))
            reduced.append(within_block_variance(x.reshape(32, 4, 32, 4).mean((1, 3)), 4))
    assert abs(np.mean(fine) - U.dispersion_variance(variogram, 1, 4)) < 0.02 * np.mean(fine)
    assert abs(np.mean(reduced) - U.dispersion_variance(variogram, 4, 16)) < 0.05 * np.mean(reduced)
    assert abs(U.variogram_transfer(variogram, 4) - np.sqrt(np.mean(fine) / np.mean(reduced))) < 0.03
    assert U.block_semivariance(variogram, 1) == 0.0
    # a pure nugget: D^2(1|s) = c0 (1 - 1/s^2), D^2(s|s^2) = c0 (1/s^2 - 1/s^4): the factor is s
    white = dict(variogram, sill=0.0)
    assert abs(U.dispersion_variance(white, 1, 4) - 0.3 * (1 - 1 / 16)) < 1e-12
    assert abs(U.variogram_transfer(white, 4) - 4.0) < 1e-9


def test_block_semivariance_of_large_blocks_is_subsampled_closely(monkeypatch):
    variogram = {"model": "exponential", "nugget": 0.0, "sill": 2.0, "range": 40.0}
    exact = U.block_semivariance(variogram, 64)
    monkeypatch.setattr(U, "BLOCK_POINTS", 16)
    assert abs(U.block_semivariance(variogram, 64) - exact) < 0.01 * exact


def test_scene_transfer_of_a_field_with_a_known_variogram():
    """scene_transfer fits the coarse field's variogram (atpk.fit_variogram), drops the point nugget and
    gives the transfer of the structured part: within 10 % of the true one (0.71) on a simulated field."""
    rng = np.random.default_rng(1)
    field = torch.from_numpy(exponential_field(256, 30.0, 1.0, 0.0, rng)[0])
    fp = Footprint.aligned((256, 256), 4)
    k, fitted = U.scene_transfer(fp.aggregate(field), fp)
    true = U.variogram_transfer({"model": "exponential", "nugget": 0.0, "sill": 1.0, "range": 30.0}, 4)
    assert abs(k - true) < 0.1 * true, (k, true, fitted["range"])
    assert abs(U.scene_transfer(fp.aggregate(field + 5.0), fp)[0] - k) < 1e-6  # a level does not change it


def test_calibrated_transfer_covers_new_scenes():
    """Full-scale errors a fixed factor 0.4 of each scene's own reduced-scale q (heteroscedastic through a
    known sigma shape): k from 20 calibration scenes recovers the factor and covers 90 % of new scenes."""
    rng = np.random.default_rng(2)

    def scenes(n):
        out = []
        for _ in range(n):
            q = rng.uniform(2.0, 9.0)  # each scene's own anchored q, K
            sigma = torch.from_numpy(rng.uniform(0.5, 2.0, 4000))
            error = 0.4 * q / 1.645 * U.relative_sigma(sigma) * torch.from_numpy(rng.normal(size=4000))
            out.append((error, sigma, q))
        return out

    k = U.calibrated_transfer([U.transfer_scores(e, s, q) for e, s, q in scenes(20)], 0.1)
    assert abs(k - 0.4) < 0.02
    test = scenes(20)
    cov, width, pixels = U.pooled([e for e, _, _ in test], [U.half_width(s, q, k) for _, s, q in test])
    assert abs(cov - 0.9) < 0.01 and pixels == 80000
    assert abs(width - 2 * k * np.mean([q for _, _, q in test])) < 0.05 * width  # relative sigma has mean 1


def test_relative_sigma_half_width_and_transfer_settings():
    sigma = torch.tensor([0.0, 1.0, 3.0, float("nan")], dtype=torch.float32)
    rel = U.relative_sigma(sigma)
    assert rel.dtype == torch.float32 and torch.isnan(rel[3])
    assert torch.allclose(rel[:3], torch.tensor([0.01, 1.0, 3.0]) / (4.01 / 3), atol=1e-6)
    assert torch.equal(U.relative_sigma(torch.zeros(5)), torch.ones(5)) and U.relative_sigma(None) == 1.0
    assert U.half_width(None, 2.0, 0.5) == 1.0
    assert U.parse_transfer("0.35") == 0.35 and U.parse_transfer("variogram") == "variogram"
    for bad in ("-1", "x", "nan"):
        with pytest.raises(ConfigError, match="transfer"):
            U.parse_transfer(bad)


def test_stochastic_models_use_the_spread_of_engine_downscale():
    """Stochastic models (PGDM): sigma is engine.downscale(..., spread=True)'s, the draws' std in Kelvin."""
    class Draws(Ramp):
        stochastic = True

        def sample(self, x, g=None, num_samples=None, generator=None):
            mean = self(x, g)
            return mean, torch.full_like(mean, 0.5)  # the draws' std in normalised units

    norm = identity_normalizer()
    out = U.WithSpread([Draws()], norm)(290 + torch.rand(1, 1, 4, 4))
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], 0.5))  # norm 'none': K per unit is 1
