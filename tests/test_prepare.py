"""prepare.py and test.py --figure, on a synthetic georeferenced scene."""
import importlib.util
import json
import math
import os
import re
import sys

import numpy as np
import pytest
import yaml

import data
import geotiff
import groklst
import layout
import prepare
from data import BANDS, DataError, GrokLSTDataset

X0, Y0, PX = 500000.0, 4300000.0, 30.0
TILE, STEP, MAX_NODATA, LR_MAX_NODATA = 128, 64, 0.05, 0.25


def write_scene(folder, name, h, w, seed, bands=BANDS):
    lst, gui = layout.synth_scene(h, w, seed=seed)
    geo = geotiff.make_geo(X0, Y0, PX)
    order = [BANDS.index(b) for b in bands]
    geotiff.write_geotiff(os.path.join(folder, name + ".tif"), lst, geo)
    geotiff.write_geotiff(os.path.join(folder, name + "_gui.tif"), gui[order], geo, band_names=list(bands))
    return lst, gui


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A 640 x 640 scene at 30 m with no-data: a 60 x 60 cloud in LST, a 60 x 60 hole in one guidance
    band, and sparse NaN under two 240 m pixels of tile (384, 384), cut with tile 128 step 64."""
    folder = str(tmp_path_factory.mktemp("prepare"))
    lst, gui = layout.synth_scene(640, 640, seed=5)
    lst[200:260, 200:260] = np.nan                       # cloud: tiles over 5 % no-data are skipped
    gui[0, 520:580, 40:100] = np.nan                     # guidance no-data counts too
    holes = np.zeros((8, 8), bool)
    holes.flat[np.random.default_rng(0).permutation(64)[:20]] = True
    lst[392:400, 392:400][holes] = np.nan                # 20/64 NaN (> 25 %): that 240 m pixel is NaN
    for r, c in [(400, 400), (400, 401), (402, 402), (404, 404), (406, 406), (404, 406), (406, 404), (407, 407)]:
        lst[r, c] = np.nan                               # 8/64 NaN: finite at 240 m, some 60/120 m pixels NaN
    geo = geotiff.make_geo(X0, Y0, PX)
    geotiff.write_geotiff(os.path.join(folder, "myscene.tif"), lst, geo)
    geotiff.write_geotiff(os.path.join(folder, "myscene_gui.tif"), gui, geo, band_names=BANDS)
    out = os.path.join(folder, "out")
    summary = prepare.prepare([(os.path.join(folder, "myscene.tif"), os.path.join(folder, "myscene_gui.tif"))], out,
                              tile=TILE, step=STEP, max_nodata=MAX_NODATA, lr_max_nodata=LR_MAX_NODATA)
    splits = {k: data.read_split(out, k) for k in ("train", "val", "test", "trainval")}
    return {"out": out, "lst": lst, "gui": gui, "summary": summary, "splits": splits}


def load_test_script(root):
    """test.py as a module (a plain `import test` may find the standard library's test package)."""
    spec = importlib.util.spec_from_file_location("groklst_test_script", os.path.join(root, "test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def origin(name):
    r, c = re.search(r"_r(\d+)_c(\d+)$", name).groups()
    return int(r), int(c)


def expected_tiles(lst, gui):
    """{(row, col): split} of kept tiles, and the dropped counts, from a per-pixel split map."""
    blocks = prepare.assign_blocks([(5, 5)], (0.6, 0.1, 0.3), 0)
    label = np.empty((640, 640), object)
    for (_, i, j), split in blocks.items():  # 640 = 5 blocks of 128: no remainder to absorb
        label[i * TILE:(i + 1) * TILE, j * TILE:(j + 1) * TILE] = split
    invalid = ~np.isfinite(lst) | ~np.isfinite(gui).all(0)
    kept, straddling, nodata = {}, 0, 0
    for r in range(0, 640 - TILE + 1, STEP):
        for c in range(0, 640 - TILE + 1, STEP):
            splits = set(label[r:r + TILE, c:c + TILE].ravel())
            if len(splits) > 1:
                straddling += 1
            elif invalid[r:r + TILE, c:c + TILE].mean() > MAX_NODATA:
                nodata += 1
            else:
                kept[(r, c)] = splits.pop()
    return kept, straddling, nodata


def extent(path):
    x0, dx, _, y0, _, dy = geotiff.geo_transform(geotiff.read_geotiff(path)[1]["geo"])
    h, w = geotiff.read_geotiff(path)[0].shape[1:]
    return x0, x0 + w * dx, y0 + h * dy, y0  # left, right, bottom, top


def test_tile_count_and_splits(prepared):
    s, splits = prepared["summary"], prepared["splits"]
    kept, straddling, nodata = expected_tiles(prepared["lst"], prepared["gui"])
    assert s["scenes"][0]["positions"] == 81 == len(kept) + straddling + nodata
    assert s["dropped"] == {"straddling": straddling, "nodata": nodata} and nodata >= 2
    for split in ("train", "val", "test"):
        assert {origin(n) for n in splits[split]} == {rc for rc, v in kept.items() if v == split}
        assert s["tiles"][split] == len(splits[split]) > 0
    assert splits["trainval"] == sorted(splits["train"] + splits["val"])
    assert s["blocks"] == {"train": 15, "val": 3, "test": 7}  # 25 blocks cut 0.6 / 0.1 / 0.3
    all_tiles = set(os.listdir(os.path.join(prepared["out"], "30m", "lst")))
    assert all_tiles == {n + ".tif" for n in splits["train"] + splits["val"] + splits["test"]}
    assert "myscene_r00128_c00128.tif" not in all_tiles  # 19 % under the cloud
    assert "myscene_r00512_c00000.tif" not in all_tiles  # 22 % over the guidance hole


def test_tile_georeferencing(prepared):
    out, name = prepared["out"], "myscene_r00384_c00384"
    lst, info = geotiff.read_geotiff(os.path.join(out, "30m", "lst", name + ".tif"))
    assert lst.shape == (1, TILE, TILE)
    assert geotiff.geo_transform(info["geo"]) == (X0 + 384 * PX, PX, 0.0, Y0 - 384 * PX, 0.0, -PX)
    assert tuple(info["geo"][geotiff.TAG_GEOKEYS][2]) == geotiff.make_geo(0, 0, 1)[geotiff.TAG_GEOKEYS][2]  # CRS kept
    gui, ginfo = geotiff.read_geotiff(os.path.join(out, "30m", "guidance", name + ".tif"))
    assert ginfo["bands"] == list(BANDS) and ginfo["geo"] == info["geo"]
    assert np.array_equal(gui, prepared["gui"][:, 384:512, 384:512], equal_nan=True)
    for s, res in data.LR_FOLDERS.items():
        lr, linfo = geotiff.read_geotiff(os.path.join(out, res, "lst", name + ".tif"))
        assert lr.shape == (1, TILE // s, TILE // s)
        assert geotiff.geo_transform(linfo["geo"]) == (X0 + 384 * PX, PX * s, 0.0, Y0 - 384 * PX, 0.0, -PX * s)


def test_block_mean_and_nan_rule(prepared):
    out, name = prepared["out"], "myscene_r00384_c00384"
    hr = prepared["lst"][384:512, 384:512].astype(np.float64)
    lr = {}
    for s, res in data.LR_FOLDERS.items():
        lr[s] = geotiff.read_geotiff(os.path.join(out, res, "lst", name + ".tif"))[0][0]
        blocks = hr.reshape(TILE // s, s, TILE // s, s).transpose(0, 2, 1, 3).reshape(TILE // s, TILE // s, -1)
        ref = np.array([[b[np.isfinite(b)].mean() if np.isfinite(b).any() else np.nan for b in row] for row in blocks])
        ref[np.isnan(blocks).mean(-1) > LR_MAX_NODATA] = np.nan
        assert np.allclose(lr[s], ref, atol=1e-4, equal_nan=True), res
    # 240 m: 20/64 NaN -> NaN; 8/64 NaN -> finite mean of the 56 others
    assert np.isnan(lr[8][1, 1]) and np.isclose(lr[8][2, 2], np.nanmean(hr[16:24, 16:24]), atol=1e-4)
    assert np.isnan(lr[2][8, 8]) and np.isfinite(lr[2][9, 9])  # 60 m: 2/4 NaN -> NaN, 1/4 -> finite
    assert np.isfinite(lr[4][4, 4]) and np.isnan(lr[4][5, 5])  # 120 m: 3/16 finite, 5/16 NaN
    assert np.isfinite(lr[8]).sum() == 16 * 16 - 1


def test_stats_match_numpy(prepared):
    out, lst, gui = prepared["out"], prepared["lst"], prepared["gui"]
    with open(os.path.join(out, "stats.yaml")) as f:
        stats = yaml.safe_load(f)
    train = prepared["splits"]["train"]
    hr = np.concatenate([lst[r:r + TILE, c:c + TILE].ravel() for r, c in map(origin, train)]).astype(np.float64)
    lr = np.concatenate([geotiff.read_geotiff(os.path.join(out, "240m", "lst", n + ".tif"))[0].ravel() for n in train])
    ndvi = np.concatenate([gui[8, r:r + TILE, c:c + TILE].ravel() for r, c in map(origin, train)]).astype(np.float64)
    for got, values in [(stats["lst"]["30m"], hr), (stats["lst"]["240m"], lr), (stats["guidance"]["stats"]["ndvi"], ndvi)]:
        v = values[np.isfinite(values)].astype(np.float64)
        assert got["mean"] == pytest.approx(v.mean(), abs=2e-4) and got["std"] == pytest.approx(v.std(ddof=1), abs=2e-4)
        assert got["min"] == pytest.approx(v.min(), abs=2e-4) and got["max"] == pytest.approx(v.max(), abs=2e-4)
    assert stats["lst"]["240m"]["method"] == "zscore" and set(stats["guidance"]["stats"]) == set(BANDS)
    # the numbers of `groklst.py stats OUT --split train`, and what base_x8.yaml puts under norm:
    assert data.compute_stats(out, "train", BANDS)["guidance"] == stats["guidance"]["stats"]
    with open(os.path.join(out, "base_x8.yaml")) as f:
        base = yaml.safe_load(f)
    assert base["norm"]["lst"] == stats["lst"]["240m"] and base["norm"]["guidance"] == stats["guidance"]


def test_no_test_tile_overlaps_training(prepared):
    out, splits = prepared["out"], prepared["splits"]
    ext = {k: [extent(os.path.join(out, "30m", "lst", n + ".tif")) for n in splits[k]] for k in ("train", "val", "test")}

    def overlap(a, b):
        return min(a[1], b[1]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[2], b[2])

    for one, other in [("test", "train"), ("val", "train"), ("test", "val")]:
        assert not any(overlap(a, b) for a in ext[one] for b in ext[other]), (one, other)
    assert any(overlap(a, b) for a in ext["train"] for b in ext["train"] if a != b)  # tiles do overlap (step 64)


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """2 iterations of SRCNN x4 on the prepared dataset, from its base_x4.yaml."""
    import train
    work_dir = str(tmp_path_factory.mktemp("work"))
    train.main([os.path.join(prepared["out"], "base_x4.yaml"), "model.name=srcnn", "train.max_iters=2",
                "train.val_interval=2", "train.log_interval=1", f"work_dir={work_dir}", "--no-test"])
    return os.path.join(work_dir, "best.pth")


def test_dataset_and_configs_use_it(prepared, trained, tmp_path, root):
    test_script = load_test_script(root)
    out = prepared["out"]
    item = GrokLSTDataset(out, "train", 8, BANDS)[0]
    assert item["lr_lst"].shape == (1, 16, 16) and item["hr_guidance"].shape == (10, TILE, TILE)
    user = tmp_path / "myregion_mocolsk_x4.yaml"  # a config with the prepared base as `_base_`
    user.write_text(f"_base_: {os.path.relpath(os.path.join(out, 'base_x4.yaml'), tmp_path)}\n"
                    f"model: {{name: mocolsk, num_feats: 8, reduction: 4}}\n")
    cfg = groklst.load_config(str(user))
    assert cfg["data"]["root"] == out and cfg["data"]["scale"] == 4
    assert groklst.build_normalizer(cfg).lst == (cfg["norm"]["lst"]["mean"], cfg["norm"]["lst"]["std"])
    assert os.path.exists(trained)
    metrics = tmp_path / "bicubic.json"
    test_script.main([os.path.join(out, "base_x4.yaml"), "model.name=bicubic", "--out", str(metrics)])
    result = json.loads(metrics.read_text())
    assert result["images"] == len(prepared["splits"]["test"]) and result["metrics"]["RMSE"] < 2.0


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_figure(prepared, trained, tmp_path, config, root):
    test_script = load_test_script(root)
    png, spec = tmp_path / "fig.png", f"{trained},{config('bilinear_x4')}"
    names = prepared["splits"]["test"][:2]
    test_script.main([os.path.join(prepared["out"], "base_x4.yaml"), "model.name=bicubic", "--out",
                      str(tmp_path / "m.json"), "--figure", str(png), "--figure-samples", ",".join(names),
                      "--figure-models", spec])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000
    cfg = groklst.load_config(os.path.join(prepared["out"], "base_x4.yaml"), ["model.name=bicubic"])
    rows = test_script.figure_rows(cfg, test_script.figure_models(spec, cfg, None), "test", names)
    assert [n for n, _ in rows] == names
    assert list(rows[0][1]) == ["LR input", "bicubic", "srcnn", "bilinear", "ground truth"]


def test_figure_without_matplotlib(prepared, monkeypatch, tmp_path, root):
    test_script = load_test_script(root)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        test_script.main([os.path.join(prepared["out"], "base_x4.yaml"), "model.name=bicubic",
                          "--out", str(tmp_path / "m.json"), "--figure", str(tmp_path / "f.png")])


def test_gaussian_decimation():
    ramp = np.tile(np.arange(64, dtype=np.float32) * 0.5 + 280, (64, 1))
    out = prepare.gaussian_decimate(ramp, 4)
    assert out.shape == (16, 16)
    assert np.allclose(out[:, 3:-3], data.block_mean(ramp, 4)[:, 3:-3], atol=1e-4)  # symmetric kernel, block centre
    assert np.allclose(prepare.gaussian_decimate(np.full((32, 32), 300.0, np.float32), 8), 300.0)
    holes = ramp.copy()
    holes[5:7, 5:8] = np.nan
    for frac in (0.0, 0.25):
        assert np.array_equal(np.isnan(prepare.degrade(holes, 4, "gaussian", frac)),
                              np.isnan(data.block_mean(holes, 4, frac)))


def test_cli_two_scenes(tmp_path, capsys):
    write_scene(str(tmp_path), "a", 192, 192, seed=1)
    shuffled = list(reversed(BANDS))  # scene b names its bands in another order: reordered to a's
    lst_b, gui_b = write_scene(str(tmp_path), "b", 192, 256, seed=2, bands=shuffled)
    (tmp_path / "list.txt").write_text("# lst guidance\nb.tif b_gui.tif\n")
    out = str(tmp_path / "out")
    prepare.main(["--lst", str(tmp_path / "a.tif"), "--guidance", str(tmp_path / "a_gui.tif"),
                  "--scenes", str(tmp_path / "list.txt"), "--out", out, "--tile", "64", "--step", "32",
                  "--block", "128", "--scales", "4", "--degradation", "gaussian", "--seed", "1"])
    printed = capsys.readouterr().out
    assert "2 scene(s)" in printed and "Gaussian blur" in printed
    assert sorted(os.listdir(out)) == ["120m", "30m", "base_x4.yaml", "cpu_mocolsk_x4.yaml", "prepare.yaml", "split",
                                       "stats.yaml"]
    names = data.read_split(out, "train") + data.read_split(out, "val") + data.read_split(out, "test")
    assert {n.split("_r")[0] for n in names} == {"a", "b"}
    with open(os.path.join(out, "prepare.yaml")) as f:
        assert [r["positions"] for r in yaml.safe_load(f)["scenes"]] == [5 * 5, 5 * 7]  # 192 x 192, 192 x 256
    name = next(n for n in names if n.startswith("b_"))
    (r, c), band_names = origin(name), geotiff.read_geotiff(os.path.join(out, "30m/guidance", name + ".tif"))[1]["bands"]
    gui = data.read_guidance(os.path.join(out, "30m/guidance", name + ".tif"), list(BANDS))
    assert band_names == list(BANDS) and np.array_equal(gui, gui_b[:, r:r + 64, c:c + 64])
    lr = geotiff.read_geotiff(os.path.join(out, "120m/lst", name + ".tif"))[0][0]
    assert np.allclose(lr, prepare.gaussian_decimate(lst_b[r:r + 64, c:c + 64], 4), atol=1e-4)
    with pytest.raises(SystemExit, match="already holds a dataset"):
        prepare.main(["--lst", str(tmp_path / "a.tif"), "--guidance", str(tmp_path / "a_gui.tif"),
                      "--out", out, "--tile", "64", "--step", "32"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(tile=100, step=50), r"--tile 100: must be a positive multiple of every scale \[2, 4, 8\]"),
    (dict(tile=64, step=32, scales=(3,)), r"--tile 64: must be a positive multiple of every scale \[3\]"),
    (dict(tile=64, step=48), r"--block 64: must be a multiple of --tile 64 and of --step 48"),
    (dict(tile=64, step=32, split=(0.5, 0.1, 0.1)), r"--split .*summing to 1"),
    (dict(tile=64, step=32, scales=(1, 8)), r"--scales \[1, 8\]: integer scales >= 2"),
    (dict(scales=(256,)), r"--scales \[256\]: no tile of .* give --tile"),
    (dict(tile=64, step=32, band_names=["x"]), r"a_gui.tif: 10 bands but 1 band names"),
])
def test_argument_errors(tmp_path, kwargs, message):
    write_scene(str(tmp_path), "a", 64, 64, seed=3)
    with pytest.raises(DataError, match=message):
        prepare.prepare([(str(tmp_path / "a.tif"), str(tmp_path / "a_gui.tif"))], str(tmp_path / "out"), **kwargs)


def test_scene_errors(tmp_path):
    lst, gui = layout.synth_scene(64, 64, seed=4)
    geotiff.write_geotiff(str(tmp_path / "l.tif"), lst, geotiff.make_geo(X0, Y0, PX))
    geotiff.write_geotiff(str(tmp_path / "g3.tif"), gui[:3], geotiff.make_geo(X0, Y0, PX))  # unnamed, not 10 bands
    geotiff.write_geotiff(str(tmp_path / "gs.tif"), gui[:, :32], geotiff.make_geo(X0, Y0, PX), band_names=BANDS)
    geotiff.write_geotiff(str(tmp_path / "gm.tif"), gui, geotiff.make_geo(X0 + 30, Y0, PX), band_names=BANDS)
    with pytest.raises(DataError, match="3 unnamed bands; name them .*--band-names"):
        prepare.read_scene(str(tmp_path / "l.tif"), str(tmp_path / "g3.tif"))
    assert prepare.read_scene(str(tmp_path / "l.tif"), str(tmp_path / "g3.tif"), ["b", "g", "r"])["bands"] == ["b", "g", "r"]
    with pytest.raises(DataError, match=r"guidance shape \(32, 64\) differs from the LST's \(64, 64\)"):
        prepare.read_scene(str(tmp_path / "l.tif"), str(tmp_path / "gs.tif"))
    with pytest.raises(DataError, match="extents differ.*resample both onto one grid"):
        prepare.read_scene(str(tmp_path / "l.tif"), str(tmp_path / "gm.tif"))
    with pytest.raises(DataError, match="1 --lst but 0 --guidance"):
        prepare.scenes_from_args(["l.tif"], [])


# --------------------------------------------------------------------------- one small scene (a real Landsat cut's size)

SMALL = (603, 627)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """prepare.py's defaults on one 603 x 627 scene at 30 m whose LST is a Level-1 brightness temperature."""
    folder = str(tmp_path_factory.mktemp("small"))
    lst, gui = layout.synth_scene(*SMALL, seed=8)
    geo = geotiff.make_geo(X0, Y0, PX)
    geotiff.write_geotiff(os.path.join(folder, "cut.tif"), lst, geo, band_names=["bt"])
    geotiff.write_geotiff(os.path.join(folder, "cut_gui.tif"), gui, geo, band_names=BANDS)
    out = os.path.join(folder, "out")
    summary = prepare.prepare([(os.path.join(folder, "cut.tif"), os.path.join(folder, "cut_gui.tif"))], out)
    return {"folder": folder, "out": out, "summary": summary, "lst": lst}


def test_small_scene_gives_every_split(small):
    """The defaults pick the tile (128: 512 gave one training tile and nothing else), every split gets tiles,
    and the summary gives the dropped positions per reason; the kept tiles cover the whole tiled part."""
    s, out = small["summary"], small["out"]
    assert (s["tile"], s["step"], s["block"], s["tile_auto"]) == (128, 64, 128, True)
    assert all(s["tiles"][k] > 0 for k in ("train", "val", "test")), s["tiles"]
    extent = [(n - 128) // 64 * 64 + 128 for n in SMALL]  # 576 x 576: tile positions every 64 pixels
    row = s["scenes"][0]
    assert row["positions"] == ((SMALL[0] - 128) // 64 + 1) * ((SMALL[1] - 128) // 64 + 1) == 64
    assert row["positions"] == row["kept"] + row["straddling"] + row["nodata"] and row["nodata"] == 0
    assert s["dropped"] == {"straddling": row["straddling"], "nodata": 0} and row["kept"] == sum(s["tiles"].values())
    assert row["margin"] == [SMALL[0] - extent[0], SMALL[1] - extent[1]] == [27, 51]
    covered = np.zeros(SMALL, bool)
    for split in ("train", "val", "test"):
        for name in data.read_split(out, split):
            r, c = origin(name)
            covered[r:r + 128, c:c + 128] = True
    assert covered[:extent[0], :extent[1]].all() and not covered[extent[0]:].any() and not covered[:, extent[1]:].any()
    assert row["covered"] == round(extent[0] * extent[1] / (SMALL[0] * SMALL[1]), 4)
    text = prepare.format_summary(s)
    assert f"{row['straddling']} straddle two splits" in text and "--step 128 has none" in text
    assert "27 rows and 51 columns at the bottom and right" in text and "(--tile auto)" in text


def test_small_scene_quantity_is_carried(small):
    """The LST's band description (Level-1 'bt') is every LST tile's, prepare.yaml's and data.lst_quantity's."""
    out = small["out"]
    with open(os.path.join(out, "prepare.yaml")) as f:
        assert yaml.safe_load(f)["lst_quantity"] == "bt"
    assert data.lst_quantity(out) == "bt"
    name = data.read_split(out, "test")[0]
    for res in ("30m", "60m", "120m", "240m"):
        assert geotiff.read_header(os.path.join(out, res, "lst", name + ".tif"))["bands"] == ["bt"]
    assert "of brightness temperature" in prepare.format_summary(small["summary"])
    lst, gui = layout.synth_scene(64, 64, seed=9)
    geotiff.write_geotiff(os.path.join(small["folder"], "l2.tif"), lst, None, band_names=["lst"])
    geotiff.write_geotiff(os.path.join(small["folder"], "l2_gui.tif"), gui, None, band_names=BANDS)
    scenes = [(os.path.join(small["folder"], a), os.path.join(small["folder"], b))
              for a, b in (("cut.tif", "cut_gui.tif"), ("l2.tif", "l2_gui.tif"))]
    with pytest.raises(DataError, match=r"l2.tif: holds land surface temperature \('lst'\), the first scene "
                                        r"brightness temperature \('bt'\)"):
        prepare.prepare(scenes, os.path.join(small["folder"], "mixed"), tile=32, scales=(8,))


def test_auto_tile_and_the_hint(small, tmp_path):
    assert prepare.auto_tile([SMALL], (2, 4, 8)) == 128
    assert prepare.auto_tile([(7801, 7681)], (2, 4, 8)) == 512      # a whole Landsat scene
    assert prepare.auto_tile([SMALL], (16, 32)) == 128              # at least 4 LR pixels at x32
    assert prepare.auto_tile([(100, 90)], (2, 4, 8)) == 32          # too small for 10 blocks: the smallest
    assert prepare.auto_tile([SMALL], (8,), step=128) == 128
    summary = prepare.prepare([(os.path.join(small["folder"], "cut.tif"), os.path.join(small["folder"], "cut_gui.tif"))],
                              str(tmp_path / "big"), tile=512, scales=(8,))
    assert summary["tiles"] == {"train": 1, "val": 0, "test": 0}
    assert any("split val has no tiles: the scenes hold 1 split blocks at --tile 512 --block 512; --tile 128 "
               "--step 64 (or --tile auto) gives 16" in w for w in summary["warnings"])


def test_scales_16_and_32(small, tmp_path):
    """--scales 16 32: 480m and 960m folders, base_x16 / base_x32, read back as Wald block means."""
    out = str(tmp_path / "x32")
    prepare.main(["--lst", os.path.join(small["folder"], "cut.tif"), "--guidance",
                  os.path.join(small["folder"], "cut_gui.tif"), "--out", out, "--scales", "16", "32"])
    assert sorted(os.listdir(out)) == ["30m", "480m", "960m", "base_x16.yaml", "base_x32.yaml", "cpu_mocolsk_x16.yaml",
                                       "cpu_mocolsk_x32.yaml", "prepare.yaml", "split", "stats.yaml"]
    ds = GrokLSTDataset(out, "train", 32, ["ndvi"])
    item, (r, c) = ds[0], origin(ds.names[0])
    hr = small["lst"][r:r + 128, c:c + 128].astype(np.float64)
    assert item["lr_lst"].shape == (1, 4, 4)
    assert np.allclose(item["lr_lst"][0].numpy(), hr.reshape(4, 32, 4, 32).mean((1, 3)), atol=1e-3)
    cfg = groklst.load_config(os.path.join(out, "base_x32.yaml"), ["model.name=srcnn"])
    assert cfg["data"]["scale"] == 32 and cfg["norm"]["lst"]["mean"] == data.compute_stats(out, "train", [])["lst"]["960m"]["mean"]
    cpu = groklst.load_config(os.path.join(out, "cpu_mocolsk_x16.yaml"))
    assert cpu["model"]["name"] == "mocolsk" and cpu["data"]["hr_crop"] == 128 and cpu["data"]["scale"] == 16
    with pytest.raises(groklst.ConfigError, match="supports scales .*not data.scale=32"):
        groklst.load_config(os.path.join(out, "cpu_mocolsk_x32.yaml"))  # MoCoLSK-Net builds up to x16


@pytest.mark.slow  # a training run (2 iterations) in a subprocess
def test_trains_at_x32(small, run_script, tmp_path):
    out = str(tmp_path / "x32")
    prepare.prepare([(os.path.join(small["folder"], "cut.tif"), os.path.join(small["folder"], "cut_gui.tif"))], out,
                    scales=(32,))
    result = run_script(["train.py", os.path.join(out, "base_x32.yaml"), "model.name=djf", "train.max_iters=2",
                         "train.val_interval=2", f"work_dir={tmp_path / 'w'}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test x32" in (tmp_path / "w" / "test_table.md").read_text()


# --------------------------------------------------------------------------- --coarsen


def test_coarsen_crop_keeps_the_corner(small, tmp_path, capsys):
    """A 603 x 627 scene at x8 (not a multiple): cropped to 600 x 624 from the top-left, the georeferencing
    kept, the guidance cut the same way so the pair passes predict.py's grid check."""
    folder, lst = small["folder"], small["lst"]
    out = str(tmp_path / "lst_240m.tif")
    prepare.main(["--coarsen", os.path.join(folder, "cut.tif"), "--scale", "8", "--out", out,
                  "--guidance", os.path.join(folder, "cut_gui.tif")])
    assert "cropped to 600 x 624 from the top-left (left out: 3 rows at the bottom, 3 columns" in capsys.readouterr().out
    coarse, info = geotiff.read_geotiff(out)
    ref = lst[:600, :624].astype(np.float64).reshape(75, 8, 78, 8).mean((1, 3))
    assert coarse.shape == (1, 75, 78) and np.allclose(coarse[0], ref, atol=1e-3)
    assert geotiff.geo_transform(info["geo"]) == (X0, 8 * PX, 0.0, Y0, 0.0, -8 * PX) and info["bands"] == ["bt"]
    gui, ginfo = geotiff.read_geotiff(str(tmp_path / "lst_240m_guidance.tif"))
    assert gui.shape == (10, 600, 624) and ginfo["bands"] == list(BANDS)
    assert np.array_equal(gui, geotiff.read_geotiff(os.path.join(folder, "cut_gui.tif"))[0][:, :600, :624])
    geotiff.check_grids(out, coarse.shape[1:], info["geo"], "g", gui.shape[1:], ginfo["geo"], scale=8)


def test_coarsen_pad_and_gaussian(small, tmp_path):
    folder, lst = small["folder"], small["lst"]
    out = str(tmp_path / "pad.tif")
    s = prepare.coarsen(os.path.join(folder, "cut.tif"), out, 8, edge="pad")
    coarse = geotiff.read_geotiff(out)[0][0]
    assert s["used"] == [608, 632] and coarse.shape == (76, 79)
    assert np.isnan(coarse[-1]).all() and np.isnan(coarse[:, -1]).all()  # partly padded blocks: NaN
    assert np.allclose(coarse[:75, :78], lst[:600, :624].astype(np.float64).reshape(75, 8, 78, 8).mean((1, 3)), atol=1e-3)
    s = prepare.coarsen(os.path.join(folder, "cut.tif"), str(tmp_path / "g.tif"), 8, degradation="gaussian")
    assert np.allclose(geotiff.read_geotiff(str(tmp_path / "g.tif"))[0][0],
                       prepare.gaussian_decimate(lst[:600, :624], 8), atol=1e-4)
    with pytest.raises(DataError, match="cut.tif: is an input"):
        prepare.coarsen(os.path.join(folder, "cut.tif"), os.path.join(folder, "cut.tif"), 8)
    with pytest.raises(SystemExit, match="--coarsen: give one --scale"):
        prepare.main(["--coarsen", os.path.join(folder, "cut.tif"), "--scale", "4", "8", "--out", str(tmp_path / "x")])


# --------------------------------------------------------------------------- --coarse-lst: reduced-resolution training


CX0, CY0, CPX, S = X0 + 37.0, Y0 - 53.0, 120.0, 4   # a coarse grid not aligned with the 30 m one


def overlap_weights(n_fine, n_coarse, fine0, coarse0, fine_px, coarse_px):
    """(n_coarse, n_fine) fraction of each fine pixel inside each coarse pixel along one axis (1-D interval
    overlaps; north-up grids in one CRS are separable)."""
    f0 = fine0 + fine_px * np.arange(n_fine)
    c0 = coarse0 + coarse_px * np.arange(n_coarse)
    lo = np.maximum(f0[None, :], c0[:, None])
    hi = np.minimum(f0[None, :] + fine_px, c0[:, None] + coarse_px)
    return np.clip(hi - lo, 0, None) / fine_px


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    """A 30 m scene whose LST is a known linear function of the guidance, its footprint means on a 120 m grid
    offset by (37, -53) m and larger than the scene (as a coarse sensor's), prepared in coarse mode at x4."""
    import footprint
    folder = str(tmp_path_factory.mktemp("coarse"))
    H, W = 480, 512
    _, gui = layout.synth_scene(H, W, seed=10)
    fine_lst = (300.0 + 0.004 * (gui[0] - 2700.0) - 15.0 * gui[8]).astype(np.float32)
    fine_geo, coarse_geo = geotiff.make_geo(X0, Y0, PX), geotiff.make_geo(CX0, CY0, CPX)
    geotiff.write_geotiff(os.path.join(folder, "gui.tif"), gui, fine_geo, band_names=BANDS)
    coarse_grid = footprint.Grid((130, 140), geotiff.corner_transform(coarse_geo), "EPSG:32647", "coarse")
    fp = footprint.Footprint(footprint.Grid.from_geotiff(os.path.join(folder, "gui.tif")), coarse_grid)
    lst = np.nan_to_num(fp.aggregate(fine_lst), nan=290.0)  # the coarse sensor sees beyond the fine scene
    geotiff.write_geotiff(os.path.join(folder, "modis.tif"), lst, coarse_geo, band_names=["lst"])
    out = os.path.join(folder, "out")
    summary = prepare.prepare([(os.path.join(folder, "modis.tif"), os.path.join(folder, "gui.tif"))], out,
                              scales=(S,), coarse=True)
    return {"out": out, "summary": summary, "gui": gui, "lst": lst, "folder": folder}


def test_coarse_mode_layout_and_georeferencing(coarse):
    s, out = coarse["summary"], coarse["out"]
    assert s["mode"] == "coarse" and s["tile"] == 32 and all(s["tiles"][k] > 0 for k in ("train", "val", "test"))
    assert sorted(os.listdir(out)) == ["120m", "30m", "base_x4.yaml", "cpu_mocolsk_x4.yaml", "prepare.yaml", "split",
                                       "stats.yaml"]
    # the coarse pixels the 30 m grid touches: its corner lies 53 m below and 37 m east of the fine one's, so
    # (480 * 30 - 53) / 120 -> 120 rows and (512 * 30 - 37) / 120 -> 128 columns from the coarse corner
    assert s["scenes"][0]["grids"]["crop"] == [0, 0, math.ceil((480 * PX - 53) / CPX), math.ceil((512 * PX - 37) / CPX)]
    for name in data.read_split(out, "train")[:3] + data.read_split(out, "test")[:2]:
        r, c = origin(name)
        hr, info = geotiff.read_geotiff(os.path.join(out, "30m", "lst", name + ".tif"))
        assert hr.shape == (1, 32, 32) and np.array_equal(hr[0], coarse["lst"][r:r + 32, c:c + 32])  # the target
        assert geotiff.geo_transform(info["geo"]) == (CX0 + c * CPX, CPX, 0.0, CY0 - r * CPX, 0.0, -CPX)
        lr, linfo = geotiff.read_geotiff(os.path.join(out, "120m", "lst", name + ".tif"))
        assert lr.shape == (1, 8, 8) and geotiff.geo_transform(linfo["geo"])[1] == S * CPX
        assert np.allclose(lr[0], hr[0].astype(np.float64).reshape(8, S, 8, S).mean((1, 3)), atol=1e-3)
        g, ginfo = geotiff.read_geotiff(os.path.join(out, "30m", "guidance", name + ".tif"))
        assert g.shape == (10, 32, 32) and ginfo["bands"] == list(BANDS) and ginfo["geo"] == info["geo"]


def test_coarse_mode_guidance_is_the_footprint_mean(coarse):
    """Every guidance tile equals the area-weighted mean of the 30 m guidance over each 120 m pixel, computed
    here from 1-D interval overlaps; pixels less than half covered are NaN (and their tiles skipped)."""
    out, gui = coarse["out"], coarse["gui"].astype(np.float64)
    wy = overlap_weights(480, 130, 0.0, 53.0, PX, CPX)     # rows: distance below the fine grid's top edge
    wx = overlap_weights(512, 140, 0.0, 37.0, PX, CPX)     # columns: east of the fine grid's left edge
    cover = wy.sum(1)[:, None] * wx.sum(1)[None, :] / (CPX / PX) ** 2
    with np.errstate(invalid="ignore"):  # coarse pixels outside the scene: 0 / 0
        expected = wy @ gui @ wx.T / (wy.sum(1)[:, None] * wx.sum(1)[None, :])
    expected[:, cover < 0.5] = np.nan
    names = sum((data.read_split(out, k) for k in ("train", "val", "test")), [])
    for name in names:
        r, c = origin(name)
        g = geotiff.read_geotiff(os.path.join(out, "30m", "guidance", name + ".tif"))[0]
        assert np.allclose(g, expected[:, r:r + 32, c:c + 32], rtol=1e-5, atol=1e-5, equal_nan=True), name
    assert any(np.isnan(expected[:, r:r + 32, c:c + 32]).any() for r, c in map(origin, names)) is False


def test_coarse_mode_statistics(coarse):
    """norm.guidance: the aggregated training guidance (what the model is trained on); stats.yaml also keeps
    the fine guidance's own statistics, to normalise nothing but to show the wider spread."""
    out, gui = coarse["out"], coarse["gui"]
    with open(os.path.join(out, "stats.yaml")) as f:
        stats = yaml.safe_load(f)
    with open(os.path.join(out, "base_x4.yaml")) as f:
        base = yaml.safe_load(f)
    assert base["norm"]["guidance"]["stats"] == data.compute_stats(out, "train", BANDS)["guidance"]
    for b, band in enumerate(BANDS):
        v = gui[b].astype(np.float64)
        assert stats["fine_guidance"][band]["mean"] == pytest.approx(v.mean(), abs=2e-4)
        assert stats["fine_guidance"][band]["std"] == pytest.approx(v.std(ddof=1), abs=2e-4)
        assert stats["fine_guidance"][band]["std"] > stats["guidance"]["stats"][band]["std"]  # aggregation smooths
    train, v = {"ndvi": {"min": 0.0, "max": 0.5, "std": 0.1}}, np.linspace(-0.1, 0.6, 100)
    outside = 100 * ((v < 0) | (v > 0.5)).mean()
    assert prepare.fine_guidance_warnings(train, {"ndvi": [v[:50], v[50:]]}) == [
        f"band ndvi: {outside:.1f} % of the fine guidance lies outside the aggregated training range 0..0.5 (fine std "
        f"{v.std():.4g}, aggregated 0.1): the model extrapolates there"]
    assert prepare.fine_guidance_warnings(train, {"ndvi": [np.linspace(0, 0.5, 100)]}) == []


def test_coarse_mode_arguments(coarse, tmp_path):
    modis, gui = os.path.join(coarse["folder"], "modis.tif"), os.path.join(coarse["folder"], "gui.tif")
    with pytest.raises(SystemExit, match="--coarse-lst .* and --lst / --scenes .* give one or the other"):
        prepare.main(["--coarse-lst", modis, "--lst", modis, "--guidance", gui, "--guidance", gui, "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="1 --coarse-lst but 0 --guidance"):
        prepare.main(["--coarse-lst", modis, "--out", str(tmp_path / "x")])


@pytest.mark.slow  # the command line, then a training run (2 iterations), in subprocesses
def test_coarse_mode_trains(coarse, run_script, tmp_path):
    out = str(tmp_path / "data")
    result = run_script(["prepare.py", "--coarse-lst", os.path.join(coarse["folder"], "modis.tif"), "--guidance",
                         os.path.join(coarse["folder"], "gui.tif"), "--scale", "4", "--out", out])
    assert result.returncode == 0 and "coarse scene(s)" in result.stdout, result.stderr[-2000:]
    assert data.read_split(out, "train") == data.read_split(coarse["out"], "train")  # the CLI is prepare(coarse=True)
    result = run_script(["train.py", os.path.join(out, "base_x4.yaml"), "model.name=srcnn", "train.max_iters=2",
                         "train.val_interval=2", f"work_dir={tmp_path / 'w'}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.exists(tmp_path / "w" / "best.pth")
