"""predict.py with a coarse thermal sensor on its own grid (crossgrid.py): a synthetic 30 m LST with a known
relation to the guidance on a UTM grid, its footprint means on a foreign grid (MODIS-style sinusoidal, or
WGS 84), downscaled back onto the guidance grid by sharpeners, interpolation and a learned model."""
import numpy as np
import pytest
import tifffile
import torch
from test_predict import TINY, tiny_checkpoint

import data
import geotiff
import layout
import predict
from footprint import Footprint, Grid

X0, Y0 = 500000.0, 4300000.0      # UTM 50N (EPSG:32650): about 117 E, 38.8 N
H, W = 256, 288                   # 30 m guidance grid: 7.68 x 8.64 km
SINU = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +a=6371007.181 +b=6371007.181 +units=m +no_defs"
LINREG = ["data.guidance_bands=[dem,ndvi]"]


def truth_of(gui):
    """The 30 m LST the tests downscale back: linear in two guidance bands (so a linear sharpener on them
    can recover it exactly), K."""
    dem, ndvi = gui[data.BANDS.index("dem")], gui[data.BANDS.index("ndvi")]
    return (310.0 - 25.0 * ndvi - 0.006 * (dem - 2700.0)).astype(np.float32)


def sinusoidal_grid(pixel, margin=1):
    """A sinusoidal grid of `pixel` metres covering the guidance grid with `margin` pixels to spare, its
    corner on a multiple of the pixel (as MODIS tiles are) -> (geo, shape)."""
    import pyproj
    to = pyproj.Transformer.from_crs("EPSG:32650", SINU, always_xy=True)
    xs, ys = to.transform([X0, X0 + 30 * W, X0, X0 + 30 * W], [Y0, Y0, Y0 - 30 * H, Y0 - 30 * H])
    x0 = (np.floor(min(xs) / pixel) - margin) * pixel
    y0 = (np.ceil(max(ys) / pixel) + margin) * pixel
    shape = (int(np.ceil((y0 - min(ys)) / pixel)) + margin, int(np.ceil((max(xs) - x0) / pixel)) + margin)
    return geotiff.make_geo_keys(x0, y0, pixel, geotiff.MODIS_SINUSOIDAL_KEYS), shape


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Guidance (the 10 bands, named) on the UTM grid, its truth, and the truth's footprint means on a 250 m
    sinusoidal grid (the sensor), with a cloud of NaN sensor pixels."""
    d = tmp_path_factory.mktemp("cross")
    _, gui = layout.synth_scene(H, W, seed=41)
    fine_geo = geotiff.make_geo(X0, Y0, 30.0, epsg=32650)
    guidance = str(d / "bands_30m.tif")
    geotiff.write_geotiff(guidance, gui, fine_geo, band_names=list(data.BANDS))
    truth = truth_of(gui)
    coarse_geo, shape = sinusoidal_grid(250.0)
    fine = Grid.from_geotiff(guidance)
    coarse = Grid(shape, geotiff.corner_transform(coarse_geo), SINU, "sensor")
    fp = Footprint(fine, coarse)
    lst = fp.aggregate(truth)
    cloud = lst.copy()
    cloud[10:14, 12:17] = np.nan
    paths = {}
    for name, array in (("lst", lst), ("cloudy", cloud)):  # paths: lst_tif, cloudy_tif
        paths[name + "_tif"] = str(d / f"{name}_250m.tif")
        geotiff.write_geotiff(paths[name + "_tif"], array, coarse_geo)
    return {"gui": gui, "truth": truth, "fine_geo": fine_geo, "guidance": guidance, "fp": fp, "lst": lst, "cloud": cloud,
            "coarse_geo": coarse_geo, **paths}


def run(config, scene, lst, out, *extra):
    predict.main([config, "--lst", lst, "--guidance", scene["guidance"], "--out", str(out), *extra])
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        tags = {code: page.tags[code].value for code in geotiff.GEO_TAGS if code in page.tags}
        return page.asarray(), tags


def rmse(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.sqrt(np.mean((a[ok].astype(np.float64) - b[ok]) ** 2)))


def errors_of(methods, scene, tmp_path, config):
    """RMSE (K) against the truth of each (name, config, overrides) run on the 250 m sensor; each output is checked
    to lie exactly on the guidance grid (same tags), NaN only under NaN sensor pixels."""
    want = {code: value[2] for code, value in scene["fine_geo"].items()}
    errors = {}
    for name, cfg, extra in methods:
        out, tags = run(config(cfg), scene, scene["lst_tif"], tmp_path / f"{name}.tif", *extra)
        assert out.shape == (H, W) and tags == want, name
        # NaN only under the sensor pixels that are NaN: at the edges, less than half inside the guidance grid
        assert np.array_equal(np.isnan(out), np.isnan(scene["fp"].nearest(scene["lst"]))), name
        assert np.isfinite(out).mean() > 0.9, name
        errors[name] = rmse(out, scene["truth"])
    return errors


def test_linreg_recovers_a_linear_truth_on_the_guidance_grid(scene, tmp_path, config):
    """linreg on the two bands the truth is linear in gives it back (to float32 rounding) from the sensor's own
    pixels; bicubic interpolation does not."""
    errors = errors_of([("linreg", "demo_linreg_x8", LINREG), ("bicubic", "bicubic_x8", [])], scene, tmp_path, config)
    assert errors["linreg"] < 2e-3 and errors["bicubic"] > 1.0, errors  # measured 6e-5 K and 2.56 K


@pytest.mark.slow
def test_tsharp_and_rf_beat_interpolation_on_the_guidance_grid(scene, tmp_path, config):
    errors = errors_of([("tsharp", "demo_tsharp_x8", []), ("rf", "demo_rf_x8", []), ("bicubic", "bicubic_x8", [])],
                       scene, tmp_path, config)
    # measured: tsharp 1.30 K, rf 0.85 K, bicubic 2.56 K
    assert errors["tsharp"] < 0.7 * errors["bicubic"] and errors["rf"] < 0.5 * errors["bicubic"], errors


@pytest.mark.parametrize("mode", ["bicubic", "nearest"])
def test_consistency_makes_footprint_means_equal_the_input(scene, tmp_path, config, mode):
    fp, lst = scene["fp"], scene["cloud"]
    for cfg, extra in (("demo_tsharp_x8", []), ("bicubic_x8", [])):
        out, _ = run(config(cfg), scene, scene["cloudy_tif"], tmp_path / f"{cfg}.tif", *extra, "--consistency", mode)
        means = fp.aggregate(out.astype(np.float64))
        ok = np.isfinite(lst) & np.isfinite(means)
        assert ok.sum() > 0.8 * np.isfinite(lst).sum()
        assert np.abs(means - lst)[ok].max() < 1e-3, (cfg, np.abs(means - lst)[ok].max())
        plain, _ = run(config(cfg), scene, scene["cloudy_tif"], tmp_path / f"{cfg}_plain.tif", *extra)
        assert np.abs(fp.aggregate(plain.astype(np.float64)) - lst)[ok].max() > 1e-2  # not so without it


def test_nan_sensor_pixels_give_nan_over_their_footprint(scene, tmp_path, config):
    fp = scene["fp"]
    under_cloud = np.isnan(fp.nearest(scene["cloud"]))  # fine pixels whose centre lies in a NaN sensor pixel
    assert under_cloud.sum() > 500
    for cfg, extra in (("demo_linreg_x8", LINREG), ("bicubic_x8", [])):
        out, _ = run(config(cfg), scene, scene["cloudy_tif"], tmp_path / f"{cfg}.tif", *extra)
        assert np.array_equal(np.isnan(out), under_cloud), cfg


def test_learned_model_gets_the_lst_on_its_lr_grid(scene, tmp_path, config, capsys):
    """A tiny MoCoLSK-Net x8 (random weights): the 250 m sensor is 1.04 LR pixels (240 m), so its LST is
    interpolated onto the LR grid (a note says so) and the output lies on the guidance grid, NaN under the
    cloud (and within an LR pixel of it, where the LR pixel's centre is under the cloud); a sensor finer than the LR pixel (150 m) is averaged over each LR pixel instead."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth", config("mocolsk_x8"))
    argv = [*TINY, "--checkpoint", ckpt, "--lr-tile", "16", "--lr-overlap", "4", "--amp", "none"]
    out, tags = run(config("mocolsk_x8"), scene, scene["cloudy_tif"], tmp_path / "model.tif", *argv)
    err = capsys.readouterr().err
    assert "note: " in err and "1.04 x the LR pixel of mocolsk x8" in err and "bicubic interpolation" in err
    assert out.shape == (H, W) and tags == {code: value[2] for code, value in scene["fine_geo"].items()}
    # NaN under every NaN sensor pixel, and beyond it only where the LR pixel's centre is in one: within an LR pixel
    dark = np.isnan(scene["fp"].nearest(scene["cloud"]))
    near = np.pad(dark, 8, mode="edge")
    near = np.max([near[8 + dy:8 + dy + H, 8 + dx:8 + dx + W] for dy in range(-8, 9) for dx in range(-8, 9)], axis=0)
    assert (np.isnan(out) >= dark).all() and (np.isnan(out) <= near).all()
    assert np.isfinite(out).mean() > 0.85 and 250 < np.nanmean(out) < 350

    geo, shape = sinusoidal_grid(150.0)
    fine = Grid.from_geotiff(scene["guidance"])
    finer = Footprint(fine, Grid(shape, geotiff.corner_transform(geo), SINU, "sensor")).aggregate(scene["truth"])
    path = str(tmp_path / "lst_150m.tif")
    geotiff.write_geotiff(path, finer, geo)
    out, _ = run(config("mocolsk_x8"), scene, path, tmp_path / "model150.tif", *argv)
    err = capsys.readouterr().err
    assert "0.625 x the LR pixel" in err and "the area-weighted mean of the sensor pixels" in err
    assert out.shape == (H, W) and np.isfinite(out).mean() > 0.9


def test_far_ratio_is_refused_with_what_would_fit(scene, tmp_path, config):
    geo, shape = sinusoidal_grid(geotiff.MODIS_PIXEL)
    fine = Grid.from_geotiff(scene["guidance"])
    modis = Footprint(fine, Grid(shape, geotiff.corner_transform(geo), SINU, "modis")).aggregate(scene["truth"])
    path = str(tmp_path / "modis.tif")
    geotiff.write_geotiff(path, modis, geo)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth", config("mocolsk_x8"))
    with pytest.raises(SystemExit, match=r"3\.86 x the 8-fine-pixel LR pixel .*use a sharpener .*x31 \(prepare.py "
                                         r"--scales 31"):
        run(config("mocolsk_x8"), scene, path, tmp_path / "out.tif", *TINY, "--checkpoint", ckpt)
    assert not (tmp_path / "out.tif").exists()
    out, _ = run(config("demo_tsharp_x8"), scene, path, tmp_path / "tsharp.tif")  # a sharpener fits any ratio
    assert np.isfinite(out).mean() > 0.5


def write_uint(path, array, geo, dtype):
    """An integer GeoTIFF (a product's DN or QC as delivered), no GDAL_NODATA tag."""
    tags = [(code, kind, count, value, True) for code, (kind, count, value) in sorted(geo.items())]
    tifffile.imwrite(path, array.astype(dtype), photometric="minisblack", extratags=tags, metadata=None)
    return str(path)


def test_product_and_qc_decode_a_dn_scene(scene, tmp_path, config, capsys):
    """MOD11A1-style uint16 DN (K / 0.02, fill 0) and uint8 QC (bits 0-1: 00 good, 01 other quality) on the
    sensor grid: --product decodes, --qc masks; the result equals the Kelvin run where QC is good."""
    lst = scene["lst"]
    dn = np.where(np.isnan(lst), 0, np.round(np.nan_to_num(lst) / 0.02))  # 0: fill (the edge pixels without data)
    dn[:3, :4] = 0  # fill
    qc = np.zeros(lst.shape, np.uint8)
    qc[15:19, 5:9] = 1  # 'other quality': rejected by the default rule
    lst_path = write_uint(tmp_path / "MOD11A1_LST_Day_1km.tif", dn, scene["coarse_geo"], np.uint16)
    qc_path = write_uint(tmp_path / "MOD11A1_QC_Day.tif", qc, scene["coarse_geo"], np.uint8)
    cfg = config("demo_linreg_x8")
    got, _ = run(cfg, scene, lst_path, tmp_path / "dn.tif", *LINREG, "--product", "mod11a1", "--qc", qc_path)
    assert "masked by MOD11A1 QC rule 'mandatory'" in capsys.readouterr().err
    expected = lst.copy()
    expected[:3, :4] = np.nan
    expected[15:19, 5:9] = np.nan
    path = str(tmp_path / "kelvin.tif")
    geotiff.write_geotiff(path, np.round(expected / 0.02) * 0.02, scene["coarse_geo"])
    want, _ = run(cfg, scene, path, tmp_path / "kelvin_out.tif", *LINREG)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(got).sum() > 1000
    np.testing.assert_allclose(got, want, atol=1e-3)
    with pytest.raises(SystemExit, match="--product mod11a1 decodes the LST itself: drop --lst-scale"):
        run(cfg, scene, lst_path, tmp_path / "x.tif", "--product", "mod11a1", "--lst-scale", "0.02")
    with pytest.raises(SystemExit, match="--qc .*: give --product too"):
        run(cfg, scene, lst_path, tmp_path / "x.tif", "--qc", qc_path)
    other = write_uint(tmp_path / "qc_other_grid.tif", qc[:-1], scene["coarse_geo"], np.uint8)
    with pytest.raises(SystemExit, match="grids disagree.*; LST .*; QC "):
        run(cfg, scene, lst_path, tmp_path / "x.tif", "--product", "mod11a1", "--qc", other)


def test_footprint_operator_is_the_block_rule_on_aligned_grids():
    """crossgrid.FootprintOperator on an integer-aligned grid pair gives what the sharpeners' block rule gives."""
    import crossgrid
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 24))
    x[0, 3, 5] = np.nan
    op = crossgrid.FootprintOperator(Footprint.aligned((32, 24), 8))
    for fraction in (0.0, 1.0):
        want = data.block_mean_tensor(torch.from_numpy(x), 8, fraction).numpy()
        np.testing.assert_allclose(op.aggregate(x, fraction), want, rtol=1e-12)
    c = rng.standard_normal((4, 3))
    np.testing.assert_array_equal(op.nearest(c), np.repeat(np.repeat(c, 8, 0), 8, 1))
    rows, cols = op.fine_in_coarse
    np.testing.assert_allclose(rows[:, 0], (np.arange(32) + 0.5) / 8 - 0.5, atol=1e-6)
    np.testing.assert_allclose(cols[0], (np.arange(24) + 0.5) / 8 - 0.5, atol=1e-6)
