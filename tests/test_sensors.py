"""sensors.py against the numbers written here from the product guides (each cited beside it): DN -> Kelvin
with fill, out-of-range DN and Kelvin exports; every QC bit pattern of each product against each rule;
unknown names, rules and layers; QC and DN rasters whose type cannot hold the data."""
import os

import numpy as np
import pytest
from landsat_product import ST_ADD, ST_MULT

import landsat
import sensors
from errors import DataError

# (scale, offset, fill DN, lowest valid DN, highest valid DN) as written in the sources:
DN_PRODUCTS = {
    # Wan, MODIS LST Users' Guide (web), Table 9: uint16, K, valid 7500-65535, fill 0; GEE MODIS/061/MOD11A1: scale 0.02
    "MOD11A1": (0.02, 0.0, 0, 7500, 65535),
    "MYD11A1": (0.02, 0.0, 0, 7500, 65535),
    # MYD21A1D.061 granule: orig_scale_factor 0.02, orig_add_offset 0, _FillValue 0; MYD21A2.061: valid 7500-65535
    "MOD21A1": (0.02, 0.0, 0, 7500, 65535),
    # LAADS filespec VIIRS/1/VNP21A1D: scale_factor 0.02, add_offset 0.0, _Fillvalue 0, valid_range 7500,65535
    "VNP21A1": (0.02, 0.0, 0, 7500, 65535),
    # USGS FAQ "How do I use a scale factor with Landsat Level-2 science products?": 0.00341802 + 149.0, fill 0, 1-65455
    "LANDSAT_C2_L2_ST": (0.00341802, 149.0, 0, 1, 65455),
}


def dn_cases(lo, hi, fill, seed=0):
    """uint16 DN: the fill, both ends of the valid range and one step outside, and random valid DN."""
    rng = np.random.default_rng(seed)
    edges = [fill, lo - 1, lo, hi] + ([hi + 1] if hi < 65535 else [])
    return np.concatenate([edges, rng.integers(lo, hi + 1, 200)]).astype(np.uint16).reshape(-1, 1)


def expected_kelvin(dn, scale, offset, fill, lo, hi):
    d = dn.astype(np.float64)
    return np.where((d == fill) | (d < lo) | (d > hi), np.nan, d * scale + offset)


@pytest.mark.parametrize("name", DN_PRODUCTS)
def test_dn_to_kelvin_fill_and_range(name):
    scale, offset, fill, lo, hi = DN_PRODUCTS[name]
    dn = dn_cases(lo, hi, fill)
    want = expected_kelvin(dn, scale, offset, fill, lo, hi)
    got = sensors.decode_lst(name, dn)
    assert got.dtype == np.float32 and got.shape == dn.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=0, atol=2e-3)
    # the same DN as geotiff.read_geotiff returns them (float32), the file's type given
    again = sensors.decode_lst(name, dn.astype(np.float32), dtype=np.uint16)
    assert np.array_equal(again, got, equal_nan=True)


@pytest.mark.parametrize("name", DN_PRODUCTS)
def test_kelvin_export_is_not_scaled_twice(name):
    scale, offset, fill, lo, hi = DN_PRODUCTS[name]
    kelvin = expected_kelvin(dn_cases(lo, hi, fill), scale, offset, fill, lo, hi).astype(np.float32)
    assert sensors.stored_as(name, kelvin) == "kelvin"
    got = sensors.decode_lst(name, kelvin, dtype=np.float32)
    assert np.array_equal(got, kelvin, equal_nan=True)
    # an export's fill written as 0 K (outside lo*scale+offset..hi*scale+offset) becomes NaN
    kelvin[0, 0] = 0.0
    assert np.isnan(sensors.decode_lst(name, kelvin)[0, 0])


def test_stored_guess_uses_the_median_and_can_be_forced():
    # MOD11A1: a Kelvin raster with a few DN-like strays is still Kelvin (the strays fall outside 150..1310.7 K)
    k = np.array([290.0, 300.0, 310.0, 14000.0], np.float32)
    assert sensors.stored_as("MOD11A1", k) == "kelvin"
    got = sensors.decode_lst("MOD11A1", k)
    assert np.allclose(got[:3], [290, 300, 310]) and np.isnan(got[3])
    # forcing DN on values that cannot be DN, or Kelvin on values that cannot be Kelvin: an error, not all-NaN
    with pytest.raises(DataError, match=r"lst.tif: no value lies in MOD11A1's valid range \(dn 7500\.\.65535"):
        sensors.decode_lst("MOD11A1", k[:3], path="lst.tif", stored="dn")
    with pytest.raises(DataError, match="stored='dn'"):
        sensors.decode_lst("MOD11A1", np.array([15000, 15100], np.uint16), stored="kelvin")
    with pytest.raises(DataError, match="stored='x'"):
        sensors.decode_lst("MOD11A1", k, stored="x")
    # all fill: NaN without complaint (a fully cloudy day)
    assert np.isnan(sensors.decode_lst("MOD11A1", np.zeros((2, 2), np.uint16))).all()


