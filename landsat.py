"""Your own Landsat 8/9 scene -> the LST and guidance GeoTIFFs that prepare.py and predict.py read.

    python landsat.py LC09_L2SP_..._02_T1/ --out scenes/a
    python landsat.py LC08_..._MTL.xml --out scenes/a --window 2000 3000 1024 1024 --dem dem.tif
    python landsat.py LC08_L1TP_.../ --out scenes/b --bbox 480000 5620000 510000 5650000 --emissivity ndvi
    python landsat.py PRODUCT --out DIR --file B10=renamed_thermal.tif --mask fill,cloud,shadow

(`python groklst.py landsat ...` is the same command.)

PRODUCT is a product folder as delivered (its *_MTL.txt or *_MTL.xml is found there) or the MTL file
itself. The band files are those named by the MTL (FILE_NAME_BAND_x, FILE_NAME_QUALITY_L1_PIXEL,
FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION in Collection 2, FILE_NAME_BAND_QUALITY in Collection 1),
looked up beside the MTL; a renamed file is given with --file KEY=PATH (keys B1..B7, B10, QA, RADSAT).

Output, on the scene's 30 m grid (or the --window / --bbox part of it) with the input's georeferencing
(GeoTIFF tags copied, PixelIsArea or PixelIsPoint as the input):

    DIR/lst.tif        1 band float32, Kelvin, NaN where masked
    DIR/guidance.tif   float32 bands named (GDAL band descriptions) deepblue blue green red nir swir1
                       swir2 ndvi ndwi ndmi [dem]; NaN where masked
    DIR/landsat.yaml   what was made: product, level, the quantity in lst.tif, calibration, window, masks

Temperature:
- Collection 2 Level-2 (L2SP): surface temperature ST_B10, T = DN * TEMPERATURE_MULT_BAND_ST_B10 +
  TEMPERATURE_ADD_BAND_ST_B10 (group LEVEL2_SURFACE_TEMPERATURE_PARAMETERS). This is LST.
- Level-1 (Collection 1 or 2): top-of-atmosphere brightness temperature of B10,
  L = DN * RADIANCE_MULT_BAND_10 + RADIANCE_ADD_BAND_10 (W m-2 sr-1 um-1), BT = K2 / ln(K1 / L + 1).
  This is NOT LST: neither emissivity nor the atmosphere is corrected (typically a few K below LST).
  --emissivity ndvi applies the NDVI thresholds emissivity of Sobrino et al. (2004),
      NDVI < 0.2 (bare soil):      eps = 0.979 - 0.035 * red
      0.2 <= NDVI <= 0.5 (mixed):  eps = 0.986 + 0.004 * Pv,  Pv = ((NDVI - 0.2) / (0.5 - 0.2))^2
      NDVI > 0.5 (vegetation):     eps = 0.99
  and LST = BT / (1 + (lambda * BT / rho) * ln(eps)), lambda = 10.895 um (B10 effective wavelength),
  rho = h c / k_B = 1.438e-2 m K = 14388 um K. Sobrino, J.A., Jimenez-Munoz, J.C., Paolini, L. (2004):
  Land surface temperature retrieval from LANDSAT TM 5, Remote Sensing of Environment 90, 434-440. The
  coefficients were derived for TM band 6 and are used for B10 as is usual; water (NDVI < 0) gets the soil
  relation (about 0.98, real water is about 0.99). Still no atmospheric correction: prefer Level-2.

Reflectance (bands 1-7 = deepblue, blue, green, red, nir, swir1, swir2):
- Level-2: surface reflectance, rho = DN * REFLECTANCE_MULT_BAND_x + REFLECTANCE_ADD_BAND_x
  (group LEVEL2_SURFACE_REFLECTANCE_PARAMETERS).
- Level-1: TOA reflectance, rho = (DN * REFLECTANCE_MULT_BAND_x + REFLECTANCE_ADD_BAND_x) / sin(SUN_ELEVATION)
  (group LEVEL1_RADIOMETRIC_RESCALING, Collection 1: RADIOMETRIC_RESCALING).
Indices: ndvi = (nir - red) / (nir + red); ndwi = (green - nir) / (green + nir) (McFeeters 1996);
ndmi = (nir - swir1) / (nir + swir1). NaN where the denominator is 0.

DEM (--dem): a GeoTIFF in the scene's CRS (another CRS is refused: reproject it first, e.g. gdalwarp -t_srs).
On the scene's grid it is cut; otherwise it is resampled by bilinear interpolation at the 30 m pixel centres
(pixels outside the DEM are NaN in the dem band only). North-up grids only.

Masks (--mask, a comma list; default fill,cloud,dilated_cloud,cirrus,shadow,saturated):
- Collection 2 QA_PIXEL bits: 0 fill, 1 dilated_cloud, 2 cirrus, 3 cloud, 4 shadow (cloud shadow), 5 snow,
  7 water: a pixel is masked when any chosen bit is set.
- Collection 1 BQA (Landsat 8): bit 0 designated fill, bit 1 terrain occlusion, bits 2-3 radiometric
  saturation (number of saturated bands: 00 none, 01 1-2, 10 3-4, 11 5 or more), bit 4 cloud, bits 5-6 cloud
  confidence, bits 7-8 cloud shadow confidence, bits 9-10 snow/ice confidence, bits 11-12 cirrus
  confidence (2-bit confidences: 00 not determined, 01 low, 10 medium, 11 high). fill -> bit 0, cloud -> bit 4,
  shadow / snow / cirrus -> their confidence is high (11), saturated -> bits 2-3 not 00. dilated_cloud and water
  have no C1 bit (listed in the summary as not available).
- saturated, Collection 2: QA_RADSAT bit x-1 set for a band x in 1..7 that is used (bit 0 = band 1).
- Always: DN 0 (fill) or the file's no-data value in any band read.
Masked pixels are NaN in lst.tif and in every guidance band.

Window: --window ROW0 COL0 ROWS COLS (pixels) or --bbox XMIN YMIN XMAX YMAX (scene CRS, metres; the window
covers every pixel the box touches, clipped to the scene). Bands are read one at a time, each cut to the window
at once, so a full 7,800 x 7,800 scene is never held twice.
"""
import argparse
import math
import os
import re
import sys
import xml.etree.ElementTree as ET

