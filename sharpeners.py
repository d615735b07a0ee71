"""Statistical LST sharpeners, the field's own baselines: TsHARP, DisTrad-style linear regression, random forest.

They are registered models (groklst.MODELS: `tsharp`, `linreg`, `rf`), guided (kind 'gisr', x2/x4/x8),
parameter-free (no checkpoint) and called forward(lr_lst, hr_guidance) like every model, so test.py,
`test.py --models`, predict.py and the figures use them unchanged. They live here and not under models/
because they are not torch-only, copy-alone networks: they fit a regression to each image with numpy
(scikit-learn for rf) and use the toolkit's block-mean rule (data.block_mean_tensor).

Units. They work in physical units (TsHARP's vegetation fraction is nonlinear in NDVI, so a z-scored
NDVI would not do): the class attribute `physical_units = True` makes groklst.downscale hand them
lr_lst in Kelvin and hr_guidance in the bands' own units, NaN (no data) included, and take Kelvin back.

The recipe shared by all three (Kustas et al. 2003 DisTrad; Agam et al. 2007; Gao et al. 2012), in
float64, for one image with LR LST T (h, w) and guidance G (C, H, W), H = h * scale:
 1. coarse guidance Gc = block mean of G over each scale x scale block (NaN if one of its pixels is);
 2. fit T = f(x(Gc)) over the coarse pixels where T and every feature x are finite (NaN pixels are
    left out of the fit);
 3. fine prediction = f(x(G)) + residual, residual = T - f(x(Gc)) repeated over each block (nearest).
    The residual carries what the regression misses at the coarse scale (it makes the block mean of
    the output close to T; groklst.make_consistent makes it exact). Where T or Gc is NaN the residual
    is 0 (the mean residual of a least-squares fit with intercept); where a fine guidance pixel is not
    finite the output is T of its block; NaN only where both are missing.

Fitting. forward fits each batch element on its own LR image (the protocol of test.py: one fit per
test image). For a whole scene cut into tiles, predict.py calls `fit_scene(lr_lst, hr_guidance)` once
on the whole scene first; forward then applies those fitted coefficients to every tile instead of
refitting, and only the residual (local: one coarse pixel) comes from the tile's own LR pixels.
"""
import numpy as np
import torch
import torch.nn as nn

from data import BANDS, block_mean_tensor
from errors import ConfigError


def _numpy(x, ndim):
    """A tensor or array with `ndim` trailing dims (leading singleton dims dropped) -> float64 numpy."""
    x = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)
    while x.ndim > ndim and x.shape[0] == 1:
        x = x[0]
    if x.ndim != ndim:
        raise ValueError(f"expected {ndim} dims (after dropping leading 1s), got shape {x.shape}")
    return x


def _block_mean(a, s):
    """(..., H, W) float64 -> (..., H/s, W/s): block means (data's rule), NaN where a block has a NaN
    pixel: its mean would not be over the LR pixel's footprint."""
    return block_mean_tensor(torch.from_numpy(a), s, max_nan_fraction=0.0).numpy()


def _nearest(a, s):
    return np.repeat(np.repeat(a, s, -2), s, -1)


def least_squares(x, y):
    """Ordinary least squares with intercept: x (N, F), y (N,) -> coefficients (F + 1,) = [intercept, slopes]."""
    design = np.concatenate([np.ones((len(x), 1)), x], 1)
    return np.linalg.lstsq(design, y, rcond=None)[0]


