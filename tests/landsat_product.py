"""Landsat 8 products shaped like real USGS deliveries, generated for tests/test_landsat.py and docs/landsat.md.

    python tests/landsat_product.py DIR [--level L2|L1] [--collection 2|1|pre] [--size 512] [--synth] [--xml]

A folder with the MTL (real group and key names; text or XML) and uint16 band GeoTIFFs (SR_B1..SR_B7 +
ST_B10 + QA_PIXEL + QA_RADSAT for C2 L2; B1..B7 + B10 + QA_PIXEL/BQA for L1) with realistic DN and QA bits set
at known places (QA_PLACES, BQA_PLACES, PRE_BQA_PLACES, FILL_BLOCK, ST_ZERO, RADSAT_*). collection 'pre' is a
pre-collection Landsat 8 L1T product: no COLLECTION_NUMBER nor LANDSAT_PRODUCT_ID in the MTL, files named by
the scene ID (LC8...LGN00), and the pre-collection BQA bit layout. By default the surface is a smooth
pattern; --synth takes reflectance and LST from layout.synth_scene (multi-scale terrain and land cover), shifted
to a summer-like 290-320 K, for a demo with structure worth downscaling.
"""
import argparse
import math
import os
import sys

import numpy as np
import tifffile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import geotiff  # noqa: E402
import layout  # noqa: E402

X0, Y0, PX, EPSG = 399960.0, 5700000.0, 30.0, 32633
H, W = 48, 40
SR_MULT, SR_ADD = 2.75e-05, -0.2          # C2 L2 surface reflectance
TOA_MULT, TOA_ADD = 2.0e-05, -0.1         # L1 TOA reflectance (also in an L2 MTL: must not be used there)
ST_MULT, ST_ADD = 0.00341802, 149.0       # C2 L2 ST_B10
RAD_MULT, RAD_ADD = 3.342e-04, 0.1        # B10 radiance
K1, K2 = 774.8853, 1321.0789
SUN_ELEVATION = 41.5

# QA_PIXEL (C2) pixels with one condition set, (row, col) -> bit; 21824 is a real "clear, low confidence" value
QA_CLEAR = 21824
QA_PLACES = {"dilated_cloud": ((5, 6), 1), "cirrus": ((7, 8), 2), "cloud": ((10, 12), 3), "shadow": ((20, 3), 4),
             "snow": ((30, 30), 5), "water": ((40, 10), 7)}
FILL_BLOCK = (slice(0, 2), slice(0, 3))   # fill: QA bit 0 and DN 0 in every band, as delivered
ST_ZERO = (12, 30)                        # DN 0 in the thermal band only
RADSAT_USED = (25, 25)                    # band 4 saturated: masked
RADSAT_UNUSED = (26, 26)                  # band 9 saturated: not a band used, not masked
# C1 BQA: bit 0 fill, bit 4 cloud, bits 7-8 shadow confidence, 11-12 cirrus confidence; 2720 = real clear value
BQA_CLEAR = 2720
# name -> ((row, col), first bit, width, value); 2720 has every confidence at 01 (low)
BQA_PLACES = {"cloud": ((10, 12), 4, 1, 1), "shadow": ((20, 3), 7, 2, 3), "cirrus": ((7, 8), 11, 2, 3),
              "medium_cirrus": ((8, 8), 11, 2, 2), "medium_shadow": ((9, 9), 7, 2, 2)}
# pre-collection BQA (USGS pre-collection QA table): bit 0 designated fill, 1 dropped frame, 2 terrain occlusion,
# 4-5 water, 10-11 snow/ice, 12-13 cirrus, 14-15 cloud confidence. 20480 = cloud and cirrus low: a real clear value.
PRE_BQA_CLEAR = 20480
# the cloud: a 10 x 12 block (6.25 % of the 48 x 40 scene) + one pixel; the rest one pixel each
PRE_BQA_PLACES = {"cloud": ((slice(24, 34), slice(2, 14)), 14, 2, 3), "cloud_pixel": ((10, 12), 14, 2, 3),
                  "cirrus": ((7, 8), 12, 2, 3), "snow": ((30, 30), 10, 2, 3), "water": ((40, 10), 4, 2, 3),
                  "dropped_frame": ((44, 5), 1, 1, 1), "terrain": ((45, 6), 2, 1, 1),
                  "medium_cloud": ((8, 8), 14, 2, 2), "medium_cirrus": ((9, 9), 12, 2, 2)}
