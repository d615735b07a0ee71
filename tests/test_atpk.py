"""atpk.py: area-to-point kriging of a coarse residual. Coherence (footprint means of the output equal the
residual) on aligned and cross-CRS grids, the block steps it avoids, accuracy against nearest and bicubic on
a simulated field with a known covariance, and the variogram recovered from coarse data alone."""
import math

import numpy as np
import pytest
import torch

import atpk
import geotiff
from errors import ConfigError, DataError
from footprint import Footprint, Grid

UTM = "EPSG:32650"
X0, Y0 = 400000.0, 4500000.0
SINUSOIDAL = geotiff.crs_string(geotiff.make_geo_keys(0, 0, 1.0, geotiff.MODIS_SINUSOIDAL_KEYS))


def gaussian_field(n, range_, seed):
    """A Gaussian random field (n, n), unit variance, exponential covariance exp(-3 d / range_) (d in pixels):
    circulant embedding on a 2n torus (its negative eigenvalues, a tiny part here, are set to 0)."""
    m = 2 * n
    i = np.minimum(np.arange(m), m - np.arange(m))
    covariance = np.exp(-3.0 * np.hypot(i[:, None], i[None, :]) / range_)
    eigen = np.fft.fft2(covariance).real.clip(min=0)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((m, m)) + 1j * rng.standard_normal((m, m))
    return torch.from_numpy(np.fft.ifft2(np.sqrt(eigen) * noise).real[:n, :n] * m)


def covering_grid(fine, crs, pixel, origin):
    """The block of a global grid (corner `origin`, square `pixel`) that covers `fine` plus one pixel."""
    import pyproj
    t = pyproj.Transformer.from_crs(fine.crs, crs, always_xy=True)
    xmin, xmax, ymin, ymax = fine.extent()
    s = np.linspace(0, 1, 30)
    x, y = t.transform(np.r_[xmin + s * (xmax - xmin), xmin + s * (xmax - xmin), np.full(30, xmin), np.full(30, xmax)],
                       np.r_[np.full(30, ymin), np.full(30, ymax), ymin + s * (ymax - ymin), ymin + s * (ymax - ymin)])
    c0, c1 = math.floor((min(x) - origin[0]) / pixel) - 1, math.ceil((max(x) - origin[0]) / pixel) + 1
    r0, r1 = math.floor((origin[1] - max(y)) / pixel) - 1, math.ceil((origin[1] - min(y)) / pixel) + 1
    return Grid((r1 - r0, c1 - c0), (origin[0] + c0 * pixel, pixel, 0.0, origin[1] - r0 * pixel, 0.0, -pixel), crs,
                "coarse.tif")


def foreign_footprint(target, n=200):
    """A UTM 30 m fine grid of n x n pixels on a geographic (0.008 deg) or MODIS sinusoidal coarse grid."""
    pytest.importorskip("pyproj")
    fine = Grid((n, n), (X0, 30.0, 0.0, Y0, 0.0, -30.0), UTM, "fine.tif")
    if target == "geographic":
        return Footprint(fine, covering_grid(fine, "EPSG:4326", 0.008, (-180.0, 90.0)))
    return Footprint(fine, covering_grid(fine, SINUSOIDAL, geotiff.MODIS_PIXEL, (-20015109.354, 10007554.677)))


def rmse(a, b):
    ok = torch.isfinite(a) & torch.isfinite(b)
    return float(((a - b)[ok] ** 2).mean().sqrt())


KNOWN = {"model": "exponential", "nugget": 0.0, "sill": 1.0, "range": 40.0}


@pytest.mark.parametrize("kriging", ["ordinary", "simple"])
def test_coherent_and_without_block_steps_on_an_aligned_grid(kriging):
    fp = Footprint.aligned((96, 96), 8)
    residual = fp.aggregate(gaussian_field(96, 40, seed=1))
    residual[3:5, 6:9] = float("nan")  # a cloud
    out = atpk.atpk_residual(residual, fp, variogram=KNOWN, kriging=kriging)
    ok = torch.isfinite(residual)
    assert float((fp.aggregate(out) - residual)[ok].abs().max()) < 1e-6
    assert torch.equal(torch.isnan(out), fp.nearest(residual).isnan())  # nothing painted under the cloud
    # steps: jumps between fine neighbours across a block edge are like those inside a block
    near = fp.nearest(residual)
    for field, ratio in ((out, 2.0), (near, None)):
        d = (field[:, 1:] - field[:, :-1]).abs()
        edge = torch.zeros(95, dtype=torch.bool)
        edge[7::8] = True  # between columns 8k-1 and 8k
        across, inside = d[:, edge], d[:, ~edge]
        a, b = float(across[torch.isfinite(across)].mean()), float(inside[torch.isfinite(inside)].mean())
        if ratio is None:
            assert b == 0 and a > 0.05  # nearest: flat blocks, all change at the edges
        else:
            assert a < ratio * b, (a, b)


