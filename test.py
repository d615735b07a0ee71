"""Evaluate a model on a dataset split: RMSE, MAE, BIAS, CC, RSD in Kelvin (mean over images), and CONS.

    python test.py configs/bicubic_x8.yaml                                  # baselines need no checkpoint
    python test.py configs/demo_tsharp_x8.yaml [consistency=bicubic]        # sharpeners too (sharpeners.py)
    python test.py configs/mocolsk_x8.yaml work_dirs/mocolsk_x8/best.pth [--split test] [--save-dir DIR]
    python test.py configs/mocolsk_x8.yaml CKPT data.root=data/groklst       # key=value overrides
    python test.py configs/mocolsk_x8.yaml model.name=bicubic               # another model: its own model.* keys
    torchrun --standalone --nproc_per_node=4 test.py configs/mocolsk_x8.yaml CKPT   # sharded, same numbers

Prints a markdown table and writes it as JSON next to the checkpoint (<ckpt>.<split>.json), or
under the work dir for baselines. CONS (metrics.consistency_error) is the sixth column, kept out of
the JSON's five "metrics" (its own keys "CONS", "per_image_CONS"). The config key `consistency`
(none | nearest | bicubic, groklst.make_consistent) makes every prediction coarse-consistent.
--save-dir writes each prediction as a float32 GeoTIFF (K), NaN where the LR input had no data,
georeferenced like its HR tile. Table IX of many trained runs: `python zoo.py --table-only --root DIR`.
An image the model cannot predict (a sharpener that cannot fit it: a DataError such as sharpeners'
CannotFit) gets a NaN row, left out of the means; the reason is printed and stored in the JSON under
"skipped" ({image: reason}). A failed JSON write (a full disk) is one error line after the table.

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

import torch

import engine
import groklst
from checkpoints import read_checkpoint
from data import Normalizer, hole_mask
from errors import ConfigError, DataError, command
from figures import draw_figure, require_matplotlib
from geotiff import check_writable, write_atomic, write_geotiff
from metrics import COLUMNS, CONS, METRICS, format_table


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
            stored = read_checkpoint(ckpt)
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
            pred = engine.downscale(model, normalizer, lr, gui, amp)
            panels[label] = torch.where(hole_mask(lr, d["scale"]), float("nan"), pred)[0, 0].cpu().numpy()
        item = base[base.names.index(name)]
        rows.append((name, {"LR input": item["lr_lst"][0].numpy(), **panels, "ground truth": item["hr_lst"][0].numpy()}))
    return rows


def write_text(path, text):
    """Atomically: an interrupted run leaves the previous file, never half of one. A failed write (a full
    disk) is one DataError naming `path`."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_atomic(path, text.encode())
    except OSError as e:
        kept = "the previous file is intact" if os.path.exists(path) else "nothing was written there"
        raise DataError(f"{path}: writing the metrics failed ({e.strerror or e}); {kept}; the table above has "
                        f"the numbers") from None


def prediction_writer(dataset, folder):
    """on_prediction for engine.evaluate: each prediction as <folder>/<name>.tif, float32 Kelvin, NaN where
    the LR input had no data (data.hole_mask), georeferenced like its HR tile (dataset.geo)."""
    def write(index, item, pred):
        scale = pred.shape[-1] // item["lr_lst"].shape[-1]
        out = torch.where(hole_mask(item["lr_lst"], scale), float("nan"), pred)[0, 0].cpu().numpy()
        write_geotiff(os.path.join(folder, item["name"] + ".tif"), out, dataset.geo(index))
    return write


def evaluate_split(args):
    """`test.py CONFIG [CHECKPOINT]`: the metrics table of one model on one split, its JSON, and the
    optional predictions (--save-dir) and figure (--figure); sharded over ranks under torchrun."""
    if args.out:  # fail before the evaluation, not after it
        check_writable(args.out)
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
        check_writable(os.path.join(args.save_dir, "prediction.tif"))
    rank, world, device = engine.setup_distributed()
    try:
        cfg = groklst.load_config(args.config, args.overrides)
        split = args.split or cfg["data"]["test_split"]
        dataset = groklst.build_dataset(cfg, split)
        model = groklst.load_model(cfg, args.checkpoint, device)
        normalizer = groklst.build_normalizer(cfg)
        save = prediction_writer(dataset, args.save_dir) if args.save_dir else None
        skipped = {}  # image -> why the model could not predict it (a sharpener that cannot fit it)
        means, per_image = engine.evaluate(model, normalizer, dataset, device, args.amp or cfg["train"]["amp"],
                                           cfg["consistency"], on_prediction=save, progress=True,
                                           on_error=skipped.__setitem__)
        if rank == 0:
            name = f"{cfg['model']['name']} x{cfg['data']['scale']}"
            print(f"{cfg['name']} on {split} ({means['images']} of {len(dataset)} images with valid pixels)")
            if cfg["consistency"] != "none":
                name += f" (consistency {cfg['consistency']})"
            print(format_table({name: means}, columns=COLUMNS))
            for image, reason in skipped.items():
                print(f"skipped {image} (NaN row, not in the means): {reason}")
            out = args.out
            if out is None:
                out = (f"{os.path.splitext(args.checkpoint)[0]}.{split}.json" if args.checkpoint
                       else os.path.join(cfg["work_dir"], f"{split}.json"))
            write_text(out, json.dumps({"config": cfg["name"], "checkpoint": args.checkpoint, "split": split,
                                        "metrics": {k: means[k] for k in METRICS}, "images": means["images"],
                                        "per_image": {n: {k: m[k] for k in METRICS} for n, m in per_image},
                                        "consistency": cfg["consistency"], CONS: means[CONS],
                                        f"per_image_{CONS}": {n: m[CONS] for n, m in per_image},
                                        "skipped": skipped},
                                       indent=1))
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
        engine.teardown_distributed(barrier=True)
    finally:
        engine.teardown_distributed()


@command
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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

    evaluate_split(args)


if __name__ == "__main__":
    main()
