"""Statistical LST sharpeners, the field's own baselines: TsHARP, DisTrad-style linear regression, random
forest and the Data Mining Sharpener (DMS).

They are registered models (groklst.MODELS: `tsharp`, `linreg`, `rf`, `dms`), guided (kind 'gisr', x2/x4/x8),
parameter-free (no checkpoint) and called forward(lr_lst, hr_guidance) like every model, so test.py,
`test.py --models`, predict.py and the figures use them unchanged. They live here and not under models/
because they are not torch-only, copy-alone networks: they fit a regression to each image with numpy
(scikit-learn for rf and dms) through a footprint operator (BlockFootprint: data.block_mean_tensor's rule).

Units. They work in physical units (TsHARP's vegetation fraction is nonlinear in NDVI, so a z-scored
NDVI would not do): the class attribute `physical_units = True` makes groklst.downscale hand them
lr_lst in Kelvin and hr_guidance in the bands' own units, NaN (no data) included, and take Kelvin back.

Footprints. Everything that relates the fine grid (H, W) to the coarse one (h, w) goes through one
footprint operator per image, `Sharpener.footprint(lr_shape, hr_shape, footprint)`, with three members:
aggregate (area-weighted mean over each coarse footprint), nearest (coarse value at each fine pixel)
and fine_in_coarse (fine pixel centres in coarse pixel coordinates); see BlockFootprint. Without a
footprint it is the integer-block grid pair (H = h * scale, BlockFootprint); with a footprint.Footprint
(any two north-up grids: another CRS, any ratio) it is that Footprint behind the same members
(GridFootprint).

The API (numpy arrays or tensors; lr_lst (h, w) K on the coarse grid, hr_guidance (C, H, W) in the
bands' units on the fine grid, leading 1s allowed; fine maps come back as numpy (H, W), K):
    fit = model.fit(lr_lst, hr_guidance, footprint=None)          # or fit_scene: also kept as model.fitted
    fine = model.sharpen(lr_lst, hr_guidance, fit, footprint=None)
    mean, std = model.sharpen_with_spread(lr_lst, hr_guidance, fit, footprint=None)   # dms only
footprint: None (the GrokLST protocol: H = h * scale, test.py and forward), a footprint.Footprint
(the coarse sensor's own grid: MODIS sinusoidal, geographic, any CRS and ratio, built once per grid
pair and reused) or a BlockFootprint (taken as Footprint.aligned: the scene protocol on integer
blocks). tsharp, linreg and rf return float64 maps, dms float32. A fit belongs to its grid pair:
sharpen it with the same footprint (dms's local models apply only there; on another coarse grid the
global model alone).
With a footprint (the scene protocol, predict.py's coarse LST on any grid):
  - the fit uses the coarse pixels whose whole footprint is valid: every fine pixel finite and the
    footprint inside the fine grid (coverage 1); partly covered ones at the fine grid's edge are not
    trained on, as with a NaN pixel;
  - fine pixels whose centre lies in a NaN coarse pixel, or outside the coarse grid, are NaN
    (footprint.interpolate's rule: nothing painted under a cloud), and a fine pixel with a
    non-finite guidance band takes the LR LST of its coarse pixel (then corrected with the others);
  - the residual is LR LST - aggregate(output) (footprint means over the finite pixels, the
    Footprint's own min_valid rule). It is added back smooth first, by the footprint's bicubic
    interpolation (Footprint.interpolate: holes filled from their neighbours, nothing under a NaN
    coarse pixel), then by nearest until no coarse residual exceeds RESIDUAL_TOL (1 mK), at most
    RESIDUAL_PASSES (6) times. Why both: the residual is mostly the regression's error, smooth at
    the coarse scale, so spreading it smoothly is the better guess inside a footprint (pyDMS adds it
    cubically); but an interpolated residual does not have the residual's footprint means, and the
    nearest passes restore them. Several passes: a footprint on a foreign grid is not exactly the
    fine pixels whose centre it holds (its edge pixels are shared with the neighbours), so one pass
    leaves ~10 % of the residual's jump between neighbours, each further pass ~10 % of what is left;
    the footprint means of the output then equal the LR LST to < 2 mK
    (tests/test_sharpeners.py::test_sharpeners_on_a_foreign_grid_beat_interpolation). Measured on
    the side-by-side scene of docs/baselines.md (dms, pyDMS's settings): 2.88 K RMSE with nearest
    alone, 2.73 K with bicubic alone (not consistent), 2.69 K with both.

The recipe shared by tsharp, linreg and rf (Kustas et al. 2003 DisTrad; Agam et al. 2007; Gao et al.
2012), in float64, for one image with LR LST T (h, w) and guidance G (C, H, W):
 1. coarse guidance Gc = aggregate(G) (NaN if one of the footprint's pixels is);
 2. fit T = f(x(Gc)) over the coarse pixels where T and every feature x are finite (NaN pixels are
    left out of the fit);
 3. fine prediction = f(x(G)) + residual, residual = nearest(T - f(x(Gc))).
    The residual carries what the regression misses at the coarse scale (it makes the block mean of
    the output close to T; groklst.make_consistent makes it exact). Where T or Gc is NaN the residual
    is 0 (the mean residual of a least-squares fit with intercept); where a fine guidance pixel is not
    finite the output is T of its block; NaN only where both are missing.
DMS (class DMS) adds homogeneity-weighted training, bagged trees with linear leaves and local models.

Fitting. forward fits each batch element on its own LR image (the protocol of test.py: one fit per
test image). For a whole scene cut into tiles, predict.py calls `fit_scene(lr_lst, hr_guidance)` once
on the whole scene first; forward then applies that fit to every tile instead of refitting, and only
the residual (local: one coarse pixel) comes from the tile's own LR pixels. (forward is the
integer-block protocol; a scene on foreign grids calls fit_scene / sharpen with its footprint.)

When a fit is not possible. `fit` raises CannotFit (a DataError: one line naming the model, the counts
and what to do) instead of writing a meaningless map:
  - fewer than SAMPLES_PER_PARAMETER (10) valid coarse pixels per fitted parameter. Parameters:
    tsharp 2 (a, b); linreg C + 1 (intercept and one slope per band); rf and dms C + 1 too. Why 10:
    the prediction of a least-squares fit with p parameters on n samples has, averaged over the
    samples, a variance of p / n times the noise variance, and out of sample the squared error is
    about (1 + p / (n - p - 1)) times the noise's; n >= 10 p keeps the fit's own error within ~10 %
    of the noise variance (~5 % in RMSE), where n ~ p reproduces the noise (one valid pixel gave a
    TsHARP map at 139 K from a 278 K input; five a linreg map spanning 203-357 K). The tree models
    are held to the linear count on the same bands: a DMS tree with one leaf is that linear fit, and
    a forest should not claim to resolve more with fewer samples than a plane needs;
  - a guidance band the regression uses with fewer valid coarse pixels than that (all NaN, say);
  - for the linear fits (tsharp's NDVI, each linreg band), a band that is constant over the valid
    coarse pixels: its slope is undefined (trees simply never split on a constant band).
"""
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn as nn

from data import BANDS, block_mean_tensor
from errors import ConfigError, DataError
from footprint import Footprint

SAMPLES_PER_PARAMETER = 10
RESIDUAL_PASSES = 6   # most residual corrections through a footprint.Footprint (module docstring: why several)
RESIDUAL_TOL = 1e-3   # K: they stop once no coarse residual is larger
CHUNK_PIXELS = 1 << 16  # fine pixels per chunk where fine maps are processed in row chunks (DMS)


