"""Scene-scale prediction: downscale a whole georeferenced LST scene of any size, tile by tile.

    python predict.py configs/mocolsk_x8.yaml --checkpoint best.pth \
        --lst lst_240m.tif --guidance bands_30m.tif --out lst_30m.tif [--png]
    python predict.py configs/mocolsk_x8.yaml --checkpoint best.pth \
        --lst lst_240m.tif --guidance dem.tif red.tif nir.tif ... --out lst_30m.tif
    python predict.py configs/bicubic_x8.yaml --lst lst_240m.tif --out lst_30m.tif
    python predict.py configs/bicubic_x8.yaml --lst st_dn.tif --lst-scale 0.00341802 --lst-offset 149 \
        --nodata-in 0 --out lst_30m.tif                                  # a DN product (Landsat C2 ST)
    [torchrun --standalone --nproc_per_node=N] python predict.py CFG --checkpoint best.pth \
        --scenes scenes.txt|landsat_dir --out-dir out/                    # many scenes -> out/<scene>.tif

Inputs. The LST is one band in Kelvin, or stored values with --lst-scale / --lst-offset (Kelvin =
stored * scale + offset) and --nodata-in (the input fill value of a file without a GDAL_NODATA tag);
these override the config's data.lst_scale / data.lst_offset / data.nodata, and the converted values
must lie in data.lst_range (default 150..400 K; data.to_kelvin). --nodata is the OUTPUT no-data value.
The guidance is one multi-band GeoTIFF whose GDAL band
descriptions name the bands, or several files (`--guidance a.tif b.tif`, `--guidance-dir DIR`),
a single-band file being named by its file stem (dem.tif -> dem). Bands are used in the order of
the config's data.guidance_bands; SISR models read none. NaN or the GDAL_NODATA value is no-data.
Grids must agree: guidance pixel = LST pixel / scale, same CRS (GeoKeys), same extent within
half an LST pixel, guidance shape = LST shape x scale.

Tiling. Tiles of `--lr-tile` x `--lr-tile` LR (input) pixels (default 512 // scale, the training crop:
512 output pixels) step by lr_tile - lr_overlap; the last tile of a row/column ends flush with the scene, so every tile is
full-size and scene borders see the same border as a whole-scene forward. A scene smaller than
one tile is edge-padded (replicate) to a full tile. Each HR pixel of a tile has the separable
weight w(y) w(x), where w is 1 inside the tile and falls linearly to `eps` (1e-6) at overlap/4
from the tile edge, staying eps in that outer band; the output is sum(w * pred) / sum(w). Two
neighbours thus hand over across the middle half of their overlap and the outermost overlap/4
LR pixels of every tile (where zero padding of the convolutions is felt) get weight ~0.
Receptive-field caveat: the blend equals a whole-scene forward (to ~eps) only for models whose
receptive field radius is <= overlap/4 LR pixels (bicubic: 2.5). CNNs reach further, and global
operations (channel attention's global mean, MoCoLSK's pyramid pooling, window attention) make a
tile's prediction depend on the whole tile: the residual difference is small but not zero (see
tests/test_predict.py for the bound measured on a 1504 x 1504 scene).

No-data. Invalid inputs become 0 after normalisation (the band mean for z-score; the Normalizer
does this), so the model always sees finite numbers. Output pixels whose LR support pixel or
any guidance band is invalid are written as NaN (or --nodata). A hole changes valid pixels only
within the model's receptive field of it (bicubic: 2 LR pixels); tiles with no valid LR pixel
are skipped.

Memory. Host: the output is written as it is made, in 256-row strips (geotiff.write_geotiff_rows):
tiles run in row-major order and only the strips a later tile still touches are kept, about
(tile*scale + 256) x W float32 (plus the PNG's 2000-px decimation with --png). The inputs are read
whole: the LST (1/scale^2 of the output) and the guidance, 4 * bands bytes per HR pixel (read_geotiff
decodes whole pages), which dominates for guided models. Device: one batch of tiles, batch * bands *
(tile*scale)^2 inputs plus the model's activations at that size, whatever the scene size. The output
is checked writable before any work and written atomically: a failure leaves nothing at --out.

Precision. --amp auto (default): bf16 autocast with model and inputs in channels_last on CUDA with
bf16 and on CPUs with AMX / AVX512-BF16, for models with weights; float32 elsewhere. The first tile
is also run in float32 (once per process) and auto falls back to float32 if the two differ by
>= 0.01 K RMSE. --amp none: float32; --amp bf16: bf16 whatever the device. Training is not affected.

Many scenes. --scenes LIST (lines `LST_PATH [GUIDANCE_PATH ...]`, relative to LIST, '#' comments,
shell quoting) or --scenes DIR (subfolders with lst.tif and guidance.tif, as landsat.py writes them)
write --out-dir/<scene>.tif, scene = LST file stem (its folder's name for lst.tif) or subfolder
name. The model is loaded once per process; under torchrun scene i runs on rank i % world. Each
scene prints a line (rank, scene, size, seconds, Mpx/s); a scene that fails prints `error: scene
NAME: ...` and the others go on; rank 0 prints the done/failed counts, and the exit code is 1 if
any failed.
"""
import argparse
import os
import sys
import time
import traceback

