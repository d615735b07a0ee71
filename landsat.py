"""Your own Landsat 8/9 scene -> the LST and guidance GeoTIFFs that prepare.py and predict.py read.

    python landsat.py LC09_L2SP_..._02_T1/ --out scenes/a
    python landsat.py LC08_..._MTL.xml --out scenes/a --window 2000 3000 1024 1024 --dem dem.tif
    python landsat.py LC08_L1TP_.../ --out scenes/b --bbox 480000 5620000 510000 5650000 --emissivity ndvi
    python landsat.py PRODUCT --out DIR --file B10=renamed_thermal.tif --mask fill,cloud,shadow
    python landsat.py PRODUCT --out DIR --bands deepblue,blue,green,red,nir,ndvi,ndwi   # a folder without B6, B7

PRODUCT is a product folder as delivered (its *_MTL.txt or *_MTL.xml is found there) or the MTL file
itself. Formats: Collection 2 (PRODUCT_CONTENTS group), Collection 1 (PRODUCT_METADATA with a
COLLECTION_NUMBER or a LANDSAT_PRODUCT_ID) and pre-collection Landsat 8 (PRODUCT_METADATA with neither;
scene IDs like LC81950252013188LGN00), told apart by the MTL, never by file names. The product is named
by the MTL's LANDSAT_PRODUCT_ID, else its LANDSAT_SCENE_ID.

Files: only those that the chosen bands and masks use are needed: B10 always; B1..B7 for the guidance
bands made from them (--bands; --emissivity ndvi adds B4, B5); the QA band for the --mask conditions it
holds; QA_RADSAT for `saturated` (Collection 2). Each is found, in this order: --file KEY=PATH (keys
B1..B7, B10, QA, RADSAT); the MTL's name (FILE_NAME_BAND_x, FILE_NAME_QUALITY_L1_PIXEL,
FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION in Collection 2, FILE_NAME_BAND_QUALITY before) beside the MTL;
else the one file beside the MTL whose name ends in the band's suffix, any case, .tif or .tiff:
_SR_B1.._SR_B7, _ST_B10 (Level-2), _B1.._B7, _B10 (Level-1; not _SR_ / _ST_ files), _QA_PIXEL,
_QA_RADSAT (Collection 2), _BQA (before). Several such files are an error naming them; every file not
found is listed in one error, with the --bands / --mask that would do without it.

Output, on the scene's 30 m grid (or the --window / --bbox part of it) with the input's georeferencing
(GeoTIFF tags copied, PixelIsArea or PixelIsPoint as the input):

    DIR/lst.tif        1 band float32, Kelvin, NaN where masked; band description 'lst' (Level-2) or,
                       Level-1, 'bt' (brightness temperature) / 'bt_emissivity_corrected'
    DIR/guidance.tif   float32 bands named (GDAL band descriptions) deepblue blue green red nir swir1
                       swir2 ndvi ndwi ndmi (those of --bands, in this order) [dem]; NaN where masked
    DIR/landsat.yaml   what was made: product, level, the quantity in lst.tif, calibration, window, masks,
                       the guidance bands left out (guidance_left_out) and why

Guidance bands: all ten by default. --bands writes a subset (a comma list; dem comes with --dem). A folder
without some band files is not completed silently with fewer bands: a model is built for one band list,
so the error names the missing files and the --bands list that does without them, and a `note:` line
(and landsat.yaml) says which bands were left out.

Temperature:
- Collection 2 Level-2 (L2SP): surface temperature ST_B10, T = DN * TEMPERATURE_MULT_BAND_ST_B10 +
  TEMPERATURE_ADD_BAND_ST_B10 (group LEVEL2_SURFACE_TEMPERATURE_PARAMETERS). This is LST.
- Level-1 (Collection 1 or 2, pre-collection): top-of-atmosphere brightness temperature of B10,
  L = DN * RADIANCE_MULT_BAND_10 + RADIANCE_ADD_BAND_10 (W m-2 sr-1 um-1), BT = K2 / ln(K1 / L + 1).
  This is NOT LST: neither emissivity nor the atmosphere is corrected (typically a few K below LST).
  --emissivity ndvi applies the NDVI thresholds emissivity of Sobrino et al. (2004),
      NDVI < 0.2 (bare soil):      eps = 0.979 - 0.035 * red
      0.2 <= NDVI <= 0.5 (mixed):  eps = 0.986 + 0.004 * Pv,  Pv = ((NDVI - 0.2) / (0.5 - 0.2))^2
      NDVI > 0.5 (vegetation):     eps = 0.99
  and T = BT / (1 + (lambda * BT / rho) * ln(eps)), lambda = 10.895 um (B10 effective wavelength),
  rho = h c / k_B = 1.438e-2 m K = 14388 um K. Sobrino, J.A., Jimenez-Munoz, J.C., Paolini, L. (2004):
  Land surface temperature retrieval from LANDSAT TM 5, Remote Sensing of Environment 90, 434-440. The
  coefficients were derived for TM band 6 and are used for B10 as is usual; water (NDVI < 0) gets the soil
  relation (about 0.98, real water is about 0.99). Still no atmospheric correction: prefer Level-2.
- Checked where it is made: a thermal band that is fill (DN 0 / no-data) at every pixel of the window is
  an error, and so is an unmasked temperature outside data.LST_UNITS['range'] (150..400 K), which names
  the MTL's calibration keys (a scale wrong by x10 gives thousands of kelvin).

Reflectance (bands 1-7 = deepblue, blue, green, red, nir, swir1, swir2):
- Level-2: surface reflectance, rho = DN * REFLECTANCE_MULT_BAND_x + REFLECTANCE_ADD_BAND_x
  (group LEVEL2_SURFACE_REFLECTANCE_PARAMETERS).
- Level-1: TOA reflectance, rho = (DN * REFLECTANCE_MULT_BAND_x + REFLECTANCE_ADD_BAND_x) / sin(SUN_ELEVATION)
  (group LEVEL1_RADIOMETRIC_RESCALING, Collection 1 and before: RADIOMETRIC_RESCALING).
Indices: ndvi = (nir - red) / (nir + red); ndwi = (green - nir) / (green + nir) (McFeeters 1996);
ndmi = (nir - swir1) / (nir + swir1). NaN where the denominator is 0.

DEM (--dem): a GeoTIFF in the scene's CRS (another CRS is refused: reproject it first, e.g. gdalwarp -t_srs),
brought onto the scene's grid by geotiff.resample_to_grid (cut when on the grid, else bilinear at the 30 m
pixel centres; NaN in the dem band only, outside the DEM or at a void). A DEM without a no-data tag has
the conventional voids geotiff.DEM_VOIDS (-32768 SRTM, -9999, -3.4028235e38) read as no-data. A DEM that
gives a value at fewer than MIN_DEM_COVER (50 %) of the pixels where the thermal band has data is refused,
with both extents. North-up grids only.

Masks (--mask, a comma list; default fill,cloud,dilated_cloud,cirrus,shadow,saturated):
- Collection 2 QA_PIXEL bits: 0 fill, 1 dilated_cloud, 2 cirrus, 3 cloud, 4 shadow (cloud shadow), 5 snow,
  7 water: a pixel is masked when any chosen bit is set.
- Collection 1 BQA (Landsat 8): bit 0 designated fill, bit 1 terrain occlusion, bits 2-3 radiometric
  saturation (number of saturated bands: 00 none, 01 1-2, 10 3-4, 11 5 or more), bit 4 cloud, bits 5-6 cloud
  confidence, bits 7-8 cloud shadow confidence, bits 9-10 snow/ice confidence, bits 11-12 cirrus
  confidence (2-bit confidences: 00 not determined, 01 low, 10 medium, 11 high). fill -> bit 0, cloud -> bit 4,
  shadow / snow / cirrus -> their confidence is high (11), saturated -> bits 2-3 not 00. dilated_cloud and water
  have no C1 bit (listed in the summary as not available).
- Pre-collection BQA (Landsat 8 before Collection 1; USGS "Landsat 8 Quality Assessment Band", pre-collection
  table): bit 0 designated fill, bit 1 dropped frame, bit 2 terrain occlusion, bits 4-5 water, 6-7 cloud shadow
  (reserved, not populated), 8-9 vegetation (reserved), 10-11 snow/ice, 12-13 cirrus, 14-15 cloud confidence.
  fill -> bit 0 or bit 1, cloud / cirrus / snow / water -> their confidence is high (11). There is no cloud
  flag, no shadow and no saturation: shadow, dilated_cloud and saturated are listed as not available.
- saturated, Collection 2: QA_RADSAT bit x-1 set for a band x in 1..7 that is used (bit 0 = band 1).
- Always: DN 0 (fill) or the file's no-data value in any band read.
Masked pixels are NaN in lst.tif and in every guidance band.

Window: --window ROW0 COL0 ROWS COLS (pixels) or --bbox XMIN YMIN XMAX YMAX (scene CRS, metres; the window
covers every pixel the box touches, clipped to the scene: geotiff.bbox_window). Bands are read one at a
time, each cut to the window at once, so a full 7,800 x 7,800 scene is never held twice.
"""
import argparse
import math
import os
import re
import sys
import xml.etree.ElementTree as ET

