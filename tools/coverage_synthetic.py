"""Split-conformal coverage on synthetic cases: the tables of docs/notruth.md.

    OMP_NUM_THREADS=1 python tools/coverage_synthetic.py gaussian
    OMP_NUM_THREADS=1 python tools/coverage_synthetic.py synthetic --size 1024 --scale 8 [--models A,B | CFG:CKPT]

gaussian: coverage and width of split-conformal intervals on Gaussian errors with a known heteroscedastic
sigma. synthetic: the scene-anchored intervals of uncertainty.py on layout.synth_scene scenes, whose
fine truth is known.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from errors import ConfigError  # noqa: E402
from uncertainty import (  # noqa: E402
    WithSpread,
    calibrate_scene,
    calibrated_transfer,
    conformal_quantile,
    coverage,
    half_width,
    interval,
    mean_width,
    normalised_scores,
    pooled,
    transfer_scores,
)


def main(argv=None):
    """Print the tables of docs/notruth.md: `gaussian`, split-conformal coverage and width on Gaussian errors
    with known heteroscedastic sigma; `synthetic`, the scene-anchored intervals on layout.synth_scene
    scenes with a fine truth (synthetic_table)."""
    import argparse

    import numpy as np
    p = argparse.ArgumentParser(description="conformal coverage on synthetic cases (docs/notruth.md)")
    p.add_argument("table", choices=["gaussian", "synthetic"])
    p.add_argument("--pixels", type=int, default=20000, help="gaussian: calibration (and test) pixels")
    p.add_argument("--size", type=int, default=1024, help="synthetic: fine pixels per side of each scene")
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--seeds", default="0,1,2", help="test scenes (layout.synth_scene seeds)")
    p.add_argument("--calibration-seeds", default="10,11", help="scenes where calibrated_transfer is measured")
    p.add_argument("--models", default="bicubic,tsharp,linreg,dms",
                   help="registry names, or CONFIG.yaml:CKPT for a learned model of --scale")
    p.add_argument("--consistency", default="bicubic")
    args = p.parse_args(argv)
    if args.table == "synthetic":
        synthetic_table(args.models.split(","), args.size, args.scale, [int(x) for x in args.seeds.split(",")],
                        [int(x) for x in args.calibration_seeds.split(",") if x], args.consistency)
        return
    rng = np.random.default_rng(0)
    n = args.pixels
    sigma = torch.from_numpy(rng.uniform(0.3, 3.0, 2 * n))
    truth = torch.zeros(2 * n, dtype=torch.float64)
    mean = sigma * torch.from_numpy(rng.normal(size=2 * n))
    wide = sigma[n:] > float(sigma[n:].quantile(0.75))
    print(f"Gaussian errors, sigma uniform in 0.3..3 K, {n} calibration and {n} test pixels\n")
    print("| alpha | scores | q | coverage | coverage, widest-sigma quarter | mean width K |\n" + "|---" * 6 + "|")
    for alpha in (0.2, 0.1, 0.05):
        for name, s in (("normalised by sigma", sigma), ("plain abs residual", None)):
            q = conformal_quantile(normalised_scores(mean[:n] - truth[:n], None if s is None else s[:n]), alpha)
            lo, hi = interval(mean[n:], None if s is None else s[n:], q)
            print(f"| {alpha:g} | {name} | {q:.3f} | {coverage(truth[n:], lo, hi):.3f} | "
                  f"{coverage(truth[n:][wide], lo[wide], hi[wide]):.3f} | {mean_width(lo, hi):.3f} |")


def _synthetic_model(spec, scale):
    """A --models entry -> (label, model, normalizer): a registry name (parameter-free) or CONFIG.yaml:CKPT."""
    import groklst
    if ":" in spec:
        config, checkpoint = spec.split(":", 1)
        cfg = groklst.load_config(config)
        if cfg["data"]["scale"] != scale:
            raise ConfigError(f"{config} is x{cfg['data']['scale']}, the benchmark x{scale} (--scale)")
        return cfg["model"]["name"], groklst.load_model(cfg, checkpoint, "cpu"), groklst.build_normalizer(cfg)
    from data import Normalizer
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = groklst.load_config(os.path.join(here, "configs", "demo_bicubic_x8.yaml"), [f"data.scale={scale}"])
    return spec, groklst.create_model(spec, scale=scale), Normalizer(cfg["norm"])


def synthetic_run(model, normalizer, lst, guidance, scale, consistency, alpha=0.1):
    """One synthetic scene with its fine truth: the full-scale prediction and sigma (WithSpread), the
    scene's calibration (calibrate_scene, variogram transfer) -> {'error' (H, W), 'sigma', 'q', 'transfer', 'n'}."""
    import engine
    from footprint import Footprint
    size = lst.shape[-1]
    fp = Footprint.aligned(tuple(lst.shape), scale)
    fine, g = torch.from_numpy(lst).double(), torch.from_numpy(guidance)
    coarse = fp.aggregate(fine)
    if hasattr(model, "fit_scene"):
        model.fitted = None
        model.fit_scene(coarse.numpy(), g.numpy())
    net = WithSpread([model], normalizer)
    cal = calibrate_scene(net, coarse, g, fp, consistency, alpha, "variogram")
    out = engine.downscale(net, None, coarse.float()[None, None], g[None])
    mean = engine.make_consistent(out[:, :1].double(), coarse[None, None], consistency)[0, 0]
    sigma = None if net.source == "none" else out[0, 1].double()
    if hasattr(model, "fit_scene"):
        model.fitted = None
    assert mean.shape[-1] == size
    return {"error": mean - fine, "sigma": sigma, **cal}


