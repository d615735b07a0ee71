"""Bring your own scenes: cut whole LST + guidance scenes into a GrokLST-layout dataset, or coarsen one LST.

    python prepare.py --lst lst_30m.tif --guidance bands_30m.tif --out data/myregion
    python prepare.py --lst a_lst.tif --guidance a_gui.tif --lst b_lst.tif --guidance b_gui.tif \\
        --out data/myregion --tile 512 --step 256 --scales 2 4 8 16 --split 0.6 0.1 0.3 --seed 0 --max-nodata 0.0
    python prepare.py --scenes scenes.txt --out data/myregion    # one "LST GUIDANCE" pair per line
    python prepare.py --coarsen lst_30m.tif --scale 8 --out lst_240m.tif [--guidance bands_30m.tif]
    python prepare.py --coarse-lst modis_1km.tif --guidance s2_bands.tif --scale 4 --out data/modis_x4
    python prepare.py --coarse-lst modis_1km.tif --guidance s2_bands.tif --scale 4 --real-ratio --out data/modis_rr4

Three modes:

1. Scenes -> dataset (--lst/--guidance, --scenes). Input, per scene: an LST GeoTIFF (1 band, Kelvin; no-data
   as NaN or the GDAL_NODATA value) and a guidance GeoTIFF on the same pixel grid (C bands). Band names come
   from --band-names, else from the file's band descriptions, else the 10 GrokLST bands (data.BANDS) when it
   has 10 unnamed bands. The LST's band description ('lst', or a Landsat Level-1 'bt' /
   'bt_emissivity_corrected', data.LST_QUANTITIES) is carried into every LST tile and prepare.yaml
   (`lst_quantity`), so data.lst_quantity tells what a dataset's "LST" is.

2. --coarsen LST --scale S --out FILE: one LST scene -> its S-fold coarse version (the input predict.py
   needs), by --degradation wald | gaussian. A scene whose size is not a multiple of S is cropped to one
   from the top-left corner (--edge crop, the default: the corner and so the georeferencing stay, the last
   H mod S rows and W mod S columns are left out) or padded with NaN at the bottom and right (--edge pad).
   With --guidance, the guidance is cut the same way and written to --guidance-out (default
   <FILE stem>_guidance.tif), so the pair is exactly what predict.py checks: guidance = LST grid / S.

3. --coarse-lst C --guidance G --scale S --out DIR: reduced-resolution ("Wald protocol") training from the
   coarse scene alone. C (e.g. MODIS LST at 1 km) and G (e.g. 30 m bands) may lie on any grids and CRSs;
   the guidance is aggregated onto C's grid (footprint.Footprint(G's grid, C's grid).aggregate: area-
   weighted means, NaN where less than --min-valid of a coarse pixel is covered), C is cropped to the
   pixels the guidance covers, and the dataset holds C as the TARGET (under "30m": the folder names are
   nominal), its S-fold degradation as the input and the aggregated guidance. A model of scale S trained on
   it learned "C/S -> C"; predict.py then applies it "C -> C*S" with the guidance on C's grid refined by S.
   That assumes the relation is scale invariant (docs/data.md says when it is not). The normalisation
   statistics are those of the aggregated guidance (what the model sees in training); the fine guidance's
   own statistics are recorded beside them (stats.yaml `fine_guidance`), with a warning for each band
   whose fine values leave the training range.

   With --real-ratio (and one --scale S): the dataset at the ratio the model is applied at, with no fine
   truth. C is the INPUT (under "<30*S>m"), the guidance is brought once onto C's grid refined by S (pixel =
   C's pixel / S, same corner and CRS; crossgrid.onto_grid: area-weighted means of finer guidance pixels,
   bicubic from coarser ones) under "30m/guidance", and there is no 30m/lst. A model trains on it only with
   train.objective=consistency (its block means against C) and is scored by CONS only: the way to
   fine-tune a trained model on the very scene it will sharpen (docs/notruth.md).

Output of modes 1 and 3 (data.py's layout; "30m" names the target grid whatever its pixel size, "<30*s>m"
the grid s times coarser: 60m/120m/240m for GrokLST's 2/4/8, 480m for 16, 960m for 32):

    <out>/30m/lst/<scene>_r<row>_c<col>.tif   HR LST tile (tile x tile pixels), own georeferencing
    <out>/30m/guidance/<name>.tif             guidance tile, C named bands
    <out>/<30*s>m/lst/<name>.tif              LR LST (tile/s pixels), pixel size x s, same corner
    <out>/split/{train,val,test,trainval}.txt
    <out>/stats.yaml                          training-split statistics, shaped like a config's `norm:`
    <out>/base_x<s>.yaml                      `data:` + `norm:` of a config on this dataset (a `_base_`)
    <out>/cpu_mocolsk_x<s>.yaml               base_x<s> + the CPU-sized recipe of configs/cpu_mocolsk_x8.yaml
    <out>/prepare.yaml                        the arguments and the summary counts

Tiles start every `step` pixels from each scene's top-left corner (default tile/2: 50 % overlap, as the
GrokLST dataset's 512 / 256); a margin narrower than a step at the right and bottom edges is left out.
--tile auto (the default) takes the largest of TILE_SIZES (a multiple of every scale, at least MIN_LR_TILE
LR pixels at the largest scale) at which the scenes hold at least MIN_BLOCKS split blocks, so that even one
small scene gives train, val and test tiles (a 603 x 627 scene: 128). A tile is skipped when more than
`max_nodata` of its pixels are no-data (LST or any guidance band not finite).

Split rule (spatial blocks, not tiles): each scene's tiled part is partitioned into square blocks of `block`
pixels (default: the tile size; a multiple of the tile and of the step, so block edges lie on the tile-step
grid); the last block of a row or column absorbs the remainder, so every block holds whole tiles. The
blocks of all scenes are shuffled with `seed` and assigned whole to train / val / test in the `split`
fractions (of blocks). A tile is kept only if every block it covers has the same split; a tile straddling
two splits is dropped (counted in the summary). So tiles of different splits never share a pixel: no test
or val tile overlaps a training tile; tiles overlap only within a split. With block = tile the straddling
positions are only the overlapping windows between blocks: each block still has a kept tile, so they lose
no pixels (the summary states the pixels kept tiles cover); --step equal to --tile has none. Neighbouring
blocks of different splits still touch along an edge (spatial autocorrelation): a larger --block makes
such edges rarer.

Degradation: Wald's protocol by default (LR = mean over s x s blocks, data.block_mean, as the
GrokLST dataset); --degradation gaussian blurs with a Gaussian (sigma = s/2 HR pixels by default)
and samples the block centres instead. Either way a coarse pixel is NaN when more than
`lr_max_nodata` of its s x s fine pixels are NaN (default 0: any).
"""
import argparse
import functools
import inspect
import math
import os
import re
import sys

