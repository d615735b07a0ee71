"""evaluate.py: a 30 m UTM prediction against a reference on a geographic grid of ~100 m pixels. The
footprint means are recomputed here by brute force (points sub-sampled in each reference pixel, transformed
with pyproj, looked up in the prediction) and the metrics by hand."""
import json
import math

import numpy as np
import pytest
import tifffile

import evaluate
import geotiff

pyproj = pytest.importorskip("pyproj")

X0, Y0, SIZE, N = 400000.0, 4500000.0, 30.0, 80  # UTM 50N, 80 x 80 pixels of 30 m
DEG = 0.001                                         # reference pixels: 0.001 deg (~84 m x 111 m here)
ROWS, COLS = 14, 16


def prediction_field():
    y = Y0 - (np.arange(N) + 0.5) * SIZE
    x = X0 + (np.arange(N) + 0.5) * SIZE
    return (300 + 0.002 * (x[None, :] - X0) + 2 * np.sin(y[:, None] / 300.0)
            + 0.5 * np.sin(x[None, :] / 70.0) * np.cos(y[:, None] / 90.0))


def reference_origin():
    """Corner (lon, lat) of a geographic grid inside the prediction's extent."""
    lon, lat = pyproj.Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True).transform(X0 + 300, Y0 - 300)
    return math.ceil(lon / DEG) * DEG, math.floor(lat / DEG) * DEG


def brute_force_means(pred, lon0, lat0, k=96):
    """Mean of the prediction over each reference pixel from k x k points in it."""
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)
    out = np.empty((ROWS, COLS))
    t = (np.arange(k) + 0.5) / k
    for i in range(ROWS):
        for j in range(COLS):
            lon, lat = np.meshgrid(lon0 + (j + t) * DEG, lat0 - (i + t) * DEG)
            x, y = to_utm.transform(lon, lat)
            col, row = ((np.asarray(x) - X0) / SIZE).astype(int), ((Y0 - np.asarray(y)) / SIZE).astype(int)
            out[i, j] = pred[row, col].mean()
    return out


def write(path, array, geo, tags=()):
    extratags = [(code, dtype, count, value, True) for code, (dtype, count, value) in sorted(geo.items())]
    tifffile.imwrite(path, np.asarray(array, np.float32), photometric="minisblack", metadata=None,
                     extratags=extratags + list(tags))
    return str(path)


def hand_metrics(p, r):
    d = p - r
    cc = ((p - p.mean()) * (r - r.mean())).mean() / (p.std() * r.std())
    rsd = abs(r.std(ddof=1) - p.std(ddof=1)) / r.std(ddof=1)
    return {"RMSE": math.sqrt((d ** 2).mean()), "MAE": np.abs(d).mean(), "BIAS": d.mean(), "CC": cc, "RSD": rsd}


