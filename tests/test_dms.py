"""The Data Mining Sharpener (sharpeners.DMS) and the footprint interface the sharpeners share
(sharpeners.BlockFootprint)."""
import sys

import numpy as np
import pytest
import torch

import data
import engine
import groklst
import layout
import sharpeners
from errors import ConfigError

pytest.importorskip("sklearn", reason="model 'dms' needs scikit-learn (optional dependency)")


def smooth_field(rng, shape, length):
    field = layout._smooth_noise(rng, shape[0], shape[1], length)
    return field / field.std()


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def nonlinear_scene(h=32, w=32, s=4, seed=0, noise=0.2):
    """Four smooth bands (a DEM-like one in metres, three reflectance-like ones) and an LST that is a
    known nonlinear function of the first two plus noise; LR = block mean of the fine LST. (Four
    bands: each tree sees int(0.8 C) of them, so with two bands a tree would see only one.)"""
    rng = np.random.default_rng(seed)
    a, b, c, d = (smooth_field(rng, (h * s, w * s), 12) for _ in range(4))
    gui = np.stack([2500 + 600 * a, 0.25 + 0.06 * b, 0.3 + 0.05 * c, 0.1 + 0.02 * d])
    hr = 295 + 7 * np.tanh(2 * a) + 5 * b ** 2 - 3 * a * b + noise * rng.standard_normal(a.shape)
    return hr.reshape(h, s, w, s).mean((1, 3)), gui, hr


def run(model, lr, gui):
    return model(torch.from_numpy(lr)[None, None], torch.from_numpy(gui)[None])[0, 0].double().numpy()


# --------------------------------------------------------------------------- the footprint interface


