"""Evaluate a model on a dataset split: RMSE, MAE, BIAS, CC, RSD in Kelvin (mean over images).

    python test.py configs/bicubic_x8.yaml                                  # baselines need no checkpoint
    python test.py configs/mocolsk_x8.yaml work_dirs/mocolsk_x8/best.pth [--split test] [--save-dir DIR]
    python test.py configs/mocolsk_x8.yaml CKPT data.root=data/groklst       # key=value overrides
    torchrun --standalone --nproc_per_node=4 test.py configs/mocolsk_x8.yaml CKPT   # sharded, same numbers

Prints a markdown table and writes it as JSON next to the checkpoint (<ckpt>.<split>.json), or
under the work dir for baselines. --save-dir writes each prediction as a float32 GeoTIFF (K).

    python test.py --models work_dirs [--split test] [--out table.md]   # Table IX of every trained run

    python test.py CFG CKPT --figure fig.png [--figure-samples NAME1,NAME2] [--figure-models A,B,...]
                            [--figure-guidance dem]

--figure (needs matplotlib) draws, per sample (default: the first 2 of the split), the LR input,
bicubic, each model, the ground truth and the |error| of the first model, on one Kelvin colour
scale with a colour bar and a zoomed inset; --figure-guidance BAND adds that 30 m band (grey).
--figure-models compares several models side by side:
comma-separated CONFIG.yaml:CKPT, CONFIG.yaml (parameter-free, e.g. configs/bicubic_x8.yaml) or
CKPT alone (train.py stores its config in the checkpoint); default: the model tested. Data root,
scale and split always come from the command's CONFIG and --split.
"""
import argparse
import json
import os
import sys

import torch

import groklst
from data import Normalizer, hole_mask
from errors import ConfigError, DataError, command
from figures import draw_figure, require_matplotlib
from metrics import METRICS, format_table


def figure_models(spec, cfg, checkpoint):
    """--figure-models 'A,B,...' -> [(label, config, checkpoint)]. An entry is CONFIG.yaml:CKPT,
    CONFIG.yaml (parameter-free models) or CKPT (with the config train.py stored in it).
    Without a spec: the model being tested."""
    if not spec:
        return [(cfg["model"]["name"], cfg, checkpoint)]
    models = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        head, _, tail = entry.partition(":")
        path, ckpt = (head, tail or None) if head.endswith((".yaml", ".yml")) else (None, entry)
        if ckpt and not os.path.exists(ckpt):
            raise ConfigError(f"--figure-models: {ckpt}: checkpoint not found")
        if path:
            mcfg = groklst.load_config(path)
        else:
            stored = torch.load(ckpt, map_location="cpu", weights_only=True)
            mcfg = stored.get("config") if isinstance(stored, dict) else None
            if not isinstance(mcfg, dict):
                raise ConfigError(f"--figure-models: {ckpt} holds no config (not written by train.py): "
                                          f"give it as CONFIG.yaml:{ckpt}")
        if mcfg["data"]["scale"] != cfg["data"]["scale"]:
            raise ConfigError(f"--figure-models: {entry} is x{mcfg['data']['scale']}, "
                                      f"the data x{cfg['data']['scale']}")
        label = mcfg["model"]["name"]
        if any(m[0] == label for m in models):
            label += f" ({os.path.basename(os.path.dirname(ckpt)) + '/' + os.path.basename(ckpt) if ckpt else path})"
        models.append((label, mcfg, ckpt))
    return models


@torch.no_grad()
def figure_rows(cfg, models, split, names=None, device="cpu", amp="none"):
    """Kelvin arrays of the figure: [(sample, {'LR input', 'bicubic', <model labels>..., 'ground truth'})].
    names: samples of the split (default: its first 2). Predictions are NaN where the LR input had no
    data (as the --save-dir GeoTIFFs)."""
    d = cfg["data"]
    base = groklst.build_dataset(cfg, split, bands=[])
    names = names or base.names[:2]
    missing = [n for n in names if n not in base.names]
    if missing:
        raise DataError(f"--figure-samples: {missing[0]!r} is not in split {split!r} of {d['root']}")
    runs = [("bicubic", groklst.create_model("bicubic", scale=d["scale"]).to(device), Normalizer(cfg["norm"]), base)]
    for label, mcfg, ckpt in models:
        runs.append((label, groklst.load_model(mcfg, ckpt, device), groklst.build_normalizer(mcfg),
                     groklst.build_dataset(dict(mcfg, data=d), split, groklst.guidance_bands(mcfg))))
    rows = []
    for name in names:
        panels = {}
        for label, model, normalizer, ds in runs:
            item = ds[ds.names.index(name)]
            lr = item["lr_lst"][None].to(device)
            gui = item["hr_guidance"][None].to(device) if "hr_guidance" in item else None
            pred = groklst.downscale(model, normalizer, lr, gui, amp)
            panels[label] = torch.where(hole_mask(lr, d["scale"]), float("nan"), pred)[0, 0].cpu().numpy()
        item = base[base.names.index(name)]
        rows.append((name, {"LR input": item["lr_lst"][0].numpy(), **panels, "ground truth": item["hr_lst"][0].numpy()}))
    return rows


