"""footprint.py: aggregation and interpolation between a fine and a coarse grid, checked against independent
computations written here (polygon clipping on exactly transformed corners, 1-D interval overlaps, block
means, torch's own interpolation)."""
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import geotiff
import layout
from errors import DataError
from footprint import LATTICE_TOL, CoarseCoordinates, Footprint, Grid

pyproj = pytest.importorskip("pyproj")

UTM = "EPSG:32650"  # zone 50N; the fine grid's corner 400000 E, 4500000 N is at 115.8 E, 40.6 N
X0, Y0 = 400000.0, 4500000.0
SINUSOIDAL = geotiff.crs_string(geotiff.make_geo_keys(0, 0, 1.0, geotiff.MODIS_SINUSOIDAL_KEYS))
MODIS_X0, MODIS_Y0 = -20015109.354, 10007554.677  # corner of the global MODIS grid


def utm_grid(rows, cols, x0=X0, y0=Y0, size=30.0):
    return Grid((rows, cols), (x0, size, 0.0, y0, 0.0, -size), UTM, "fine.tif")


def covering_grid(fine, crs, pixel, origin, margin=1):
    """The block of a global grid (corner `origin`, square `pixel`) that covers `fine`, plus `margin` pixels."""
    t = pyproj.Transformer.from_crs(fine.crs, crs, always_xy=True)
    xmin, xmax, ymin, ymax = fine.extent()
    s = np.linspace(0, 1, 50)
    x, y = t.transform(np.r_[xmin + s * (xmax - xmin), xmin + s * (xmax - xmin), np.full(50, xmin), np.full(50, xmax)],
                       np.r_[np.full(50, ymin), np.full(50, ymax), ymin + s * (ymax - ymin), ymin + s * (ymax - ymin)])
    c0, c1 = math.floor((min(x) - origin[0]) / pixel) - margin, math.ceil((max(x) - origin[0]) / pixel) + margin
    r0, r1 = math.floor((origin[1] - max(y)) / pixel) - margin, math.ceil((origin[1] - min(y)) / pixel) + margin
    return Grid((r1 - r0, c1 - c0), (origin[0] + c0 * pixel, pixel, 0.0, origin[1] - r0 * pixel, 0.0, -pixel), crs,
                "coarse.tif")


def geographic_grid(fine, pixel=0.008):
    return covering_grid(fine, "EPSG:4326", pixel, (-180.0, 90.0))


def modis_grid(fine):
    return covering_grid(fine, SINUSOIDAL, geotiff.MODIS_PIXEL, (MODIS_X0, MODIS_Y0))


# --------------------------------------------------------------------------- the independent computation


def clip_area(polygon, i, j):
    """Area of a convex polygon [(x, y), ...] inside the cell x in [j, j+1], y in [i, i+1]: Sutherland-Hodgman
    clipping against the cell's four sides, then the shoelace formula."""
    for axis, bound, below in ((0, j, False), (0, j + 1, True), (1, i, False), (1, i + 1, True)):
        out = []
        for k, p in enumerate(polygon):
            q = polygon[(k + 1) % len(polygon)]
            p_in, q_in = (p[axis] <= bound, q[axis] <= bound) if below else (p[axis] >= bound, q[axis] >= bound)
            if p_in:
                out.append(p)
            if p_in != q_in:
                t = (bound - p[axis]) / (q[axis] - p[axis])
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        polygon = out
        if not polygon:
            return 0.0
    return abs(shoelace(polygon))


def shoelace(polygon):
    return 0.5 * sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(polygon, polygon[1:] + polygon[:1]))


