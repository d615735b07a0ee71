"""Scene-scale prediction: downscale a whole georeferenced LST scene of any size, tile by tile.

    python groklst.py predict configs/mocolsk_x8.yaml --checkpoint best.pth \
        --lst lst_240m.tif --guidance bands_30m.tif --out lst_30m.tif [--png]
    python groklst.py predict configs/mocolsk_x8.yaml --checkpoint best.pth \
        --lst lst_240m.tif --guidance dem.tif red.tif nir.tif ... --out lst_30m.tif
    python groklst.py predict configs/bicubic_x8.yaml --lst lst_240m.tif --out lst_30m.tif

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
import importlib.util
import math
import os
import sys
import time

import numpy as np
import torch

import groklst
from data import (DataError, BANDS, TAG_GDAL_METADATA, TAG_GEOKEYS, TAG_GEO_ASCII, TAG_GEO_DOUBLES,
                  TAG_TIEPOINT, TAG_TRANSFORM, _band_names, geo_transform, geo_window, read_geotiff, write_geotiff)

GEOKEY_MODEL_TYPE, GEOKEY_RASTER_TYPE, GEOKEY_GEOGRAPHIC, GEOKEY_PROJECTED = 1024, 1025, 2048, 3072
CITATION_KEYS = (1026, 2049, 3073)  # free-text names, not compared
USER_DEFINED = 32767
TIFF_EXTENSIONS = (".tif", ".tiff")


# --------------------------------------------------------------------------- grids


def geokeys(geo):
    """GeoKeyDirectory as {key id: value} (ints, tuples of doubles, or ASCII strings)."""
    if TAG_GEOKEYS not in geo:
        return {}
    d = list(geo[TAG_GEOKEYS][2])
    doubles = tuple(geo[TAG_GEO_DOUBLES][2]) if TAG_GEO_DOUBLES in geo else ()
    ascii_ = geo[TAG_GEO_ASCII][2] if TAG_GEO_ASCII in geo else ""
    keys = {}
    for n in range(d[3]):
        key, loc, count, value = d[4 + 4 * n:8 + 4 * n]
        if loc == TAG_GEO_DOUBLES:
            keys[key] = doubles[value:value + count]
        elif loc == TAG_GEO_ASCII:
            keys[key] = ascii_[value:value + count].rstrip("|\x00")
        else:
            keys[key] = value
    return keys


def crs_of(geo):
    """What identifies the CRS: (model type, geographic, projected) EPSG codes; all non-citation
    keys when the CRS is user-defined (32767). None without GeoKeys."""
    keys = geokeys(geo)
    if not keys:
        return None
    crs = tuple(keys.get(k) for k in (GEOKEY_MODEL_TYPE, GEOKEY_GEOGRAPHIC, GEOKEY_PROJECTED))
    if USER_DEFINED in crs:
        crs = tuple(sorted((k, v) for k, v in keys.items() if k not in CITATION_KEYS + (GEOKEY_RASTER_TYPE,)))
    return crs


def corner_transform(geo):
    """Affine (x0, dx, rx, y0, ry, dy) of pixel corners (as data.geo_transform), also for PixelIsPoint
    rasters, whose tiepoint / transform refers to the centre of pixel (0, 0). None without geo."""
    t = geo_transform(geo) if geo else None
    if t is not None and geokeys(geo).get(GEOKEY_RASTER_TYPE) == 2:
        x0, dx, rx, y0, ry, dy = t
        t = (x0 - 0.5 * (dx + rx), dx, rx, y0 - 0.5 * (ry + dy), ry, dy)
    return t


def describe_grid(path, shape, geo):
    """One line: size, pixel size, corner, extent and CRS of a raster."""
    h, w = shape
    t = corner_transform(geo)
    if t is None:
        return f"{path}: {w} x {h} px, not georeferenced"
    x0, dx, rx, y0, ry, dy = t
    xs = [x0, x0 + w * dx, x0 + h * rx, x0 + w * dx + h * rx]
    ys = [y0, y0 + w * ry, y0 + h * dy, y0 + w * ry + h * dy]
    crs = crs_of(geo)
    crs = ("EPSG:" + str(crs[2] or crs[1])) if crs and len(crs) == 3 and (crs[1] or crs[2]) else crs
    return (f"{path}: {w} x {h} px of {math.hypot(dx, ry):g} x {math.hypot(rx, dy):g}, corner ({x0:.3f}, {y0:.3f}), "
            f"x {min(xs):.3f}..{max(xs):.3f}, y {min(ys):.3f}..{max(ys):.3f}, CRS {crs}")


def check_grids(lst_path, lst_shape, lst_geo, gui_path, gui_shape, gui_geo, scale):
    """DataError stating both grids unless the guidance grid is the LST grid refined by `scale`:
    pixel size / scale, same CRS, same extent within half an LST pixel, shape x scale.
    Without georeferencing on either side only the shapes are checked (warning on stderr)."""
    def fail(reason):
        raise DataError(f"grids disagree: {reason} (scale {scale})\n  LST:      "
                        f"{describe_grid(lst_path, lst_shape, lst_geo)}\n  guidance: "
                        f"{describe_grid(gui_path, gui_shape, gui_geo)}")

    lt, gt = corner_transform(lst_geo), corner_transform(gui_geo)
    if lt is None or gt is None:
        which = " and ".join(p for p, t in ((lst_path, lt), (gui_path, gt)) if t is None)
        print(f"warning: {which}: no georeferencing; grids checked by shape only", file=sys.stderr)
    else:
        X0, DX, RX, Y0, RY, DY = lt
        x0, dx, rx, y0, ry, dy = gt
        tol = 1e-4 * math.hypot(DX, RX, RY, DY)
        if any(abs(a / scale - b) > tol for a, b in ((DX, dx), (RX, rx), (RY, ry), (DY, dy))):
            fail("guidance pixel size is not the LST pixel size / scale")
        if crs_of(lst_geo) != crs_of(gui_geo):
            fail(f"different CRS (GeoKeys {crs_of(lst_geo)} vs {crs_of(gui_geo)})")
        (h, w), (gh, gw) = lst_shape, gui_shape
        tol_x, tol_y = 0.5 * (abs(DX) + abs(RX)), 0.5 * (abs(RY) + abs(DY))
        for (c, r), (gc, gr) in (((0, 0), (0, 0)), ((w, h), (gw, gh))):  # first and last corner
            if (abs(X0 + c * DX + r * RX - (x0 + gc * dx + gr * rx)) > tol_x
                    or abs(Y0 + c * RY + r * DY - (y0 + gc * ry + gr * dy)) > tol_y):
                fail("extents differ by more than half an LST pixel")
    if tuple(gui_shape) != (lst_shape[0] * scale, lst_shape[1] * scale):
        fail(f"guidance shape {tuple(gui_shape)} is not LST shape x scale "
             f"{(lst_shape[0] * scale, lst_shape[1] * scale)}")


def output_geo(geo, scale):
    """Georeferencing of the downscaled output: pixel size / scale, same corner (data.geo_window);
    CRS keys, GeoDoubleParams and GeoAsciiParams copied. PixelIsPoint rasters keep their
    convention: the origin moves from the LR to the HR centre of pixel (0, 0)."""
    out = geo_window(geo, 0, 0, scale)
    if geo_transform(geo) is not None and geokeys(geo).get(GEOKEY_RASTER_TYPE) == 2:
        _, dx, rx, _, ry, dy = geo_transform(geo)
        sx, sy = 0.5 * (1 / scale - 1) * (dx + rx), 0.5 * (1 / scale - 1) * (ry + dy)
        code = TAG_TRANSFORM if TAG_TRANSFORM in out else TAG_TIEPOINT
        v = list(out[code][2])
        i, j = (3, 7) if code == TAG_TRANSFORM else (3, 4)
        v[i], v[j] = v[i] + sx, v[j] + sy
        out[code] = ("d", len(v), tuple(v))
    return out


# --------------------------------------------------------------------------- reading


def _peek_bands(path):
    """Band names of a GeoTIFF without reading its pixels: GDAL descriptions, or for a single-band
    file its stem (and description), or the GrokLST BANDS for an unnamed 10-band file."""
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            count = page.samplesperpixel
            meta = page.tags[TAG_GDAL_METADATA].value if TAG_GDAL_METADATA in page.tags else None
    except (OSError, ValueError, tifffile.TiffFileError) as e:
        raise DataError(f"{path}: unreadable GeoTIFF ({e})") from e
    names = _band_names(meta, count)
    stem = os.path.splitext(os.path.basename(path))[0]
    if count == 1:
        return [{stem.lower()} | ({names[0].lower()} if names and names[0] else set())]
    if names is None and count == len(BANDS):
        names = list(BANDS)
    if names is None:
        raise DataError(f"{path}: {count} unnamed bands; name them (GDAL band descriptions), pass one "
                        f"file per band named by band, or use the {len(BANDS)} GrokLST bands {list(BANDS)}")
    return [{n.lower()} for n in names]


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
        raise ValueError(f"tile={tile}, overlap={overlap}, batch={batch}: need 0 <= overlap < tile, "
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


def write_png(path, array, title=""):
    """Quick-look PNG of a Kelvin array (2-98 % stretch, colour bar; NaN transparent)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise DataError("--png needs matplotlib: pip install matplotlib")
    from matplotlib.figure import Figure
    step = max(1, -(-max(array.shape) // 2000))  # at most ~2000 px a side
    a = array[::step, ::step]
    finite = a[np.isfinite(a)]
    vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    fig = Figure(figsize=(8, 8 * a.shape[0] / a.shape[1] + 0.6))
    ax = fig.add_subplot()
    im = ax.imshow(a, cmap="inferno", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="LST (K)", shrink=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def predict(config, lst, out, guidance=(), guidance_dir=None, checkpoint=None, overrides=(), tile=None,
            overlap=None, batch=4, device=None, amp="none", nodata=None, png=False, progress=True):
    """Downscale the GeoTIFF scene `lst` with the model of `config` and write `out`.

    out: float32 Kelvin GeoTIFF, zlib, 256 x 256 tiles, pixel size / scale, same corner, CRS copied,
    GDAL_NODATA = nodata (default NaN). tile / overlap in LR pixels (default 512 // scale and
    tile // 4). amp 'bf16' autocasts on CUDA only. png: also write <out stem>.png (needs
    matplotlib). Returns the (H, W) prediction.
    """
    cfg = groklst.load_config(config, overrides)
    scale, bands = cfg["data"]["scale"], groklst.guidance_bands(cfg)
    if png and importlib.util.find_spec("matplotlib") is None:  # fail before the long part
        raise DataError("--png needs matplotlib: pip install matplotlib")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if amp not in ("none", "bf16"):
        raise ValueError(f"amp={amp!r}: expected none or bf16")
    if amp == "bf16" and device.type != "cuda":
        print("note: --amp bf16 is used on CUDA only; running in float32", file=sys.stderr)
        amp = "none"
    array, info = read_geotiff(lst)
    if len(array) != 1:
        raise DataError(f"{lst}: LST raster has {len(array)} bands, expected 1")
    array = array[0]
    median = np.nanmedian(array) if np.isfinite(array).any() else float("nan")
    if not 150 < median < 400:
        print(f"warning: {lst}: median {median:.1f} does not look like Kelvin", file=sys.stderr)
    paths = guidance_paths(guidance, guidance_dir)
    gui = None
    if bands:
        if not paths:
            raise DataError(f"model {cfg['model']['name']!r} is guided: give --guidance (bands {bands})")
        gui = read_guidance(paths, bands, lst, array.shape, info["geo"], scale)
    elif paths:
        print(f"note: model {cfg['model']['name']!r} is single-image; guidance ignored", file=sys.stderr)
    model = groklst.load_model(cfg, checkpoint, device)
    normalizer = groklst.build_normalizer(cfg)
    tile = tile or max(1, 512 // scale)
    overlap = tile // 4 if overlap is None else overlap
    if progress:
        print(f"{cfg['model']['name']} x{scale}: {array.shape[1]} x {array.shape[0]} -> "
              f"{array.shape[1] * scale} x {array.shape[0] * scale} px, tile {tile} overlap {overlap} (LR px), "
              f"batch {batch}, {device}", file=sys.stderr)
    pred = predict_array(model, normalizer, array, gui, scale, tile, overlap, batch, device, amp, progress)
    del gui
    geo = None
    if geo_transform(info["geo"]) is not None:
        geo = output_geo(info["geo"], scale)
    else:
        print(f"warning: {lst}: no georeferencing (ModelPixelScale + ModelTiepoint or ModelTransformation); "
              f"{out} will have none", file=sys.stderr)
    write_geotiff(out, pred, geo, nodata=float("nan") if nodata is None else float(nodata), tile=(256, 256))
    if png:
        write_png(os.path.splitext(out)[0] + ".png", pred, f"{os.path.basename(out)}: {cfg['model']['name']} x{scale}")
    return pred
