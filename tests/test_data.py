import os
import shutil

import numpy as np
import pytest
import torch

import data
import geotiff
import layout
from data import BANDS, DataError, GrokLSTDataset, Normalizer


def copy_demo(demo_root, tmp_path):
    root = str(tmp_path / "ds")
    shutil.copytree(demo_root, root)
    return root


def test_reads_demo_tif(demo_root):
    ds = GrokLSTDataset(demo_root, "train", 8, BANDS)
    item = ds[0]
    assert item["lr_lst"].shape == (1, 8, 8) and item["hr_lst"].shape == (1, 64, 64)
    assert item["hr_guidance"].shape == (10, 64, 64)
    assert all(item[k].dtype == torch.float32 for k in ("lr_lst", "hr_lst", "hr_guidance"))
    assert torch.equal(item["mask"], torch.isfinite(item["hr_lst"]))
    # Wald's protocol: the LR tile is the block mean of the HR tile
    hr = item["hr_lst"].numpy()
    assert np.allclose(item["lr_lst"].numpy(), data.block_mean(hr, 8), equal_nan=True)
    assert "hr_guidance" not in GrokLSTDataset(demo_root, "train", 8, ())[0]  # SISR loads no guidance


def test_band_subset_in_any_order(demo_root):
    full = GrokLSTDataset(demo_root, "val", 4, BANDS)[0]["hr_guidance"]
    sub = GrokLSTDataset(demo_root, "val", 4, ["ndvi", "dem"])[0]["hr_guidance"]
    assert torch.equal(sub, full[[BANDS.index("ndvi"), BANDS.index("dem")]])


def test_demo_is_deterministic_and_plausible(tmp_path):
    layout.make_demo(str(tmp_path / "a"), n_tiles=4, size=32, seed=7)
    layout.make_demo(str(tmp_path / "b"), n_tiles=4, size=32, seed=7)
    a, _ = geotiff.read_geotiff(str(tmp_path / "a/30m/lst/tile_001.tif"))
    b, _ = geotiff.read_geotiff(str(tmp_path / "b/30m/lst/tile_001.tif"))
    assert np.array_equal(a, b, equal_nan=True)
    lst, gui = layout.synth_scene(256, 256, seed=1)
    assert 270 < lst.mean() < 295 and 6 < lst.std() < 20
    dem, red, nir, ndvi = gui[0], gui[4], gui[6], gui[8]
    assert 500 < dem.min() and dem.max() < 5500
    assert np.allclose(ndvi, (nir - red) / (nir + red), atol=1e-5)  # indices consistent with bands


def test_split_with_integer_indices(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path)
    with open(os.path.join(root, "split", "idx.txt"), "w") as f:
        f.write("3\n\n0 extra-token\n")
    stems = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(root, "30m", "lst")))
    assert GrokLSTDataset(root, "idx", 2).names == [stems[3], stems[0]]


def test_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "mat"
    for sub in ("30m/lst", "30m/guidance", "120m/lst", "split"):
        (root / sub).mkdir(parents=True)
    lst, gui = layout.synth_scene(32, 32, seed=2)
    scipy_io.savemat(root / "30m/lst/0001.mat", {"data": lst})
    scipy_io.savemat(root / "120m/lst/0001.mat", {"data": data.block_mean(lst, 4)})
    scipy_io.savemat(root / "30m/guidance/0001.mat", {b: g for b, g in zip(BANDS, gui)})
    (root / "split/test.txt").write_text("0\n")  # the original's index format
    item = GrokLSTDataset(str(root), "test", 4, ["nir", "dem"])[0]
    assert torch.allclose(item["hr_lst"][0], torch.from_numpy(lst))
    assert torch.allclose(item["hr_guidance"], torch.from_numpy(gui[[6, 0]]))
    scipy_io.savemat(root / "30m/guidance/0001.mat", {b: g for b, g in zip(BANDS[:3], gui)})
    with pytest.raises(DataError, match=r"0001\.mat: no variable 'nir'"):
        GrokLSTDataset(str(root), "test", 4, ["nir"])[0]