def brute_force(fine, coarse):
    """Weights (sparse COO (h*w, H*W) float64) and cell areas in fine pixels (h*w,), from every fine pixel
    corner and every coarse cell corner transformed with pyproj (no lattice) and polygon clipping."""
    H, W = fine.shape
    h, w = coarse.shape
    X0_, DX, _, Y0_, _, DY = fine.transform
    x0, dx, _, y0, _, dy = coarse.transform
    forward = pyproj.Transformer.from_crs(fine.crs, coarse.crs, always_xy=True)
    r, c = np.meshgrid(np.arange(H + 1.0), np.arange(W + 1.0), indexing="ij")
    x, y = forward.transform(X0_ + c * DX, Y0_ + r * DY)
    cols, rows = (np.asarray(x) - x0) / dx, (np.asarray(y) - y0) / dy  # coarse pixel coordinates of fine corners
    quads = [(cols[:-1, :-1], rows[:-1, :-1]), (cols[:-1, 1:], rows[:-1, 1:]), (cols[1:, 1:], rows[1:, 1:]),
             (cols[1:, :-1], rows[1:, :-1])]
    ci = np.stack([np.floor(q[1]) for q in quads]).astype(int)  # cell of each corner, (4, H, W)
    cj = np.stack([np.floor(q[0]) for q in quads]).astype(int)
    one = (ci == ci[0]).all(0) & (cj == cj[0]).all(0)  # all corners in one (convex) cell: weight 1
    inside = one & (ci[0] >= 0) & (ci[0] < h) & (cj[0] >= 0) & (cj[0] < w)
    entries = [((ci[0] * w + cj[0])[inside], np.flatnonzero(inside.ravel()), np.ones(int(inside.sum())))]
    for fr, fc in zip(*np.nonzero(~one)):
        quad = [(q[0][fr, fc], q[1][fr, fc]) for q in quads]
        area = abs(shoelace(quad))
        for i in range(max(ci[:, fr, fc].min(), 0), min(ci[:, fr, fc].max(), h - 1) + 1):
            for j in range(max(cj[:, fr, fc].min(), 0), min(cj[:, fr, fc].max(), w - 1) + 1):
                entries.append(([i * w + j], [fr * W + fc], [clip_area(quad, i, j) / area]))
    coarse_index, fine_index, value = (np.concatenate([np.asarray(e[k], float) for e in entries]) for k in range(3))
    weights = torch.sparse_coo_tensor(np.stack([coarse_index, fine_index]).astype(np.int64), value, (h * w, H * W),
                                      check_invariants=True)
    back = pyproj.Transformer.from_crs(coarse.crs, fine.crs, always_xy=True)
    i, j = np.divmod(np.arange(h * w), w)
    corners = [(i, j), (i, j + 1), (i + 1, j + 1), (i + 1, j)]
    fx, fy = zip(*(back.transform(x0 + b * dx, y0 + a * dy) for a, b in corners))
    fine_cols, fine_rows = (np.array(fx) - X0_) / DX, (np.array(fy) - Y0_) / DY
    areas = np.abs(sum(fine_cols[k] * fine_rows[(k + 1) % 4] - fine_cols[(k + 1) % 4] * fine_rows[k]
                       for k in range(4)) / 2)
    return weights.coalesce(), areas


def matmul(weights, x):
    """weights (sparse (n, H*W)) @ x (H, W) float64 -> (n,)."""
    return torch.sparse.mm(weights, torch.from_numpy(np.ascontiguousarray(x, np.float64)).reshape(-1, 1))[:, 0].numpy()


def smooth_field(shape, seed=0):
    lst, _ = layout.synth_scene(*shape, seed=seed)
    return lst.astype(np.float64)


# --------------------------------------------------------------------------- CRS from GeoKeys


