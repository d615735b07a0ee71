"""Presets for coarse thermal LST products as users download them (GeoTIFF exports from AppEEARS, Google
Earth Engine, SNAP/openEO): how the stored value becomes Kelvin, and which QC bits mark a usable pixel.

    import sensors
    kelvin = sensors.decode_lst("MOD11A1", dn, path="lst.tif", dtype=header["dtype"])   # float32 K, NaN = no data
    good = sensors.qc_good("MOD11A1", qc, path="qc.tif", dtype=qc_header["dtype"])       # the default rule
    good = sensors.qc_good("MOD11A1", qc, rule="lst_error_1k")                          # a documented alternative
    print(sensors.describe("MOD11A1"))

PRODUCTS is the one table. Every number in it names where it was read (a key of SOURCES in the preset's
"cite"); a preset says "not found" (None, and why in "unverified") where no product guide in reach gave it.
Names are looked up case-insensitively; ALIASES maps the day/night product names onto one preset.

Stored DN or Kelvin (decode_lst, stored="auto"): exports differ. AppEEARS keeps the stored DN; Earth Engine
keeps DN for MOD11A1 but has the scale already applied for MOD21A1 and the VIIRS V002 product; SNAP/openEO
exports of netCDF products may hold physical values. A raster is taken as Kelvin when the median of its
values (fill and NaN left out) lies inside the product's valid range converted to Kelvin
(valid DN * scale + offset), and as DN otherwise. For every DN-scaled preset here the two readings cannot be
confused: a DN inside that Kelvin range is either invalid (MODIS/VIIRS valid DN start at 7500 = 150 K) or an
LST below 150.3 K (Landsat DN <= 373). stored="dn" or "kelvin" overrides the guess.
Presets stored in Kelvin (ECOSTRESS L2T) or with no documented scale (Sentinel-3 SL_2_LST) accept only float
Kelvin; an integer raster is a DataError.

QC rasters: geotiff.read_geotiff returns float32, so pass the file's dtype (geotiff.read_header(path)["dtype"])
for the check that it can hold the product's bits. A float QC must hold whole numbers (nearest-neighbour
resampled); NaN and values outside the bit width (an export's fill) are never good.

Native files (HDF4/HDF5/netCDF) are not read here; docs/sensors.md names readers that can convert them.
"""
import difflib

import numpy as np

from errors import DataError

