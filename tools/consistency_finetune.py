"""The measured table of docs/notruth.md, strategy 2: a trained model fine-tuned with train.objective=consistency
on the very tiles or scene it then sharpens (their coarse LST and guidance only), against the model as
trained, the consistency post-process, dms and bicubic, scored against the fine truth the fine-tuning never read.

    python tools/consistency_finetune.py CHECKPOINT [--iters 100] [--batch 2] [--lr 2e-4] [--texture 0.1] \
        [--work work_dirs/cons] [--only demo|scene]

CHECKPOINT: a MoCoLSK-Net trained by `python train.py configs/demo_mocolsk_x8.yaml` (the config the fine-tuning
keeps, norm: included). Two experiments, each fine-tuning twice (consistency alone, consistency + texture):

  demo    the demo test split (`python groklst.py make-demo data/demo`): train.py with data.train_split=test,
          which with the consistency objective reads the tiles' LR LST and guidance only (never 30m/lst,
          data.GrokLSTDataset truth='none'); scored per tile on the test split as test.py scores it.
  scene   a synthetic scene the model never saw (layout.synth_scene(512, 512, seed=11)): its 8-fold block means
          written as a 240 m GeoTIFF with the 30 m guidance, made a dataset without fine truth by
          `prepare.py --coarse-lst --real-ratio` (all tiles in train), fine-tuned on it, then the whole scene
          is downscaled (engine.downscale) and scored against the 30 m LST.

Each train.py command is printed before it runs; the table (markdown) is printed at the end and written to
<work>/table.md.
"""
import argparse
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import engine  # noqa: E402
import geotiff  # noqa: E402
import groklst  # noqa: E402
import layout  # noqa: E402
from data import BANDS, block_mean  # noqa: E402
from metrics import image_metrics_by_name  # noqa: E402

CONFIG = "configs/demo_mocolsk_x8.yaml"
SCENE_SEED, SCENE_SIZE, SCALE = 11, 512, 8


def run(args):
    """A script of the toolkit, printed, in the repository root; its output is kept in the log only."""
    print("$ python " + " ".join(args), flush=True)
    t = time.time()
    out = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    print(f"  ({time.time() - t:.0f} s)", flush=True)
    return out.stdout


def finetune(checkpoint, work_dir, overrides, iters, batch, lr, texture):
    """train.py from `checkpoint`'s weights with the consistency objective -> the fine-tuned last.pth."""
    args = ["train.py", CONFIG, *overrides, "data.val_split=null", "train.objective=consistency", f"train.batch_size={batch}",
            f"train.texture_weight={texture}", f"train.max_iters={iters}", f"train.restart_period={iters}",
            f"train.lr={lr}", "train.log_interval=25", f"work_dir={work_dir}", "--init", checkpoint, "--no-test",
            "--overwrite"]
    run(args)
    return os.path.join(work_dir, "last.pth")


def row(metrics):
    return {k: metrics[k] for k in ("RMSE", "MAE", "CONS")}


def demo_rows(checkpoint, tuned, device):
    """{row name: {RMSE, MAE, CONS}} on the demo test split, per tile then averaged (engine.evaluate)."""
    out = {}
    cfg = groklst.load_config(CONFIG)
    test = groklst.build_dataset(cfg, cfg["data"]["test_split"])
    normalizer = groklst.build_normalizer(cfg)
    for name, ckpt, consistency in [("pretrained", checkpoint, "none"),
                                    ("pretrained + consistency=bicubic (post-process)", checkpoint, "bicubic"),
                                    *[(label, path, "none") for label, path in tuned]]:
        model = groklst.load_model(cfg, ckpt, device)
        out[name] = row(engine.evaluate(model, normalizer, test, device, consistency=consistency)[0])
    for name in ("dms", "bicubic"):
        c = groklst.load_config(os.path.join(ROOT, "configs", f"demo_{name}_x8.yaml"))
        model = groklst.load_model(c, None, device)
        out[name] = row(engine.evaluate(model, groklst.build_normalizer(c), groklst.build_dataset(c, "test"), device)[0])
    return out


def write_scene(folder):
    """The synthetic scene: (truth (H, W) K, guidance (10, H, W)), written as lst_240m.tif and guidance_30m.tif."""
    lst, gui = layout.synth_scene(SCENE_SIZE, SCENE_SIZE, seed=SCENE_SEED)
    os.makedirs(folder, exist_ok=True)
    geotiff.write_geotiff(os.path.join(folder, "guidance_30m.tif"), gui, geotiff.make_geo(600000.0, 4200000.0, 30.0),
                          band_names=list(BANDS))
    geotiff.write_geotiff(os.path.join(folder, "lst_240m.tif"), block_mean(lst, SCALE),
                          geotiff.make_geo(600000.0, 4200000.0, 30.0 * SCALE), band_names=["lst"])
    return lst, gui