def test_crs_of_written_geotiffs(tmp_path):
    sinu, wgs = str(tmp_path / "modis.tif"), str(tmp_path / "wgs84.tif")
    geotiff.write_geotiff(sinu, np.zeros((4, 5), np.float32),
                          geotiff.make_geo_keys(MODIS_X0, MODIS_Y0, geotiff.MODIS_PIXEL, geotiff.MODIS_SINUSOIDAL_KEYS))
    geotiff.write_geotiff(wgs, np.zeros((4, 5), np.float32), geotiff.make_geo_keys(110.0, 40.0, 0.008, geotiff.WGS84_KEYS))
    g = Grid.from_geotiff(sinu)
    assert g.shape == (4, 5) and g.transform == (MODIS_X0, geotiff.MODIS_PIXEL, 0.0, MODIS_Y0, 0.0, -geotiff.MODIS_PIXEL)
    crs = pyproj.CRS(g.crs)
    assert crs.coordinate_operation.method_name == "Sinusoidal" and crs.ellipsoid.semi_major_metre == 6371007.181
    assert crs.ellipsoid.semi_minor_metre == 6371007.181
    assert {p.name: p.value for p in crs.coordinate_operation.params}["Longitude of natural origin"] == 0
    assert Grid.from_geotiff(wgs).crs == "EPSG:4326" and Grid.from_geotiff(wgs).transform[1] == 0.008
    assert geotiff.crs_string(geotiff.make_geo(X0, Y0, 30.0, epsg=32650)) == UTM
    assert geotiff.crs_string({}) is None
    # a user-defined projection this reader does not know: one line naming the file
    keys = dict(geotiff.MODIS_SINUSOIDAL_KEYS)
    keys[geotiff.GEOKEY_PROJ_COORD_TRANS] = 26  # CT_NewZealandMapGrid
    with pytest.raises(DataError, match="nzmg.tif: user-defined projection ProjCoordTransGeoKey=26") as e:
        geotiff.crs_string(geotiff.make_geo_keys(0, 0, 1.0, keys), "nzmg.tif")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("epsg, transform, parameters, earth", [
    (32650, 1, {3081: 0.0, 3080: 117.0, 3092: 0.9996, 3082: 500000.0, 3083: 0.0}, {2048: 4326}),  # UTM 50N
    (5070, 11, {3078: 29.5, 3079: 45.5, 3081: 23.0, 3080: -96.0, 3082: 0.0, 3083: 0.0}, {2048: 4269}),  # CONUS Albers
    (3035, 10, {3089: 52.0, 3088: 10.0, 3082: 4321000.0, 3083: 3210000.0}, {2048: 4258}),  # LAEA Europe
    (3347, 8, {3078: 49.0, 3079: 77.0, 3085: 63.390675, 3084: -91.8666666666667, 3086: 6200000.0, 3087: 3000000.0},
     {2048: 4269}),  # Statistics Canada Lambert
])
def test_user_defined_projections_match_their_epsg(epsg, transform, parameters, earth):
    """A projection written as user-defined GeoKeys (the parameter keys GDAL and others use) places points
    where its EPSG definition does."""
    keys = {1024: 1, 3072: geotiff.USER_DEFINED, 3074: geotiff.USER_DEFINED, 3075: transform, 3076: 9001,
            2054: 9102, **parameters, **earth}
    crs = geotiff.crs_string(geotiff.make_geo_keys(0.0, 0.0, 30.0, keys))
    lon, lat = pyproj.Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True).transform(
        np.array([400000.0, 600000.0]), np.array([4400000.0, 4600000.0]))
    ours = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    theirs = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    assert np.abs(np.subtract(ours, theirs)).max() < 0.01, crs  # metres


# --------------------------------------------------------------------------- aggregate


