"""Peak memory and time of coarse consistency on a sensor's own grid (engine.make_consistent with a footprint).

    python tools/consistency_memory.py 2048 bicubic      # N x N UTM 31N 30 m grid under MODIS 1 km sinusoidal

Prints the peak RSS increase (MB and bytes per fine pixel) of building the footprint (with one aggregate),
then of the consistency pass (none | nearest | bicubic), and their seconds.
"""
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import engine  # noqa: E402
import geotiff  # noqa: E402
from footprint import Footprint, Grid  # noqa: E402


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(n, mode):
    import pyproj
    x0, y0, p = 500000.0, 4900000.0, geotiff.MODIS_PIXEL
    fine = Grid((n, n), (x0, 30.0, 0.0, y0, 0.0, -30.0), "EPSG:32631", "fine")
    sinu = geotiff.crs_string(geotiff.make_geo_keys(0, 0, 1, geotiff.MODIS_SINUSOIDAL_KEYS))
    xs, ys = pyproj.Transformer.from_crs("EPSG:32631", sinu, always_xy=True).transform([x0, x0 + 30 * n], [y0, y0 - 30 * n])
    cx, cy = np.floor(min(xs) / p) * p - p, np.ceil(max(ys) / p) * p + p
    coarse = Grid((int((cy - min(ys)) / p) + 3, int((max(xs) - cx) / p) + 3), (cx, p, 0.0, cy, 0.0, -p), sinu, "modis")
    pred = torch.from_numpy((280 + np.random.default_rng(0).standard_normal((n, n))).astype(np.float32))
    before, t0 = peak_mb(), time.time()
    fp = Footprint(fine, coarse)
    lr = fp.aggregate(pred) + 1.0
    built, t1 = peak_mb(), time.time()
    engine.make_consistent(pred[None, None], lr[None, None], mode, fp)
    done = peak_mb()
    per_px = 2 ** 20 / n / n
    print(f"{n} x {n}: footprint +{built - before:.0f} MB ({(built - before) * per_px:.0f} B/px, {t1 - t0:.1f} s); "
          f"consistency {mode} +{done - built:.0f} MB ({(done - built) * per_px:.0f} B/px, {time.time() - t1:.1f} s)")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
