"""Scene-scale prediction: downscale a whole georeferenced LST scene of any size, tile by tile.

    python predict.py configs/mocolsk_x8.yaml --checkpoint best.pth \
        --lst lst_240m.tif --guidance bands_30m.tif --out lst_30m.tif [--png]
    python predict.py configs/mocolsk_x8.yaml --checkpoint best.pth \
        --lst lst_240m.tif --guidance dem.tif red.tif nir.tif ... --out lst_30m.tif
    python predict.py configs/bicubic_x8.yaml --lst lst_240m.tif --out lst_30m.tif

(`python groklst.py predict ...` is the same command.)

Inputs. The LST is one band in Kelvin; the guidance is one multi-band GeoTIFF whose GDAL band
descriptions name the bands, or several files (`--guidance a.tif b.tif`, `--guidance-dir DIR`),
a single-band file being named by its file stem (dem.tif -> dem). Bands are used in the order of
the config's data.guidance_bands; SISR models read none. NaN or the GDAL_NODATA value is no-data.
Grids must agree: guidance pixel = LST pixel / scale, same CRS (GeoKeys), same extent within
half an LST pixel, guidance shape = LST shape x scale.

Tiling. Tiles of `tile` x `tile` LR pixels (default 512 // scale, the training crop) step by
tile - overlap; the last tile of a row/column ends flush with the scene, so every tile is
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

Memory. Host: the guidance and one float32 output scene, about 4 * (bands + 1) bytes per HR
pixel (tifffile reads whole pages). Device: one batch of tiles, batch * bands * (tile*scale)^2
inputs plus the model's activations at that size, whatever the scene size.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

import figures
import groklst
from data import guidance_names, read_lst_geotiff
from errors import ConfigError, DataError, command
from geotiff import TIFF_EXTENSIONS, check_grids, geo_transform, geo_window, read_geotiff, read_header, write_geotiff

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


def read_guidance(paths, bands, lst_path, lst_shape, lst_geo, scale):
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


@torch.no_grad()
def predict_array(model, normalizer, lst, guidance=None, scale=8, tile=64, overlap=16, batch=4,
                  device="cpu", amp="none", progress=False):
    """Tiled, blended downscaling of a whole scene held in memory.

    lst (h, w) float32 Kelvin; guidance (C, h*scale, w*scale) physical units or None (SISR); NaN =
    no data in both. tile, overlap: LR pixels. Returns (h*scale, w*scale) float32 Kelvin with NaN
    where the LR support pixel or any guidance band is invalid. Device memory is one batch of
    tiles; the output is accumulated on the host.
    """
    h, w = lst.shape
    s, hr_tile = scale, tile * scale
    multiple = getattr(model, "lr_multiple", 1)
    if not (tile >= 1 and 0 <= overlap < tile and tile % multiple == 0 and batch >= 1):
        raise ConfigError(f"tile={tile}, overlap={overlap}, batch={batch}: need 0 <= overlap < tile, "
                         f"tile a multiple of {multiple}, batch >= 1")
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wt = taper(hr_tile, overlap * s)
    wsum_y, wsum_x = np.zeros(h * s, np.float32), np.zeros(w * s, np.float32)
    for r in rows:
        wsum_y[r * s:(r + tile) * s] += wt[:min(tile, h - r) * s]
    for c in cols:
        wsum_x[c * s:(c + tile) * s] += wt[:min(tile, w - c) * s]
    w2d = np.outer(wt, wt)
    out = np.zeros((h * s, w * s), np.float32)  # sum of w * pred; sum of w is outer(wsum_y, wsum_x)
    valid_lr = np.isfinite(lst)
    tiles = [(r, c) for r in rows for c in cols if valid_lr[r:r + tile, c:c + tile].any()]
    model.eval()
    start, total = time.time(), len(rows) * len(cols)
    for b in range(0, len(tiles), batch):
        chunk = tiles[b:b + batch]
        x = torch.from_numpy(np.stack([_window(lst, r, c, tile) for r, c in chunk]))[:, None].to(device)
        g = None
        if guidance is not None:
            g = torch.from_numpy(np.stack([_window(guidance, r * s, c * s, hr_tile) for r, c in chunk])).to(device)
        pred = groklst.downscale(model, normalizer, x, g, amp)[:, 0].float().cpu().numpy()
        for (r, c), p in zip(chunk, pred):
            th, tw = min(tile, h - r) * s, min(tile, w - c) * s
            out[r * s:r * s + th, c * s:c * s + tw] += (w2d[:th, :tw] * p[:th, :tw])
        if progress:
            done = b + len(chunk) + total - len(tiles)  # skipped (all no-data) tiles count as done
            rate = done / total * h * w * s * s / max(time.time() - start, 1e-9)
            print(f"\r  tiles {done}/{total}  {rate / 1e6:.2f} Mpx/s", end="", file=sys.stderr, flush=True)
    if progress:
        seconds = time.time() - start
        print(f"\r  tiles {total}/{total}  {h * w * s * s / 1e6:.1f} Mpx in {seconds:.1f} s "
              f"({h * w * s * s / 1e6 / max(seconds, 1e-9):.2f} Mpx/s)", file=sys.stderr, flush=True)
    step = s * max(1, 1024 // s)
    for y in range(0, h * s, step):  # normalise and mask in row bands (no full-size temporaries)
        band = slice(y, min(y + step, h * s))
        denom = np.outer(wsum_y[band], wsum_x)
        invalid = np.repeat(np.repeat(~valid_lr[y // s:band.stop // s], s, 0), s, 1)
        if guidance is not None:
            invalid |= np.isnan(guidance[:, band]).any(0)
        out[band] = np.where(invalid, np.float32(np.nan), out[band] / denom)
    return out


# --------------------------------------------------------------------------- entry point


def predict(config, lst, out, guidance=(), guidance_dir=None, checkpoint=None, overrides=(), tile=None,
            overlap=None, batch=4, device=None, amp="none", nodata=None, png=False, progress=True, consistency=None):
    """Downscale the GeoTIFF scene `lst` with the model of `config` and write `out`.

    out: float32 Kelvin GeoTIFF, zlib, 256 x 256 tiles, pixel size / scale, same corner, CRS copied,
    GDAL_NODATA = nodata (default NaN). tile / overlap in LR pixels (default 512 // scale and
    tile // 4). amp 'bf16' autocasts on CUDA only. png: also write <out stem>.png (needs
    matplotlib). consistency: groklst.make_consistent's mode (default: the config's `consistency`),
    applied once to the blended scene. Returns the (H, W) prediction.
    """
    cfg = groklst.load_config(config, overrides)
    scale, bands = cfg["data"]["scale"], groklst.guidance_bands(cfg)
    if png:
        figures.require_matplotlib("--png")  # fail before the long part
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if amp not in ("none", "bf16"):
        raise ConfigError(f"amp={amp!r}: expected none or bf16")
    if amp == "bf16" and device.type != "cuda":
        print("note: --amp bf16 is used on CUDA only; running in float32", file=sys.stderr)
        amp = "none"
    array, info = read_lst_geotiff(lst, groklst.lst_units(cfg))
    paths = guidance_paths(guidance, guidance_dir)
    gui = None
    if bands:
        if not paths:
            raise DataError(f"model {cfg['model']['name']!r} is guided: give --guidance (bands {bands})")
        gui = read_guidance(paths, bands, lst, array.shape, info["geo"], scale)
    elif paths:
        print(f"note: model {cfg['model']['name']!r} is single-image; guidance ignored", file=sys.stderr)
    model = groklst.load_model(cfg, checkpoint, device)
    if hasattr(model, "fit_scene"):  # statistical sharpeners: one fit on the whole scene, applied to every tile
        model.fit_scene(array, gui)
    normalizer = groklst.build_normalizer(cfg)
    tile = tile or max(1, 512 // scale)
    overlap = tile // 4 if overlap is None else overlap
    if progress:
        print(f"{cfg['model']['name']} x{scale}: {array.shape[1]} x {array.shape[0]} -> "
              f"{array.shape[1] * scale} x {array.shape[0] * scale} px, tile {tile} overlap {overlap} (LR px), "
              f"batch {batch}, {device}", file=sys.stderr)
    pred = predict_array(model, normalizer, array, gui, scale, tile, overlap, batch, device, amp, progress)
    # after blending: per-tile corrections would not stay exact where overlapping tiles are blended
    pred = groklst.make_consistent(torch.from_numpy(pred)[None, None], torch.from_numpy(array)[None, None],
                                   consistency or cfg["consistency"])[0, 0].numpy()
    del gui
    geo = None
    if geo_transform(info["geo"]) is not None:
        geo = geo_window(info["geo"], 0, 0, scale)
    else:
        print(f"warning: {lst}: no georeferencing (ModelPixelScale + ModelTiepoint or ModelTransformation); "
              f"{out} will have none", file=sys.stderr)
    write_geotiff(out, pred, geo, nodata=float("nan") if nodata is None else float(nodata), tile=(256, 256))
    if png:
        figures.write_png(os.path.splitext(out)[0] + ".png", pred, f"{os.path.basename(out)}: {cfg['model']['name']} x{scale}")
    return pred


@command
def main(argv=None):
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.add_argument("--lst", required=True, help="LR LST GeoTIFF, Kelvin")
    p.add_argument("--guidance", nargs="+", default=[], help="one multi-band GeoTIFF, or one file per band (dem.tif)")
    p.add_argument("--guidance-dir", default=None, help="folder of guidance GeoTIFFs (bands by name or file stem)")
    p.add_argument("--out", required=True, help="output GeoTIFF (float32 Kelvin)")
    p.add_argument("--checkpoint", default=None, help="weights (not needed for bicubic / bilinear)")
    p.add_argument("--tile", type=int, default=None, help="tile side in LR pixels (default 512 // scale)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in LR pixels (default tile // 4)")
    p.add_argument("--batch", type=int, default=4, help="tiles per forward")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16"], help="bf16 autocast (CUDA only)")
    p.add_argument("--nodata", type=float, default=None, help="output no-data value (default NaN)")
    p.add_argument("--png", action="store_true", help="also write <out>.png with a colour bar (needs matplotlib)")
    p.add_argument("--consistency", nargs="?", const="bicubic", default=None, choices=groklst.CONSISTENCY_MODES,
                   help="block mean of the output = LR input (groklst.make_consistent); alone: bicubic; "
                        "default: the config's consistency (none)")
    args = p.parse_intermixed_args(argv)
    predict(args.config, args.lst, args.out, guidance=args.guidance, guidance_dir=args.guidance_dir,
            checkpoint=args.checkpoint, overrides=args.overrides, tile=args.tile, overlap=args.overlap,
            batch=args.batch, device=args.device, amp=args.amp, nodata=args.nodata, png=args.png,
            consistency=args.consistency)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