import numpy as np
import yaml

from errors import ConfigError, DataError, command
from geotiff import (
    check_writable,
    corner_transform,
    crs_of,
    describe_grid,
    read_geotiff,
    read_header,
    same_grid,
    write_geotiff,
)

REFLECTIVE = {1: "deepblue", 2: "blue", 3: "green", 4: "red", 5: "nir", 6: "swir1", 7: "swir2"}
INDICES = ("ndvi", "ndwi", "ndmi")
GUIDANCE = tuple(REFLECTIVE.values()) + INDICES
THERMAL_BAND = 10
LAMBDA_B10_UM = 10.895    # effective wavelength of TIRS band 10
RHO_UM_K = 14388.0        # h c / k_B in um K

QA_PIXEL_BITS = {"fill": 0, "dilated_cloud": 1, "cirrus": 2, "cloud": 3, "shadow": 4, "snow": 5, "water": 7}
# Collection 1 BQA: name -> (first bit, width, value that masks); 2-bit fields mask at high confidence (0b11)
BQA_C1_FIELDS = {"fill": (0, 1, 1), "cloud": (4, 1, 1), "shadow": (7, 2, 3), "snow": (9, 2, 3), "cirrus": (11, 2, 3)}
MASK_NAMES = tuple(QA_PIXEL_BITS) + ("saturated",)
DEFAULT_MASK = "fill,cloud,dilated_cloud,cirrus,shadow,saturated"
FILE_KEYS = tuple(f"B{b}" for b in REFLECTIVE) + (f"B{THERMAL_BAND}", "QA", "RADSAT")
FILE_ALIASES = {**{f"SR_B{b}": f"B{b}" for b in REFLECTIVE}, "ST_B10": "B10", "QA_PIXEL": "QA", "BQA": "QA",
                "QA_RADSAT": "RADSAT"}
SPACECRAFT = ("LANDSAT_8", "LANDSAT_9")

# where each calibration lives: Collection 2 group first, then Collection 1
L1_RESCALING = ("LEVEL1_RADIOMETRIC_RESCALING", "RADIOMETRIC_RESCALING")
L1_THERMAL = ("LEVEL1_THERMAL_CONSTANTS", "TIRS_THERMAL_CONSTANTS")
L2_REFLECTANCE = ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS",)
L2_TEMPERATURE = ("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS",)
ATTRIBUTES = ("IMAGE_ATTRIBUTES", "PRODUCT_METADATA")


