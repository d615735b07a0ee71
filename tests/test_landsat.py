"""landsat.py on generated Landsat 8 products shaped like real deliveries (C2 L2, C2 L1, C1 L1; MTL text and
XML) and on a real Collection 1 Level-1 cut (tests/data/landsat8_l1)."""
import importlib.util
import math
import os
import shutil

import numpy as np
import pytest
import tifffile
import yaml
from landsat_product import (
    BQA_PLACES,
    EPSG,
    FILL_BLOCK,
    PX,
    QA_PLACES,
    RADSAT_UNUSED,
    RADSAT_USED,
    ST_ZERO,
    X0,
    Y0,
    H,
    W,
    write_band,
    write_product,
)

import geotiff
import landsat

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "landsat8_l1")  # beside this file
FIXTURE_ID = "LC08_L1TP_195025_20130707_20170503_01_T1"


def run(product, out, *args):
    landsat.main([product, "--out", str(out), *map(str, args)])
    lst, lst_info = geotiff.read_geotiff(os.path.join(out, "lst.tif"))
    gui, gui_info = geotiff.read_geotiff(os.path.join(out, "guidance.tif"))
    with open(os.path.join(out, "landsat.yaml")) as f:
        summary = yaml.safe_load(f)
    return lst[0], gui, lst_info, gui_info, summary


