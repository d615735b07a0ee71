"""Figures, drawn with matplotlib (optional: `pip install matplotlib`; imported only when a figure is
drawn): the model comparison panel of test.py --figure, the quick-look PNG of predict --png, the
training curves of `groklst.py plot-log`, and the tutorial's figures (docs/tutorial.md; the commands
that draw them are in docs/make_figures.py): Wald's protocol, normalisation histograms, error
histogram and scatter.

Arrays are Kelvin (H, W) float32 with NaN for no-data, drawn grey (panels) or transparent (quick look).
Each function takes arrays already read and computed by the library (data.py, metrics.py) and only draws.
"""
import importlib
import json
import os

import numpy as np

from errors import DataError


def require_matplotlib(what):
    """matplotlib, or a DataError saying which option needs it and how to install it."""
    try:
        return importlib.import_module("matplotlib")
    except ImportError:
        raise DataError(f"{what} needs matplotlib: pip install matplotlib") from None


# band descriptions of a temperature that is not LST: landsat.py's Level-1 output (top-of-atmosphere brightness
# temperature of B10, optionally emissivity-corrected); predict copies the input's description to its output
BRIGHTNESS_TEMPERATURE_BANDS = ("bt", "bt_emissivity_corrected")


def quantity_label(band_name):
    """Colour-bar label of a temperature raster from its band description: 'brightness temperature (K)'
    for BRIGHTNESS_TEMPERATURE_BANDS (any case), 'LST (K)' otherwise (also without a description)."""
    if band_name and band_name.strip().lower() in BRIGHTNESS_TEMPERATURE_BANDS:
        return "brightness temperature (K)"
    return "LST (K)"