@pytest.mark.parametrize("target", ["geographic", "sinusoidal"])
def test_aggregate_matches_polygon_clipping(target):
    """UTM 30 m (300 x 300, 9 km) against a 0.008 deg grid or the MODIS 926.625 m grid. Weights may differ from
    exact clipping of exactly transformed corners only by the lattice's interpolation error: a fine pixel's
    overlap with a cell changes by at most its perimeter (4 fine pixels) x the corner displacement
    (<= LATTICE_TOL fine pixel), so |dw| <= 4 * LATTICE_TOL; float32 storage adds 6e-8."""
    fine = utm_grid(300, 300)
    coarse = geographic_grid(fine) if target == "geographic" else modis_grid(fine)
    fp = Footprint(fine, coarse, min_valid=0.6)
    assert fp.scale is None and fp.to_coarse.error <= LATTICE_TOL
    weights, areas = brute_force(fine, coarse)
    assert ((weights.values() > 0) & (weights.values() < 1)).sum() > 1000  # many fine pixels across cell edges
    difference = (fp.weights.to_sparse_coo().double() - weights).coalesce().values()
    assert difference.abs().max() <= 4 * LATTICE_TOL + 1e-7
    ones = np.ones(fine.shape)
    # every fine pixel is inside the coarse grid (margin 1): its fractions sum to 1
    assert np.allclose(matmul(weights.t(), np.ones(coarse.shape)), 1.0, atol=1e-9)
    assert np.allclose(matmul(fp.weights.to_sparse_coo().double().t(), np.ones(coarse.shape)), 1.0, atol=1e-6)
    # coverage: the fraction of each cell's footprint inside the fine grid; curved cell edges move it by < 1e-6
    coverage = np.minimum(matmul(weights, ones) / areas, 1.0)
    assert np.abs(fp.coverage.numpy().ravel() - coverage).max() < 1e-5
    full, empty = (fp.coverage.numpy() == 1.0).sum(), (fp.coverage.numpy() == 0.0).sum()
    assert full >= 30 and empty >= 10 and full + empty < coverage.size  # and partly covered cells in between
    assert np.array_equal(fp.coverage.numpy().ravel() == 1.0, coverage > 1 - 1e-6)  # full means exactly 1
    # so min_valid=1 keeps every fully covered cell of a field without holes
    strict = Footprint(fine, coarse, min_valid=1.0).aggregate(smooth_field(fine.shape))
    assert np.array_equal(np.isfinite(strict), fp.coverage.numpy() == 1.0)
    # NaN-aware means and the valid-fraction rule, a cloud over part of the field
    x = smooth_field(fine.shape)
    yy, xx = np.mgrid[:300, :300]
    x[(yy - 100) ** 2 + (xx - 180) ** 2 < 70 ** 2] = np.nan
    valid = np.isfinite(x)
    count = matmul(weights, valid)
    mean = matmul(weights, np.where(valid, x, 0.0)) / np.maximum(count, 1e-30)
    fraction = count / areas
    out = fp.aggregate(x).ravel()
    assert out.dtype == np.float64
    clear = np.abs(fraction - 0.6) > 1e-3  # cells at the threshold itself may go either way
    assert np.array_equal(np.isnan(out)[clear], (fraction < 0.6)[clear])
    ok = np.isfinite(out)
    assert ok.sum() >= 30 and (np.isnan(out) & (coverage > 0.6)).sum() >= 3  # cells lost to the cloud
    # |d mean| <= sum |dw| |x - mean| / sum w: 4e-4 on ~4 x 30 edge pixels of values within 10 K, over >= 500 pixels
    assert np.abs(out[ok] - mean[ok]).max() < 1e-3


def test_lattice_error_is_bounded():
    """Interpolated coordinates against pyproj at random points of a Landsat-size grid (7800 px, 234 km)."""
    fine = utm_grid(7800, 7800)
    rng = np.random.default_rng(0)
    rows, cols = np.sort(rng.uniform(0, 7800, 60)), np.sort(rng.uniform(0, 7800, 60))
    for coarse in (geographic_grid(fine), modis_grid(fine)):
        lattice = CoarseCoordinates(fine, coarse)
        true = lattice.exact(*np.meshgrid(rows, cols, indexing="ij"))
        error = max(np.abs(t - g).max() for t, g in zip(true, lattice(rows, cols)))  # coarse pixels
        (r0, c0), (r1, c1), (r2, c2) = (lattice.exact(np.array(r), np.array(c)) for r, c in ((0, 0), (0, 1), (1, 0)))
        fine_size = math.sqrt(abs((c1 - c0) * (r2 - r0) - (c2 - c0) * (r1 - r0)))  # a fine pixel, in coarse pixels
        assert error / fine_size <= LATTICE_TOL, (coarse.crs, lattice.step, error / fine_size)
        assert lattice.step <= 16 and lattice.error <= LATTICE_TOL


