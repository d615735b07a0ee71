"""Build and apply footprint.Footprint for a Landsat-size guidance grid against the MODIS 1 km grid.

    OMP_NUM_THREADS=2 python tools/footprint_speed.py [--size 7800]

A size x size 30 m UTM zone 50N grid (corner 400000 E, 4500000 N: 116 E, 40.6 N) against the MODIS
sinusoidal grid (926.625 m, its global origin) that covers it. Prints build seconds, apply seconds
(aggregate of one band, float32, twice; interpolate bilinear), nnz, the lattice step and error, the peak RSS
of the process (resource.getrusage) and the machine's load (uptime).
"""
import argparse
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from footprint import Footprint, Grid  # noqa: E402
from geotiff import MODIS_PIXEL  # noqa: E402

MODIS_X0, MODIS_Y0 = -20015109.354, 10007554.677  # corner of the global MODIS sinusoidal grid
SINUSOIDAL = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +a=6371007.181 +b=6371007.181 +units=m +no_defs"


def modis_grid_over(fine):
    """The block of the global MODIS 1 km grid that covers `fine` (its edges transformed with pyproj)."""
    import pyproj
    t = pyproj.Transformer.from_crs(fine.crs, SINUSOIDAL, always_xy=True)
    xmin, xmax, ymin, ymax = fine.extent()
    edge = np.linspace(0, 1, 200)
    xs = np.r_[xmin + edge * (xmax - xmin), np.full(200, xmax), xmax - edge * (xmax - xmin), np.full(200, xmin)]
    ys = np.r_[np.full(200, ymax), ymax - edge * (ymax - ymin), np.full(200, ymin), ymin + edge * (ymax - ymin)]
    x, y = t.transform(xs, ys)
    c0, c1 = math.floor((min(x) - MODIS_X0) / MODIS_PIXEL), math.ceil((max(x) - MODIS_X0) / MODIS_PIXEL)
    r0, r1 = math.floor((MODIS_Y0 - max(y)) / MODIS_PIXEL), math.ceil((MODIS_Y0 - min(y)) / MODIS_PIXEL)
    return Grid((r1 - r0, c1 - c0), (MODIS_X0 + c0 * MODIS_PIXEL, MODIS_PIXEL, 0.0, MODIS_Y0 - r0 * MODIS_PIXEL, 0.0,
                                     -MODIS_PIXEL), SINUSOIDAL, "MODIS 1 km")


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # GB (ru_maxrss is in kB on Linux)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=7800, help="fine grid rows and columns (30 m pixels)")
    args = p.parse_args()
    fine = Grid((args.size, args.size), (400000.0, 30.0, 0.0, 4500000.0, 0.0, -30.0), "EPSG:32650", "UTM 30 m")
    coarse = modis_grid_over(fine)
    print(fine.describe())
    print(coarse.describe())
    t0 = time.perf_counter()
    fp = Footprint(fine, coarse)
    build = time.perf_counter() - t0
    rss_build = peak_rss()
    x = torch.from_numpy(np.random.default_rng(0).normal(300.0, 5.0, fine.shape).astype(np.float32))
    t0 = time.perf_counter()
    lr = fp.aggregate(x)
    apply = time.perf_counter() - t0  # the first call also sums the matrix's rows (kept)
    t0 = time.perf_counter()
    fp.aggregate(x)
    again = time.perf_counter() - t0
    rss_apply = peak_rss()
    t0 = time.perf_counter()
    fp.interpolate(lr, "bilinear")
    interp = time.perf_counter() - t0
    print(f"build {build:.1f} s  aggregate {apply:.2f} s (again {again:.2f} s)  interpolate (bilinear) {interp:.2f} s  "
          f"nnz {fp.weights._nnz():,}  lattice step {fp.to_coarse.step} (error {fp.to_coarse.error:.1e} fine px)  "
          f"threads {torch.get_num_threads()}")
    print(f"peak RSS: {rss_build:.2f} GB after build, {rss_apply:.2f} GB after aggregate, {peak_rss():.2f} GB after "
          f"interpolate")
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