# --------------------------------------------------------------------------- MTL


def parse_mtl_text(text, path):
    """MTL text (GROUP = NAME / KEY = value / END_GROUP = NAME / END) -> {group: {key: value string}}, keyed
    by the innermost group (MTL group names are unique). Values lose their quotes; nothing is evaluated."""
    groups, stack = {}, []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line == "END":
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise DataError(f"{path}: line {n} is not 'KEY = value' ({line[:60]!r}): not an MTL file?")
        if key == "GROUP":
            stack.append(value)
            groups.setdefault(value, {})
        elif key == "END_GROUP":
            if not stack or stack[-1] != value:
                raise DataError(f"{path}: line {n}: END_GROUP = {value} does not close the open group "
                                f"{stack[-1] if stack else '(none)'}")
            stack.pop()
        elif stack:
            groups[stack[-1]][key] = value.strip('"')
    if not groups:
        raise DataError(f"{path}: no GROUP = ... lines: not a Landsat MTL file")
    return groups


def parse_mtl_xml(text, path):
    """MTL XML (<LANDSAT_METADATA_FILE><PRODUCT_CONTENTS><KEY>value</KEY>...) -> {group: {key: value}}."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise DataError(f"{path}: not well-formed XML ({e})") from None
    groups = {}
    for element in root.iter():
        if len(element) and element is not root:
            groups[element.tag] = {c.tag: (c.text or "").strip() for c in element if not len(c)}
    if not groups:
        raise DataError(f"{path}: no metadata groups: not a Landsat MTL XML file")
    return groups


def read_mtl(path):
    """An MTL file, text or XML (told apart by its first character) -> {group: {key: value string}}."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: MTL file not found") from None
    parse = parse_mtl_xml if text.lstrip().startswith("<") else parse_mtl_text
    return parse(text, path)


def mtl_value(mtl, key, groups, path, number=True):
    """The value of `key` from the first of `groups` that has it (float when `number`); DataError naming
    the key and the groups searched otherwise."""
    for g in groups:
        if key in mtl.get(g, {}):
            value = mtl[g][key]
            if not number:
                return value
            try:
                return float(value)
            except ValueError:
                raise DataError(f"{path}: MTL key {g}/{key} = {value!r} is not a number") from None
    raise DataError(f"{path}: MTL key {key} missing (looked in group {' / '.join(groups)}); "
                    f"is this the product's own, complete MTL file?")


def find_mtl(product):
    """A product folder or MTL file -> the MTL path (one *_MTL.txt preferred over its *_MTL.xml twin)."""
    if os.path.isfile(product):
        return product
    if not os.path.isdir(product):
        raise DataError(f"{product}: no such product folder or MTL file")
    found = sorted(f for f in os.listdir(product) if re.search(r"_MTL\.(txt|xml)$", f, re.IGNORECASE))
    stems = sorted({f[:-8] for f in found})
    if not found:
        raise DataError(f"{product}: no *_MTL.txt or *_MTL.xml in this folder: give the MTL file itself")
    if len(stems) > 1:
        raise DataError(f"{product}: several products' MTL files ({', '.join(found)}): give one MTL file")
    return os.path.join(product, min(found, key=lambda f: not f.lower().endswith(".txt")))


def describe_product(mtl, path):
    """{'collection': 1|2, 'level': 'L1'|'L2', 'spacecraft', 'product_id', 'file_keys': {file key: MTL key}}."""
    if "PRODUCT_CONTENTS" in mtl:
        collection, contents = 2, "PRODUCT_CONTENTS"
    elif "PRODUCT_METADATA" in mtl:
        collection, contents = 1, "PRODUCT_METADATA"
    else:
        raise DataError(f"{path}: neither a PRODUCT_CONTENTS (Collection 2) nor a PRODUCT_METADATA (Collection 1) "
                        f"group: not a Landsat Collection 1/2 MTL file")
    level = "L2" if "FILE_NAME_BAND_ST_B10" in mtl[contents] else "L1"
    spacecraft = mtl_value(mtl, "SPACECRAFT_ID", ATTRIBUTES, path, number=False)
    if spacecraft not in SPACECRAFT:
        raise DataError(f"{path}: SPACECRAFT_ID = {spacecraft}: only Landsat 8/9 (OLI/TIRS band numbers) are supported")
    keys = {f"B{b}": f"FILE_NAME_BAND_{b}" for b in REFLECTIVE}
    keys["B10"] = "FILE_NAME_BAND_ST_B10" if level == "L2" else "FILE_NAME_BAND_10"
    if collection == 2:
        keys.update(QA="FILE_NAME_QUALITY_L1_PIXEL", RADSAT="FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION")
    else:
        keys["QA"] = "FILE_NAME_BAND_QUALITY"
    product_id = mtl.get(contents, {}).get("LANDSAT_PRODUCT_ID") or mtl.get("METADATA_FILE_INFO", {}).get(
        "LANDSAT_PRODUCT_ID") or os.path.basename(path)[:-8]
    return {"collection": collection, "level": level, "spacecraft": spacecraft, "product_id": product_id,
            "contents": contents, "file_keys": keys}