def test_constant_stays_constant():
    fine = utm_grid(60, 70)
    fp = Footprint(fine, modis_grid(fine), min_valid=0.0)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-6)):
        out = fp.aggregate(np.full(fine.shape, 300.0, dtype))
        assert out.dtype == dtype and np.isfinite(out).sum() == (fp.coverage.numpy() > 0).sum()
        assert np.nanmax(np.abs(out / 300.0 - 1)) < tol
        for mode in ("nearest", "bilinear", "bicubic"):
            up = fp.interpolate(np.full(fp.coarse.shape, 300.0, dtype), mode)
            assert up.shape == fine.shape and np.all(np.abs(up / 300.0 - 1) < tol)


def test_aligned_is_block_mean_bit_for_bit(tmp_path):
    """The GrokLST case takes the block-mean path, from shapes or from GeoTIFF headers, NaN rule included."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(290.0, 8.0, (2, 3, 64, 48)).astype(np.float32))
    x[0, 0, :5, :7] = float("nan")
    x[1, 2, 8:16, 8:16] = float("nan")
    hr, lr = str(tmp_path / "hr.tif"), str(tmp_path / "lr.tif")
    geotiff.write_geotiff(hr, x[0, 0].numpy(), geotiff.make_geo(X0, Y0, 30.0, epsg=32650))
    geotiff.write_geotiff(lr, np.zeros((8, 6), np.float32), geotiff.make_geo(X0, Y0, 240.0, epsg=32650))
    for min_valid in (1.0, 0.5, 0.0):
        for fp in (Footprint.aligned((64, 48), 8, min_valid), Footprint(Grid.from_geotiff(hr), Grid.from_geotiff(lr),
                                                                        min_valid)):
            assert fp.scale == 8
            expected = data.block_mean_tensor(x, 8, max_nan_fraction=1.0 - min_valid)
            out = fp.aggregate(x)
            assert out.dtype == torch.float32 and out.shape == (2, 3, 8, 6)
            assert torch.equal(torch.isnan(out), torch.isnan(expected))
            assert torch.equal(out.nan_to_num(), expected.nan_to_num())  # bit for bit
            radiance = fp.aggregate(x, radiance=True)
            assert torch.equal(radiance.nan_to_num(), (data.block_mean_tensor(x ** 4, 8, 1.0 - min_valid) ** 0.25).nan_to_num())
    out = fp.aggregate(x[0, 0].numpy())  # numpy in, numpy out
    assert isinstance(out, np.ndarray) and np.array_equal(out, data.block_mean_tensor(x[0, 0], 8, 1.0).numpy(), equal_nan=True)


def test_sparse_path_matches_block_mean_and_interval_overlaps():
    """Same CRS, not aligned: a coarse grid with a margin of 2 coarse pixels around the fine grid gives the block
    means inside and NaN in the margin; a 70 m grid over a 30 m one gives products of 1-D interval overlaps."""
    fine = utm_grid(32, 40)
    coarse = Grid((8, 9), (X0 - 2 * 240.0, 240.0, 0.0, Y0 + 2 * 240.0, 0.0, -240.0), UTM, "margin.tif")
    fp = Footprint(fine, coarse, min_valid=0.5)
    assert fp.scale is None
    x = torch.from_numpy(smooth_field((32, 40)))
    x[3:9, 4:12] = float("nan")
    out = fp.aggregate(x)
    expected = data.block_mean_tensor(x, 8, max_nan_fraction=0.5)
    inner = out[2:6, 2:7]
    assert torch.equal(torch.isnan(inner), torch.isnan(expected))
    assert torch.allclose(inner.nan_to_num(), expected.nan_to_num(), rtol=0, atol=1e-9)
    assert torch.isnan(out[:2]).all() and torch.isnan(out[6:]).all() and torch.isnan(out[:, 7:]).all()
    # 70 m cells over 30 m pixels, offset by 10 m: weights = overlap(rows) x overlap(cols) / 900 m^2
    coarse = Grid((15, 18), (X0 - 10.0, 70.0, 0.0, Y0 + 10.0, 0.0, -70.0), UTM, "ecostress.tif")
    fp = Footprint(fine, coarse)

    def overlaps(n_fine, n_coarse, offset):
        f0 = np.arange(n_fine) * 30.0
        c0 = np.arange(n_coarse) * 70.0 - offset
        return np.clip(np.minimum(f0[None] + 30, c0[:, None] + 70) - np.maximum(f0[None], c0[:, None]), 0, None) / 30

    expected = np.einsum("ia,jb->ijab", overlaps(32, 15, 10.0), overlaps(40, 18, 10.0)).reshape(15 * 18, 32 * 40)
    assert np.abs(fp.weights.to_dense().double().numpy() - expected).max() < 1e-7
    assert fp.coverage[0, 0] == pytest.approx(60 * 60 / 70 ** 2) and fp.coverage[3, 3] == 1.0


def test_radiance_mean_exceeds_kelvin_mean_by_1p5_variance_over_t():
    """(mean T^4)^(1/4) - mean T = 1.5 var / T to first order (T = T0 (1 + e): (1 + 6 <e^2>)^(1/4)); the
    skewness term of a cell's ~900 samples is ~0.3 % of it."""
    fine = utm_grid(120, 120)
    fp = Footprint(fine, modis_grid(fine), min_valid=0.9)
    t = torch.from_numpy(np.random.default_rng(2).normal(300.0, 5.0, fine.shape))
    kelvin, radiance = fp.aggregate(t), fp.aggregate(t, radiance=True)
    variance = fp.aggregate(t ** 2) - kelvin ** 2  # the cell's own weighted variance
    ok = torch.isfinite(kelvin)
    assert ok.sum() >= 4
    predicted = 1.5 * variance[ok] / kelvin[ok]
    assert predicted.mean() == pytest.approx(1.5 * 25.0 / 300.0, rel=0.05)
    assert torch.allclose(radiance[ok] - kelvin[ok], predicted, rtol=0.02)


