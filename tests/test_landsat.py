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
    PRE_BQA_PLACES,
    PRE_SCENE_ID,
    PX,
    QA_PLACES,
    RADSAT_UNUSED,
    RADSAT_USED,
    ST_MULT,
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


# --------------------------------------------------------------------------- pre-collection BQA


def pre_expected(names):
    """Pixels a pre-collection BQA masks for `names`, from the places the generator set (bit layout in
    landsat_product.PRE_BQA_PLACES), plus DN 0 fill (FILL_BLOCK, ST_ZERO)."""
    want = np.zeros((H, W), bool)
    want[FILL_BLOCK] = want[ST_ZERO] = True
    places = {"fill": ("dropped_frame",), "cloud": ("cloud", "cloud_pixel"), "cirrus": ("cirrus",),
              "snow": ("snow",), "water": ("water",)}
    for name in names:
        for place in places.get(name, ()):
            want[PRE_BQA_PLACES[place][0]] = True
    return want


def test_pre_collection_bqa_uses_its_own_bits(tmp_path):
    write_product(str(tmp_path / "p"), level="L1", collection="pre")
    cloud = np.zeros((H, W), bool)
    cloud[PRE_BQA_PLACES["cloud"][0]] = True
    assert cloud.mean() > 0.06                                           # a scene with 6 % high-confidence cloud
    lst, gui, _, _, summary = run(str(tmp_path / "p"), tmp_path / "c", "--mask", "cloud")
    assert (np.isnan(lst) == pre_expected(["cloud"])).all() and (np.isnan(gui) == pre_expected(["cloud"])[None]).all()
    assert summary["collection"] == "pre-collection" and summary["product"] == PRE_SCENE_ID
    assert summary["masked_by"]["cloud"] == pytest.approx((cloud.sum() + 1) / (H * W))
    lst, *_, summary = run(str(tmp_path / "p"), tmp_path / "d")                      # the default mask
    assert (np.isnan(lst) == pre_expected(["fill", "cloud", "cirrus"])).all()         # medium confidence kept
    assert summary["mask_not_in_qa"] == ["dilated_cloud", "shadow", "saturated"]
    lst, *_ = run(str(tmp_path / "p"), tmp_path / "e", "--mask", "snow,water")
    assert (np.isnan(lst) == pre_expected(["snow", "water"])).all()


def test_product_named_by_the_mtl_not_the_file_name(tmp_path):
    p = write_product(str(tmp_path / "p"), level="L1", collection="pre")
    os.rename(p["mtl"], str(tmp_path / "p" / "scene_MTL.txt"))
    *_, summary = run(str(tmp_path / "p"), tmp_path / "o")
    assert summary["product"] == PRE_SCENE_ID and summary["collection"] == "pre-collection"
    q = write_product(str(tmp_path / "q"))
    os.rename(q["mtl"], str(tmp_path / "q" / "x_MTL.txt"))
    *_, summary = run(str(tmp_path / "q"), tmp_path / "o2")
    assert summary["product"] == "LC08_L2SP_193023_20230704_20230712_02_T1"


# --------------------------------------------------------------------------- DEM voids and coverage


def test_dem_untagged_voids_are_nodata(tmp_path):
    p = write_product(str(tmp_path / "p"))
    dem = np.full((H, W), 250.0, np.float32) + np.arange(W, dtype=np.float32)
    voids = {(20, 10): -32768.0, (21, 11): -9999.0, (22, 12): -3.4028235e38}
    for place, value in voids.items():
        dem[place] = value
    geotiff.write_geotiff(str(tmp_path / "dem.tif"), dem, p["geo"], nodata=None)    # no GDAL_NODATA tag
    assert geotiff.read_header(str(tmp_path / "dem.tif"))["nodata"] is None
    _, gui, _, _, s = run(str(tmp_path / "p"), tmp_path / "o", "--dem", tmp_path / "dem.tif")
    ok = ~expected_mask(p)
    void = np.zeros((H, W), bool)
    void[tuple(np.array(list(voids)).T)] = True
    assert np.isnan(gui[-1][void]).all()
    np.testing.assert_array_equal(gui[-1][ok & ~void], dem[ok & ~void])    # same grid: neighbours untouched
    assert s["dem_voids_read_as_nodata"] == [-32768.0, -9999.0, -3.4028235e38]
    # a tagged file keeps its own no-data: -9999 is then an elevation (a valid, if odd, value)
    geotiff.write_geotiff(str(tmp_path / "tagged.tif"), dem, p["geo"], nodata=-32768.0)
    _, gui, *_ = run(str(tmp_path / "p"), tmp_path / "t", "--dem", tmp_path / "tagged.tif")
    assert np.isnan(gui[-1][20, 10]) and gui[-1][21, 11] == -9999.0