import numpy as np
import yaml

import data
from errors import ConfigError, DataError, command
from geotiff import (
    DEM_VOIDS,
    bbox_window,
    check_grids,
    check_writable,
    describe_grid,
    read_geotiff,
    read_header,
    resample_to_grid,
    write_geotiff,
)
from sensors import LANDSAT_QA_PIXEL_BITS

REFLECTIVE = {1: "deepblue", 2: "blue", 3: "green", 4: "red", 5: "nir", 6: "swir1", 7: "swir2"}
BAND_NUMBER = {name: b for b, name in REFLECTIVE.items()}
INDICES = {"ndvi": ("nir", "red"), "ndwi": ("green", "nir"), "ndmi": ("nir", "swir1")}   # (a - b) / (a + b)
GUIDANCE = tuple(REFLECTIVE.values()) + tuple(INDICES)
THERMAL_BAND = 10
LAMBDA_B10_UM = 10.895    # effective wavelength of TIRS band 10
RHO_UM_K = 14388.0        # h c / k_B in um K
MIN_DEM_COVER = 0.5       # a DEM must give a value at half the pixels where the thermal band has data

# QA layouts: mask name -> [(first bit, width, lowest field value that masks), ...]; any field masks
QA_PIXEL_FIELDS = {name: [(bit, 1, 1)] for name, bit in LANDSAT_QA_PIXEL_BITS.items()}  # the one table: sensors.py
# Collection 1 BQA: 2-bit confidences mask at high (0b11); bits 2-3 count the saturated bands (any: masked)
BQA_C1_FIELDS = {"fill": [(0, 1, 1)], "saturated": [(2, 2, 1)], "cloud": [(4, 1, 1)], "shadow": [(7, 2, 3)],
                 "snow": [(9, 2, 3)], "cirrus": [(11, 2, 3)]}