def grad_cc(p, r, mask):
    def grad(x):
        g = np.full(x.shape, np.nan)
        g[1:-1, 1:-1] = np.hypot((x[2:, 1:-1] - x[:-2, 1:-1]) / 2, (x[1:-1, 2:] - x[1:-1, :-2]) / 2)
        return g
    a, b = grad(p), grad(r)
    ok = mask & np.isfinite(a) & np.isfinite(b)
    return np.corrcoef(a[ok], b[ok])[0, 1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    pred = prediction_field()
    lon0, lat0 = reference_origin()
    means = brute_force_means(pred, lon0, lat0)
    rng = np.random.default_rng(0)
    ref = means - 1.5 + rng.normal(0, 0.4, means.shape)  # a cooler overpass, plus noise
    ref_geo = geotiff.make_geo_keys(lon0, lat0, DEG, geotiff.WGS84_KEYS)
    classes = np.where(np.arange(COLS)[None, :] < 6, 1.0, 2.0) * np.ones((ROWS, 1))
    classes[:3, :3] = 0  # no class
    return {"pred": write(folder / "pred.tif", pred, geotiff.make_geo(X0, Y0, SIZE, epsg=32650)),
            "ref": write(folder / "ref.tif", ref, ref_geo),
            "classes": write(folder / "classes.tif", classes, ref_geo),
            "means": means, "ref_values": ref, "class_values": classes, "folder": folder, "pred_values": pred}


def test_metrics_against_brute_force_footprints(pair, capsys):
    report = evaluate.main([pair["pred"], pair["ref"], "--classes", pair["classes"],
                            "--json", str(pair["folder"] / "report.json")])
    means, ref = pair["means"], pair["ref_values"]
    all_row = report["rows"]["all"]
    assert all_row["pixels"] == ROWS * COLS
    for k, v in hand_metrics(means, ref).items():
        assert abs(all_row[k] - v) < 5e-3, (k, all_row[k], v)
    assert abs(all_row["BIAS"] - 1.5) < 0.1
    assert abs(all_row["GRAD_CC"] - grad_cc(means, ref, np.ones_like(ref, bool))) < 0.02
    for code in (1, 2):
        mask = pair["class_values"] == code
        row = report["rows"][f"class {code}"]
        assert row["pixels"] == mask.sum()
        for k, v in hand_metrics(means[mask], ref[mask]).items():
            assert abs(row[k] - v) < 5e-3, (code, k)
        assert abs(row["GRAD_CC"] - grad_cc(means, ref, mask)) < 0.02
    assert set(report["rows"]) == {"all", "class 1", "class 2"}
    out = capsys.readouterr().out
    assert "| region | pixels | RMSE | MAE | BIAS | CC | RSD | GRAD_CC |" in out and "| class 2 | " in out
    saved = json.load(open(pair["folder"] / "report.json"))
    assert saved["rows"]["all"]["RMSE"] == pytest.approx(all_row["RMSE"])


def test_footprint_means_are_the_brute_force_ones(pair):
    from footprint import Grid
    pred, ref = pair["pred_values"], pair["ref_values"]
    a, b, grid, note = evaluate.comparison_pair(pred, Grid.from_geotiff(pair["pred"]), ref, Grid.from_geotiff(pair["ref"]))
    assert note is None and grid.crs == "EPSG:4326" and np.array_equal(b, ref)
    assert np.abs(a - pair["means"]).max() < 2e-3
    # sampling the prediction at reference pixel centres would be told apart: it misses by more
    lon0, lat0 = reference_origin()
    assert np.abs(brute_force_means(pred, lon0, lat0, k=1) - pair["means"]).max() > 0.02
    # a reference finer than the prediction is averaged onto the prediction's grid, not the reverse
    a2, b2, grid2, note2 = evaluate.comparison_pair(ref, Grid.from_geotiff(pair["ref"]), pred, Grid.from_geotiff(pair["pred"]))
    assert "finer than the prediction" in note2 and grid2.crs == "EPSG:4326" and np.array_equal(a2, ref)


def test_bias_removal(pair):
    report = evaluate.main([pair["pred"], pair["ref"], "--remove-bias"])
    d = pair["means"] - pair["ref_values"]
    assert abs(report["bias_removed"] - d.mean()) < 5e-3
    row = report["rows"]["all"]
    assert abs(row["BIAS"]) < 1e-9
    assert abs(row["RMSE"] - d.std()) < 5e-3  # what is left once the mean is gone
    assert abs(row["CC"] - hand_metrics(pair["means"], pair["ref_values"])["CC"]) < 1e-3


def test_finer_class_raster_takes_the_majority(pair):
    """Classes on the 30 m UTM grid (west / east of a UTM easting): a reference pixel wholly on one side
    takes that side's class."""
    folder = pair["folder"]
    east = X0 + 1200.0
    x = X0 + (np.arange(N) + 0.5) * SIZE
    classes = np.where(x[None, :] < east, 3.0, 4.0) * np.ones((N, 1))
    path = write(folder / "classes_30m.tif", classes, geotiff.make_geo(X0, Y0, SIZE, epsg=32650))
    report = evaluate.evaluate(pair["pred"], pair["ref"], classes_path=path)
    lon0, lat0 = reference_origin()
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)
    # the reference pixel columns wholly west / east of the boundary (all four corners), counted by hand
    lon = lon0 + np.arange(COLS + 1) * DEG
    lats = lat0 - np.array([0.0, ROWS * DEG])
    xs = np.array([[to_utm.transform(lo, la)[0] for lo in lon] for la in lats])
    west_cols = [j for j in range(COLS) if xs[:, j + 1].max() < east]
    east_cols = [j for j in range(COLS) if xs[:, j].min() > east]
    assert west_cols and east_cols
    assert report["rows"]["class 3"]["pixels"] >= ROWS * len(west_cols)
    assert report["rows"]["class 4"]["pixels"] >= ROWS * len(east_cols)
    assert report["rows"]["class 3"]["pixels"] + report["rows"]["class 4"]["pixels"] == ROWS * COLS


