"""Scene prediction (predict.py): tiling and blending, seams, no-data, grid checks,
georeferencing of the output, guidance files by band name."""
import os

import numpy as np
import pytest
import tifffile
import torch

import data
import engine
import geotiff
import groklst
import layout
import predict

# a tiny MoCoLSK-Net guided by three bands, in another order than the files store them
TINY = ["model.num_feats=4", "model.reduction=4", "model.num_stages=1", "model.n_resblocks=1",
        "data.guidance_bands=[nir,dem,red]"]
X0, Y0 = 500000.0, 4300000.0
# Seam bound: tiled vs one whole-scene forward over valid pixels, 1504 x 1504 at x8, tile 56 overlap 12.
# Measured: bicubic max 9.2e-5 K (float32 rounding of ~300 K; its error is 1.39 K); tiny random MoCoLSK
# max 6.1e-4 K, rms 5.8e-5 K, while its error (RMSE vs the truth) is 1.50 K. Its global pooling (channel
# attention, pyramid pooling) sees the tile, not the scene, so its difference is not zero.
# Bounds: 1e-3 K; 1 % (max) and 0.1 % (rms) of the model's error.
SEAM_BICUBIC_K, SEAM_MODEL_MAX, SEAM_MODEL_RMS = 1e-3, 0.01, 0.001


def write_lst(path, lr, geo, nodata=float("nan")):
    geotiff.write_geotiff(str(path), lr, geo, nodata=nodata)
    return str(path)


def write_guidance(path, gui, bands, geo):
    geotiff.write_geotiff(str(path), gui, geo, band_names=bands)
    return str(path)


def tiny_checkpoint(path, config_path, overrides=TINY):
    torch.manual_seed(0)
    model = groklst.build_model(groklst.load_config(config_path, overrides))
    torch.save({"model": model.state_dict()}, str(path))
    return str(path)


def hr_mask(lr, scale):
    return np.repeat(np.repeat(np.isnan(lr), scale, 0), scale, 1)


def test_tiles_and_taper():
    assert predict.tile_starts(188, 56, 12) == [0, 44, 88, 132]
    assert predict.tile_starts(100, 56, 12) == [0, 44]          # the last tile ends flush at 100
    assert predict.tile_starts(30, 56, 12) == [0]               # smaller than a tile: padded
    w = predict.taper(96, 32)
    assert w.min() > 0 and w.max() == 1 and np.array_equal(w, w[::-1])
    assert (w[:8] < 1e-5).all() and (w[16:80] == 1).all()     # eps in the outer quarter of the overlap
    # two neighbours overlapping by 32: at every pixel one of them has weight 1, and the share of
    # the right tile rises monotonically from 0 to 1 across the middle half of the overlap
    left, right = w[64:], w[:32]
    assert (np.maximum(left, right) == 1).all()
    share = right / (left + right)
    assert share[0] < 1e-5 and share[-1] > 1 - 1e-5 and (np.diff(share) >= 0).all()
    assert (predict.taper(10, 0) == 1).all()


@pytest.fixture(scope="module")
def big(tmp_path_factory, config):
    """A 1504 x 1504 HR (30 m) synthetic scene, x8: LR LST 188 x 188 at 240 m with a cloud and a
    no-data corner (stored as the nodata value -9999), guidance with four named bands (red, dem,
    nir, ndvi) and NaN patches in red (used by the model) and ndvi (not used)."""
    d = tmp_path_factory.mktemp("scene")
    hr, gui = layout.synth_scene(1504, 1504, seed=0)
    lr = data.block_mean(hr, 8)
    yy, xx = np.mgrid[:188, :188]
    lr[((yy - 70) / 9) ** 2 + ((xx - 120) / 14) ** 2 < 1] = np.nan   # a cloud
    lr[:60, :60] = np.nan                                              # no-data corner: tile (0, 0) skipped
    bands = ["red", "dem", "nir", "ndvi"]
    g = gui[[data.BANDS.index(b) for b in bands]]
    g[0, 900:940, 200:260] = np.nan
    g[3, 300:340, 1000:1100] = np.nan
    lst_geo = geotiff.make_geo(X0, Y0, 240.0)
    return {"hr": hr, "lr": lr, "gui": g, "lst_geo": lst_geo, "ckpt": tiny_checkpoint(d / "tiny.pth", config("mocolsk_x8")),
            "lst": write_lst(d / "lst_240m.tif", lr, lst_geo, nodata=-9999.0),
            "guidance": write_guidance(d / "bands_30m.tif", g, bands, geotiff.make_geo(X0, Y0, 30.0))}


