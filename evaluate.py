"""Validate a downscaled LST against an independent thermal reference on its own grid (no fine truth needed).

    python evaluate.py PRED.tif REF.tif                          # e.g. a 30 m prediction vs ECOSTRESS 70 m
    python evaluate.py PRED.tif REF.tif --classes LC.tif --remove-bias --time-gap --json out.json
    python evaluate.py PRED.tif REF.tif --coarse MODIS_LST.tif   # + CONS: footprint means vs the coarse input

The prediction is brought onto the reference's grid by footprint means (footprint.Footprint(pred grid, ref
grid).aggregate, any CRSs): the reference is never interpolated onto a finer grid. Should the reference be
the finer of the two, the reference is averaged onto the prediction's grid instead (said in the output).
Reference pixels whose footprint is less than --min-valid covered by finite prediction pixels are left out.

Reported, overall and per land-cover class, over the pixels where both are finite (metrics.image_metrics,
the paper's definitions): RMSE, MAE, BIAS (> 0: the prediction is warmer), CC, RSD; and texture:
  GRAD_CC  correlation of the gradient magnitudes (central differences on the comparison grid, pixels whose
           4 neighbours are valid in both): do edges fall where the reference has them
  SPEC     (overall only) power of the prediction / power of the reference in the radial power spectrum at
           wavelengths 2-8 comparison pixels (the finest scales the reference resolves; invalid pixels set
           to the image mean, Hann window): 1 = as much fine texture, < 1 smoother, > 1 noisier
  CONS     (with --coarse, overall only) RMSE and BIAS of the prediction's footprint means on the coarse LST's
           grid against that LST: the coarse-scale consistency, metrics.CONS for any grid pair
--radiance averages T^4 in every footprint mean (sensors average emitted energy).
--remove-bias subtracts the prediction's scene-wide mean bias first (overpasses at different times of day
differ by a level shift); the per-class rows keep their differences from that one shift.
--classes: a class raster (integer codes; no-data / NaN / 0 left out) on the comparison grid or finer; each
comparison pixel takes the class covering most of its footprint (footprint weights of the class grid on
the comparison grid, its valid part at least --min-valid).
--time-gap prints each file's acquisition time where its metadata tells it: GDAL metadata items
(ACQUISITION_DATE / ACQUISITION_TIME / DATE_ACQUIRED / SCENE_CENTER_TIME / ACQUISITION_DATETIME), a
landsat.yaml beside the file (its MTL's DATE_ACQUIRED + SCENE_CENTER_TIME), or the TIFF DateTime tag (306:
the file's creation time by the TIFF spec, so used last); "unknown" otherwise.
Grids that do not overlap end with one `error:` line giving both extents.
"""
import argparse
import datetime
import json
import math
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import tifffile
import torch

from data import read_lst_geotiff
from errors import ConfigError, DataError, command
from footprint import Footprint, Grid
from geotiff import TAG_GDAL_METADATA, read_geotiff
from metrics import METRICS, image_metrics

TEXTURE = ("GRAD_CC",)
SPEC_BAND = (2.0, 8.0)   # wavelengths in comparison pixels of the SPEC ratio
TAG_DATETIME = 306
DATE_ITEMS = ("ACQUISITION_DATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED")  # GDAL metadata items, first found
CLOCK_ITEMS = ("ACQUISITION_TIME", "SCENE_CENTER_TIME")                    # added to a date without a time


# --------------------------------------------------------------------------- bringing the two onto one grid


def comparison_pair(pred, pred_grid, ref, ref_grid, min_valid=0.5, radiance=False):
    """(prediction, reference, grid, note) on the coarser of the two grids: the finer raster averaged onto
    the coarser one's footprints (the reference is averaged only when it is the finer)."""
    fp = Footprint(pred_grid, ref_grid, min_valid)
    if _fine_per_coarse(fp) >= 1.0:
        return fp.aggregate(pred, radiance), ref, ref_grid, None
    back = Footprint(ref_grid, pred_grid, min_valid)
    note = (f"the reference ({ref_grid.name}) is finer than the prediction: it is averaged onto the "
            f"prediction's grid, the comparison is at the prediction's resolution")
    return pred, back.aggregate(ref, radiance), pred_grid, note


