"""Scene-scale prediction: downscale a whole georeferenced LST scene of any size onto the guidance grid.

    python predict.py configs/mocolsk_x8.yaml --checkpoint best.pth \
        --lst lst_240m.tif --guidance bands_30m.tif --out lst_30m.tif [--png]
    python predict.py configs/mocolsk_x8.yaml --checkpoint best.pth \
        --lst lst_240m.tif --guidance dem.tif red.tif nir.tif ... --out lst_30m.tif
    python predict.py configs/bicubic_x8.yaml --lst lst_240m.tif --out lst_30m.tif
    python predict.py configs/bicubic_x8.yaml --lst st_dn.tif --lst-scale 0.00341802 --lst-offset 149 \
        --nodata-in 0 --out lst_30m.tif                                  # a DN product (Landsat C2 ST)
    python predict.py configs/demo_tsharp_x8.yaml --lst MOD11A1_LST_Day_1km.tif --product mod11a1 \
        --qc MOD11A1_QC_Day.tif --guidance bands_30m.tif --out lst_30m.tif   # a sensor on its own grid
    [torchrun --standalone --nproc_per_node=N] python predict.py CFG --checkpoint best.pth \
        --scenes scenes.txt|landsat_dir --out-dir out/                    # many scenes -> out/<scene>.tif

Inputs. The LST is one band in Kelvin, or stored values with --lst-scale / --lst-offset (Kelvin =
stored * scale + offset) and --nodata-in (the input fill value of a file without a GDAL_NODATA tag);
these override the config's data.lst_scale / data.lst_offset / data.nodata, and the converted values
must lie in data.lst_range (default 150..400 K; data.to_kelvin). --product NAME decodes a sensor
product's stored values instead (sensors.decode_lst: fill, valid range, DN or Kelvin export; not with
--lst-scale / --lst-offset) and --qc QC.tif (on the LST's grid) masks the pixels its QC rule rejects
(sensors.qc_good; --qc-rule picks another rule). --nodata is the OUTPUT no-data value.
The guidance is one multi-band GeoTIFF whose GDAL band descriptions name the bands, or several files
(`--guidance a.tif b.tif`, `--guidance-dir DIR`, all on one grid), a single-band file being named by its
file stem (dem.tif -> dem). Bands are used in the order of the config's data.guidance_bands; SISR models
read none. NaN or the GDAL_NODATA value is no-data. A guidance band whose scene mean is more than 3
training stds from the training mean (config norm.guidance.stats), or whose std is more than 3 training
stds, is a `warning:` line (another reflectance convention, units or scale): learned models only.

Grids. When the LST grid is the guidance grid coarsened by the model's scale (geotiff.check_grids: same
CRS, pixel x scale, same corner) the scene is tiled as in tiling.py and the output is the LST grid
refined by the scale. Otherwise the LST is a sensor on its own grid (another CRS, any pixel size, not
aligned) and the output is exactly the guidance grid (crossgrid.py): sharpeners fit on the sensor's
pixels through footprint.Footprint, interpolation baselines interpolate at the fine pixel centres, and
a learned model gets the LST brought onto its LR grid (the guidance grid / scale) by bicubic
interpolation or area-weighted means (a `note:` line says which), refused when the sensor pixel is not
within 0.5..2 LR pixels. Fine pixels under a no-data sensor pixel are no-data. Single-image models take
the output grid from the guidance file when it is given and not aligned.

Outputs. A float32 Kelvin GeoTIFF (zlib, 256 x 256 tiles, GDAL_NODATA, internal overviews: see
geotiff.write_geotiff_rows) whose band description is the input's for a brightness temperature (landsat.py's
Level-1 `bt`, `bt_emissivity_corrected`; --png then labels its colour bar so) and `lst` otherwise. An
output that is (the same file as) an input is refused before any work; an existing output is replaced only
with --overwrite. Stale temp files of the output (`<out>.tmp<pid>.<hex>` of killed runs) are removed
first. An output without one valid pixel (all-no-data LST or guidance) is an error unless --allow-empty.
Written atomically: a failure (also a full disk) leaves the previous file, or nothing, at --out.

Uncertainty. --uncertainty writes a second band, `sigma` (K): the spread of the model's members
(uncertainty.WithSpread): for rf / dms the trees, for a stochastic model (PGDM) its draws, for several
checkpoints (`--checkpoint a.pth b.pth c.pth`, a deep ensemble whose mean is band 1) the checkpoints, for
other learned models and bicubic the 8 flips / rotations of the inputs (test-time augmentation: 8 forwards
per tile, sigma 0 for a model that commutes with them); tsharp and linreg have none (sigma 0). Tiles are
blended for sigma as for the LST; consistency corrects band 1 only. --calibrate [ALPHA] (aligned grids)
adds `lo` and `hi`, the bounds of the 1 - ALPHA interval (default 90 %): the scene's own reduced-resolution
experiment (the LST averaged s-fold, downscaled back, corrected as the output is) gives q, the (1 - ALPHA)
conformal quantile of its errors in K at the scene's mean sigma; --transfer carries it from that scale to
the output's (variogram: from the scene's own variogram; a number: the factor test.py --calibrate measured
where truth exists; none); half-width = k q sigma / mean sigma. q, k and the number of calibration pixels
are printed; --calibrate holds the output in memory (12 bytes per fine pixel). docs/notruth.md has the
coverage measured.

Memory. Aligned grids: the output is written as it is made, in 256-row strips (tiling.predict_rows ->
geotiff.write_geotiff_rows), about (tile*scale + 256) x W float32 (plus the PNG's 2000-px decimation).
The inputs are read whole: the LST and the guidance, 4 * bands bytes per HR pixel (read_geotiff decodes
whole pages), which dominates for guided models. A sensor on its own grid: the footprint (26 bytes per
fine pixel) and, for sharpeners, interpolation and any consistency, the output in memory (73 more bytes
per fine pixel while consistency corrects it; tools/consistency_memory.py); a learned model without
consistency still streams. --amp: see tiling.resolve_amp.

Many scenes. --scenes LIST (lines `LST_PATH [GUIDANCE_PATH ...]`, relative to LIST, '#' comments,
shell quoting) or --scenes DIR (subfolders with lst.tif and guidance.tif, as landsat.py writes them)
write --out-dir/<scene>.tif, scene = LST file stem (its folder's name for lst.tif) or subfolder
name. An output that would be an input's file is refused before any scene runs; an existing output is
skipped (`skipped (exists)`) unless --overwrite, so a rerun does only what is missing. The model is
loaded once per process; under torchrun scene i runs on rank i % world. Each scene prints a line (rank,
scene, size, seconds, Mpx/s); a scene that fails (also one whose output would be all no-data) prints
`error: scene NAME: ...` and the others go on; rank 0 prints the done/failed counts, and the exit code
is 1 if any failed.
"""
import argparse
import collections
import os
import sys
import time
import traceback