def test_gradients_match_finite_differences():
    fine = utm_grid(9, 11)
    coarse = geographic_grid(fine, pixel=0.001)
    fp = Footprint(fine, coarse, min_valid=0.0)
    x = torch.from_numpy(smooth_field((9, 11))).requires_grad_(True)
    cells = torch.isfinite(fp.aggregate(x.detach()))
    assert 4 <= cells.sum() < cells.numel()
    assert torch.autograd.gradcheck(lambda x: fp.aggregate(x)[cells], (x,))
    assert torch.autograd.gradcheck(lambda x: fp.aggregate(x, radiance=True)[cells], (x,))
    lr = torch.from_numpy(smooth_field(coarse.shape, seed=3)).requires_grad_(True)
    for mode in ("bilinear", "bicubic"):
        assert torch.autograd.gradcheck(lambda c, mode=mode: fp.interpolate(c, mode), (lr,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    fine = utm_grid(60, 70)
    fp = Footprint(fine, modis_grid(fine))
    x = torch.from_numpy(smooth_field(fine.shape)).float()
    x[5:20, 5:30] = float("nan")
    lr = fp.aggregate(x)
    assert torch.allclose(fp.aggregate(x.cuda()).cpu(), lr, rtol=1e-6, equal_nan=True)
    for mode in ("nearest", "bilinear", "bicubic"):
        assert torch.allclose(fp.interpolate(lr.cuda(), mode).cpu(), fp.interpolate(lr, mode), rtol=1e-6, equal_nan=True)
    y = x.cuda().requires_grad_(True)
    fp.aggregate(y).nansum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.sum() > 0


# --------------------------------------------------------------------------- interpolate


def test_interpolate_aligned_equals_torch():
    c = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 6, 7)).astype(np.float32))
    fp = Footprint.aligned((24, 28), 4)
    for mode in ("bilinear", "bicubic"):
        assert torch.equal(fp.interpolate(c, mode), F.interpolate(c[None], scale_factor=4, mode=mode,
                                                                  align_corners=False)[0])
    assert torch.equal(fp.nearest(c), c.repeat_interleave(4, -2).repeat_interleave(4, -1))
    rows = torch.arange(24).div(4, rounding_mode="floor")[:, None]
    assert torch.equal(fp.coarse_index, rows * 7 + torch.arange(28).div(4, rounding_mode="floor")[None])
    assert torch.equal(fp.fine_in_coarse[0][:, 0], (torch.arange(24) + 0.5) / 4)
    # the general path (a coarse grid larger than the fine one) agrees with F.interpolate of the whole coarse grid
    big = torch.from_numpy(np.random.default_rng(4).normal(size=(1, 10, 11)))
    fine = utm_grid(16, 20, x0=X0 + 2 * 120.0, y0=Y0 - 3 * 120.0)
    fp = Footprint(fine, Grid((10, 11), (X0, 120.0, 0.0, Y0, 0.0, -120.0), UTM, "lst.tif"))
    assert fp.scale is None
    for mode in ("bilinear", "bicubic"):
        whole = F.interpolate(big[None], scale_factor=4, mode=mode, align_corners=False)[0]
        assert torch.allclose(fp.interpolate(big, mode), whole[:, 12:28, 8:28], rtol=0, atol=1e-12)
    whole = big.repeat_interleave(4, -2).repeat_interleave(4, -1)
    assert torch.equal(fp.nearest(big), whole[:, 12:28, 8:28])


