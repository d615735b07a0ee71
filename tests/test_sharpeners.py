"""Statistical sharpeners (sharpeners.py: tsharp, linreg, rf), coarse-scale consistency
(engine.make_consistent, config `consistency`, predict.py --consistency) and the CONS metric."""

import numpy as np
import pytest
import torch

import data
import engine
import geotiff
import groklst
import layout
import predict
import sharpeners
from errors import ConfigError, DataError
from metrics import CONS, METRICS, consistency_error

X0, Y0 = 500000.0, 4300000.0


def nearest(a, s):
    return np.repeat(np.repeat(a, s, -2), s, -1)


def smooth_field(rng, shape, length=6.0):
    """A smooth random field (unit std) on `shape`: correlated guidance, unlike white noise."""
    field = layout._smooth_noise(rng, shape[0], shape[1], length)
    return field / field.std()


def tsharp_scene(h=12, w=10, s=4, a=301.5, b=-14.0, seed=0):
    """NDVI constant over each s x s block, so TsHARP's relation holds exactly at both scales:
    LST = a + b * fv(NDVI) with NDVImin / max = the extremes of the coarse NDVI."""
    rng = np.random.default_rng(seed)
    ndvi_lr = rng.uniform(-0.2, 0.85, (h, w))
    gui = rng.uniform(0, 1, (len(data.BANDS), h * s, w * s))       # the other bands: noise
    gui[data.BANDS.index("ndvi")] = nearest(ndvi_lr, s)
    fv = sharpeners.TsHARP.vegetation_fraction(gui[data.BANDS.index("ndvi")], ndvi_lr.min(), ndvi_lr.max())
    hr = a + b * fv
    return hr.reshape(h, s, w, s).mean((1, 3)), gui, hr


def test_vegetation_fraction():
    fv = sharpeners.TsHARP.vegetation_fraction(np.array([0.1, 0.8, 0.45, -1.0, 2.0, np.nan]), 0.1, 0.8)
    assert fv[0] == 0 and fv[1] == 1 and fv[3] == 0 and fv[4] == 1 and np.isnan(fv[5])
    assert fv[2] == pytest.approx(1 - 0.5 ** 0.625)


def test_tsharp_recovers_linear_fv_relation():
    lr, gui, hr = tsharp_scene()
    model = sharpeners.TsHARP(scale=4)
    fit = model.fit(lr, gui)
    assert np.abs(fit["coef"] - [301.5, -14.0]).max() < 1e-6
    ndvi = gui[data.BANDS.index("ndvi")]
    assert fit["stats"] == {"ndvi_min": ndvi.min(), "ndvi_max": ndvi.max()}
    out = model(torch.from_numpy(lr)[None, None], torch.from_numpy(gui)[None])
    assert out.shape == (1, 1, 48, 40) and out.dtype == torch.float32
    assert np.abs(out[0, 0].double().numpy() - hr).max() < 1e-4  # float32 output near 300 K


def test_tsharp_needs_ndvi(config):
    with pytest.raises(ConfigError, match="'tsharp' needs band 'ndvi' in data.guidance_bands"):
        groklst.load_model(groklst.load_config(config("bicubic_x4"), ["model.name=tsharp", "data.guidance_bands=[dem,red]"]),
                           None, "cpu")
    cfg = groklst.load_config(config("bicubic_x4"), ["model.name=tsharp", "data.guidance_bands=[red,ndvi]"])
    assert groklst.build_model(cfg).ndvi == 1
    with pytest.raises(ConfigError, match="derived"):
        groklst.load_config(config("bicubic_x4"), ["model.name=tsharp", "model.guidance_bands=[ndvi]"])


def linear_scene(h=16, w=12, s=4, seed=1, holes=True):
    """Smooth guidance (3 bands) and LST exactly linear in it; LR = block mean. With holes: NaN LR
    pixels (left out of the fit) and NaN guidance pixels."""
    rng = np.random.default_rng(seed)
    gui = np.stack([2500 + 800 * smooth_field(rng, (h * s, w * s)), 0.15 + 0.05 * smooth_field(rng, (h * s, w * s)),
                    0.3 + 0.1 * smooth_field(rng, (h * s, w * s))])
    coef = np.array([290.0, -6.5e-3, 20.0, -12.0])
    hr = coef[0] + np.tensordot(coef[1:], gui, 1)
    lr = hr.reshape(h, s, w, s).mean((1, 3))  # float64 block mean (data.block_mean returns float32)
    if holes:
        lr[3:5, 2:6] = np.nan
        gui[1, 20:23, 29:31] = np.nan  # within one 4 x 4 block
    return lr, gui, hr, coef