# pre-collection BQA: fill is designated fill or a dropped frame; clouds only as a confidence (bits 14-15)
BQA_PRE_FIELDS = {"fill": [(0, 1, 1), (1, 1, 1)], "water": [(4, 2, 3)], "snow": [(10, 2, 3)], "cirrus": [(12, 2, 3)],
                  "cloud": [(14, 2, 3)]}
MASK_NAMES = tuple(QA_PIXEL_FIELDS) + ("saturated",)
DEFAULT_MASK = "fill,cloud,dilated_cloud,cirrus,shadow,saturated"
FILE_KEYS = tuple(f"B{b}" for b in REFLECTIVE) + (f"B{THERMAL_BAND}", "QA", "RADSAT")
FILE_ALIASES = {**{f"SR_B{b}": f"B{b}" for b in REFLECTIVE}, "ST_B10": "B10", "QA_PIXEL": "QA", "BQA": "QA",
                "QA_RADSAT": "RADSAT"}
SPACECRAFT = ("LANDSAT_8", "LANDSAT_9")
PRE_COLLECTION = "pre-collection"

# where each calibration lives: Collection 2 group first, then Collection 1 (and pre-collection)
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


def mtl_first(mtl, key, groups=()):
    """The value of `key` in the first of `groups` that has it, then in any group; None if absent or empty."""
    for g in (*groups, *mtl):
        if mtl.get(g, {}).get(key):
            return mtl[g][key]
    return None


def collection_of(mtl, path):
    """2 (PRODUCT_CONTENTS group), 1 (PRODUCT_METADATA with a COLLECTION_NUMBER or a LANDSAT_PRODUCT_ID) or
    'pre-collection' (PRODUCT_METADATA with neither: Landsat 8 before Collection 1, scene IDs like ...LGN00)."""
    if "PRODUCT_CONTENTS" in mtl:
        return 2
    if "PRODUCT_METADATA" not in mtl:
        raise DataError(f"{path}: neither a PRODUCT_CONTENTS (Collection 2) nor a PRODUCT_METADATA (Collection 1) "
                        f"group: not a Landsat MTL file")
    if mtl_first(mtl, "COLLECTION_NUMBER") or mtl_first(mtl, "LANDSAT_PRODUCT_ID"):
        return 1
    return PRE_COLLECTION


