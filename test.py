"""Evaluate a model on a dataset split: RMSE, MAE, BIAS, CC, RSD in Kelvin (mean over images).

    python test.py configs/bicubic_x8.yaml                                  # baselines need no checkpoint
    python test.py configs/mocolsk_x8.yaml work_dirs/mocolsk_x8/best.pth [--split test] [--save-dir DIR]
    python test.py configs/mocolsk_x8.yaml CKPT data.root=data/groklst       # key=value overrides
    torchrun --standalone --nproc_per_node=4 test.py configs/mocolsk_x8.yaml CKPT   # sharded, same numbers

Prints a markdown table and writes it as JSON next to the checkpoint (<ckpt>.<split>.json), or
under the work dir for baselines. --save-dir writes each prediction as a float32 GeoTIFF (K).
"""
import argparse
import json
import os
import sys

import torch

import groklst
from data import DataError, GrokLSTDataset
from metrics import METRICS, format_table


def load_model(cfg, checkpoint, device):
    """The config's model with the checkpoint's weights (none needed for parameter-free models)."""
    model = groklst.build_model(cfg)
    if checkpoint:
        groklst.load_weights(model, checkpoint)
    elif any(True for _ in model.parameters()):
        raise SystemExit(f"error: model {cfg['model']['name']!r} has parameters: give a checkpoint")
    return model.to(device).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", default=None, help="a .pth of train.py or of the original toolkit")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.add_argument("--split", default=None, help="dataset split (default: data.test_split)")
    p.add_argument("--save-dir", default=None, help="write predictions as GeoTIFF here")
    p.add_argument("--out", default=None, help="JSON file for the metrics (default: next to the checkpoint)")
    p.add_argument("--amp", default=None, choices=["none", "bf16", "fp16"])
    args = p.parse_args(argv)
    if args.checkpoint and "=" in args.checkpoint:  # `test.py CFG key=value` for baselines
        args.overrides.insert(0, args.checkpoint)
        args.checkpoint = None

    rank, world, device = groklst.setup_distributed()
    try:
        cfg = groklst.load_config(args.config, args.overrides)
        split = args.split or cfg["data"]["test_split"]
        dataset = GrokLSTDataset(cfg["data"]["root"], split, cfg["data"]["scale"], groklst.guidance_bands(cfg))
        model = load_model(cfg, args.checkpoint, device)
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
    except (groklst.ConfigError, DataError, KeyError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
    finally:
        groklst.teardown_distributed()


if __name__ == "__main__":
    main()