PRE_SCENE_ID = "LC81930232015185LGN00"


def write_band(path, array, geo):
    """A uint16 band GeoTIFF as USGS delivers (deflate here: LZW would need imagecodecs), no GDAL_NODATA tag."""
    tags = [(code, dtype, count, value, True) for code, (dtype, count, value) in sorted(geo.items())]
    tifffile.imwrite(path, array.astype(np.uint16), photometric="minisblack", compression="zlib",
                     extratags=tags, metadata=None)


def mtl_groups(pid, level, collection, files):
    """[(group, [(key, value), ...]), ...] with the real group and key names; numbers as strings."""
    if collection == "pre":   # C1's groups without COLLECTION_NUMBER and LANDSAT_PRODUCT_ID
        groups = mtl_groups(pid, level, 1, files)
        groups = [(g, [(k, v) for k, v in items if k not in ("COLLECTION_NUMBER", "LANDSAT_PRODUCT_ID")])
                  for g, items in groups]
        groups[0][1][:0] = [("ORIGIN", '"Image courtesy of the U.S. Geological Survey"'), ("LANDSAT_SCENE_ID", f'"{pid}"'),
                            ("STATION_ID", '"LGN"')]
        groups[1][1][0] = ("DATA_TYPE", '"L1T"')
        return groups
    if collection == 1:
        product = [("LANDSAT_PRODUCT_ID", f'"{pid}"'), ("DATA_TYPE", '"L1TP"'), ("SPACECRAFT_ID", '"LANDSAT_8"'),
                   ("SENSOR_ID", '"OLI_TIRS"')]
        product += [(f"FILE_NAME_BAND_{b}", f'"{files[f"B{b}"]}"') for b in (*range(1, 8), 10)]
        product += [("FILE_NAME_BAND_QUALITY", f'"{files["QA"]}"')]
        return [("METADATA_FILE_INFO", [("LANDSAT_PRODUCT_ID", f'"{pid}"'), ("COLLECTION_NUMBER", "01")]),
                ("PRODUCT_METADATA", product),
                ("IMAGE_ATTRIBUTES", [("CLOUD_COVER", "6.03"), ("SUN_AZIMUTH", "146.98"),
                                      ("SUN_ELEVATION", f"{SUN_ELEVATION}")]),
                ("RADIOMETRIC_RESCALING", [("RADIANCE_MULT_BAND_10", f"{RAD_MULT:.4E}"),
                                           ("RADIANCE_ADD_BAND_10", f"{RAD_ADD:.5f}")]
                 + [(f"REFLECTANCE_MULT_BAND_{b}", f"{TOA_MULT:.4E}") for b in range(1, 10)]
                 + [(f"REFLECTANCE_ADD_BAND_{b}", f"{TOA_ADD:.6f}") for b in range(1, 10)]),
                ("TIRS_THERMAL_CONSTANTS", [("K1_CONSTANT_BAND_10", f"{K1}"), ("K2_CONSTANT_BAND_10", f"{K2}")])]
    contents = [("ORIGIN", '"Image courtesy of the U.S. Geological Survey"'), ("LANDSAT_PRODUCT_ID", f'"{pid}"'),
                ("PROCESSING_LEVEL", '"L2SP"' if level == "L2" else '"L1TP"'), ("COLLECTION_NUMBER", "02")]
    contents += [(f"FILE_NAME_BAND_{b}", f'"{files[f"B{b}"]}"') for b in range(1, 8)]
    contents += [("FILE_NAME_BAND_ST_B10" if level == "L2" else "FILE_NAME_BAND_10", f'"{files["B10"]}"'),
                 ("FILE_NAME_QUALITY_L1_PIXEL", f'"{files["QA"]}"'),
                 ("FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION", f'"{files["RADSAT"]}"')]
    groups = [("PRODUCT_CONTENTS", contents),
              ("IMAGE_ATTRIBUTES", [("SPACECRAFT_ID", '"LANDSAT_8"'), ("SENSOR_ID", '"OLI_TIRS"'),
                                    ("WRS_PATH", "193"), ("CLOUD_COVER", "12.5"), ("SUN_AZIMUTH", "150.1"),
                                    ("SUN_ELEVATION", f"{SUN_ELEVATION}")]),
              ("PROJECTION_ATTRIBUTES", [("MAP_PROJECTION", '"UTM"'), ("UTM_ZONE", "33"),
                                         ("GRID_CELL_SIZE_THERMAL", "30.00")])]
    if level == "L2":
        groups += [("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS",
                    [(f"REFLECTANCE_MULT_BAND_{b}", f"{SR_MULT:.4E}") for b in range(1, 8)]
                    + [(f"REFLECTANCE_ADD_BAND_{b}", f"{SR_ADD:.6f}") for b in range(1, 8)]),
                   ("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS",
                    [("TEMPERATURE_MAXIMUM_BAND_ST_B10", "372.999941"), ("TEMPERATURE_MULT_BAND_ST_B10", f"{ST_MULT:.4E}"),
                     ("TEMPERATURE_ADD_BAND_ST_B10", f"{ST_ADD:.6f}")])]
    groups += [("LEVEL1_RADIOMETRIC_RESCALING", [("RADIANCE_MULT_BAND_10", f"{RAD_MULT:.4E}"),
                                                 ("RADIANCE_ADD_BAND_10", f"{RAD_ADD:.5f}")]
                + [(f"REFLECTANCE_MULT_BAND_{b}", f"{TOA_MULT:.4E}") for b in range(1, 10)]
                + [(f"REFLECTANCE_ADD_BAND_{b}", f"{TOA_ADD:.6f}") for b in range(1, 10)]),
               ("LEVEL1_THERMAL_CONSTANTS", [("K1_CONSTANT_BAND_10", f"{K1:.4f}"), ("K2_CONSTANT_BAND_10", f"{K2:.4f}")])]
    return groups