@pytest.mark.slow
def test_scene_1504_tiled_georeferenced_no_seams(big, tmp_path, config):
    """Done criterion of issue 7: a 1504 x 1504 scene with holes, tiled with a small model and with
    bicubic; georeferencing, nodata and seams checked."""
    out_model, out_bicubic = str(tmp_path / "model_30m.tif"), str(tmp_path / "bicubic_30m.tif")
    common = ["--lst", big["lst"], "--guidance", big["guidance"], "--lr-tile", "56", "--lr-overlap", "12"]
    predict.main([config("mocolsk_x8"), *TINY, "--checkpoint", big["ckpt"], "--out", out_model,
                  "--batch", "4", "--amp", "none", *common])
    predict.main([config("bicubic_x8"), "--out", out_bicubic, "--nodata", "-9999", *common])

    keys = big["lst_geo"][geotiff.TAG_GEOKEYS][2]
    outputs = {}
    for path, nodata in ((out_model, "nan"), (out_bicubic, "-9999.0")):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = {code: page.tags[code].value for code in geotiff.GEO_TAGS + (geotiff.TAG_GDAL_NODATA,)
                    if code in page.tags}
            assert page.shape == (1504, 1504) and page.dtype == np.float32
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            outputs[path] = page.asarray()
        assert tags == {geotiff.TAG_PIXEL_SCALE: (30.0, 30.0, 0.0), geotiff.TAG_TIEPOINT: (0.0, 0.0, 0.0, X0, Y0, 0.0),
                        geotiff.TAG_GEOKEYS: keys, geotiff.TAG_GDAL_NODATA: nodata}

    # no-data: the LR holes, and for the guided model a NaN in a band it uses (red, not ndvi)
    lr, gui = big["lr"], big["gui"][[2, 1, 0]]  # config order nir, dem, red
    model_out, bicubic_raw = outputs[out_model], outputs[out_bicubic]
    expected = hr_mask(lr, 8) | np.isnan(gui).any(0)
    assert np.array_equal(np.isnan(model_out), expected)
    assert np.isnan(model_out[900:940, 200:260]).all() and np.isfinite(model_out[300:340, 1000:1100]).all()
    assert np.array_equal(bicubic_raw == -9999.0, hr_mask(lr, 8)) and np.isfinite(bicubic_raw).all()

    # seams: tiled vs one whole-scene forward, on valid pixels
    valid = ~expected
    cfg = groklst.load_config(config("mocolsk_x8"), TINY)
    model = groklst.load_model(cfg, big["ckpt"], "cpu")
    with torch.no_grad():
        whole = engine.downscale(model, groklst.build_normalizer(cfg), torch.from_numpy(lr)[None, None],
                                  torch.from_numpy(gui)[None])[0, 0].numpy()
    model_error = np.sqrt(np.mean((whole - big["hr"])[valid] ** 2))
    diff = np.abs(model_out - whole)[valid]
    assert diff.max() < SEAM_MODEL_MAX * model_error, (diff.max(), model_error)
    assert np.sqrt(np.mean(diff ** 2)) < SEAM_MODEL_RMS * model_error

    cfg = groklst.load_config(config("bicubic_x8"))
    with torch.no_grad():
        whole = engine.downscale(groklst.build_model(cfg), groklst.build_normalizer(cfg),
                                  torch.from_numpy(lr)[None, None])[0, 0].numpy()
    valid = ~hr_mask(lr, 8)
    assert np.abs(bicubic_raw - whole)[valid].max() < SEAM_BICUBIC_K