class CannotFit(DataError):
    """Too few valid coarse pixels, or an unusable guidance band, for a sharpener's regression; the
    message names the model, the counts and what to do."""


def _numpy(x, ndim, dtype=np.float64):
    """A tensor or array with `ndim` trailing dims (leading singleton dims dropped) -> numpy `dtype`
    (None: float32 and float64 kept as they are, anything else float64)."""
    x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    if dtype is not None or x.dtype not in (np.float32, np.float64):
        x = x.astype(dtype or np.float64, copy=False)
    while x.ndim > ndim and x.shape[0] == 1:
        x = x[0]
    if x.ndim != ndim:
        raise ValueError(f"expected {ndim} dims (after dropping leading 1s), got shape {x.shape}")
    return x


class BlockFootprint:
    """The footprint operator of an integer-aligned grid pair: coarse pixel (i, j) is the fine block
    [i s, (i + 1) s) x [j s, (j + 1) s), s = scale (data.block_mean's rule, H = h * s, W = w * s).

    The interface the sharpeners use (another grid pair provides the same three members):
      aggregate(x, max_nan_fraction=0.0): (C, H, W) or (H, W) -> (..., h, w) float64, the area-weighted
          mean of x over each coarse footprint, over its finite fine pixels; NaN where more than
          `max_nan_fraction` of the footprint is not finite (0: any NaN pixel; 1: only an all-NaN one);
      nearest(c): (..., h, w) -> (..., H, W), the value of the coarse pixel containing each fine pixel centre;
      fine_in_coarse: (rows, cols), float arrays (H, W): each fine pixel centre in coarse pixel
          coordinates (coarse pixel (i, j) is centred on (i, j) and covers [i - 0.5, i + 0.5) x [j - 0.5, j + 0.5)).
    aggregate works through row bands of about 4 M fine pixels converted to float64 at a time, so a
    float32 scene is never copied whole; fine_in_coarse are broadcast views (no memory)."""

    chunk_pixels = 1 << 22

    def __init__(self, scale, fine_shape):
        H, W = fine_shape
        if H % scale or W % scale:
            raise ValueError(f"fine grid {H} x {W} is not a whole number of {scale} x {scale} blocks")
        self.scale, self.fine_shape, self.coarse_shape = scale, (H, W), (H // scale, W // scale)

    def aggregate(self, x, max_nan_fraction=0.0):
        x = np.asarray(x)
        if x.ndim == 3:
            return np.stack([self.aggregate(band, max_nan_fraction) for band in x])
        s, (h, w) = self.scale, self.coarse_shape
        step = max(1, self.chunk_pixels // (s * s * w))  # coarse rows per band of float64 work
        out = np.empty((h, w))
        for i in range(0, h, step):
            band = x[i * s:(i + step) * s]
            if np.isfinite(band).all():  # no NaN rule to apply: the plain block mean, by two contiguous sums (~10x faster)
                rows = len(band) // s
                out[i:i + step] = band.reshape(rows, s, -1).sum(1, dtype=np.float64).reshape(rows, w, s).sum(2) / (s * s)
            else:
                band = torch.from_numpy(np.ascontiguousarray(band, np.float64))
                out[i:i + step] = block_mean_tensor(band, s, max_nan_fraction).numpy()
        return out

    def nearest(self, c):
        return np.repeat(np.repeat(c, self.scale, -2), self.scale, -1)

    @property
    def fine_in_coarse(self):
        (H, W), s = self.fine_shape, self.scale
        rows = (np.arange(H) + 0.5) / s - 0.5
        cols = (np.arange(W) + 0.5) / s - 0.5
        return np.broadcast_to(rows[:, None], (H, W)), np.broadcast_to(cols[None, :], (H, W))


class GridFootprint:
    """A footprint.Footprint (any two north-up grids: CRSs, ratio, alignment) behind BlockFootprint's
    members, for the sharpeners:
      aggregate(x, max_nan_fraction=0.0): (C, H, W) or (H, W) -> (..., h, w) float64 footprint means,
          one band at a time; max_nan_fraction 0: NaN where a pixel of the footprint is not finite or
          the footprint reaches outside the fine grid (coverage < 1), the coarse pixels a regression
          may train on; any other value: Footprint.aggregate's own rule (NaN where less than its
          min_valid of the footprint is valid);
      nearest(c): (..., h, w) -> (..., H, W), Footprint.nearest's rule (the coarse pixel holding the
          fine pixel centre, Footprint.coarse_index; NaN where it is NaN or outside the coarse grid);
      fine_in_coarse: Footprint.fine_in_coarse moved to BlockFootprint's centre-based coordinates
          (coarse pixel (i, j) centred on (i, j)), read by row slices as float32 numpy (no copy of
          the whole grid).
    Speed (a Landsat scene against MODIS: 61 M fine pixels, called ~30 times per DMS fit and apply):
    with max_nan_fraction 0 (training: the guidance, ~20 calls) a band is aggregated in float64 by
    products with Footprint.weights (its values cast once, its indices shared); otherwise (residuals:
    fine maps of K) Footprint.aggregate runs in float32, on its own weights, about a reference value
    of the map (its mean over a 64 x 64 sample: float32 sums of ~1000 deviations of a few K keep
    ~1e-5 K); nearest gathers through coarse_index (built once, cached by the Footprint) instead of
    interpolate's per-call coordinates."""

    def __init__(self, footprint):
        self.footprint = footprint
        self.fine_shape, self.coarse_shape = tuple(footprint.fine.shape), tuple(footprint.coarse.shape)
        self._matrix = self._row_sum = self._inside = self._index = None

    def aggregate(self, x, max_nan_fraction=0.0):
        x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
        if x.ndim == 3:
            return np.stack([self.aggregate(band, max_nan_fraction) for band in x])
        if max_nan_fraction != 0:  # float32 about a reference: the Footprint's own weights, ~1e-5 K
            sample = x[::max(1, x.shape[0] // 64), ::max(1, x.shape[1] // 64)]
            ref = float(np.nanmean(sample)) if np.isfinite(sample).any() else 0.0
            shifted = np.asarray(x - np.asarray(ref, x.dtype), np.float32)
            return self.footprint.aggregate(shifted).astype(np.float64) + ref
        finite = bool(np.isfinite(x).all())
        x = np.asarray(x, np.float64)
        if self._matrix is None:
            w = self.footprint.weights
            self._matrix = torch.sparse_csr_tensor(w.crow_indices(), w.col_indices(), w.values().double(), w.shape,
                                                   check_invariants=False)  # the Footprint's own, checked there
            self._row_sum = (self._matrix @ torch.ones(w.shape[1], dtype=torch.float64)).numpy()
            self._inside = (self.footprint.coverage.numpy() >= 1.0).reshape(-1) & (self._row_sum > 0)
        if finite:
            total = (self._matrix @ torch.from_numpy(x.reshape(-1))).numpy()
            bad = ~self._inside
        else:  # NaN pixels: their footprints are NaN (exact 0 / 1 sums of the NaN indicator)
            total = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).reshape(-1)
            total = (self._matrix @ torch.from_numpy(total)).numpy()
            missing = torch.from_numpy((~np.isfinite(x)).reshape(-1).astype(np.float64))
            bad = ~self._inside | ((self._matrix @ missing).numpy() > 0)
        mean = total / np.where(self._inside, self._row_sum, 1.0)
        mean[bad] = np.nan
        return mean.reshape(self.coarse_shape)

    def nearest(self, c):
        c = np.asarray(c)
        if self._index is None:
            self._index = self.footprint.coarse_index.numpy().reshape(-1)
        flat = c.reshape(c.shape[:-2] + (-1,))
        out = flat[..., np.maximum(self._index, 0)]
        out[..., self._index < 0] = np.nan
        return out.reshape(c.shape[:-2] + self.fine_shape)

    @property
    def fine_in_coarse(self):
        rows, cols = self.footprint.fine_in_coarse
        return _CentreBased(rows), _CentreBased(cols)


class _CentreBased:
    """A corner-based coordinate tensor (H, W) read by slices as centre-based float32 numpy."""

    def __init__(self, corner_based):
        self.corner_based = corner_based

    def __getitem__(self, key):
        return self.corner_based[key].numpy() - np.float32(0.5)


def add_residual(fp, lr, fine, passes=1, radiance=False, tol=0.0, smooth=False):
    """Residual correction in place: fine (H, W) += nearest(lr - aggregate(fine)), up to `passes`
    times, stopping once no coarse residual exceeds `tol` K; footprint means over the finite fine
    pixels (max_nan_fraction 1), in T^4 with radiance (fine pixels as T, lr (h, w) K). Coarse pixels
    with no residual (NaN) correct nothing. smooth (a GridFootprint): the first residual is spread by
    the footprint's bicubic interpolation (its holes filled from their neighbours) before the nearest
    passes. Returns fine."""
    def residual_of(fine):
        coarse = fp.aggregate(fine ** 4 if radiance else fine, 1.0)
        return lr - (coarse ** 0.25 if radiance else coarse)

    if smooth:
        spread = fp.footprint.interpolate(residual_of(fine).astype(np.float32), "bicubic")
        fine += np.nan_to_num(spread, nan=0.0, posinf=0.0, neginf=0.0).astype(fine.dtype)
    for _ in range(passes):
        residual = np.nan_to_num(residual_of(fine), nan=0.0, posinf=0.0, neginf=0.0)
        if tol > 0 and np.abs(residual).max() <= tol:
            break
        fine += fp.nearest(residual.astype(fine.dtype))
    return fine


def finish(fp, lr, fine):
    """In place: a non-finite fine pixel (a NaN guidance band) takes the LR LST of its coarse pixel (nearest).
    Without a footprint it comes after the residual correction (the filled pixels get T itself); with one
    before it (the correction then makes the footprint means of the map T). Returns fine."""
    lr_fine = fp.nearest(lr.astype(fine.dtype))
    missing = ~np.isfinite(fine)
    fine[missing] = lr_fine[missing]
    return fine


def mask_outside(fp, lr, fine):
    """In place: NaN for the fine pixels whose centre lies in a NaN coarse pixel or outside the coarse grid
    (nothing is painted under a cloud). Returns fine."""
    fine[np.isnan(fp.nearest(lr.astype(fine.dtype)))] = np.nan
    return fine


def least_squares(x, y):
    """Ordinary least squares with intercept: x (N, F), y (N,) -> coefficients (F + 1,) = [intercept, slopes]."""
    design = np.concatenate([np.ones((len(x), 1)), x], 1)
    return np.linalg.lstsq(design, y, rcond=None)[0]


def ridge(x, y, alpha):
    """Least squares with intercept and an L2 penalty alpha * |slopes|^2 (the intercept is not
    penalised; alpha 0: ordinary least squares, minimum-norm slopes where x is rank-deficient):
    x (N, F), y (N,) -> [intercept, slopes] (F + 1,)."""
    x_mean, y_mean = x.mean(0), y.mean()
    xc = x - x_mean
    if alpha > 0:
        slopes = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    else:
        slopes = np.linalg.lstsq(xc, y - y_mean, rcond=None)[0]
    return np.concatenate([[y_mean - x_mean @ slopes], slopes])


class Sharpener(nn.Module):
    """Regression sharpening (module docstring). Subclasses define `features` (guidance -> regressors),
    optionally `image_stats` (per-image constants of the features), `fit_regression` and `regress`.
    lr_lst (B, 1, h, w) K, hr_guidance (B, C, H, W) physical units -> (B, 1, H, W) K float32."""

    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()
    physical_units = True  # groklst.downscale: Kelvin and physical guidance in, Kelvin out
    model_name = None      # the registry name, in messages
    fits_slopes = True     # a slope per used band: a constant band cannot be fitted
    remedy = "use a larger area (more valid LR pixels) or fewer guidance bands (data.guidance_bands)"

    def __init__(self, scale: int = 8, guidance_channels: int = len(BANDS), guidance_bands: tuple = None):
        super().__init__()
        self.scale = scale
        self.guidance_channels = guidance_channels
        if guidance_bands is not None and len(guidance_bands) == guidance_channels:
            self.band_names = [str(b) for b in guidance_bands]
        elif guidance_channels == len(BANDS):
            self.band_names = list(BANDS)
        else:
            self.band_names = [f"band {i + 1}" for i in range(guidance_channels)]
        self.fitted = None  # a fit of the whole scene (fit_scene): applied instead of fitting each image

    # ------------------------------------------------------------------ what a subclass defines

    @property
    def fit_bands(self):
        """Indices of the guidance bands the regression uses."""
        return list(range(self.guidance_channels))

    @property
    def n_parameters(self):
        """Fitted parameters of the regression (for the minimum number of samples)."""
        return len(self.fit_bands) + 1

    def check_dependencies(self):
        """Raise ConfigError naming the pip package when an optional dependency is missing."""

    def image_stats(self, coarse, valid):
        """Per-image constants of the features from the coarse guidance (C, n) where `valid` (n,)."""
        return {}

    def features(self, guidance, stats):
        """Regressors of guidance (C, n) -> (n, F)."""
        raise NotImplementedError

    def fit_regression(self, x, y):
        return least_squares(x, y)

    def regress(self, coef, x):
        """Predictions (n,) of the fitted regression at features x (n, F); NaN rows give NaN."""
        return coef[0] + x @ coef[1:]

    # ------------------------------------------------------------------ the recipe

    def footprint(self, lr_shape, hr_shape, footprint=None):
        """The footprint operator between this image's LR grid (h, w) and its guidance grid (H, W):
        BlockFootprint(scale) without `footprint`; else the footprint.Footprint behind GridFootprint
        (a BlockFootprint is taken as Footprint.aligned(its fine shape, its scale)), checked against
        both shapes."""
        if footprint is None:
            if tuple(hr_shape) != (lr_shape[0] * self.scale, lr_shape[1] * self.scale):
                raise ValueError(f"{type(self).__name__}: guidance {tuple(hr_shape)} is not LR {tuple(lr_shape)} x {self.scale}")
            return BlockFootprint(self.scale, hr_shape)
        if isinstance(footprint, BlockFootprint):  # the scene protocol on integer blocks
            footprint = Footprint.aligned(footprint.fine_shape, footprint.scale)
        fp = GridFootprint(footprint)
        if (tuple(lr_shape), tuple(hr_shape)) != (fp.coarse_shape, fp.fine_shape):
            raise ValueError(f"{type(self).__name__}: LR {tuple(lr_shape)} and guidance {tuple(hr_shape)} are not the "
                             f"footprint's coarse {fp.coarse_shape} and fine {fp.fine_shape} grids")
        return fp

    @property
    def min_samples(self):
        return SAMPLES_PER_PARAMETER * self.n_parameters

    def valid_samples(self, coarse, y, usable=True):
        """The coarse pixels (n,) a fit may use: y (n,) LR LST finite, `usable`, and every band of
        fit_bands finite in coarse (C, n). Raises CannotFit (module docstring) when they are too few,
        a used band has too few finite pixels, or (fits_slopes) a used band is constant over them."""
        name, need = self.model_name or type(self).__name__, self.min_samples
        lr_ok = np.isfinite(y) & usable
        if lr_ok.sum() >= need:  # enough LR pixels: a band that leaves too few is the one to name
            for c in self.fit_bands:
                n_band = int((lr_ok & np.isfinite(coarse[c])).sum())
                if n_band < need:
                    raise CannotFit(f"model {name!r}: guidance band {self.band_names[c]!r} is valid in only {n_band} of the "
                                    f"{int(lr_ok.sum())} coarse pixels with a valid LST (needs {need}; a footprint with a "
                                    f"NaN pixel is not valid); fix that band or drop it from data.guidance_bands")
        valid = lr_ok & np.isfinite(coarse[self.fit_bands]).all(0)
        n = int(valid.sum())
        if n < need:
            pixels = "pixel" if n == 1 else "pixels"
            raise CannotFit(f"model {name!r}: {n} valid coarse {pixels}, needs at least {need} ({SAMPLES_PER_PARAMETER} "
                            f"per fitted parameter, {self.n_parameters} parameters); {self.remedy}")
        if self.fits_slopes:
            for c in self.fit_bands:
                v = coarse[c][valid]
                if v.max() - v.min() <= 1e-12 * max(1.0, np.abs(v).max()):
                    raise CannotFit(f"model {name!r}: guidance band {self.band_names[c]!r} is constant ({v[0]:.6g}) over the "
                                    f"{n} valid coarse pixels, so its slope cannot be fitted; use a larger area or drop it "
                                    f"from data.guidance_bands")
        return valid

    def fit(self, lr_lst, hr_guidance, footprint=None):
        """Fit one image: lr_lst (h, w) K, hr_guidance (C, H, W) (numpy or tensors, leading 1s allowed),
        footprint: None or the grid pair's (module docstring). Returns the fit {'stats': feature
        constants, 'coef': the regression, 'samples': coarse pixels used}. Raises CannotFit when the
        image cannot support the fit (module docstring)."""
        self.check_dependencies()
        lr, gui = _numpy(lr_lst, 2), self._guidance(hr_guidance)
        coarse = self.footprint(lr.shape, gui.shape[1:], footprint).aggregate(gui).reshape(len(gui), -1)
        y = lr.reshape(-1)
        valid = self.valid_samples(coarse, y)
        stats = self.image_stats(coarse, valid)
        x = self.features(coarse, stats)
        valid &= np.isfinite(x).all(1)
        coef = self.fit_regression(x[valid], y[valid])
        return {"stats": stats, "coef": coef, "samples": int(valid.sum())}

    def fit_scene(self, lr_lst, hr_guidance, footprint=None):
        """fit(), kept as self.fitted: predict.py fits the whole scene once, before tiling; forward (and
        sharpen_with_spread without a fit) then use it for every tile."""
        self.fitted = self.fit(lr_lst, hr_guidance, footprint)
        return self.fitted

    def sharpen(self, lr_lst, hr_guidance, fit, footprint=None):
        """Apply a fit to one image: lr_lst (h, w) K, hr_guidance (C, H, W), footprint: None or the grid
        pair's (module docstring) -> (H, W) float64 K."""
        lr, gui = _numpy(lr_lst, 2), self._guidance(hr_guidance)
        fp = self.footprint(lr.shape, gui.shape[1:], footprint)
        fine = self.regress(fit["coef"], self.features(gui.reshape(len(gui), -1), fit["stats"])).reshape(gui.shape[1:])
        if footprint is not None:  # residual over every fine pixel the sensor saw, then nothing under a NaN pixel
            fine = add_residual(fp, lr, finish(fp, lr, fine), RESIDUAL_PASSES, tol=RESIDUAL_TOL, smooth=True)
            return mask_outside(fp, lr, fine)
        coarse = fp.aggregate(gui).reshape(len(gui), -1)
        residual = lr - self.regress(fit["coef"], self.features(coarse, fit["stats"])).reshape(lr.shape)
        out = fine + fp.nearest(np.nan_to_num(residual, nan=0.0, posinf=0.0, neginf=0.0))
        return np.where(np.isfinite(out), out, fp.nearest(lr))

    def forward(self, lr_lst, hr_guidance=None):
        if hr_guidance is None:
            raise ConfigError(f"{type(self).__name__} is guided: it needs hr_guidance")
        out = []
        for lr, gui in zip(lr_lst, hr_guidance):
            fit = self.fitted or self.fit(lr, gui)
            out.append(torch.from_numpy(np.asarray(self.sharpen(lr, gui, fit), np.float64)))
        return torch.stack(out)[:, None].to(device=lr_lst.device, dtype=torch.float32)

    def _guidance(self, hr_guidance, dtype=np.float64):
        gui = _numpy(hr_guidance, 3, dtype)
        if len(gui) != self.guidance_channels:
            raise ValueError(f"{type(self).__name__}: guidance has {len(gui)} bands, expected {self.guidance_channels}")
        return gui


class TsHARP(Sharpener):
    """TsHARP (Agam et al. 2007): LST linear in the vegetation fraction

        fv = 1 - ((NDVImax - NDVI) / (NDVImax - NDVImin)) ** 0.625,     LST = a + b * fv

    a, b by least squares at the coarse scale (NDVI block-averaged to the LR grid), applied to the
    fine NDVI, plus the coarse residual. NDVImin / NDVImax: the minimum and maximum of the image's valid
    coarse NDVI (the pixels the fit uses), so the fit spans fv in [0, 1]; fine NDVI outside that range
    is clipped to it (fv in [0, 1]). Needs band 'ndvi' among data.guidance_bands; uses only that band."""

    paper = "TsHARP: Agam et al., Remote Sens. Environ. 107:545-558 (2007)"
    model_name = "tsharp"
    remedy = "use a larger area (more valid LR pixels)"
    exponent = 0.625

    def __init__(self, scale: int = 8, guidance_channels: int = len(BANDS), guidance_bands: tuple = BANDS):
        super().__init__(scale, guidance_channels, guidance_bands)
        bands = [b.lower() for b in guidance_bands]
        if "ndvi" not in bands:
            raise ConfigError(f"model 'tsharp' needs band 'ndvi' in data.guidance_bands (has {list(guidance_bands)})")
        self.ndvi = bands.index("ndvi")

    @property
    def fit_bands(self):
        return [self.ndvi]

    @property
    def n_parameters(self):
        return 2

    def image_stats(self, coarse, valid):
        ndvi = coarse[self.ndvi][valid]
        return {"ndvi_min": float(ndvi.min()), "ndvi_max": float(ndvi.max())} if len(ndvi) else {"ndvi_min": 0.0, "ndvi_max": 1.0}

    def features(self, guidance, stats):
        return self.vegetation_fraction(guidance[self.ndvi], stats["ndvi_min"], stats["ndvi_max"])[:, None]

    @classmethod
    def vegetation_fraction(cls, ndvi, ndvi_min, ndvi_max):
        """fv of NDVI (any shape); NaN stays NaN. NDVImax = NDVImin gives fv = 0 (a constant fit)."""
        ratio = np.clip((ndvi_max - ndvi) / max(ndvi_max - ndvi_min, 1e-12), 0.0, 1.0)
        return 1.0 - ratio ** cls.exponent


class LinReg(Sharpener):
    """DisTrad-style multi-linear sharpener (Kustas et al. 2003, with every band as a regressor):
    LST = a + sum_c b_c * G_c over every configured guidance band, least squares at the coarse
    scale (guidance block-averaged to the LR grid), applied at the fine scale, plus the coarse residual."""

    paper = "DisTrad-style multi-linear regression: Kustas et al., Remote Sens. Environ. 85:429-440 (2003)"
    model_name = "linreg"
    remedy = ("use a larger area (more valid LR pixels), fewer guidance bands (data.guidance_bands) "
              "or model 'tsharp' (2 parameters)")

    def features(self, guidance, stats):
        return guidance.T


def _sklearn(model_name, what):
    """sklearn's `what` module ('tree' or 'ensemble'), or a one-line ConfigError naming the package.
    (Plain imports, not importlib: the library names every module it imports.)"""
    try:
        if what == "tree":
            import sklearn.tree as module
        else:
            import sklearn.ensemble as module
    except ImportError:
        raise ConfigError(f"model {model_name!r} needs scikit-learn: pip install scikit-learn") from None
    return module


class RFSharpener(Sharpener):
    """Random-forest sharpener in the spirit of the Data Mining Sharpener (Gao et al. 2012; Hutengs &
    Vohland 2016): LST = RF(G) over every configured guidance band, a scikit-learn RandomForestRegressor
    (n_estimators trees, random_state 0, one thread: the same forest every run) trained on the coarse
    pixels (guidance block-averaged to the LR grid), applied at the fine scale, plus the coarse residual.
    Needs scikit-learn (imported when it fits). A whole-scene fit (predict.py) trains on every valid
    coarse pixel: about a minute for 10^5 pixels on one core."""

    paper = "RF sharpener (Data Mining Sharpener): Gao et al., Remote Sens. 4:3287-3319 (2012); Hutengs & Vohland (2016)"
    model_name = "rf"
    fits_slopes = False

    def __init__(self, scale: int = 8, guidance_channels: int = len(BANDS), guidance_bands: tuple = None,
                 n_estimators: int = 50, min_samples_leaf: int = 2):
        super().__init__(scale, guidance_channels, guidance_bands)
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf

    def check_dependencies(self):
        _sklearn("rf", "ensemble")

    def features(self, guidance, stats):
        return guidance.T

    def fit_regression(self, x, y):
        forest = _sklearn("rf", "ensemble").RandomForestRegressor(
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf, random_state=0, n_jobs=1)
        return forest.fit(x, y)

    def regress(self, forest, x):
        out = np.full(len(x), np.nan)
        ok = np.isfinite(x).all(1)
        if ok.any():
            out[ok] = forest.predict(x[ok])
        return out


# --------------------------------------------------------------------------- the Data Mining Sharpener

CV_LIMIT = 1000.0  # pyDMS: a coarse pixel whose CV is not below this is not trained on


def coefficient_of_variation(footprint, guidance):
    """pyDMS's homogeneity statistic. guidance (C, H, W) -> (band means (C, h, w), CV (h, w)), float64:
    for each coarse pixel, std / |mean| of each band over its footprint (population std, from the
    footprint means of x and x^2; NaN where the footprint has a NaN pixel), averaged over the bands.
    |mean| below 1e-6 counts as 1e-6 (pyDMS: a mean of exactly 0)."""
    means, cvs = [], []
    for band in guidance:
        mean = footprint.aggregate(band)
        ref = float(np.nanmean(mean)) if np.isfinite(mean).any() else 0.0
        # x^2 about a reference near the band's mean: E[x^2] - E[x]^2 without cancellation (DEM ~ 3000 m)
        square = footprint.aggregate(np.square(band - np.asarray(ref, band.dtype)))
        std = np.sqrt(np.maximum(square - (mean - ref) ** 2, 0.0))
        means.append(mean)
        cvs.append(std / np.maximum(np.abs(mean), 1e-6))
    return np.stack(means), np.mean(cvs, 0)


def homogeneity_weights(cv, percentile=80.0):
    """pyDMS's training weights (n,) of coarse pixels with CV (n,) (finite): 1 / CV rescaled to [0, 1]
    over these pixels (the most homogeneous 1, the most heterogeneous 0), halved where CV is at or
    above its `percentile`-th percentile. CV = 0 counts as the smallest positive CV; all CVs equal: 1."""
    positive = cv[cv > 0]
    inverse = 1.0 / np.maximum(cv, positive.min() if len(positive) else 1.0)
    span = inverse.max() - inverse.min()
    weight = (inverse - inverse.min()) / span if span > 0 else np.ones_like(inverse)
    weight[cv >= np.percentile(cv, percentile)] *= 0.5
    return weight


def moving_windows(h, w, size):
    """pyDMS's local windows on an h x w coarse grid: the grid cut into size x size windows (the last
    of a row or column cut short), each trained on itself grown by size / 4 on every side (cut at the
    grid's edge, bounds truncated to whole pixels as pyDMS) -> {(wy, wx): (rows, cols) slices}."""
    grow = 0.25 * size
    return {(wy, wx): (slice(int(max(wy * size - grow, 0)), int(min((wy + 1) * size + grow, h))),
                       slice(int(max(wx * size - grow, 0)), int(min((wx + 1) * size + grow, w))))
            for wy in range(math.ceil(h / size)) for wx in range(math.ceil(w / size))}


def window_of(rows, cols, size, grid):
    """Index wy * grid[1] + wx of the window (moving_windows) holding each fine pixel centre, from its
    coarse pixel coordinates rows, cols (fine_in_coarse); grid = (windows down, windows across)."""
    wy = np.clip(np.floor((rows + 0.5) / size), 0, grid[0] - 1).astype(np.int64)
    wx = np.clip(np.floor((cols + 0.5) / size), 0, grid[1] - 1).astype(np.int64)
    return wy * grid[1] + wx


def bilinear(c, rows, cols):
    """Bilinear interpolation of a coarse field c (h, w) at coarse pixel coordinates rows, cols (any
    shape, pixel centres at integers), constant beyond the outer pixel centres."""
    h, w = c.shape
    r, q = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    r0, q0 = np.minimum(r.astype(np.int64), max(h - 2, 0)), np.minimum(q.astype(np.int64), max(w - 2, 0))
    r1, q1 = np.minimum(r0 + 1, h - 1), np.minimum(q0 + 1, w - 1)
    fr, fq = r - r0, q - q0
    return (c[r0, q0] * (1 - fr) + c[r1, q0] * fr) * (1 - fq) + (c[r0, q1] * (1 - fr) + c[r1, q1] * fr) * fq


class DMS(Sharpener):
    """Data Mining Sharpener (Gao, Kustas & Anderson 2012) as pyDMS implements it (Guzinski & Nieto 2019,
    Sen-ET): bagged regression trees with linear leaves, trained on homogeneity-weighted coarse pixels,
    local (moving-window) and global models combined per pixel by their residuals, residual correction.

    For one image, LR LST T (h, w) K and guidance G (C, H, W) in the bands' units:
     1. Homogeneity (Gao 2012 sect. 2.2; pyDMS): per coarse pixel the coefficient of variation std / |mean|
        of each band over the footprint (from aggregate(G) and aggregate(G^2), population std), averaged
        over all C bands (coefficient_of_variation). Training pixels: T and every band mean finite and
        CV < 1000. Weights (homogeneity_weights): 1 / CV min-max rescaled to [0, 1] over the model's
        training pixels, halved where CV is at or above their `cv_percentile`-th percentile (80).
        Deviations from pyDMS: |mean| (pyDMS divides by the signed mean, so a band with a negative mean,
        NDWI say, can make the CV negative and the pixel untrained); CV = 0 counts as the smallest
        positive CV (pyDMS drops it: 1 / CV is infinite); all CVs equal give weights 1 (pyDMS: 0 / 0).
     2. Regression (sect. 2.1; pyDMS's tree with leaf regressions in scikit-learn's BaggingRegressor):
        n_estimators trees (30), each on int(max_samples * n) training pixels (0.8) drawn with replacement
        and weighted by homogeneity weight x times drawn, and on max(1, int(max_features * C)) bands (0.8;
        with 2 bands a tree sees one) drawn without replacement: a scikit-learn DecisionTreeRegressor, at
        most leaf_nodes_global (30) or leaf_nodes_local (10) leaves of at least min_samples_leaf (10) drawn
        pixels. In each leaf a linear model of the tree's bands, fitted as in pyDMS to every training pixel
        that falls in the leaf (drawn or not), unweighted, by least squares with pyDMS's ridge penalty
        leaf_ridge on the bands as given (scikit-learn Ridge's default 1.0, intercept free; 0: plain least
        squares, which overfits leaves of ~10 pixels: 3.5 K instead of 1.4 K RMSE on a synth_scene);
        its prediction is clipped to [min - e r, max + e r] of the leaf's LST, r = max - min,
        e = extrapolation (0.25, pyDMS's limit). The ensemble predicts the mean of its trees; every draw
        comes from random_state, so each run gives the same model. (Weights x counts is how scikit-learn's
        BaggingRegressor drew when pyDMS and Sen-ET were written; recent versions, 1.9 here, draw in
        proportion to the weights instead. pyDMS finds a leaf's pixels by the value the tree predicts
        for them, here by leaf id.)
     3. Local and global models (sect. 2.3; pyDMS): a global model on all training pixels and, with
        window > 0, a local model per window of window x window coarse pixels, trained on the window grown
        by window / 4 on each side (moving_windows) and applied to the fine pixels whose centre lies in
        the window; a window with fewer training pixels than the minimum (module docstring) has none and
        its pixels take the global model alone. With the coarse residuals r_l = T - aggregate(local) and
        r_g = T - aggregate(global) (means over the finite fine pixels), the local weight is pyDMS's
        w = r_l^-2 / (r_l^-2 + r_g^-2) = r_g^2 / (r_l^2 + r_g^2) (0.5 where both are 0 or unknown),
        interpolated bilinearly through fine_in_coarse (pyDMS: cubically), and fine = w local +
        (1 - w) global. radiance=True (pyDMS's disaggregatingTemperature, Sen-ET's setting) aggregates
        T^4 for the residuals and combines (w local^4 + (1 - w) global^4)^(1/4): sensors average
        radiance, not temperature. Off by default: GrokLST's LR LST is the block mean of T (data.block_mean).
     4. Residual correction (sect. 2.4; pyDMS's residualAnalysis), with residual_correction: the coarse
        residual T - aggregate(fine) (in T^4 with radiance) added back at the fine scale through nearest
        (pyDMS interpolates it cubically; nearest makes the aggregate of the output T where the footprint
        is all valid; `consistency: bicubic` is the smooth variant). With a footprint: bicubic first,
        then nearest until the footprint means are T within 1 mK (module docstring).
    Fine pixels with a non-finite guidance band take T of their coarse pixel (as the other sharpeners).

    Spread (sharpen_with_spread): member k is local tree k and global tree k combined with the pixel's
    weight; its population std over k is sqrt(a^2 var_l + b^2 var_g + 2 a b cov_lg), a = w, b = 1 - w
    (radiance: to first order, a = w (local / fine)^3, b = (1 - w) (global / fine)^3): 0 where every tree
    agrees. The residual correction shifts all members alike and leaves it as it is.

    Scene fits: local windows live on the fitted image's coarse grid, so they apply only to an image of
    the fitted shape on the fitted grid (the image itself: fit['coarse_shape'] and fit['coarse_grid']);
    a tile of a scene fitted by fit_scene gets the global model and its own residuals. With a
    footprint (module docstring) the homogeneity, training pixels, windows (coarse pixel coordinates
    of the footprint's grid), local weights and residuals all go through it; the residual is spread
    bicubically, then corrected to < 1 mK, and fine pixels under NaN coarse pixels are NaN. For a whole scene
    with its local models, call sharpen(lr, guidance, model.fitted, footprint) on the scene: fine maps
    are processed in row chunks of CHUNK_PIXELS (65 k), local windows fitted on n_jobs threads.

    Needs scikit-learn (imported when it fits). Config keys `model.<arg>`:
        n_estimators: trees per model (30, Sen-ET)
        max_samples: fraction of the training pixels each tree draws, with replacement (0.8, Sen-ET)
        max_features: fraction of the bands each tree uses (0.8, Sen-ET)
        window: local window side in coarse pixels (15, pyDMS's run_pyDMS.py); 0: global model only
        leaf_nodes_global: most leaves per tree of the global model (30, pyDMS)
        leaf_nodes_local: most leaves per tree of a local model (10, pyDMS)
        min_samples_leaf: fewest drawn pixels per leaf (10, pyDMS)
        leaf_ridge: ridge penalty of the leaves' linear models (1.0, pyDMS; 0: least squares)
        extrapolation: leaf extrapolation limit, fraction of the leaf's LST range (0.25, pyDMS)
        cv_percentile: CV percentile at and above which a pixel's weight is halved (80, pyDMS)
        radiance: residuals and combination in T^4 (False; pyDMS's disaggregatingTemperature)
        residual_correction: add back the coarse residual (True)
        random_state: seed of every draw (0)
        n_jobs: threads applying the trees (1)
    """

    paper = ("Data Mining Sharpener: Gao, Kustas & Anderson, Remote Sens. 4:3287-3319 (2012); pyDMS settings of "
             "Guzinski & Nieto, Remote Sens. Environ. 221:157-172 (2019)")
    model_name = "dms"
    fits_slopes = False

    def __init__(self, scale: int = 8, guidance_channels: int = len(BANDS), guidance_bands: tuple = None,
                 n_estimators: int = 30, max_samples: float = 0.8, max_features: float = 0.8, window: int = 15,
                 leaf_nodes_global: int = 30, leaf_nodes_local: int = 10, min_samples_leaf: int = 10,
                 leaf_ridge: float = 1.0, extrapolation: float = 0.25, cv_percentile: float = 80.0,
                 radiance: bool = False, residual_correction: bool = True, random_state: int = 0, n_jobs: int = 1):
        super().__init__(scale, guidance_channels, guidance_bands)
        rules = {"n_estimators": (n_estimators, n_estimators >= 1, ">= 1"),
                 "max_samples": (max_samples, 0 < max_samples <= 1, "in (0, 1]"),
                 "max_features": (max_features, 0 < max_features <= 1, "in (0, 1]"),
                 "window": (window, window >= 0, ">= 0"),
                 "leaf_nodes_global": (leaf_nodes_global, leaf_nodes_global >= 2, ">= 2"),
                 "leaf_nodes_local": (leaf_nodes_local, leaf_nodes_local >= 2, ">= 2"),
                 "min_samples_leaf": (min_samples_leaf, min_samples_leaf >= 1, ">= 1"),
                 "leaf_ridge": (leaf_ridge, leaf_ridge >= 0, ">= 0"),
                 "extrapolation": (extrapolation, extrapolation >= 0, ">= 0"),
                 "cv_percentile": (cv_percentile, 0 <= cv_percentile <= 100, "in [0, 100]"),
                 "n_jobs": (n_jobs, n_jobs >= 1, ">= 1")}
        for key, (value, ok, rule) in rules.items():
            if not ok:
                raise ConfigError(f"model.{key}={value!r}: model 'dms' needs it {rule}")
        self.n_estimators, self.max_samples, self.max_features = n_estimators, max_samples, max_features
        self.window, self.leaf_nodes_global, self.leaf_nodes_local = int(window), leaf_nodes_global, leaf_nodes_local
        self.min_samples_leaf, self.leaf_ridge, self.extrapolation = min_samples_leaf, leaf_ridge, extrapolation
        self.cv_percentile, self.radiance, self.residual_correction = cv_percentile, bool(radiance), bool(residual_correction)
        self.random_state, self.n_jobs = random_state, n_jobs

    def check_dependencies(self):
        _sklearn("dms", "tree")

    # ------------------------------------------------------------------ fitting

    def fit(self, lr_lst, hr_guidance, footprint=None):
        """Fit one image (or a whole scene): lr_lst (h, w) K, hr_guidance (C, H, W) (float32 stays float32),
        footprint: None or the grid pair's (module docstring). Returns {'global': model, 'local':
        {(wy, wx): model}, 'window': window, 'coarse_shape': (h, w), 'coarse_grid': the footprint's
        coarse Grid (None without one), 'samples': training pixels of the global model}. Raises
        CannotFit (module docstring)."""
        self.check_dependencies()
        lr, gui = _numpy(lr_lst, 2), self._guidance(hr_guidance, None)
        means, cv = coefficient_of_variation(self.footprint(lr.shape, gui.shape[1:], footprint), gui)
        coarse, y, cv = means.reshape(len(gui), -1), lr.reshape(-1), cv.reshape(-1)
        valid = self.valid_samples(coarse, y, usable=~(cv >= CV_LIMIT))  # NaN CVs: named by the band check
        x = coarse.T
        fit = {"global": self._ensemble(x[valid], y[valid], cv[valid], self.leaf_nodes_global, 0), "local": {},
               "window": self.window, "coarse_shape": tuple(lr.shape), "coarse_grid": getattr(footprint, "coarse", None),
               "samples": int(valid.sum())}
        if self.window:
            valid = valid.reshape(lr.shape)
            jobs = []  # (window, its training pixels, its seed): each draws from its own seed, in any order
            for k, (index, (rows, cols)) in enumerate(moving_windows(*lr.shape, self.window).items()):
                chosen = np.zeros_like(valid)
                chosen[rows, cols] = valid[rows, cols]
                if chosen.sum() >= self.min_samples:
                    jobs.append((index, np.flatnonzero(chosen), k + 1))

            def train(job):
                index, chosen, seed = job
                return index, self._ensemble(x[chosen], y[chosen], cv[chosen], self.leaf_nodes_local, seed)

            if self.n_jobs == 1:
                fit["local"] = dict(map(train, jobs))
            else:  # scikit-learn grows a tree without the GIL
                with ThreadPoolExecutor(self.n_jobs) as pool:
                    fit["local"] = dict(pool.map(train, jobs))
        return fit

    def _ensemble(self, x, y, cv, leaf_nodes, seed):
        """Bagged trees with linear leaves (class docstring, step 2) on training pixels x (n, C), LST y
        (n,) K, CV (n,) -> {'members': [(tree, bands, coef, low, high)], 'offset': K}. The leaves model
        LST - offset (the training mean), so that float32 arithmetic when applying keeps ~1e-5 K."""
        tree_module = _sklearn("dms", "tree")
        weight = homogeneity_weights(cv, self.cv_percentile)
        rng = np.random.default_rng([self.random_state, seed])
        (n, C), offset = x.shape, float(y.mean())
        n_draw, n_bands = max(1, int(self.max_samples * n)), max(1, int(self.max_features * C))
        y = y - offset
        members = []
        for _ in range(self.n_estimators):
            bands = np.sort(rng.choice(C, n_bands, replace=False))
            drawn = np.bincount(rng.integers(0, n, n_draw), minlength=n)
            w = weight * drawn
            if not w.any():  # only weight-0 pixels drawn (pyDMS's most heterogeneous one): the draw alone
                w = drawn.astype(np.float64)
            tree = tree_module.DecisionTreeRegressor(max_leaf_nodes=leaf_nodes, min_samples_leaf=self.min_samples_leaf,
                                                     random_state=int(rng.integers(2 ** 31 - 1)))
            # the bands left out are set constant: a tree never splits on a constant feature, so it learns
            # from `bands` alone while its feature indices stay those of all C bands (applied without a copy)
            shown = np.zeros((n, C), np.float32)
            shown[:, bands] = x[:, bands]
            # scikit-learn leaves weight-0 pixels out of the tree; shown is float32 and finite, y float64:
            # its input checks (a third of a small tree's fit) would change nothing
            tree.fit(shown, y, sample_weight=w, check_input=False)
            members.append(self._leaf_models(tree.tree_, bands, tree.tree_.apply(shown), x[:, bands], y))
        return {"members": members, "offset": offset}

    def _leaf_models(self, tree, bands, leaf, x, y):
        """Each leaf's linear model and clip range from the training pixels x (n, b), y (n,) in it (leaf
        ids (n,)) -> (tree, bands, coef (b + 1, nodes), low (nodes,), high (nodes,)), float32."""
        coef = np.zeros((len(bands) + 1, tree.node_count), np.float32)
        low, high = np.zeros(tree.node_count, np.float32), np.zeros(tree.node_count, np.float32)
        order = np.argsort(leaf, kind="stable")
        nodes, starts = np.unique(leaf[order], return_index=True)
        for node, rows in zip(nodes, np.split(order, starts[1:])):
            coef[:, node] = ridge(x[rows], y[rows], self.leaf_ridge)
            span = self.extrapolation * (y[rows].max() - y[rows].min())
            low[node], high[node] = y[rows].min() - span, y[rows].max() + span
        return tree, bands, coef, low, high

    # ------------------------------------------------------------------ applying

    def members(self, model, x, pool=None):
        """Each tree's prediction (K, n) float64 K of a fitted model (fit['global'] or a local one) at
        the guidance x (n, C) float32, all finite. pool: a thread pool to spread the trees over."""
        trees, out = model["members"], np.empty((len(model["members"]), len(x)))
        x = np.ascontiguousarray(x, np.float32)
        bands_first = np.ascontiguousarray(x.T)  # the linear leaves read one band at a time

        def one(k):
            tree, bands, coef, low, high = trees[k]
            leaf = tree.apply(x)
            p = coef[0].take(leaf)
            for j, band in enumerate(bands):
                p += bands_first[band] * coef[j + 1].take(leaf)
            out[k] = np.clip(p, low.take(leaf), high.take(leaf), out=p)
            out[k] += model["offset"]

        if pool is not None:
            list(pool.map(one, range(len(trees))))
        else:
            for k in range(len(trees)):
                one(k)
        return out

    def sharpen(self, lr_lst, hr_guidance, fit, footprint=None):
        """Apply a fit: lr_lst (h, w) K, hr_guidance (C, H, W), footprint: None or the grid pair's (module
        docstring) -> (H, W) float32 K."""
        return self._sharpen(lr_lst, hr_guidance, fit, footprint, spread=False)["mean"]

    def sharpen_with_spread(self, lr_lst, hr_guidance, fit=None, footprint=None):
        """(mean, std): the sharpened LST and the trees' spread (class docstring), (H, W) float32 K each
        (std NaN where the guidance is not finite, and where mean is NaN with a footprint). fit: of this
        image (default model.fitted, else fitted here)."""
        parts = self.sharpen_parts(lr_lst, hr_guidance, fit, footprint)
        return parts["mean"], parts["std"]

    def sharpen_parts(self, lr_lst, hr_guidance, fit=None, footprint=None):
        """Every map of the combination, (H, W) float32: 'mean' and 'std' (sharpen_with_spread), 'global'
        and 'local' (the two models' means before combination and correction; local NaN where no local
        model applies) and 'local_weight' (w)."""
        fit = fit or self.fitted or self.fit(lr_lst, hr_guidance, footprint)
        return self._sharpen(lr_lst, hr_guidance, fit, footprint, spread=True, parts=True)

    def _sharpen(self, lr_lst, hr_guidance, fit, footprint, spread, parts=False):
        if self.n_jobs == 1:
            return self._combine(lr_lst, hr_guidance, fit, footprint, spread, parts, None)
        with ThreadPoolExecutor(self.n_jobs) as pool:  # one pool for every chunk
            return self._combine(lr_lst, hr_guidance, fit, footprint, spread, parts, pool)

    def _combine(self, lr_lst, hr_guidance, fit, footprint, spread, parts, pool):
        lr, gui = _numpy(lr_lst, 2), self._guidance(hr_guidance, None)
        fp = self.footprint(lr.shape, gui.shape[1:], footprint)
        (H, W), C = gui.shape[1:], len(gui)
        same_grid = (tuple(lr.shape) == tuple(fit["coarse_shape"])
                     and fit.get("coarse_grid") == getattr(footprint, "coarse", None))
        local = fit["local"] if same_grid else {}
        if local:
            grid = tuple(math.ceil(n / fit["window"]) for n in fit["coarse_shape"])
        fine_rows, fine_cols = fp.fine_in_coarse
        step = max(1, CHUNK_PIXELS // W)
        chunks = [slice(a, min(H, a + step)) for a in range(0, H, step)]

        def new_map(fill=np.nan):
            return np.full((H, W), fill, np.float32)

        glob, loc = new_map(), new_map() if local else None
        var_g, var_l, cov = (new_map(), new_map(0.0), new_map(0.0)) if spread else (None, None, None)

        def trees(rows):  # pass 1 on one chunk: the trees at every fine pixel with finite guidance
            x = np.ascontiguousarray(gui[:, rows].reshape(C, -1).T, np.float32)
            ok = np.isfinite(x).all(1)
            if not ok.any():
                return
            x = x[ok]
            g = self.members(fit["global"], x)
            glob[rows].reshape(-1)[ok] = g.mean(0)
            if spread:
                dg = g - g[0]  # about the first tree: exactly 0 where all trees agree
                dg -= dg.mean(0)
                var_g[rows].reshape(-1)[ok] = (dg * dg).mean(0)
            if local:
                l_mean, l_var, l_cov = np.full(len(x), np.nan), np.zeros(len(x)), np.zeros(len(x))
                win = window_of(fine_rows[rows].reshape(-1)[ok], fine_cols[rows].reshape(-1)[ok], fit["window"], grid)
                for index in np.unique(win):
                    key = divmod(int(index), grid[1])
                    if key in local:
                        here = np.flatnonzero(win == index)
                        l = self.members(local[key], x[here])
                        l_mean[here] = l.mean(0)
                        if spread:
                            dl = l - l[0]
                            dl -= dl.mean(0)
                            l_var[here], l_cov[here] = (dl * dl).mean(0), (dl * dg[:, here]).mean(0)
                loc[rows].reshape(-1)[ok] = l_mean
                if spread:
                    var_l[rows].reshape(-1)[ok], cov[rows].reshape(-1)[ok] = l_var, l_cov

        if pool is None:
            for rows in chunks:
                trees(rows)
        else:  # chunks on the threads (disjoint rows of the maps): fewer, larger tasks than trees
            list(pool.map(trees, chunks))

        def space(t):  # where T is aggregated and combined: T, or radiance ~ T^4
            return t ** 4 if self.radiance else t

        def back(r):
            return r ** 0.25 if self.radiance else r

        if local:  # pyDMS's weights from the coarse residuals of each model
            res_l, res_g = (lr - back(fp.aggregate(space(m), 1.0)) for m in (loc, glob))
            with np.errstate(invalid="ignore", divide="ignore"):
                weight = res_g ** 2 / (res_l ** 2 + res_g ** 2)
            weight[~np.isfinite(weight)] = 0.5
        out = new_map() if parts else glob
        std = new_map() if spread else None
        local_weight = new_map(0.0) if parts else None
        for rows in chunks:  # pass 2: combine
            g = glob[rows].astype(np.float64)
            if local:
                l = loc[rows].astype(np.float64)
                w = bilinear(weight, fine_rows[rows], fine_cols[rows])
                w[np.isnan(l)] = 0.0
                l = np.where(np.isnan(l), g, l)
                fine = back(w * space(l) + (1 - w) * space(g))
                if spread:
                    a, b = (w * (l / fine) ** 3, (1 - w) * (g / fine) ** 3) if self.radiance else (w, 1 - w)
                    var = a * a * var_l[rows] + b * b * var_g[rows] + 2 * a * b * cov[rows]
                if parts:
                    local_weight[rows] = w
            else:
                fine = g
                var = var_g[rows] if spread else None
            out[rows] = fine
            if spread:
                std[rows] = np.sqrt(np.maximum(var, 0.0))
        if footprint is None:
            if self.residual_correction:
                add_residual(fp, lr, out, 1, self.radiance)
            finish(fp, lr, out)
        else:  # the residual over every fine pixel the sensor saw (a fine pixel whose centre lies in a NaN
            # sensor pixel may still lie partly in a valid one), then nothing under a NaN sensor pixel
            finish(fp, lr, out)
            if self.residual_correction:
                add_residual(fp, lr, out, RESIDUAL_PASSES, self.radiance, RESIDUAL_TOL, smooth=True)
            mask_outside(fp, lr, out)
        result = {"mean": out}
        if spread:
            if footprint is not None:
                std[np.isnan(out)] = np.nan
            result["std"] = std
        if parts:
            result.update({"global": glob, "local": loc if local else new_map(), "local_weight": local_weight})
        return result