def mtl_text(groups, root):
    lines = [f"GROUP = {root}"]
    for g, items in groups:
        lines += [f"  GROUP = {g}"] + [f"    {k} = {v}" for k, v in items] + [f"  END_GROUP = {g}"]
    return "\n".join(lines + [f"END_GROUP = {root}", "END", ""])


def mtl_xml(groups, root):
    body = "".join(f"<{g}>" + "".join(f"<{k}>{v.strip(chr(34))}</{k}>" for k, v in items) + f"</{g}>"
                   for g, items in groups)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{body}</{root}>\n'


def surface(h, w, synth=False, seed=0):
    """({band 1..7: reflectance (H, W)}, LST (H, W) K): a smooth pattern, or layout.synth_scene's scene."""
    rng = np.random.default_rng(seed)
    if synth:
        lst, gui = layout.synth_scene(h, w, seed=seed)
        b = {n: gui[layout.BANDS.index(n)] for n in ("deepblue", "blue", "green", "red", "nir")}
        ndvi = gui[layout.BANDS.index("ndvi")]
        refl = {1: b["deepblue"], 2: b["blue"], 3: b["green"], 4: b["red"], 5: b["nir"],
                6: np.clip(0.25 - 0.12 * ndvi + 0.3 * (b["red"] - 0.1), 0.005, 1),  # SWIR: drier where less green
                7: np.clip(0.18 - 0.12 * ndvi + 0.3 * (b["red"] - 0.1), 0.005, 1)}
        return refl, lst - lst.mean() + 303.0
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    veg = 0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy)          # 0..1 vegetation fraction
    refl = {1: 0.06 + 0 * veg, 2: 0.07 + 0 * veg, 3: 0.09 - 0.02 * veg, 4: 0.12 - 0.08 * veg, 5: 0.15 + 0.3 * veg,
            6: 0.2 - 0.05 * veg, 7: 0.15 - 0.07 * veg}
    return refl, 305 - 12 * veg + rng.normal(0, 0.3, (h, w))