@pytest.mark.parametrize("name", ["bicubic_x4", "bilinear_x4"])
def test_constant_scene_gives_constant_output(name, config):
    cfg = groklst.load_config(config(name))
    model, normalizer = groklst.build_model(cfg), groklst.build_normalizer(cfg)
    for shape in [(37, 45), (9, 30)]:  # several tiles with a flush last one; smaller than a tile (padded)
        out = predict.predict_array(model, normalizer, np.full(shape, 300.0, np.float32), None, 4, lr_tile=16, lr_overlap=6,
                                  batch=3)
        assert out.shape == (shape[0] * 4, shape[1] * 4)
        np.testing.assert_allclose(out, 300.0, atol=1e-4)


def test_nodata_masks_and_stays_local(tmp_path, capsys, config):
    """Holes are written as the nodata value and change valid pixels only within bicubic's support
    (2 LR pixels); elsewhere the output equals that of the scene without holes."""
    hr, _ = layout.synth_scene(160, 160, seed=2)
    lr = data.block_mean(hr, 4)
    holes = lr.copy()
    holes[10:14, 20:23] = np.nan
    holes[30:, 35:] = np.nan
    out = str(tmp_path / "out.tif")
    lst = write_lst(tmp_path / "lst.tif", holes, geotiff.make_geo(X0, Y0, 120.0))
    predict.main([config("bicubic_x4"), "--lst", lst, "--out", out, "--lr-tile", "16", "--lr-overlap", "4",
                  "--nodata", "-9999", "--amp", "bf16"])
    assert "amp bf16" in capsys.readouterr().err  # explicit bf16 is honoured (bicubic stays float32 under autocast)
    raw = tifffile.imread(out)
    assert raw.dtype == np.float32
    assert np.array_equal(raw == -9999.0, hr_mask(holes, 4))
    cfg = groklst.load_config(config("bicubic_x4"))
    clean = predict.predict_array(groklst.build_model(cfg), groklst.build_normalizer(cfg), lr, None, 4, 16, 4)
    near = np.isnan(holes)
    for _ in range(2):  # dilate by 2 LR pixels (8-connected)
        p = np.pad(near, 1)
        near = np.max([p[1 + dy:p.shape[0] - 1 + dy, 1 + dx:p.shape[1] - 1 + dx]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    far = ~np.repeat(np.repeat(near, 4, 0), 4, 1)
    np.testing.assert_allclose(raw[far], clean[far], atol=1e-4)
    ring = ~far & ~hr_mask(holes, 4)
    assert np.abs(raw[ring] - clean[ring]).max() > 0.01  # the fill is felt next to a hole, as documented


def test_model_transformation_and_geo_params_round_trip(tmp_path, config):
    """ModelTransformation input with GeoDoubleParams / GeoAsciiParams: every tag value in the output;
    PixelIsPoint origins move to the HR pixel centre."""
    citation = "WGS 84 / UTM zone 50N|"
    keys = (1, 1, 0, 5, 1024, 0, 1, 1, 1025, 0, 1, 1, 1026, geotiff.TAG_GEO_ASCII, len(citation), 0,
            2057, geotiff.TAG_GEO_DOUBLES, 1, 0, 3072, 0, 1, 32650)

    def geo(pixel, keys=keys, x0=X0, y0=Y0):
        return {geotiff.TAG_TRANSFORM: ("d", 16, (pixel, 0.0, 0.0, x0, 0.0, -pixel, 0.0, y0) + (0.0,) * 7 + (1.0,)),
                geotiff.TAG_GEOKEYS: ("H", len(keys), keys), geotiff.TAG_GEO_DOUBLES: ("d", 1, (6378137.0,)),
                geotiff.TAG_GEO_ASCII: ("s", 0, citation)}

    hr, gui = layout.synth_scene(80, 96, seed=4)
    lst = write_lst(tmp_path / "lst.tif", data.block_mean(hr, 4), geo(120.0))
    out = str(tmp_path / "out.tif")
    predict.main([config("bicubic_x4"), "--lst", lst, "--out", out, "--lr-tile", "8", "--lr-overlap", "2"])
    with tifffile.TiffFile(out) as tif:
        tags = {code: tif.pages[0].tags[code].value for code in geotiff.GEO_TAGS + (geotiff.TAG_GDAL_NODATA,)
                if code in tif.pages[0].tags}
    assert tags == {geotiff.TAG_TRANSFORM: (30.0, 0.0, 0.0, X0, 0.0, -30.0, 0.0, Y0) + (0.0,) * 7 + (1.0,),
                    geotiff.TAG_GEOKEYS: keys, geotiff.TAG_GEO_DOUBLES: (6378137.0,), geotiff.TAG_GEO_ASCII: citation,
                    geotiff.TAG_GDAL_NODATA: "nan"}
    geotiff.check_grids("lst", (20, 24), geo(120.0), "gui", (80, 96), geo(30.0), 4)  # transform form: agrees

    point = keys[:8] + (1025, 0, 1, 2) + keys[12:]  # PixelIsPoint: the origin is the centre of pixel (0, 0)
    lr_geo, hr_geo = geo(120.0, point), geo(30.0, point, X0 - 45.0, Y0 + 45.0)
    assert geotiff.geo_window(lr_geo, 0, 0, 4) == hr_geo
    geotiff.check_grids("lst", (20, 24), lr_geo, "gui", (80, 96), hr_geo, 4)
    assert geotiff.geo_window(geotiff.make_geo(X0, Y0, 240.0), 0, 0, 8)[geotiff.TAG_PIXEL_SCALE][2] == (30.0, 30.0, 0.0)


def test_guidance_as_single_band_files_or_folder(tmp_path, config):
    """One file per band, named by stem (any case, any order, extra files ignored) = one multi-band file."""
    hr, gui = layout.synth_scene(128, 128, seed=5)
    lr, hr_geo = data.block_mean(hr, 8), geotiff.make_geo(X0, Y0, 30.0)
    lst = write_lst(tmp_path / "lst.tif", lr, geotiff.make_geo(X0, Y0, 240.0))
    multi = write_guidance(tmp_path / "bands.tif", gui[[4, 0, 6]], ["red", "dem", "nir"], hr_geo)
    folder = tmp_path / "bands"
    folder.mkdir()
    files = [write_guidance(folder / f"{stem}.tif", gui[data.BANDS.index(stem.lower())], None, hr_geo)
             for stem in ("nir", "DEM", "red", "ndvi")]
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth", config("mocolsk_x8"))
    run = dict(config=config("mocolsk_x8"), lst=lst, checkpoint=ckpt, overrides=TINY, lr_tile=16, lr_overlap=4, progress=False)

    def written(name, **kw):
        predict.predict(out=str(tmp_path / name), **run, **kw)
        return tifffile.imread(tmp_path / name)

    a = written("a.tif", guidance=[multi])
    b = written("b.tif", guidance=files[::-1])
    c = written("c.tif", guidance_dir=str(folder))
    assert np.isfinite(a).all() and np.array_equal(a, b) and np.array_equal(a, c)
    # a single-image model reads no guidance; its output does not depend on it
    edsr = ["model.mid_channels=8", "model.num_blocks=1"]
    run.update(config=config("edsr_x8"), overrides=edsr, checkpoint=tiny_checkpoint(tmp_path / "edsr.pth",
                                                                                   config("edsr_x8"), edsr))
    assert np.array_equal(written("d.tif", guidance=[multi]), written("e.tif"))


def test_grid_and_input_errors(tmp_path, config):
    def check(match, lst_geo, gui_geo, gui_shape=(160, 192)):
        with pytest.raises(data.DataError, match=match) as e:
            geotiff.check_grids("lst.tif", (20, 24), lst_geo, "gui.tif", gui_shape, gui_geo, 8)
        assert "; LST lst.tif: 24 x 20 px" in str(e.value) and "; guidance gui.tif: " in str(e.value)
        assert "\n" not in str(e.value)  # one error line

    lr_geo = geotiff.make_geo(X0, Y0, 240.0)
    check("pixel size", lr_geo, geotiff.make_geo(X0, Y0, 60.0))
    check("different CRS", lr_geo, geotiff.make_geo(X0, Y0, 30.0, epsg=32648))
    check("extents differ", lr_geo, geotiff.make_geo(X0 + 150.0, Y0, 30.0))
    check("shape", lr_geo, geotiff.make_geo(X0, Y0, 30.0), (160, 189))  # within half a pixel, yet not x8
    # a shift of 3 guidance pixels (90 m, under half an LR pixel) is no longer taken for the same grid: a shifted
    # footprint is a footprint problem, not a co-registration to round away
    check("extents differ", lr_geo, geotiff.make_geo(X0 + 90.0, Y0, 30.0))
    geotiff.check_grids("lst.tif", (20, 24), lr_geo, "gui.tif", (160, 192), geotiff.make_geo(X0 + 0.01, Y0, 30.0), 8)

    hr, gui = layout.synth_scene(64, 64, seed=6)
    lst = write_lst(tmp_path / "lst.tif", data.block_mean(hr, 8), geotiff.make_geo(X0, Y0, 240.0))
    named = write_guidance(tmp_path / "named.tif", gui[:2], ["dem", "red"], geotiff.make_geo(X0, Y0, 30.0))
    unnamed = write_guidance(tmp_path / "unnamed.tif", gui[:3], None, geotiff.make_geo(X0, Y0, 30.0))
    shifted = write_guidance(tmp_path / "nir.tif", gui[6], None, geotiff.make_geo(X0 + 240.0, Y0, 30.0))
    out = ["--out", str(tmp_path / "out.tif")]
    cases = [("is guided: give --guidance", [config("mocolsk_x8"), *TINY, "--lst", lst]),
             ("no guidance band 'nir'", [config("mocolsk_x8"), *TINY, "--lst", lst, "--guidance", named]),
             ("3 unnamed bands", [config("mocolsk_x8"), *TINY, "--lst", lst, "--guidance", unnamed]),
             ("extents differ", [config("mocolsk_x8"), *TINY, "--lst", lst, "--guidance", named, shifted]),
             ("predict --checkpoint PATH", [config("mocolsk_x8"), "data.guidance_bands=[dem,red]", "--lst", lst,
                                    "--guidance", named]),
             ("expected 1", [config("bicubic_x8"), "--lst", named])]
    try:
        import imagecodecs  # noqa: F401
    except ImportError:  # an LZW file (tifffile decodes LZW only with imagecodecs): patch the Compression tag
        raw = bytearray(open(lst, "rb").read())
        with tifffile.TiffFile(lst) as tif:
            tag, order = tif.pages[0].tags[259], tif.byteorder
        raw[tag.valueoffset:tag.valueoffset + 2] = (5).to_bytes(2, "little" if order == "<" else "big")
        (tmp_path / "lzw.tif").write_bytes(raw)
        cases.append(("needs the 'imagecodecs' package", [config("bicubic_x8"), "--lst", str(tmp_path / "lzw.tif")]))
    for match, argv in cases:
        with pytest.raises(SystemExit, match=match):
            predict.main([*argv, *out])
    assert not os.path.exists(tmp_path / "out.tif")


def test_png_quick_look(tmp_path, config):
    hr, _ = layout.synth_scene(64, 64, seed=7)
    lst = write_lst(tmp_path / "lst.tif", data.block_mean(hr, 4), geotiff.make_geo(X0, Y0, 120.0))
    argv = [config("bicubic_x4"), "--lst", lst, "--out", str(tmp_path / "out.tif"), "--png"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="pip install matplotlib"):
            predict.main(argv)
        assert not os.path.exists(tmp_path / "out.tif")  # checked before the work
        return
    predict.main(argv)
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [("han", "bf16"), ("sgnet", "none")])
def test_amp_bf16_runs_every_model(name, expected, config):
    """HAN has a Conv3d (a 5-D weight: no channels_last layout) and SGNet a torch.complex (no bf16 kernel): the
    bf16 path keeps HAN's 5-D weight as it is, and --amp auto's check falls back to float32 for SGNet."""
    cfg = groklst.load_config(config(f"{name}_x8"))
    model, normalizer = groklst.build_model(cfg).eval(), groklst.build_normalizer(cfg)
    assert predict.resolve_amp("bf16", "cpu", model) == ("bf16", True)  # no error on the 5-D weight
    x = (280 + torch.randn(1, 1, 8, 8)).contiguous(memory_format=torch.channels_last)
    g = torch.randn(1, 10, 64, 64) if model.kind == "gisr" else None
    with torch.no_grad():
        assert predict.bf16_check(model, normalizer, x, g) == expected