def test_linreg_recovers_linear_relation_with_holes():
    lr, gui, hr, coef = linear_scene()
    model = sharpeners.LinReg(scale=4, guidance_channels=3)
    fit = model.fit(lr, gui)
    assert np.abs(fit["coef"] - coef).max() < 1e-6
    assert fit["samples"] == lr.size - 8 - 1  # the NaN LR pixels and the block with NaN guidance are not used
    out = model(torch.from_numpy(lr)[None, None], torch.from_numpy(gui)[None])[0, 0].double().numpy()
    good = np.isfinite(gui).all(0)
    assert np.isfinite(out).all()                       # holes: regression alone; NaN guidance: the LR value
    assert np.abs(out - hr)[good].max() < 1e-4
    np.testing.assert_allclose(out[~good], nearest(lr, 4)[~good], atol=1e-4)


def test_sharpener_batch_fits_each_image():
    a, b = linear_scene(seed=1, holes=False), linear_scene(seed=2, holes=False)
    model = sharpeners.LinReg(scale=4, guidance_channels=3)
    lr = torch.from_numpy(np.stack([a[0], b[0]]))[:, None]
    out = model(lr, torch.from_numpy(np.stack([a[1], b[1]])))
    assert np.abs(out[0, 0].double().numpy() - a[2]).max() < 1e-4
    assert np.abs(out[1, 0].double().numpy() - b[2]).max() < 1e-4


def test_rf_sharpener():
    pytest.importorskip("sklearn", reason="model 'rf' needs scikit-learn (optional dependency)")
    rng = np.random.default_rng(0)
    band = nearest(rng.uniform(0, 1, (16, 16)), 4)[None]  # blockwise constant: the relation holds at both scales
    hr = 290 + 10 * (band[0] > 0.5)
    lr = hr.reshape(16, 4, 16, 4).mean((1, 3)).astype(np.float64)
    model = sharpeners.RFSharpener(scale=4, guidance_channels=1)
    x, g = torch.from_numpy(lr)[None, None], torch.from_numpy(band)[None]
    out = model(x, g)
    assert torch.equal(out, model(x, g))                # fixed random_state: the same forest every run
    assert np.abs(out[0, 0].double().numpy() - hr).max() < 1e-3