def test_missing_file_in_split(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path)
    name = open(os.path.join(root, "split", "test.txt")).readline().strip()
    os.remove(os.path.join(root, "240m", "lst", name + ".tif"))
    with pytest.raises(DataError, match=rf"240m/lst/{name}.*not found"):
        GrokLSTDataset(root, "test", 8)
    with pytest.raises(DataError, match="nosplit.txt: split file not found"):
        GrokLSTDataset(root, "nosplit", 8)
    with open(os.path.join(root, "split", "bad.txt"), "w") as f:
        f.write("no_such_tile\n")
    with pytest.raises(DataError, match="line 1: 'no_such_tile'"):
        GrokLSTDataset(root, "bad", 8)


def test_shape_mismatch(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path)
    name = open(os.path.join(root, "split", "test.txt")).readline().strip()
    geotiff.write_geotiff(os.path.join(root, "120m", "lst", name + ".tif"), np.full((8, 8), 290.0, np.float32))
    with pytest.raises(DataError, match=rf"120m/lst/{name}.tif: LR shape \(8, 8\) x scale 4"):
        GrokLSTDataset(root, "test", 4)[0]
    geotiff.write_geotiff(os.path.join(root, "30m", "guidance", name + ".tif"),
                       np.zeros((10, 32, 32), np.float32), band_names=BANDS)
    with pytest.raises(DataError, match=rf"guidance/{name}.tif: guidance shape \(32, 32\)"):
        GrokLSTDataset(root, "test", 8, BANDS)[0]


def test_band_count_and_names(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path)
    name = open(os.path.join(root, "split", "test.txt")).readline().strip()
    geotiff.write_geotiff(os.path.join(root, "30m", "lst", name + ".tif"), np.zeros((2, 64, 64), np.float32))
    with pytest.raises(DataError, match="LST raster has 2 bands, expected 1"):
        GrokLSTDataset(root, "test", 8)[0]
    gpath = os.path.join(root, "30m", "guidance", name + ".tif")
    geotiff.write_geotiff(gpath, np.zeros((7, 64, 64), np.float32))
    with pytest.raises(DataError, match="7 unnamed bands"):
        data.read_guidance(gpath, list(BANDS))
    geotiff.write_geotiff(gpath, np.zeros((2, 64, 64), np.float32), band_names=["dem", "red"])
    with pytest.raises(DataError, match=r"no band 'nir' \(file has \['dem', 'red'\]\)"):
        data.read_guidance(gpath, ["dem", "nir"])


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"this is not a tiff")
    with pytest.raises(DataError, match="broken.tif: unreadable GeoTIFF"):
        data.read_lst(str(path))


def test_geotiff_round_trip(tmp_path):
    geo = geotiff.make_geo(500000.0, 4300000.0, 30.0, epsg=32650)
    array = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    array[0, 1, 2] = np.nan
    path = str(tmp_path / "g.tif")
    geotiff.write_geotiff(path, array, geo, band_names=["a", "b"], nodata=-9999.0)
    back, info = geotiff.read_geotiff(path)
    assert np.array_equal(back, array, equal_nan=True)
    assert info["bands"] == ["a", "b"] and info["nodata"] == -9999.0
    assert info["geo"][geotiff.TAG_PIXEL_SCALE][2] == (30.0, 30.0, 0.0)
    assert info["geo"][geotiff.TAG_TIEPOINT][2] == (0.0, 0.0, 0.0, 500000.0, 4300000.0, 0.0)
    assert info["geo"][geotiff.TAG_GEOKEYS][2][15] == 32650
    assert geotiff.geo_transform(geotiff.geo_window(geo, 2, 3, 4)) == (500090.0, 7.5, 0.0, 4299940.0, 0.0, -7.5)


@pytest.mark.parametrize("method", ["zscore", "minmax", "none"])
def test_normalisation_round_trip(method):
    stats = {"mean": 282.5, "std": 14.6, "min": 243.5, "max": 320.9}
    norm = {"lst": dict(stats, method=method),
            "guidance": {"method": method, "stats": {"dem": {"mean": 2569.4, "std": 1254.4, "min": 905.4, "max": 5082.1},
                                                      "ndvi": {"mean": 0.14, "std": 0.1, "min": -0.52, "max": 0.71}}}}
    n = Normalizer(norm, ["ndvi", "dem"])
    x = 270 + 20 * torch.rand(2, 1, 4, 4, dtype=torch.float32)
    assert torch.allclose(n.decode_lst(n.encode_lst(x)), x, atol=1e-4)
    g = torch.stack([torch.full((4, 4), 0.34), torch.full((4, 4), 3823.8)])[None]
    enc = n.encode_guidance(g)
    if method == "zscore":
        assert torch.allclose(enc, torch.tensor([2.0, 1.0]).view(1, 2, 1, 1).expand_as(enc), atol=1e-4)
    x[0, 0, 0, 0] = float("nan")
    assert n.encode_lst(x)[0, 0, 0, 0] == 0  # no-data enters the model as the mean