def parse_file_overrides(items):
    """['B10=path', 'ST_B10=path', ...] -> {file key: path}; ConfigError for an unknown key."""
    out = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        key = FILE_ALIASES.get(key.strip().upper(), key.strip().upper())
        if not eq or not value or key not in FILE_KEYS:
            raise ConfigError(f"--file {item!r}: expected KEY=PATH with KEY one of {', '.join(FILE_KEYS)} "
                              f"(or {', '.join(FILE_ALIASES)})")
        out[key] = value
    return out


def product_files(mtl, path, product, overrides=None):
    """{file key: path} of the files used, from the MTL's FILE_NAME_* entries (beside the MTL) or --file.
    RADSAT is optional; a missing other file is a DataError naming its MTL key."""
    folder = os.path.dirname(os.path.abspath(path))
    files = {}
    for key, mtl_key in product["file_keys"].items():
        if key in (overrides or {}):
            files[key] = overrides[key]
        elif mtl_key in mtl[product["contents"]]:
            files[key] = os.path.join(folder, mtl[product["contents"]][mtl_key])
        elif key != "RADSAT":
            raise DataError(f"{path}: MTL key {product['contents']}/{mtl_key} missing: give the file with --file {key}=PATH")
        if key in files and not os.path.isfile(files[key]):
            how = "--file" if key in (overrides or {}) else f"MTL key {mtl_key}"
            raise DataError(f"{files[key]}: file not found (band {key}, from {how}); a renamed file is given with "
                            f"--file {key}=PATH")
    return files


# --------------------------------------------------------------------------- calibration


def calibration(mtl, path, product):
    """{'B1'..'B7': (mult, add), 'B10': (mult, add), 'k1', 'k2', 'sun_elevation'} as the level needs."""
    cal = {}
    for b in REFLECTIVE:
        groups = L2_REFLECTANCE if product["level"] == "L2" else L1_RESCALING
        cal[f"B{b}"] = (mtl_value(mtl, f"REFLECTANCE_MULT_BAND_{b}", groups, path),
                        mtl_value(mtl, f"REFLECTANCE_ADD_BAND_{b}", groups, path))
    if product["level"] == "L2":
        cal["B10"] = (mtl_value(mtl, "TEMPERATURE_MULT_BAND_ST_B10", L2_TEMPERATURE, path),
                      mtl_value(mtl, "TEMPERATURE_ADD_BAND_ST_B10", L2_TEMPERATURE, path))
    else:
        cal["B10"] = (mtl_value(mtl, "RADIANCE_MULT_BAND_10", L1_RESCALING, path),
                      mtl_value(mtl, "RADIANCE_ADD_BAND_10", L1_RESCALING, path))
        cal["k1"] = mtl_value(mtl, "K1_CONSTANT_BAND_10", L1_THERMAL, path)
        cal["k2"] = mtl_value(mtl, "K2_CONSTANT_BAND_10", L1_THERMAL, path)
        cal["sun_elevation"] = mtl_value(mtl, "SUN_ELEVATION", ATTRIBUTES, path)
        if not 0 < cal["sun_elevation"] <= 90:
            raise DataError(f"{path}: SUN_ELEVATION = {cal['sun_elevation']} is not in (0, 90] degrees: "
                            f"a night scene has no reflectance")
    return cal


def brightness_temperature(dn, mult, add, k1, k2):
    """B10 DN (H, W) -> TOA brightness temperature (K): L = DN*mult + add, BT = K2 / ln(K1/L + 1); NaN for L <= 0."""
    radiance = dn * np.float32(mult) + np.float32(add)
    with np.errstate(divide="ignore", invalid="ignore"):
        bt = np.float32(k2) / np.log(np.float32(k1) / radiance + 1)
    bt[~(radiance > 0)] = np.nan
    return bt.astype(np.float32)