class Sharpener(nn.Module):
    """Regression sharpening (module docstring). Subclasses define `features` (guidance -> regressors),
    optionally `image_stats` (per-image constants of the features), `fit_regression` and `regress`.
    lr_lst (B, 1, h, w) K, hr_guidance (B, C, H, W) physical units -> (B, 1, H, W) K float32."""

    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()
    physical_units = True  # groklst.downscale: Kelvin and physical guidance in, Kelvin out

    def __init__(self, scale: int = 8, guidance_channels: int = len(BANDS)):
        super().__init__()
        self.scale = scale
        self.guidance_channels = guidance_channels
        self.fitted = None  # a fit of the whole scene (fit_scene): applied instead of fitting each image

    # ------------------------------------------------------------------ what a subclass defines

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

    def fit(self, lr_lst, hr_guidance):
        """Fit one image: lr_lst (h, w) K, hr_guidance (C, H, W) (numpy or tensors, leading 1s allowed).
        Returns the fit {'stats': feature constants, 'coef': the regression, 'samples': coarse pixels used};
        coef is None when no coarse pixel is valid."""
        lr, gui = _numpy(lr_lst, 2), self._guidance(hr_guidance)
        coarse = _block_mean(gui, self.scale).reshape(len(gui), -1)
        y = lr.reshape(-1)
        stats = self.image_stats(coarse, np.isfinite(y) & np.isfinite(coarse).all(0))
        x = self.features(coarse, stats)
        valid = np.isfinite(y) & np.isfinite(x).all(1)
        coef = self.fit_regression(x[valid], y[valid]) if valid.any() else None
        return {"stats": stats, "coef": coef, "samples": int(valid.sum())}

    def fit_scene(self, lr_lst, hr_guidance):
        """Fit the whole scene once (predict.py, before tiling); forward then uses this fit for every tile."""
        self.fitted = self.fit(lr_lst, hr_guidance)
        return self.fitted

    def sharpen(self, lr_lst, hr_guidance, fit):
        """Apply a fit to one image: lr_lst (h, w) K, hr_guidance (C, H, W) -> (H, W) float64 K."""
        lr, gui, s = _numpy(lr_lst, 2), self._guidance(hr_guidance), self.scale
        if fit["coef"] is None:
            return _nearest(lr, s)
        coarse = _block_mean(gui, s).reshape(len(gui), -1)
        residual = lr - self.regress(fit["coef"], self.features(coarse, fit["stats"])).reshape(lr.shape)
        fine = self.regress(fit["coef"], self.features(gui.reshape(len(gui), -1), fit["stats"])).reshape(gui.shape[1:])
        out = fine + _nearest(np.nan_to_num(residual, nan=0.0, posinf=0.0, neginf=0.0), s)
        return np.where(np.isfinite(out), out, _nearest(lr, s))

    def forward(self, lr_lst, hr_guidance=None):
        if hr_guidance is None:
            raise ConfigError(f"{type(self).__name__} is guided: it needs hr_guidance")
        out = []
        for lr, gui in zip(lr_lst, hr_guidance):
            fit = self.fitted or self.fit(lr, gui)
            out.append(torch.from_numpy(self.sharpen(lr, gui, fit)))
        return torch.stack(out)[:, None].to(device=lr_lst.device, dtype=torch.float32)

    def _guidance(self, hr_guidance):
        gui = _numpy(hr_guidance, 3)
        if len(gui) != self.guidance_channels:
            raise ValueError(f"{type(self).__name__}: guidance has {len(gui)} bands, expected {self.guidance_channels}")
        return gui


class TsHARP(Sharpener):
    """TsHARP (Agam et al. 2007): LST linear in the vegetation fraction

        fv = 1 - ((NDVImax - NDVI) / (NDVImax - NDVImin)) ** 0.625,     LST = a + b * fv

    a, b by least squares at the coarse scale (NDVI block-averaged to the LR grid), applied to the
    fine NDVI, plus the coarse residual. NDVImin / NDVImax: the minimum and maximum of the image's valid
    coarse NDVI (the pixels the fit uses), so the fit spans fv in [0, 1]; fine NDVI outside that range
    is clipped to it (fv in [0, 1]). Needs band 'ndvi' among data.guidance_bands."""

    paper = "TsHARP: Agam et al., Remote Sens. Environ. 107:545-558 (2007)"
    exponent = 0.625

    def __init__(self, scale: int = 8, guidance_channels: int = len(BANDS), guidance_bands: tuple = BANDS):
        super().__init__(scale, guidance_channels)
        bands = [b.lower() for b in guidance_bands]
        if "ndvi" not in bands:
            raise ConfigError(f"model 'tsharp' needs band 'ndvi' in data.guidance_bands (has {list(guidance_bands)})")
        self.ndvi = bands.index("ndvi")

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

    def features(self, guidance, stats):
        return guidance.T


class RFSharpener(Sharpener):
    """Random-forest sharpener in the spirit of the Data Mining Sharpener (Gao et al. 2012; Hutengs &
    Vohland 2016): LST = RF(G) over every configured guidance band, a scikit-learn RandomForestRegressor
    (n_estimators trees, random_state 0, one thread: the same forest every run) trained on the coarse
    pixels (guidance block-averaged to the LR grid), applied at the fine scale, plus the coarse residual.
    Needs scikit-learn (imported when it fits). A whole-scene fit (predict.py) trains on every valid
    coarse pixel: about a minute for 10^5 pixels on one core."""

    paper = "RF sharpener (Data Mining Sharpener): Gao et al., Remote Sens. 4:3287-3319 (2012); Hutengs & Vohland (2016)"

    def __init__(self, scale: int = 8, guidance_channels: int = len(BANDS), n_estimators: int = 50,
                 min_samples_leaf: int = 2):
        super().__init__(scale, guidance_channels)
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf

    def features(self, guidance, stats):
        return guidance.T

    def fit_regression(self, x, y):
        try:
            from sklearn.ensemble import RandomForestRegressor
        except ImportError:
            raise ConfigError("model 'rf' needs scikit-learn: pip install scikit-learn") from None
        forest = RandomForestRegressor(n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
                                       random_state=0, n_jobs=1)
        return forest.fit(x, y)

    def regress(self, forest, x):
        out = np.full(len(x), np.nan)
        ok = np.isfinite(x).all(1)
        if ok.any():
            out[ok] = forest.predict(x[ok])
        return out