def _fine_per_coarse(fp):
    """Median number of fine pixels in a coarse footprint (< 1: the 'fine' grid is the coarser)."""
    a = fp.weights
    rows = torch.repeat_interleave(torch.arange(a.shape[0]), a.crow_indices().long().diff())
    area = torch.zeros(a.shape[0], dtype=torch.float64).index_add_(0, rows, a.values().double())
    return float(area[area > 0].median())


def majority_classes(classes, class_grid, grid, min_valid=0.5):
    """The class covering most of each pixel of `grid`: classes (H, W) codes (NaN, 0 = none) on class_grid
    -> (h, w) float64, NaN where the classes' valid part of the footprint is below min_valid."""
    fp = Footprint(class_grid, grid, min_valid)
    classes = np.where(np.isfinite(classes) & (classes != 0), classes, np.nan)
    codes = np.unique(classes[np.isfinite(classes)])
    best = np.full(grid.shape, np.nan)
    best_share = np.zeros(grid.shape)
    for code in codes:
        share = fp.aggregate(np.where(np.isnan(classes), np.nan, (classes == code).astype(np.float64)))
        win = np.isfinite(share) & (share > best_share)
        best[win], best_share[win] = code, share[win]
    return best


# --------------------------------------------------------------------------- scores


def gradient_magnitude(x):
    """|grad x| by central differences (h, w) float64, NaN at the border and where a 4-neighbour is NaN."""
    g = np.full(x.shape, np.nan)
    gy = (x[2:, 1:-1] - x[:-2, 1:-1]) / 2
    gx = (x[1:-1, 2:] - x[1:-1, :-2]) / 2
    g[1:-1, 1:-1] = np.hypot(gy, gx)
    return g


def correlation(a, b, mask):
    """Pearson correlation of a and b over mask where both are finite; NaN with fewer than 2 pixels."""
    ok = mask & np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return float("nan")
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    return float((a * b).mean() / (math.sqrt((a * a).mean() * (b * b).mean()) + 1e-12))


def radial_power(x, valid):
    """Radially averaged power spectrum of x (h, w) with invalid pixels at the valid mean, mean removed,
    Hann-windowed -> (wavenumbers in cycles per pixel, power), one bin per 1/max(h, w)."""
    x = np.where(valid, x, x[valid].mean()) - x[valid].mean()
    h, w = x.shape
    x = x * np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2(x)) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    bins = np.round(k * max(h, w)).astype(int)
    total = np.bincount(bins.ravel(), power.ravel())
    count = np.bincount(bins.ravel())
    return np.arange(len(total)) / max(h, w), total / np.maximum(count, 1)


def spectrum_ratio(pred, ref, valid, band=SPEC_BAND):
    """SPEC: summed power of pred / of ref at wavelengths band[0]..band[1] pixels (NaN if the grid is too
    small to resolve them)."""
    k, p_pred = radial_power(pred, valid)
    _, p_ref = radial_power(ref, valid)
    sel = (k >= 1 / band[1]) & (k <= 1 / band[0])
    if not sel.any() or p_ref[sel].sum() <= 0:
        return float("nan")
    return float(p_pred[sel].sum() / p_ref[sel].sum())


def scores(pred, ref, mask, grad_pred, grad_ref):
    """{RMSE, MAE, BIAS, CC, RSD (metrics.image_metrics), GRAD_CC, pixels} over mask."""
    t = torch.from_numpy
    row = image_metrics(t(pred)[None, None], t(ref)[None, None], t(mask)[None, None])[0].tolist()
    out = dict(zip(METRICS, row))
    out["GRAD_CC"] = correlation(grad_pred, grad_ref, mask)
    out["pixels"] = int((mask & np.isfinite(pred) & np.isfinite(ref)).sum())
    return out


# --------------------------------------------------------------------------- acquisition times


