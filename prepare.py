"""Bring your own scenes: cut whole co-registered LST + guidance scenes into a GrokLST-layout dataset.

    python prepare.py --lst lst_30m.tif --guidance bands_30m.tif --out data/myregion
    python prepare.py --lst a_lst.tif --guidance a_gui.tif --lst b_lst.tif --guidance b_gui.tif \\
        --out data/myregion --tile 512 --step 256 --scales 2 4 8 --split 0.6 0.1 0.3 --seed 0 --max-nodata 0.0
    python prepare.py --scenes scenes.txt --out data/myregion    # one "LST GUIDANCE" pair per line

Input, per scene: an LST GeoTIFF (1 band, Kelvin; no-data as NaN or the GDAL_NODATA value) and a
guidance GeoTIFF on the same pixel grid (C bands). Band names come from --band-names, else from
the file's band descriptions, else the 10 GrokLST bands (data.BANDS) when it has 10 unnamed bands.

Output (data.py's layout; "30m" names the input grid whatever its pixel size, 60m/120m/240m the
grids 2/4/8 times coarser):

    <out>/30m/lst/<scene>_r<row>_c<col>.tif   HR LST tile (tile x tile pixels), own georeferencing
    <out>/30m/guidance/<name>.tif             guidance tile, C named bands
    <out>/{60m,120m,240m}/lst/<name>.tif      LR LST (tile/s pixels), pixel size x2/x4/x8, same corner
    <out>/split/{train,val,test,trainval}.txt
    <out>/stats.yaml                          training-split statistics, shaped like a config's `norm:`
    <out>/base_x{2,4,8}.yaml                  `data:` + `norm:` of a config on this dataset (a `_base_`)
    <out>/prepare.yaml                        the arguments and the summary counts

Tiles start every `step` pixels from each scene's top-left corner (50 % overlap for step = tile/2,
as the GrokLST dataset: 512 / 256); a margin narrower than a tile at the right and bottom edges is
left out. A tile is skipped when more than `max_nodata` of its pixels are no-data (LST or any
guidance band not finite).

Split rule (spatial blocks, not tiles): each scene is partitioned into square blocks of `block`
pixels (default: the tile size; a multiple of the tile and of the step, so block edges lie on the
tile-step grid). The blocks of all scenes are shuffled with `seed` and assigned whole to
train / val / test in the `split` fractions (of blocks). A tile is kept only if every block it
covers has the same split; a tile straddling two splits is dropped (counted in the summary). So
tiles of different splits never share a pixel: no test or val tile overlaps a training tile; tiles
overlap only within a split. Neighbouring blocks of different splits still touch along an edge
(spatial autocorrelation): a larger --block keeps more overlapping tiles and makes such edges rarer.

Degradation: Wald's protocol by default (LR = mean over s x s blocks, data.block_mean, as the
GrokLST dataset); --degradation gaussian blurs with a Gaussian (sigma = s/2 HR pixels by default)
and samples the block centres instead. Either way a coarse pixel is NaN when more than
`lr_max_nodata` of its s x s fine pixels are NaN (default 0: any).
"""
import argparse
import functools
import inspect
import os
import re
import sys

import numpy as np
import yaml

from data import LR_FOLDERS, block_mean, block_nan_fraction, compute_stats, guidance_names, read_lst_geotiff, read_scene_list
from errors import DataError, command
from geotiff import check_grids, geo_transform, geo_window, read_geotiff, read_header
from layout import make_layout, write_sample, write_splits

SPLITS = ("train", "val", "test")


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