def test_file_nodata_and_wrapped_signed_dn():
    dn = np.array([[65535, 14500], [1234, 0]], np.float32)            # 65535: the export's GDAL_NODATA
    got = sensors.decode_lst("MOD11A1", dn, dtype=np.uint16, nodata=65535)
    assert np.isnan(got[0, 0]) and got[0, 1] == pytest.approx(290.0) and np.isnan(got[1]).all()
    # Landsat ST DN above 32767 (above ~261 K) exported as int16 wrap to negative numbers: refused
    wrapped = np.array([44947, 30000, 0], np.uint16).view(np.int16)
    with pytest.raises(DataError, match="LANDSAT_C2_L2_ST stores uint16 DN but this int16 raster has negative"):
        sensors.decode_lst("LANDSAT_C2_L2_ST", wrapped)


@pytest.mark.parametrize("name", ["ECO_L2T_LSTE", "SL_2_LST"])
def test_kelvin_only_presets(name):
    k = np.array([[301.25, np.nan], [250.5, 330.0]], np.float32)
    assert np.array_equal(sensors.decode_lst(name, k), k, equal_nan=True)
    assert np.isnan(sensors.decode_lst(name, k, nodata=250.5)[1, 0])
    with pytest.raises(DataError, match=f"{name} LST is read here as float Kelvin only.*uint16"):
        sensors.decode_lst(name, np.array([15000], np.uint16))
    with pytest.raises(DataError, match="no documented DN scale"):
        sensors.decode_lst(name, k, stored="dn")


ALL16 = np.arange(1 << 16, dtype=np.uint16)


def field(v, first, n):
    return (v.astype(np.int64) >> first) & ((1 << n) - 1)


# every QC value of each product, and the pixels each rule keeps, computed here from the bit tables
QC_CASES = [
    # GEE MODIS/061/MOD11A1 QC_Day bitmask (= LP DAAC MOD11 QC table): bits 0-1 mandatory QA, 6-7 LST error flag
    ("MOD11A1", "mandatory", np.arange(256, dtype=np.uint8), lambda v: field(v, 0, 2) == 0),
    ("MYD11A1", "lst_error_1k", np.arange(256, dtype=np.uint8),
     lambda v: (field(v, 0, 2) == 0) | ((field(v, 0, 2) == 1) & (field(v, 6, 2) == 0))),
    # MYD21A1D.061 QA_Legend / GEE NASA/VIIRS/002/VNP21A1D: bits 0-1 MODLAND_QA, 14-15 LST accuracy (11 = < 1 K)
    ("MOD21A1", "mandatory", ALL16, lambda v: field(v, 0, 2) == 0),
    ("MOD21A1", "lst_accuracy_1k", ALL16,
     lambda v: (field(v, 0, 2) == 0) | ((field(v, 0, 2) == 1) & (field(v, 14, 2) == 3))),
    ("VNP21A1", "mandatory", ALL16, lambda v: field(v, 0, 2) == 0),
    ("VNP21A1", "lst_accuracy_1k", ALL16,
     lambda v: (field(v, 0, 2) == 0) | ((field(v, 0, 2) == 1) & (field(v, 14, 2) == 3))),
    # LP DAAC ECOSTRESS L2T tutorial (L2 PSD Table 3-5): bits 0-1, 00 best, 01 nominal
    ("ECO_L2T_LSTE", "best", ALL16, lambda v: field(v, 0, 2) == 0),
    ("ECO_L2T_LSTE", "nominal", ALL16, lambda v: field(v, 0, 2) <= 1),
    # SL_2_LST cloud_in: no cloud test set
    ("SL_2_LST", "no_cloud_test", ALL16, lambda v: v == 0),
    # QA_PIXEL bits 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow (5 snow)
    ("LANDSAT_C2_L2_ST", "clear", ALL16, lambda v: (v.astype(np.int64) & 0b11111) == 0),
    ("LANDSAT_C2_L2_ST", "clear_no_snow", ALL16, lambda v: (v.astype(np.int64) & 0b111111) == 0),
]


@pytest.mark.parametrize("name,rule,values,want", QC_CASES, ids=[f"{c[0]}-{c[1]}" for c in QC_CASES])
def test_qc_rules_on_every_bit_pattern(name, rule, values, want):
    expected = want(values)
    assert 0 < expected.sum() < values.size
    assert np.array_equal(sensors.qc_good(name, values, rule=rule), expected)
    # the same QC read as float32 with a NaN no-data pixel, the file's type given
    as_read = values.astype(np.float32)
    as_read[0] = np.nan
    got = sensors.qc_good(name, as_read, rule=rule, dtype=values.dtype)
    assert not got[0] and np.array_equal(got[1:], expected[1:])


def test_default_rules():
    assert np.array_equal(sensors.qc_good("MOD11A1", np.array([0, 1, 64], np.uint8)), [True, False, True])
    assert np.array_equal(sensors.qc_good("landsat", np.array([21824, 21824 | 8], np.uint16)), [True, False])


