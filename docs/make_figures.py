"""Regenerate every figure of the README and docs/ (docs/figures/*.png) with the toolkit's own commands.

    python docs/make_figures.py all                 # everything: demo data, the runs, every figure (CPU)
    python docs/make_figures.py all --reuse-runs    # keep work_dirs/ runs that already finished
    python docs/make_figures.py wald data/demo tile_001 docs/figures/wald.png
    python docs/make_figures.py histograms configs/demo_mocolsk_x8.yaml docs/figures/histograms.png
    python docs/make_figures.py errors data/demo docs/figures/errors.png work_dirs/pred_bicubic work_dirs/pred_mocolsk
    python docs/make_figures.py scene data/scene    # a demo-sized synthetic scene as GeoTIFFs (for predict.py)

Run from the repository root. `all` prints each command before running it; the tutorial
(docs/tutorial.md) gives the same commands one step at a time. The drawing itself is in figures.py;
this script only reads data with the library, calls those functions and keeps the PNGs small
(every PNG is re-encoded with a 256-colour palette when it exceeds 200 KB).
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import figures  # noqa: E402
import groklst  # noqa: E402
from data import BANDS, LR_FOLDERS, Normalizer, block_mean, find_raster, read_lst  # noqa: E402
from errors import command  # noqa: E402
from geotiff import make_geo, read_geotiff, write_geotiff  # noqa: E402
from layout import synth_scene  # noqa: E402

FIG = "docs/figures"
MAX_BYTES = 200_000
SAMPLE = "tile_001"  # the demo test tile the panels show (a lake next to hot bare ground)


def shrink_png(path, limit=MAX_BYTES):
    """Re-encode a PNG with a 256-colour palette (Pillow, which matplotlib needs) when it exceeds limit."""
    if os.path.getsize(path) <= limit:
        return
    from PIL import Image
    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def wald(root, name, out):
    """30 m LST of one demo tile next to its 60/120/240 m block means (as stored by make-demo)."""
    hr = read_lst(find_raster(os.path.join(root, "30m", "lst"), name))[0]
    lr = {s: read_lst(find_raster(os.path.join(root, folder, "lst"), name))[0] for s, folder in sorted(LR_FOLDERS.items())}
    figures.wald_panel(out, hr, lr)


def histograms(config, out, split="train", overrides=()):
    """LST (240 m input) and two guidance bands of a split: raw, z-score and min-max with the
    config's statistics (data.Normalizer, the code path of training)."""
    cfg = groklst.load_config(config, overrides)
    bands = ["dem", "ndvi"]
    ds = groklst.build_dataset(cfg, split, bands=bands)
    lst = np.concatenate([ds[i]["lr_lst"].numpy().ravel() for i in range(len(ds))])
    gui = np.concatenate([ds[i]["hr_guidance"].numpy().reshape(len(bands), -1) for i in range(len(ds))], 1)
    zscore = Normalizer(cfg["norm"], bands)
    minmax_norm = {"lst": dict(cfg["norm"]["lst"], method="minmax"), "guidance": dict(cfg["norm"]["guidance"], method="minmax")}
    minmax = Normalizer(minmax_norm, bands)
    rows = []
    lst = lst[np.isfinite(lst)]
    t = torch.from_numpy(lst)
    rows.append(("LST 240 m", {"Kelvin": lst, "z-score": zscore.encode_lst(t).numpy(), "min-max": minmax.encode_lst(t).numpy()}))
    g = torch.from_numpy(gui)[:, :, None]  # (C, N, 1): encode_guidance wants (C, H, W)
    gz, gm = zscore.encode_guidance(g)[:, :, 0].numpy(), minmax.encode_guidance(g)[:, :, 0].numpy()
    units = {"dem": "m", "ndvi": "index"}
    for i, b in enumerate(bands):
        rows.append((b, {units[b]: gui[i], "z-score": gz[i], "min-max": gm[i]}))
    figures.histograms(out, rows)


def errors(root, out, pred_dirs):
    """Pooled prediction errors of test.py --save-dir GeoTIFF folders against the 30 m truth; each
    folder is labelled by its name and must hold the same samples."""
    gts, preds = None, {}
    for pred_dir in pred_dirs:
        names = sorted(os.path.splitext(f)[0] for f in os.listdir(pred_dir) if f.endswith(".tif"))
        if not names:
            sys.exit(f"{pred_dir}: no .tif predictions (python test.py CFG CKPT --save-dir {pred_dir})")
        if gts is None:
            gts = (names, np.concatenate([read_lst(find_raster(os.path.join(root, "30m", "lst"), n))[0].ravel()
                                          for n in names]))
        if names != gts[0]:
            sys.exit(f"{pred_dir}: holds other samples than {pred_dirs[0]}")
        label = os.path.basename(os.path.normpath(pred_dir))
        preds[label] = np.concatenate([read_geotiff(os.path.join(pred_dir, n + ".tif"))[0].ravel() for n in names])
    figures.error_panel(out, preds, gts[1])


def scene(out_dir, size=512, scale=8, seed=1):
    """A synthetic scene the demo model never saw (seed 1; the demo tiles are cut from seed 0):
    lst_240m.tif (input), bands_30m.tif (10 named guidance bands) and lst_30m_truth.tif, in UTM-like
    metres (geotiff.make_geo's default CRS, EPSG:32647, UTM 47N: the GrokLST region's zone)."""
    lst, gui = synth_scene(size, size, seed)
    os.makedirs(out_dir, exist_ok=True)
    geo = make_geo(600000.0, 4200000.0, 30.0)
    write_geotiff(os.path.join(out_dir, "lst_30m_truth.tif"), lst, geo)
    write_geotiff(os.path.join(out_dir, "bands_30m.tif"), gui, geo, band_names=BANDS)
    coarse = make_geo(600000.0, 4200000.0, 30.0 * scale)  # same corner, pixel x scale
    write_geotiff(os.path.join(out_dir, f"lst_{30 * scale}m.tif"), block_mean(lst, scale), coarse)
    print(f"wrote {out_dir}/lst_{30 * scale}m.tif, bands_30m.tif, lst_30m_truth.tif ({size}x{size} at 30 m)")


