"""ATPK against nearest and bicubic + correction on simulated fields: the accuracy table of docs/notruth.md.

    OMP_NUM_THREADS=1 python tools/atpk_accuracy.py --size 1000 --ratios 8,25 --modis

Each field is aggregated to the coarse grid (aligned x ratio, or a UTM 30 m grid under the MODIS 1 km
sinusoidal grid), brought back by each method, and compared with the field; CPU seconds of this process.
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atpk import atpk_residual, fit_variogram, make_exact  # noqa: E402


def _simulated_field(n, range_, seed):
    """A Gaussian random field (n, n), unit variance, exponential covariance of practical range `range_`
    pixels (circulant embedding on a 2n torus)."""
    m = 2 * n
    i = np.minimum(np.arange(m), m - np.arange(m))
    eigen = np.fft.fft2(np.exp(-3.0 * np.hypot(i[:, None], i[None, :]) / range_)).real.clip(min=0)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((m, m)) + 1j * rng.standard_normal((m, m))
    return torch.from_numpy(np.fft.ifft2(np.sqrt(eigen) * noise).real[:n, :n] * m)


def _modis_footprint(n):
    """A UTM 50N 30 m grid of n x n pixels on the block of the MODIS sinusoidal grid covering it."""
    import pyproj

    from footprint import Footprint, Grid
    from geotiff import MODIS_PIXEL, MODIS_SINUSOIDAL_KEYS, crs_string, make_geo_keys
    fine = Grid((n, n), (400000.0, 30.0, 0.0, 4500000.0, 0.0, -30.0), "EPSG:32650", f"UTM 30 m {n} x {n}")
    sinusoidal = crs_string(make_geo_keys(0, 0, 1.0, MODIS_SINUSOIDAL_KEYS))
    edge = np.linspace(0, 30.0 * n, 50)
    x, y = pyproj.Transformer.from_crs(fine.crs, sinusoidal, always_xy=True).transform(
        400000.0 + np.r_[edge, edge, np.zeros(50), np.full(50, 30.0 * n)],
        4500000.0 - np.r_[np.zeros(50), np.full(50, 30.0 * n), edge, edge])
    x0, y0 = -20015109.354, 10007554.677
    c0, c1 = math.floor((x.min() - x0) / MODIS_PIXEL), math.ceil((x.max() - x0) / MODIS_PIXEL)
    r0, r1 = math.floor((y0 - y.max()) / MODIS_PIXEL), math.ceil((y0 - y.min()) / MODIS_PIXEL)
    coarse = Grid((r1 - r0, c1 - c0), (x0 + c0 * MODIS_PIXEL, MODIS_PIXEL, 0.0, y0 - r0 * MODIS_PIXEL, 0.0, -MODIS_PIXEL),
                  sinusoidal, "MODIS 1 km")
    return Footprint(fine, coarse)


def main(argv=None):
    """Print the table of docs/notruth.md: ATPK, nearest and bicubic + correction of coarse means of a fine
    field, against the field; CPU seconds of this process (run it with OMP_NUM_THREADS=1 for one core)."""
    import argparse
    import time

    from footprint import Footprint
    from layout import synth_scene
    p = argparse.ArgumentParser(description="ATPK vs nearest vs bicubic on simulated fields (docs/notruth.md)")
    p.add_argument("--size", type=int, default=1000, help="fine pixels per side")
    p.add_argument("--ratios", default="8,25", help="aligned coarsening ratios, comma-separated")
    p.add_argument("--range", type=float, default=150.0, help="practical range of the Gaussian field, fine pixels")
    p.add_argument("--modis", action="store_true", help="also a UTM 30 m grid on the MODIS 1 km sinusoidal grid")
    args = p.parse_args(argv)
    n = args.size
    fields = {f"Gaussian, exponential range {args.range:g} px": _simulated_field(n, args.range, 0),
              "layout.synth_scene LST": torch.from_numpy(synth_scene(n, n, seed=0)[0]).double()}
    grids = {f"aligned x{r}": (lambda r=r: Footprint.aligned((n - n % r, n - n % r), r))
             for r in map(int, args.ratios.split(","))}
    if args.modis:
        grids["UTM 30 m on MODIS 1 km"] = lambda: _modis_footprint(n)
    print("| field | grid | coarse pixels | fit CPU s | kriging CPU s | max footprint error K | RMSE ATPK | "
          "RMSE nearest | RMSE bicubic+corr |\n" + "|---" * 9 + "|")
    for grid_name, make in grids.items():
        fp = make()
        _ = fp.weights, fp.coarse_index  # built once, outside the timings
        for field_name, field in fields.items():
            truth = field[:fp.fine.shape[0], :fp.fine.shape[1]]
            coarse = fp.aggregate(truth)
            t0 = time.process_time()
            variogram = fit_variogram(coarse, fp)
            t1 = time.process_time()
            out = atpk_residual(coarse, fp, variogram=variogram)
            t2 = time.process_time()
            bicubic = make_exact(fp.interpolate(coarse, "bicubic"), coarse, fp)
            near = fp.nearest(coarse)
            ok = torch.isfinite(out) & torch.isfinite(near) & torch.isfinite(bicubic)
            agg = fp.aggregate(out)
            cells = torch.isfinite(agg) & torch.isfinite(coarse)
            rmse = {k: float(((x - truth)[ok] ** 2).mean().sqrt()) for k, x in (("atpk", out), ("near", near),
                                                                               ("bicubic", bicubic))}
            print(f"| {field_name} | {grid_name} | {fp.coarse.shape[0]} x {fp.coarse.shape[1]} | {t1 - t0:.1f} | "
                  f"{t2 - t1:.1f} | {float((agg - coarse)[cells].abs().max()):.1e} | {rmse['atpk']:.3f} | "
                  f"{rmse['near']:.3f} | {rmse['bicubic']:.3f} |")


if __name__ == "__main__":
    main()