def test_rf_without_sklearn(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sklearn.ensemble", None)  # import fails
    model = sharpeners.RFSharpener(scale=4, guidance_channels=1)
    with pytest.raises(ConfigError, match="^model 'rf' needs scikit-learn: pip install scikit-learn$"):
        model(torch.full((1, 1, 2, 2), 290.0), torch.rand(1, 1, 8, 8))


def test_sharpeners_registered_parameter_free(config):
    for name in ("tsharp", "linreg", "rf"):
        cls = groklst.MODELS[name]
        assert cls.kind == "gisr" and cls.scales == (2, 4, 8, 16, 32) and cls.physical_units
        assert groklst.count_parameters(name, 8) == 0
        model = groklst.load_model(groklst.load_config(config("bicubic_x4"), [f"model.name={name}"]), None, "cpu")
        assert not any(True for _ in model.parameters())


# --------------------------------------------------------------------------- consistency


def holey_inputs(seed=0, s=4):
    """A 20 x 24 LR tile (x4) with a NaN hole, guidance with NaN pixels, all 10 bands."""
    hr, gui = layout.synth_scene(20 * s, 24 * s, seed=seed)
    lr = data.block_mean(hr, s)
    lr[5:9, 3:7] = np.nan
    lr[0, 23] = np.nan
    gui[:, 40:43, 60:70] = np.nan
    return torch.from_numpy(lr)[None, None], torch.from_numpy(gui)[None]


def consistency_models(config):
    torch.manual_seed(0)  # the network is built (randomly initialised) in the test
    return {"bicubic": groklst.load_config(config("bicubic_x4")), "dgf (random init)": groklst.load_config(config("bicubic_x4"), ["model.name=dgf"]),
            "tsharp": groklst.load_config(config("bicubic_x4"), ["model.name=tsharp"])}


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_consistency_makes_block_mean_equal_lr(mode, config):
    lr, gui = holey_inputs()
    for label, cfg in consistency_models(config).items():
        model = groklst.build_model(cfg).eval()  # random init for the network: consistency must not care
        normalizer = groklst.build_normalizer(cfg)
        g = gui if cfg["model"]["name"] != "bicubic" else None
        with torch.no_grad():
            raw = engine.downscale(model, normalizer, lr, g)
            out = engine.downscale(model, normalizer, lr, g, consistency=mode)
        coarse = data.block_mean(out[0, 0].numpy(), 4, max_nan_fraction=1.0)
        valid = np.isfinite(lr[0, 0].numpy())
        err = np.abs(coarse - lr[0, 0].numpy())[valid].max()
        assert err < 1e-4, (label, mode, err)
        assert consistency_error(out, lr).item() < 1e-4
        before = consistency_error(raw, lr).item()
        assert before > 1e-3, (label, before)  # there was something to correct
        holes = data.hole_mask(lr, 4)
        assert torch.equal(out[holes], raw[holes])  # coarse pixels without data: no correction


def test_consistency_mode_checked(config):
    with pytest.raises(ConfigError, match="consistency='linear': must be one of none [|] nearest [|] bicubic"):
        groklst.load_config(config("bicubic_x4"), ["consistency=linear"])
    assert groklst.load_config(config("bicubic_x4"))["consistency"] == "none"
    assert groklst.load_config(config("bicubic_x4"), ["consistency=bicubic"])["consistency"] == "bicubic"


def test_consistency_nan_fine_pixels_and_smoothness():
    """A block with some NaN prediction pixels: the mean over its valid ones equals LR. The bicubic
    residual makes smaller steps at block edges than the nearest one."""
    lr = torch.tensor([[290.0, 300.0], [295.0, 310.0]]).double()[None, None]
    pred = torch.full((1, 1, 8, 8), 300.0, dtype=torch.float64)
    pred[0, 0, 0, :3] = float("nan")
    out = {m: engine.make_consistent(pred, lr, m) for m in ("nearest", "bicubic")}
    for o in out.values():
        np.testing.assert_allclose(data.block_mean(o[0, 0].numpy(), 4, 1.0), lr[0, 0].numpy(), atol=1e-9)
        assert torch.isnan(o[0, 0, 0, :3]).all()
    jump = {m: (o[0, 0, 4:, 3] - o[0, 0, 4:, 4]).abs().max().item() for m, o in out.items()}
    assert jump["bicubic"] < jump["nearest"]


# --------------------------------------------------------------------------- the CONS metric


def test_consistency_error_metric():
    lr = torch.tensor([[290.0, 300.0, float("nan")], [295.0, 310.0, 280.0]])[None, None]
    exact = torch.from_numpy(nearest(lr.numpy(), 2))
    assert consistency_error(exact, lr).item() == 0
    pred = exact.clone()
    pred[0, 0, 0, 0] += 4.0              # block (0, 0) mean + 1
    pred[0, 0, 2, 2:4] = torch.tensor([float("nan"), 302.0])  # block (1, 1): valid pixels 302, 310, 310 -> 307.33
    pred[0, 0, 0:2, 4:6] = 999.0         # block of a NaN LR pixel: not counted
    d = np.array([1.0, 0.0, 0.0, (302 + 310 + 310) / 3 - 310, 0.0])
    assert consistency_error(pred, lr).item() == pytest.approx(np.sqrt(np.mean(d ** 2)), rel=1e-9)
    # batched, and an image without valid coarse pixels is NaN
    both = consistency_error(torch.cat([pred, exact]), torch.cat([lr, torch.full_like(lr, float("nan"))]))
    assert both[0].item() == pytest.approx(np.sqrt(np.mean(d ** 2))) and torch.isnan(both[1])


def test_evaluate_reports_cons_beside_five(demo_root, config):
    cfg = groklst.load_config(config("demo_tsharp_x8"), [f"data.root={demo_root}"])
    ds = groklst.build_dataset(cfg, "test")
    model = groklst.load_model(cfg, None, "cpu")
    means, rows = engine.evaluate(model, groklst.build_normalizer(cfg), ds, "cpu")
    assert set(METRICS) | {CONS, "images"} == set(means) and set(rows[0][1]) == set(METRICS) | {CONS}
    assert means[CONS] > 1e-3  # TsHARP's fv is nonlinear in NDVI: its residual is not exact
    means_on, _ = engine.evaluate(model, groklst.build_normalizer(cfg), ds, "cpu", consistency="nearest")
    assert means_on[CONS] < 1e-4


# --------------------------------------------------------------------------- predict.py


def write_scene(d, h=40, w=36, s=4, seed=3):
    hr, gui = layout.synth_scene(h * s, w * s, seed=seed)
    lr = data.block_mean(hr, s)
    lr[10:14, 20:25] = np.nan
    lst = str(d / "lst.tif")
    geotiff.write_geotiff(lst, lr, geotiff.make_geo(X0, Y0, 120.0))
    guidance = str(d / "bands.tif")
    geotiff.write_geotiff(guidance, gui, geotiff.make_geo(X0, Y0, 30.0), band_names=list(data.BANDS))
    return lr, gui, lst, guidance


def test_predict_fits_tsharp_once_on_the_whole_scene(tmp_path, monkeypatch, config):
    lr, gui, lst, guidance = write_scene(tmp_path)
    fits = []
    real_fit = sharpeners.Sharpener.fit
    monkeypatch.setattr(sharpeners.Sharpener, "fit", lambda self, *a: fits.append(real_fit(self, *a)) or fits[-1])
    predict.predict(config("bicubic_x4"), lst, str(tmp_path / "out.tif"), guidance=[guidance], overrides=["model.name=tsharp"],
                    lr_tile=12, lr_overlap=4, progress=False)
    out = geotiff.read_geotiff(str(tmp_path / "out.tif"))[0][0]
    assert len(fits) == 1  # once, before tiling: 16 tiles refit nothing
    whole = sharpeners.TsHARP(scale=4)
    expected = whole.fit(lr, gui)
    assert np.array_equal(fits[0]["coef"], expected["coef"]) and fits[0]["stats"] == expected["stats"]
    reference = whole.sharpen(lr, gui, expected)
    valid = np.isfinite(out)
    assert np.array_equal(valid, ~nearest(np.isnan(lr), 4))
    assert np.abs(out - reference)[valid].max() < 1e-3  # tiling changes nothing but float32 rounding
    per_tile = sharpeners.TsHARP(scale=4)(torch.from_numpy(lr[:12, :12])[None, None], torch.from_numpy(gui[:, :48, :48])[None])
    assert np.abs(per_tile[0, 0].numpy() - reference[:48, :48]).max() > 1e-3  # a tile's own fit differs


@pytest.mark.parametrize("name, mode", [("bicubic", "bicubic"), ("tsharp", "bicubic"), ("bicubic", "atpk")])
def test_predict_consistency_flag(tmp_path, name, mode, config):
    lr, gui, lst, guidance = write_scene(tmp_path)
    out_path = str(tmp_path / "out.tif")
    predict.main([config("bicubic_x4"), f"model.name={name}", "--lst", lst, "--guidance", guidance, "--out", out_path,
                  "--lr-tile", "12", "--lr-overlap", "4", "--consistency", mode])
    out = geotiff.read_geotiff(out_path)[0][0]
    coarse = data.block_mean(out, 4, max_nan_fraction=1.0)
    valid = np.isfinite(lr)
    assert np.abs(coarse - lr)[valid].max() < 1e-4
    assert np.isnan(coarse[~valid]).all()


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_consistency_on_a_row_stream_equals_the_whole_scene(mode):
    """predict applies the correction to the row bands it streams; the result is the whole scene's."""
    rng = np.random.default_rng(5)
    lr = (290 + 5 * rng.standard_normal((100, 30))).astype(np.float32)
    lr[40:44, 3:9] = np.nan
    pred = np.repeat(np.repeat(lr, 8, 0), 8, 1) + rng.standard_normal((800, 240)).astype(np.float32)
    whole = engine.make_consistent(torch.from_numpy(pred)[None, None], torch.from_numpy(lr)[None, None], mode)[0, 0]
    bands = [pred[y:y + 256] for y in range(0, 800, 256)]
    streamed = np.concatenate(list(predict.consistent_rows(iter(bands), lr, 8, mode)))
    assert streamed.shape == pred.shape
    np.testing.assert_array_equal(np.isnan(streamed), np.isnan(whole.numpy()))
    assert np.nanmax(np.abs(streamed - whole.numpy())) < 1e-4


# --------------------------------------------------------------------------- when a sharpener cannot fit


def test_tsharp_with_one_valid_coarse_pixel_cannot_fit():
    """One valid LR pixel used to give a map at 139 K from a 278 K input: now an error that says why."""
    lr, gui, _ = tsharp_scene()  # 12 x 10 LR pixels
    one = np.full_like(lr, np.nan)
    one[4, 4] = 278.0
    assert issubclass(sharpeners.CannotFit, DataError)
    with pytest.raises(sharpeners.CannotFit, match=r"^model 'tsharp': 1 valid coarse pixel, needs at least 20 \(10 per "
                                                   r"fitted parameter, 2 parameters\); use a larger area"):
        sharpeners.TsHARP(scale=4)(torch.from_numpy(one)[None, None], torch.from_numpy(gui)[None])
    # at the minimum it fits: 20 valid pixels (2 parameters), 19 do not
    some = np.full_like(lr, np.nan)
    some.reshape(-1)[:20] = lr.reshape(-1)[:20]
    assert sharpeners.TsHARP(scale=4).fit(some, gui)["samples"] == 20
    some.reshape(-1)[19] = np.nan
    with pytest.raises(sharpeners.CannotFit, match="19 valid coarse pixels, needs at least 20"):
        sharpeners.TsHARP(scale=4).fit(some, gui)


def test_linreg_with_five_valid_coarse_pixels_cannot_fit():
    lr, gui, _, _ = linear_scene(holes=False)
    five = np.full_like(lr, np.nan)
    five[2, 3:8] = lr[2, 3:8]
    model = sharpeners.LinReg(scale=4, guidance_channels=3)
    with pytest.raises(sharpeners.CannotFit, match=r"^model 'linreg': 5 valid coarse pixels, needs at least 40 .*4 parameters\); "
                                                   r".*fewer guidance bands \(data.guidance_bands\) or model 'tsharp'"):
        model.fit(five, gui)
    assert model.fit(lr, gui)["samples"] == lr.size  # enough pixels: fits


@pytest.mark.parametrize("name", ["linreg", "rf", "dms"])
def test_all_nan_guidance_band_cannot_fit(name):
    if name != "linreg":
        pytest.importorskip("sklearn", reason=f"model {name!r} needs scikit-learn (optional dependency)")
    lr, gui, _, _ = linear_scene(holes=False)
    gui[1] = np.nan
    model = groklst.MODELS[name](scale=4, guidance_channels=3, guidance_bands=("dem", "red", "nir"))
    with pytest.raises(sharpeners.CannotFit, match=rf"^model '{name}': guidance band 'red' is valid in only 0 of the 192 "
                                                   r"coarse pixels with a valid LST \(needs 40;.*drop it from data.guidance_bands$"):
        model.fit(lr, gui)


def test_constant_band_cannot_fit_a_slope():
    lr, gui, _, _ = linear_scene(holes=False)
    gui[2] = 0.3
    with pytest.raises(sharpeners.CannotFit, match="model 'linreg': guidance band 'band 3' is constant .* its slope cannot be fitted"):
        sharpeners.LinReg(scale=4, guidance_channels=3).fit(lr, gui)
    lr_t, gui_t, _ = tsharp_scene()
    gui_t[data.BANDS.index("ndvi")] = 0.4
    with pytest.raises(sharpeners.CannotFit, match="model 'tsharp': guidance band 'ndvi' is constant"):
        sharpeners.TsHARP(scale=4).fit(lr_t, gui_t)


# --------------------------------------------------------------------------- any grid: footprint.Footprint

UTM = "EPSG:32650"  # the fine grid: 30 m, corner 400000 E, 4500000 N (115.8 E, 40.6 N)
SINUSOIDAL = geotiff.crs_string(geotiff.make_geo_keys(0, 0, 1.0, geotiff.MODIS_SINUSOIDAL_KEYS))
FOREIGN = {"geographic": ("EPSG:4326", 0.002, (-180.0, 90.0)),  # 0.002 deg: ~170 x 220 m, 6-7 fine pixels
           "sinusoidal": (SINUSOIDAL, geotiff.MODIS_PIXEL / 4, (-20015109.354, 10007554.677))}  # MODIS 250 m grid


def foreign_footprint(kind, n=240):
    """footprint.Footprint from an n x n UTM grid of 30 m to the block of a global grid in another CRS
    (FOREIGN[kind]: CRS, pixel size, corner) that covers it, one pixel to spare on every side."""
    pyproj = pytest.importorskip("pyproj")
    from footprint import Footprint, Grid
    fine = Grid((n, n), (400000.0, 30.0, 0.0, 4500000.0, 0.0, -30.0), UTM, "fine")
    crs, pixel, (x0, y0) = FOREIGN[kind]
    xmin, xmax, ymin, ymax = fine.extent()
    t = np.linspace(0, 1, 50)
    x, y = pyproj.Transformer.from_crs(UTM, crs, always_xy=True).transform(
        np.r_[xmin + t * (xmax - xmin), xmin + t * (xmax - xmin), np.full(50, xmin), np.full(50, xmax)],
        np.r_[np.full(50, ymin), np.full(50, ymax), ymin + t * (ymax - ymin), ymin + t * (ymax - ymin)])
    c0, r0 = int(np.floor((min(x) - x0) / pixel)) - 1, int(np.floor((y0 - max(y)) / pixel)) - 1
    c1, r1 = int(np.ceil((max(x) - x0) / pixel)) + 1, int(np.ceil((y0 - min(y)) / pixel)) + 1
    coarse = Grid((r1 - r0, c1 - c0), (x0 + c0 * pixel, pixel, 0.0, y0 - r0 * pixel, 0.0, -pixel), crs, "coarse")
    return Footprint(fine, coarse)


CROSS_BANDS = ("dem", "ndvi", "red", "nir")


def cross_scene(relation, n=240, seed=0):
    """Guidance (4, n, n) float32 on the UTM grid: a smooth DEM (metres) and three bands with detail
    at ~3 fine pixels over ~16-pixel structure (land cover is sharper than a 200 m pixel); the fine LST
    (n, n) K a known function of them plus 0.2 K noise:
      'fv':        300 - 6.5e-3 (DEM - 2500) - 16 fv(NDVI) + 1.5 c     (TsHARP's fv; linear otherwise)
      'nonlinear': 300 - 6.5e-3 (DEM - 2500) - 10 fv(NDVI) + 3 b^2     (b^2: no plane fits it)
    with fv = TsHARP.vegetation_fraction(NDVI, 0.1, 0.85) and c, b the red and nir bands' unit fields."""
    rng = np.random.default_rng(seed)

    def detailed():
        field = 0.7 * smooth_field(rng, (n, n), 16) + 0.5 * smooth_field(rng, (n, n), 3)
        return field / field.std()

    dem = 2500 + 500 * smooth_field(rng, (n, n), 40)
    veg, c, b = detailed(), detailed(), detailed()
    ndvi = 0.1 + 0.75 / (1 + np.exp(-1.5 * veg))
    gui = np.stack([dem, ndvi, 0.2 + 0.04 * c, 0.3 + 0.05 * b]).astype(np.float32)
    fv = sharpeners.TsHARP.vegetation_fraction(ndvi, 0.1, 0.85)
    base = 300 - 6.5e-3 * (dem - 2500) + 0.2 * rng.standard_normal((n, n))
    hr = base - 16 * fv + 1.5 * c if relation == "fv" else base - 10 * fv + 3 * b ** 2
    return hr, gui


def cross_models():
    pytest.importorskip("sklearn", reason="models 'rf' and 'dms' need scikit-learn (optional dependency)")
    kw = {"scale": 8, "guidance_channels": 4, "guidance_bands": CROSS_BANDS}
    return {"tsharp": sharpeners.TsHARP(**kw), "linreg": sharpeners.LinReg(**kw),
            "rf": sharpeners.RFSharpener(n_estimators=20, **kw), "dms": sharpeners.DMS(**kw)}


def rmse_over(a, b, where):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64)[where] - b[where]) ** 2)))


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_sharpeners_on_a_foreign_grid_beat_interpolation(kind):
    """A fine LST on a UTM grid, its footprint means on a grid in another CRS (~7 fine pixels per
    coarse one): every sharpener, fitted and applied through the footprint, is at least 25 % better
    in RMSE than bicubic interpolation of the coarse LST (measured: 0.21-0.48 of it); the footprint
    means of its output are the coarse LST (< 2 mK) wherever no fine pixel of the footprint is masked;
    it is NaN exactly where interpolation is (fine pixels whose centre lies in a NaN coarse pixel or
    outside the coarse grid)."""
    fp = foreign_footprint(kind)
    hr, gui = cross_scene("fv")
    lr = fp.aggregate(hr)
    assert np.isnan(lr).any() and np.isfinite(lr).sum() > 800  # edge pixels less than half covered: NaN
    bicubic = fp.interpolate(lr, "bicubic")
    where = np.isfinite(bicubic)
    assert where.mean() > 0.95
    baseline = rmse_over(bicubic, hr, where)
    for name, model in cross_models().items():
        fit = model.fit(lr, gui, footprint=fp)
        out = model.sharpen(lr, gui, fit, footprint=fp)
        assert out.shape == hr.shape
        np.testing.assert_array_equal(np.isnan(out), ~where, err_msg=name)
        assert rmse_over(out, hr, where) < 0.75 * baseline, (name, rmse_over(out, hr, where), baseline)
        # the residual is over every fine pixel the sensor saw; pixels whose centre lies in a NaN neighbour are
        # masked afterwards, so the check is over the coarse pixels with every fine pixel of their footprint kept
        whole = fp.aggregate(np.isfinite(out).astype(np.float64)) > 1 - 1e-9
        means = fp.aggregate(np.asarray(out, np.float64))
        assert whole.sum() > 0.8 * np.isfinite(lr).sum()
        assert np.abs(means - lr)[whole].max() < 2e-3, (name, np.abs(means - lr)[whole].max())


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_dms_beats_linreg_on_a_nonlinear_relation_on_a_foreign_grid(kind):
    """LST quadratic in a band (3 b^2): dms's trees follow it, a plane cannot (measured: 0.68 and
    0.73 of linreg's RMSE on the two grids)."""
    fp = foreign_footprint(kind)
    hr, gui = cross_scene("nonlinear")
    lr = fp.aggregate(hr)
    models = cross_models()
    where = np.isfinite(fp.interpolate(lr, "nearest"))
    error = {name: rmse_over(models[name].sharpen(lr, gui, models[name].fit(lr, gui, fp), fp), hr, where)
             for name in ("dms", "linreg")}
    assert error["dms"] < 0.85 * error["linreg"], error