import numpy as np
import yaml

from data import (
    LST_QUANTITIES,
    block_mean,
    block_nan_fraction,
    compute_stats,
    guidance_names,
    lr_folder,
    lst_quantity_of,
    read_lst_geotiff,
    read_scene_list,
)
from errors import DataError, command
from geotiff import check_grids, describe_grid, geo_transform, geo_window, read_geotiff, read_header, write_geotiff
from layout import make_layout, write_sample, write_splits

SPLITS = ("train", "val", "test")
TILE_SIZES = (512, 256, 128, 64, 32)  # --tile auto: the candidates, largest first
MIN_BLOCKS = 10   # --tile auto: split blocks wanted over all scenes (0.6 / 0.1 / 0.3 of 10: 6, 1 and 3)
MIN_LR_TILE = 4   # --tile auto: LR pixels of a tile side at the largest scale, at least
CPU_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "cpu_mocolsk_x8.yaml")
OUTSIDE_WARN = 0.01  # coarse mode: warn when more of a band's fine pixels lie outside its training range


# --------------------------------------------------------------------------- degradation


def _gaussian_weights(n, s, sigma):
    """(n // s, n) 1-D Gaussian weights centred on each coarse pixel's centre, truncated at 3 sigma."""
    d = np.arange(n)[None, :] - (np.arange(n // s)[:, None] * s + (s - 1) / 2)
    w = np.exp(-0.5 * (d / sigma) ** 2)
    w[np.abs(d) > 3 * sigma] = 0.0
    return w


def gaussian_decimate(hr, s, sigma=None, max_nan_fraction=0.0):
    """The alternative to Wald's protocol: Gaussian blur, then decimation by s.

    hr (H, W) Kelvin -> (H/s, W/s) float32. The blur (sigma HR pixels, default s/2: a modulation
    transfer of 0.29 at the LR Nyquist frequency, sensor-like) is evaluated at each s x s block's
    centre, separably, within the array only, NaN-aware (normalised convolution over finite
    pixels). A coarse pixel is NaN when more than `max_nan_fraction` of its block is NaN.
    """
    sigma = s / 2 if sigma is None else float(sigma)
    if sigma <= 0:
        raise DataError(f"--sigma {sigma}: must be > 0")
    valid = np.isfinite(hr)
    wy, wx = _gaussian_weights(hr.shape[0], s, sigma), _gaussian_weights(hr.shape[1], s, sigma)
    num = wy @ np.where(valid, hr, 0.0).astype(np.float64) @ wx.T
    den = wy @ valid.astype(np.float64) @ wx.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[block_nan_fraction(hr, s) > max_nan_fraction] = np.nan
    return out.astype(np.float32)


def degrade(hr, s, method="wald", max_nan_fraction=0.0, sigma=None):
    """LR LST (H/s, W/s) from HR LST (H, W), Kelvin. method: 'wald' (block mean, the default) or
    'gaussian' (gaussian_decimate). A coarse pixel is NaN when more than `max_nan_fraction` of
    its s x s fine pixels are NaN."""
    if method == "wald":
        return block_mean(hr, s, max_nan_fraction)
    if method == "gaussian":
        return gaussian_decimate(hr, s, sigma, max_nan_fraction)
    raise DataError(f"--degradation {method!r}: expected wald or gaussian")


# --------------------------------------------------------------------------- tiles and split


def tile_origins(h, w, tile, step):
    """Top-left (row, col) of every tile x tile window on the step grid inside an (h, w) scene."""
    return [(r, c) for r in range(0, h - tile + 1, step) for c in range(0, w - tile + 1, step)]


def tiled_extent(n, tile, step):
    """Pixels along one axis covered by tiles (0 when the scene is smaller than a tile)."""
    return 0 if n < tile else (n - tile) // step * step + tile


def split_blocks(n, block):
    """Split blocks along one axis of n tiled pixels: n // block, the last one absorbing the remainder (no
    block narrower than `block`, so each holds whole tiles); 1 when 0 < n < block, 0 when n = 0."""
    return max(1, n // block) if n > 0 else 0


def block_grid(shape, tile, step, block):
    """(block rows, block columns) of a scene of `shape` (H, W)."""
    return tuple(split_blocks(tiled_extent(n, tile, step), block) for n in shape)


def count_blocks(shapes, tile, step, block):
    return sum(math.prod(block_grid(shape, tile, step, block)) for shape in shapes)


def assign_blocks(grids, fractions=(0.6, 0.1, 0.3), seed=0):
    """Spatial blocks -> split. grids: [(block rows, block columns)] per scene (block_grid). Returns
    {(scene, block_row, block_col): split}.

    All blocks are shuffled together (numpy default_rng(seed)) and cut in the train / val / test
    fractions (rounded; a split with a positive fraction gets at least one block when there are enough
    blocks). The result is a pure function of its arguments.
    """
    keys = [(k, i, j) for k, (bi, bj) in enumerate(grids) for i in range(bi) for j in range(bj)]
    n = len(keys)
    bounds = np.round(np.cumsum(fractions) * n).astype(int)
    counts = np.diff(np.concatenate([[0], np.minimum(bounds, n)]))
    counts[-1] += n - counts.sum()
    if n >= sum(f > 0 for f in fractions):
        for i, f in enumerate(fractions):
            if f > 0 and counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] += 1
    labels = [name for name, c in zip(SPLITS, counts) for _ in range(c)]
    order = np.random.default_rng(seed).permutation(n)
    return {keys[o]: labels[m] for m, o in enumerate(order)}


def tile_split(blocks, scene, grid, row, col, tile, block):
    """Split of the tile at (row, col) of `scene` (its block grid `grid`), or None when it covers blocks of
    different splits."""
    def span(p, n):
        return range(min(p // block, n - 1), min((p + tile - 1) // block, n - 1) + 1)
    found = {blocks[(scene, i, j)] for i in span(row, grid[0]) for j in span(col, grid[1])}
    return found.pop() if len(found) == 1 else None


def tile_candidates(scales):
    """--tile auto's candidates: TILE_SIZES that are multiples of every scale, with at least MIN_LR_TILE LR
    pixels at the largest."""
    return [t for t in TILE_SIZES if all(t % s == 0 for s in scales) and t // max(scales) >= MIN_LR_TILE]


def auto_tile(shapes, scales, step=None, block=None):
    """--tile auto: the largest tile_candidates size at which the scenes (shapes [(H, W)]) hold at least
    MIN_BLOCKS split blocks (step: as given, else tile/2; block: as given, else the tile); the smallest
    candidate when none does. DataError when no candidate fits the scales."""
    candidates = tile_candidates(scales)
    if not candidates:
        raise DataError(f"--scales {list(scales)}: no tile of {list(TILE_SIZES)} is a multiple of every scale "
                        f"with {MIN_LR_TILE} LR pixels; give --tile (a multiple of every scale)")
    for t in candidates:
        if count_blocks(shapes, t, step or t // 2, block or t) >= MIN_BLOCKS:
            return t
    return candidates[-1]


# --------------------------------------------------------------------------- scenes


def read_scene(lst_path, guidance_path, band_names=None):
    """One scene -> {'lst': (H, W) Kelvin, 'guidance': (C, H, W), 'bands', 'geo', 'quantity'}, no-data as NaN.

    The two rasters must share the pixel grid (same size and, when both are georeferenced, the
    same corner and pixel size). geo: the LST's georeferencing, else the guidance's ({} if none).
    Band names: --band-names, else the file's (data.guidance_names). quantity: lst_quantity_of.
    """
    lst, lst_info = read_lst_geotiff(lst_path)
    gui, gui_info = read_geotiff(guidance_path)
    check_grids(lst_path, lst.shape, lst_info["geo"], guidance_path, gui.shape[1:], gui_info["geo"], scale=1)
    return {"lst": lst, "guidance": gui, "bands": scene_bands(gui_info["bands"], len(gui), guidance_path, band_names),
            "geo": lst_info["geo"] or gui_info["geo"], "quantity": lst_quantity_of(lst_info["bands"])}


def scene_bands(file_names, count, guidance_path, band_names=None):
    """Guidance band names: --band-names (one per band), else the file's (data.guidance_names)."""
    if band_names is not None:
        if len(band_names) != count:
            raise DataError(f"{guidance_path}: {count} bands but {len(band_names)} band names {list(band_names)}")
        return guidance_names(list(band_names), count, guidance_path)
    return guidance_names(file_names, count, guidance_path)


def scenes_from_args(lst=(), guidance=(), scene_list=None, flag="--lst"):
    """--lst / --guidance (repeated, paired in order) plus --scenes LIST -> [(lst_path, guidance_path)]."""
    lst, guidance = list(lst or ()), list(guidance or ())
    if len(lst) != len(guidance):
        raise DataError(f"{len(lst)} {flag} but {len(guidance)} --guidance: give one guidance file per "
                        f"LST scene, in the same order")
    scenes = list(zip(lst, guidance))
    for lst_path, guidance_paths, where in read_scene_list(scene_list) if scene_list else []:
        if len(guidance_paths) != 1:  # the grammar of data.read_scene_list, with one guidance file per scene
            raise DataError(f"{where}: expected `LST_PATH GUIDANCE_PATH` (one multi-band guidance file), got "
                            f"{1 + len(guidance_paths)} paths")
        scenes.append((lst_path, guidance_paths[0]))
    if not scenes:
        raise DataError(f"no scenes: give {flag} LST.tif --guidance GUIDANCE.tif (repeatable) or --scenes LIST")
    return scenes


def scene_names(paths):
    """Unique, file-name-safe scene names from the LST file stems."""
    names = []
    for p in paths:
        stem = re.sub(r"[^\w.-]", "_", re.sub(r"\.tiff?$", "", os.path.basename(p), flags=re.I))
        name, k = stem, 2
        while name in names:
            name, k = f"{stem}_{k}", k + 1
        names.append(name)
    return names


def moments(values):
    """[count, sum, sum of squares, min, max] of the finite values of an array (float64): they add up over scenes."""
    v = values[np.isfinite(values)].astype(np.float64)
    return [v.size, v.sum(), (v * v).sum(), v.min(), v.max()] if v.size else [0, 0.0, 0.0, math.inf, -math.inf]


def moments_stats(parts):
    """{mean, std, min, max} (std with n - 1, rounded as data.compute_stats does) of summed `moments`."""
    n, s1, s2 = (sum(p[i] for p in parts) for i in range(3))
    if not n:
        return None
    mean = s1 / n
    std = math.sqrt(max(s2 / n - mean * mean, 0.0) * n / max(n - 1, 1))
    lo, hi = min(p[3] for p in parts), max(p[4] for p in parts)
    return {k: round(float(v), 4) for k, v in zip(("mean", "std", "min", "max"), (mean, std, lo, hi))}


def read_coarse_scene(coarse_path, guidance_path, band_names=None, min_valid=0.5):
    """Coarse mode: a coarse LST and a fine guidance on any grids -> read_scene's dict on the coarse grid.

    The guidance is aggregated onto the coarse grid band by band (footprint.Footprint(fine, coarse,
    min_valid).aggregate: area-weighted means of finite fine pixels, NaN where less than min_valid of the
    coarse pixel is covered). Both are cropped to the bounding box of the coarse pixels that the fine grid
    touches (the geo moves with the crop). Adds 'fine_moments' ({band: moments} of the whole fine guidance),
    'fine_values' (per band, the fine pixels for the out-of-range check: a sample of at most 10^6), and
    'grids' (the two grids described).
    """
    from footprint import Footprint, Grid
    lst, lst_info = read_lst_geotiff(coarse_path)
    gui, gui_info = read_geotiff(guidance_path)
    bands = scene_bands(gui_info["bands"], len(gui), guidance_path, band_names)
    fp = Footprint(Grid.from_geotiff(guidance_path, gui_info), Grid.from_geotiff(coarse_path, lst_info), min_valid)
    r0, r1, c0, c1 = covered_box(fp)
    aggregated = np.stack([fp.aggregate(band)[r0:r1, c0:c1] for band in gui]).astype(np.float32)
    rng = np.random.default_rng(0)
    fine_values = {}
    for b, band in zip(bands, gui):
        v = band[np.isfinite(band)]
        fine_values[b] = v if v.size <= 10 ** 6 else rng.choice(v, 10 ** 6, replace=False)
    return {"lst": lst[r0:r1, c0:c1], "guidance": aggregated, "bands": bands,
            "geo": geo_window(lst_info["geo"], int(r0), int(c0)), "quantity": lst_quantity_of(lst_info["bands"]),
            "fine_moments": {b: moments(band) for b, band in zip(bands, gui)}, "fine_values": fine_values,
            "grids": {"coarse": describe_grid(coarse_path, lst.shape, lst_info["geo"]),
                      "fine": describe_grid(guidance_path, gui.shape[1:], gui_info["geo"]),
                      "crop": [int(r0), int(c0), int(r1 - r0), int(c1 - c0)]}}


def covered_box(fp):
    """(r0, r1, c0, c1): the bounding box of the coarse pixels of footprint `fp` that its fine grid touches."""
    rows, cols = np.nonzero(fp.coverage.numpy() > 0)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def read_real_ratio_scene(coarse_path, guidance_path, scale, band_names=None, min_valid=0.5):
    """Real-ratio mode: a coarse LST and a guidance on any grids -> read_scene's dict on the coarse grid refined
    by `scale` (pixel = the coarse pixel / scale, same corner and CRS), the grid a model of that scale
    predicts on. 'lst' is the coarse LST repeated over each scale x scale block (the LR tiles are taken back
    from it: write_real_ratio_sample), 'guidance' the guidance brought there once (crossgrid.onto_grid: the
    area-weighted mean of finer guidance pixels, bicubic from coarser ones). The coarse LST is cropped to
    the pixels the guidance touches, as in coarse mode (covered_box). No fine truth: there is none."""
    from crossgrid import onto_grid
    from footprint import Footprint, Grid
    lst, lst_info = read_lst_geotiff(coarse_path)
    gui, gui_info = read_geotiff(guidance_path)
    bands = scene_bands(gui_info["bands"], len(gui), guidance_path, band_names)
    source, coarse = Grid.from_geotiff(guidance_path, gui_info), Grid.from_geotiff(coarse_path, lst_info)
    r0, r1, c0, c1 = covered_box(Footprint(source, coarse, min_valid))
    geo = geo_window(lst_info["geo"], int(r0), int(c0))
    x0, dx, _, y0, _, dy = coarse.transform
    fine = Grid((int(r1 - r0) * scale, int(c1 - c0) * scale),
                (x0 + c0 * dx, dx / scale, 0.0, y0 + r0 * dy, 0.0, dy / scale), coarse.crs, f"{coarse_path} refined by {scale}")
    guidance, how = onto_grid(gui, source, fine)
    lst = lst[r0:r1, c0:c1].repeat(scale, 0).repeat(scale, 1)
    return {"lst": lst, "guidance": np.asarray(guidance, np.float32), "bands": bands,
            "geo": geo_window(geo, 0, 0, scale), "quantity": lst_quantity_of(lst_info["bands"]), "how": how,
            "grids": {"coarse": describe_grid(coarse_path, (r1 - r0, c1 - c0), lst_info["geo"]),
                      "fine": describe_grid(guidance_path, gui.shape[1:], gui_info["geo"]),
                      "crop": [int(r0), int(c0), int(r1 - r0), int(c1 - c0)]}}


def write_real_ratio_sample(root, name, lst, guidance, bands, geo, scales, degrade=None, quantity=None):
    """write_sample's counterpart without fine truth: the guidance tile (C, H, W) under 30m/guidance and the
    coarse LST under the one scale's folder, taken from `lst` (H, W), the coarse LST repeated over each
    block (read_real_ratio_scene), by its first pixel per block; nothing under 30m/lst. degrade: unused
    (the coarse LST is the data, not made from a fine one)."""
    (s,) = scales
    write_geotiff(os.path.join(root, "30m", "guidance", name + ".tif"), guidance, geo, band_names=bands)
    write_geotiff(os.path.join(root, lr_folder(s), "lst", name + ".tif"), lst[::s, ::s], geo_window(geo, 0, 0, 1 / s),
                  band_names=[quantity] if quantity else None)


# --------------------------------------------------------------------------- prepare


def check_options(scales, split, max_nodata, lr_max_nodata, degradation):
    bad = [s for s in scales if isinstance(s, bool) or not isinstance(s, int) or s < 2]
    if not scales or bad:
        raise DataError(f"--scales {list(scales)}: integer scales >= 2 (GrokLST has 2 4 8; 16, 32, ... also work)")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6 or split[0] <= 0:
        raise DataError(f"--split {list(split)}: three fractions train val test, >= 0, summing to 1, train > 0")
    for flag, v in (("--max-nodata", max_nodata), ("--lr-max-nodata", lr_max_nodata)):
        if not 0 <= v <= 1:
            raise DataError(f"{flag} {v}: a fraction in [0, 1]")
    if degradation not in ("wald", "gaussian"):
        raise DataError(f"--degradation {degradation!r}: expected wald or gaussian")


def check_geometry(tile, step, block, scales):
    if tile <= 0 or any(tile % s for s in scales):
        raise DataError(f"--tile {tile}: must be a positive multiple of every scale {list(scales)}")
    if step <= 0:
        raise DataError(f"--step {step}: must be positive")
    if block <= 0 or block % tile or block % step:
        raise DataError(f"--block {block}: must be a multiple of --tile {tile} and of --step {step} "
                        f"(split blocks lie on the tile-step grid)")


def cut_scene(out, k, name, scene, grid, blocks, tile, step, block, scales, max_nodata, degrade_lr,
              write=write_sample):
    """Write the kept tiles of scene number k (a read_scene dict) with `write` (layout.write_sample's
    arguments); returns ({split: [tile names]}, its summary row: tile positions, kept, dropped per reason,
    and the pixels kept tiles cover)."""
    lst, gui = scene["lst"], scene["guidance"]
    invalid = ~(np.isfinite(lst) & np.isfinite(gui).all(0))
    covered = np.zeros(lst.shape, bool)
    origins = tile_origins(*lst.shape, tile, step)
    t = geo_transform(scene["geo"])
    row = {"name": name, "shape": list(lst.shape), "pixel_size": float(t[1]) if t else None,
           "positions": len(origins), "kept": 0, "straddling": 0, "nodata": 0,
           "margin": [int(lst.shape[0] - tiled_extent(lst.shape[0], tile, step)),
                      int(lst.shape[1] - tiled_extent(lst.shape[1], tile, step))]}
    tiles = {k_: [] for k_ in SPLITS}
    for r, c in origins:
        which = tile_split(blocks, k, grid, r, c, tile, block)
        if which is None:
            row["straddling"] += 1
        elif invalid[r:r + tile, c:c + tile].mean() > max_nodata:
            row["nodata"] += 1
        else:
            tname = f"{name}_r{r:05d}_c{c:05d}"
            write(out, tname, lst[r:r + tile, c:c + tile], gui[:, r:r + tile, c:c + tile], scene["bands"],
                  geo_window(scene["geo"], r, c), scales, degrade_lr, scene["quantity"])
            tiles[which].append(tname)
            covered[r:r + tile, c:c + tile] = True
            row["kept"] += 1
    valid = ~invalid
    row["covered"] = round(float(covered.mean()), 4)  # of the scene's pixels
    row["covered_valid"] = round(float((covered & valid).sum() / max(valid.sum(), 1)), 4)  # of its valid pixels
    return tiles, row


def prepare(scenes, out, band_names=None, tile=None, step=None, block=None, scales=(2, 4, 8),
            split=(0.6, 0.1, 0.3), seed=0, max_nodata=0.0, lr_max_nodata=0.0, degradation="wald",
            sigma=None, coarse=False, min_valid=0.5, progress=False, real_ratio=False):
    """Write a GrokLST-layout dataset from whole scenes (see the module docstring for the layout,
    the tiling and the split rule). scenes: [(lst_path, guidance_path)]; tile (None: auto_tile), step
    (None: tile/2), block (None: the tile) in HR pixels; max_nodata: largest no-data fraction of a kept
    tile; lr_max_nodata: largest NaN fraction of the fine pixels under a finite coarse pixel. coarse: the
    LST paths are coarse scenes and the guidance is aggregated onto them (read_coarse_scene, min_valid);
    with real_ratio too, the guidance is brought onto them refined by the one scale instead and no fine
    truth is written (read_real_ratio_scene; tile, step and block in pixels of that grid).
    Returns the summary dict (also written to <out>/prepare.yaml; format_summary prints it)."""
    scales = sorted(set(scales))
    split = [float(f) for f in split]
    check_options(scales, split, max_nodata, lr_max_nodata, degradation)
    if real_ratio and (not coarse or len(scales) != 1):
        raise DataError(f"--real-ratio: give --coarse-lst scenes and one --scale (the ratio the model is applied "
                        f"at), not --scales {scales}")
    for folder in ("30m/lst", "30m/guidance"):
        hr_folder = os.path.join(out, folder)
        if os.path.isdir(hr_folder) and os.listdir(hr_folder):
            raise DataError(f"{out}: already holds a dataset; choose another --out or delete it")
    names = scene_names([p for p, _ in scenes])
    if real_ratio:  # the refined grids are those of the coarse scenes: read them all first, as coarse mode does
        loaded = [read_real_ratio_scene(c, g, scales[0], band_names, min_valid) for c, g in scenes]
        shapes, quantities = [scene["lst"].shape for scene in loaded], [scene["quantity"] for scene in loaded]
    elif coarse:  # coarse grids are small: read (and aggregate) every scene first, to know the cropped sizes
        loaded = [read_coarse_scene(c, g, band_names, min_valid) for c, g in scenes]
        shapes, quantities = [scene["lst"].shape for scene in loaded], [scene["quantity"] for scene in loaded]
    else:  # the split is decided from the headers' sizes before any pixel is read
        headers = [read_header(p) for p, _ in scenes]
        shapes, quantities = [h["shape"][1:] for h in headers], [lst_quantity_of(h["bands"]) for h in headers]
    for (lst_path, _), quantity in zip(scenes, quantities):
        if quantity != quantities[0]:
            raise DataError(f"{lst_path}: holds {LST_QUANTITIES[quantity]} ({quantity!r}), the first scene "
                            f"{LST_QUANTITIES[quantities[0]]} ({quantities[0]!r}): prepare them as two datasets")
    auto = tile is None
    if auto:
        tile = auto_tile(shapes, scales, step, block)
    step = step or tile // 2
    block = block or tile
    check_geometry(tile, step, block, scales)
    grids = [block_grid(shape, tile, step, block) for shape in shapes]
    blocks = assign_blocks(grids, split, seed)
    make_layout(out, scales)
    if real_ratio:
        os.rmdir(os.path.join(out, "30m", "lst"))  # no fine truth: its absence is what the dataset says
    degrade_lr = functools.partial(degrade, method=degradation, max_nan_fraction=lr_max_nodata, sigma=sigma)
    tiles, report, bands, warnings, fine, fine_moments = {k: [] for k in SPLITS}, [], None, [], {}, {}
    for k, ((lst_path, gui_path), name) in enumerate(zip(scenes, names)):
        scene = loaded[k] if coarse else read_scene(lst_path, gui_path, band_names)
        if bands is None:
            bands = scene["bands"]
        elif scene["bands"] != bands:
            if sorted(scene["bands"]) != sorted(bands):
                raise DataError(f"{gui_path}: bands {scene['bands']} differ from the first scene's {bands}")
            scene["guidance"] = scene["guidance"][[scene["bands"].index(b) for b in bands]]
            scene["bands"] = bands
        scene_tiles, row = cut_scene(out, k, name, scene, grids[k], blocks, tile, step, block, scales,
                                     max_nodata, degrade_lr, write_real_ratio_sample if real_ratio else write_sample)
        report.append({"name": name, "lst": lst_path, "guidance": gui_path, **row})
        if real_ratio:
            report[-1]["grids"], report[-1]["guidance_how"] = scene["grids"], scene["how"]
        elif coarse:
            report[-1]["grids"] = scene["grids"]
            for b in scene["bands"]:
                fine.setdefault(b, []).append(scene["fine_values"][b])
                fine_moments.setdefault(b, []).append(scene["fine_moments"][b])
        for split_name, t in scene_tiles.items():
            tiles[split_name] += t
        if not row["positions"]:
            warnings.append(f"scene {name} ({shapes[k][0]} x {shapes[k][1]}) is smaller than a tile: no tiles")
        if progress:
            print(f"  {name}: {row['kept']} of {row['positions']} tile positions kept", file=sys.stderr, flush=True)
        if not coarse:
            del scene
    write_splits(out, tiles)
    summary = {
        "out": out, "mode": "real_ratio" if real_ratio else "coarse" if coarse else "scenes", "scenes": report, "bands": bands,
        "lst_quantity": quantities[0],
        "tile": tile, "tile_auto": auto, "step": step, "block": block, "scales": scales, "split": split, "seed": seed,
        "max_nodata": max_nodata, "lr_max_nodata": lr_max_nodata, "degradation": degradation,
        "sigma": sigma if degradation == "gaussian" else None, "min_valid": min_valid if coarse else None,
        "blocks": {k: sum(v == k for v in blocks.values()) for k in SPLITS},
        "tiles": {k: len(tiles[k]) for k in SPLITS},
        "positions": sum(r["positions"] for r in report),
        "dropped": {"straddling": sum(r["straddling"] for r in report), "nodata": sum(r["nodata"] for r in report)},
        "warnings": warnings,
    }
    for k in SPLITS[1:]:
        if split[SPLITS.index(k)] > 0 and not tiles[k]:
            warnings.append(f"split {k} has no tiles: {fewer_blocks_hint(shapes, scales, tile, step, block)}")
    if not tiles["train"]:
        _write_yaml(os.path.join(out, "prepare.yaml"), summary, "# prepare.py: arguments and counts\n")
        raise DataError(f"{out}: no training tiles (of {summary['positions']} positions, "
                        f"{summary['dropped']['nodata']} over --max-nodata {max_nodata}, "
                        f"{summary['dropped']['straddling']} straddling splits)")
    stats = compute_stats(out, "train", bands)
    if coarse and not real_ratio:
        summary["fine_guidance"] = {b: moments_stats(fine_moments[b]) for b in bands}
        warnings += fine_guidance_warnings(stats["guidance"], fine)
    write_stats(out, stats, len(tiles["train"]), summary.get("fine_guidance"))
    for s in scales:
        write_base_config(out, s, bands, stats, coarse, real_ratio)
        write_cpu_config(out, s)
    for band, v in stats["guidance"].items():
        if not v["std"] > 0:
            warnings.append(f"band {band} is constant on the training split (std 0): z-score needs std > 0; "
                            f"edit its std in base_x*.yaml or drop the band")
    _write_yaml(os.path.join(out, "prepare.yaml"), summary, "# prepare.py: arguments and counts\n")
    return summary


def fewer_blocks_hint(shapes, scales, tile, step, block):
    """What would give every split tiles: the flags, with the number of split blocks they give."""
    have = count_blocks(shapes, tile, step, block)
    for t in tile_candidates(scales):
        n = count_blocks(shapes, t, t // 2, t)
        if t < tile and n >= MIN_BLOCKS:
            return (f"the scenes hold {have} split blocks at --tile {tile} --block {block}; --tile {t} --step {t // 2} "
                    f"(or --tile auto) gives {n}")
    return (f"the scenes hold {have} split blocks at --tile {tile} --block {block}; use larger or more scenes, or a "
            f"smaller --tile / --block")


def fine_guidance_warnings(train_stats, fine):
    """Coarse mode: one warning per band whose fine pixels leave the aggregated training range by more than
    OUTSIDE_WARN (the model never saw such values: it extrapolates there)."""
    out = []
    for b, chunks in fine.items():
        v, t = np.concatenate(chunks), train_stats.get(b)
        if t is None or not v.size:
            continue
        outside = float(((v < t["min"]) | (v > t["max"])).mean())
        if outside > OUTSIDE_WARN:
            out.append(f"band {b}: {100 * outside:.1f} % of the fine guidance lies outside the aggregated training "
                       f"range {t['min']:g}..{t['max']:g} (fine std {v.std():.4g}, aggregated {t['std']:.4g}): the "
                       f"model extrapolates there")
    return out


# --------------------------------------------------------------------------- coarsen one scene


def coarsen(lst_path, out, scale, edge="crop", guidance=None, guidance_out=None, degradation="wald",
            lr_max_nodata=0.0, sigma=None):
    """One LST scene (H, W) Kelvin -> its `scale`-fold coarse version at `out` (the input predict.py needs).

    edge 'crop': the scene is cut to (H // scale * scale, W // scale * scale) from the top-left corner (same
    corner and georeferencing; the last H mod scale rows and W mod scale columns are left out); 'pad': NaN
    rows and columns are added at the bottom and right up to the next multiple (those coarse pixels are NaN
    unless lr_max_nodata allows them). degradation: degrade's method. guidance: a guidance GeoTIFF on the
    LST's grid, cut or padded the same way and written to guidance_out (default <out stem>_guidance.tif).
    Inputs are never replaced. Returns a summary dict."""
    if edge not in ("crop", "pad"):
        raise DataError(f"--edge {edge!r}: expected crop or pad")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise DataError(f"--scale {scale!r}: one integer scale >= 2")
    if guidance is not None and guidance_out is None:
        guidance_out = re.sub(r"(\.tiff?)?$", "", out, count=1, flags=re.I) + "_guidance.tif"
    inputs = [lst_path] + ([guidance] if guidance else [])
    for target in [out] + ([guidance_out] if guidance else []):
        if any(os.path.abspath(target) == os.path.abspath(p) or (os.path.exists(target) and os.path.samefile(target, p))
               for p in inputs):
            raise DataError(f"{target}: is an input; write the coarse raster to another file")
    lst, info = read_lst_geotiff(lst_path)
    h, w = lst.shape
    H, W = (h // scale * scale, w // scale * scale) if edge == "crop" else (-(-h // scale) * scale, -(-w // scale) * scale)
    if H == 0 or W == 0:
        raise DataError(f"{lst_path}: {h} x {w} pixels is smaller than one {scale} x {scale} block")

    def fit(a):  # (..., h, w) -> (..., H, W): cropped, or padded with NaN
        if edge == "crop":
            return a[..., :H, :W]
        pad = [(0, 0)] * (a.ndim - 2) + [(0, H - h), (0, W - w)]
        return np.pad(a, pad, constant_values=np.nan)

    quantity = lst_quantity_of(info["bands"])
    lr = degrade(fit(lst), scale, degradation, lr_max_nodata, sigma)
    summary = {"lst": lst_path, "out": out, "scale": scale, "edge": edge, "degradation": degradation,
               "shape": [h, w], "used": [H, W], "coarse_shape": list(lr.shape), "lst_quantity": quantity}
    if guidance:
        gui, gui_info = read_geotiff(guidance)
        check_grids(lst_path, lst.shape, info["geo"], guidance, gui.shape[1:], gui_info["geo"], scale=1)
        write_geotiff(guidance_out, fit(gui), gui_info["geo"] or info["geo"], band_names=gui_info["bands"])
        summary.update(guidance=guidance, guidance_out=guidance_out)
    write_geotiff(out, lr, geo_window(info["geo"], 0, 0, 1 / scale), band_names=[quantity] if info["bands"] else None)
    return summary


def format_coarsen(s):
    change = (f"cropped to {s['used'][0]} x {s['used'][1]} from the top-left (left out: {s['shape'][0] - s['used'][0]} "
              f"rows at the bottom, {s['shape'][1] - s['used'][1]} columns at the right)" if s["edge"] == "crop" else
              f"padded with NaN to {s['used'][0]} x {s['used'][1]} at the bottom and right")
    lines = [f"coarsened {s['lst']} ({s['shape'][0]} x {s['shape'][1]}, {LST_QUANTITIES[s['lst_quantity']]}) x{s['scale']} "
             f"by {'block means' if s['degradation'] == 'wald' else 'Gaussian blur + decimation'}: {change}",
             f"  wrote {s['out']} ({s['coarse_shape'][0]} x {s['coarse_shape'][1]})"]
    if "guidance_out" in s:
        lines.append(f"  wrote {s['guidance_out']} ({s['guidance']} {'cropped' if s['edge'] == 'crop' else 'padded'} "
                     f"the same way: the guidance of {s['out']} for predict.py)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- outputs


def _write_yaml(path, content, header=""):
    """YAML with leaf mappings and lists in flow style ({mean: .., std: ..}), as the configs."""
    with open(path, "w") as f:
        f.write(header + yaml.safe_dump(content, sort_keys=False, default_flow_style=None, width=120))


def _lst_norm(stats):
    return {"method": "zscore", **stats}


def write_stats(out, stats, n_train, fine_guidance=None):
    """<out>/stats.yaml: data.compute_stats of the training split (the numbers `groklst.py stats
    OUT --split train` prints), shaped like a config's `norm:` with LST per resolution; in coarse mode
    also the fine guidance's own statistics (`fine_guidance`, not used for normalising)."""
    content = {"lst": {res: _lst_norm(v) for res, v in stats["lst"].items()},
               "guidance": {"method": "zscore", "stats": stats["guidance"]}}
    header = (f"# Training-split statistics of {out} ({n_train} tiles; pixels of overlapping tiles count once per\n"
              f"# tile, as `python groklst.py stats {out} --split train`), written by `prepare.py`.\n"
              f"# Shaped like a config's `norm:` section, with LST per resolution: for scale s use the LR\n"
              f"# resolution's entry as norm.lst (x2: 60m, x4: 120m, x8: 240m, x16: 480m), as the original configs\n"
              f"# do, and `guidance:` as it is. base_x<s>.yaml in this folder already hold exactly that.\n"
              f"# min / max are there for method: minmax.\n")
    if fine_guidance:
        content["fine_guidance"] = fine_guidance
        header += ("# fine_guidance: the fine guidance's own statistics (whole scenes). The model is trained on the\n"
                   "# aggregated guidance and normalised with `guidance:`, and the same numbers must normalise the\n"
                   "# fine guidance it is applied to (one affine map of the physical values); fine_guidance shows\n"
                   "# how much wider the fine values spread (prepare.yaml warns per band).\n")
    _write_yaml(os.path.join(out, "stats.yaml"), content, header)


def write_base_config(out, s, bands, stats, coarse=False, real_ratio=False):
    """<out>/base_x{s}.yaml: the data and norm sections of a config for this dataset at scale s (and, for a
    dataset without fine truth, train.objective: consistency)."""
    res = lr_folder(s)
    content = {"data": {"root": out, "scale": s, "guidance_bands": list(bands),
                        "train_split": "train", "val_split": "val", "test_split": "test"},
               "norm": {"lst": _lst_norm(stats["lst"][res]),
                        "guidance": {"method": "zscore", "stats": stats["guidance"]}}}
    if real_ratio:
        content["train"] = {"objective": "consistency"}
    path = os.path.join(out, f"base_x{s}.yaml")
    ref = path if os.path.isabs(path) else os.path.relpath(path, "configs")  # `_base_` is relative to the config
    header = (f"# {out} at x{s} ({res} LST -> 30m), written by `prepare.py`: training-split statistics,\n"
              f"# LST at the LR resolution ({res}) as in the original configs. data.root is relative to the\n"
              f"# directory train.py / test.py run in. Use it as the `_base_` of a model config\n"
              f"# (`_base_: {ref}` in configs/) or directly:\n"
              f"#   python train.py {out}/base_x{s}.yaml model.name=mocolsk work_dir=work_dirs/NAME\n")
    if real_ratio:
        header += (f"# Real-ratio mode (prepare.py --coarse-lst --real-ratio): no fine truth (no 30m/lst); '{res}' holds\n"
                   f"# the coarse LST, '30m' the guidance on its grid refined by {s}. Only train.objective=consistency\n"
                   f"# trains here, and only CONS scores. To fine-tune a trained model on this scene keep ITS config\n"
                   f"# (its norm:) and override data.root: docs/notruth.md.\n")
    elif coarse:
        header += (f"# Coarse mode (prepare.py --coarse-lst): '30m' holds the coarse LST (the target), '{res}' its\n"
                   f"# {s}-fold block means, the guidance is aggregated onto the coarse grid. A model trained here\n"
                   f"# is applied by predict.py to the coarse LST with the guidance on the coarse grid refined by\n"
                   f"# {s}, normalised with these same statistics (see stats.yaml, fine_guidance).\n")
    _write_yaml(path, content, header)


def write_cpu_config(out, s):
    """<out>/cpu_mocolsk_x{s}.yaml: `_base_: base_x{s}.yaml` plus the model, training crop and schedule of
    configs/cpu_mocolsk_x8.yaml (the one place the CPU-sized recipe is written)."""
    with open(CPU_RECIPE) as f:
        recipe = yaml.safe_load(f)
    crop = max(recipe["data"]["hr_crop"], 8 * s) // s * s  # a multiple of the scale with at least 8 LR pixels
    content = {"_base_": f"base_x{s}.yaml", "model": recipe["model"], "data": dict(recipe["data"], hr_crop=crop),
               "train": recipe["train"]}
    header = (f"# The CPU-sized MoCoLSK-Net recipe of configs/cpu_mocolsk_x8.yaml on {out} at x{s} (written by\n"
              f"# `prepare.py`; data and statistics from base_x{s}.yaml). On a 2-core CPU it trains in well under an\n"
              f"# hour (docs/scenes.md#what-training-costs-and-a-recipe-for-a-cpu):\n"
              f"#   python train.py {out}/cpu_mocolsk_x{s}.yaml\n")
    _write_yaml(os.path.join(out, f"cpu_mocolsk_x{s}.yaml"), content, header)


MODE_WORDS = {"scenes": "", "coarse": "coarse ", "real_ratio": "real-ratio (no fine truth) coarse "}  # format_summary


def format_summary(summary):
    """The summary dict of `prepare` as a few readable lines."""
    s = summary
    how = "Wald's protocol (block mean)" if s["degradation"] == "wald" else \
        f"Gaussian blur (sigma {s['sigma'] or 'scale/2'} px) + decimation"
    if s["mode"] == "real_ratio":
        how = "none (the coarse LST is the input)"
    auto = " (--tile auto)" if s["tile_auto"] else ""
    lines = [f"prepared {s['out']}: {len(s['scenes'])} {MODE_WORDS[s['mode']]}scene(s) of "
             f"{LST_QUANTITIES[s['lst_quantity']]}, tile {s['tile']}{auto} step {s['step']}, split blocks {s['block']} px, "
             f"x{'/x'.join(map(str, s['scales']))} by {how}"]
    for r in s["scenes"]:
        px = f"{r['pixel_size']:g} m pixels" if r["pixel_size"] else "not georeferenced"
        lines.append(f"  {r['name']}: {r['shape'][0]} x {r['shape'][1]} ({px}), {r['positions']} tile positions: "
                     f"{r['kept']} kept, {r['straddling']} straddle two splits, {r['nodata']} over --max-nodata; "
                     f"kept tiles cover {100 * r['covered']:.1f} % of its pixels ({100 * r['covered_valid']:.1f} % of "
                     f"the valid ones); {r['margin'][0]} rows and {r['margin'][1]} columns at the bottom and right "
                     f"edges lie in no tile position")
        if "grids" in r:
            lines.append(f"    coarse {r['grids']['coarse']}; fine {r['grids']['fine']}; coarse pixels used "
                         f"(row, col, rows, cols): {r['grids']['crop']}")
        if "guidance_how" in r:
            lines.append(f"    guidance brought onto the coarse grid refined by {s['scales'][0]} by {r['guidance_how']}")
    lines.append("  blocks: " + ", ".join(f"{k} {v}" for k, v in s["blocks"].items()))
    d, n = s["dropped"], max(s["positions"], 1)
    lines.append("  tiles:  " + ", ".join(f"{k} {v}" for k, v in s["tiles"].items()) +
                 f" of {s['positions']} positions; dropped: {d['straddling']} ({100 * d['straddling'] / n:.0f} %) "
                 f"straddling two splits' blocks, {d['nodata']} ({100 * d['nodata'] / n:.0f} %) over --max-nodata "
                 f"{s['max_nodata']}")
    if d["straddling"]:
        lines.append(f"          (straddling positions are overlapping windows across a split border: with --block "
                     f"= --tile their pixels are in kept tiles; --step {s['tile']} has none)")
    lines.append(f"  bands:  {', '.join(s['bands'] or [])}")
    lines.append(f"  wrote {s['out']}/stats.yaml, " + ", ".join(f"base_x{x}.yaml" for x in s["scales"]) + ", " +
                 ", ".join(f"cpu_mocolsk_x{x}.yaml" for x in s["scales"]) +
                 ", prepare.yaml, split/{train,val,test,trainval}.txt")
    lines += [f"  warning: {w}" for w in s["warnings"]]
    return "\n".join(lines)


def _tile_arg(text):
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of pixels or auto") from None


@command
def main(argv=None):
    """`python prepare.py ...`; defaults are prepare()'s and coarsen()'s."""
    default = {k: v.default for k, v in inspect.signature(prepare).parameters.items()}
    p = argparse.ArgumentParser(prog="prepare.py", description=__doc__.split("\n")[0])
    p.add_argument("--lst", action="append", default=[], help="LST scene GeoTIFF (K); repeat for several scenes")
    p.add_argument("--guidance", action="append", default=[], help="its co-registered guidance GeoTIFF; one per --lst")
    p.add_argument("--scenes", default=None, help="text file with one 'LST_PATH GUIDANCE_PATH' pair per line")
    p.add_argument("--coarse-lst", action="append", default=[],
                   help="coarse mode: a coarse LST scene (any grid) whose --guidance is finer (any grid): the coarse "
                        "LST becomes the target (reduced-resolution training)")
    p.add_argument("--real-ratio", action="store_true",
                   help="with --coarse-lst and one --scale S: no fine truth; the coarse LST is the INPUT and the "
                        "guidance is brought onto its grid refined by S (train with train.objective=consistency)")
    p.add_argument("--min-valid", type=float, default=default["min_valid"],
                   help="coarse mode: fraction of a coarse pixel the guidance must cover (default 0.5)")
    p.add_argument("--coarsen", default=None, metavar="LST",
                   help="coarsen this LST scene by --scale into the file --out (with --guidance: cut it the same way)")
    p.add_argument("--guidance-out", default=None, help="--coarsen: where the cut guidance goes "
                                                        "(default <out stem>_guidance.tif)")
    p.add_argument("--edge", choices=["crop", "pad"], default="crop",
                   help="--coarsen: crop to a multiple of the scale from the top-left (default) or pad with NaN")
    p.add_argument("--band-names", nargs="+", default=None, help="guidance band names (default: the file's)")
    p.add_argument("--out", required=True, help="output dataset folder (must not hold a dataset yet); --coarsen: a file")
    p.add_argument("--tile", type=_tile_arg, default=default["tile"],
                   help="HR tile side in pixels (a multiple of every scale), or auto (default: the largest of "
                        f"{'/'.join(map(str, TILE_SIZES))} that gives {MIN_BLOCKS} split blocks)")
    p.add_argument("--step", type=int, default=default["step"], help="tile step in pixels (default tile/2: 50%% overlap)")
    p.add_argument("--block", type=int, default=default["block"], help="split block side in pixels (default --tile)")
    p.add_argument("--scales", "--scale", type=int, nargs="+", default=list(default["scales"]),
                   help="integer scales (default 2 4 8; 16, 32, ... too); --coarsen: one")
    p.add_argument("--split", type=float, nargs=3, default=list(default["split"]), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=default["seed"], help="seed of the block shuffle")
    p.add_argument("--max-nodata", type=float, default=default["max_nodata"],
                   help="skip tiles with a larger no-data fraction")
    p.add_argument("--lr-max-nodata", type=float, default=default["lr_max_nodata"],
                   help="a coarse pixel is NaN when a larger fraction of its fine pixels is NaN")
    p.add_argument("--degradation", choices=["wald", "gaussian"], default=default["degradation"],
                   help="wald: block mean (default); gaussian: Gaussian blur + decimation")
    p.add_argument("--sigma", type=float, default=default["sigma"], help="Gaussian sigma in HR pixels (default scale/2)")
    args = p.parse_args(argv)
    if args.coarsen:
        if args.lst or args.scenes or args.coarse_lst or len(args.guidance) > 1:
            raise DataError("--coarsen LST takes one scene (and at most one --guidance); --lst / --scenes / "
                            "--coarse-lst make datasets")
        if len(args.scales) != 1:
            raise DataError(f"--coarsen: give one --scale, not {args.scales}")
        print(format_coarsen(coarsen(args.coarsen, args.out, args.scales[0], args.edge,
                                     args.guidance[0] if args.guidance else None, args.guidance_out,
                                     args.degradation, args.lr_max_nodata, args.sigma)))
        return
    if args.real_ratio and not args.coarse_lst:
        raise DataError("--real-ratio goes with --coarse-lst C --guidance G --scale S: the coarse LST at the ratio "
                        "the model is applied at")
    if args.coarse_lst and (args.lst or args.scenes):
        raise DataError("--coarse-lst (coarse mode) and --lst / --scenes (fine scenes) make different datasets: "
                        "give one or the other")
    if args.coarse_lst:
        scenes = scenes_from_args(args.coarse_lst, args.guidance, None, flag="--coarse-lst")
    else:
        scenes = scenes_from_args(args.lst, args.guidance, args.scenes)
    summary = prepare(scenes, args.out, band_names=args.band_names, tile=args.tile, step=args.step, block=args.block,
                      scales=args.scales, split=args.split, seed=args.seed, max_nodata=args.max_nodata,
                      lr_max_nodata=args.lr_max_nodata, degradation=args.degradation, sigma=args.sigma,
                      coarse=bool(args.coarse_lst), min_valid=args.min_valid, progress=True, real_ratio=args.real_ratio)
    print(format_summary(summary))


if __name__ == "__main__":
    main()