def test_interpolate_nan_holes():
    """A one-pixel hole in a plane is filled with the plane (mean of its 8 neighbours), so bilinear and bicubic
    values around it stay on the plane; fine pixels under the hole, and outside the coarse grid, are NaN."""
    h, w = 9, 10
    plane = torch.from_numpy(2.0 * np.arange(h)[:, None] + 0.5 * np.arange(w)[None] + 280.0)
    holed = plane.clone()
    holed[4, 5] = float("nan")
    fp = Footprint.aligned((h * 4, w * 4), 4)
    for mode in ("bilinear", "bicubic"):
        reference, out = fp.interpolate(plane, mode), fp.interpolate(holed, mode)
        under = data.hole_mask(holed, 4)
        assert torch.isnan(out[under]).all() and torch.isfinite(out[~under]).all()
        assert torch.allclose(out[~under], reference[~under], rtol=0, atol=1e-9)
    # a larger hole, cross-CRS: nothing is painted under it, nothing near it is pulled toward 0 (bicubic reads
    # two rings of filled pixels around a valid one)
    fine = utm_grid(240, 240)
    fp = Footprint(fine, geographic_grid(fine, pixel=0.004))
    c = torch.from_numpy(smooth_field(fp.coarse.shape, seed=5))
    c[6:13, 5:12] = float("nan")
    index = fp.coarse_index
    inside = index >= 0
    under = torch.zeros(fine.shape, dtype=torch.bool)
    under[inside] = torch.isnan(c.reshape(-1)[index[inside]])
    assert under.sum() > 2000 and (~under & inside).any()
    for mode in ("nearest", "bilinear", "bicubic"):
        out = fp.interpolate(c, mode)
        assert torch.equal(torch.isnan(out), under | ~inside)
        lo, hi = c[torch.isfinite(c)].min(), c[torch.isfinite(c)].max()
        slack = 0.25 * (hi - lo) if mode == "bicubic" else 1e-9  # bicubic's negative lobes overshoot a little
        painted = out[~torch.isnan(out)]
        assert lo - slack <= painted.min() and painted.max() <= hi + slack, mode