def run(cmd):
    print("+", cmd, flush=True)
    t0 = time.time()
    subprocess.run(cmd, shell=True, check=True, cwd=ROOT)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def all_figures(reuse_runs):
    """Every figure, in the order of the tutorial; most of the time goes to the four training runs."""
    demo = "configs/demo_mocolsk_x8.yaml"
    bic = "configs/demo_bicubic_x8.yaml"
    best = "work_dirs/demo_mocolsk_x8/best.pth"
    os.makedirs(os.path.join(ROOT, FIG), exist_ok=True)
    if not os.path.exists(os.path.join(ROOT, "data/demo/split/test.txt")):
        run("python groklst.py make-demo data/demo")
    short = "train.max_iters=150 train.restart_period=150 train.val_interval=50 train.log_interval=10"
    runs = {
        "work_dirs/demo_mocolsk_x8": f"python train.py {demo}",
        "work_dirs/tut_fusion_on": f"python train.py {demo} {short} work_dir=work_dirs/tut_fusion_on",
        "work_dirs/tut_fusion_off": f"python train.py {demo} {short} model.modality_fusion=false "
                                    "work_dir=work_dirs/tut_fusion_off",
        "work_dirs/tut_srcnn": f"python train.py {bic} model.name=srcnn work_dir=work_dirs/tut_srcnn",
    }
    for work_dir, cmd in runs.items():
        if not (reuse_runs and os.path.exists(os.path.join(ROOT, work_dir, "test_table.md"))):
            run(f"rm -rf {work_dir} && {cmd}")
    steps = [
        f"python docs/make_figures.py wald data/demo {SAMPLE} {FIG}/wald.png",
        f"python docs/make_figures.py histograms {demo} {FIG}/histograms.png",
        f"python test.py {bic} --figure {FIG}/bicubic.png --figure-samples {SAMPLE},tile_008 "
        "--out work_dirs/demo_bicubic_x8/test.json",
        f"python test.py {demo} {best} --figure {FIG}/demo_mocolsk.png --figure-samples {SAMPLE} --figure-guidance ndwi",
        f"python test.py {demo} {best} --figure {FIG}/guided_vs_sisr.png --figure-samples {SAMPLE} "
        f"--figure-models work_dirs/tut_srcnn/best.pth,{best}",
        f"python groklst.py plot-log work_dirs/demo_mocolsk_x8 --out {FIG}/demo_curves.png",
        f"python groklst.py plot-log work_dirs/tut_fusion_on work_dirs/tut_fusion_off --out {FIG}/ablation_curves.png",
        f"python test.py {bic} --save-dir work_dirs/pred_bicubic --out work_dirs/pred_bicubic.json",
        f"python test.py {demo} {best} --save-dir work_dirs/pred_mocolsk --out work_dirs/pred_mocolsk.json",
        f"python docs/make_figures.py errors data/demo {FIG}/errors.png work_dirs/pred_bicubic work_dirs/pred_mocolsk",
        "python docs/make_figures.py scene data/scene",
        f"python predict.py {demo} --checkpoint {best} --lst data/scene/lst_240m.tif --guidance data/scene/bands_30m.tif "
        f"--out data/scene/lst_30m_mocolsk.tif --png --overwrite && cp data/scene/lst_30m_mocolsk.png {FIG}/scene.png",
    ]
    for cmd in steps:
        run(cmd)
    for f in sorted(os.listdir(os.path.join(ROOT, FIG))):
        if f.endswith(".png"):
            path = os.path.join(ROOT, FIG, f)
            shrink_png(path)
            print(f"{FIG}/{f}: {os.path.getsize(path) / 1000:.0f} KB")


@command
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("all", help="every figure (runs the demo trainings first)")
    s.add_argument("--reuse-runs", action="store_true", help="keep finished runs under work_dirs/")
    s = sub.add_parser("wald", help="Wald's protocol on one tile")
    s.add_argument("root")
    s.add_argument("name")
    s.add_argument("out")
    s = sub.add_parser("histograms", help="LST and guidance before/after z-score and min-max")
    s.add_argument("config")
    s.add_argument("out")
    s.add_argument("--split", default="train")
    s.add_argument("overrides", nargs="*", help="config overrides key.sub=value (e.g. data.root=...)")
    s = sub.add_parser("errors", help="error histograms and scatter of test.py --save-dir predictions")
    s.add_argument("root")
    s.add_argument("out")
    s.add_argument("pred_dirs", nargs="+")
    s = sub.add_parser("scene", help="a demo-sized synthetic scene as GeoTIFFs")
    s.add_argument("out_dir")
    s.add_argument("--size", type=int, default=512)
    s.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if a.cmd == "all":
        all_figures(a.reuse_runs)
    elif a.cmd == "wald":
        wald(a.root, a.name, a.out)
    elif a.cmd == "histograms":
        histograms(a.config, a.out, a.split, a.overrides)
    elif a.cmd == "errors":
        errors(a.root, a.out, a.pred_dirs)
    elif a.cmd == "scene":
        scene(a.out_dir, a.size, seed=a.seed)
    if a.cmd != "all" and a.cmd != "scene":
        shrink_png(a.out)
        print(f"wrote {a.out} ({os.path.getsize(a.out) / 1000:.0f} KB)")


if __name__ == "__main__":
    main()