def benchmark_table(work_root, split=None, overrides=(), device="cpu"):
    """Table IX of the paper for every trained run under work_root (each <run>/config.yaml and
    <run>/best.pth), plus bicubic per scale: rows = methods, columns = the five metrics per scale."""
    if not os.path.isdir(work_root):
        raise DataError(f"{work_root}: folder not found")
    runs = sorted(d for d in os.listdir(work_root) if os.path.exists(os.path.join(work_root, d, "best.pth")))
    if not runs:
        raise DataError(f"{work_root}: no <run>/best.pth found")
    results, bicubic_done = {}, set()
    for run in runs:
        cfg = groklst.load_config(os.path.join(work_root, run, "config.yaml"), overrides)
        scale, data_split = cfg["data"]["scale"], split or cfg["data"]["test_split"]
        dataset = groklst.build_dataset(cfg, data_split)
        model = groklst.load_model(cfg, os.path.join(work_root, run, "best.pth"), device)
        normalizer = groklst.build_normalizer(cfg)
        results.setdefault(run, {})[scale] = groklst.evaluate(model, normalizer, dataset, device)[0]
        if scale not in bicubic_done:  # the reference row, on the same data
            bicubic_done.add(scale)
            base = groklst.build_dataset(cfg, data_split, bands=[])
            bicubic = groklst.create_model("bicubic", scale=scale)
            results.setdefault("bicubic", {})[scale] = groklst.evaluate(bicubic, normalizer, base, device)[0]
        print(f"  evaluated {run} (x{scale})", file=sys.stderr)
    scales = sorted({s for r in results.values() for s in r})
    head = "| method | " + " | ".join(f"x{s} {m}" for s in scales for m in METRICS) + " |"
    lines = [head, "|---" * (1 + len(scales) * len(METRICS)) + "|"]
    for name, by_scale in results.items():
        cells = [f"{by_scale[s][m]:.4f}" if s in by_scale else "-" for s in scales for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@command
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    if argv is None:
        argv = sys.argv[1:]
    if "--models" in argv:  # benchmark mode: python test.py --models WORK_DIRS [--split S] [key=value ...]
        q = argparse.ArgumentParser(description="benchmark table of every trained run under a folder")
        q.add_argument("--models", required=True, help="folder of runs (work_dirs)")
        q.add_argument("--split", default=None)
        q.add_argument("--out", default=None, help="also write the markdown table here")
        q.add_argument("overrides", nargs="*")
        a = q.parse_args(argv)
        table = benchmark_table(a.models, a.split, a.overrides)
        print(table)
        if a.out:
            with open(a.out, "w") as f:
                f.write(table + "\n")
        return
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", default=None, help="a .pth of train.py or of the original toolkit")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.add_argument("--split", default=None, help="dataset split (default: data.test_split)")
    p.add_argument("--save-dir", default=None, help="write predictions as GeoTIFF here")
    p.add_argument("--out", default=None, help="JSON file for the metrics (default: next to the checkpoint)")
    p.add_argument("--amp", default=None, choices=["none", "bf16", "fp16"])
    p.add_argument("--figure", default=None, help="draw a comparison figure here (.png/.pdf; needs matplotlib)")
    p.add_argument("--figure-samples", default=None, help="comma-separated sample names (default: first 2 of the split)")
    p.add_argument("--figure-models", default=None,
                   help="comma-separated CONFIG.yaml:CKPT, CONFIG.yaml or CKPT (default: the model tested)")
    p.add_argument("--figure-guidance", default=None, metavar="BAND",
                   help="add a column with this 30 m guidance band (e.g. dem, ndvi) after the LR input")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options
    if args.figure:
        require_matplotlib("--figure")  # fail before evaluating, not after
    if args.checkpoint and "=" in args.checkpoint:  # `test.py CFG key=value` for baselines
        args.overrides.insert(0, args.checkpoint)
        args.checkpoint = None

    rank, world, device = groklst.setup_distributed()
    try:
        cfg = groklst.load_config(args.config, args.overrides)
        split = args.split or cfg["data"]["test_split"]
        dataset = groklst.build_dataset(cfg, split)
        model = groklst.load_model(cfg, args.checkpoint, device)
        normalizer = groklst.build_normalizer(cfg)
        means, per_image = groklst.evaluate(model, normalizer, dataset, device, args.amp or cfg["train"]["amp"],
                                            save_dir=args.save_dir, progress=True)
        if rank == 0:
            name = f"{cfg['model']['name']} x{cfg['data']['scale']}"
            print(f"{cfg['name']} on {split} ({means['images']} of {len(dataset)} images with valid pixels)")
            print(format_table({name: means}))
            out = args.out
            if out is None:
                out = (f"{os.path.splitext(args.checkpoint)[0]}.{split}.json" if args.checkpoint
                       else os.path.join(cfg["work_dir"], f"{split}.json"))
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            with open(out, "w") as f:
                json.dump({"config": cfg["name"], "checkpoint": args.checkpoint, "split": split,
                           "metrics": {k: means[k] for k in METRICS}, "images": means["images"],
                           "per_image": {n: dict(zip(METRICS, m)) for n, m in per_image}}, f, indent=1)
            print(f"metrics written to {out}")
            if args.figure:
                models = figure_models(args.figure_models, cfg, args.checkpoint)
                rows = figure_rows(cfg, models, split, args.figure_samples and args.figure_samples.split(","),
                                   device, args.amp or cfg["train"]["amp"])
                guidance = None
                if args.figure_guidance:
                    bands = groklst.build_dataset(cfg, split, bands=[args.figure_guidance])
                    guidance = {name: (args.figure_guidance, bands[bands.names.index(name)]["hr_guidance"][0].numpy())
                                for name, _ in rows}
                draw_figure(args.figure, rows, models[0][0], guidance=guidance)
                print(f"figure written to {args.figure}")
        groklst.teardown_distributed(barrier=True)
    finally:
        groklst.teardown_distributed()


if __name__ == "__main__":
    main()