def test_ecostress_cloud_layer():
    qc = np.zeros((2, 3), np.uint16)
    qc[0, 2] = 2                                         # bits 0-1 == 10: cloud detected
    cloud = np.array([[0, 1, 0], [0, 0, 255]], np.uint8)  # 1 = cloud; 255 an export's fill: not clear either
    got = sensors.qc_good("ECO_L2T_LSTE", qc, layers={"cloud": cloud})
    assert np.array_equal(got, [[True, False, False], [True, True, False]])
    with pytest.raises(DataError, match="ECO_L2T_LSTE layer 'cloud' is \\(1, 3\\), the QC raster \\(2, 3\\)"):
        sensors.qc_good("ECO_L2T_LSTE", qc, layers={"cloud": cloud[:1]})
    with pytest.raises(DataError, match="MOD11A1 has no mask layer 'cloud'; its layers: none"):
        sensors.qc_good("MOD11A1", np.zeros(2, np.uint8), layers={"cloud": np.zeros(2)})


def test_qc_types_that_cannot_hold_the_bits():
    with pytest.raises(DataError, match=r"qc.tif: MOD21A1 QC \(QC\) has 16 bits but this raster is uint8"):
        sensors.qc_good("MOD21A1", np.zeros(4, np.uint8), path="qc.tif")
    with pytest.raises(DataError, match="has 16 bits but this raster is uint8"):  # read as float32, file uint8
        sensors.qc_good("VNP21A1", np.zeros(4, np.float32), dtype=np.uint8)
    with pytest.raises(DataError, match="has 16 bits but this raster is float16"):
        sensors.qc_good("LANDSAT_C2_L2_ST", np.zeros(4, np.float16))
    with pytest.raises(DataError, match="has 8 bits but this raster is bool"):
        sensors.qc_good("MOD11A1", np.zeros(4, bool))
    with pytest.raises(DataError, match="fractional values.*nearest neighbour"):
        sensors.qc_good("MOD11A1", np.array([0.0, 0.5], np.float32))
    # 8-bit QC in a wider export is fine; values beyond 8 bits (an export's fill) are never good
    assert np.array_equal(sensors.qc_good("MOD11A1", np.array([0, 256, 65535], np.uint16)), [True, False, False])
    # 16-bit QC in int16: the same bit patterns (two's complement), negative values included
    patterns = ALL16.view(np.int16)
    assert np.array_equal(sensors.qc_good("MOD21A1", patterns, rule="lst_accuracy_1k"),
                          sensors.qc_good("MOD21A1", ALL16, rule="lst_accuracy_1k"))


def test_unknown_names_rules_and_aliases():
    with pytest.raises(DataError, match=r"--product MOD11A: unknown product \(did you mean MOD11A1.*known: MOD11A1, "):
        sensors.lookup("MOD11A")
    with pytest.raises(DataError, match="--product GOES16: unknown product; known:"):
        sensors.decode_lst("GOES16", np.zeros(2))
    with pytest.raises(DataError, match="QC rule 'strict' is not defined for MOD21A1; rules: mandatory, lst_accuracy_1k"):
        sensors.qc_good("MOD21A1", ALL16[:4], rule="strict")
    assert sensors.lookup("mod21a1n")[0] == "MOD21A1" and sensors.lookup(" vnp21a1d ")[0] == "VNP21A1"


def test_presets_are_complete_and_cited():
    for name, p in sensors.PRODUCTS.items():
        assert set(p["cite"]) >= {"layers", "resolution"}, name
        for key in ("scale", "offset", "fill", "valid", "dtype"):
            if p[key] not in (None, ()):
                assert key in p["cite"], (name, key)
        assert p["qc_fields"] and "qc" in p["cite"] or p["unverified"], name
        assert all(src in sensors.SOURCES for srcs in p["cite"].values() for src in srcs), name
        assert p["qc_default"] in p["qc_rules"] and set(p["qc_notes"]) == set(p["qc_rules"]), name
        for clauses in p["qc_rules"].values():
            assert all(f in p["qc_fields"] for clause in clauses for f in clause), name
        line = sensors.describe(name)
        assert "\n" not in line and line.startswith(name)


def test_landsat_numbers_match_landsat_py():
    assert {k: v[0][0] for k, v in landsat.QA_PIXEL_FIELDS.items()} == sensors.LANDSAT_QA_PIXEL_BITS
    p = sensors.PRODUCTS["LANDSAT_C2_L2_ST"]
    (clause,) = p["qc_rules"]["clear"]
    assert set(clause) == set(landsat.DEFAULT_MASK.split(",")) - {"saturated"}
    assert (p["scale"], p["offset"]) == (ST_MULT, ST_ADD)


def test_docs_show_the_generated_table(root):
    with open(os.path.join(root, "docs", "sensors.md")) as f:
        assert sensors.markdown() in f.read()