import numpy as np
import torch

import crossgrid
import engine
import figures
import groklst
import sensors
import uncertainty
from data import guidance_names, lst_band, read_lst_geotiff, read_scene_list
from errors import ConfigError, DataError, UserError, command
from footprint import Footprint, Grid
from geotiff import (
    TIFF_EXTENSIONS,
    check_grids,
    check_writable,
    corner_transform,
    geo_transform,
    geo_window,
    read_geotiff,
    read_header,
    remove_stale_temps,
    write_geotiff_rows,
)
from tiling import (  # noqa: F401  (the tiling names stay importable as predict.X, as before the split)
    BF16_MAX_RMSE_K,
    ROW_STRIP,
    StripBlender,
    _window,
    bf16_check,
    consistent_rows,
    cpu_has_bf16,
    predict_array,
    predict_rows,
    resolve_amp,
    taper,
    tile_starts,
)

# --------------------------------------------------------------------------- reading


def _peek_bands(path):
    """Band names of a guidance GeoTIFF from its header: a single-band file is named by its stem (and
    its description, if any); a multi-band file by data.guidance_names. Lower-case sets per band."""
    header = read_header(path)
    count, names = header["shape"][0], header["bands"]
    if count == 1:
        stem = os.path.splitext(os.path.basename(path))[0]
        return [{stem.lower()} | ({names[0].lower()} if names else set())]
    return [{n} for n in guidance_names(names, count, path)]


def guidance_paths(paths=(), folder=None):
    """The --guidance files plus the GeoTIFFs of --guidance-dir (sorted)."""
    paths = list(paths or ())
    if folder:
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: guidance folder not found")
        paths += sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(TIFF_EXTENSIONS))
    for p in paths:
        if not os.path.exists(p):
            raise DataError(f"{p}: guidance file not found")
    return paths


def read_scene_guidance(paths, bands):
    """Guidance bands `bands` (config order) from GeoTIFF files -> (float32 (C, H, W) no-data NaN, the header
    of the first file read: the guidance grid, that file's path). Each band is looked up by name in every
    file (case-insensitive); every file used must be on the first one's grid (check_grids)."""
    where = {}  # band -> (path, index in file)
    for path in paths:
        for index, names in enumerate(_peek_bands(path)):
            for band in bands:
                if band.lower() in names:
                    if band in where:
                        raise DataError(f"guidance band {band!r} is in both {where[band][0]} and {path}")
                    where[band] = (path, index)
    missing = [b for b in bands if b not in where]
    if missing:
        found = sorted({n for p in paths for names in _peek_bands(p) for n in names})
        raise DataError(f"no guidance band {missing[0]!r} in {paths or 'no files'} (found {found}; the config "
                        f"needs {list(bands)}: one multi-band file with band descriptions or one file per band)")
    out = first = None
    for path in dict.fromkeys(p for p, _ in where.values()):  # each file once, in first-use order
        array, info = read_geotiff(path)
        if first is None:
            first = (info, path)
            out = np.empty((len(bands),) + array.shape[1:], np.float32)
        else:
            check_grids(first[1], out.shape[1:], first[0]["geo"], path, array.shape[1:], info["geo"],
                        labels=("guidance", "guidance"))
        for c, band in enumerate(bands):
            if where[band][0] == path:
                out[c] = array[where[band][1]]
        del array
    return out, first[0], first[1]


def read_scene_lst(path, units, product=None, qc=None, qc_rule=None):
    """The LST of a scene -> ((h, w) float32 Kelvin, NaN no-data, its header as read_geotiff's).

    product: a sensors.PRODUCTS name: its stored values are decoded (sensors.decode_lst, with the file's
    type from its header) instead of units; qc: a QC GeoTIFF on the LST's grid whose pixels the product's
    rule (qc_rule, default its own) rejects become NaN (sensors.qc_good)."""
    if product is None:
        lst, info = read_lst_geotiff(path, units)
    else:
        array, info = read_geotiff(path)
        nodata = units.get("nodata") if units.get("nodata") is not None else info["nodata"]
        lst = sensors.decode_lst(product, lst_band(array, path), path, dtype=read_header(path)["dtype"], nodata=nodata)
    if qc is not None:
        flags, qinfo = read_geotiff(qc)
        check_grids(path, lst.shape, info["geo"], qc, flags.shape[1:], qinfo["geo"], labels=("LST", "QC"))
        good = sensors.qc_good(product, lst_band(flags, qc), qc_rule, qc, dtype=read_header(qc)["dtype"])
        masked = int((~good & np.isfinite(lst)).sum())
        lst = np.where(good, lst, np.float32(np.nan))
        print(f"note: {qc}: {masked} of {lst.size} LST pixels masked by {sensors.lookup(product)[0]} QC rule "
              f"{qc_rule or sensors.lookup(product)[1]['qc_default']!r}", file=sys.stderr)
    return lst, info