def write_product(folder, level="L2", collection=2, point=False, xml=False, seed=0, h=H, w=W, drop=(), synth=False,
                  replace=None):
    """A Landsat 8 product folder: MTL + uint16 bands with realistic DN and QA bits at known places.
    collection: 2, 1 or 'pre' (pre-collection, Level-1 only). drop: MTL keys left out; replace: {MTL key: value
    string} written instead of the product's. Returns {'mtl', 'dn': {key: array}, 'qa', 'radsat', 'geo', 'files'}."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    pid = {("L2", 2): "LC08_L2SP_193023_20230704_20230712_02_T1", ("L1", 2): "LC08_L1TP_193023_20230704_20230712_02_T1",
           ("L1", 1): "LC08_L1TP_193023_20180704_20180717_01_T1", ("L1", "pre"): PRE_SCENE_ID}[(level, collection)]
    geo = geotiff.make_geo(X0, Y0, PX, epsg=EPSG, point=point)
    refl, kelvin = surface(h, w, synth, seed)
    mult, add = (SR_MULT, SR_ADD) if level == "L2" else (TOA_MULT, TOA_ADD)
    sun = 1.0 if level == "L2" else math.sin(math.radians(SUN_ELEVATION))
    dn = {f"B{b}": np.round((r * sun - add) / mult + rng.integers(-30, 30, (h, w))) for b, r in refl.items()}
    if level == "L2":
        dn["B10"] = np.round((kelvin - ST_ADD) / ST_MULT)
    else:  # invert BT = K2 / ln(K1/L + 1) for a brightness temperature a few K below `kelvin`
        radiance = K1 / (np.exp(K2 / (kelvin - 4)) - 1)
        dn["B10"] = np.round((radiance - RAD_ADD) / RAD_MULT)
    qa = np.full((h, w), {2: QA_CLEAR, 1: BQA_CLEAR, "pre": PRE_BQA_CLEAR}[collection], np.int64)
    for (r, c), bit in QA_PLACES.values() if collection == 2 else ():
        qa[r, c] |= 1 << bit
    for place, first, width, value in {2: {}, 1: BQA_PLACES, "pre": PRE_BQA_PLACES}[collection].values():
        qa[place] = qa[place] & ~(((1 << width) - 1) << first) | value << first
    qa[FILL_BLOCK] = 1
    for a in dn.values():
        a[FILL_BLOCK] = 0
    dn["B10"][ST_ZERO] = 0
    radsat = np.zeros((h, w), np.int64)
    radsat[RADSAT_USED] = 1 << 3
    radsat[RADSAT_UNUSED] = 1 << 8
    suffix = {f"B{b}": (f"SR_B{b}" if level == "L2" else f"B{b}") for b in range(1, 8)}
    suffix.update(B10="ST_B10" if level == "L2" else "B10", QA="QA_PIXEL" if collection == 2 else "BQA",
                  RADSAT="QA_RADSAT")
    files = {k: f"{pid}_{s}.TIF" for k, s in suffix.items()}
    for key, name in files.items():
        if key == "RADSAT" and collection != 2:
            continue
        write_band(os.path.join(folder, name), {"QA": qa, "RADSAT": radsat}.get(key, dn.get(key)), geo)
    replace = replace or {}
    groups = [(g, [(k, replace.get(k, v)) for k, v in items if k not in drop])
              for g, items in mtl_groups(pid, level, collection, files)]
    root = "LANDSAT_METADATA_FILE" if collection == 2 else "L1_METADATA_FILE"
    mtl = os.path.join(folder, f"{pid}_MTL.{'xml' if xml else 'txt'}")
    with open(mtl, "w") as f:
        f.write(mtl_xml(groups, root) if xml else mtl_text(groups, root))
    return {"mtl": mtl, "dn": dn, "qa": qa, "radsat": radsat, "geo": geo, "files": files}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--level", choices=["L2", "L1"], default="L2")
    p.add_argument("--collection", choices=["2", "1", "pre"], default="2")
    p.add_argument("--size", type=int, default=H, help="scene side in 30 m pixels")
    p.add_argument("--synth", action="store_true", help="layout.synth_scene's surface instead of the smooth pattern")
    p.add_argument("--xml", action="store_true", help="MTL as XML")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    collection = a.collection if a.collection == "pre" else int(a.collection)
    product = write_product(a.folder, a.level, collection, xml=a.xml, seed=a.seed, h=a.size, w=a.size, synth=a.synth)
    print(f"wrote {a.folder}: {product['mtl']}")


if __name__ == "__main__":
    main()