def test_fine_in_coarse_against_pyproj():
    fine = utm_grid(50, 40)
    coarse = geographic_grid(fine, pixel=0.004)
    fp = Footprint(fine, coarse)
    rows, cols = fp.fine_in_coarse
    assert rows.dtype == torch.float32 and rows.shape == (50, 40)
    r, c = np.meshgrid(np.arange(50) + 0.5, np.arange(40) + 0.5, indexing="ij")
    x, y = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(X0 + 30.0 * c, Y0 - 30.0 * r)
    true_rows, true_cols = (y - coarse.transform[3]) / -0.004, (x - coarse.transform[0]) / 0.004
    assert np.abs(rows.numpy() - true_rows).max() < 1e-4 and np.abs(cols.numpy() - true_cols).max() < 1e-4
    expected = np.floor(true_rows) * coarse.shape[1] + np.floor(true_cols)
    assert np.array_equal(fp.coarse_index.numpy(), expected.astype(np.int64))
    # a coarse grid covering only part of the fine grid: -1 outside it
    part = Grid((3, 3), (X0, 300.0, 0.0, Y0, 0.0, -300.0), UTM, "part.tif")
    index = Footprint(utm_grid(40, 40), part).coarse_index
    assert (index[:30, :30] >= 0).all() and (index[30:] == -1).all() and (index[:, 30:] == -1).all()


# --------------------------------------------------------------------------- refusals


def one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_refusals(tmp_path, monkeypatch):
    rotated = str(tmp_path / "rotated.tif")
    matrix = (30.0, 2.0, 0.0, X0, 0.0, -30.0, 0.0, Y0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    geo = dict(geotiff.make_geo(X0, Y0, 30.0, epsg=32650))
    del geo[geotiff.TAG_PIXEL_SCALE], geo[geotiff.TAG_TIEPOINT]
    geo[geotiff.TAG_TRANSFORM] = ("d", 16, matrix)
    geotiff.write_geotiff(rotated, np.zeros((4, 4), np.float32), geo)
    with pytest.raises(DataError) as e:
        Grid.from_geotiff(rotated)
    one_line(e, "rotated.tif", "rotated or sheared")
    flipped = str(tmp_path / "flipped.tif")
    geo = geotiff.make_geo(X0, Y0, 30.0, epsg=32650)
    geo[geotiff.TAG_PIXEL_SCALE] = ("d", 3, (30.0, -30.0, 0.0))  # dy = +30: rows run south to north
    geotiff.write_geotiff(flipped, np.zeros((4, 4), np.float32), geo)
    with pytest.raises(DataError) as e:
        Grid.from_geotiff(flipped)
    one_line(e, "flipped.tif", "flipped", "south to north", "gdalwarp")
    with pytest.raises(DataError) as e:
        Grid((4, 4), (X0, -30.0, 0.0, Y0, 0.0, -30.0), UTM, "mirrored.tif")
    one_line(e, "mirrored.tif", "east to west")
    # no overlap: both extents in the coarse grid's CRS
    far = Grid((10, 10), (-5000000.0, geotiff.MODIS_PIXEL, 0.0, -2000000.0, 0.0, -geotiff.MODIS_PIXEL), SINUSOIDAL,
               "far.tif")
    with pytest.raises(DataError) as e:
        Footprint(utm_grid(20, 20), far)
    one_line(e, "fine.tif", "far.tif", "do not overlap", f"in {SINUSOIDAL}", "x -5e+06..")
    with pytest.raises(DataError) as e:
        Footprint(utm_grid(20, 20), Grid((5, 5), (X0 + 600.0, 120.0, 0.0, Y0, 0.0, -120.0), UTM, "east.tif"))
    one_line(e, "do not overlap", f"in {UTM}", "x 400000..400600", "x 400600..401200")
    # pyproj missing: grids in two CRSs are refused, grids in one CRS need nothing
    monkeypatch.setitem(sys.modules, "pyproj", None)
    fine = utm_grid(16, 16)
    with pytest.raises(DataError) as e:
        Footprint(fine, Grid((3, 3), (115.8, 0.004, 0.0, 40.7, 0.0, -0.004), "EPSG:4326", "wgs84.tif"))
    one_line(e, "fine.tif", "wgs84.tif", "needs pyproj: pip install pyproj")
    assert Footprint(fine, Grid((2, 2), (X0, 240.0, 0.0, Y0, 0.0, -240.0), UTM, "lr.tif")).scale == 8