def ndvi_emissivity(ndvi, red):
    """Sobrino et al. (2004) NDVI thresholds emissivity (H, W) from NDVI and red reflectance (see the module doc)."""
    pv = np.clip((ndvi - 0.2) / 0.3, 0, 1) ** 2
    eps = np.where(ndvi < 0.2, 0.979 - 0.035 * red, np.where(ndvi > 0.5, 0.99, 0.986 + 0.004 * pv))
    return eps.astype(np.float32)


def emissivity_correction(bt, eps):
    """LST (K) = BT / (1 + (lambda BT / rho) ln(eps)), lambda = 10.895 um, rho = 14388 um K."""
    return (bt / (1 + (LAMBDA_B10_UM * bt / RHO_UM_K) * np.log(eps))).astype(np.float32)


def normalized_difference(a, b):
    """(a - b) / (a + b), NaN where a + b == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / (a + b)
    out[(a + b) == 0] = np.nan
    return out.astype(np.float32)


# --------------------------------------------------------------------------- masks


def parse_mask(text):
    """'fill,cloud,...' -> tuple of mask names; ConfigError naming an unknown one."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MASK_NAMES]
    if unknown:
        raise ConfigError(f"--mask: unknown {', '.join(unknown)}; choose from {', '.join(MASK_NAMES)}")
    return names


def qa_masks(qa, collection, names):
    """QA band values (H, W) float (NaN = no QA: masked as fill) -> ({name: bool (H, W)}, names not in this QA band)."""
    missing = ~np.isfinite(qa)
    bits = np.where(missing, 1, qa).astype(np.int64) & 0xFFFF   # int16 files store the bit pattern signed
    masks, absent = {}, []
    for name in names:
        if name == "saturated":
            if collection == 1:   # C1 BQA bits 2-3: number of saturated bands, not which
                masks[name] = ((bits >> 2) & 3) != 0
            continue
        if collection == 2:
            masks[name] = (bits >> QA_PIXEL_BITS[name]) & 1 == 1
        elif name in BQA_C1_FIELDS:
            first, width, value = BQA_C1_FIELDS[name]
            masks[name] = (bits >> first) & ((1 << width) - 1) == value
        else:
            absent.append(name)
    if "fill" in masks:
        masks["fill"] |= missing
    return masks, absent


def radsat_mask(radsat):
    """QA_RADSAT (H, W) -> bool: a used band (1..7, bits 0..6) saturated."""
    bits = np.where(np.isfinite(radsat), radsat, 0).astype(np.int64) & 0xFFFF
    return (bits & sum(1 << (b - 1) for b in REFLECTIVE)) != 0


# --------------------------------------------------------------------------- grids


def bbox_window(bbox, shape, geo, path):
    """(xmin, ymin, xmax, ymax) in the scene CRS -> (row0, col0, rows, cols): every pixel the box touches,
    clipped to the scene; DataError if the box misses it or the grid is rotated."""
    t = corner_transform(geo)
    if t is None:
        raise DataError(f"{path}: not georeferenced: use --window (pixels) instead of --bbox")
    x0, dx, rx, y0, ry, dy = t
    if rx or ry:
        raise DataError(f"{path}: rotated grid: --bbox needs a north-up grid; use --window")
    xmin, ymin, xmax, ymax = bbox
    if xmin >= xmax or ymin >= ymax:
        raise ConfigError(f"--bbox {bbox}: need XMIN < XMAX and YMIN < YMAX")
    cols = sorted(((xmin - x0) / dx, (xmax - x0) / dx))
    rows = sorted(((ymax - y0) / dy, (ymin - y0) / dy))
    c0, c1 = max(0, math.floor(cols[0])), min(shape[1], math.ceil(cols[1]))
    r0, r1 = max(0, math.floor(rows[0])), min(shape[0], math.ceil(rows[1]))
    if c0 >= c1 or r0 >= r1:
        raise DataError(f"--bbox {bbox} does not overlap the scene: {describe_grid(path, shape, geo)}")
    return r0, c0, r1 - r0, c1 - c0