import numpy as np
import torch

import engine
import figures
import groklst
from data import guidance_names, hole_mask, read_lst_geotiff, read_scene_list
from errors import ConfigError, DataError, UserError, command
from geotiff import (
    TIFF_EXTENSIONS,
    check_grids,
    check_writable,
    geo_transform,
    geo_window,
    read_geotiff,
    read_header,
    write_geotiff_rows,
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


def read_scene_guidance(paths, bands, lst_path, lst_shape, lst_geo, scale):
    """Guidance bands `bands` (config order) from GeoTIFF files -> float32 (C, H, W), no-data NaN.
    Each band is looked up by name in every file (case-insensitive); every file used must be on the
    LST grid refined by `scale` (check_grids)."""
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
    out = None
    for path in dict.fromkeys(p for p, _ in where.values()):  # each file once, in first-use order
        array, info = read_geotiff(path)
        check_grids(lst_path, lst_shape, lst_geo, path, array.shape[1:], info["geo"], scale)
        if out is None:
            out = np.empty((len(bands),) + array.shape[1:], np.float32)
        for c, band in enumerate(bands):
            if where[band][0] == path:
                out[c] = array[where[band][1]]
        del array
    return out


# --------------------------------------------------------------------------- tiled inference


def tile_starts(n, tile, overlap):
    """Start offsets of `tile`-pixel tiles covering [0, n), stepping tile - overlap, the last one
    ending flush at n (so it may overlap more); [0] when n <= tile (that tile gets padded)."""
    if n <= tile:
        return [0]
    return list(range(0, n - tile, tile - overlap)) + [n - tile]


def taper(n, overlap, eps=1e-6):
    """1-D blending weight (n,) float32 of a tile n pixels long whose outer `overlap` pixels overlap
    its neighbours: eps within overlap/4 of an edge, rising linearly to 1 at overlap/2, 1 inside."""
    if overlap <= 0:
        return np.ones(n, np.float32)
    i = np.arange(n)
    d = np.minimum(i + 0.5, n - 0.5 - i)  # pixel centre to the nearest tile edge
    return np.clip((d - overlap / 4) / (overlap / 4), eps, 1.0).astype(np.float32)


def _window(a, r0, c0, size):
    """a[..., r0:r0+size, c0:c0+size], edge-padded to size x size where the scene is smaller."""
    w = a[..., r0:r0 + size, c0:c0 + size]
    pad = [(0, 0)] * (w.ndim - 2) + [(0, size - w.shape[-2]), (0, size - w.shape[-1])]
    return np.pad(w, pad, mode="edge") if any(p[1] for p in pad) else w


ROW_STRIP = 256  # output rows per emitted strip: the GeoTIFF tile height of write_geotiff_rows


class StripBlender:
    """The weighted sum of overlapping tile predictions over an (H, W) output, kept only for the strips
    of `strip` rows that a tile still to come may touch, and handed out normalised once none can.

    Each output pixel is sum(w * pred) / sum(w) over the tiles that cover it, with the separable tile
    weight w(y) w(x) (taper); sum(w) is then outer(row_sums, col_sums), so only sum(w * pred) is stored."""

    def __init__(self, shape, row_sums, col_sums, strip=ROW_STRIP):
        self.shape, self.row_sums, self.col_sums, self.strip = shape, row_sums, col_sums, strip
        self.sums = {}  # strip index -> (rows, W) float32 sum of w * pred
        self.emitted = 0  # strips handed out so far

    def add(self, y0, x0, weighted):
        """Add a tile's w * pred (th, tw) whose top-left output pixel is (y0, x0)."""
        H, W = self.shape
        th, tw = weighted.shape
        for k in range(y0 // self.strip, (y0 + th - 1) // self.strip + 1):  # the strips this tile overlaps
            top, bottom = k * self.strip, min((k + 1) * self.strip, H)
            acc = self.sums.setdefault(k, np.zeros((bottom - top, W), np.float32))
            a, b = max(top, y0), min(bottom, y0 + th)
            acc[a - top:b - top, x0:x0 + tw] += weighted[a - y0:b - y0]

    def finished(self, upto):
        """Yield (y0, y1, blended rows) for every strip lying wholly above output row `upto`: tiles still to
        come start at or below it (tiles run in row-major order), so nothing can be added to those strips."""
        H, W = self.shape
        while self.emitted * self.strip < H and min((self.emitted + 1) * self.strip, H) <= upto:
            y0, y1 = self.emitted * self.strip, min((self.emitted + 1) * self.strip, H)
            acc = self.sums.pop(self.emitted, None)
            acc = np.zeros((y1 - y0, W), np.float32) if acc is None else acc  # no tile here: all no-data
            self.emitted += 1
            yield y0, y1, acc / np.outer(self.row_sums[y0:y1], self.col_sums)


@torch.no_grad()
def predict_rows(model, normalizer, lst, guidance=None, scale=8, lr_tile=64, lr_overlap=16, batch=4,
                 device="cpu", amp="none", progress=False, strip=ROW_STRIP):
    """Tiled, blended downscaling of a whole scene, yielded as finished output row strips.

    lst (h, w) float32 Kelvin; guidance (C, h*scale, w*scale) physical units or None (SISR); NaN =
    no data in both. lr_tile, lr_overlap: tile side and overlap in LR pixels. amp: see resolve_amp ('auto' and 'bf16' put the
    model in channels_last). Yields (strip, w*scale) float32 Kelvin arrays top to bottom (the last
    may be shorter), NaN where data.hole_mask says (the LR support pixel or any guidance band is
    invalid). Tiles run in row-major order and StripBlender keeps only the strips a tile still to come
    touches, so host memory is about one row of tiles (tile*scale + strip rows x w*scale float32),
    and device memory one batch of tiles.
    """
    h, w = lst.shape
    tile, overlap = lr_tile, lr_overlap
    s, hr_tile = scale, tile * scale
    H, W = h * s, w * s
    multiple = getattr(model, "lr_multiple", 1)
    if not (tile >= 1 and 0 <= overlap < tile and tile % multiple == 0 and batch >= 1 and strip % s == 0):
        raise ConfigError(f"tile={tile}, overlap={overlap}, batch={batch} (LR pixels): need 0 <= overlap < tile, "
                          f"tile a multiple of {multiple}, batch >= 1")
    verify = amp == "auto"  # auto's bf16 is checked against float32 once per model (bf16_check)
    amp, channels_last = resolve_amp(amp, device, model)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wt = taper(hr_tile, overlap * s)
    row_sums, col_sums = np.zeros(H, np.float32), np.zeros(W, np.float32)  # sum of the tiles' weights per row / column
    for r in rows:
        row_sums[r * s:(r + tile) * s] += wt[:min(tile, h - r) * s]
    for c in cols:
        col_sums[c * s:(c + tile) * s] += wt[:min(tile, w - c) * s]
    blender = StripBlender((H, W), row_sums, col_sums, strip)
    w2d = np.outer(wt, wt)
    valid_lr = np.isfinite(lst)
    tiles = [(r, c) for r in rows for c in cols if valid_lr[r:r + tile, c:c + tile].any()]  # all-NaN tiles: skipped
    model.eval()
    start, total = time.time(), len(rows) * len(cols)

    def masked(upto):  # the finished strips, no-data pixels set to NaN
        for y0, y1, rows_out in blender.finished(upto):
            holes = hole_mask(lst[y0 // s:y1 // s], s, None if guidance is None else guidance[:, y0:y1])
            if progress and y1 == H:  # before the last strip: its consumer need not ask for more
                seconds = time.time() - start
                print(f"\r  tiles {total}/{total}  {H * W / 1e6:.1f} Mpx in {seconds:.1f} s "
                      f"({H * W / 1e6 / max(seconds, 1e-9):.3g} Mpx/s)", file=sys.stderr, flush=True)
            yield np.where(holes, np.float32(np.nan), rows_out)

    for b in range(0, len(tiles), batch):
        chunk = tiles[b:b + batch]
        x = torch.from_numpy(np.stack([_window(lst, r, c, tile) for r, c in chunk]))[:, None].to(device)
        g = None
        if guidance is not None:
            g = torch.from_numpy(np.stack([_window(guidance, r * s, c * s, hr_tile) for r, c in chunk])).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            g = None if g is None else g.contiguous(memory_format=torch.channels_last)
        if verify and amp == "bf16":
            amp = bf16_check(model, normalizer, x, g)
        pred = engine.downscale(model, normalizer, x, g, amp)[:, 0].float().cpu().numpy()
        for (r, c), p in zip(chunk, pred):
            th, tw = min(tile, h - r) * s, min(tile, w - c) * s  # a padded tile (scene smaller than it) is cut back
            blender.add(r * s, c * s, w2d[:th, :tw] * p[:th, :tw])
        if progress:
            done = b + len(chunk) + total - len(tiles)  # skipped (all no-data) tiles count as done
            rate = done / total * H * W / max(time.time() - start, 1e-9)
            print(f"\r  tiles {done}/{total}  {rate / 1e6:.3g} Mpx/s", end="", file=sys.stderr, flush=True)
        more = b + batch < len(tiles)
        yield from masked(tiles[b + batch][0] * s if more else H)
    yield from masked(H)  # a scene without any valid LR pixel


def predict_array(model, normalizer, lst, guidance=None, scale=8, lr_tile=64, lr_overlap=16, batch=4,
                  device="cpu", amp="none", progress=False):
    """predict_rows assembled in memory: (h*scale, w*scale) float32 Kelvin (for small scenes and tests)."""
    strips = list(predict_rows(model, normalizer, lst, guidance, scale, lr_tile, lr_overlap, batch, device, amp, progress))
    return np.concatenate(strips) if strips else np.zeros((0, lst.shape[1] * scale), np.float32)


# --------------------------------------------------------------------------- precision


def cpu_has_bf16():
    """True when this CPU computes bf16 natively (AMX or AVX512-BF16; oneDNN's own check where torch has it)."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


BF16_MAX_RMSE_K = 0.01  # auto keeps bf16 only while it stays this close to float32


def bf16_check(model, normalizer, x, g):
    """'bf16' or 'none' for `model`: the first tile it sees is run both ways, once per model (the
    verdict is kept as model.bf16_rmse_k); bf16 is kept when the RMSE between the two is below
    BF16_MAX_RMSE_K. Most models are ~1e-3 K apart, but not all (tests/test_predict.py)."""
    if not hasattr(model, "bf16_rmse_k"):  # on one tile: the float32 forward costs ~2.5 bf16 ones
        x, g = x[:1], None if g is None else g[:1]
        a = engine.downscale(model, normalizer, x, g, "bf16").float()
        b = engine.downscale(model, normalizer, x, g, "none").float()
        model.bf16_rmse_k = float(torch.sqrt(torch.mean((a - b) ** 2)))
        if model.bf16_rmse_k >= BF16_MAX_RMSE_K:
            print(f"note: --amp auto: bf16 differs from float32 by {model.bf16_rmse_k:.3f} K RMSE on the first tiles "
                  f"(> {BF16_MAX_RMSE_K} K); running in float32", file=sys.stderr)
    return "bf16" if model.bf16_rmse_k < BF16_MAX_RMSE_K else "none"


def resolve_amp(amp, device, model=None):
    """--amp -> (autocast dtype name for engine.downscale, channels_last). 'none': float32. 'bf16':
    bf16 autocast with model and inputs in channels_last. 'auto': bf16 where the device computes it
    natively (CUDA with bf16, a CPU with AMX / AVX512-BF16) and the model has weights (parameter-free
    interpolation gains nothing), float32 elsewhere. Puts the model in channels_last when used."""
    if amp not in ("none", "auto", "bf16"):
        raise ConfigError(f"amp={amp!r}: expected none, auto or bf16")
    device = torch.device(device)
    if amp == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu_has_bf16()
        weights = model is None or any(True for _ in model.parameters())
        amp = "bf16" if native and weights else "none"
    if amp == "none":
        return "none", False
    if model is not None:
        model.to(memory_format=torch.channels_last)
    return "bf16", True


# --------------------------------------------------------------------------- entry point


_LOADED = {}  # (config, overrides, checkpoint, device) -> model: loaded once per process for many scenes


def load_model_once(config, overrides, cfg, checkpoint, device):
    """groklst.load_model, cached for the scenes of one process (one model at a time)."""
    key = (os.path.abspath(config), tuple(overrides), checkpoint and os.path.abspath(checkpoint), str(device))
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = groklst.load_model(cfg, checkpoint, device)
    return _LOADED[key]


def predict(config, lst, out, guidance=(), guidance_dir=None, checkpoint=None, overrides=(), lr_tile=None,
            lr_overlap=None, batch=4, device=None, amp="auto", nodata=None, png=False, progress=True,
            lst_scale=None, lst_offset=None, nodata_in=None, consistency=None):
    """Downscale the GeoTIFF scene `lst` with the model of `config` and write `out`, strip by strip.

    out: float32 Kelvin GeoTIFF, zlib, 256 x 256 tiles, pixel size / scale, same corner, CRS copied,
    GDAL_NODATA = nodata (default NaN); written atomically (nothing is left at `out` on failure).
    lr_tile / lr_overlap in LR pixels (default 512 // scale and lr_tile // 4). amp: see resolve_amp.
    lst_scale, lst_offset, nodata_in: how the LST is stored (override data.lst_scale / data.lst_offset /
    data.nodata; nodata_in is the input fill value, nodata the output's). png: also write
    <out stem>.png (needs matplotlib). consistency: engine.make_consistent's mode (default: the
    config's `consistency`), applied to the blended scene (consistent_rows).
    Returns {'out', 'shape': (H, W), 'seconds', 'mpx_per_s'}.
    """
    t0 = time.time()
    cfg = groklst.load_config(config, overrides)
    scale, bands = cfg["data"]["scale"], groklst.guidance_bands(cfg)
    if png:
        figures.require_matplotlib("--png")  # fail before the long part
    check_writable(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolve_amp(amp, device)  # a bad value fails here, before reading
    if amp == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("note: --amp bf16: this CPU has no native bf16 (AMX / AVX512-BF16); bf16 is emulated and slow",
              file=sys.stderr)
    units = groklst.lst_units(cfg)
    for key, value in (("scale", lst_scale), ("offset", lst_offset), ("nodata", nodata_in)):
        if value is not None:
            units[key] = value
    array, info = read_lst_geotiff(lst, units)
    paths = guidance_paths(guidance, guidance_dir)
    gui = None
    if bands:
        if not paths:
            raise DataError(f"model {cfg['model']['name']!r} is guided: give --guidance (bands {bands})")
        gui = read_scene_guidance(paths, bands, lst, array.shape, info["geo"], scale)
    elif paths:
        print(f"note: model {cfg['model']['name']!r} is single-image; guidance ignored", file=sys.stderr)
    model = load_model_once(config, overrides, cfg, checkpoint, device)
    if hasattr(model, "fit_scene"):  # statistical sharpeners: one fit on the whole scene, applied to every tile
        model.fit_scene(array, gui)
    normalizer = groklst.build_normalizer(cfg)
    tile = lr_tile or max(1, 512 // scale)
    overlap = tile // 4 if lr_overlap is None else lr_overlap
    shape = (array.shape[0] * scale, array.shape[1] * scale)
    if progress:
        print(f"{cfg['model']['name']} x{scale}: {array.shape[1]} x {array.shape[0]} -> {shape[1]} x {shape[0]} px, "
              f"tile {tile} overlap {overlap} (LR px), batch {batch}, {device}, amp {resolve_amp(amp, device, model)[0]}",
              file=sys.stderr)
    geo = None
    if geo_transform(info["geo"]) is not None:
        geo = geo_window(info["geo"], 0, 0, scale)
    else:
        print(f"warning: {lst}: no georeferencing (ModelPixelScale + ModelTiepoint or ModelTransformation); "
              f"{out} will have none", file=sys.stderr)
    rows = predict_rows(model, normalizer, array, gui, scale, tile, overlap, batch, device, amp, progress)
    rows = consistent_rows(rows, array, scale, consistency or cfg["consistency"])
    step = max(1, -(-max(shape) // 2000))  # the PNG's decimation (figures.write_png): kept as the rows pass
    look = []
    if png:
        rows = _keep_decimated(rows, step, look)
    write_geotiff_rows(out, shape, rows, geo, nodata=float("nan") if nodata is None else float(nodata), tile=ROW_STRIP)
    if png:
        figures.write_png(os.path.splitext(out)[0] + ".png", np.concatenate(look),
                          f"{os.path.basename(out)}: {cfg['model']['name']} x{scale}")
    seconds = time.time() - t0
    return {"out": out, "shape": shape, "seconds": seconds, "mpx_per_s": shape[0] * shape[1] / 1e6 / max(seconds, 1e-9)}


def consistent_rows(strips, lr_lst, scale, mode, halo=3):
    """engine.make_consistent on a stream of output row strips (each a multiple of `scale` rows, as
    predict_rows yields them), equal to applying it to the whole blended scene: each strip is
    corrected inside a window with `halo` coarse rows of the neighbouring strips' (uncorrected)
    prediction above and below, which covers the bicubic residual's 4-tap support; the nearest
    pass is per block. Host memory: two strips. lr_lst (h, w) K."""
    if mode == "none":
        yield from strips
        return
    margin, top = halo * scale, 0  # top: the first output row of `current`
    tail = None  # the last `margin` rows of the previous strip, uncorrected
    strips = iter(strips)
    current = next(strips, None)
    while current is not None:
        following = next(strips, None)
        parts = ([] if tail is None else [tail]) + [current] + ([] if following is None else [following[:margin]])
        window, start = np.concatenate(parts), top - (0 if tail is None else len(tail))
        lr = lr_lst[start // scale:(start + len(window)) // scale]
        fixed = engine.make_consistent(torch.from_numpy(window)[None, None], torch.from_numpy(lr)[None, None], mode)
        offset = top - start
        yield fixed[0, 0, offset:offset + len(current)].numpy()
        tail, top, current = current[-margin:], top + len(current), following


def _keep_decimated(strips, step, look):
    """Pass the row strips through, appending every `step`-th row and column of them to `look`."""
    y = 0
    for rows in strips:
        look.append(rows[(-y) % step::step, ::step])
        y += rows.shape[0]
        yield rows


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
    quietly). kwargs: as predict. Returns [(scene, 'done' | 'failed')] of all ranks."""
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
            try:
                r = predict(config, lst, os.path.join(out_dir, name + ".tif"), guidance=gui, device=device,
                            progress=False, **kwargs)
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
    if rank == 0:
        print(f"scenes: {len(everything) - len(failed)} done, {len(failed)} failed, {world} process(es)", flush=True)
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
    p.add_argument("--checkpoint", default=None, help="weights (not needed for bicubic / bilinear)")
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
    p.add_argument("--consistency", nargs="?", const="bicubic", default=None, choices=engine.CONSISTENCY_MODES,
                   help="block mean of the output = LR input (engine.make_consistent); alone: bicubic; "
                        "default: the config's consistency (none)")
    args = p.parse_intermixed_args(argv)
    if args.old_tile is not None:  # prepare.py's --tile is in HR pixels: predict's LR sizes say so in their names
        raise ConfigError("predict.py: --tile / --overlap are now --lr-tile / --lr-overlap (LR, i.e. input, pixels)")
    if args.threads:
        torch.set_num_threads(args.threads)
    common = dict(checkpoint=args.checkpoint, overrides=args.overrides, lr_tile=args.lr_tile, lr_overlap=args.lr_overlap,
                  batch=args.batch, amp=args.amp, nodata=args.nodata, png=args.png, lst_scale=args.lst_scale,
                  lst_offset=args.lst_offset, nodata_in=args.nodata_in,
                  consistency=args.consistency)
    if args.scenes:
        if args.lst or args.out or args.guidance or args.guidance_dir or not args.out_dir:
            raise ConfigError("--scenes takes --out-dir DIR and no --lst / --out / --guidance / --guidance-dir "
                              "(each scene line names its files)")
        predict_scenes(args.config, read_scenes(args.scenes), args.out_dir, device=args.device, **common)
        return
    if not (args.lst and args.out) or args.out_dir:
        raise ConfigError("give --lst LST.tif and --out OUT.tif (one scene), or --scenes LIST --out-dir DIR (many)")
    predict(args.config, args.lst, args.out, guidance=args.guidance, guidance_dir=args.guidance_dir,
            device=args.device, **common)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