def test_footprint_training_pixels_and_missing_data():
    """Trained on: the coarse pixels with a valid LST whose footprint lies in the fine grid with every
    guidance pixel finite (counted here from the sparse weights). A NaN coarse pixel is NaN over the
    fine pixels whose centre it holds; a fine pixel with a NaN guidance band gets its coarse LST,
    corrected like its neighbours."""
    fp = foreign_footprint("geographic")
    hr, gui = cross_scene("fv")
    lr = fp.aggregate(hr)
    h, w = lr.shape
    holes = [(10, 12), (11, 12), (20, 30)]
    for i, j in holes:
        lr[i, j] = np.nan
    gui[2, 100, 50:53] = np.nan
    pairs = fp.weights.to_sparse_coo().indices().numpy()  # (coarse, fine) index of every overlap
    touched = np.zeros(h * w, bool)
    touched[pairs[0][~np.isfinite(gui.reshape(4, -1)).all(0)[pairs[1]]]] = True
    inside = fp.coverage.numpy().reshape(-1) >= 1.0
    expected = int((inside & ~touched & np.isfinite(lr.reshape(-1))).sum())
    model = sharpeners.LinReg(scale=8, guidance_channels=4, guidance_bands=CROSS_BANDS)
    fit = model.fit(lr, gui, fp)
    assert fit["samples"] == expected and 0 < int(touched.sum()) <= 6
    out = model.sharpen(lr, gui, fit, fp)
    index = fp.coarse_index.numpy()
    for i, j in holes:
        assert np.isnan(out[index == i * w + j]).all() and (index == i * w + j).sum() > 20
    dark = np.isin(index, [i * w + j for i, j in holes]) | (index < 0) | np.isnan(fp.nearest(lr))
    np.testing.assert_array_equal(np.isnan(out), dark)
    lr_there = fp.nearest(lr)[100, 50:53]
    assert np.abs(out[100, 50:53] - lr_there).max() < 1.0  # the coarse LST, plus its small residual
    # the same fit applied to tensors: numpy out, the same map
    from_tensors = model.sharpen(torch.from_numpy(lr), torch.from_numpy(gui), fit, fp)
    assert isinstance(from_tensors, np.ndarray)
    np.testing.assert_array_equal(from_tensors, out)


