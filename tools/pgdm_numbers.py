"""The measured numbers of docs/pgdm.md: how a stochastic model's sample spread follows its error, and its
CPU inference time per tile.

    python tools/pgdm_numbers.py spread configs/demo_pgdm_x8.yaml work_dirs/demo_pgdm_x8/best.pth --samples 8
    python tools/pgdm_numbers.py time configs/pgdm_x8.yaml --hr 256 --samples 1 8 --threads 2

spread: every image of the split (default data.test_split) downscaled with `--samples` draws
(engine.downscale(..., spread=True), seed engine.SAMPLING_SEED); per image the RMSE of the mean of the
draws and the mean sigma (K) over its valid pixels; then Pearson's r between the two over the images,
and between sigma and |error| over all valid pixels; and how many of those pixels mean +- 1.645 sigma
(sigma at face value, a Gaussian 90 % interval) covers; first, the metrics of the mean as test.py
prints them with model.num_samples=SAMPLES (no consistency), from the same draws.
time: the wall time of engine.downscale on one random (1, 1, hr/scale, hr/scale) K input and its
guidance, untrained weights (the time does not depend on them), after one warm-up call; the median of
--repeat calls per --samples value, and the 1-minute load average of the machine while it ran.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
import groklst  # noqa: E402
from metrics import COLUMNS, average, format_table, image_metrics_by_name  # noqa: E402

Z90 = 1.645  # the standard normal's 0.95 quantile: mean +- Z90 sigma is a Gaussian 90 % interval


def pearson(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@torch.no_grad()
def spread_vs_error(cfg, checkpoint, samples, split=None, device="cpu"):
    """[(name, RMSE of the mean K, mean sigma K)] over the split's images; over all their valid pixels: r between
    sigma and |error|, the fraction with |error| <= Z90 sigma and the mean width 2 Z90 sigma (K); and the
    metrics of the mean averaged over the images (test.py's table: engine.evaluate's rows, no consistency)."""
    model = groklst.load_model(cfg, checkpoint, device)
    normalizer = groklst.build_normalizer(cfg)
    dataset = groklst.build_dataset(cfg, split or cfg["data"]["test_split"])
    rows, metrics, sigmas, errors = [], [], [], []
    for i in range(len(dataset)):
        item = {k: v[None].to(device) if torch.is_tensor(v) else v for k, v in dataset[i].items()}
        mean, sigma = engine.downscale(model, normalizer, item["lr_lst"], item.get("hr_guidance"), spread=True,
                                       num_samples=samples)
        mask = item["mask"]
        if not mask.any():
            continue
        metrics.append(image_metrics_by_name(mean, item["hr_lst"], mask, item["lr_lst"])[0])
        rows.append((item["name"], metrics[-1]["RMSE"], sigma[mask].double().mean().item()))
        sigmas.append(sigma[mask].double().cpu().numpy())
        errors.append((mean - item["hr_lst"])[mask].abs().double().cpu().numpy())
    sigmas, errors = np.concatenate(sigmas), np.concatenate(errors)
    return (rows, pearson(sigmas, errors), float((errors <= Z90 * sigmas).mean()), float(2 * Z90 * sigmas.mean()),
            average(metrics))


@torch.no_grad()
def tile_seconds(cfg, hr, samples, repeat, device="cpu"):
    """{num_samples: median seconds of one engine.downscale of a hr x hr output tile}."""
    torch.manual_seed(0)
    model = groklst.build_model(cfg).to(device).eval()
    normalizer = groklst.build_normalizer(cfg)
    scale, bands = cfg["data"]["scale"], groklst.guidance_bands(cfg)
    lr = 280.0 + 10.0 * torch.rand(1, 1, hr // scale, hr // scale, device=device)
    stats = cfg["norm"]["guidance"]["stats"]
    gui = torch.stack([torch.full((hr, hr), float(stats[b]["mean"]) if b in stats else 0.0) for b in bands])[None]
    gui = gui.to(device) + 0.1 * torch.randn_like(gui)
    out = {}
    for n in samples:
        engine.downscale(model, normalizer, lr, gui, num_samples=n)  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            engine.downscale(model, normalizer, lr, gui, num_samples=n)
            times.append(time.perf_counter() - t0)
        out[n] = statistics.median(times)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("spread", help="per-image sample spread against error, Pearson r")
    s.add_argument("config")
    s.add_argument("checkpoint")
    s.add_argument("--samples", type=int, default=8)
    s.add_argument("--split", default=None)
    s = sub.add_parser("time", help="CPU seconds per tile")
    s.add_argument("config")
    s.add_argument("--hr", type=int, default=256, help="output tile side in HR pixels")
    s.add_argument("--samples", type=int, nargs="+", default=[1, 8])
    s.add_argument("--repeat", type=int, default=3)
    for s in sub.choices.values():
        s.add_argument("overrides", nargs="*", help="config overrides key.sub=value (right after the config)")
        s.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = groklst.load_config(args.config, args.overrides)
    if args.cmd == "spread":
        t0 = time.time()
        rows, r_pixels, inside, width, means = spread_vs_error(cfg, args.checkpoint, args.samples, args.split)
        print(format_table({f"{cfg['model']['name']} x{cfg['data']['scale']}, mean of {args.samples} draws": means},
                           columns=COLUMNS) + "\n")
        print(f"| image | RMSE of the {args.samples}-draw mean (K) | mean sigma (K) |\n|---|---|---|")
        for name, rmse, sigma in rows:
            print(f"| {name} | {rmse:.4f} | {sigma:.4f} |")
        print(f"| mean | {statistics.mean(r[1] for r in rows):.4f} | {statistics.mean(r[2] for r in rows):.4f} |")
        r_images = pearson([r[2] for r in rows], [r[1] for r in rows])
        print(f"Pearson r (per-image mean sigma vs RMSE, {len(rows)} images): {r_images:.3f}")
        print(f"Pearson r (sigma vs |error|, every valid pixel): {r_pixels:.3f}")
        print(f"sigma at face value, mean +- {Z90} sigma (a Gaussian 90 % interval): covers {inside:.3f} of the valid "
              f"pixels, mean width {width:.3f} K")
        print(f"{time.time() - t0:.0f} s")
    else:
        load = os.getloadavg()[0]
        seconds = tile_seconds(cfg, args.hr, args.samples, args.repeat)
        load = max(load, os.getloadavg()[0])
        params = groklst.num_parameters(groklst.build_model(cfg))
        print(f"{cfg['model']['name']} x{cfg['data']['scale']} ({params:,} parameters), "
              f"{args.hr} x {args.hr} output tile, {torch.get_num_threads()} threads, load average <= {load:.1f}")
        for n, sec in seconds.items():
            print(f"  {n} sample(s): {sec:.2f} s per tile")


if __name__ == "__main__":
    main()