def assign_blocks(shapes, block, fractions=(0.6, 0.1, 0.3), seed=0):
    """Spatial blocks -> split. shapes: [(H, W)] per scene. Returns {(scene, block_row, block_col): split}.

    Blocks are block x block pixels from each scene's top-left corner, over the part that tiles
    cover. All blocks are shuffled together (numpy default_rng(seed)) and cut in the train / val /
    test fractions (rounded; a split with a positive fraction gets at least one block when there
    are enough blocks). The result is a pure function of its arguments.
    """
    keys = [(k, i, j) for k, (h, w) in enumerate(shapes)
            for i in range(-(-h // block)) for j in range(-(-w // block))]
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


def tile_split(blocks, scene, row, col, tile, block):
    """Split of the tile at (row, col) of `scene`, or None when it covers blocks of different splits."""
    found = {blocks[(scene, i, j)]
             for i in range(row // block, (row + tile - 1) // block + 1)
             for j in range(col // block, (col + tile - 1) // block + 1)}
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------- scenes


def read_scene(lst_path, guidance_path, band_names=None):
    """One scene -> (lst (H, W) Kelvin, guidance (C, H, W), band names, geo), no-data as NaN.

    The two rasters must share the pixel grid (same size and, when both are georeferenced, the
    same corner and pixel size). geo: the LST's georeferencing, else the guidance's ({} if none).
    Band names: --band-names, else the file's (data.guidance_names).
    """
    lst, lst_info = read_lst_geotiff(lst_path)
    gui, gui_info = read_geotiff(guidance_path)
    check_grids(lst_path, lst.shape, lst_info["geo"], guidance_path, gui.shape[1:], gui_info["geo"], scale=1)
    if band_names is not None:
        if len(band_names) != len(gui):
            raise DataError(f"{guidance_path}: {len(gui)} bands but {len(band_names)} band names {list(band_names)}")
        names = guidance_names(list(band_names), len(gui), guidance_path)
    else:
        names = guidance_names(gui_info["bands"], len(gui), guidance_path)
    return lst, gui, names, lst_info["geo"] or gui_info["geo"]


def scenes_from_args(lst=(), guidance=(), scene_list=None):
    """--lst / --guidance (repeated, paired in order) plus --scenes LIST -> [(lst_path, guidance_path)]."""
    lst, guidance = list(lst or ()), list(guidance or ())
    if len(lst) != len(guidance):
        raise DataError(f"{len(lst)} --lst but {len(guidance)} --guidance: give one guidance file per "
                        f"LST scene, in the same order")
    scenes = list(zip(lst, guidance))
    for lst_path, guidance_paths, where in read_scene_list(scene_list) if scene_list else []:
        if len(guidance_paths) != 1:  # the grammar of data.read_scene_list, with one guidance file per scene
            raise DataError(f"{where}: expected `LST_PATH GUIDANCE_PATH` (one multi-band guidance file), got "
                            f"{1 + len(guidance_paths)} paths")
        scenes.append((lst_path, guidance_paths[0]))
    if not scenes:
        raise DataError("no scenes: give --lst LST.tif --guidance GUIDANCE.tif (repeatable) or --scenes LIST")
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


# --------------------------------------------------------------------------- prepare


def check_arguments(tile, step, block, scales, split, max_nodata, lr_max_nodata, degradation):
    bad = [s for s in scales if s not in LR_FOLDERS]
    if not scales or bad:
        raise DataError(f"--scales {scales}: GrokLST has scales {sorted(LR_FOLDERS)}")
    if tile <= 0 or tile % max(scales):
        raise DataError(f"--tile {tile}: must be a positive multiple of the largest scale {max(scales)}")
    if step <= 0:
        raise DataError(f"--step {step}: must be positive")
    if block <= 0 or block % tile or block % step:
        raise DataError(f"--block {block}: must be a multiple of --tile {tile} and of --step {step} "
                        f"(split blocks lie on the tile-step grid)")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6 or split[0] <= 0:
        raise DataError(f"--split {list(split)}: three fractions train val test, >= 0, summing to 1, train > 0")
    for flag, v in (("--max-nodata", max_nodata), ("--lr-max-nodata", lr_max_nodata)):
        if not 0 <= v <= 1:
            raise DataError(f"{flag} {v}: a fraction in [0, 1]")
    if degradation not in ("wald", "gaussian"):
        raise DataError(f"--degradation {degradation!r}: expected wald or gaussian")


def cut_scene(out, k, name, lst, gui, bands, geo, blocks, tile, step, block, scales, max_nodata, degrade_lr):
    """Write the kept tiles of scene number k; returns ({split: [tile names]}, its summary row)."""
    invalid = ~(np.isfinite(lst) & np.isfinite(gui).all(0))
    origins = tile_origins(*lst.shape, tile, step)
    row = {"name": name, "shape": list(lst.shape),
           "pixel_size": float(geo_transform(geo)[1]) if geo_transform(geo) else None,
           "positions": len(origins), "kept": 0, "straddling": 0, "nodata": 0}
    tiles = {k_: [] for k_ in SPLITS}
    for r, c in origins:
        which = tile_split(blocks, k, r, c, tile, block)
        if which is None:
            row["straddling"] += 1
        elif invalid[r:r + tile, c:c + tile].mean() > max_nodata:
            row["nodata"] += 1
        else:
            tname = f"{name}_r{r:05d}_c{c:05d}"
            write_sample(out, tname, lst[r:r + tile, c:c + tile], gui[:, r:r + tile, c:c + tile], bands,
                         geo_window(geo, r, c), scales, degrade_lr)
            tiles[which].append(tname)
            row["kept"] += 1
    return tiles, row


def prepare(scenes, out, band_names=None, tile=512, step=256, block=None, scales=(2, 4, 8),
            split=(0.6, 0.1, 0.3), seed=0, max_nodata=0.0, lr_max_nodata=0.0, degradation="wald",
            sigma=None, progress=False):
    """Write a GrokLST-layout dataset from whole scenes (see the module docstring for the layout,
    the tiling and the split rule). scenes: [(lst_path, guidance_path)]; tile, step, block in HR
    pixels; max_nodata: largest no-data fraction of a kept tile; lr_max_nodata: largest NaN
    fraction of the fine pixels under a finite coarse pixel. Returns the summary dict (also
    written to <out>/prepare.yaml; format_summary prints it)."""
    block = block or tile
    scales = sorted(set(scales))
    split = [float(f) for f in split]
    check_arguments(tile, step, block, scales, split, max_nodata, lr_max_nodata, degradation)
    hr_folder = os.path.join(out, "30m", "lst")
    if os.path.isdir(hr_folder) and os.listdir(hr_folder):
        raise DataError(f"{out}: already holds a dataset; choose another --out or delete it")
    # The split is decided on blocks of all scenes before any pixel is read (headers give the sizes),
    # so it does not depend on which tiles turn out to hold no-data.
    names = scene_names([p for p, _ in scenes])
    shapes = [read_header(p)["shape"][1:] for p, _ in scenes]
    blocks = assign_blocks([(tiled_extent(h, tile, step), tiled_extent(w, tile, step)) for h, w in shapes],
                           block, split, seed)
    make_layout(out, scales)
    degrade_lr = functools.partial(degrade, method=degradation, max_nan_fraction=lr_max_nodata, sigma=sigma)
    tiles, report, bands, warnings = {k: [] for k in SPLITS}, [], None, []
    for k, ((lst_path, gui_path), name) in enumerate(zip(scenes, names)):
        lst, gui, scene_bands, geo = read_scene(lst_path, gui_path, band_names)
        if bands is None:
            bands = scene_bands
        elif scene_bands != bands:
            if sorted(scene_bands) != sorted(bands):
                raise DataError(f"{gui_path}: bands {scene_bands} differ from the first scene's {bands}")
            gui = gui[[scene_bands.index(b) for b in bands]]
        scene_tiles, row = cut_scene(out, k, name, lst, gui, bands, geo, blocks, tile, step, block, scales,
                                     max_nodata, degrade_lr)
        report.append({"name": name, "lst": lst_path, "guidance": gui_path, **row})
        for split_name, t in scene_tiles.items():
            tiles[split_name] += t
        if not row["positions"]:
            warnings.append(f"scene {name} ({lst.shape[0]} x {lst.shape[1]}) is smaller than a tile: no tiles")
        if progress:
            print(f"  {name}: {row['kept']} of {row['positions']} tile positions kept", file=sys.stderr, flush=True)
        del lst, gui
    write_splits(out, tiles)
    summary = {
        "out": out, "scenes": report, "bands": bands,
        "tile": tile, "step": step, "block": block, "scales": scales, "split": split, "seed": seed,
        "max_nodata": max_nodata, "lr_max_nodata": lr_max_nodata, "degradation": degradation,
        "sigma": sigma if degradation == "gaussian" else None,
        "blocks": {k: sum(v == k for v in blocks.values()) for k in SPLITS},
        "tiles": {k: len(tiles[k]) for k in SPLITS},
        "dropped_straddling": sum(r["straddling"] for r in report),
        "skipped_nodata": sum(r["nodata"] for r in report),
        "warnings": warnings,
    }
    for k in SPLITS[1:]:
        if split[SPLITS.index(k)] > 0 and not tiles[k]:
            warnings.append(f"split {k} has no tiles: use larger or more scenes, or a smaller --block")
    if not tiles["train"]:
        _write_yaml(os.path.join(out, "prepare.yaml"), summary, "# prepare.py: arguments and counts\n")
        raise DataError(f"{out}: no training tiles (of {sum(r['positions'] for r in report)} positions, "
                        f"{summary['skipped_nodata']} over --max-nodata {max_nodata}, "
                        f"{summary['dropped_straddling']} straddling splits)")
    stats = compute_stats(out, "train", bands)
    write_stats(out, stats, len(tiles["train"]))
    for s in scales:
        write_base_config(out, s, bands, stats)
    for band, v in stats["guidance"].items():
        if not v["std"] > 0:
            warnings.append(f"band {band} is constant on the training split (std 0): z-score needs std > 0; "
                            f"edit its std in base_x*.yaml or drop the band")
    _write_yaml(os.path.join(out, "prepare.yaml"), summary, "# prepare.py: arguments and counts\n")
    return summary


# --------------------------------------------------------------------------- outputs


def _write_yaml(path, content, header=""):
    """YAML with leaf mappings and lists in flow style ({mean: .., std: ..}), as the configs."""
    with open(path, "w") as f:
        f.write(header + yaml.safe_dump(content, sort_keys=False, default_flow_style=None, width=120))


def _lst_norm(stats):
    return {"method": "zscore", **stats}


def write_stats(out, stats, n_train):
    """<out>/stats.yaml: data.compute_stats of the training split (the numbers `groklst.py stats
    OUT --split train` prints), shaped like a config's `norm:` with LST per resolution."""
    content = {"lst": {res: _lst_norm(v) for res, v in stats["lst"].items()},
               "guidance": {"method": "zscore", "stats": stats["guidance"]}}
    header = (f"# Training-split statistics of {out} ({n_train} tiles; pixels of overlapping tiles count once per\n"
              f"# tile, as `python groklst.py stats {out} --split train`), written by `prepare.py`.\n"
              f"# Shaped like a config's `norm:` section, with LST per resolution: for scale s use the LR\n"
              f"# resolution's entry as norm.lst (x2: 60m, x4: 120m, x8: 240m), as the original configs do,\n"
              f"# and `guidance:` as it is. base_x{{2,4,8}}.yaml in this folder already hold exactly that.\n"
              f"# min / max are there for method: minmax.\n")
    _write_yaml(os.path.join(out, "stats.yaml"), content, header)


def write_base_config(out, s, bands, stats):
    """<out>/base_x{s}.yaml: the data and norm sections of a config for this dataset at scale s."""
    res = LR_FOLDERS[s]
    content = {"data": {"root": out, "scale": s, "guidance_bands": list(bands),
                        "train_split": "train", "val_split": "val", "test_split": "test"},
               "norm": {"lst": _lst_norm(stats["lst"][res]),
                        "guidance": {"method": "zscore", "stats": stats["guidance"]}}}
    path = os.path.join(out, f"base_x{s}.yaml")
    ref = path if os.path.isabs(path) else os.path.relpath(path, "configs")  # `_base_` is relative to the config
    header = (f"# {out} at x{s} ({res} LST -> 30m), written by `prepare.py`: training-split statistics,\n"
              f"# LST at the LR resolution ({res}) as in the original configs. data.root is relative to the\n"
              f"# directory train.py / test.py run in. Use it as the `_base_` of a model config\n"
              f"# (`_base_: {ref}` in configs/) or directly:\n"
              f"#   python train.py {out}/base_x{s}.yaml model.name=mocolsk work_dir=work_dirs/NAME\n")
    _write_yaml(path, content, header)


def format_summary(summary):
    """The summary dict of `prepare` as a few readable lines."""
    s = summary
    how = "Wald's protocol (block mean)" if s["degradation"] == "wald" else \
        f"Gaussian blur (sigma {s['sigma'] or 'scale/2'} px) + decimation"
    lines = [f"prepared {s['out']}: {len(s['scenes'])} scene(s), tile {s['tile']} step {s['step']}, "
             f"split blocks {s['block']} px, x{'/x'.join(map(str, s['scales']))} by {how}"]
    for r in s["scenes"]:
        px = f"{r['pixel_size']:g} m pixels" if r["pixel_size"] else "not georeferenced"
        lines.append(f"  {r['name']}: {r['shape'][0]} x {r['shape'][1]} ({px}), {r['positions']} tile positions: "
                     f"{r['kept']} kept, {r['straddling']} straddle two splits, {r['nodata']} over --max-nodata")
    lines.append("  blocks: " + ", ".join(f"{k} {v}" for k, v in s["blocks"].items()))
    lines.append("  tiles:  " + ", ".join(f"{k} {v}" for k, v in s["tiles"].items()) +
                 f" (dropped: {s['dropped_straddling']} straddling, {s['skipped_nodata']} no-data)")
    lines.append(f"  bands:  {', '.join(s['bands'] or [])}")
    lines.append(f"  wrote {s['out']}/stats.yaml, " + ", ".join(f"base_x{x}.yaml" for x in s["scales"]) +
                 ", prepare.yaml, split/{train,val,test,trainval}.txt")
    lines += [f"  warning: {w}" for w in s["warnings"]]
    return "\n".join(lines)


@command
def main(argv=None):
    """`python prepare.py ...`; defaults are prepare()'s."""
    default = {k: v.default for k, v in inspect.signature(prepare).parameters.items()}
    p = argparse.ArgumentParser(prog="prepare.py", description=__doc__.split("\n")[0])
    p.add_argument("--lst", action="append", default=[], help="LST scene GeoTIFF (K); repeat for several scenes")
    p.add_argument("--guidance", action="append", default=[], help="its co-registered guidance GeoTIFF; one per --lst")
    p.add_argument("--scenes", default=None, help="text file with one 'LST_PATH GUIDANCE_PATH' pair per line")
    p.add_argument("--band-names", nargs="+", default=None, help="guidance band names (default: the file's)")
    p.add_argument("--out", required=True, help="output dataset folder (must not hold a dataset yet)")
    p.add_argument("--tile", type=int, default=default["tile"], help="HR tile side in pixels (multiple of the largest scale)")
    p.add_argument("--step", type=int, default=default["step"], help="tile step in pixels (tile/2: 50%% overlap)")
    p.add_argument("--block", type=int, default=default["block"], help="split block side in pixels (default --tile)")
    p.add_argument("--scales", type=int, nargs="+", default=list(default["scales"]))
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
    summary = prepare(scenes_from_args(args.lst, args.guidance, args.scenes), args.out, band_names=args.band_names,
                      tile=args.tile, step=args.step, block=args.block, scales=args.scales, split=args.split,
                      seed=args.seed, max_nodata=args.max_nodata, lr_max_nodata=args.lr_max_nodata,
                      degradation=args.degradation, sigma=args.sigma, progress=True)
    print(format_summary(summary))


if __name__ == "__main__":
    main()