def test_consistency_with_the_coarse_input(pair):
    pred = pair["pred_values"]
    blocks = pred.reshape(8, 10, 8, 10).mean((1, 3))  # a 300 m coarse grid on the same UTM corner
    path = write(pair["folder"] / "coarse.tif", blocks - 0.3, geotiff.make_geo(X0, Y0, 300.0, epsg=32650))
    report = evaluate.evaluate(pair["pred"], pair["ref"], coarse_path=path)
    assert report["CONS"]["pixels"] == 64
    assert abs(report["CONS"]["RMSE"] - 0.3) < 1e-4 and abs(report["CONS"]["BIAS"] - 0.3) < 1e-4


def test_spectrum_ratio():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 64)).cumsum(0).cumsum(1) * 0.01 + rng.normal(size=(64, 64))
    ok = np.ones(x.shape, bool)
    smooth = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 5
    assert evaluate.spectrum_ratio(x, x, ok) == pytest.approx(1.0)
    assert evaluate.spectrum_ratio(smooth, x, ok) < 0.5
    assert evaluate.spectrum_ratio(x + rng.normal(size=x.shape), x, ok) > 1.5


def test_time_gap(pair, tmp_path, capsys):
    pred_geo = geotiff.make_geo(X0, Y0, SIZE, epsg=32650)
    stamped = write(tmp_path / "pred.tif", pair["pred_values"], pred_geo, [(306, "s", 0, "2020:07:01 10:30:00", True)])
    items = ('<GDALMetadata><Item name="ACQUISITION_DATE">2020-07-01</Item>'
             '<Item name="ACQUISITION_TIME">03:00:00.5Z</Item></GDALMetadata>')
    lon0, lat0 = reference_origin()
    ref = write(tmp_path / "ref.tif", pair["ref_values"], geotiff.make_geo_keys(lon0, lat0, DEG, geotiff.WGS84_KEYS),
                [(42112, "s", 0, items, True)])
    evaluate.main([stamped, ref, "--time-gap"])
    out = capsys.readouterr().out
    assert "2020-07-01 10:30:00 (TIFF DateTime tag 306" in out
    assert "2020-07-01 03:00:00.500000 (GDAL metadata ACQUISITION_DATE + ACQUISITION_TIME)" in out
    assert "time gap (prediction - reference): +7.50 h" in out
    evaluate.main([pair["pred"], pair["ref"], "--time-gap"])
    out = capsys.readouterr().out
    assert out.count(".tif: unknown") == 2 and "time gap: unknown" in out


def test_grids_that_do_not_overlap(pair, tmp_path):
    far = write(tmp_path / "far.tif", pair["ref_values"], geotiff.make_geo_keys(10.0, 50.0, DEG, geotiff.WGS84_KEYS))
    with pytest.raises(SystemExit) as e:  # errors.command: the message python prints, exit code 1
        evaluate.main([pair["pred"], far])
    message = str(e.value.code)
    assert message.startswith("error: ") and "do not overlap" in message and "\n" not in message