def test_normaliser_errors():
    with pytest.raises(data.ConfigError, match="no entry for band 'nir'"):
        Normalizer({"lst": {"method": "zscore", "mean": 1, "std": 1}, "guidance": {"method": "zscore", "stats": {}}}, ["nir"])
    with pytest.raises(ValueError, match="norm.lst.std must be > 0"):
        Normalizer({"lst": {"method": "zscore", "mean": 1, "std": 0}, "guidance": {"method": "zscore", "stats": {}}})


def test_stats(demo_root):
    stats = data.compute_stats(demo_root, "train", ["dem"])
    names = data.read_split(demo_root, "train")
    hr = np.stack([data.read_lst(os.path.join(demo_root, "30m/lst", n + ".tif"))[0] for n in names])
    assert np.isclose(stats["lst"]["30m"]["mean"], np.nanmean(hr), atol=1e-3)
    assert np.isclose(stats["lst"]["30m"]["std"], np.nanstd(hr, ddof=1), atol=1e-3)
    assert set(stats["lst"]) == {"30m", "60m", "120m", "240m"} and set(stats["guidance"]) == {"dem"}


def test_cache_is_used_and_invalidated(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path)
    plain = GrokLSTDataset(root, "val", 8, BANDS)[0]
    cached = GrokLSTDataset(root, "val", 8, BANDS, cache=True)
    first = cached[0]
    assert all(torch.equal(first[k], plain[k]) for k in ("lr_lst", "hr_guidance"))
    assert torch.equal(first["hr_lst"].nan_to_num(), plain["hr_lst"].nan_to_num())
    files = os.listdir(os.path.join(root, ".cache"))
    assert len(files) == 3 and all(f.endswith(".npy") for f in files)
    again = cached[0]  # now from the memory-mapped copies
    assert torch.equal(again["lr_lst"], first["lr_lst"])
    # a changed source invalidates its copy
    path = cached.paths[0]["lr_lst"]
    new = np.full(first["lr_lst"].shape[1:], 300.0, np.float32)
    geotiff.write_geotiff(path, new)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
    assert torch.all(cached[0]["lr_lst"] == 300.0)
    assert len(os.listdir(os.path.join(root, ".cache"))) == 3  # the stale copy was replaced


def test_holes_filled_from_neighbours_not_the_mean(config):
    """A collar of no-data beside valid pixels (a scene edge, a cloud edge): bicubic downscaling of the valid part
    equals that of the scene cropped to it, to 1e-3 K, outside the hole's own footprint. Filling holes with the
    normalisation mean (before) pulled the first valid LR pixels by several kelvin in a 264-306 K scene."""
    import engine
    import groklst
    cfg = groklst.load_config(config("bicubic_x8"))
    model, normalizer = groklst.build_model(cfg), groklst.build_normalizer(cfg)
    hr, _ = layout.synth_scene(256, 256, seed=5)
    lr = torch.from_numpy(data.block_mean(hr, 8))[None, None]
    assert lr.max() - lr.min() > 20  # a scene with contrast, so a wrong fill shows
    holey = lr.clone()
    holey[..., :, 20:] = float("nan")   # a collar on the right
    holey[..., 26:, :] = float("nan")   # and at the bottom
    with torch.no_grad():
        full = engine.downscale(model, normalizer, holey)
        cropped = engine.downscale(model, normalizer, lr[..., :26, :20])
    diff = (full[..., :26 * 8, :20 * 8] - cropped).abs()
    assert diff.max() < 1e-3, diff.max()
    # an interior cloud: values around it stay near the valid neighbours' range, not the normalisation mean
    cloud = lr.clone()
    cloud[..., 10:14, 10:14] = float("nan")
    filled = data.fill_holes(cloud)
    ring = lr[..., 9:15, 9:15]
    assert torch.isfinite(filled).all() and torch.equal(filled[torch.isfinite(cloud)], cloud[torch.isfinite(cloud)])
    assert ring.min() - 1e-4 <= filled[..., 10:14, 10:14].min() and filled[..., 10:14, 10:14].max() <= ring.max() + 1e-4