GUIDANCE_MEAN_STDS, GUIDANCE_STD_RATIO = 3.0, 3.0  # guidance_warnings: how far from the training statistics


def guidance_warnings(cfg, bands, guidance):
    """`warning:` lines for guidance bands far from the statistics the model was normalised with
    (norm.guidance.stats): |scene mean - train mean| > 3 train std, or scene std > 3 train std. A scene
    std far below the training one is not flagged: a small or flat scene has a smaller spread than the
    whole training set without being in another convention. A band without mean/std there is not checked."""
    stats, lines = cfg["norm"]["guidance"]["stats"], []
    for band, values in zip(bands, guidance):
        train = stats.get(band, {})
        if not all(isinstance(train.get(k), (int, float)) for k in ("mean", "std")) or train["std"] <= 0:
            continue
        finite = values[np.isfinite(values)].astype(np.float64)
        if finite.size == 0:
            continue
        mean, std = float(finite.mean()), float(finite.std())
        if abs(mean - train["mean"]) > GUIDANCE_MEAN_STDS * train["std"] or std > GUIDANCE_STD_RATIO * train["std"]:
            lines.append(f"warning: guidance band {band!r}: scene mean {mean:.4g}, std {std:.4g}; the model was trained "
                         f"on mean {train['mean']:.4g}, std {train['std']:.4g} (norm.guidance.stats): another "
                         f"reflectance convention, unit or scale? Outputs can move by kelvins")
    return lines


# --------------------------------------------------------------------------- outputs


def same_file(a, b):
    """True when paths a and b are one file (os.path.samefile: through symlinks and hard links; realpath when
    one does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(out, inputs, overwrite, flag="--out"):
    """Before any work: `out` can be created, is none of `inputs` (an output never replaces an input) and, unless
    overwrite, does not exist yet. Removes stale temp files of `out` (geotiff.remove_stale_temps)."""
    check_writable(out)
    for path in inputs:
        if path and os.path.exists(path) and same_file(out, path):
            raise ConfigError(f"{flag} {out} is the input {path}: an output never replaces an input; write elsewhere")
    for stale in remove_stale_temps(out):
        print(f"note: removed {stale}, a temp file left by a killed run", file=sys.stderr)
    if os.path.exists(out) and not overwrite:
        raise DataError(f"{out}: exists; give --overwrite to replace it")


def _strips(array, strip=ROW_STRIP):
    """A whole (H, W) or (C, H, W) array as the row strips write_geotiff_rows takes."""
    for r in range(0, array.shape[-2], strip):
        yield array[..., r:r + strip, :]


def _keep_decimated(strips, step, look):
    """Pass the row strips through, appending every `step`-th row and column of them to `look`."""
    y = 0
    for rows in strips:
        first = rows if rows.ndim == 2 else rows[0]  # the prediction of a multi-band strip
        look.append(first[(-y) % step::step, ::step])
        y += first.shape[0]
        yield rows


def _require_data(strips, out, allow_empty):
    """Pass the row strips through, one behind (the writer stops asking after the last tile it expects); before
    the last one, DataError (the write is then abandoned: nothing is left at `out`) if not one pixel was
    finite, unless allow_empty."""
    valid, previous = 0, None
    for rows in strips:
        if previous is not None:
            yield previous
        valid += int(np.isfinite(rows).sum())
        previous = rows
    if valid == 0 and not allow_empty:
        raise DataError(f"{out}: every output pixel is no-data (no pixel has a valid LST and valid guidance); "
                        f"nothing written; --allow-empty writes it anyway")
    if previous is not None:
        yield previous


# --------------------------------------------------------------------------- one scene


_LOADED = {}  # (config, overrides, checkpoints, device) -> models: loaded once per process for many scenes


def checkpoint_list(checkpoint):
    """--checkpoint: None, one path or several (a deep ensemble) -> a list (empty for None)."""
    if checkpoint is None:
        return []
    return [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)


def load_members(config, overrides, cfg, checkpoint, device):
    """groklst.load_model of each checkpoint (one model without any), cached for the scenes of one process
    (one model set at a time) -> [model, ...]."""
    paths = checkpoint_list(checkpoint) or [None]
    key = (os.path.abspath(config), tuple(overrides), tuple(p and os.path.abspath(p) for p in paths), str(device))
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = [groklst.load_model(cfg, p, device) for p in paths]
    return _LOADED[key]


def load_model_once(config, overrides, cfg, checkpoint, device):
    """groklst.load_model, cached for the scenes of one process (one model at a time)."""
    return load_members(config, overrides, cfg, checkpoint, device)[0]


def _tiling(lr_tile, lr_overlap, batch, scale, model=None):
    """--lr-tile / --lr-overlap / --batch -> (tile, overlap); ConfigError naming the flag at fault."""
    tile = max(1, 512 // scale) if lr_tile is None else lr_tile
    if tile < 1:
        raise ConfigError(f"--lr-tile {tile}: the tile side is in LR pixels and must be >= 1 (default {max(1, 512 // scale)})")
    overlap = tile // 4 if lr_overlap is None else lr_overlap
    if not 0 <= overlap < tile:
        raise ConfigError(f"--lr-overlap {overlap}: must be >= 0 and below --lr-tile {tile} (LR pixels)")
    if batch < 1:
        raise ConfigError(f"--batch {batch}: tiles per forward must be >= 1")
    multiple = getattr(model, "lr_multiple", 1)
    if model is not None and tile % multiple:
        raise ConfigError(f"--lr-tile {tile}: model {type(model).__name__} needs a multiple of {multiple} LR pixels")
    return tile, overlap


def _aligned(lst, lst_shape, lst_geo, gpath, gheader, scale):
    """True when the guidance grid is the LST grid refined by `scale` (check_grids); False when both are
    georeferenced but not so (a sensor on its own grid); check_grids' DataError when one is not georeferenced."""
    try:
        check_grids(lst, lst_shape, lst_geo, gpath, gheader["shape"][1:], gheader["geo"], scale)
        return True
    except DataError:
        if corner_transform(lst_geo) is None or corner_transform(gheader["geo"]) is None:
            raise
        return False


