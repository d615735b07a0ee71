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
On a dataset without fine truth (no 30m/lst: prepare.py --real-ratio) only CONS is scored, and the output
says so; its JSON has "fine_truth": false and null for the five.
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

    python test.py CFG [CKPT] consistency=bicubic --uncertainty [--calibrate [ALPHA]] [--calibration-split val]

--uncertainty adds, per image, the mean sigma (K) of the model's spread (uncertainty.WithSpread: trees of
rf / dms, draws of a stochastic model, else the 8 flips / rotations; 0 for tsharp / linreg) and its
correlation with |error|. --calibrate (alpha, default 0.1) adds the measured coverage and mean width of
the 1 - alpha interval, pooled over the pixels of the split, for: each image's own scene-anchored q (its
reduced-resolution experiment, corrected by the config's `consistency` as the prediction is) with no
transfer, with the variogram transfer, and with the transfer measured on --calibration-split (default
data.val_split; `k` there, uncertainty.calibrated_transfer), also with constant widths (sigma ignored)
when the model has a sigma; plain split conformal on that split (one q for every image, no
anchoring); and, first, sigma taken at face value (mean +- z sigma, z = 1.645 at alpha 0.1: what a
Gaussian reading of the spread promises) when the model has one. It also prints the transfer measured
on this split: the number to give predict.py --transfer. Rank 0 only, after the metrics; in the JSON under "uncertainty".
--uncertainty-figure PNG draws figures.uncertainty_panel of one image (--figure-samples' first).
"""
import argparse
import json
import os

import torch

import engine
import groklst
import uncertainty
from checkpoints import read_checkpoint
from data import Normalizer, hole_mask
from errors import ConfigError, DataError, command
from figures import draw_figure, require_matplotlib, uncertainty_panel
from footprint import Footprint
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


@torch.no_grad()
def uncertainty_images(cfg, checkpoint, split, device, alpha):
    """Each image of `split`: prediction (consistency as the config says), sigma and its scene calibration
    (uncertainty.calibrate_scene, variogram transfer) -> ([{'name', 'error' (H, W) K (NaN where no truth),
    'sigma' (H, W) or None, 'q', 'transfer', 'n'}], {image: why skipped}, spread source). A sharpener is
    fitted on each image and keeps that fit for its reduced experiment."""
    d, mode = cfg["data"], cfg["consistency"]
    dataset = groklst.build_dataset(cfg, split)
    model = groklst.load_model(cfg, checkpoint, device)
    net = uncertainty.WithSpread([model], groklst.build_normalizer(cfg))
    images, skipped = [], {}
    for i in range(len(dataset)):
        item = dataset[i]
        lr, hr = item["lr_lst"].to(device), item["hr_lst"][0].to(device)
        gui = item["hr_guidance"].to(device) if "hr_guidance" in item else None
        try:
            if hasattr(model, "fit_scene"):
                model.fitted = None
                model.fit_scene(lr, gui)
            both = net(lr[None], None if gui is None else gui[None])
            cal = None
            if alpha is not None:
                fp = Footprint.aligned(tuple(hr.shape), d["scale"])
                cal = uncertainty.calibrate_scene(net, lr[0].cpu(), None if gui is None else gui.cpu(), fp, mode,
                                                  alpha, "variogram", d["scale"])
        except DataError as e:
            skipped[item["name"]] = str(e)
            continue
        finally:
            if hasattr(model, "fit_scene"):
                model.fitted = None
        pred = engine.make_consistent(both[:, :1], lr[None], mode)[0, 0]
        pred = torch.where(hole_mask(lr[None], d["scale"])[0, 0], float("nan"), pred)
        sigma = both[0, 1].cpu()
        images.append({"name": item["name"], "pred": pred.cpu(), "error": (pred - hr).cpu(),
                       "sigma": None if net.source == "none" else sigma,
                       "sigma_mean": float(sigma[torch.isfinite(sigma)].double().mean()), **(cal or {})})
    return images, skipped, net.source


def _correlation(a, b):
    ok = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[ok].double(), b[ok].double()
    if len(a) < 2 or float(a.std()) == 0 or float(b.std()) == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def uncertainty_report(cfg, checkpoint, split, device, alpha, calibration_split, figure=None, sample=None):
    """--uncertainty / --calibrate: print per-image sigma and, with alpha, the coverage and width of the
    1 - alpha intervals (module docstring) -> the JSON's "uncertainty" dict. figure: also draw
    figures.uncertainty_panel of image `sample` (default the first) there, with the last interval of the
    table (the calibrated transfer when there is a calibration split)."""
    images, skipped, source = uncertainty_images(cfg, checkpoint, split, device, alpha)
    print(f"\nuncertainty: sigma from {source} ({uncertainty.SOURCES[source]}, per image)")
    report = {"source": source, "per_image": {}, "skipped": skipped}
    for r in images:
        row = {"sigma_mean": r["sigma_mean"], "sigma_error_corr": _correlation(r["error"].abs(), torch.as_tensor(
            r["sigma"] if r["sigma"] is not None else torch.zeros_like(r["error"])))}
        if alpha is not None:
            row.update(q=r["q"], k_variogram=r["transfer"], calibration_pixels=r["n"])
        report["per_image"][r["name"]] = row
    for image, reason in skipped.items():
        print(f"skipped {image}: {reason}")
    if alpha is None or not images:
        means = [row["sigma_mean"] for row in report["per_image"].values()]
        print(f"mean sigma over {len(means)} images: {sum(means) / max(len(means), 1):.4f} K")
        _uncertainty_figure(figure, images, sample, None, cfg, source)
        return report
    U = uncertainty
    errors = [r["error"] for r in images]
    k_here = U.calibrated_transfer([U.transfer_scores(r["error"], r["sigma"], r["q"]) for r in images], alpha)
    rows = [("scene-anchored q, no transfer", "k 1", [U.half_width(r["sigma"], r["q"]) for r in images]),
            ("scene-anchored q, variogram transfer", "k per image",
             [U.half_width(r["sigma"], r["q"], r["transfer"]) for r in images])]
    if calibration_split and calibration_split != split:
        calib, _, _ = uncertainty_images(cfg, checkpoint, calibration_split, device, alpha)
        k_cal = U.calibrated_transfer([U.transfer_scores(r["error"], r["sigma"], r["q"]) for r in calib], alpha)
        q_val = U.conformal_quantile(torch.cat([U.normalised_scores(r["error"] / U.relative_sigma(r["sigma"]))
                                                for r in calib]), alpha)
        if source != "none":  # does sigma's shape help? the same calibration with constant widths
            k_flat = U.calibrated_transfer([U.transfer_scores(r["error"], None, r["q"]) for r in calib], alpha)
            rows.append(("as below, sigma ignored (constant width)", f"k {k_flat:.3f}",
                         [U.half_width(None, r["q"], k_flat) for r in images]))
        rows.append((f"scene-anchored q, transfer calibrated on {calibration_split}", f"k {k_cal:.3f}",
                     [U.half_width(r["sigma"], r["q"], k_cal) for r in images]))
        rows.insert(2, (f"split conformal on {calibration_split} (no anchoring)", f"q {q_val:.3f} K",
                        [U.half_width(r["sigma"], q_val) for r in images]))
    if source != "none":  # sigma at face value: mean +- z sigma, z the standard normal's 1 - alpha / 2 quantile
        z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - alpha / 2)))
        rows.insert(0, ("sigma as it is, Gaussian (no calibration)", f"z {z:.3f}", [z * r["sigma"] for r in images]))
    report.update(alpha=alpha, transfer_measured_here=k_here, intervals={},
                  in_sample=sum(bool(r["in_sample"]) for r in images))
    if report["in_sample"]:
        print(f"note: {report['in_sample']} of {len(images)} images have too few reduced pixels to refit the sharpener: "
              f"their reduced experiment reuses the image's own fit (in-sample residuals, q too small)")
    print(f"{1 - alpha:.0%} intervals on {split} ({len(images)} images, consistency {cfg['consistency']}):\n")
    print("| calibration | factor | nominal | coverage | mean width K |\n|---|---|---|---|---|")
    for label, factor, halves in rows:
        cov, width, pixels = U.pooled(errors, halves)
        report["intervals"][label] = {"factor": factor, "nominal": 1 - alpha, "coverage": cov, "width": width,
                                      "pixels": pixels}
        print(f"| {label} | {factor} | {1 - alpha:.2f} | {cov:.3f} | {width:.3f} |")
    print(f"\ntransfer measured on {split} (predict.py --transfer): {k_here:.3f}")
    _uncertainty_figure(figure, images, sample, rows[-1], cfg, source)
    return report


def _uncertainty_figure(path, images, sample, interval, cfg, source):
    """--uncertainty-figure: figures.uncertainty_panel of one image (`sample`, default the first)."""
    if not path:
        return
    names = [r["name"] for r in images]
    if sample is not None and sample not in names:
        raise DataError(f"--figure-samples: {sample!r} is not among the images of this split ({', '.join(names[:5])}, ...)")
    i = names.index(sample) if sample is not None else 0
    r = images[i]
    sigma = r["sigma"] if r["sigma"] is not None else torch.where(torch.isfinite(r["pred"]), 0.0, float("nan"))
    half, label = None, ""
    if interval is not None:
        half = interval[2][i]
        half = half.numpy() if torch.is_tensor(half) else half
        label = f"; interval: {interval[0]} ({interval[1]})"
    uncertainty_panel(path, r["pred"].numpy(), sigma.numpy(), r["error"].numpy(), half,
                     f"{cfg['model']['name']} x{cfg['data']['scale']} on {r['name']}: sigma from {source}{label}")
    print(f"uncertainty figure written to {path}")


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
        if not dataset.has_truth and (args.figure or args.uncertainty or args.calibrate is not None):
            raise DataError(f"{cfg['data']['root']}: no fine truth (30m/lst): --figure, --uncertainty and --calibrate "
                            f"compare with it; on such a dataset test.py scores CONS only")
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
            if not dataset.has_truth:
                print(f"note: {cfg['data']['root']} has no fine truth (30m/lst): only CONS, the prediction's block means "
                      f"against the coarse input, is scored; RMSE and the others need a fine reference "
                      f"(evaluate.py against an independent fine thermal scene)")
            for image, reason in skipped.items():
                print(f"skipped {image} (NaN row, not in the means): {reason}")
            out = args.out
            if out is None:
                out = (f"{os.path.splitext(args.checkpoint)[0]}.{split}.json" if args.checkpoint
                       else os.path.join(cfg["work_dir"], f"{split}.json"))
            write_text(out, json.dumps({"config": cfg["name"], "checkpoint": args.checkpoint, "split": split,
                                        "metrics": {k: means.get(k) for k in METRICS}, "images": means["images"],
                                        "per_image": {n: {k: m.get(k) for k in METRICS} for n, m in per_image},
                                        "fine_truth": dataset.has_truth,
                                        "consistency": cfg["consistency"], CONS: means[CONS],
                                        f"per_image_{CONS}": {n: m[CONS] for n, m in per_image},
                                        "skipped": skipped},
                                       indent=1))
            print(f"metrics written to {out}")
            if args.uncertainty or args.calibrate is not None:
                report = uncertainty_report(cfg, args.checkpoint, split, device, args.calibrate,
                                            args.calibration_split or cfg["data"].get("val_split"),
                                            args.uncertainty_figure,
                                            args.figure_samples and args.figure_samples.split(",")[0])
                stored = json.loads(open(out).read())
                write_text(out, json.dumps(dict(stored, uncertainty=report), indent=1))
                print(f"uncertainty written to {out}")
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
    p.add_argument("--uncertainty", action="store_true", help="per image: mean sigma of the model's spread")
    p.add_argument("--calibrate", nargs="?", type=float, const=0.1, default=None, metavar="ALPHA",
                   help="coverage and width of the 1 - ALPHA intervals (default 0.1); implies --uncertainty")
    p.add_argument("--uncertainty-figure", default=None, metavar="PNG",
                   help="with --uncertainty: draw prediction, sigma, |error| (and the interval) of one image (the first "
                        "of --figure-samples, default the split's first); needs matplotlib")
    p.add_argument("--calibration-split", default=None, metavar="SPLIT",
                   help="with --calibrate: the split the transfer and plain split conformal are measured on "
                        "(default data.val_split)")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options
    if args.calibrate is not None and not 0.0 < args.calibrate < 1.0:
        raise ConfigError(f"--calibrate {args.calibrate}: the miscoverage alpha must lie between 0 and 1 (0.1: 90 %)")
    if args.figure:
        require_matplotlib("--figure")  # fail before evaluating, not after
    if args.uncertainty_figure:
        require_matplotlib("--uncertainty-figure")
        args.uncertainty = True
    if args.checkpoint and "=" in args.checkpoint:  # `test.py CFG key=value` for baselines
        args.overrides.insert(0, args.checkpoint)
        args.checkpoint = None

    evaluate_split(args)


if __name__ == "__main__":
    main()