def test_block_footprint_is_the_block_mean_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(280, 10, (3, 24, 32))
    x[1, 5, 7] = np.nan                     # one NaN pixel: that block's mean is NaN (max_nan_fraction 0)
    x[2, 8:12, 0:4] = np.nan                # a whole NaN block: NaN under any fraction
    fp = sharpeners.BlockFootprint(4, (24, 32))
    assert fp.coarse_shape == (6, 8)
    for fraction in (0.0, 0.1, 1.0):
        np.testing.assert_allclose(fp.aggregate(x, fraction), data.block_mean(x, 4, fraction), rtol=1e-6, equal_nan=True)
    finite = fp.aggregate(x[0])             # the all-finite path (two sums) against the NaN-aware one
    np.testing.assert_allclose(finite, data.block_mean_tensor(torch.from_numpy(x[0]), 4).numpy(), rtol=1e-14)
    np.testing.assert_array_equal(fp.nearest(finite), np.kron(finite, np.ones((4, 4))))
    rows, cols = fp.fine_in_coarse
    assert rows.shape == cols.shape == (24, 32)
    assert rows[0, 0] == cols[0, 0] == -0.375 and rows[3, 9] == 0.375 and cols[3, 9] == 1.875  # (i + 0.5) / 4 - 0.5
    # the coarse pixel that holds each fine pixel centre: floor(coordinate + 0.5), as nearest has it
    np.testing.assert_array_equal(np.floor(rows[:, 0] + 0.5), np.arange(24) // 4)
    np.testing.assert_array_equal(np.floor(cols[0] + 0.5), np.arange(32) // 4)


def test_moving_windows_as_pydms():
    """15-pixel windows on a 40-pixel side, grown by 3.75 pixels and truncated: by hand."""
    win = sharpeners.moving_windows(40, 16, 15)
    assert sorted(win) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [(win[i, 0][0].start, win[i, 0][0].stop) for i in range(3)] == [(0, 18), (11, 33), (26, 40)]
    assert (win[0, 1][1].start, win[0, 1][1].stop) == (11, 16)
    rows = np.array([0.0, 14.4, 14.6, 39.0])  # coarse coordinates of fine pixel centres
    assert sharpeners.window_of(rows, np.zeros(4), 15, (3, 2)).tolist() == [0, 0, 2, 4]


# --------------------------------------------------------------------------- homogeneity


def test_coefficient_of_variation_and_weights():
    rng = np.random.default_rng(1)
    gui = np.stack([2000 + 50 * rng.standard_normal((16, 16)), -0.3 + 0.05 * rng.standard_normal((16, 16))])
    gui[:, :4, :4] = np.array([2000.0, -0.3])[:, None, None] + 1e-3 * rng.standard_normal((2, 4, 4))  # homogeneous
    gui[:, 4:8, :4] *= rng.uniform(0.2, 1.8, (4, 4))                                                   # heterogeneous
    fp = sharpeners.BlockFootprint(4, (16, 16))
    means, cv = sharpeners.coefficient_of_variation(fp, gui)
    blocks = gui.reshape(2, 4, 4, 4, 4)
    expected = (blocks.std((2, 4)) / np.abs(blocks.mean((2, 4)))).mean(0)  # population std / |mean|, mean over bands
    np.testing.assert_allclose(cv, expected, rtol=1e-6)
    np.testing.assert_allclose(means, blocks.mean((2, 4)), rtol=1e-12)
    cv = cv.reshape(-1)
    w = sharpeners.homogeneity_weights(cv, 80)
    inverse = 1 / cv  # pyDMS: 1 / CV rescaled to [0, 1], halved at and above the 80th percentile
    independent = (inverse - inverse.min()) / (inverse.max() - inverse.min())
    independent[cv >= np.percentile(cv, 80)] /= 2
    np.testing.assert_allclose(w, independent, rtol=1e-12)
    assert w[0] == 1.0 and w[4] < 0.5 * w[0]  # the homogeneous pixel 1, the heterogeneous one far less
    assert w[np.argmax(cv)] == 0.0
    zero = sharpeners.homogeneity_weights(np.array([0.0, 0.1, 0.2, 0.4]), 80)
    assert zero[0] == zero[1] == 1.0 and zero[3] == 0.0  # CV 0 counts as the smallest positive CV


# --------------------------------------------------------------------------- the model


def test_dms_recovers_a_nonlinear_relation_better_than_linreg():
    lr, gui, hr = nonlinear_scene()
    dms = run(sharpeners.DMS(scale=4, guidance_channels=4), lr, gui)
    linreg = run(sharpeners.LinReg(scale=4, guidance_channels=4), lr, gui)
    assert rmse(dms, hr) < 0.7 * rmse(linreg, hr), (rmse(dms, hr), rmse(linreg, hr))  # measured: 0.83 K vs 1.48 K


def test_local_models_beat_the_global_one_where_the_relation_changes():
    """LST rises with the band in the left half of the scene and falls with it in the right half:
    no single relation of the band fits both; the local windows do."""
    h, w, s = 32, 32, 4
    rng = np.random.default_rng(2)
    band = smooth_field(rng, (h * s, w * s), 8)
    sign = np.where(np.arange(w * s) < w * s // 2, 1.0, -1.0)
    hr = 300 + 6 * band * sign + 0.1 * rng.standard_normal(band.shape)
    lr = hr.reshape(h, s, w, s).mean((1, 3))
    model = sharpeners.DMS(scale=s, guidance_channels=1, window=8)
    parts = model.sharpen_parts(lr, band[None])
    assert rmse(parts["local"], hr) < 0.5 * rmse(parts["global"], hr), (rmse(parts["local"], hr), rmse(parts["global"], hr))
    assert parts["local_weight"].mean() > 0.7  # the combination trusts them (smaller residuals)
    global_only = sharpeners.DMS(scale=s, guidance_channels=1, window=0).sharpen_parts(lr, band[None])
    assert np.isnan(global_only["local"]).all() and (global_only["local_weight"] == 0).all()
    assert rmse(parts["mean"], hr) < 0.7 * rmse(global_only["mean"], hr)


def test_dms_deterministic_and_threads_agree():
    lr, gui, hr = nonlinear_scene(16, 16, seed=3)
    one = run(sharpeners.DMS(scale=4, guidance_channels=4, window=8), lr, gui)
    again = run(sharpeners.DMS(scale=4, guidance_channels=4, window=8), lr, gui)
    threads = run(sharpeners.DMS(scale=4, guidance_channels=4, window=8, n_jobs=2), lr, gui)
    assert np.array_equal(one, again) and np.array_equal(one, threads)
    other = run(sharpeners.DMS(scale=4, guidance_channels=4, window=8, random_state=1), lr, gui)
    assert not np.array_equal(one, other)  # the seed is what fixes the draws


def test_radiance_option_and_residual_correction():
    lr, gui, hr = nonlinear_scene(24, 24, seed=4)
    fp = sharpeners.BlockFootprint(4, hr.shape)
    linear = sharpeners.DMS(scale=4, guidance_channels=4, window=12)
    radiance = sharpeners.DMS(scale=4, guidance_channels=4, window=12, radiance=True)
    out_t, out_r = linear.sharpen(lr, gui, linear.fit(lr, gui)), radiance.sharpen(lr, gui, radiance.fit(lr, gui))
    assert np.isfinite(out_r).all() and rmse(out_r, out_t) < 0.05 and rmse(out_r, hr) < 1.2 * rmse(out_t, hr)
    np.testing.assert_allclose(fp.aggregate(out_t), lr, atol=1e-4)            # T residual: block means = LR
    np.testing.assert_allclose(fp.aggregate(out_r.astype(np.float64) ** 4) ** 0.25, lr, atol=1e-3)  # radiance: in T^4
    raw = sharpeners.DMS(scale=4, guidance_channels=4, window=12, residual_correction=False)
    assert np.abs(fp.aggregate(raw.sharpen(lr, gui, raw.fit(lr, gui))) - lr).max() > 0.01


def test_dms_missing_data():
    """NaN LR pixels are left out of the fit (the model still predicts there); a NaN guidance pixel
    takes its coarse pixel's LR value; NaN only where both are missing."""
    lr, gui, hr = nonlinear_scene(20, 20, seed=5)
    lr[3:6, 4:9] = np.nan
    gui[1, 40:42, 60:63] = np.nan          # in coarse pixel (10, 15)
    gui[:, 12:16, 16:20] = np.nan          # the whole fine block of coarse pixel (3, 4): LR NaN too
    model = sharpeners.DMS(scale=4, guidance_channels=4, window=10)
    fit = model.fit(lr, gui)
    assert fit["samples"] == 400 - 15 - 1  # LR holes and the block with a NaN guidance pixel
    out = run(model, lr, gui)
    both = np.zeros(out.shape, bool)
    both[12:16, 16:20] = True
    np.testing.assert_array_equal(np.isnan(out), both)
    np.testing.assert_allclose(out[40:42, 60:63], lr[10, 15], atol=1e-4)
    hole = np.zeros(out.shape, bool)
    hole[12:24, 16:36] = True
    hole &= ~both  # under the LR hole (the scene's hottest part): the regression alone, no residual
    linreg = run(sharpeners.LinReg(scale=4, guidance_channels=4), lr, gui)
    assert rmse(out[hole], hr[hole]) < 0.6 * rmse(linreg[hole], hr[hole])  # measured: 4.5 K vs 11.8 K


def test_spread_of_the_trees():
    lr, gui, hr = nonlinear_scene(16, 16, seed=6)
    model = sharpeners.DMS(scale=4, guidance_channels=4, window=0)
    mean, std = model.sharpen_with_spread(lr, gui)
    assert mean.shape == std.shape == hr.shape and (std >= 0).all() and std.max() > 0.05
    np.testing.assert_array_equal(mean, model.sharpen(lr, gui, model.fit(lr, gui)))
    # global model only: the std over the trees' predictions, computed here from the trees
    members = model.members(model.fit(lr, gui)["global"], gui.reshape(4, -1).T.astype(np.float32))
    np.testing.assert_allclose(std.reshape(-1), members.std(0), atol=1e-5)
    # a field every tree agrees on (constant LST): spread exactly 0, also with local models
    flat = np.full_like(lr, 290.0)
    for window in (0, 8):
        m, s = sharpeners.DMS(scale=4, guidance_channels=4, window=window).sharpen_with_spread(flat, gui)
        assert (s == 0).all() and np.abs(m - 290.0).max() < 1e-4


def test_dms_tiles_of_a_fitted_scene_use_the_global_model():
    lr, gui, hr = nonlinear_scene(16, 16, seed=7)
    model = sharpeners.DMS(scale=4, guidance_channels=4, window=8)
    fit = model.fit_scene(lr, gui)
    assert len(fit["local"]) == 4
    whole = run(model, lr, gui)           # the fitted image itself: local models too
    np.testing.assert_array_equal(whole, model.sharpen(lr, gui, fit))
    tile = run(model, lr[:8, :8], gui[:, :32, :32])
    parts = model.sharpen_parts(lr[:8, :8], gui[:, :32, :32], fit)
    assert np.isnan(parts["local"]).all()
    np.testing.assert_array_equal(tile, parts["mean"])


def test_dms_registered_and_configured(config):
    cls = groklst.MODELS["dms"]
    assert cls is sharpeners.DMS and cls.kind == "gisr" and cls.scales == (2, 4, 8, 16, 32) and cls.physical_units
    assert groklst.count_parameters("dms", 8) == 0
    cfg = groklst.load_config(config("demo_dms_x8"), ["model.window=4", "model.n_estimators=5"])
    model = groklst.load_model(cfg, None, "cpu")  # .to(device): nn.Module's own methods still work
    assert model.band_names == list(cfg["data"]["guidance_bands"]) and model.window == 4 and model.n_estimators == 5
    hr, gui = layout.synth_scene(96, 96, seed=1)
    lr = torch.from_numpy(data.block_mean(hr, 8))[None, None]
    with torch.no_grad():
        out = engine.downscale(model, groklst.build_normalizer(cfg), lr, torch.from_numpy(gui)[None])
    assert out.shape == (1, 1, 96, 96) and torch.isfinite(out).all()
    assert rmse(out[0, 0].numpy(), hr) < 3.0
    with pytest.raises(ConfigError, match=r"^model.max_samples=1.5: model 'dms' needs it in \(0, 1\]$"):
        groklst.build_model(groklst.load_config(config("demo_dms_x8"), ["model.max_samples=1.5"]))


def test_dms_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.tree", None)  # import fails
    with pytest.raises(ConfigError, match="^model 'dms' needs scikit-learn: pip install scikit-learn$"):
        sharpeners.DMS(scale=4, guidance_channels=1)(torch.full((1, 1, 2, 2), 290.0), torch.rand(1, 1, 8, 8))


def test_dms_with_a_footprint_keeps_its_local_models_on_their_grid():
    """A fit through a footprint belongs to that grid pair: sharpened through the same footprint it
    uses its local models, through another operator (no footprint) the global one alone. The spread
    comes with the scene protocol's NaN: where the mean is NaN (under a NaN LR pixel), and only there."""
    from footprint import Footprint
    lr, gui, hr = nonlinear_scene(16, 16, seed=8)
    lr[2, 3] = np.nan
    fp = Footprint.aligned(hr.shape, 4)
    model = sharpeners.DMS(scale=4, guidance_channels=4, window=8, n_estimators=10)
    fit = model.fit(torch.from_numpy(lr), torch.from_numpy(gui), fp)
    assert fit["coarse_grid"] == fp.coarse and len(fit["local"]) == 4
    parts = model.sharpen_parts(lr, gui, fit, fp)
    assert np.isfinite(parts["local"]).mean() > 0.9 and parts["local_weight"].max() > 0
    assert np.isnan(model.sharpen_parts(lr, gui, fit)["local"]).all()  # no footprint: another grid
    mean, std = model.sharpen_with_spread(lr, gui, fit, fp)
    np.testing.assert_array_equal(mean, model.sharpen(lr, gui, fit, fp))
    hole = np.zeros(hr.shape, bool)
    hole[8:12, 12:16] = True
    np.testing.assert_array_equal(np.isnan(mean), hole)
    np.testing.assert_array_equal(np.isnan(std), hole)
    assert std[~hole].max() > 0.05