def test_fill_holes_rings_and_empty():
    x = torch.full((1, 1, 5, 5), float("nan"))
    assert torch.isnan(data.fill_holes(x)).all()  # nothing to fill from
    x[0, 0, 2, 2] = 300.0
    one = data.fill_holes(x, rings=1)
    assert torch.isfinite(one).sum() == 5 and (one[torch.isfinite(one)] == 300.0).all()  # the cross only
    assert (data.fill_holes(x) == 300.0).all()


def test_lr_folder_rule():
    assert {s: data.lr_folder(s) for s in (2, 4, 8)} == data.LR_FOLDERS == {2: "60m", 4: "120m", 8: "240m"}
    assert (data.lr_folder(16), data.lr_folder(32), data.lr_folder(3)) == ("480m", "960m", "90m")
    for bad in (1, 0, 2.0, True, "8"):
        with pytest.raises(DataError, match=f"scale {bad!r}: expected an integer >= 2"):
            data.lr_folder(bad)


def test_any_integer_scale_on_disk(tmp_path):
    """A dataset written at x4 and x16 (480m) reads at both, with Wald's block means and the LR grid's
    georeferencing; a scale it lacks is a one-line error naming the folder and the scales present."""
    root = str(tmp_path / "ds")
    lst, gui = layout.synth_scene(64, 96, seed=6)
    layout.make_layout(root, (4, 16))
    geo = geotiff.make_geo(500000.0, 4300000.0, 30.0)
    layout.write_sample(root, "a", lst, gui, BANDS, geo, scales=(4, 16))
    layout.write_splits(root, {"train": ["a"], "val": [], "test": []})
    assert data.dataset_scales(root) == [4, 16] and sorted(os.listdir(root)) == ["120m", "30m", "480m", "split"]
    item = GrokLSTDataset(root, "train", 16, ["ndvi"])[0]
    assert item["lr_lst"].shape == (1, 4, 6) and item["hr_guidance"].shape == (1, 64, 96)
    ref = lst.astype(np.float64).reshape(4, 16, 6, 16).mean((1, 3))  # the block means, computed here
    assert np.allclose(item["lr_lst"][0].numpy(), ref, atol=1e-3)
    lr_geo = geotiff.read_header(os.path.join(root, "480m", "lst", "a.tif"))["geo"]
    assert geotiff.geo_transform(lr_geo) == (500000.0, 480.0, 0.0, 4300000.0, 0.0, -480.0)
    assert set(data.compute_stats(root, "train", ["ndvi"])["lst"]) == {"30m", "120m", "480m"}
    with pytest.raises(DataError, match=r"240m/lst: no LR LST for scale 8 \(this dataset has scales \[4, 16\]; "
                                        r"prepare.py --scales 8"):
        GrokLSTDataset(root, "train", 8)


def test_lst_quantity(demo_root, tmp_path):
    """The LST quantity of a dataset is its first HR LST tile's band description (Landsat Level-1: 'bt')."""
    assert data.lst_quantity(demo_root) == "lst"  # no description
    root = str(tmp_path / "bt")
    lst, gui = layout.synth_scene(32, 32, seed=7)
    layout.make_layout(root, (8,))
    for name in ("b", "a"):
        layout.write_sample(root, name, lst, gui, BANDS, {}, scales=(8,), quantity="bt")
    assert data.lst_quantity(root) == "bt" and data.LST_QUANTITIES["bt"] == "brightness temperature"
    assert geotiff.read_header(os.path.join(root, "240m", "lst", "a.tif"))["bands"] == ["bt"]
    assert data.lst_quantity_of(["LST_Day_1km"]) == "lst" and data.lst_quantity_of(["BT_Emissivity_Corrected"]) == \
        "bt_emissivity_corrected"