SOURCES = {
    "wan_guide": "Z. Wan, MODIS Land-Surface Temperature Products Users' Guide (web edition, ICESS UCSB, "
                 "LstUsrGuide/usrguide_1dtil.html), section 'MOD11A1 Daily LST', Table 9 (SDSs of MOD11A1)",
    "gee_mod11a1": "Google Earth Engine data catalog MODIS/061/MOD11A1 (template MODIS_006_MOD11A1): bands "
                   "LST_Day_1km/LST_Night_1km (K, scale 0.02, min 7500, max 65535), QC_Day/QC_Night bitmask",
    "lpdaac_mod11_qa": "LP DAAC V005 MOD11C2 / V004 MOD11B1 QA pages (archived): LST QC bit table; 'no FillValue "
                       "for the QC SDS; if LST has FillValue 0, bits 0-1 are 10 or 11'",
    "laads_mod11_spec": "LAADS file specifications MODIS/61/MYD11A1 (Version 61, 2019-09-18) and MYD11A2 "
                        "(Version 61 Rev 2): SDS names and types (LST DFNT_UINT16, QC DFNT_UINT8), 1200x1200 grid "
                        "corners UL -7783653.637740 / LR -6671703.118080 m",
    "myd21_granule": "MYD21A1D.A2003053.h18v03.061 granule metadata (USGS OPeNDAP): LST_1KM orig_scale_factor "
                     "0.02, orig_add_offset 0, _FillValue 0, valid 150.0-1310.7 K; QC QA_Legend (16 bits); and "
                     "MYD21A2.A2018089.h00v10.061 (LAADS OPeNDAP): LST UInt16 valid_range 7500-65535, _FillValue 0",
    "gee_mod21a1": "Google Earth Engine data catalog MODIS/061/MOD21A1D: 'scale factors and offsets ... are already "
                   "applied to assets ingested into Earth Engine'; LP DAAC MOD21A1D v061 page: 1,000 m",
    "laads_vnp21_spec": "LAADS file specifications VIIRS/1/VNP21A1D and VNP21A1N (V001): uint16 LST_1KM, "
                        "_Fillvalue 0, add_offset 0.0, scale_factor 0.02, units K, valid_range 7500,65535; uint16 QC",
    "gee_vnp21a1": "Google Earth Engine data catalog NASA/VIIRS/002/VNP21A1D (template NASA_VIIRS_002_VNP21A1): "
                   "QC bitmask bits 0-15; LST_1KM in K with no scale listed",
    "cmr_vnp21a1": "NASA CMR C1442270800-LPDAAC_ECS (VNP21A1D V001): 1 km grid resampled from the native 750 m",
    "lpdaac_eco_l2t": "LP DAAC ECO_L2T_LSTE v002 product page: 70 m, 109.8 km MGRS tiles, one COG per layer "
                      "(LST, LST_err, EmisWB, QC, height, cloud, water)",
    "eco_tutorial": "NASA/LP DAAC tutorial 'Working with ECOSTRESS L2T LSTE Data' (nasa/ECOSTRESS-Data-Resources): "
                    "files *_LST.tif/*_QC.tif, QC 16-bit, bits 0-1: 00 best, 01 nominal, 10 cloud detected, 11 not "
                    "produced (citing ECOSTRESS L2 PSD Table 3-5); LST used in K without scaling",
    "eco_pge": "ECOSTRESS Collection 2 PGE source (ECOSTRESS package, L2_LSTE.py, G. Halverson, JPL; code, not a "
               "guide): LST read with scale applied (float, NaN no-data), QC uint16 no-data 65535, cloud/water "
               "1 = set",
    "esa_s3_lst": "ESA Sentinel-3 SLSTR user guide pages 'Level-2 LST' and 'Level-2 data formats': LST on the 1 km "
                  "grid in LST_in.nc (netCDF4) with uncertainty and exception flags; Flags_in annotation copied "
                  "from Level-1",
    "usgs_st_scale": "USGS FAQ 'How do I use a scale factor with Landsat Level-2 science products?': Collection 2 "
                     "ST scale 0.00341802, offset 149.0, fill 0, unsigned 16-bit, valid range 1-65455",
    "usgs_qa_pixel": "USGS 'Landsat Collection 2 Quality Assessment Bands': the QA_PIXEL band and its bit table "
                     "(defined in the Landsat 8-9 C2 L2 Science Product Guide)",
    "landsat_py": "this toolkit's landsat.py: MTL keys FILE_NAME_BAND_ST_B10 / FILE_NAME_QUALITY_L1_PIXEL, "
                  "QA_PIXEL_BITS, DEFAULT_MASK",
    "cmr_landsat8": "NASA CMR C1427461962-USGS_EROS (Landsat 8 OLI/TIRS): TIRS 100 m, delivered on the 30 m grid",
    "overpass_terra_aqua": "NASA Earthdata forum (2024): Terra crosses the equator at 10:30 a.m./p.m. local time "
                           "(descending by day), Aqua at 1:30 p.m./a.m. (ascending by day); NASA SVS 3348 (Aqua 1:30 PM)",
}

# Landsat Collection 2 QA_PIXEL single bits, the same numbers as landsat.py's QA_PIXEL_BITS (the lead may make
# landsat.py import this name so that the numbers live in one place)
LANDSAT_QA_PIXEL_BITS = {"fill": 0, "dilated_cloud": 1, "cirrus": 2, "cloud": 3, "shadow": 4, "snow": 5, "water": 7}

# MODIS/VIIRS 1 km sinusoidal tile: 1111950.52 m over 1200 cells (laads_mod11_spec corners)
SIN_1KM_M = (7783653.637740 - 6671703.118080) / 1200

_MOD11_QC = {"mandatory": (0, 2), "data_quality": (2, 2), "emissivity_error": (4, 2), "lst_error": (6, 2)}
_MOD11_RULES = {
    "mandatory": ({"mandatory": (0,)},),
    "lst_error_1k": ({"mandatory": (0,)}, {"mandatory": (1,), "lst_error": (0,)}),
}
_MOD11_NOTES = {"mandatory": "bits 0-1 == 00 (LST produced, good quality)",
                "lst_error_1k": "bits 0-1 == 00, or 01 with bits 6-7 == 00 (average LST error <= 1 K)"}