def synthetic_table(specs, size, scale, seeds, calibration_seeds, consistency, alpha=0.1):
    """Coverage and mean width of the 1 - alpha interval on layout.synth_scene test scenes, per model and
    transfer (none, variogram, calibrated on calibration_seeds), printed as a markdown table."""
    from layout import synth_scene
    scenes = {seed: synth_scene(size, size, seed=seed) for seed in sorted(set(seeds) | set(calibration_seeds))}
    print(f"layout.synth_scene {size} x {size}, x{scale}, consistency {consistency}, alpha {alpha:g}: q from "
          f"each scene's own {scale}-fold reduction; calibrated k measured on scenes {calibration_seeds}\n")
    print("| model | sigma | scene | q K | k variogram | k calibrated | true k | coverage none | coverage variogram "
          "| coverage calibrated | width calibrated K |\n" + "|---" * 11 + "|")
    for spec in specs:
        label, model, normalizer = _synthetic_model(spec, scale)
        runs = {seed: synthetic_run(model, normalizer, *scenes[seed], scale, consistency, alpha) for seed in scenes}
        k_cal = calibrated_transfer([transfer_scores(runs[s]["error"], runs[s]["sigma"], runs[s]["q"])
                                     for s in calibration_seeds], alpha) if calibration_seeds else float("nan")
        methods = (("none", lambda r: 1.0), ("variogram", lambda r: r["transfer"]), ("calibrated", lambda r, k=k_cal: k))
        for seed in seeds:
            r = runs[seed]
            true_k = calibrated_transfer([transfer_scores(r["error"], r["sigma"], r["q"])], alpha)
            cells = [pooled([r["error"]], [half_width(r["sigma"], r["q"], k(r))]) for _, k in methods]
            print(f"| {label} | {WithSpread([model]).source} | {seed} | {r['q']:.3f} | {r['transfer']:.3f} | "
                  f"{k_cal:.3f} | {true_k:.3f} | " + " | ".join(f"{c[0]:.3f}" for c in cells) + f" | {cells[-1][1]:.3f} |",
                  flush=True)
        cells = [pooled([runs[s]["error"] for s in seeds], [half_width(runs[s]["sigma"], runs[s]["q"], k(runs[s]))
                                                             for s in seeds]) for _, k in methods]
        print(f"| {label} | | all | | | | | " + " | ".join(f"{c[0]:.3f}" for c in cells) + f" | {cells[-1][1]:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