def write_png(path, array, title="", label="LST (K)"):
    """Quick-look PNG of a Kelvin array (2-98 % stretch, colour bar labelled `label`; NaN transparent)."""
    require_matplotlib("--png")
    from matplotlib.figure import Figure
    step = max(1, -(-max(array.shape) // 2000))  # at most ~2000 px a side
    a = array[::step, ::step]
    finite = a[np.isfinite(a)]
    vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    fig = Figure(figsize=(8, 8 * a.shape[0] / a.shape[1] + 0.6))
    ax = fig.add_subplot()
    im = ax.imshow(a, cmap="inferno", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _zoom_window(err, side):
    """Top-left (row, col) of the side x side window (step side/2) with the largest mean error."""
    err = np.where(np.isfinite(err), err, 0.0)
    step = max(side // 2, 1)
    spots = [(r, c) for r in range(0, err.shape[0] - side + 1, step) for c in range(0, err.shape[1] - side + 1, step)]
    return max(spots, key=lambda rc: err[rc[0]:rc[0] + side, rc[1]:rc[1] + side].mean())


def draw_figure(path, rows, error_of, zoom=4, guidance=None):
    """A Fig.12-style panel, one row per sample: LR input, bicubic, the models, ground truth and
    |error| (K) of column `error_of`. rows: [(sample, {column: (H, W) Kelvin})] as figure_rows
    returns (the LR input is drawn over the HR extent). All LST panels share one Kelvin colour scale
    (1st-99th percentile of inputs and ground truths) with a colour bar; the error maps have their
    own. Every panel has a zoomed inset (1/zoom of the side) of the window where the error is
    largest, in the opposite corner. guidance: optional {sample: (title, (H, W) array)}, a column
    after the LR input in grey with its own 2-98 % stretch per panel (a guidance band in its own
    units: metres, reflectance, index). PNG, PDF, SVG by the file name."""
    mpl = require_matplotlib("--figure")
    from matplotlib.figure import Figure

    def finite(a):
        return a[np.isfinite(a)]

    columns = list(rows[0][1]) + [f"|{error_of} - GT|"]
    gcol = None
    if guidance:
        gcol = columns.index("LR input") + 1
        columns.insert(gcol, guidance[rows[0][0]][0])
    errors = [np.abs(panels[error_of] - panels["ground truth"]) for _, panels in rows]
    lst = np.concatenate([finite(p[k]) for _, p in rows for k in ("LR input", "ground truth")])
    vmin, vmax = np.percentile(lst, [1, 99]) if lst.size else (0.0, 1.0)
    err = np.concatenate([finite(e) for e in errors])
    emax = max(float(np.percentile(err, 99)), 1e-3) if err.size else 1.0
    lst_style = dict(cmap=mpl.colormaps["RdYlBu_r"].with_extremes(bad="0.8"), vmin=vmin, vmax=vmax)
    err_style = dict(cmap=mpl.colormaps["magma"].with_extremes(bad="0.8"), vmin=0.0, vmax=emax)
    fig = Figure(figsize=(2.1 * len(columns) + 1.6, 2.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    drawn = {}  # the last image of each colour scale, for the colour bars
    for i, ((name, panels), error) in enumerate(zip(rows, errors)):
        h, w = panels["ground truth"].shape
        side = max(min(h, w) // zoom, 2)
        r0, c0 = _zoom_window(error, side)
        corner = [0.01 if c0 + side / 2 > w / 2 else 0.59, 0.59 if r0 + side / 2 > h / 2 else 0.01, 0.4, 0.4]
        for j, (ax, column) in enumerate(zip(axes[i], columns)):
            if j == gcol:
                image = guidance[name][1]
                lo, hi = np.percentile(finite(image), [2, 98]) if finite(image).size else (0.0, 1.0)
                style = dict(cmap=mpl.colormaps["gray"].with_extremes(bad="0.8"), vmin=lo, vmax=hi)
            else:
                image, style = (error, err_style) if j == len(columns) - 1 else (panels[column], lst_style)
            kw = dict(style, extent=(0, w, h, 0), interpolation="nearest")
            im = ax.imshow(image, **kw)
            inset = ax.inset_axes(corner)
            inset.imshow(image, **kw)
            inset.set_xlim(c0, c0 + side)
            inset.set_ylim(r0 + side, r0)
            ax.indicate_inset_zoom(inset, edgecolor="white" if style is err_style else "black")
            for a in (ax, inset):
                a.set_xticks([])
                a.set_yticks([])
            if i == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if j != gcol:
                drawn[style is err_style] = im
    lst_axes = [k for k in range(len(columns) - 1) if k != gcol]
    fig.colorbar(drawn[False], ax=axes[:, lst_axes].ravel().tolist(), shrink=0.9, label="LST (K)")
    fig.colorbar(drawn[True], ax=axes[:, -1], shrink=0.9, label="|error| (K)")
    fig.savefig(path, dpi=150)


# --------------------------------------------------------------------------- training curves


def read_log(run_dir):
    """A run's log.jsonl (train.py) -> (training records, validation records), each a list of dicts
    sorted by iteration. Training records have iter, loss (K), lr; validation records have iter,
    split and the metrics. A resumed run's repeated iterations keep their last record."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        raise DataError(f"{run_dir}: no log.jsonl (not a train.py work dir?)")
    train, val = {}, {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{n}: not a JSON line") from None
            if "loss" in record:
                train[record["iter"]] = record
            elif "RMSE" in record:
                val[record["iter"]] = record
    if not train and not val:
        raise DataError(f"{path}: no training or validation records")
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


def plot_log(run_dirs, out):
    """Training curves of one or several runs in one PNG (or PDF/SVG): mean training loss (K, log
    scale), learning rate and validation RMSE (K) against iterations; one colour per run, labelled
    by the work dir's name."""
    require_matplotlib("plot-log")
    from matplotlib.figure import Figure
    logs = [(os.path.basename(os.path.normpath(d)), *read_log(d)) for d in run_dirs]
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for label, train, val in logs:
        if train:
            it = [r["iter"] for r in train]
            line, = axes[0].plot(it, [r["loss"] for r in train], label=label)
            axes[1].plot(it, [r["lr"] for r in train], color=line.get_color())
            color = line.get_color()
        else:
            color = None
        if val:
            axes[2].plot([r["iter"] for r in val], [r["RMSE"] for r in val], "o-", color=color, label=label)
    titles = ("training loss (K)", "learning rate", "validation RMSE (K)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if any(train for _, train, _ in logs):
        axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.savefig(out, dpi=100)


# --------------------------------------------------------------------------- tutorial figures


def wald_panel(path, hr_lst, lr_by_scale, corner=None):
    """Wald's protocol on one tile: the 30 m LST (H, W) K, its block means lr_by_scale {scale: (H/s, W/s)}
    drawn over the same extent on one colour scale, and a zoom on 2 x 2 coarse pixels of the largest
    scale with the fine pixel grid, showing that each coarse value is the mean of its s x s fine pixels.
    corner: (row, col) of the zoom in coarse pixels of the largest scale (default: the tile centre)."""
    mpl = require_matplotlib("wald_panel")
    from matplotlib.figure import Figure
    scales = sorted(lr_by_scale)
    s = scales[-1]
    h, w = hr_lst.shape
    finite = hr_lst[np.isfinite(hr_lst)]
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    style = dict(cmap=mpl.colormaps["RdYlBu_r"].with_extremes(bad="0.8"), vmin=vmin, vmax=vmax, interpolation="nearest")
    fig = Figure(figsize=(2.6 * (len(scales) + 2) + 0.8, 3.0), layout="constrained")
    axes = fig.subplots(1, len(scales) + 2)
    im = axes[0].imshow(hr_lst, extent=(0, w, h, 0), **style)
    axes[0].set_title(f"30 m LST ({h}x{w})", fontsize=9)
    for ax, k in zip(axes[1:], scales):
        ax.imshow(lr_by_scale[k], extent=(0, w, h, 0), **style)
        ax.set_title(f"{30 * k} m = {k}x{k} block mean", fontsize=9)
    r0, c0 = corner or (h // s // 2 - 1, w // s // 2 - 1)
    y0, x0 = r0 * s, c0 * s
    zoom = axes[-1]
    zoom.imshow(hr_lst[y0:y0 + 2 * s, x0:x0 + 2 * s], extent=(0, 2 * s, 2 * s, 0), **style)
    for t in range(2 * s + 1):  # the fine grid, and the coarse pixel borders in black
        width, color = (1.6, "black") if t % s == 0 else (0.3, "0.3")
        zoom.axhline(t, color=color, lw=width)
        zoom.axvline(t, color=color, lw=width)
    for i in range(2):
        for j in range(2):
            value = lr_by_scale[s][r0 + i, c0 + j]
            zoom.text(j * s + s / 2, i * s + s / 2, f"{value:.1f} K", ha="center", va="center", fontsize=8,
                      bbox=dict(boxstyle="round", fc="white", alpha=0.8))
    zoom.set_xlim(0, 2 * s)
    zoom.set_ylim(2 * s, 0)
    zoom.set_title(f"2x2 {30 * s} m pixels over {s}x{s} 30 m each", fontsize=9)
    axes[0].add_patch(mpl.patches.Rectangle((x0, y0), 2 * s, 2 * s, fill=False, edgecolor="black", lw=1.2))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes.tolist(), shrink=0.85, label="LST (K)")
    fig.savefig(path, dpi=100)


def histograms(path, rows, bins=80):
    """Histograms of quantities before and after normalisation (the GrokLST paper's Figs. 10-11):
    rows [(quantity, {column: 1-D array of finite values})], e.g. ("LST", {"Kelvin": a, "z-score": b,
    "min-max": c}); one row per quantity, one panel per column, each titled with its mean and std."""
    require_matplotlib("histograms")
    from matplotlib.figure import Figure
    ncol = max(len(cols) for _, cols in rows)
    fig = Figure(figsize=(3.2 * ncol, 2.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for i, (quantity, cols) in enumerate(rows):
        for j, (column, values) in enumerate(cols.items()):
            ax = axes[i, j]
            values = np.asarray(values, dtype=np.float64)
            ax.hist(values, bins=bins, color=f"C{j}", alpha=0.85)
            mean, std = (f"{v:.3f}" if abs(v) < 100 else f"{v:.4g}" for v in (values.mean(), values.std()))
            ax.set_title(f"{quantity}, {column}\nmean {mean}, std {std}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
        for j in range(len(cols), ncol):
            axes[i, j].set_axis_off()
    fig.savefig(path, dpi=100)


def error_panel(path, preds, gt, max_points=20000, seed=0):
    """What the metrics measure, on pooled pixels of one or more predictions: histograms of pred - gt (K)
    with the mean (BIAS) and root mean square (RMSE) in the legend, and a scatter of pred against gt with
    the 1:1 line and the correlation (CC). preds: {label: array}, gt: array of the same shape, Kelvin,
    NaN where invalid. Pooled over all pixels (and so over images), so the numbers differ from
    metrics.py's per-image means."""
    require_matplotlib("error_panel")
    from matplotlib.figure import Figure
    gt = np.asarray(gt, np.float64).ravel()
    fig = Figure(figsize=(8.4, 3.4), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    rng = np.random.default_rng(seed)
    span, lims = 0.0, []
    stats = []
    for label, pred in preds.items():
        pred = np.asarray(pred, np.float64).ravel()
        ok = np.isfinite(pred) & np.isfinite(gt)
        d = pred[ok] - gt[ok]
        stats.append((label, d, pred[ok], gt[ok]))
        span = max(span, 4 * np.sqrt((d * d).mean()))
    for i, (label, d, p, g) in enumerate(stats):
        bias, rmse, cc = d.mean(), np.sqrt((d * d).mean()), np.corrcoef(p, g)[0, 1]
        ax.hist(d, bins=120, range=(-span, span), histtype="step", lw=1.4, color=f"C{i}",
                label=f"{label}: BIAS {bias:+.3f} K, RMSE {rmse:.3f} K")
        ax.axvline(bias, color=f"C{i}", lw=0.8, ls="--")
        pick = rng.permutation(len(d))[:max_points // len(stats)]
        bx.scatter(g[pick], p[pick], s=1, alpha=0.25, color=f"C{i}", rasterized=True, label=f"{label}: CC {cc:.4f}")
        lims.append(np.percentile(g, [0.5, 99.5]))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("prediction - truth (K)")
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"error distribution ({len(stats[0][1]):,} pixels)", fontsize=9)
    lo, hi = min(v[0] for v in lims), max(v[1] for v in lims)
    bx.plot([lo, hi], [lo, hi], color="black", lw=0.8)
    bx.set_xlim(lo, hi)
    bx.set_ylim(lo, hi)
    bx.set_xlabel("truth (K)")
    bx.set_ylabel("prediction (K)")
    bx.legend(fontsize=7, loc="upper left", markerscale=6)
    bx.set_title("prediction against truth (a sample of pixels)", fontsize=9)
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- choosing a model


def accuracy_vs_throughput(path, points, reference=None, title=""):
    """Accuracy against speed, one labelled marker per method: points [(label, Mpx/s, RMSE K, kind)] with
    kind 'gisr' (guided), 'sisr' (single-image) or anything else (baselines), drawn in three styles; both
    axes logarithmic (throughputs span 3 decades, RMSEs 2). reference: (label, RMSE K) as a dashed line,
    e.g. bicubic's: a model above it does worse than interpolation."""
    require_matplotlib("the accuracy / throughput figure")
    from matplotlib.figure import Figure
    if not points:
        raise DataError(f"{path}: no method with both a test RMSE and a throughput to draw")
    styles = {"gisr": ("tab:blue", "o", "guided (GISR)"), "sisr": ("tab:orange", "s", "single-image (SISR)")}
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.add_subplot()
    shown = set()
    for label, speed, rmse, kind in points:
        color, marker, name = styles.get(kind, ("tab:gray", "D", "baseline"))
        ax.scatter(speed, rmse, color=color, marker=marker, s=28, label=None if name in shown else name, zorder=3)
        shown.add(name)
        ax.annotate(label, (speed, rmse), xytext=(4, 3), textcoords="offset points", fontsize=7)
    if reference is not None:
        ax.axhline(reference[1], color="k", ls="--", lw=0.8, label=f"{reference[0]} ({reference[1]:.3f} K)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("CPU throughput (output Mpx/s, log)")
    ax.set_ylabel("test RMSE (K, log)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=110)