_TES_QC = {"mandatory": (0, 2), "data_quality": (2, 2), "cloud": (4, 2), "iterations": (6, 2),
           "opacity": (8, 2), "mmd": (10, 2), "emissivity_accuracy": (12, 2), "lst_accuracy": (14, 2)}
_TES_RULES = {
    "mandatory": ({"mandatory": (0,)},),
    "lst_accuracy_1k": ({"mandatory": (0,)}, {"mandatory": (1,), "lst_accuracy": (3,)}),
}
_TES_NOTES = {"mandatory": "bits 0-1 == 00 (pixel produced, good quality)",
              "lst_accuracy_1k": "bits 0-1 == 00, or 01 with bits 14-15 == 11 (LST accuracy < 1 K)"}


def _mod11(title, overpass):
    return {
        "title": title, "lst_layers": ("LST_Day_1km", "LST_Night_1km"), "qc_layers": ("QC_Day", "QC_Night"),
        "stored": "dn", "dtype": "uint16", "scale": 0.02, "offset": 0.0, "fill": (0,), "valid": (7500, 65535),
        "qc_bits": 8, "qc_fields": _MOD11_QC, "qc_rules": _MOD11_RULES, "qc_notes": _MOD11_NOTES,
        "qc_default": "mandatory", "resolution_m": SIN_1KM_M,
        "resolution_note": "1 km sinusoidal grid (Wan: 'precisely 0.928 km')", "overpass": overpass,
        "exports": "AppEEARS: uint16 DN + uint8 QC, one file per layer and date; Earth Engine: DN as stored "
                   "(catalog scale 0.02); a multi-band Earth Engine export gives every band one type (QC may be float)",
        "cite": {"scale": ("gee_mod11a1", "wan_guide"), "offset": ("gee_mod11a1",), "fill": ("wan_guide",),
                 "valid": ("wan_guide", "gee_mod11a1"), "dtype": ("wan_guide", "laads_mod11_spec"),
                 "layers": ("laads_mod11_spec",), "qc": ("gee_mod11a1", "lpdaac_mod11_qa", "laads_mod11_spec"),
                 "resolution": ("laads_mod11_spec", "wan_guide"), "overpass": ("overpass_terra_aqua",)},
        "unverified": "MOD11 User Guide V6 (LP DAAC doc 118) and the MOD11A1 V6.1 filespec QC text are not in the "
                      "store: offset 0 read from the absence of an offset in the Earth Engine catalog",
    }


def _tes(title, lst_layers, cite, resolution_note, exports, unverified):
    return {
        "title": title, "lst_layers": lst_layers, "qc_layers": ("QC",), "stored": "dn", "dtype": "uint16",
        "scale": 0.02, "offset": 0.0, "fill": (0,), "valid": (7500, 65535), "qc_bits": 16, "qc_fields": _TES_QC,
        "qc_rules": _TES_RULES, "qc_notes": _TES_NOTES, "qc_default": "mandatory", "resolution_m": SIN_1KM_M,
        "resolution_note": resolution_note, "overpass": None, "exports": exports, "cite": cite,
        "unverified": unverified,
    }