def parse_time(text):
    """A datetime from text holding a date (YYYY-MM-DD, YYYY:MM:DD, YYYY/MM/DD) and maybe a time
    (HH:MM[:SS[.f]]), as written (no time zone conversion); None if no date is found."""
    date = re.search(r"(\d{4})[-:/](\d{2})[-:/](\d{2})", text)
    if not date:
        return None
    rest = text[date.end():]
    clock = re.search(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?", rest)
    y, mo, d = (int(v) for v in date.groups())
    hh = mm = ss = 0
    micro = 0
    if clock:
        hh, mm = int(clock.group(1)), int(clock.group(2))
        ss = int(clock.group(3) or 0)
        micro = int(round(float(clock.group(4) or 0) * 1e6))
    try:
        return datetime.datetime(y, mo, d, hh, mm, min(ss, 59), min(micro, 999999))
    except ValueError:
        return None


def _gdal_items(path):
    """Dataset-level GDAL metadata items {name: text} of a GeoTIFF (band items left out)."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        text = tags[TAG_GDAL_METADATA].value if TAG_GDAL_METADATA in tags else None
        stamp = tags[TAG_DATETIME].value if TAG_DATETIME in tags else None
    items = {}
    if text:
        try:
            for item in ET.fromstring(text).iter("Item"):
                if item.get("sample") is None and item.get("name"):
                    items[item.get("name").upper()] = (item.text or "").strip()
        except ET.ParseError:
            pass
    return items, stamp


def _landsat_time(path):
    """(datetime, source) from a landsat.yaml beside `path` (keys date_acquired / scene_center_time, else
    its MTL file's DATE_ACQUIRED and SCENE_CENTER_TIME), or (None, None)."""
    summary = os.path.join(os.path.dirname(os.path.abspath(path)), "landsat.yaml")
    if not os.path.exists(summary):
        return None, None
    import yaml
    with open(summary) as f:
        info = yaml.safe_load(f) or {}
    if info.get("date_acquired"):
        return parse_time(f"{info['date_acquired']} {info.get('scene_center_time', '')}"), "landsat.yaml"
    mtl = info.get("mtl")
    if not mtl or not os.path.exists(mtl):
        return None, None
    text = open(mtl, errors="replace").read()
    date = re.search(r"DATE_ACQUIRED\W+(\d{4}-\d{2}-\d{2})", text)
    clock = re.search(r"SCENE_CENTER_TIME\W+(\d{2}:\d{2}:\d{2}(?:\.\d+)?)", text)
    if not date:
        return None, None
    return parse_time(date.group(1) + " " + (clock.group(1) if clock else "")), f"landsat.yaml -> {mtl}"


def acquisition_time(path):
    """(datetime or None, where it was read) for a GeoTIFF, in the order of the module docstring."""
    items, stamp = _gdal_items(path)
    date = next((k for k in DATE_ITEMS if k in items and parse_time(items[k])), None)
    if date is not None:
        text, source = items[date], f"GDAL metadata {date}"
        clock = next((k for k in CLOCK_ITEMS if k in items), None)
        if clock is not None and not re.search(r"\d{2}:\d{2}", text[10:]):  # a date alone: add the time item
            text, source = f"{text} {items[clock]}", f"{source} + {clock}"
        return parse_time(text), source
    found, source = _landsat_time(path)
    if found is not None:
        return found, source
    if stamp and parse_time(str(stamp)):
        return parse_time(str(stamp)), "TIFF DateTime tag 306 (file creation time)"
    return None, None


def time_gap_lines(pred_path, ref_path):
    """Lines naming both acquisition times and their difference, or 'unknown'."""
    times = {}
    lines = []
    for label, path in (("prediction", pred_path), ("reference", ref_path)):
        t, source = acquisition_time(path)
        times[label] = t
        lines.append(f"{label} {path}: " + (f"{t.isoformat(sep=' ')} ({source})" if t else "unknown"))
    if times["prediction"] and times["reference"]:
        hours = (times["prediction"] - times["reference"]).total_seconds() / 3600
        lines.append(f"time gap (prediction - reference): {hours:+.2f} h")
    else:
        lines.append("time gap: unknown")
    return lines, times


# --------------------------------------------------------------------------- the command


def evaluate(pred_path, ref_path, classes_path=None, coarse_path=None, remove_bias=False, radiance=False,
             min_valid=0.5):
    """The report of the module docstring as a dict: 'rows' {'all' | 'class <code>': scores}, 'SPEC',
    'CONS' ({'RMSE', 'BIAS', 'pixels'} or None), 'bias_removed' (K or None), 'grid' (comparison grid),
    'note' (or None)."""
    pred, pred_info = read_lst_geotiff(pred_path)
    ref, ref_info = read_lst_geotiff(ref_path)
    pred_grid, ref_grid = Grid.from_geotiff(pred_path, pred_info), Grid.from_geotiff(ref_path, ref_info)
    a, b, grid, note = comparison_pair(pred.astype(np.float64), pred_grid, ref.astype(np.float64), ref_grid,
                                       min_valid, radiance)
    valid = np.isfinite(a) & np.isfinite(b)
    if not valid.any():
        raise DataError(f"{pred_path} and {ref_path}: no pixel of the reference grid has both a value and a "
                        f"prediction footprint at least {min_valid:g} valid: nothing to compare")
    bias = None
    if remove_bias:
        bias = float((a - b)[valid].mean())
        a = a - bias
    grad_a, grad_b = gradient_magnitude(a), gradient_magnitude(b)
    rows = {"all": scores(a, b, valid, grad_a, grad_b)}
    if classes_path:
        codes, codes_info = read_geotiff(classes_path)
        labels = majority_classes(codes[0].astype(np.float64), Grid.from_geotiff(classes_path, codes_info), grid,
                                  min_valid)
        for code in np.unique(labels[np.isfinite(labels)]):
            name = f"class {int(code)}" if float(code).is_integer() else f"class {code:g}"
            rows[name] = scores(a, b, valid & (labels == code), grad_a, grad_b)
    cons = None
    if coarse_path:
        lst, lst_info = read_lst_geotiff(coarse_path)
        fp = Footprint(pred_grid, Grid.from_geotiff(coarse_path, lst_info), min_valid)
        d = fp.aggregate(pred.astype(np.float64), radiance) - lst
        ok = np.isfinite(d)
        cons = {"RMSE": float(np.sqrt((d[ok] ** 2).mean())) if ok.any() else float("nan"),
                "BIAS": float(d[ok].mean()) if ok.any() else float("nan"), "pixels": int(ok.sum())}
    return {"rows": rows, "SPEC": spectrum_ratio(a, b, valid), "CONS": cons, "bias_removed": bias,
            "grid": grid.describe(), "note": note}


def format_report(report, columns=METRICS + TEXTURE):
    lines = [f"compared on {report['grid']}"]
    if report["note"]:
        lines.append(f"note: {report['note']}")
    if report["bias_removed"] is not None:
        lines.append(f"scene-wide bias removed: {report['bias_removed']:+.3f} K (prediction - reference)")
    lines += ["", "| region | pixels | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['pixels']} | " + " | ".join(f"{row[k]:.4f}" for k in columns) + " |")
    lines += ["", f"SPEC (power ratio at wavelengths {SPEC_BAND[0]:g}-{SPEC_BAND[1]:g} pixels): {report['SPEC']:.4f}"]
    if report["CONS"] is not None:
        c = report["CONS"]
        lines.append(f"CONS (footprint means vs the coarse LST): RMSE {c['RMSE']:.4f} K, BIAS {c['BIAS']:+.4f} K over "
                     f"{c['pixels']} coarse pixels")
    return "\n".join(lines)


@command
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prediction", help="downscaled LST GeoTIFF (K)")
    p.add_argument("reference", help="independent thermal reference GeoTIFF (K), any grid and CRS")
    p.add_argument("--classes", default=None, help="land-cover class raster on the reference grid or finer")
    p.add_argument("--coarse", default=None, help="the coarse LST the prediction was made from: adds CONS")
    p.add_argument("--remove-bias", action="store_true", help="subtract the scene-wide mean bias first")
    p.add_argument("--time-gap", action="store_true", help="print both acquisition times where known")
    p.add_argument("--radiance", action="store_true", help="average T^4 in footprints (emitted energy)")
    p.add_argument("--min-valid", type=float, default=0.5, help="valid share a footprint needs (default 0.5)")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    if not 0.0 <= args.min_valid <= 1.0:
        raise ConfigError(f"--min-valid {args.min_valid}: expected a fraction in 0..1")
    report = evaluate(args.prediction, args.reference, args.classes, args.coarse, args.remove_bias, args.radiance,
                      args.min_valid)
    if args.time_gap:
        lines, times = time_gap_lines(args.prediction, args.reference)
        report["time"] = {k: v.isoformat() if v else None for k, v in times.items()}
        print("\n".join(lines) + "\n")
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
