"""Figures, drawn with matplotlib (optional: `pip install matplotlib`; imported only when a figure is
drawn): the model comparison panel of test.py --figure, the quick-look PNG of predict --png.

Arrays are Kelvin (H, W) float32 with NaN for no-data, drawn grey (panels) or transparent (quick look).
"""
import importlib

import numpy as np

from errors import DataError


def require_matplotlib(what):
    """matplotlib, or a DataError saying which option needs it and how to install it."""
    try:
        return importlib.import_module("matplotlib")
    except ImportError:
        raise DataError(f"{what} needs matplotlib: pip install matplotlib") from None


def write_png(path, array, title=""):
    """Quick-look PNG of a Kelvin array (2-98 % stretch, colour bar; NaN transparent)."""
    require_matplotlib("--png")
    from matplotlib.figure import Figure
    step = max(1, -(-max(array.shape) // 2000))  # at most ~2000 px a side
    a = array[::step, ::step]
    finite = a[np.isfinite(a)]
    vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    fig = Figure(figsize=(8, 8 * a.shape[0] / a.shape[1] + 0.6))
    ax = fig.add_subplot()
    im = ax.imshow(a, cmap="inferno", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="LST (K)", shrink=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _zoom_window(err, side):
    """Top-left (row, col) of the side x side window (step side/2) with the largest mean error."""
    err = np.where(np.isfinite(err), err, 0.0)
    step = max(side // 2, 1)
    spots = [(r, c) for r in range(0, err.shape[0] - side + 1, step) for c in range(0, err.shape[1] - side + 1, step)]
    return max(spots, key=lambda rc: err[rc[0]:rc[0] + side, rc[1]:rc[1] + side].mean())


def draw_figure(path, rows, error_of, zoom=4):
    """A Fig.12-style panel, one row per sample: LR input, bicubic, the models, ground truth and
    |error| (K) of column `error_of`. rows: [(sample, {column: (H, W) Kelvin})] as figure_rows
    returns (the LR input is drawn over the HR extent). All LST panels share one Kelvin colour scale
    (1st-99th percentile of inputs and ground truths) with a colour bar; the error maps have their
    own. Every panel has a zoomed inset (1/zoom of the side) of the window where the error is
    largest, in the opposite corner. PNG, PDF, SVG by the file name."""
    mpl = require_matplotlib("--figure")
    from matplotlib.figure import Figure

    def finite(a):
        return a[np.isfinite(a)]

    columns = list(rows[0][1]) + [f"|{error_of} - GT|"]
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
            drawn[style is err_style] = im
    fig.colorbar(drawn[False], ax=axes[:, :-1], shrink=0.9, label="LST (K)")
    fig.colorbar(drawn[True], ax=axes[:, -1], shrink=0.9, label="|error| (K)")
    fig.savefig(path, dpi=150)