def describe_product(mtl, path):
    """{'collection': 2 | 1 | 'pre-collection', 'level': 'L1' | 'L2', 'spacecraft', 'product_id', 'contents'
    (the group naming the files), 'file_keys': {file key: MTL key}, 'suffixes': {file key: file name suffix},
    'qa_fields': the QA band's layout (QA_PIXEL_FIELDS, BQA_C1_FIELDS or BQA_PRE_FIELDS)}."""
    collection = collection_of(mtl, path)
    contents = "PRODUCT_CONTENTS" if collection == 2 else "PRODUCT_METADATA"
    level = "L2" if "FILE_NAME_BAND_ST_B10" in mtl[contents] else "L1"
    spacecraft = mtl_value(mtl, "SPACECRAFT_ID", ATTRIBUTES, path, number=False)
    if spacecraft not in SPACECRAFT:
        raise DataError(f"{path}: SPACECRAFT_ID = {spacecraft}: only Landsat 8/9 (OLI/TIRS band numbers) are supported")
    keys = {f"B{b}": f"FILE_NAME_BAND_{b}" for b in REFLECTIVE}
    suffixes = {f"B{b}": f"SR_B{b}" if level == "L2" else f"B{b}" for b in REFLECTIVE}
    keys["B10"], suffixes["B10"] = ("FILE_NAME_BAND_ST_B10", "ST_B10") if level == "L2" else ("FILE_NAME_BAND_10", "B10")
    if collection == 2:
        keys.update(QA="FILE_NAME_QUALITY_L1_PIXEL", RADSAT="FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION")
        suffixes.update(QA="QA_PIXEL", RADSAT="QA_RADSAT")
    else:
        keys["QA"], suffixes["QA"] = "FILE_NAME_BAND_QUALITY", "BQA"
    product_id = (mtl_first(mtl, "LANDSAT_PRODUCT_ID", (contents, "METADATA_FILE_INFO"))
                  or mtl_first(mtl, "LANDSAT_SCENE_ID", ("METADATA_FILE_INFO",)) or os.path.basename(path)[:-8])
    fields = {2: QA_PIXEL_FIELDS, 1: BQA_C1_FIELDS, PRE_COLLECTION: BQA_PRE_FIELDS}[collection]
    return {"collection": collection, "level": level, "spacecraft": spacecraft, "product_id": product_id,
            "contents": contents, "file_keys": keys, "suffixes": suffixes, "qa_fields": fields}


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


def parse_bands(text, dem=None):
    """--bands 'red,nir,ndvi' (None: all) -> the guidance bands to write, in GUIDANCE order; ConfigError
    naming an unknown band. 'dem' may be listed when a DEM is given (it is added by --dem anyway)."""
    if text is None:
        return GUIDANCE
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in GUIDANCE and n != "dem"]
    if unknown:
        raise ConfigError(f"--bands: unknown {', '.join(unknown)}; choose from {', '.join(GUIDANCE)} "
                          f"(the dem band comes with --dem)")
    if "dem" in names and not dem:
        raise ConfigError("--bands dem: give the DEM file with --dem FILE")
    bands = tuple(n for n in GUIDANCE if n in names)
    if not bands and not dem:
        raise ConfigError(f"--bands {text!r}: no guidance band chosen; choose from {', '.join(GUIDANCE)}")
    return bands


def reflectances_of(band):
    """The reflective bands a guidance band is made from: itself, or an index's two."""
    return INDICES.get(band, (band,))


def files_needed(product, bands, names, emissivity):
    """{file key: [what uses it]} for the guidance bands, the mask names and the emissivity correction
    chosen, in FILE_KEYS order: B10 always, a band file only for the bands made from it, the QA band only
    for the mask conditions its layout has, RADSAT only for `saturated` (Collection 2)."""
    users = {"B10": ["the temperature"]}
    for band in bands:
        for r in reflectances_of(band):
            users.setdefault(f"B{BAND_NUMBER[r]}", []).append(band)
    if emissivity:
        for r in INDICES["ndvi"]:
            users.setdefault(f"B{BAND_NUMBER[r]}", []).append(f"--emissivity {emissivity}")
    in_qa = [n for n in names if n in product["qa_fields"]]
    if in_qa:
        users["QA"] = in_qa
    if "saturated" in names and "RADSAT" in product["file_keys"]:
        users["RADSAT"] = ["saturated"]
    return {k: users[k] for k in FILE_KEYS if k in users}


def band_file_candidates(names, suffix):
    """File names (of one folder) ending in _SUFFIX.tif / .tiff, any case; a Level-1 suffix (B4, B10) does not
    match the Level-2 files (_SR_B4, _ST_B10) that end the same way."""
    pattern = re.compile(rf"(?:.*[_.\-])?(?<!SR_)(?<!ST_){re.escape(suffix)}\.tiff?", re.IGNORECASE)
    return [n for n in names if pattern.fullmatch(n)]


def product_files(mtl, path, product, needed, overrides=None):
    """{file key: path} of the files in `needed` ({file key: users}, as files_needed): --file, else the MTL's
    FILE_NAME_* beside the MTL, else the one file beside it ending in the band's suffix. Every file not
    found (or found twice by its suffix) is listed in one DataError, with the options that do without it."""
    overrides = overrides or {}
    folder = os.path.dirname(os.path.abspath(path))
    listing = sorted(os.listdir(folder))
    files, problems = {}, {}
    for key in needed:
        mtl_key, suffix = product["file_keys"][key], product["suffixes"][key]
        named = mtl[product["contents"]].get(mtl_key)
        if key in overrides:
            if os.path.isfile(overrides[key]):
                files[key] = overrides[key]
            else:
                problems[key] = f"--file {key}={overrides[key]}: no such file"
            continue
        if named and os.path.isfile(os.path.join(folder, named)):
            files[key] = os.path.join(folder, named)
            continue
        found = band_file_candidates(listing, suffix)
        if len(found) == 1:
            files[key] = os.path.join(folder, found[0])
            continue
        why = f"MTL {mtl_key} = {named} is not there" if named else f"no MTL key {product['contents']}/{mtl_key}"
        problems[key] = (f"{why}; several files end in _{suffix}: {', '.join(found)}" if found
                         else f"{why}, nor any *_{suffix}.TIF")
    if problems:
        raise DataError(missing_files_message(path, folder, problems, needed))
    return files