@torch.no_grad()
def scene_rows(checkpoint, tuned, lst, gui, device):
    """{row name: {RMSE, MAE, CONS}} of the whole scene against its 30 m truth."""
    lr = torch.from_numpy(block_mean(lst, SCALE))[None, None].to(device)
    g = torch.from_numpy(gui)[None].to(device)
    truth = torch.from_numpy(lst)[None, None].to(device)
    mask = torch.isfinite(truth)
    out = {}
    cfg = groklst.load_config(CONFIG)
    normalizer = groklst.build_normalizer(cfg)
    for name, ckpt, consistency in [("pretrained", checkpoint, "none"),
                                    ("pretrained + consistency=bicubic (post-process)", checkpoint, "bicubic"),
                                    *[(label, path, "none") for label, path in tuned]]:
        model = groklst.load_model(cfg, ckpt, device)
        pred = engine.downscale(model, normalizer, lr, g, consistency=consistency)
        out[name] = row(image_metrics_by_name(pred, truth, mask, lr)[0])
    for name in ("dms", "bicubic"):
        c = groklst.load_config(os.path.join(ROOT, "configs", f"demo_{name}_x8.yaml"))
        model = groklst.load_model(c, None, device)
        pred = engine.downscale(model, groklst.build_normalizer(c), lr, g if model.kind == "gisr" else None)
        out[name] = row(image_metrics_by_name(pred, truth, mask, lr)[0])
    return out


def table(title, rows):
    lines = [f"| {title} | RMSE K | MAE K | CONS K |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['RMSE']:.3f} | {m['MAE']:.3f} | {m['CONS']:.3f} |" for name, m in rows.items()]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a MoCoLSK-Net of configs/demo_mocolsk_x8.yaml")
    p.add_argument("--iters", type=int, default=100, help="fine-tuning iterations (default 100)")
    p.add_argument("--batch", type=int, default=2, help="fine-tuning batch size (default 2 crops of 64 x 64)")
    p.add_argument("--lr", type=float, default=2e-4, help="fine-tuning learning rate (default 2e-4)")
    p.add_argument("--texture", type=float, default=0.1, help="train.texture_weight of the second fine-tuning")
    p.add_argument("--work", default="work_dirs/cons", help="work dirs and the scene's files go here")
    p.add_argument("--only", choices=["demo", "scene"], default=None, help="one of the two experiments")
    args = p.parse_args(argv)
    device = "cpu"
    torch.set_grad_enabled(True)
    out = []
    labels = [("fine-tuned: consistency", 0.0), (f"fine-tuned: consistency + texture {args.texture:g}", args.texture)]
    if args.only in (None, "demo"):
        tuned = [(label, finetune(args.checkpoint, os.path.join(args.work, f"demo_tw{w:g}"),
                                  ["data.train_split=test"], args.iters, args.batch, args.lr, w)) for label, w in labels]
        out.append(table("demo test split (14 tiles, x8)", demo_rows(args.checkpoint, tuned, device)))
        print(out[-1], flush=True)
    if args.only in (None, "scene"):
        folder = os.path.join(args.work, "scene")
        lst, gui = write_scene(folder)
        dataset = os.path.join(folder, "rr_x8")
        if not os.path.isdir(dataset):
            run(["prepare.py", "--coarse-lst", os.path.join(folder, "lst_240m.tif"), "--guidance",
                 os.path.join(folder, "guidance_30m.tif"), "--scale", str(SCALE), "--real-ratio", "--tile", "128",
                 "--split", "1", "0", "0", "--out", dataset])
        tuned = [(label, finetune(args.checkpoint, os.path.join(args.work, f"scene_tw{w:g}"),
                                  [f"data.root={dataset}", "data.cache=false"], args.iters, args.batch, args.lr, w))
                 for label, w in labels]
        out.append(table(f"synthetic scene {SCENE_SIZE} x {SCENE_SIZE} (seed {SCENE_SEED}, x8)",
                         scene_rows(args.checkpoint, tuned, lst, gui, device)))
        print(out[-1], flush=True)
    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(args.work, "table.md"), "w") as f:
        f.write("\n\n".join(out) + "\n")


if __name__ == "__main__":
    main()