PRODUCTS = {
    "MOD11A1": _mod11("MODIS/Terra LST daily 1 km, split-window (C6.1)",
                      "Terra: about 10:30 (day, descending) and 22:30 local solar time"),
    "MYD11A1": _mod11("MODIS/Aqua LST daily 1 km, split-window (C6.1)",
                      "Aqua: about 13:30 (day, ascending) and 01:30 local solar time"),
    "MOD21A1": _tes(
        "MODIS/Terra LST daily 1 km, TES (C6.1; MOD21A1D day, MOD21A1N night)", ("LST_1KM",),
        {"scale": ("myd21_granule",), "offset": ("myd21_granule",), "fill": ("myd21_granule",),
         "valid": ("myd21_granule",), "dtype": ("myd21_granule",), "layers": ("myd21_granule",),
         "qc": ("myd21_granule",), "resolution": ("gee_mod21a1", "laads_mod11_spec")},
        "1 km sinusoidal grid (LP DAAC: 1,000 m)",
        "AppEEARS: uint16 DN + uint16 QC; Earth Engine: scale already applied, float Kelvin (detected)",
        "read from the Aqua twin MYD21A1D/MYD21A2 granules (same MOD21 format); MOD21 User Guide V6.1 "
        "(LP DAAC doc 1398) not in the store"),
    "VNP21A1": _tes(
        "VIIRS/S-NPP LST daily 1 km, TES (VNP21A1D day, VNP21A1N night)", ("LST_1KM",),
        {"scale": ("laads_vnp21_spec",), "offset": ("laads_vnp21_spec",), "fill": ("laads_vnp21_spec",),
         "valid": ("laads_vnp21_spec",), "dtype": ("laads_vnp21_spec",), "layers": ("laads_vnp21_spec",),
         "qc": ("gee_vnp21a1",), "resolution": ("cmr_vnp21a1", "laads_mod11_spec")},
        "1 km sinusoidal grid, resampled from the native 750 m",
        "AppEEARS: uint16 DN + uint16 QC; Earth Engine V002: Kelvin, no scale listed (detected)",
        "scale/fill/range from the V001 filespec (V002 assumed unchanged); QC bits from the Earth Engine catalog "
        "(V002); VNP21 User Guide (LP DAAC doc 429) not in the store"),
    "ECO_L2T_LSTE": {
        "title": "ECOSTRESS tiled LST&E, Collection 2 (ECO_L2T_LSTE v002), 70 m MGRS tiles",
        "lst_layers": ("LST",), "qc_layers": ("QC",), "stored": "kelvin", "dtype": "float32",
        "scale": None, "offset": None, "fill": (), "valid": None, "qc_bits": 16,
        "qc_fields": {"mandatory": (0, 2)},
        "qc_rules": {"best": ({"mandatory": (0,)},), "nominal": ({"mandatory": (0, 1)},)},
        "qc_notes": {"best": "bits 0-1 == 00 (best quality); and cloud == 0 when the cloud layer is given",
                     "nominal": "bits 0-1 == 00 or 01 (nominal quality); and cloud == 0 when given"},
        "qc_default": "best", "mask_layers": {"cloud": (0,)}, "resolution_m": 70.0,
        "resolution_note": "70 m (ISS orbit: the overpass time varies)", "overpass": None,
        "exports": "LP DAAC delivers COGs: *_LST.tif float Kelvin (NaN no-data), *_QC.tif uint16, *_cloud.tif "
                   "(1 = cloud); Earth Engine: LST in Kelvin, with QC and cloud bands",
        "cite": {"dtype": ("eco_pge", "eco_tutorial"), "fill": ("eco_pge",), "layers": ("lpdaac_eco_l2t", "eco_tutorial"),
                 "qc": ("eco_tutorial",), "cloud": ("eco_pge",), "resolution": ("lpdaac_eco_l2t",)},
        "unverified": "the L2T user guide (LP DAAC doc 1655, ECO_L1C-4 Grid/Tile V2) is not in the store: data type "
                      "and no-data come from the producer's code, no valid range is documented here; QC bits 2-15 "
                      "not encoded; the Earth Engine catalog shows a different QC bitmask (1-bit fields), not used",
    },
    "SL_2_LST": {
        "title": "Sentinel-3 SLSTR Level-2 LST (SL_2_LST), 1 km",
        "lst_layers": ("LST",), "qc_layers": ("cloud_in",), "stored": None, "dtype": None,
        "scale": None, "offset": None, "fill": (), "valid": None, "qc_bits": 16,
        "qc_fields": {"cloud_tests": (0, 16)}, "qc_rules": {"no_cloud_test": ({"cloud_tests": (0,)},)},
        "qc_notes": {"no_cloud_test": "cloud_in == 0 (no cloud test set); conservative, bit meanings not verified"},
        "qc_default": "no_cloud_test", "resolution_m": 1000.0, "resolution_note": "1 km instrument grid (swath)",
        "overpass": None,
        "exports": "SNAP/openEO reprojected GeoTIFF: LST from LST_in.nc, flags from flags_in.nc; use physical "
                   "(Kelvin) values: an integer export is refused, no scale is documented here",
        "cite": {"layers": ("esa_s3_lst",), "resolution": ("esa_s3_lst",)},
        "unverified": "LST_in.nc scale, offset, fill and the flags_in bit tables were not found in the store (the "
                      "SLSTR Land User Handbook 3MPC.ACR.HBK.002 i1.1 is indexed, its tables unreadable): float "
                      "Kelvin input only; the QC rule only assumes cloud_in is a bit field of cloud tests",
    },
    "LANDSAT_C2_L2_ST": {
        "title": "Landsat 8/9 Collection 2 Level-2 surface temperature (ST_B10)",
        "lst_layers": ("ST_B10",), "qc_layers": ("QA_PIXEL",), "stored": "dn", "dtype": "uint16",
        "scale": 0.00341802, "offset": 149.0, "fill": (0,), "valid": (1, 65455), "qc_bits": 16,
        "qc_fields": {name: (bit, 1) for name, bit in LANDSAT_QA_PIXEL_BITS.items()},
        "qc_rules": {
            "clear": ({"fill": (0,), "dilated_cloud": (0,), "cirrus": (0,), "cloud": (0,), "shadow": (0,)},),
            "clear_no_snow": ({"fill": (0,), "dilated_cloud": (0,), "cirrus": (0,), "cloud": (0,), "shadow": (0,),
                               "snow": (0,)},),
        },
        "qc_notes": {"clear": "bits 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 shadow all 0 (landsat.py's "
                              "default mask without QA_RADSAT)",
                     "clear_no_snow": "as clear, and bit 5 snow 0"},
        "qc_default": "clear", "resolution_m": 100.0, "resolution_note": "TIRS 100 m, delivered on the 30 m grid",
        "overpass": None,
        "exports": "USGS delivers uint16 COGs (ST_B10, QA_PIXEL); landsat.py reads the scale from the MTL instead",
        "cite": {"scale": ("usgs_st_scale",), "offset": ("usgs_st_scale",), "fill": ("usgs_st_scale",),
                 "valid": ("usgs_st_scale",), "dtype": ("usgs_st_scale",), "qc": ("usgs_qa_pixel", "landsat_py"),
                 "layers": ("usgs_qa_pixel", "landsat_py"), "resolution": ("cmr_landsat8",)},
        "unverified": "the Landsat 8-9 C2 L2 Science Product Guide (LSDS-1619) tables were not readable in the store",
    },
}
ALIASES = {"MOD21A1D": "MOD21A1", "MOD21A1N": "MOD21A1", "VNP21A1D": "VNP21A1", "VNP21A1N": "VNP21A1",
           "ECOSTRESS": "ECO_L2T_LSTE", "SLSTR": "SL_2_LST", "LANDSAT": "LANDSAT_C2_L2_ST"}