def missing_files_message(path, folder, problems, needed):
    """One line: every file not found and why, the --file options to give, and what to leave out instead."""
    listed = "; ".join(f"{key} ({why})" for key, why in problems.items())
    give = " ".join(f"--file {key}=PATH" for key in problems)
    instead = []
    lost = {u for key in problems for u in needed[key]}
    bands = [b for b in GUIDANCE if any(f"B{BAND_NUMBER[r]}" in needed for r in reflectances_of(b))]
    kept = [b for b in bands if b not in lost]
    if kept != bands and "B10" not in problems:
        instead.append(f"--bands {','.join(kept)} (leaves out {', '.join(b for b in bands if b in lost)})")
    for key in ("QA", "RADSAT"):
        if key in problems:
            instead.append(f"--mask without {','.join(needed[key])} (read from {key})")
    return (f"{path}: {len(problems)} of the files needed not found in {folder}: {listed}. Give each with "
            f"{give}" + (f", or do without: {'; '.join(instead)}" if instead else ""))


# --------------------------------------------------------------------------- calibration


def calibration(mtl, path, product, keys=FILE_KEYS):
    """{'Bx': (mult, add) for the reflective bands among `keys`, 'B10': (mult, add), 'k1', 'k2', 'sun_elevation'}
    as the level needs; an MTL key of a band not used may be missing."""
    cal = {}
    for b in (b for b in REFLECTIVE if f"B{b}" in keys):
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
    if product["level"] == "L1" and any(f"B{b}" in keys for b in REFLECTIVE):
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


def temperature(dn, cal, product, emissivity=None, red=None, nir=None):
    """Thermal band DN (H, W) -> (temperature (H, W) float32 K, lst.tif band description, quantity): Level-2
    ST, or Level-1 brightness temperature (emissivity-corrected with 'ndvi', from red and nir reflectance)."""
    mult, add = cal["B10"]
    if product["level"] == "L2":
        return (dn * np.float32(mult) + np.float32(add), "lst",
                "land surface temperature (Collection 2 Level-2 ST_B10)")
    bt = brightness_temperature(dn, mult, add, cal["k1"], cal["k2"])
    if emissivity != "ndvi":
        return bt, "bt", "top-of-atmosphere brightness temperature of B10, NOT land surface temperature"
    eps = ndvi_emissivity(normalized_difference(nir, red), red)
    return (emissivity_correction(bt, eps), "bt_emissivity_corrected",
            "B10 brightness temperature corrected with NDVI-threshold emissivity (Sobrino et al. 2004); "
            "no atmospheric correction, NOT land surface temperature")


def check_temperature(values, product, cal, thermal_path, mtl_path):
    """DataError naming the MTL's calibration keys and values unless every (unmasked) temperature in K is in
    data.LST_UNITS['range']: a scale wrong by x10 is caught here, where the numbers are made."""
    lo, hi = data.LST_UNITS["range"]
    finite = values[np.isfinite(values)]
    if not finite.size or (finite.min() >= lo and finite.max() <= hi):
        return
    bad = float(finite.min() if finite.min() < lo else finite.max())
    mult, add = cal["B10"]
    if product["level"] == "L2":
        keys = f"TEMPERATURE_MULT_BAND_ST_B10 = {mult:g}, TEMPERATURE_ADD_BAND_ST_B10 = {add:g} (USGS: 0.00341802, 149.0)"
    else:
        keys = (f"RADIANCE_MULT_BAND_10 = {mult:g}, RADIANCE_ADD_BAND_10 = {add:g}, K1_CONSTANT_BAND_10 = "
                f"{cal['k1']:g}, K2_CONSTANT_BAND_10 = {cal['k2']:g}")
    raise DataError(f"{thermal_path}: temperature {bad:.1f} K is outside the plausible {lo:g}..{hi:g} K "
                    f"(data.LST_UNITS): check the calibration in {mtl_path}: {keys}")


# --------------------------------------------------------------------------- masks