def test_dem_covering_too_little_of_the_scene_is_refused(tmp_path, capsys):
    p = write_product(str(tmp_path / "p"))
    dem = np.full((H, W), 300.0, np.float32)
    far = geotiff.make_geo(X0 + 10 * W * PX, Y0, PX, epsg=EPSG)                      # beside the scene
    geotiff.write_geotiff(str(tmp_path / "far.tif"), dem, far)
    msg = error_of(capsys, p["mtl"], "--out", tmp_path / "o", "--dem", tmp_path / "far.tif")
    assert "far.tif" in msg and "0.0 %" in msg and "\n" not in msg
    assert f"x {X0:.3f}..{X0 + W * PX:.3f}" in msg and f"x {X0 + 10 * W * PX:.3f}.." in msg   # both extents
    half = geotiff.make_geo(X0 + 0.6 * W * PX, Y0, PX, epsg=EPSG)                    # covers 40 % of the columns
    geotiff.write_geotiff(str(tmp_path / "half.tif"), dem, half)
    assert "at least 50 %" in error_of(capsys, p["mtl"], "--out", tmp_path / "o", "--dem", tmp_path / "half.tif")
    most = geotiff.make_geo(X0 + 0.25 * W * PX, Y0, PX, epsg=EPSG)                   # 75 %: accepted, NaN elsewhere
    geotiff.write_geotiff(str(tmp_path / "most.tif"), dem, most)
    _, gui, *_, s = run(str(tmp_path / "p"), tmp_path / "m", "--dem", tmp_path / "most.tif")
    inside = ~expected_mask(p)
    inside[:, :W // 4] = False
    assert np.isnan(gui[-1][:, :W // 4 - 1]).all() and (gui[-1][inside] == 300).all()


# --------------------------------------------------------------------------- temperature checked where it is made


def test_mtl_scale_wrong_by_ten_is_refused(tmp_path, capsys):
    p = write_product(str(tmp_path / "p"), replace={"TEMPERATURE_MULT_BAND_ST_B10": f"{10 * ST_MULT:.4E}"})
    msg = error_of(capsys, p["mtl"], "--out", tmp_path / "o")
    assert "TEMPERATURE_MULT_BAND_ST_B10 = 0.03418" in msg and "150..400 K" in msg and "\n" not in msg
    assert not os.path.exists(tmp_path / "o" / "lst.tif")
    q = write_product(str(tmp_path / "q"), level="L1", replace={"RADIANCE_MULT_BAND_10": "3.3420E-03"})
    assert "RADIANCE_MULT_BAND_10" in error_of(capsys, q["mtl"], "--out", tmp_path / "o")


def test_l2_st_band_all_fill_is_refused(tmp_path, capsys):
    p = write_product(str(tmp_path / "p"))
    write_band(os.path.join(tmp_path, "p", p["files"]["B10"]), np.zeros((H, W)), p["geo"])
    msg = error_of(capsys, p["mtl"], "--out", tmp_path / "o")
    assert p["files"]["B10"] in msg and "fill" in msg and "every pixel" in msg and "\n" not in msg


# --------------------------------------------------------------------------- files: only those used, found by suffix


def test_only_the_files_used_are_required(tmp_path, capsys, l2):
    _, (lst, gui, *_) = l2
    p = write_product(str(tmp_path / "p"))
    folder = str(tmp_path / "p")
    for key in ("QA", "RADSAT"):
        os.remove(os.path.join(folder, p["files"][key]))
    nl, ng, *_, s = run(folder, tmp_path / "a", "--mask", "")                 # no mask: no QA file needed
    fill = np.zeros((H, W), bool)
    fill[FILL_BLOCK] = fill[ST_ZERO] = True
    assert (np.isnan(nl) == fill).all() and s["files"].keys() == {f"B{b}" for b in (*range(1, 8), 10)}
    np.testing.assert_array_equal(nl[~expected_mask(p)], lst[~expected_mask(p)])
    msg = error_of(capsys, folder, "--out", tmp_path / "b")                    # the default mask needs both
    assert "2 of the files needed" in msg and "QA (" in msg and "RADSAT (" in msg and "--file QA=PATH" in msg
    assert "--mask without saturated" in msg


def test_missing_b6_b7_listed_once_with_the_bands_that_do_without(tmp_path, capsys, l2):
    _, (lst, gui, *_) = l2
    p = write_product(str(tmp_path / "p"))
    folder = str(tmp_path / "p")
    for key in ("B6", "B7"):
        os.remove(os.path.join(folder, p["files"][key]))
    msg = error_of(capsys, folder, "--out", tmp_path / "o")
    assert "2 of the files needed" in msg and "B6 (" in msg and "B7 (" in msg and "\n" not in msg
    assert "--bands deepblue,blue,green,red,nir,ndvi,ndwi" in msg and "swir1" in msg
    capsys.readouterr()
    bl, bg, _, info, s = run(folder, tmp_path / "o", "--bands", "deepblue,blue,green,red,nir,ndvi,ndwi")
    assert info["bands"] == ["deepblue", "blue", "green", "red", "nir", "ndvi", "ndwi"]
    assert s["guidance_left_out"] == {"swir1": "not in --bands", "swir2": "not in --bands", "ndmi": "not in --bands"}
    assert "note: guidance.tif leaves out swir1, swir2, ndmi (not in --bands)" in capsys.readouterr().err
    np.testing.assert_array_equal(bl, lst)
    np.testing.assert_array_equal(bg, gui[[0, 1, 2, 3, 4, 7, 8]])
    _, _, _, info, _ = run(folder, tmp_path / "n", "--bands", "ndvi")         # only B4, B5 (and B10, QA) read
    assert info["bands"] == ["ndvi"]


def test_renamed_files_found_by_their_band_suffix(tmp_path, capsys, l2):
    _, (lst, gui, *_) = l2
    p = write_product(str(tmp_path / "p"))
    folder = str(tmp_path / "p")
    for name in p["files"].values():                         # e.g. myscene_sr_b4.tif: MTL names absent
        os.rename(os.path.join(folder, name), os.path.join(folder, "myscene_" + name.split("_T1_")[1].lower()))
    rl, rg, *_, s = run(folder, tmp_path / "o")
    np.testing.assert_array_equal(rl, lst)
    np.testing.assert_array_equal(rg, gui)
    assert os.path.basename(s["files"]["B10"]) == "myscene_st_b10.tif"
    shutil.copy(os.path.join(folder, "myscene_sr_b4.tif"), os.path.join(folder, "other_SR_B4.TIF"))
    msg = error_of(capsys, folder, "--out", tmp_path / "o")
    assert "B4 (" in msg and "myscene_sr_b4.tif" in msg and "other_SR_B4.TIF" in msg and "several" in msg


def test_every_missing_file_listed_in_one_message(tmp_path, capsys):
    p = write_product(str(tmp_path / "p"), level="L1")
    folder = str(tmp_path / "p")
    for key, name in p["files"].items():
        os.rename(os.path.join(folder, name), os.path.join(folder, f"band{key}.tif"))   # no suffix to match
    msg = error_of(capsys, folder, "--out", tmp_path / "o")
    assert "10 of the files needed" in msg and "\n" not in msg
    for key in ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B10", "QA", "RADSAT"):
        assert f"--file {key}=PATH" in msg and p["files"][key] in msg


def test_level1_suffix_does_not_take_level2_files(tmp_path):
    p = write_product(str(tmp_path / "p"), level="L1")
    folder = str(tmp_path / "p")
    os.rename(os.path.join(folder, p["files"]["B4"]), os.path.join(folder, "scene_B4.TIF"))
    shutil.copy(os.path.join(folder, "scene_B4.TIF"), os.path.join(folder, "scene_SR_B4.TIF"))
    *_, s = run(folder, tmp_path / "o")
    assert os.path.basename(s["files"]["B4"]) == "scene_B4.TIF"


# --------------------------------------------------------------------------- Level-1 labelled as brightness temperature


def test_level1_output_labelled_brightness_temperature(tmp_path, capsys):
    write_product(str(tmp_path / "p"), level="L1")
    _, _, info, _, s = run(str(tmp_path / "p"), tmp_path / "bt")
    assert info["bands"] == ["bt"] and s["lst_band"] == "bt" and "brightness temperature" in s["lst_quantity"]
    _, _, info, _, s = run(str(tmp_path / "p"), tmp_path / "e", "--emissivity", "ndvi")
    assert info["bands"] == ["bt_emissivity_corrected"] and s["lst_band"] == info["bands"][0]
    assert "brightness temperature" in s["lst_quantity"] and "NOT land surface temperature" in s["lst_quantity"]
    out = capsys.readouterr().out
    assert "lst.tif (bt_emissivity_corrected): B10 brightness temperature" in out and "not LST" in out


# --------------------------------------------------------------------------- geotiff windows and resampling


def test_resample_to_grid_void_does_not_spread_on_the_same_grid(tmp_path):
    geo = geotiff.make_geo(X0, Y0, PX, epsg=EPSG)
    src = np.arange(30, dtype=np.float32).reshape(5, 6)
    src[2, 3] = np.nan
    path = str(tmp_path / "a.tif")
    geotiff.write_geotiff(path, src, geo)
    out, how = geotiff.resample_to_grid(path, (5, 6), geo)
    assert how == "same grid"
    np.testing.assert_array_equal(np.isnan(out), np.isnan(src))
    np.testing.assert_array_equal(out[~np.isnan(src)], src[~np.isnan(src)])
    # a 60 m target pixel over four 30 m source pixels: their mean at its centre (NaN with a NaN among them)
    coarse, _ = geotiff.resample_to_grid(path, (2, 2), geotiff.make_geo(X0, Y0, 60.0, epsg=EPSG))
    np.testing.assert_allclose(coarse, [[src[0:2, 0:2].mean(), src[0:2, 2:4].mean()],
                                        [src[2:4, 0:2].mean(), np.nan]], equal_nan=True)
    assert geotiff.bbox_window((X0 + 31, Y0 - 89, X0 + 59, Y0 - 1), (5, 6), geo, path) == (0, 1, 3, 1)