def check_band_grid(path, key, header, ref_path, ref_header):
    """DataError unless a band file has the thermal band's shape and grid (one product is co-registered)."""
    if header["shape"][1:] != ref_header["shape"][1:] or not same_grid(header["geo"], ref_header["geo"]):
        raise DataError(f"band {key} is not on the grid of the thermal band: "
                        f"{describe_grid(path, header['shape'][1:], header['geo'])}; "
                        f"{describe_grid(ref_path, ref_header['shape'][1:], ref_header['geo'])}")


def _axis_weights(centres, n):
    """Source index coordinates (pixel-centre based) -> (i0, i1, w1, valid) for 1-D linear interpolation;
    points within half a pixel outside the first/last centre take the edge value."""
    valid = (centres >= -0.5) & (centres <= n - 0.5)
    c = np.clip(centres, 0, n - 1)
    i0 = np.clip(np.floor(c).astype(np.int64), 0, max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (c - i0).astype(np.float32), valid


def resample_dem(dem_path, shape, geo):
    """DEM GeoTIFF -> (H, W) float32 metres on the grid (shape, geo): the same CRS required; bilinear at the
    target pixel centres (separable, north-up grids); NaN outside the DEM. Returns (dem, how)."""
    array, info = read_geotiff(dem_path)
    if len(array) != 1:
        raise DataError(f"{dem_path}: DEM has {len(array)} bands, expected 1 (metres)")
    if crs_of(info["geo"]) != crs_of(geo):
        raise DataError(f"{dem_path}: DEM CRS (GeoKeys {crs_of(info['geo'])}) is not the scene's "
                        f"({crs_of(geo)}): reproject it onto the scene's CRS first (gdalwarp -t_srs EPSG:...)")
    src, dst = corner_transform(info["geo"]), corner_transform(geo)
    if src is None or dst is None:
        raise DataError(f"{dem_path}: DEM or scene not georeferenced: cannot place the DEM on the scene")
    if src[2] or src[4] or dst[2] or dst[4]:
        raise DataError(f"{dem_path}: rotated grid: only north-up DEMs are resampled")
    h, w = shape
    cols = (dst[0] + (np.arange(w) + 0.5) * dst[1] - src[0]) / src[1] - 0.5
    rows = (dst[3] + (np.arange(h) + 0.5) * dst[5] - src[3]) / src[5] - 0.5
    c0, c1, wc, vc = _axis_weights(cols, array.shape[2])
    r0, r1, wr, vr = _axis_weights(rows, array.shape[1])
    dem = array[0]
    top = dem[r0][:, c0] * (1 - wc) + dem[r0][:, c1] * wc
    bottom = dem[r1][:, c0] * (1 - wc) + dem[r1][:, c1] * wc
    out = top * (1 - wr[:, None]) + bottom * wr[:, None]
    out[~(vr[:, None] & vc[None, :])] = np.nan
    same = array.shape[1:] == tuple(shape) and same_grid(info["geo"], geo)
    how = "same grid" if same else f"bilinear from {abs(src[1]):g} x {abs(src[5]):g} pixels"
    return out.astype(np.float32), how


# --------------------------------------------------------------------------- the command


def landsat(product_path, out, window=None, bbox=None, dem=None, mask=DEFAULT_MASK, emissivity=None, files=None):
    """Landsat 8/9 product -> out/lst.tif, out/guidance.tif, out/landsat.yaml; returns the summary dict.

    window (row0, col0, rows, cols) in pixels or bbox (xmin, ymin, xmax, ymax) in the scene CRS; dem: a
    GeoTIFF path; mask: comma list of MASK_NAMES; emissivity: None or 'ndvi' (Level-1 only); files:
    {file key: path} overriding the MTL's file names.
    """
    if window is not None and bbox is not None:
        raise ConfigError("--window and --bbox: give one of them")
    names = parse_mask(mask)
    mtl_path = find_mtl(product_path)
    mtl = read_mtl(mtl_path)
    product = describe_product(mtl, mtl_path)
    if emissivity is not None and product["level"] == "L2":
        raise ConfigError(f"--emissivity {emissivity}: {mtl_path} is Level-2, whose ST_B10 is already "
                          f"emissivity-corrected LST; drop --emissivity")
    cal = calibration(mtl, mtl_path, product)
    paths = product_files(mtl, mtl_path, product, files)
    os.makedirs(out, exist_ok=True)
    for name in ("lst.tif", "guidance.tif"):
        check_writable(os.path.join(out, name))

    ref_path = paths["B10"]
    ref = read_header(ref_path)
    for key, path in paths.items():
        if key != "B10":
            check_band_grid(path, key, read_header(path), ref_path, ref)
    full_shape = ref["shape"][1:]
    if bbox is not None:
        window = bbox_window(bbox, full_shape, ref["geo"], ref_path)
    if window is not None:
        r0, c0, rows, cols = window
        if r0 < 0 or c0 < 0 or rows <= 0 or cols <= 0 or r0 + rows > full_shape[0] or c0 + cols > full_shape[1]:
            raise ConfigError(f"--window {r0} {c0} {rows} {cols} is outside the scene's "
                              f"{full_shape[0]} x {full_shape[1]} pixels ({ref_path})")
        window = (r0, c0, rows, cols)

    def read(key):
        """One band's DN (H, W) float32 in the window and its fill mask (no-data or DN 0)."""
        array, info = read_geotiff(paths[key], window)
        if len(array) != 1:
            raise DataError(f"{paths[key]}: band {key} has {len(array)} bands, expected 1")
        return array[0], info, ~np.isfinite(array[0]) | (array[0] == 0)

    dn, info, fill = read("B10")
    geo, shape = info["geo"], dn.shape
    band_names = list(GUIDANCE) + (["dem"] if dem else [])
    guidance = np.empty((len(band_names), *shape), np.float32)
    for i, b in enumerate(REFLECTIVE):
        band, _, band_fill = read(f"B{b}")
        fill |= band_fill
        mult, add = cal[f"B{b}"]
        guidance[i] = band * np.float32(mult) + np.float32(add)
        if product["level"] == "L1":
            guidance[i] /= np.float32(math.sin(math.radians(cal["sun_elevation"])))
    del band
    g = {n: guidance[i] for i, n in enumerate(GUIDANCE[:len(REFLECTIVE)])}
    guidance[len(REFLECTIVE)] = normalized_difference(g["nir"], g["red"])
    guidance[len(REFLECTIVE) + 1] = normalized_difference(g["green"], g["nir"])
    guidance[len(REFLECTIVE) + 2] = normalized_difference(g["nir"], g["swir1"])

    mult, add = cal["B10"]
    if product["level"] == "L2":
        lst = dn * np.float32(mult) + np.float32(add)
        quantity = "land surface temperature (Collection 2 Level-2 ST_B10)"
    else:
        lst = brightness_temperature(dn, mult, add, cal["k1"], cal["k2"])
        quantity = "top-of-atmosphere brightness temperature of B10, NOT land surface temperature"
        if emissivity == "ndvi":
            eps = ndvi_emissivity(guidance[GUIDANCE.index("ndvi")], g["red"])
            lst = emissivity_correction(lst, eps)
            quantity = ("B10 brightness temperature corrected with NDVI-threshold emissivity (Sobrino et al. 2004); "
                        "no atmospheric correction")
    del dn

    qa, _, _ = read("QA")
    masks, absent = qa_masks(qa, product["collection"], names)
    del qa
    if "saturated" in names and "RADSAT" in paths:
        masks["saturated"] = radsat_mask(read("RADSAT")[0])
    masks["fill (DN 0 / no-data)"] = fill
    masked = np.zeros(shape, bool)
    for m in masks.values():
        masked |= m

    dem_how = None
    if dem:
        guidance[-1], dem_how = resample_dem(dem, shape, geo)
    lst[masked] = np.nan
    guidance[:, masked] = np.nan

    write_geotiff(os.path.join(out, "lst.tif"), lst, geo, band_names=["lst" if "NOT" not in quantity else "bt"])
    write_geotiff(os.path.join(out, "guidance.tif"), guidance, geo, band_names=band_names)
    finite = lst[np.isfinite(lst)]
    summary = {
        "product": product["product_id"], "mtl": os.path.abspath(mtl_path), "collection": product["collection"],
        "level": product["level"], "spacecraft": product["spacecraft"], "lst_quantity": quantity,
        "lst_units": "K", "calibration": {k: list(v) if isinstance(v, tuple) else v for k, v in cal.items()},
        "files": {k: os.path.abspath(v) for k, v in paths.items()},
        "window": list(window) if window else None, "shape": list(shape), "scene_shape": list(full_shape),
        "guidance_bands": band_names, "dem": os.path.abspath(dem) if dem else None, "dem_resampling": dem_how,
        "dem_nan_fraction": float(np.isnan(guidance[-1][~masked]).mean()) if dem and (~masked).any() else None,
        "mask": list(names), "mask_not_in_qa": absent,
        "masked_fraction": float(masked.mean()),
        "masked_by": {k: float(v.mean()) for k, v in masks.items()},
        "lst_range_k": [float(finite.min()), float(finite.mean()), float(finite.max())] if finite.size else None,
        "out": os.path.abspath(out),
    }
    with open(os.path.join(out, "landsat.yaml"), "w") as f:
        f.write("# written by landsat.py: what lst.tif and guidance.tif hold\n")
        yaml.safe_dump(summary, f, sort_keys=False)
    return summary


def format_summary(s):
    """The summary dict of `landsat` as a few readable lines."""
    where = (f"window rows {s['window'][0]}..{s['window'][0] + s['window'][2]}, cols "
             f"{s['window'][1]}..{s['window'][1] + s['window'][3]} of {s['scene_shape'][0]} x {s['scene_shape'][1]}"
             if s["window"] else "whole scene")
    lines = [f"landsat {s['product']}: {s['spacecraft']} Collection {s['collection']} {s['level']}, {where}, "
             f"{s['shape'][0]} x {s['shape'][1]} px"]
    rng = s["lst_range_k"]
    lines.append(f"  lst.tif: {s['lst_quantity']}" + (f", min/mean/max {rng[0]:.2f}/{rng[1]:.2f}/{rng[2]:.2f} K"
                                                       if rng else ", no valid pixel"))
    if s["level"] == "L1" and "NOT" in s["lst_quantity"]:
        lines.append("  warning: Level-1 gives brightness temperature, not LST (a few K lower): use the Level-2 "
                     "product, or --emissivity ndvi for an emissivity correction")
    lines.append(f"  guidance.tif: {len(s['guidance_bands'])} bands: {', '.join(s['guidance_bands'])}"
                 + (f" (dem: {s['dem_resampling']}, {100 * s['dem_nan_fraction']:.1f} % outside the DEM)"
                    if s["dem"] and s["dem_nan_fraction"] is not None else ""))
    by = ", ".join(f"{k} {100 * v:.1f} %" for k, v in s["masked_by"].items())
    lines.append(f"  masked (NaN in every band): {100 * s['masked_fraction']:.1f} % ({by})")
    if s["mask_not_in_qa"]:
        lines.append(f"  not in this product's QA band: {', '.join(s['mask_not_in_qa'])}")
    out = s["out"]
    lines.append(f"  wrote {out}/lst.tif, {out}/guidance.tif, {out}/landsat.yaml")
    lines.append(f"  next: python prepare.py --lst {out}/lst.tif --guidance {out}/guidance.tif --out data/myscene")
    return "\n".join(lines)


@command
def main(argv=None):
    """`python landsat.py ...` (and `python groklst.py landsat ...`)."""
    p = argparse.ArgumentParser(prog="landsat.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("product", help="product folder (with its *_MTL.txt / *_MTL.xml) or the MTL file")
    p.add_argument("--out", required=True, help="output folder: lst.tif, guidance.tif, landsat.yaml")
    p.add_argument("--window", type=int, nargs=4, default=None, metavar=("ROW0", "COL0", "ROWS", "COLS"),
                   help="pixel window of the scene")
    p.add_argument("--bbox", type=float, nargs=4, default=None, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                   help="map window in the scene CRS")
    p.add_argument("--dem", default=None, help="DEM GeoTIFF in the scene CRS (adds a 'dem' guidance band)")
    p.add_argument("--mask", default=DEFAULT_MASK, help=f"QA conditions masked (NaN), from {', '.join(MASK_NAMES)}")
    p.add_argument("--emissivity", choices=["ndvi"], default=None,
                   help="Level-1: NDVI-threshold emissivity correction of the brightness temperature")
    p.add_argument("--file", action="append", default=[], metavar="KEY=PATH",
                   help=f"a renamed band file, KEY one of {', '.join(FILE_KEYS)}; repeatable")
    args = p.parse_args(argv)
    summary = landsat(args.product, args.out, window=args.window, bbox=args.bbox, dem=args.dem, mask=args.mask,
                      emissivity=args.emissivity, files=parse_file_overrides(args.file))
    print(format_summary(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