def parse_mask(text):
    """'fill,cloud,...' -> tuple of mask names; ConfigError naming an unknown one."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MASK_NAMES]
    if unknown:
        raise ConfigError(f"--mask: unknown {', '.join(unknown)}; choose from {', '.join(MASK_NAMES)}")
    return names


def qa_masks(qa, fields, names):
    """QA band values (H, W) float (NaN = no QA value: masked as fill) -> {name: bool (H, W)} for the `names`
    that the layout `fields` ({name: [(first bit, width, lowest value that masks)]}) has."""
    missing = ~np.isfinite(qa)
    bits = np.where(missing, 0, qa).astype(np.int64) & 0xFFFF   # int16 files store the bit pattern signed
    masks = {}
    for name in (n for n in names if n in fields):
        masks[name] = np.zeros(qa.shape, bool)
        for first, width, lowest in fields[name]:
            masks[name] |= (bits >> first) & ((1 << width) - 1) >= lowest
    if "fill" in masks:
        masks["fill"] |= missing
    return masks


def radsat_mask(radsat):
    """QA_RADSAT (H, W) -> bool: a used band (1..7, bits 0..6) saturated."""
    bits = np.where(np.isfinite(radsat), radsat, 0).astype(np.int64) & 0xFFFF
    return (bits & sum(1 << (b - 1) for b in REFLECTIVE)) != 0


def check_band_grid(path, key, header, ref_path, ref_header):
    """DataError unless a band file has the thermal band's shape and grid (one product is co-registered):
    geotiff.check_grids at scale 1, with the band named."""
    try:
        check_grids(ref_path, ref_header["shape"][1:], ref_header["geo"], path, header["shape"][1:], header["geo"],
                    labels=("thermal band", f"band {key}"))
    except DataError as e:
        raise DataError(f"band {key} is not on the grid of the thermal band: {e}") from None


# --------------------------------------------------------------------------- the command


def dem_band(dem, shape, geo, has_data, where):
    """--dem file -> ((H, W) float32 metres on the grid (shape, geo), how, void values read as no-data or None).
    DataError, with both extents, when it gives a value at fewer than MIN_DEM_COVER of the pixels `has_data`."""
    try:
        header = read_header(dem)
        band, how = resample_to_grid(dem, shape, geo, voids=DEM_VOIDS)
    except DataError as e:
        raise DataError(f"--dem {e}") from None
    cover = float(np.isfinite(band[has_data]).mean()) if has_data.any() else 1.0
    if cover < MIN_DEM_COVER:
        raise DataError(f"{dem}: the DEM gives an elevation at {100 * cover:.1f} % of the scene's pixels with data "
                        f"(at least {100 * MIN_DEM_COVER:g} % needed; elsewhere it is outside the DEM or void): DEM "
                        f"{describe_grid(dem, header['shape'][1:], header['geo'])}; scene "
                        f"{describe_grid(where, shape, geo)}: give a DEM that covers the scene")
    return band, how, list(DEM_VOIDS) if header["nodata"] is None else None


def scene_window(window, bbox, ref_path, ref):
    """--window or --bbox -> (row0, col0, rows, cols) inside the thermal band's grid, or None (whole scene)."""
    full_shape = ref["shape"][1:]
    if bbox is not None:
        window = bbox_window(bbox, full_shape, ref["geo"], ref_path)
    if window is None:
        return None
    r0, c0, rows, cols = window
    if r0 < 0 or c0 < 0 or rows <= 0 or cols <= 0 or r0 + rows > full_shape[0] or c0 + cols > full_shape[1]:
        raise ConfigError(f"--window {r0} {c0} {rows} {cols} is outside the scene's "
                          f"{full_shape[0]} x {full_shape[1]} pixels ({ref_path})")
    return (r0, c0, rows, cols)


def reflectance_and_indices(read, cal, product, needed, band_names, guidance, fill):
    """Reflectance of the bands in `needed` -> {name: (H, W)}, each written into its slot of guidance (C, H, W)
    when it is one of band_names, else into an array of its own; the indices among band_names are written
    too. read(key) -> (DN, header, fill) as in `landsat`; each band's fill is added to `fill` in place."""
    refl = {}
    for b, name in REFLECTIVE.items():
        if f"B{b}" not in needed:
            continue
        band, _, band_fill = read(f"B{b}")
        fill |= band_fill
        mult, add = cal[f"B{b}"]
        refl[name] = guidance[band_names.index(name)] if name in band_names else np.empty(band.shape, np.float32)
        refl[name][...] = band * np.float32(mult) + np.float32(add)
        if product["level"] == "L1":
            refl[name] /= np.float32(math.sin(math.radians(cal["sun_elevation"])))
        del band
    for index, (a, b) in INDICES.items():
        if index in band_names:
            guidance[band_names.index(index)] = normalized_difference(refl[a], refl[b])
    return refl


