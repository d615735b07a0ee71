"""A coarse LST on its own grid (a sensor's: any CRS, any pixel size, not aligned) and the fine guidance grid:
what predict.py does when the LST grid is not the guidance grid divided by the model's scale.

The fine grid is the guidance grid; footprint.Footprint(fine, coarse) relates the two once per scene.
 - Sharpeners (models with `physical_units`, sharpeners.py) fit on the coarse pixels against the guidance
   aggregated over each footprint (Footprint.aggregate), apply the fit at the fine pixels and add back the
   coarse residual through Footprint.nearest (the value of the coarse pixel holding each fine pixel centre):
   sharpen_on_footprint, the one seam between a sharpener and a grid pair.
 - Interpolation baselines (bicubic, bilinear) interpolate the coarse LST at the fine pixel centres
   (Footprint.interpolate): the same model at any ratio.
 - A learned model of scale s sees the LST on its LR grid, the guidance grid coarsened by s from the
   guidance grid's corner (lr_grid). to_lr_grid brings the sensor's LST there: bicubic interpolation at
   the LR pixel centres when the sensor pixel is at least the LR pixel (ratio >= 1), the area-weighted
   mean of the sensor pixels over each LR pixel when it is finer. A sensor pixel further than a factor
   of 2 from the LR pixel (ratio outside RATIO_RANGE) is refused: the model would see textures at a
   scale it was never trained on (a sharpener fits any ratio; or train a model at that ratio).
Everywhere, fine pixels whose containing coarse pixel is NaN (cloud, QC) or outside the coarse grid are
NaN: nothing is painted under a cloud.
"""
import math

import numpy as np

from errors import ConfigError
from footprint import CoarseCoordinates, Footprint, Grid

RATIO_RANGE = (0.5, 2.0)  # sensor pixel / the model's LR pixel (side) that a learned model is run at


def is_sharpener(model):
    """A statistical sharpener (sharpeners.py): physical units, fitted on the scene's own coarse pixels."""
    return getattr(model, "physical_units", False) and hasattr(model, "fit")


def interpolation_mode(model):
    """'bicubic' / 'bilinear' for the parameter-free interpolation baselines (models/baselines.py), else None."""
    mode = getattr(model, "mode", None)
    if mode in ("bicubic", "bilinear") and not any(True for _ in model.parameters()):
        return mode
    return None


def sensor_pixel(fp):
    """Side of a coarse pixel in fine pixels, measured at the centre of the fine grid (the square root of the
    area of a fine pixel's footprint on the coarse grid, inverted)."""
    return pixel_side(fp.fine.shape, fp.to_coarse)


def pixel_side(fine_shape, to_coarse):
    """sensor_pixel from the fine grid's shape and its footprint.CoarseCoordinates map (no weights built)."""
    H, W = fine_shape
    r, c = H // 2, W // 2
    rows, cols = to_coarse(np.array([r, r + 1.0]), np.array([c, c + 1.0]))
    ys = [rows[0, 0], rows[0, 1], rows[1, 1], rows[1, 0]]  # the four corners in order
    xs = [cols[0, 0], cols[0, 1], cols[1, 1], cols[1, 0]]
    area = sum(xs[k] * ys[(k + 1) % 4] - xs[(k + 1) % 4] * ys[k] for k in range(4)) / 2  # shoelace
    return 1.0 / math.sqrt(abs(float(area)))


def lr_grid(fine, scale):
    """The LR grid of a model of `scale` over the fine grid: pixels scale x the fine ones, from the fine grid's
    corner, ceil(H / scale) x ceil(W / scale) (the last row and column may reach past the fine grid)."""
    x0, dx, _, y0, _, dy = fine.transform
    H, W = fine.shape
    return Grid((-(-H // scale), -(-W // scale)), (x0, dx * scale, 0.0, y0, 0.0, dy * scale), fine.crs,
                f"{fine.name} / {scale}")


def check_ratio(ratio, scale, model_name, lst_path):
    """ConfigError naming what fits unless the sensor pixel / LR pixel `ratio` is within RATIO_RANGE."""
    lo, hi = RATIO_RANGE
    if not lo <= ratio <= hi:
        k = max(1, round(ratio * scale))
        raise ConfigError(f"{lst_path}: its pixel is {ratio:.3g} x the {scale}-fine-pixel LR pixel of model "
                          f"{model_name!r} x{scale} (a learned model is run at {lo:g}..{hi:g}): use a sharpener "
                          f"(tsharp, linreg, rf), which fits any ratio, or a model trained at x{k} (prepare.py "
                          f"--scales {k}, then train.py)")


def to_lr_grid(lst, coarse, lr, ratio):
    """The sensor's LST (h, w) K on grid `coarse` -> (the LST on grid `lr` float32, how it was done): bicubic
    interpolation at the LR pixel centres (Footprint.interpolate, NaN where the sensor pixel holding the
    centre is NaN) when ratio (sensor pixel / LR pixel) >= 1, else the mean of the sensor pixels over each
    LR pixel (Footprint.aggregate with half the LR pixel covered at least)."""
    if ratio >= 1:
        out = Footprint(lr, coarse).interpolate(lst, "bicubic")
        how = "bicubic interpolation at the LR pixel centres"
    else:
        out = Footprint(coarse, lr, min_valid=0.5).aggregate(lst)
        how = "the area-weighted mean of the sensor pixels over each LR pixel"
    return np.asarray(out, np.float32), how


def onto_grid(values, source, target):
    """Rasters (..., h, w) on Grid `source` -> (float32 on Grid `target`, how): to_lr_grid's rule with the ratio
    (source pixel / target pixel) measured at the target's centre: bicubic at the target pixel centres from
    an equal or coarser source, the area-weighted mean of a finer one. prepare.py --real-ratio brings the
    guidance onto the coarse LST's grid refined by the scale with it."""
    ratio = pixel_side(target.shape, CoarseCoordinates(target, source))
    return to_lr_grid(values, source, target, ratio)


def sharpen_on_footprint(model, lst, guidance, fp):
    """A sharpener's fit and prediction on a grid pair: lst (h, w) K on fp.coarse, guidance (C, H, W) on
    fp.fine -> (H, W) float32 K. The sharpener runs its own recipe through the footprint (sharpeners.py:
    fit on the coarse pixels whose footprint is valid, the residual from the output's footprint means)."""
    fit = model.fit_scene(lst, guidance, footprint=fp)
    return np.asarray(model.sharpen(lst, guidance, fit, footprint=fp), np.float32)