@pytest.mark.parametrize("target", ["geographic", "sinusoidal"])
def test_coherent_on_foreign_grids(target):
    fp = foreign_footprint(target)
    truth = gaussian_field(200, 120, seed=2)
    residual = fp.aggregate(truth)
    variogram = {"model": "exponential", "nugget": 0.0, "sill": 1.0, "range": 120.0}
    raw = atpk.atpk_residual(residual, fp, variogram=variogram, exact=False)
    out = atpk.atpk_residual(residual, fp, variogram=variogram)
    agg, ok = fp.aggregate(out), torch.isfinite(residual)
    both = ok & torch.isfinite(agg)
    assert int(both.sum()) >= 0.97 * int(ok.sum())  # edge pixels whose straddling neighbours have no residual
    assert float((agg - residual)[both].abs().max()) < 1e-5
    # the local systems alone are nearly coherent; the final nearest passes only remove a small remainder
    remainder = (fp.aggregate(torch.nan_to_num(raw)) - residual)[both].abs().max()
    assert 1e-6 < float(remainder) < 0.05 * float(residual[ok].std())
    assert rmse(out, truth) < rmse(fp.nearest(residual), truth)


def test_more_accurate_than_nearest_and_not_worse_than_bicubic():
    n, s = 256, 8
    truth = gaussian_field(n, 40, seed=3)
    fp = Footprint.aligned((n, n), s)
    coarse = fp.aggregate(truth)
    out = atpk.atpk_residual(coarse, fp)  # the variogram fitted on the coarse data
    bicubic = fp.interpolate(coarse, "bicubic")
    bicubic = bicubic + fp.nearest(coarse - fp.aggregate(bicubic))  # engine.make_consistent's 'bicubic'
    assert float((fp.aggregate(bicubic) - coarse).abs().max()) < 1e-9
    e_atpk, e_near, e_bic = rmse(out, truth), rmse(fp.nearest(coarse), truth), rmse(bicubic, truth)
    assert e_atpk < 0.92 * e_near, (e_atpk, e_near)
    assert e_atpk < 1.01 * e_bic, (e_atpk, e_bic)


def test_fitted_variogram_recovers_the_simulated_one():
    """Point-support exponential, range 40 fine pixels, sill 1, no nugget, seen only through 8 x 8 means.
    Tolerance: range and sill within 25 % (one realisation on 32 x 32 coarse pixels; the sill is compared
    with the realisation's own variance, which differs from 1 by up to ~10 % at this size)."""
    truth = gaussian_field(256, 40, seed=0)
    fp = Footprint.aligned((256, 256), 8)
    v = atpk.fit_variogram(fp.aggregate(truth), fp)
    assert not v["fallback"] and v["model"] == "exponential"
    assert 30 < v["range"] < 50, v["range"]
    assert abs(v["sill"] - float(truth.var())) < 0.25 * float(truth.var()), (v["sill"], float(truth.var()))
    assert v["nugget"] < 0.05
    # the regularised point model reproduces the coarse variogram it was deconvolved from
    gamma, regularised = np.array(v["gamma"]), np.array(v["regularised"])
    assert np.abs(regularised - gamma)[:8].max() < 0.1 * gamma.max()
    # the coarse (block) model has a shorter sill than the point one: averaging removes variance
    assert v["coarse"]["sill"] + v["coarse"]["nugget"] < v["sill"]


@pytest.mark.parametrize("radiance", [False, True])
def test_consistent_prediction_reproduces_the_coarse_lst(radiance):
    fp = Footprint.aligned((64, 64), 8)
    pred = (300.0 + 2.0 * gaussian_field(64, 10, seed=4)).float()[None, None]
    lr = (301.0 + fp.aggregate(gaussian_field(64, 40, seed=5))).float()[None, None]
    lr[..., 0, 0] = float("nan")
    out = atpk.atpk_consistent(pred, lr, fp, radiance=radiance)
    assert out.shape == pred.shape and out.dtype == torch.float32
    ok = torch.isfinite(lr)
    assert float((fp.aggregate(out.double(), radiance=radiance) - lr)[ok].abs().max()) < 1e-3
    assert torch.equal(out[..., :8, :8], pred[..., :8, :8])  # no LR there: no correction
    batch = atpk.atpk_consistent(torch.cat([pred, pred + 1]), torch.cat([lr, lr]), radiance=radiance)  # aligned
    assert torch.equal(batch[:1], out)  # footprint None: the aligned pair of the shapes, one fit per image
    assert float((fp.aggregate(batch[1:].double(), radiance=radiance) - lr)[ok].abs().max()) < 1e-3
    numpy_out = atpk.atpk_consistent(pred.numpy(), lr.numpy(), fp, radiance=radiance)
    assert isinstance(numpy_out, np.ndarray) and np.allclose(numpy_out, out.numpy(), atol=1e-4)


def test_constant_residual_and_bad_arguments():
    fp = Footprint.aligned((32, 32), 4)
    out = atpk.atpk_residual(torch.full((8, 8), 2.5), fp)
    assert torch.allclose(out, torch.full((32, 32), 2.5, dtype=torch.float64), atol=1e-9)
    with pytest.raises(ConfigError, match="kriging='universal'"):
        atpk.atpk_residual(torch.zeros(8, 8), fp, kriging="universal")
    with pytest.raises(DataError, match=r"residual of shape \(7, 8\)"):
        atpk.atpk_residual(torch.zeros(7, 8), fp)
    with pytest.raises(ConfigError, match="variogram model 'gaussian'"):
        atpk.fit_variogram(torch.zeros(8, 8), fp, model="gaussian")