def pixel_masks(read, paths, product, names, fill):
    """({condition: bool (H, W)} of the chosen mask names found in the QA / RADSAT files, plus the DN 0 /
    no-data fill of every band read), [chosen names this product's QA does not have]."""
    masks = {}
    if "QA" in paths:
        masks.update(qa_masks(read("QA")[0], product["qa_fields"], names))
    if "RADSAT" in paths:
        masks["saturated"] = radsat_mask(read("RADSAT")[0])
    absent = [n for n in names if n not in masks]
    masks["fill (DN 0 / no-data)"] = fill
    return masks, absent


def landsat(product_path, out, window=None, bbox=None, dem=None, mask=DEFAULT_MASK, emissivity=None, files=None,
            bands=None):
    """Landsat 8/9 product -> out/lst.tif, out/guidance.tif, out/landsat.yaml; returns the summary dict.

    window (row0, col0, rows, cols) in pixels or bbox (xmin, ymin, xmax, ymax) in the scene CRS; dem: a
    GeoTIFF path; mask: comma list of MASK_NAMES; emissivity: None or 'ndvi' (Level-1 only); files:
    {file key: path} overriding the MTL's file names; bands: comma list of GUIDANCE bands (None: all).
    """
    if window is not None and bbox is not None:
        raise ConfigError("--window and --bbox: give one of them")
    if bbox is not None and (bbox[0] >= bbox[2] or bbox[1] >= bbox[3]):
        raise ConfigError(f"--bbox {tuple(bbox)}: need XMIN < XMAX and YMIN < YMAX")
    if dem and not os.path.isfile(dem):
        raise DataError(f"--dem {dem}: file not found")
    names = parse_mask(mask)
    bands = parse_bands(bands, dem)
    mtl_path = find_mtl(product_path)
    mtl = read_mtl(mtl_path)
    product = describe_product(mtl, mtl_path)
    if emissivity is not None and product["level"] == "L2":
        raise ConfigError(f"--emissivity {emissivity}: {mtl_path} is Level-2, whose ST_B10 is already "
                          f"emissivity-corrected LST; drop --emissivity")
    needed = files_needed(product, bands, names, emissivity)
    cal = calibration(mtl, mtl_path, product, needed)
    paths = product_files(mtl, mtl_path, product, needed, files)
    os.makedirs(out, exist_ok=True)
    for name in ("lst.tif", "guidance.tif"):
        check_writable(os.path.join(out, name))

    ref_path = paths["B10"]
    ref = read_header(ref_path)
    for key, path in paths.items():
        if key != "B10":
            check_band_grid(path, key, read_header(path), ref_path, ref)
    window = scene_window(window, bbox, ref_path, ref)
    where = (f"window rows {window[0]}..{window[0] + window[2]}, cols {window[1]}..{window[1] + window[3]}"
             if window else "the scene")

    def read(key):
        """One band's DN (H, W) float32 in the window and its fill mask (no-data or DN 0)."""
        array, info = read_geotiff(paths[key], window)
        if len(array) != 1:
            raise DataError(f"{paths[key]}: band {key} has {len(array)} bands, expected 1")
        return array[0], info, ~np.isfinite(array[0]) | (array[0] == 0)

    dn, info, fill = read("B10")
    geo, shape = info["geo"], dn.shape
    if fill.all():
        raise DataError(f"{ref_path}: the thermal band ({product['suffixes']['B10']}) is fill (DN 0 / no-data) at "
                        f"every pixel of {where}: this product has no temperature there"
                        + (" (USGS leaves ST_B10 empty where its emissivity or atmosphere inputs are missing)"
                           if product["level"] == "L2" else "") + "; choose another window or scene")
    dem_how = dem_voids = None
    if dem:   # before the other bands are read: a DEM that does not fit fails early
        dem_values, dem_how, dem_voids = dem_band(dem, shape, geo, ~fill, f"{ref_path} ({where})")

    band_names = list(bands) + (["dem"] if dem else [])
    guidance = np.empty((len(band_names), *shape), np.float32)
    refl = reflectance_and_indices(read, cal, product, needed, band_names, guidance, fill)
    lst, lst_band, quantity = temperature(dn, cal, product, emissivity, refl.get("red"), refl.get("nir"))
    del dn, refl

    masks, absent = pixel_masks(read, paths, product, names, fill)
    masked = np.zeros(shape, bool)
    for m in masks.values():
        masked |= m
    check_temperature(lst[~masked], product, cal, ref_path, mtl_path)

    if dem:
        guidance[-1] = dem_values
    lst[masked] = np.nan
    guidance[:, masked] = np.nan

    write_geotiff(os.path.join(out, "lst.tif"), lst, geo, band_names=[lst_band])
    # one band goes as (H, W): write_geotiff's (C, H, W) path (planar 'separate') refuses C = 1
    write_geotiff(os.path.join(out, "guidance.tif"), guidance[0] if len(guidance) == 1 else guidance, geo,
                  band_names=band_names)
    finite = lst[np.isfinite(lst)]
    summary = {
        "product": product["product_id"], "mtl": os.path.abspath(mtl_path), "collection": product["collection"],
        "level": product["level"], "spacecraft": product["spacecraft"], "lst_quantity": quantity,
        "lst_band": lst_band, "lst_units": "K",
        "calibration": {k: list(v) if isinstance(v, tuple) else v for k, v in cal.items()},
        "files": {k: os.path.abspath(v) for k, v in paths.items()},
        "window": list(window) if window else None, "shape": list(shape), "scene_shape": list(ref["shape"][1:]),
        "guidance_bands": band_names,
        "guidance_left_out": {b: "not in --bands" for b in GUIDANCE if b not in bands},
        "dem": os.path.abspath(dem) if dem else None, "dem_resampling": dem_how, "dem_voids_read_as_nodata": dem_voids,
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
    collection = s["collection"] if s["collection"] == PRE_COLLECTION else f"Collection {s['collection']}"
    lines = [f"landsat {s['product']}: {s['spacecraft']} {collection} {s['level']}, {where}, "
             f"{s['shape'][0]} x {s['shape'][1]} px"]
    rng = s["lst_range_k"]
    lines.append(f"  lst.tif ({s['lst_band']}): {s['lst_quantity']}"
                 + (f", min/mean/max {rng[0]:.2f}/{rng[1]:.2f}/{rng[2]:.2f} K" if rng else ", no valid pixel"))
    if s["lst_band"] == "bt":
        lines.append("  warning: Level-1 gives brightness temperature, not LST (a few K lower): use the Level-2 "
                     "product, or --emissivity ndvi for an emissivity correction")
    elif s["lst_band"] == "bt_emissivity_corrected":
        lines.append("  warning: emissivity-corrected brightness temperature, not LST: the atmosphere is not "
                     "corrected; use the Level-2 product for LST")
    lines.append(f"  guidance.tif: {len(s['guidance_bands'])} bands: {', '.join(s['guidance_bands'])}"
                 + (f" (dem: {s['dem_resampling']}, {100 * s['dem_nan_fraction']:.1f} % outside the DEM or void)"
                    if s["dem"] and s["dem_nan_fraction"] is not None else ""))
    by = ", ".join(f"{k} {100 * v:.1f} %" for k, v in s["masked_by"].items())
    lines.append(f"  masked (NaN in every band): {100 * s['masked_fraction']:.1f} % ({by})")
    if s["mask_not_in_qa"]:
        lines.append(f"  not in this product's QA band: {', '.join(s['mask_not_in_qa'])}")
    out = s["out"]
    lines.append(f"  wrote {out}/lst.tif, {out}/guidance.tif, {out}/landsat.yaml")
    lines.append(f"  next: python prepare.py --lst {out}/lst.tif --guidance {out}/guidance.tif --out data/myscene")
    return "\n".join(lines)


def notes(s):
    """The `note:` lines of a summary (printed on stderr): guidance bands left out, and why."""
    left = s["guidance_left_out"]
    reasons = sorted(set(left.values()))
    return [f"note: guidance.tif leaves out {', '.join(b for b in left if left[b] == r)} ({r})" for r in reasons]


@command
def main(argv=None):
    """`python landsat.py ...`."""
    p = argparse.ArgumentParser(prog="landsat.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("product", help="product folder (with its *_MTL.txt / *_MTL.xml) or the MTL file")
    p.add_argument("--out", required=True, help="output folder: lst.tif, guidance.tif, landsat.yaml")
    p.add_argument("--window", type=int, nargs=4, default=None, metavar=("ROW0", "COL0", "ROWS", "COLS"),
                   help="pixel window of the scene")
    p.add_argument("--bbox", type=float, nargs=4, default=None, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                   help="map window in the scene CRS")
    p.add_argument("--dem", default=None, help="DEM GeoTIFF in the scene CRS (adds a 'dem' guidance band)")
    p.add_argument("--bands", default=None, metavar="LIST",
                   help=f"guidance bands to write, a comma list from {', '.join(GUIDANCE)} (default: all); "
                        f"only the band files they need are read")
    p.add_argument("--mask", default=DEFAULT_MASK, help=f"QA conditions masked (NaN), from {', '.join(MASK_NAMES)}")
    p.add_argument("--emissivity", choices=["ndvi"], default=None,
                   help="Level-1: NDVI-threshold emissivity correction of the brightness temperature")
    p.add_argument("--file", action="append", default=[], metavar="KEY=PATH",
                   help=f"a renamed band file, KEY one of {', '.join(FILE_KEYS)}; repeatable")
    args = p.parse_args(argv)
    summary = landsat(args.product, args.out, window=args.window, bbox=args.bbox, dem=args.dem, mask=args.mask,
                      emissivity=args.emissivity, files=parse_file_overrides(args.file), bands=args.bands)
    print(format_summary(summary))
    sys.stdout.flush()
    for line in notes(summary):
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