def _fit_error(model_name, lst, e):
    return DataError(f"{lst}: model {model_name!r} cannot fit this scene: {e}")


def predict(config, lst, out, guidance=(), guidance_dir=None, checkpoint=None, overrides=(), lr_tile=None,
            lr_overlap=None, batch=4, device=None, amp="auto", nodata=None, png=False, progress=True,
            lst_scale=None, lst_offset=None, nodata_in=None, consistency=None, product=None, qc=None, qc_rule=None,
            overwrite=False, allow_empty=False, uncertainty_band=False, calibrate=None, transfer="variogram"):
    """Downscale the GeoTIFF scene `lst` with the model of `config` and write `out`.

    out: float32 Kelvin GeoTIFF (geotiff.write_geotiff_rows: zlib, 256 x 256 tiles, overviews), GDAL_NODATA =
    nodata (default NaN); on the LST grid refined by the scale when the grids are aligned, else exactly on the
    guidance grid (module docstring); written atomically (nothing is left at `out` on failure).
    lr_tile / lr_overlap in LR pixels (default 512 // scale and lr_tile // 4). amp: see tiling.resolve_amp.
    lst_scale, lst_offset, nodata_in: how the LST is stored (override data.lst_scale / data.lst_offset /
    data.nodata; nodata_in is the input fill value, nodata the output's); product, qc, qc_rule: a sensor
    product instead (read_scene_lst). png: also write <out stem>.png (needs matplotlib). consistency:
    engine.make_consistent's mode (default: the config's `consistency`), applied to the whole output.
    overwrite: replace an existing `out`; allow_empty: write an output without a valid pixel.
    checkpoint: one path, or several (a deep ensemble: the mean of the members). uncertainty_band: also write
    sigma (K) as band 2 (spread_model); calibrate: alpha, also write the bounds of the 1 - alpha interval
    (bands 3, 4) from the scene's anchored q and `transfer` ('variogram', 'none' or a factor; uncertainty.py);
    aligned grids only.
    Returns {'out', 'shape': (H, W), 'seconds', 'mpx_per_s', 'calibration' (calibrate_scene's dict or None)}.
    """
    t0 = time.time()
    cfg = groklst.load_config(config, overrides)
    scale, bands, name = cfg["data"]["scale"], groklst.guidance_bands(cfg), cfg["model"]["name"]
    tile, overlap = _tiling(lr_tile, lr_overlap, batch, scale)
    if product is not None and (lst_scale is not None or lst_offset is not None):
        raise ConfigError(f"--product {product} decodes the LST itself: drop --lst-scale / --lst-offset")
    if product is not None:
        sensors.lookup(product)  # an unknown name fails here
    if qc is not None and product is None:
        raise ConfigError(f"--qc {qc}: give --product too (its QC rule reads the flags)")
    if png:
        figures.require_matplotlib("--png")  # fail before the long part
    checkpoints = checkpoint_list(checkpoint)
    if calibrate is not None:
        uncertainty_band = True
        if not 0.0 < float(calibrate) < 1.0:
            raise ConfigError(f"--calibrate {calibrate}: the miscoverage alpha must lie between 0 and 1 (0.1: 90 % intervals)")
        uncertainty.parse_transfer(transfer)
    paths = guidance_paths(guidance, guidance_dir)
    inputs = [lst, *paths, qc, *checkpoints, config]
    check_output(out, inputs, overwrite)
    png_path = os.path.splitext(out)[0] + ".png"
    if png:
        check_output(png_path, inputs, overwrite, "--png")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolve_amp(amp, device)  # a bad value fails here, before reading
    if amp == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("note: --amp bf16: this CPU has no native bf16 (AMX / AVX512-BF16); bf16 is emulated and slow",
              file=sys.stderr)
    units = groklst.lst_units(cfg)
    for key, value in (("scale", lst_scale), ("offset", lst_offset), ("nodata", nodata_in)):
        if value is not None:
            units[key] = value
    array, info = read_scene_lst(lst, units, product, qc, qc_rule)
    if not np.isfinite(array).any() and not allow_empty:
        raise DataError(f"{lst}: no valid LST pixel (all no-data{' after QC' if qc else ''}): nothing to downscale; "
                        f"--allow-empty writes an all-no-data map")
    gui = gheader = gpath = None
    if bands:
        if not paths:
            raise DataError(f"model {name!r} is guided: give --guidance (bands {bands})")
        gui, gheader, gpath = read_scene_guidance(paths, bands)
        empty = [b for b, g in zip(bands, gui) if not np.isfinite(g).any()]
        if empty and not allow_empty:
            raise DataError(f"{gpath}: guidance band {empty[0]!r} is all no-data: every output pixel would be; "
                            f"--allow-empty writes it anyway")
    elif paths:
        gpath, gheader = paths[0], read_header(paths[0])
    aligned = gheader is None or _aligned(lst, array.shape, info["geo"], gpath, gheader, scale)
    if bands == [] and paths and aligned:
        print(f"note: model {name!r} is single-image; guidance ignored", file=sys.stderr)
    members = load_members(config, overrides, cfg, checkpoint, device)
    model = members[0]
    _tiling(tile, overlap, batch, scale, model)
    if gui is not None and not getattr(model, "physical_units", False):
        for line in guidance_warnings(cfg, bands, gui):
            print(line, file=sys.stderr)
    normalizer = groklst.build_normalizer(cfg)
    mode = consistency or cfg["consistency"]
    in_band = (info.get("bands") or [None])[0]
    out_band = in_band if figures.quantity_label(in_band) != "LST (K)" else "lst"
    net = spread_model(members, normalizer, amp, uncertainty_band, name, progress)
    if calibrate is not None and not aligned:
        raise ConfigError(f"--calibrate: {lst} is on its own grid, not the guidance grid / {scale}; the reduced-resolution "
                          f"experiment runs on aligned grids only (--uncertainty alone works on any grid)")
    calibration = None
    if aligned:
        if hasattr(model, "fit_scene"):  # statistical sharpeners: one fit on the whole scene, applied to every tile
            try:
                model.fit_scene(array, gui)
            except UserError as e:
                raise _fit_error(name, lst, e) from None
        shape = (array.shape[0] * scale, array.shape[1] * scale)
        if progress:  # the spread path (net) runs float32 unless --amp bf16 (spread_model)
            used = resolve_amp(amp, device, model)[0] if net is None else net.amp
            print(f"{name} x{scale}: {array.shape[1]} x {array.shape[0]} -> {shape[1]} x {shape[0]} px, tile {tile} "
                  f"overlap {overlap} (LR px), batch {batch}, {device}, amp {used}", file=sys.stderr)
        geo = None
        if geo_transform(info["geo"]) is not None:
            geo = geo_window(info["geo"], 0, 0, scale)
        else:
            print(f"warning: {lst}: no georeferencing (ModelPixelScale + ModelTiepoint or ModelTransformation); "
                  f"{out} will have none", file=sys.stderr)
        if calibrate is not None:
            calibration = calibrate_rows(net, array, gui, scale, mode, calibrate, transfer)
        if net is None:
            rows = predict_rows(model, normalizer, array, gui, scale, tile, overlap, batch, device, amp, progress)
            rows = consistent_rows(rows, array, scale, mode)
        else:
            rows = predict_rows(net, normalizer, array, gui, scale, tile, overlap, batch, device, "none", progress)
            rows = _mean_corrected(rows, lambda means: consistent_rows(means, array, scale, mode))
    else:
        shape, geo = tuple(gheader["shape"][1:]), gheader["geo"]
        rows = own_grid_rows(model, normalizer, array, Grid.from_geotiff(lst, info), gui,
                             Grid.from_geotiff(gpath, gheader), name, scale, mode, tile, overlap, batch, device, amp,
                             progress, lst, net)
    band_names = out_band
    if net is not None and not uncertainty_band:  # an ensemble's mean alone
        rows = (strip[0] for strip in rows)
    elif calibration is not None:
        rows, band_names = interval_rows(rows, calibration), [out_band, "sigma", "lo", "hi"]
    elif net is not None:
        band_names = [out_band, "sigma"]
    rows = _require_data(rows, out, allow_empty)
    step = max(1, -(-max(shape) // 2000))  # the PNG's decimation (figures.write_png): kept as the rows pass
    look = []
    if png:
        rows = _keep_decimated(rows, step, look)
    write_geotiff_rows(out, shape, rows, geo, nodata=float("nan") if nodata is None else float(nodata), tile=ROW_STRIP,
                       band_name=band_names, bands=1 if isinstance(band_names, str) else len(band_names))
    if png:
        figures.write_png(png_path, np.concatenate(look), f"{os.path.basename(out)}: {name} x{scale}",
                          figures.quantity_label(out_band))
    seconds = time.time() - t0
    return {"out": out, "shape": shape, "seconds": seconds, "mpx_per_s": shape[0] * shape[1] / 1e6 / max(seconds, 1e-9),
            "calibration": calibration}


def own_grid_rows(model, normalizer, lst, coarse, guidance, fine, name, scale, mode, tile, overlap, batch, device,
                  amp, progress, lst_path, net=None):
    """Output row strips on the guidance grid `fine` of an LST (h, w) K on its own grid `coarse` (crossgrid.py):
    sharpeners through the footprint, interpolation baselines at the fine pixel centres, a learned model on its
    LR grid. NaN where the sensor pixel holding a fine pixel is NaN or outside, or a guidance band is NaN;
    consistency `mode` through the footprint (engine.make_consistent). guidance (C, H, W) or None.
    net: the uncertainty.WithSpread of the model (spread_model), or None; with it the strips are (2, rows, W):
    the prediction and sigma (trees for rf / dms, 0 for the other sharpeners and interpolation)."""
    fp = Footprint(fine, coarse)
    H, W = fine.shape
    pixel = crossgrid.sensor_pixel(fp)
    dark = np.isnan(fp.nearest(lst))
    if guidance is not None:
        dark |= np.isnan(guidance).any(0)
    if progress:
        print(f"{name}: {coarse.describe()} -> {fine.describe()} (sensor pixel = {pixel:.3g} fine pixels)", file=sys.stderr)
    interpolation = crossgrid.interpolation_mode(model)
    sigma = None
    if crossgrid.is_sharpener(model) or interpolation:
        if interpolation:
            out = np.asarray(fp.interpolate(lst, interpolation), np.float32)
        else:
            try:
                if net is not None and net.source == "trees":
                    out, sigma = _sharpen_spread_on_footprint(net, lst, guidance, fp)
                else:
                    out = crossgrid.sharpen_on_footprint(model, lst, guidance, fp)
            except UserError as e:
                raise _fit_error(name, lst_path, e) from None
        out = np.where(dark, np.float32(np.nan), out)
        if net is not None:
            sigma = np.where(np.isfinite(out), np.float32(0.0), np.float32(np.nan)) if sigma is None else sigma
            out = np.stack([out, np.where(dark, np.float32(np.nan), sigma)])
        rows = _strips(out)
    else:
        ratio = pixel / scale
        crossgrid.check_ratio(ratio, scale, name, lst_path)
        lr = crossgrid.lr_grid(fine, scale)
        lst_lr, how = crossgrid.to_lr_grid(lst, coarse, lr, ratio)
        print(f"note: {lst_path}: the sensor pixel is {ratio:.3g} x the LR pixel of {name} x{scale}; the LST is brought "
              f"onto the LR grid ({lr.shape[1]} x {lr.shape[0]} px) by {how}", file=sys.stderr)
        gui = guidance
        if guidance is not None and (lr.shape[0] * scale, lr.shape[1] * scale) != (H, W):  # NaN beyond the fine grid
            gui = np.full((len(guidance), lr.shape[0] * scale, lr.shape[1] * scale), np.nan, np.float32)
            gui[:, :H, :W] = guidance
        if net is None:
            strips = predict_rows(model, normalizer, lst_lr, gui, scale, tile, overlap, batch, device, amp, progress)
        else:
            strips = predict_rows(net, normalizer, lst_lr, gui, scale, tile, overlap, batch, device, "none", progress)
        rows = _cropped(strips, dark, W)
        if mode == "none":
            return rows
        rows = [np.concatenate(list(rows), -2)]
    if mode == "none":
        return rows
    whole = torch.from_numpy(np.concatenate(list(rows), -2))
    mean = whole if net is None else whole[0]
    fixed = engine.make_consistent(mean[None, None], torch.from_numpy(lst)[None, None], mode, fp)[0, 0].numpy()
    return _strips(fixed if net is None else np.stack([fixed.astype(np.float32), whole[1].numpy()]))


def _sharpen_spread_on_footprint(net, lst, guidance, fp):
    """crossgrid.sharpen_on_footprint with the trees' spread (net: a WithSpread of rf / dms) -> ((H, W), (H, W))
    float32 K: the sharpener fitted and applied through the footprint."""
    mean, sigma = net._trees(net.members[0], torch.from_numpy(np.asarray(lst, np.float32))[None, None],
                             torch.from_numpy(guidance)[None], fp)
    return mean[0, 0].numpy(), sigma[0, 0].numpy()


def _cropped(strips, dark, width):
    """Strips of a padded LR-grid prediction, (rows, W') or (C, rows, W'), cut to the fine grid (`dark`'s
    shape), NaN where `dark`."""
    y = 0
    for rows in strips:
        rows = rows[..., :len(dark) - y, :width]
        n = rows.shape[-2]
        if n:
            yield np.where(dark[y:y + n], np.float32(np.nan), rows)
        y += n


# --------------------------------------------------------------------------- uncertainty


def spread_model(members, normalizer, amp, wanted, name, progress):
    """The uncertainty.WithSpread of the loaded models when sigma is wanted or several checkpoints are given
    (then their mean is the prediction), else None. It runs in float32 unless --amp bf16 (auto's check
    against float32 is not made on this path)."""
    if len(members) == 1 and not wanted:
        return None
    if len(members) > 1 and getattr(members[0], "physical_units", False):
        raise ConfigError(f"--checkpoint: model {name!r} has no weights; a deep ensemble needs a learned model")
    net = uncertainty.WithSpread(members, normalizer, amp="bf16" if amp == "bf16" else "none")
    if progress and wanted:
        print(f"note: sigma from {net.source}: {uncertainty.SOURCES[net.source]}, per tile", file=sys.stderr)
    if wanted and net.source == "draws" and getattr(members[0], "num_samples", 2) < 2:
        print(f"warning: model {name!r} averages {members[0].num_samples} draw: sigma is 0; give model.num_samples=8 "
              f"(or more) for the spread of its draws", file=sys.stderr)
    return net


def calibrate_rows(net, lst, guidance, scale, mode, alpha, transfer):
    """--calibrate on an aligned grid pair: the scene's anchored q and the transfer k (uncertainty.calibrate_scene,
    the reduced experiment corrected by consistency `mode` as the output is), printed -> that dict."""
    fp = Footprint.aligned((lst.shape[0] * scale, lst.shape[1] * scale), scale)
    cal = uncertainty.calibrate_scene(net, lst, guidance, fp, mode, alpha, transfer, scale)
    if not np.isfinite(cal["q"]):
        raise DataError(f"--calibrate {alpha:g}: the scene's {scale}-fold reduction has {cal['n']} valid pixels, too few "
                        f"for a 1 - {alpha:g} quantile; use a larger scene or a larger alpha")
    how = "variogram" if cal["variogram"] is not None else "given" if transfer != "none" else "none"
    print(f"calibration: q {cal['q']:.3f} K (at the scene's mean sigma) from {cal['n']} pixels of the scene's own "
          f"{cal['scale']}-fold reduction (consistency {mode}); transfer {cal['transfer']:.3f} ({how}); alpha "
          f"{alpha:g}: half-width {cal['transfer'] * cal['q']:.3f} K x sigma / mean sigma")
    if cal["in_sample"] and transfer in ("variogram", "none"):
        print(f"warning: the scene's {cal['scale']}-fold reduction has too few pixels to refit the sharpener: its residuals "
              f"are those of its own fit and q is too small (the intervals under-cover); give --transfer as measured by "
              f"test.py --calibrate on scenes of this size", file=sys.stderr)
    return cal


def _mean_corrected(strips, correct):
    """(2, rows, W) strips of prediction and sigma -> the same, the prediction passed through `correct` (a
    generator over the prediction strips such as consistent_rows, which reads one strip ahead: the sigmas
    wait in a queue)."""
    waiting = collections.deque()

    def means():
        for strip in strips:
            waiting.append(strip[1])
            yield strip[0]

    for mean in correct(means()):
        yield np.stack([mean, waiting.popleft()])


def interval_rows(strips, calibration):
    """(2, rows, W) strips -> (4, rows, W): prediction, sigma, lo, hi = prediction -+ k q relative_sigma
    (uncertainty.half_width). The relative sigma needs the scene's mean sigma, so the scene is held in memory
    here: 12 bytes per fine pixel."""
    whole = np.concatenate(list(strips), -2)
    half = uncertainty.half_width(torch.from_numpy(whole[1]), calibration["q"], calibration["transfer"]).numpy()
    for r in range(0, whole.shape[1], ROW_STRIP):
        mean, h = whole[0, r:r + ROW_STRIP], half[r:r + ROW_STRIP]
        yield np.stack([mean, whole[1, r:r + ROW_STRIP], mean - h, mean + h])


# --------------------------------------------------------------------------- many scenes


def _scene_name(lst_path):
    """A scene's output name: the LST file's stem, or its folder's name for a `landsat` output (lst.tif)."""
    stem = os.path.splitext(os.path.basename(lst_path))[0]
    return os.path.basename(os.path.dirname(os.path.abspath(lst_path))) if stem.lower() == "lst" else stem


def read_scenes(source):
    """--scenes -> [(name, lst path, [guidance paths])]. A text file: data.read_scene_list's grammar
    (`LST_PATH [GUIDANCE_PATH ...]` a line). A folder: every subfolder with an lst.tif (a landsat.py
    output), with its guidance.tif if there is one. Names must be unique (they name the outputs)."""
    scenes = []
    if os.path.isdir(source):
        for sub in sorted(os.listdir(source)):
            folder = os.path.join(source, sub)
            if os.path.isfile(os.path.join(folder, "lst.tif")):
                gui = [os.path.join(folder, "guidance.tif")] if os.path.isfile(os.path.join(folder, "guidance.tif")) else []
                scenes.append((sub, os.path.join(folder, "lst.tif"), gui, f"{folder}"))
    elif os.path.isfile(source):
        scenes = [(_scene_name(lst), lst, gui, where) for lst, gui, where in read_scene_list(source)]
    else:
        raise DataError(f"--scenes {source}: no such file or folder (a list of `LST [GUIDANCE ...]` lines, or a "
                        f"folder of landsat.py outputs)")
    if not scenes:
        raise DataError(f"--scenes {source}: no scenes (a list needs `LST [GUIDANCE ...]` lines; a folder, "
                        f"subfolders with lst.tif)")
    seen = {}
    for name, _, _, where in scenes:
        if name in seen:
            raise DataError(f"--scenes {source}: scene name {name!r} twice ({seen[name]} and {where}): outputs are "
                            f"named <scene>.tif; rename one LST file")
        seen[name] = where
    return [(name, lst, gui) for name, lst, gui, _ in scenes]


def predict_scenes(config, scenes, out_dir, device=None, **kwargs):
    """Downscale many scenes into out_dir/<scene>.tif, the model loaded once per process. Under
    torchrun scene i goes to rank i % world. A scene that fails (bad input) is an `error:` line on
    stderr and the others go on; at the end rank 0 prints the done / failed counts (after a gather)
    and raises a DataError naming the failed scenes if any (exit code 1; the other ranks exit 1
    quietly). Outputs that would be an input's file are refused before any scene runs; an existing output
    is skipped ('skipped') unless kwargs['overwrite']. kwargs: as predict. Returns [(scene, 'done' |
    'skipped' | 'failed')] of all ranks."""
    outputs = {name: os.path.join(out_dir, name + ".tif") for name, _, _ in scenes}
    inputs = [p for _, lst, gui in scenes for p in (lst, *gui)]
    for name, out in outputs.items():
        for path in inputs:
            if os.path.exists(out) and os.path.exists(path) and same_file(out, path):
                raise ConfigError(f"--out-dir {out_dir}: scene {name}'s output {out} is the input {path}: an output "
                                  f"never replaces an input; give another --out-dir")
    rank, world, dist_device = engine.setup_distributed()
    try:
        device = torch.device(device) if device else dist_device
        if not os.path.isdir(out_dir):
            os.makedirs(out_dir, exist_ok=True)
        check_writable(os.path.join(out_dir, "scene.tif"))
        cfg = groklst.load_config(config, kwargs.get("overrides", ()))
        load_model_once(config, kwargs.get("overrides", ()), cfg, kwargs.get("checkpoint"), device)  # before any scene
        status = []
        for i, (name, lst, gui) in enumerate(scenes):
            if i % world != rank:
                continue
            if os.path.exists(outputs[name]) and not kwargs.get("overwrite"):
                remove_stale_temps(outputs[name])
                status.append((i, name, "skipped"))
                print(f"rank {rank}/{world} scene {name}: skipped (exists) {outputs[name]}", flush=True)
                continue
            try:
                r = predict(config, lst, outputs[name], guidance=gui, device=device, progress=False, **kwargs)
            except UserError as e:
                print(f"error: scene {name}: {e}", file=sys.stderr, flush=True)
                status.append((i, name, "failed"))
                continue
            except Exception:  # a bug: keep its traceback, and the other scenes going
                traceback.print_exc()
                print(f"error: scene {name}: failed with the traceback above", file=sys.stderr, flush=True)
                status.append((i, name, "failed"))
                continue
            status.append((i, name, "done"))
            print(f"rank {rank}/{world} scene {name}: {r['shape'][1]} x {r['shape'][0]} px, {r['seconds']:.1f} s, "
                  f"{r['mpx_per_s']:.3g} Mpx/s -> {r['out']}", flush=True)
        everything = sorted(s for part in engine.gather(status) for s in part)
    finally:
        engine.teardown_distributed()
    failed = [name for _, name, state in everything if state == "failed"]
    skipped = sum(state == "skipped" for _, _, state in everything)
    if rank == 0:
        print(f"scenes: {len(everything) - len(failed) - skipped} done, {len(failed)} failed, {world} process(es)"
              + (f", {skipped} skipped (exist; --overwrite redoes them)" if skipped else ""), flush=True)
    if failed:
        if rank == 0:
            raise DataError(f"{len(failed)} of {len(everything)} scenes failed: {', '.join(failed)} (see the error lines above)")
        sys.exit(1)
    return [(name, state) for _, name, state in everything]


@command
def main(argv=None):
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.add_argument("--lst", default=None, help="LR LST GeoTIFF (Kelvin, or see --lst-scale)")
    p.add_argument("--guidance", nargs="+", default=[], help="one multi-band GeoTIFF, or one file per band (dem.tif)")
    p.add_argument("--guidance-dir", default=None, help="folder of guidance GeoTIFFs (bands by name or file stem)")
    p.add_argument("--out", default=None, help="output GeoTIFF (float32 Kelvin)")
    p.add_argument("--scenes", default=None, help="many scenes: a list file of `LST [GUIDANCE ...]` lines, or a folder "
                                                  "of `landsat` outputs (subfolders with lst.tif, guidance.tif)")
    p.add_argument("--out-dir", default=None, help="with --scenes: write <out-dir>/<scene>.tif")
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="CKPT",
                   help="weights (not needed for bicubic / bilinear / sharpeners); several: a deep ensemble (their mean)")
    p.add_argument("--lr-tile", type=int, default=None, help="tile side in LR (input) pixels (default 512 // scale)")
    p.add_argument("--lr-overlap", type=int, default=None, help="tile overlap in LR pixels (default lr-tile // 4)")
    p.add_argument("--tile", "--overlap", dest="old_tile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=4, help="tiles per forward")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16"],
                   help="auto (default): bf16 autocast + channels_last where the device has native bf16, else "
                        "float32; none: float32")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--nodata", type=float, default=None, help="OUTPUT no-data value (default NaN)")
    p.add_argument("--nodata-in", type=float, default=None,
                   help="INPUT LST fill value of a file without a GDAL_NODATA tag (overrides data.nodata)")
    p.add_argument("--lst-scale", type=float, default=None, help="LST = stored * scale + offset (overrides data.lst_scale)")
    p.add_argument("--lst-offset", type=float, default=None, help="(overrides data.lst_offset)")
    p.add_argument("--png", action="store_true", help="also write <out>.png with a colour bar (needs matplotlib)")
    p.add_argument("--product", default=None, metavar="NAME",
                   help=f"decode a sensor product's LST (sensors.py: {', '.join(sensors.PRODUCTS)}); not with --lst-scale")
    p.add_argument("--qc", default=None, metavar="QC.tif", help="with --product: its QC raster on the LST's grid; "
                                                                "pixels the QC rule rejects become no-data")
    p.add_argument("--qc-rule", default=None, help="with --qc: another rule of the product (default: its own)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("--allow-empty", action="store_true", help="write an output without a valid pixel instead of failing")
    p.add_argument("--consistency", nargs="?", const="bicubic", default=None, choices=engine.CONSISTENCY_MODES,
                   help="block mean of the output = LR input (engine.make_consistent); alone: bicubic; "
                        "default: the config's consistency (none)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write sigma (K) as band 2: trees (rf, dms), the draws (stochastic models), the checkpoints "
                        "of an ensemble, else test-time augmentation (8 forwards); 0 for tsharp / linreg")
    p.add_argument("--calibrate", nargs="?", type=float, const=0.1, default=None, metavar="ALPHA",
                   help="also write lo / hi (bands 3, 4) of the 1 - ALPHA interval (default 0.1: 90 %%), calibrated on "
                        "the scene's own reduced-resolution experiment (aligned grids; implies --uncertainty)")
    p.add_argument("--transfer", default="variogram", metavar="K",
                   help="with --calibrate: the reduced-to-full scale factor of q: variogram (default, from the scene), "
                        "none, or a number measured by test.py --calibrate on a split with truth")
    args = p.parse_intermixed_args(argv)
    if args.old_tile is not None:  # prepare.py's --tile is in HR pixels: predict's LR sizes say so in their names
        raise ConfigError("predict.py: --tile / --overlap are now --lr-tile / --lr-overlap (LR, i.e. input, pixels)")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: give a number of CPU threads >= 1")
        torch.set_num_threads(args.threads)
    common = dict(checkpoint=args.checkpoint, overrides=args.overrides, lr_tile=args.lr_tile, lr_overlap=args.lr_overlap,
                  batch=args.batch, amp=args.amp, nodata=args.nodata, png=args.png, lst_scale=args.lst_scale,
                  lst_offset=args.lst_offset, nodata_in=args.nodata_in, consistency=args.consistency,
                  product=args.product, qc_rule=args.qc_rule, overwrite=args.overwrite, allow_empty=args.allow_empty,
                  uncertainty_band=args.uncertainty, calibrate=args.calibrate, transfer=args.transfer)
    if args.scenes:
        if args.lst or args.out or args.guidance or args.guidance_dir or args.qc or not args.out_dir:
            raise ConfigError("--scenes takes --out-dir DIR and no --lst / --out / --guidance / --guidance-dir / --qc "
                              "(each scene line names its files)")
        predict_scenes(args.config, read_scenes(args.scenes), args.out_dir, device=args.device, **common)
        return
    if not (args.lst and args.out) or args.out_dir:
        raise ConfigError("give --lst LST.tif and --out OUT.tif (one scene), or --scenes LIST --out-dir DIR (many)")
    predict(args.config, args.lst, args.out, guidance=args.guidance, guidance_dir=args.guidance_dir,
            device=args.device, qc=args.qc, **common)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