def error_of(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        landsat.main(list(map(str, argv)))
    assert str(e.value).startswith("error: ")
    return str(e.value)


def expected_mask(p, names=("fill", "dilated_cloud", "cirrus", "cloud", "shadow")):
    """The pixels the test placed under the chosen conditions (+ saturation and DN 0), computed here."""
    m = np.zeros((H, W), bool)
    m[FILL_BLOCK] = True
    m[ST_ZERO] = True
    m[RADSAT_USED] = True
    for name in names:
        if name in QA_PLACES:
            m[QA_PLACES[name][0]] = True
    return m


@pytest.fixture(scope="module")
def l2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("l2")
    p = write_product(str(folder / "product"))
    return p, run(str(folder / "product"), folder / "out")


# --------------------------------------------------------------------------- Collection 2 Level-2


def test_l2_kelvin_reflectance_and_band_order(l2):
    p, (lst, gui, _, gui_info, summary) = l2
    ok = ~expected_mask(p)
    kelvin = p["dn"]["B10"] * 0.00341802 + 149.0           # the product's ST scale, computed here
    np.testing.assert_allclose(lst[ok], kelvin[ok], rtol=0, atol=1e-3)
    assert 280 < np.nanmin(lst) and np.nanmax(lst) < 320
    assert gui_info["bands"] == ["deepblue", "blue", "green", "red", "nir", "swir1", "swir2", "ndvi", "ndwi", "ndmi"]
    sr = {b: p["dn"][f"B{b}"] * 2.75e-05 - 0.2 for b in range(1, 8)}    # L2 SR scale, not the L1 TOA one
    for i in range(7):
        np.testing.assert_allclose(gui[i][ok], sr[i + 1][ok], rtol=0, atol=1e-6)
    red, nir, green, swir1 = sr[4], sr[5], sr[3], sr[6]
    np.testing.assert_allclose(gui[7][ok], ((nir - red) / (nir + red))[ok], atol=1e-5)
    np.testing.assert_allclose(gui[8][ok], ((green - nir) / (green + nir))[ok], atol=1e-5)
    np.testing.assert_allclose(gui[9][ok], ((nir - swir1) / (nir + swir1))[ok], atol=1e-5)
    assert summary["level"] == "L2" and "land surface temperature" in summary["lst_quantity"]


def test_l2_nan_exactly_where_chosen_qa_bits_are_set(l2, tmp_path):
    p, (lst, gui, *_, summary) = l2
    want = expected_mask(p)
    assert (np.isnan(lst) == want).all()
    assert (np.isnan(gui) == want[None]).all()                   # every band, same pixels
    assert not want[QA_PLACES["snow"][0]] and not want[RADSAT_UNUSED]  # snow not chosen, band 9 not used
    assert summary["masked_fraction"] == pytest.approx(want.mean())
    lst2, gui2, *_ = run(os.path.dirname(p["mtl"]), tmp_path / "o", "--mask", "fill,snow,water")
    want2 = expected_mask(p, ("fill", "snow", "water"))
    want2[RADSAT_USED] = False                                   # saturated not chosen this time
    assert (np.isnan(lst2) == want2).all() and (np.isnan(gui2) == want2[None]).all()


def test_l2_summary_printed(l2, tmp_path, capsys):
    p, _ = l2
    landsat.main([p["mtl"], "--out", str(tmp_path)])
    out = capsys.readouterr().out
    want = expected_mask(p).mean()
    assert f"masked (NaN in every band): {100 * want:.1f} %" in out
    assert "Collection 2 L2" in out


@pytest.mark.parametrize("point", [False, True], ids=["PixelIsArea", "PixelIsPoint"])
def test_georeferencing_equal_to_input(tmp_path, point):
    p = write_product(str(tmp_path / "p"), point=point)
    _, _, lst_info, gui_info, _ = run(str(tmp_path / "p"), tmp_path / "o")
    src = geotiff.read_header(os.path.join(tmp_path, "p", p["files"]["B10"]))["geo"]
    for info in (lst_info, gui_info):
        assert geotiff.pixel_is_point(info["geo"]) == point
        assert geotiff.geo_transform(info["geo"]) == geotiff.geo_transform(src)
        assert geotiff.geokeys(info["geo"]) == geotiff.geokeys(src)
        assert geotiff.corner_transform(info["geo"])[0] == X0 - (15.0 if point else 0.0)


@pytest.mark.parametrize("point", [False, True], ids=["PixelIsArea", "PixelIsPoint"])
def test_window_and_bbox_cut_the_full_output(tmp_path, point):
    write_product(str(tmp_path / "p"), point=point)
    lst, gui, info, _, _ = run(str(tmp_path / "p"), tmp_path / "full")
    r0, c0, rows, cols = 9, 5, 20, 16
    wl, wg, winfo, wginfo, summary = run(str(tmp_path / "p"), tmp_path / "win", "--window", r0, c0, rows, cols)
    np.testing.assert_array_equal(wl, lst[r0:r0 + rows, c0:c0 + cols])
    np.testing.assert_array_equal(wg, gui[:, r0:r0 + rows, c0:c0 + cols])
    want = geotiff.geo_window(info["geo"], r0, c0)
    for i in (winfo, wginfo):
        assert geotiff.geo_transform(i["geo"]) == pytest.approx(geotiff.geo_transform(want))
        assert geotiff.pixel_is_point(i["geo"]) == point
    assert summary["window"] == [r0, c0, rows, cols] and summary["scene_shape"] == [H, W]
    # the same pixels as a map box (corners inside the first / last pixel)
    x0, y0 = X0 + c0 * PX + 1, Y0 - (r0 + rows) * PX + 1
    x1, y1 = X0 + (c0 + cols) * PX - 1, Y0 - r0 * PX - 1
    if point:  # the tiepoint is the centre of pixel (0, 0): corners are half a pixel up-left
        x0, x1, y0, y1 = x0 - 15, x1 - 15, y0 + 15, y1 + 15
    bl, bg, binfo, _, _ = run(str(tmp_path / "p"), tmp_path / "box", "--bbox", x0, y0, x1, y1)
    np.testing.assert_array_equal(bl, wl)
    np.testing.assert_array_equal(bg, wg)
    assert geotiff.geo_transform(binfo["geo"]) == pytest.approx(geotiff.geo_transform(want))


def test_mtl_xml_variant_gives_the_same_output(tmp_path, l2):
    _, (lst, gui, *_) = l2
    p = write_product(str(tmp_path / "p"), xml=True)
    assert p["mtl"].endswith("_MTL.xml")
    xl, xg, xinfo, *_ = run(str(tmp_path / "p"), tmp_path / "o")
    np.testing.assert_array_equal(xl, lst)
    np.testing.assert_array_equal(xg, gui)
    assert landsat.read_mtl(p["mtl"])["LEVEL2_SURFACE_TEMPERATURE_PARAMETERS"]["TEMPERATURE_MULT_BAND_ST_B10"] == "3.4180E-03"


def test_renamed_files_with_file_option(tmp_path, l2, capsys):
    _, (lst, gui, *_) = l2
    p = write_product(str(tmp_path / "p"))
    folder = str(tmp_path / "p")
    os.rename(os.path.join(folder, p["files"]["B10"]), os.path.join(folder, "thermal.tif"))
    os.rename(os.path.join(folder, p["files"]["QA"]), os.path.join(folder, "qa.tif"))
    msg = error_of(capsys, folder, "--out", tmp_path / "o")
    assert p["files"]["B10"] in msg and "FILE_NAME_BAND_ST_B10" in msg and "--file B10=" in msg
    rl, rg, *_ = run(folder, tmp_path / "o", "--file", "ST_B10=" + os.path.join(folder, "thermal.tif"),
                     "--file", "QA=" + os.path.join(folder, "qa.tif"))
    np.testing.assert_array_equal(rl, lst)
    np.testing.assert_array_equal(rg, gui)


def test_errors_name_the_key_band_or_crs(tmp_path, capsys):
    p = write_product(str(tmp_path / "p"), drop=("TEMPERATURE_MULT_BAND_ST_B10",))
    msg = error_of(capsys, p["mtl"], "--out", tmp_path / "o")
    assert "TEMPERATURE_MULT_BAND_ST_B10" in msg and "LEVEL2_SURFACE_TEMPERATURE_PARAMETERS" in msg
    p = write_product(str(tmp_path / "q"))
    dem = str(tmp_path / "dem.tif")
    geotiff.write_geotiff(dem, np.ones((H, W), np.float32), geotiff.make_geo(X0, Y0, PX, epsg=32634))
    msg = error_of(capsys, p["mtl"], "--out", tmp_path / "o", "--dem", dem)
    assert "dem.tif" in msg and "CRS" in msg and "32634" in msg
    assert "unknown clouds" in error_of(capsys, p["mtl"], "--out", tmp_path / "o", "--mask", "fill,clouds")
    assert "outside the scene" in error_of(capsys, p["mtl"], "--out", tmp_path / "o", "--window", 40, 0, 10, 10)
    assert "Level-2" in error_of(capsys, p["mtl"], "--out", tmp_path / "o", "--emissivity", "ndvi")
    other = write_product(str(tmp_path / "r"))
    shutil.copy(os.path.join(tmp_path, "r", other["files"]["B4"]), os.path.join(tmp_path, "q", p["files"]["B4"]))
    small = str(tmp_path / "small.tif")
    write_band(small, np.ones((H // 2, W), np.uint16), p["geo"])
    msg = error_of(capsys, p["mtl"], "--out", tmp_path / "o", "--file", f"B4={small}")
    assert "small.tif" in msg and "band B4" in msg and "\n" not in msg


def test_dem_same_grid_and_resampled(tmp_path):
    p = write_product(str(tmp_path / "p"))
    same = np.arange(H * W, dtype=np.float32).reshape(H, W)
    geotiff.write_geotiff(str(tmp_path / "same.tif"), same, p["geo"])
    _, gui, _, gi, s = run(str(tmp_path / "p"), tmp_path / "a", "--dem", tmp_path / "same.tif")
    ok = ~expected_mask(p)
    assert gi["bands"][-1] == "dem" and s["dem_resampling"] == "same grid"
    np.testing.assert_allclose(gui[-1][ok], same[ok], atol=1e-3)
    # a 60 m DEM, linear in x and y: bilinear at the 30 m centres reproduces the plane inside the DEM
    cy, cx = np.mgrid[0:H // 2, 0:W // 2]
    coarse = (100 + 2.0 * (cx * 60 + 30) + 0.5 * (cy * 60 + 30)).astype(np.float32)  # metres at the 60 m centres
    geotiff.write_geotiff(str(tmp_path / "coarse.tif"), coarse, geotiff.make_geo(X0, Y0, 60.0, epsg=EPSG))
    _, gui, _, _, s = run(str(tmp_path / "p"), tmp_path / "b", "--dem", tmp_path / "coarse.tif")
    fy, fx = np.mgrid[0:H, 0:W]
    plane = 100 + 2.0 * (fx * 30 + 15) + 0.5 * (fy * 30 + 15)
    inner = ok.copy()
    inner[[0, -1], :] = inner[:, [0, -1]] = False        # edge centres lie outside the outer 60 m centres: clamped
    np.testing.assert_allclose(gui[-1][inner], plane[inner], rtol=1e-5)
    assert s["dem_resampling"].startswith("bilinear")


# --------------------------------------------------------------------------- Level-1


def bt_expected(dn):
    radiance = dn * 3.342e-04 + 0.1
    return 1321.0789 / np.log(774.8853 / radiance + 1)


@pytest.mark.parametrize("collection", [2, 1])
def test_l1_brightness_temperature_toa_reflectance_and_qa(tmp_path, collection, capsys):
    p = write_product(str(tmp_path / "p"), level="L1", collection=collection)
    lst, gui, info, _, summary = run(str(tmp_path / "p"), tmp_path / "o")
    out = capsys.readouterr().out
    if collection == 2:
        want = expected_mask(p)
    else:  # C1 BQA: cloud bit, high shadow / cirrus confidence; medium cirrus kept; no RADSAT file
        want = np.zeros((H, W), bool)
        want[FILL_BLOCK] = want[ST_ZERO] = True
        for name in ("cloud", "shadow", "cirrus"):
            want[BQA_PLACES[name][0]] = True
        assert summary["mask_not_in_qa"] == ["dilated_cloud"]
    assert (np.isnan(lst) == want).all() and (np.isnan(gui) == want[None]).all()
    ok = ~want
    np.testing.assert_allclose(lst[ok], bt_expected(p["dn"]["B10"])[ok], atol=2e-3)
    toa = (p["dn"]["B4"] * 2.0e-05 - 0.1) / math.sin(math.radians(41.5))
    np.testing.assert_allclose(gui[3][ok], toa[ok], atol=1e-6)
    assert "NOT land surface temperature" in summary["lst_quantity"]
    assert "brightness temperature, not LST" in out
    assert info["bands"] == ["bt"]


def test_l1_ndvi_emissivity_correction(tmp_path):
    write_product(str(tmp_path / "p"), level="L1")
    bt, gui, *_ = run(str(tmp_path / "p"), tmp_path / "bt")
    lst, *_, summary = run(str(tmp_path / "p"), tmp_path / "lst", "--emissivity", "ndvi")
    ndvi, red = gui[7], gui[3]
    ok = np.isfinite(bt)
    # Sobrino et al. (2004), computed here
    pv = ((ndvi - 0.2) / 0.3) ** 2
    eps = np.where(ndvi < 0.2, 0.979 - 0.035 * red, np.where(ndvi > 0.5, 0.99, 0.986 + 0.004 * pv))
    want = bt / (1 + (10.895e-6 * bt / 1.4388e-2) * np.log(eps))
    np.testing.assert_allclose(lst[ok], want[ok], atol=2e-3)
    assert (ndvi[ok] < 0.2).any() and (ndvi[ok] > 0.5).any() and ((ndvi[ok] > 0.2) & (ndvi[ok] < 0.5)).any()
    assert (lst[ok] > bt[ok]).all() and "Sobrino" in summary["lst_quantity"]


# --------------------------------------------------------------------------- the real scene


def test_real_landsat8_c1_l1_scene(tmp_path):
    lst, gui, info, gui_info, summary = run(FIXTURE, tmp_path, "--dem", os.path.join(FIXTURE, "DEM.TIF"))
    assert summary["product"] == FIXTURE_ID and summary["collection"] == 1 and summary["level"] == "L1"
    assert np.isfinite(lst).all() and 250 < lst.min() and lst.max() < 330
    dn = tifffile.imread(os.path.join(FIXTURE, FIXTURE_ID + "_B10.TIF")).astype(np.float64)
    np.testing.assert_allclose(lst, bt_expected(dn), atol=2e-3)   # this MTL's constants are the test's
    src = geotiff.read_header(os.path.join(FIXTURE, FIXTURE_ID + "_B10.TIF"))["geo"]
    for i in (info, gui_info):
        assert geotiff.geo_transform(i["geo"]) == geotiff.geo_transform(src)
        assert geotiff.crs_of(i["geo"]) == geotiff.crs_of(src) and geotiff.crs_of(src)[2] == 32632
    assert 150 < np.nanmin(gui[-1]) and np.nanmax(gui[-1]) < 300           # the DEM, metres
    assert np.nanmin(gui[:7]) > 0 and np.nanmax(gui[:7]) < 1                 # TOA reflectance


def test_lzw_band_needs_imagecodecs(tmp_path, capsys):
    folder = str(tmp_path / "scene")
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("lzw"))
    shutil.copy(os.path.join(FIXTURE, "lzw", FIXTURE_ID + "_B10.TIF"), folder)
    if importlib.util.find_spec("imagecodecs") is None:
        msg = error_of(capsys, folder, "--out", tmp_path / "o")
        assert "imagecodecs" in msg and "B10.TIF" in msg and "\n" not in msg
    else:
        lst, *_ = run(folder, tmp_path / "o")
        ref, *_ = run(FIXTURE, tmp_path / "ref")
        np.testing.assert_array_equal(lst, ref)


# --------------------------------------------------------------------------- into the toolkit


def test_landsat_output_prepares_a_dataset(tmp_path, capsys):
    import prepare
    folder = str(tmp_path / "p")
    write_product(folder, h=64, w=64)
    landsat.main([folder, "--out", str(tmp_path / "scene")])
    assert "wrote" in capsys.readouterr().out
    prepare.main(["--lst", str(tmp_path / "scene" / "lst.tif"), "--guidance", str(tmp_path / "scene" / "guidance.tif"),
                  "--out", str(tmp_path / "data"), "--tile", "16", "--step", "16", "--scales", "2", "4",
                  "--max-nodata", "0.1", "--split", "0.5", "0.25", "0.25"])
    with open(tmp_path / "data" / "prepare.yaml") as f:
        prepared = yaml.safe_load(f)
    text = yaml.safe_dump(prepared)
    assert "ndmi" in text and "swir2" in text
    tiles = os.listdir(tmp_path / "data" / "30m" / "lst")
    assert len(tiles) >= 8
    gui, info = geotiff.read_geotiff(os.path.join(tmp_path, "data", "30m", "guidance", tiles[0]))
    assert info["bands"][:3] == ["deepblue", "blue", "green"] and gui.shape == (10, 16, 16)