def test_aligned_footprint_fits_as_the_integer_blocks():
    """Footprint.aligned (the coarse grid is the fine one / scale, as a BlockFootprint) gives the
    integer-block fit (same training pixels and coefficients) and an output with the same block
    means (the LR LST: < 2 mK). They differ in how a block's residual is spread inside it (bicubic
    then nearest, nearest alone: a difference with block means 0) and under NaN LR pixels: NaN
    with a footprint, the regression alone without."""
    pytest.importorskip("sklearn", reason="model 'dms' needs scikit-learn (optional dependency)")
    from footprint import Footprint
    _, gui, _, coef = linear_scene(holes=False)
    gui = gui.astype(np.float32)
    hr = coef[0] + np.tensordot(coef[1:], gui.astype(np.float64), 1)
    lr = hr.reshape(16, 4, 12, 4).mean((1, 3)) + 0.3 * np.random.default_rng(0).standard_normal((16, 12))
    lr[3:5, 2:6] = np.nan
    hole = nearest(np.isnan(lr), 4)
    linreg = sharpeners.LinReg(scale=4, guidance_channels=3)
    dms = sharpeners.DMS(scale=4, guidance_channels=3, n_estimators=5, window=6)
    for footprint in (Footprint.aligned(hr.shape, 4), sharpeners.BlockFootprint(4, hr.shape)):
        fits = {name: (m.fit(lr, gui), m.fit(lr, gui, footprint)) for name, m in (("linreg", linreg), ("dms", dms))}
        np.testing.assert_allclose(fits["linreg"][1]["coef"], fits["linreg"][0]["coef"], rtol=1e-12)
        assert fits["dms"][1]["samples"] == fits["dms"][0]["samples"] == lr.size - 8
        for name, m in (("linreg", linreg), ("dms", dms)):
            blocks = m.sharpen(lr, gui, fits[name][0])
            scene = m.sharpen(lr, gui, fits[name][1], footprint)
            assert np.isfinite(blocks).all() and np.array_equal(np.isnan(scene), hole)
            for out in (blocks, scene):
                means = data.block_mean(np.asarray(out, np.float64), 4, max_nan_fraction=1.0)
                assert np.nanmax(np.abs(means - lr)) < 2e-3, name
            assert np.abs(scene - blocks)[~hole].max() > 1e-3, name  # the residual spread otherwise


def test_footprint_shapes_are_checked():
    fp = foreign_footprint("geographic", n=48)
    model = sharpeners.LinReg(scale=8, guidance_channels=1)
    with pytest.raises(ValueError, match=r"LR \(5, 5\) and guidance \(48, 48\) are not the footprint's coarse"):
        model.fit(np.full((5, 5), 290.0), np.ones((1, 48, 48)), fp)
