"""Speed and memory of the Data Mining Sharpener (sharpeners.DMS) on a scene of Landsat size.

    python tools/dms_speed.py                      # 7808 x 7808 x 10 bands, ratio 32 (244 x 244 coarse pixels), 2 threads
    python tools/dms_speed.py --size 2048 --spread # smaller, and the (mean, std) pass

A synthetic scene (not layout.synth_scene: its FFT fields would cost more than the sharpener at this
size): each band a sum of smooth random fields (bilinear upsampling of coarse noise, correlation
lengths ~400, 120 and 40 fine pixels) plus pixel noise, float32 in bands' units (band 0 a DEM in
metres, the others reflectance-like); the fine LST a nonlinear function of four bands plus 0.3 K
noise; the coarse LST its block mean. Prints the fit and apply seconds (sharpen, or
sharpen_with_spread with --spread), the fine RMSE against the synthetic truth, and the process's
peak RSS after building the scene and during fit and apply (the scene itself: bands x size^2 x 4 bytes).
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def peak_rss_gb():
    """The process's peak resident memory since start or since reset_peak_rss, GB (Linux: VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2 ** 20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB, never reset


def rss_gb():
    """The process's resident memory now, GB (Linux), or NaN."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    except (OSError, ValueError, IndexError):
        return float("nan")


def reset_peak_rss():
    """Start the peak over from the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def interpolation_matrix(n, knots):
    """(n, knots) weights of linear interpolation from `knots` evenly spaced nodes to n pixels."""
    pos = (np.arange(n) + 0.5) / n * (knots - 1)
    i0 = np.minimum(pos.astype(int), knots - 2)
    m = np.zeros((n, knots))
    m[np.arange(n), i0] = 1 - (pos - i0)
    m[np.arange(n), i0 + 1] = pos - i0
    return m


def scene(size, bands, scale, seed=0, rows=1024):
    """(guidance (bands, size, size) float32, fine LST (size, size) float32 K, coarse LST float64 K),
    written in bands of `rows` rows: no full-size temporaries besides the outputs."""
    rng = np.random.default_rng(seed)
    gui = np.empty((bands, size, size), np.float32)
    for c in range(bands):
        fields = []  # (weight, interpolation matrix, coarse noise) of each scale: field = m @ noise @ m.T
        for weight, length in ((0.6, 400), (0.3, 120), (0.1, 40)):
            knots = max(2, size // length + 2)
            fields.append((weight, interpolation_matrix(size, knots), rng.standard_normal((knots, knots))))
        for a in range(0, size, rows):
            field = sum(w * (m[a:a + rows] @ noise @ m.T) for w, m, noise in fields)
            field += 0.02 * rng.standard_normal(field.shape)
            gui[c, a:a + rows] = 2500 + 800 * field if c == 0 else 0.2 + 0.05 * field
    hr = np.empty((size, size), np.float32)
    for a in range(0, size, rows):
        g = gui[:, a:a + rows].astype(np.float64)
        hr[a:a + rows] = (290 - 6.5e-3 * (g[0] - 2500) + 8 * np.tanh((g[1] - 0.2) / 0.05) + 400 * (g[2] - 0.2) * (g[3] - 0.2)
                          - 3000 * (g[4] - 0.2) ** 2 + 0.3 * rng.standard_normal(g[0].shape))
    step = max(scale, rows - rows % scale)  # whole coarse rows
    lr = np.concatenate([hr[a:a + step].reshape(-1, scale, size // scale, scale).mean((1, 3), dtype=np.float64)
                         for a in range(0, size, step)])
    return gui, hr, lr


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=7808, help="fine pixels per side, a multiple of --scale (7808 = 244 x 32)")
    p.add_argument("--scale", type=int, default=32, help="fine pixels per coarse pixel (32: 30 m -> 960 m)")
    p.add_argument("--bands", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="DMS n_jobs and torch threads")
    p.add_argument("--window", type=int, default=15, help="DMS local window (coarse pixels)")
    p.add_argument("--spread", action="store_true", help="time sharpen_with_spread instead of sharpen")
    args = p.parse_args(argv)
    import torch

    from sharpeners import DMS
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    gui, hr, lr = scene(args.size, args.bands, args.scale)
    print(f"scene {args.size} x {args.size} x {args.bands} bands, ratio {args.scale} ({lr.shape[0]} x {lr.shape[1]} coarse): "
          f"built in {time.perf_counter() - t:.1f} s, peak RSS {peak_rss_gb():.2f} GB, RSS now {rss_gb():.2f} GB")
    model = DMS(scale=args.scale, guidance_channels=args.bands, window=args.window, n_jobs=args.threads)
    reset = reset_peak_rss()
    t = time.perf_counter()
    fit = model.fit_scene(lr, gui)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    out = model.sharpen_with_spread(lr, gui, fit)[0] if args.spread else model.sharpen(lr, gui, fit)
    apply_s = time.perf_counter() - t
    rmse = np.sqrt(sum(np.sum((out[a:a + 1024].astype(np.float64) - hr[a:a + 1024]) ** 2)
                       for a in range(0, args.size, 1024)) / hr.size)
    print(f"fit {fit_s:.1f} s ({fit['samples']} training pixels, {len(fit['local'])} local models), "
          f"{'sharpen_with_spread' if args.spread else 'sharpen'} {apply_s:.1f} s, total {fit_s + apply_s:.1f} s, "
          f"{args.threads} threads; fine RMSE {rmse:.3f} K; peak RSS {'during fit and apply' if reset else 'overall'} "
          f"{peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