def lookup(product):
    """A product name (any case, or an alias) -> (preset name, preset dict); DataError naming the valid names
    and the nearest ones otherwise."""
    key = str(product).strip().upper()
    key = ALIASES.get(key, key)
    if key in PRODUCTS:
        return key, PRODUCTS[key]
    names = list(PRODUCTS) + list(ALIASES)
    near = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    raise DataError(f"--product {product}: unknown product{hint}; known: {', '.join(PRODUCTS)} "
                    f"(aliases {', '.join(ALIASES)})")


def kelvin_range(product):
    """The preset's valid range in Kelvin, (lo, hi) = valid DN * scale + offset, or None where not documented."""
    _, p = lookup(product)
    if p["valid"] is None or p["scale"] is None:
        return None
    lo, hi = p["valid"]
    return lo * p["scale"] + p["offset"], hi * p["scale"] + p["offset"]


def _no_fill(values, fill, nodata):
    """The finite values that are neither a product fill value nor the file's no-data value."""
    keep = np.isfinite(values)
    for f in tuple(fill) + (() if nodata is None else (nodata,)):
        keep &= values != f
    return values[keep]


def stored_as(product, values, nodata=None):
    """'dn' or 'kelvin': how a raster of `product` stores LST, guessed from its values (module docstring)."""
    _, p = lookup(product)
    if p["stored"] != "dn":
        return "kelvin"
    flat = np.asarray(values).ravel()
    flat = flat[::max(1, flat.size // 1_000_000)]  # a whole Landsat scene: a regular sample is enough for a median
    rest = _no_fill(flat.astype(np.float64), p["fill"], nodata)
    if rest.size == 0:
        return "dn"
    lo, hi = kelvin_range(product)
    return "kelvin" if lo <= float(np.median(rest)) <= hi else "dn"


def decode_lst(product, dn, path="array", dtype=None, stored="auto", nodata=None):
    """LST as exported (H, W) -> float32 Kelvin (H, W), NaN where fill, no-data or outside the valid range.

    dtype: the raster's type in its file when `dn` was read as float32 (geotiff.read_header(path)["dtype"]);
    default dn.dtype. stored: 'auto' (guess, see the module docstring), 'dn' or 'kelvin'. nodata: the file's
    own no-data value (GDAL_NODATA), also masked.
    """
    name, p = lookup(product)
    values = np.asarray(dn)
    dtype = np.dtype(dtype) if dtype is not None else values.dtype
    if stored not in ("auto", "dn", "kelvin"):
        raise DataError(f"{path}: stored={stored!r}: expected auto, dn or kelvin")
    if p["stored"] != "dn" and dtype.kind in "ui":
        raise DataError(f"{path}: {name} LST is read here as float Kelvin only (no documented DN scale), but this "
                        f"raster is {dtype}: export physical Kelvin values, or give --lst-scale/--lst-offset "
                        f"instead of --product")
    if p["stored"] != "dn" and stored == "dn":
        raise DataError(f"{path}: stored='dn': {name} has no documented DN scale; its LST is read as Kelvin")
    how = stored_as(name, values, nodata) if stored == "auto" else stored
    x = values.astype(np.float32)
    if dtype.kind == "i" and p["dtype"] and np.dtype(p["dtype"]).kind == "u" and how == "dn":
        if np.any(_no_fill(x, p["fill"], nodata) < 0):
            raise DataError(f"{path}: {name} stores {p['dtype']} DN but this {dtype} raster has negative values: the "
                            f"export wrapped large DN; export it again as {p['dtype']} or float")
    bad = ~np.isfinite(x)
    for f in p["fill"] if how == "dn" else ():
        bad |= x == np.float32(f)
    if nodata is not None:
        bad |= x == np.float32(nodata)
    if how == "dn":
        lo, hi = p["valid"]
        out = x * np.float32(p["scale"]) + np.float32(p["offset"])
    else:
        lo, hi = kelvin_range(name) or (-np.inf, np.inf)
        out = x
    present = ~bad
    bad |= (x < np.float32(lo)) | (x > np.float32(hi))  # float32 bounds: a Kelvin export rounds like x
    if present.any() and bad.all():
        raise DataError(f"{path}: no value lies in {name}'s valid range ({how} {lo:g}..{hi:g}; min/max "
                        f"{np.nanmin(np.where(present, x, np.nan)):g}/{np.nanmax(np.where(present, x, np.nan)):g}): "
                        f"another product, or stored='{'kelvin' if how == 'dn' else 'dn'}'?")
    return np.where(bad, np.float32(np.nan), out).astype(np.float32)


def _qc_bits(name, p, qc, path, dtype):
    """A QC raster -> (uint32 bit patterns, bool where a pattern of the product's width is held: not NaN, not
    an export's fill beyond the width)."""
    values = np.asarray(qc)
    dtype = np.dtype(dtype) if dtype is not None else values.dtype
    need = p["qc_bits"]
    holds = {"u": dtype.itemsize * 8, "i": dtype.itemsize * 8, "f": np.finfo(dtype).nmant + 1 if dtype.kind == "f" else 0}
    if dtype.kind not in holds or holds[dtype.kind] < need:
        raise DataError(f"{path}: {name} QC ({', '.join(p['qc_layers'])}) has {need} bits but this raster is {dtype}: "
                        f"export it as uint{max(need, 8)} (or any wider integer, or float32)")
    held = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
    if values.dtype.kind == "f" and np.any(values[held] != np.round(values[held])):
        raise DataError(f"{path}: {name} QC has fractional values: a bit field resampled by interpolation; "
                        f"resample QC with nearest neighbour")
    ints = np.where(held, values, 0).astype(np.int64)
    if dtype.kind == "i" and dtype.itemsize * 8 == need:  # a signed type of the same width: two's complement
        ints[ints < 0] += 1 << need
    held &= (ints >= 0) & (ints < 1 << need)
    return np.where(held, ints, 0).astype(np.uint32), held


def qc_good(product, qc, rule=None, path="array", dtype=None, layers=None):
    """QC raster (H, W) -> bool (H, W): True where the preset's rule (default p['qc_default']) accepts the pixel.

    A rule is a tuple of clauses {field: allowed values}; a pixel is good when any clause holds for all its
    fields. layers: {name: (H, W) array} for the preset's extra mask layers (ECOSTRESS 'cloud'), each good only
    at its listed values. dtype: the QC file's type when qc was read as float32 (see decode_lst).
    """
    name, p = lookup(product)
    rule = p["qc_default"] if rule is None else rule
    if rule not in p["qc_rules"]:
        raise DataError(f"{path}: QC rule {rule!r} is not defined for {name}; rules: {', '.join(p['qc_rules'])}")
    bits, held = _qc_bits(name, p, qc, path, dtype)
    good = np.zeros(bits.shape, bool)
    for clause in p["qc_rules"][rule]:
        ok = held.copy()
        for field, allowed in clause.items():
            first, n = p["qc_fields"][field]
            value = (bits >> np.uint32(first)) & np.uint32((1 << n) - 1)
            ok &= np.logical_or.reduce([value == np.uint32(a) for a in allowed])
        good |= ok
    for layer, array in (layers or {}).items():
        if layer not in p.get("mask_layers", {}):
            raise DataError(f"{path}: {name} has no mask layer {layer!r}; its layers: "
                            f"{', '.join(p.get('mask_layers', {})) or 'none'}")
        array = np.asarray(array)
        if array.shape != good.shape:
            raise DataError(f"{path}: {name} layer {layer!r} is {array.shape}, the QC raster {good.shape}: "
                            f"give both on the same grid")
        good &= np.isin(array, p["mask_layers"][layer])
    return good


def describe(product):
    """One line for messages: product, layers, how DN becomes Kelvin, the default QC rule."""
    name, p = lookup(product)
    if p["stored"] == "dn":
        lo, hi = p["valid"]
        how = (f"K = DN * {p['scale']:g} + {p['offset']:g} ({p['dtype']}, valid DN {lo}..{hi}, "
               f"fill {', '.join(map(str, p['fill']))})")
    else:
        how = "float Kelvin as exported"
    return (f"{name} ({p['title']}): {'/'.join(p['lst_layers'])} {how}; QC {'/'.join(p['qc_layers'])} "
            f"{p['qc_bits']}-bit, default rule '{p['qc_default']}': {p['qc_notes'][p['qc_default']]}")


def markdown():
    """The generated part of docs/sensors.md: the preset table, then per product the export, the other QC
    rules and what could not be verified, then the sources (the page shows this function's output)."""
    rows = ["| product | LST layer | scale | offset | fill | valid DN | QC layer: default rule | native res. | "
            "sources |", "|---|---|---|---|---|---|---|---|---|"]
    for name, p in PRODUCTS.items():
        unknown = "not found" if p["stored"] is None else "- (K)"
        cites = sorted({s for keys in p["cite"].values() for s in keys})
        rows.append("| " + " | ".join([
            name, "/".join(p["lst_layers"]) + f" ({p['dtype'] or 'float K'})",
            unknown if p["scale"] is None else f"{p['scale']:g}",
            unknown if p["offset"] is None else f"{p['offset']:g}",
            ", ".join(map(str, p["fill"])) or ("NaN" if p["stored"] == "kelvin" else "not found"),
            f"{p['valid'][0]}..{p['valid'][1]}" if p["valid"] else "not found",
            f"{'/'.join(p['qc_layers'])}: {p['qc_notes'][p['qc_default']]}",
            f"{p['resolution_m']:.6g} m", ", ".join(cites)]) + " |")
    rows += ["", "Per product: the usual GeoTIFF export; other QC rules (`rule=`); overpass; not verified.", ""]
    for name, p in PRODUCTS.items():
        others = "; ".join(f"`{r}`: {p['qc_notes'][r]}" for r in p["qc_rules"] if r != p["qc_default"])
        rows.append(f"- **{name}**: {p['exports']}. Rules: `{p['qc_default']}` (default)"
                    + (f"; {others}" if others else "") + (f". Overpass: {p['overpass']}" if p["overpass"] else "")
                    + f". Resolution: {p['resolution_note']}. Not verified: {p['unverified']}.")
    rows += ["", "Sources:", ""] + [f"- `{key}`: {text}" for key, text in SOURCES.items()]
    return "\n".join(rows)
