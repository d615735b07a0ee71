"""Area-to-point kriging (ATPK): a coarse residual spread onto the fine grid so that its footprint means are
the residual again (coherent), smoothly, without the block steps of `Footprint.nearest`.

    fp = Footprint(Grid.from_geotiff("bands_30m.tif"), Grid.from_geotiff("modis_lst.tif"))
    r = lr_lst - fp.aggregate(pred)            # (h, w) K: what the prediction misses in each coarse pixel
    fine = atpk_residual(r, fp)                # (H, W) K, fp.aggregate(fine) == r where r is finite
    out = atpk_consistent(pred, lr_lst, fp)    # the two lines as one step; radiance=True kriges T^4

Kyriakidis (2004, Geographical Analysis 36:259) shows that kriging point values from areal data, with the
block-to-block and point-to-block covariances derived from one point-support covariance, reproduces the
areal data ("coherent"); Wang, Shi & Atkinson (2015, RSE) use it to downscale regression residuals (ATPRK).

1. Variogram (fit_variogram). The empirical semivariogram of r is computed at coarse lags: pairs of coarse
   pixels an index offset (di, dj) apart, grouped by the offset's centroid distance into classes one
   coarse pixel wide, on the central VARIOGRAM_WINDOW^2 pixels; classes with fewer than MIN_PAIRS pairs are
   left out. A model nugget + sill * (1 - rho(d)), rho exponential (exp(-3 d / range)) or spherical,
   `range` the practical range, is fitted by weighted least squares (weights pairs / gamma^2, Cressie
   1985). It is deconvolved to point support (the fine pixel): the nugget in closed form (a point nugget
   c0 regularises to c0 times the footprint's sum of squared weights, ~c0 / pixels), the structured part by
   choosing the point (sill, range) whose variogram, regularised over actual footprints (the operator's
   weights, SAMPLES pairs of coarse pixels per lag class, FIT_QUADRATURE^2 points each), matches the fitted
   coarse model at the lags, with the same weights. For a fixed range the sill is linear (closed form,
   >= 0); the range is searched on a log grid refined by golden section: the criterion the rescaling
   iterations of Goovaerts (2008) approach, minimised directly. Coarse data hardly tell a point nugget from
   short-range structure; fitting both freely gave spurious nuggets that flatten each footprint (measured
   on simulated fields), hence the closed-form nugget. A residual with fewer than 3 lag classes falls back
   to an exponential of range two coarse pixels and its own variance (kriging weights do not depend on the
   sill's scale).
2. Kriging (atpk_residual). The fine pixels whose centre lies in one coarse pixel c share one system: the
   `neighbours` coarse pixels nearest to c (c first, then by centroid distance, among those with a finite
   residual, within a few pixels). Each footprint is a quadrature: the weighted centroids of its fine
   pixels in q x q sub-blocks of its bounding box (q = `quadrature`); a sub-block with itself takes the
   mean over its own pixel pairs (1/m at distance 0, the rest at 0.5214 sqrt(m), the mean distance of two
   points in a square of m pixels). Covariances are taken as stationary in the coarse index offset, from
   the footprint nearest the grid centre translated along the lattice of centroids (exact on an aligned
   grid, where footprints are translates; across CRSs footprints change size and angle by ~1 % over a
   scene): block-to-block ones by quadrature on both sides, point-to-block ones for every fine pixel of the
   footprint (aligned) or on nodes one fine pixel apart, bilinear in between (other grids). The column of c
   in the system is the mean of the point-to-block covariances of c's own fine pixels, the numbers the
   right-hand sides use: so the mean of the kriged values over c's pixels is r[c] to rounding (Kyriakidis'
   coherence, which a local neighbourhood keeps because every pixel of c uses c's system). Ordinary kriging
   (weights summing to one: an unknown local mean, so a residual with a scene-wide offset is not pulled
   toward zero between data) is the default; simple kriging with zero mean is kriging='simple'. Both are
   coherent. Each system is solved once in dual form: a fine pixel's value is its covariances . beta.
3. Exactness. On an aligned grid the footprint of c is c's pixels, so step 2 is exact. Across CRSs a fine
   pixel straddling two footprints counts in both means but is predicted by one system; the remainder
   (~2 % of the residual's spread on 30 m UTM vs MODIS / geographic 1 km grids, tests/test_atpk.py) is
   spread by Footprint.nearest passes until the footprint means are within EXACT_TOL K (make_exact): the
   only steps left are that remainder's.

Fine pixels whose centre is outside the coarse grid, or in a coarse pixel with a NaN residual, are NaN.
Distances are in fine pixel widths, rows scaled by the fine pixels' aspect (a geographic fine grid's
cos(latitude) is not applied). Cost, for H x W fine pixels, h x w coarse pixels, N neighbours, Q = q^2:
tables (4 R)^2 Q^2 + (aligned) scale^2 (2 R)^2 Q or (other grids) (2 R scale)^2 Q (R ~ sqrt(N / pi) + 3),
neighbour search h w R^2, systems h w N^3, fine pixels H W N (two passes across CRSs); empirical
variogram MAX_LAG^2 min(h w, VARIOGRAM_WINDOW^2); deconvolution ~30 ranges x classes x SAMPLES x
(2 FIT_QUADRATURE^2)^2. Memory O(H W + h w N), temporaries in chunks of CHUNK elements. A 1000 x 1000 fine
grid takes seconds on one CPU core (docs/notruth.md: `python tools/atpk_accuracy.py`).
"""
import functools
import math
import weakref

import numpy as np
import torch

from errors import ConfigError, DataError

MODELS = ("exponential", "spherical")
KRIGING = ("ordinary", "simple")
QUADRATURE = 4           # quadrature points per side of a footprint in the kriging systems
FIT_QUADRATURE = 8       # the same in the deconvolution (every fine pixel of footprints up to 8 x 8)
MAX_LAG = 30             # coarse pixels: the longest lag class of the empirical variogram
VARIOGRAM_WINDOW = 256   # coarse pixels: the empirical variogram uses the central window this wide
MIN_PAIRS = 30           # pairs a lag class needs to enter the fit
SAMPLES = 4              # pairs of coarse pixels per lag class regularising the point model
RANGE_STEPS = 12         # log grid of ranges tried before the golden-section refinement
GOLDEN_STEPS = 16
SQUARE_MEAN_DISTANCE = 0.5214  # mean distance of two random points in a unit square
EXACT_TOL = 1e-6         # K: footprint-mean error the final correction leaves
EXACT_PASSES = 50
CHUNK = 1 << 22          # elements of the largest temporary tensor (bounds memory)
KEEP_RHS = 1 << 24       # right-hand sides kept between the two passes up to this many (128 MB), else recomputed
_GEOMETRY = weakref.WeakKeyDictionary()  # footprint -> {quadrature: cell_geometry}


# --------------------------------------------------------------------------- variogram models


def correlation(d, model, range_):
    """Correlation of the structured part at distance d (tensor, fine pixels) for a practical range
    `range_` (fine pixels): exponential exp(-3 d / range_), spherical 1 - 1.5 t + 0.5 t^3 (t = d / range_ < 1)."""
    if model == "exponential":
        return torch.exp(-3.0 * d / range_)
    t = (d / range_).clamp(max=1.0)
    return 1.0 - 1.5 * t + 0.5 * t ** 3


def semivariance(d, variogram):
    """The point-support model nugget + sill * (1 - rho(d)) at distances d > 0 (tensor, fine pixels), K^2."""
    return variogram["nugget"] + variogram["sill"] * (1.0 - correlation(d, variogram["model"], variogram["range"]))


def _self_correlation(area, model, range_):
    """Mean correlation over the pixel pairs of a sub-block of `area` fine pixels (its 1/m coincident pairs at
    distance 0, the others at the mean distance of two points in a square of that area)."""
    m = area.clamp(min=1.0)
    return 1.0 / m + (1.0 - 1.0 / m) * correlation(SQUARE_MEAN_DISTANCE * m.sqrt(), model, range_)


def _check_model(model):
    if model not in MODELS:
        raise ConfigError(f"variogram model {model!r}: expected one of {', '.join(MODELS)}")


# --------------------------------------------------------------------------- footprints as quadratures


def cell_geometry(footprint, quadrature=QUADRATURE):
    """Each coarse pixel's footprint (the operator's weights) as a quadrature, in ground units (fine pixel
    widths; rows times the fine pixels' height / width):

    points (n, q*q, 2) float64 (y, x): weighted centroids of the footprint's fine pixels in q x q sub-blocks
        of its bounding box on the fine grid (n = h * w coarse pixels, q = quadrature);
    weights (n, q*q): each sub-block's share of the footprint (sum 1; 0 for an empty sub-block or pixel);
    area (n, q*q): fine pixels in each sub-block; total (n,): fine pixels in the footprint;
    centre (n, 2): the footprint's centroid (NaN for a coarse pixel the fine grid does not touch);
    nugget (n,): sum of the squared normalised weights (the point nugget's share in its block variance);
    spacing: median side of a footprint in ground units (sqrt of its area)."""
    a = footprint.weights
    h, w = footprint.coarse.shape
    H, W = footprint.fine.shape
    n, q = h * w, int(quadrature)
    if q < 1:
        raise ConfigError(f"quadrature={quadrature}: expected a number of points per side >= 1")
    crow, fine, v = a.crow_indices().long(), a.col_indices().long(), a.values().double()
    cell = torch.repeat_interleave(torch.arange(n), crow.diff())
    row, col = fine // W, fine % W
    aspect = abs(footprint.fine.transform[5]) / footprint.fine.transform[1]

    def span(x, size):
        lo = torch.full((n,), size, dtype=torch.long).scatter_reduce(0, cell, x, "amin")
        hi = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, cell, x, "amax")
        return ((x - lo[cell]) * q) // (hi - lo + 1).clamp(min=1)[cell]

    slot = cell * q * q + span(row, H) * q + span(col, W)
    zeros = torch.zeros(n * q * q, dtype=torch.float64)
    area = zeros.index_add(0, slot, v)
    y = zeros.index_add(0, slot, v * (row + 0.5).double() * aspect)
    x = zeros.index_add(0, slot, v * (col + 0.5).double())
    safe = area.clamp(min=1e-30)
    points = torch.stack([y / safe, x / safe], -1).reshape(n, q * q, 2)
    area = area.reshape(n, q * q)
    total = area.sum(1)
    weights = torch.nan_to_num(area / total[:, None])
    centre = torch.stack([y.reshape(n, -1).sum(1), x.reshape(n, -1).sum(1)], -1) / total[:, None]
    nugget = torch.zeros(n, dtype=torch.float64).index_add(0, cell, v * v) / total.clamp(min=1e-30) ** 2
    spacing = float((total[total > 0] * aspect).sqrt().median()) if bool((total > 0).any()) else 1.0
    return {"points": points, "weights": weights, "area": area, "total": total, "centre": centre,
            "nugget": nugget, "spacing": spacing, "shape": (h, w)}


def _covariance_matrix(points, area, model, range_):
    """Unit-sill correlations between quadrature points: points (B, P, 2), area (B, P) -> (B, P, P); a
    point with itself gets the mean over its own sub-block's pixel pairs (_self_correlation)."""
    c = correlation(torch.cdist(points, points), model, range_)
    return c.diagonal_scatter(_self_correlation(area, model, range_), dim1=1, dim2=2)


# --------------------------------------------------------------------------- the variogram


def _as_float64(x):
    """(float64 CPU tensor, was_numpy)."""
    if torch.is_tensor(x):
        return x.detach().double().cpu(), False
    return torch.from_numpy(np.asarray(x, np.float64)), True


def empirical_variogram(residual, geometry, max_lag=None):
    """Semivariance of a coarse raster by lag class: residual (h, w) float64 tensor (NaN = none), geometry
    from cell_geometry -> {'lags' (fine pixels, pair-weighted mean distance), 'gamma' (K^2), 'pairs'
    (count), 'samples': (S, 3) long tensor of (pixel a, pixel b, class index) pairs near the window centre,
    at most SAMPLES per class from different offsets}, for the classes with at least MIN_PAIRS pairs (all
    classes with pairs if none has that many). An index offset (di, dj) falls in the class of its lattice
    distance (_lattice: exact on aligned grids; across CRSs footprints differ by ~1 % over a scene)."""
    h, w = residual.shape
    i0, j0 = max(0, (h - VARIOGRAM_WINDOW) // 2), max(0, (w - VARIOGRAM_WINDOW) // 2)
    rows, cols = min(h, VARIOGRAM_WINDOW), min(w, VARIOGRAM_WINDOW)
    r = residual[i0:i0 + rows, j0:j0 + cols]
    finite = torch.isfinite(r)
    r = torch.where(finite, r, 0.0)
    step_i, step_j, _ = _lattice(geometry)
    spacing = geometry["spacing"]
    lag_max = int(max_lag) if max_lag is not None else max(1, min(MAX_LAG, max(rows, cols) // 2))
    classes = lag_max + 1
    total, count, dist = (torch.zeros(classes, dtype=torch.float64) for _ in range(3))
    by_class = [[] for _ in range(classes)]
    ci, cj = rows // 2, cols // 2
    for di in range(0, min(lag_max, rows - 1) + 1):
        for dj in range(-min(lag_max, cols - 1), min(lag_max, cols - 1) + 1):
            if di == 0 and dj <= 0:
                continue
            d = float((di * step_i + dj * step_j).norm())
            k = round(d / spacing)
            if not 1 <= k < classes:
                continue
            a = (slice(0, rows - di), slice(max(0, -dj), cols - max(0, dj)))
            b = (slice(di, rows), slice(max(0, dj), cols - max(0, -dj)))
            both = finite[a] & finite[b]
            n = float(both.sum())
            if n == 0:
                continue
            total[k] += 0.5 * float(torch.where(both, (r[a] - r[b]) ** 2, 0.0).sum())
            count[k] += n
            dist[k] += n * d
            ia, ja = ci - (di + 1) // 2, cj - dj // 2  # a pair straddling the window centre
            if 0 <= ia < rows - di and 0 <= ja and ja + dj < cols and 0 <= ja + dj and ja < cols \
                    and bool(finite[ia, ja]) and bool(finite[ia + di, ja + dj]):
                by_class[k].append(((i0 + ia) * w + j0 + ja, (i0 + ia + di) * w + j0 + ja + dj))
    keep = count >= MIN_PAIRS
    if not bool(keep.any()):
        keep = count > 0
    index = torch.nonzero(keep).flatten()
    picked = []
    for new_k, k in enumerate(index.tolist()):  # at most SAMPLES per class, spread over its offsets
        pairs = by_class[k]
        picked += [(a, b, new_k) for a, b in pairs[::max(1, len(pairs) // SAMPLES)][:SAMPLES]]
    return {"lags": dist[index] / count[index], "gamma": total[index] / count[index], "pairs": count[index],
            "samples": torch.tensor(picked, dtype=torch.long).reshape(-1, 3)}


def _wls(basis_nugget, basis_sill, target, weight):
    """min over nugget, sill >= 0 of sum weight * (nugget * basis_nugget + sill * basis_sill - target)^2
    -> (nugget, sill, loss); closed form on the interior, else the better edge."""
    def loss(n, s):
        return float((weight * (n * basis_nugget + s * basis_sill - target) ** 2).sum())

    def alone(basis):
        return max(0.0, float((weight * basis * target).sum() / (weight * basis * basis).sum().clamp(min=1e-300)))

    a = torch.stack([basis_nugget, basis_sill], 1) * weight.sqrt()[:, None]
    candidates = [(0.0, alone(basis_sill)), (alone(basis_nugget), 0.0)]
    solution = torch.linalg.lstsq(a, target * weight.sqrt(), driver="gelsd").solution
    if bool((solution >= 0).all()):
        candidates.append((float(solution[0]), float(solution[1])))
    return min(((n, s, loss(n, s)) for n, s in candidates), key=lambda t: t[2])


def _search_range(fit, lo, hi):
    """The range in [lo, hi] minimising fit(range) -> (nugget, sill, loss): a log grid, then golden section
    (in log range) between the best point's neighbours. Returns (range, nugget, sill)."""
    memo = {}

    def loss(log_range):
        if log_range not in memo:
            memo[log_range] = fit(math.exp(log_range))
        return memo[log_range][2]

    grid = np.linspace(math.log(lo), math.log(hi), RANGE_STEPS).tolist()
    best = min(range(len(grid)), key=lambda i: loss(grid[i]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    golden = (math.sqrt(5) - 1) / 2
    c, d = b - golden * (b - a), a + golden * (b - a)
    for _ in range(GOLDEN_STEPS):
        if loss(c) <= loss(d):
            b, d = d, c
            c = b - golden * (b - a)
        else:
            a, c = c, d
            d = a + golden * (b - a)
    found = min(memo, key=lambda k: memo[k][2])
    return (math.exp(found),) + memo[found][:2]


def _regularisation(samples, classes, geometry, model):
    """The point model regularised over footprints at the lag classes: samples (S, 3) pairs of coarse
    pixels (a, b) and their class -> (nugget basis (classes,), structured(range) -> (classes,)): per pair
    gamma_V = (C(a, a) + C(b, b)) / 2 - C(a, b), each C the footprints' mean point covariance (quadrature
    of cell_geometry), averaged over the class's pairs. Distances are computed once, ranges many times."""
    a, b, k = samples.unbind(1)
    count = torch.zeros(classes, dtype=torch.float64).index_add_(0, k, torch.ones(len(k), dtype=torch.float64))

    def mean_by_class(x):
        return torch.zeros(classes, dtype=torch.float64).index_add_(0, k, x) / count.clamp(min=1)

    nugget_basis = mean_by_class(0.5 * (geometry["nugget"][a] + geometry["nugget"][b]))
    points = torch.cat([geometry["points"][a], geometry["points"][b]], 1)  # (S, 2Q, 2)
    area = torch.cat([geometry["area"][a], geometry["area"][b]], 1)
    wa, wb = geometry["weights"][a], geometry["weights"][b]
    # (C(a, a) + C(b, b)) / 2 - C(a, b) as one weighted sum over all point pairs of the two footprints
    mix = 0.5 * torch.cat([torch.cat([wa[:, :, None] * wa[:, None, :], -wa[:, :, None] * wb[:, None, :]], 2),
                           torch.cat([-wb[:, :, None] * wa[:, None, :], wb[:, :, None] * wb[:, None, :]], 2)], 1)
    distance = torch.cdist(points, points).float()  # float32: twice as fast, 1e-6 relative is plenty here
    mix, area = mix.float(), area.float()
    eye = torch.eye(points.shape[1], dtype=torch.bool)

    def structured(range_):
        c = torch.where(eye, _self_correlation(area, model, range_)[:, :, None], correlation(distance, model, range_))
        return mean_by_class((c * mix).sum((1, 2)).double())

    return nugget_basis, structured, count > 0


def fit_variogram(residual_coarse, footprint, model="exponential", max_lag=None):
    """Point-support variogram of a coarse residual (module docstring, step 1).

    residual_coarse: (h, w) tensor or numpy array on footprint.coarse, K (NaN = none); model: one of MODELS;
    max_lag: longest lag class in coarse pixels (default min(MAX_LAG, half the window)).
    Returns a dict: model, nugget, sill (K^2), range (fine pixels, practical range) of the point model;
    'coarse': the fitted block-support model (same keys); 'lags' (fine pixels), 'gamma' (K^2), 'pairs',
    'regularised' (the point model regularised at the lags, K^2): lists; 'fallback': True when the fit
    had too few lag classes (module docstring)."""
    _check_model(model)
    r, _ = _as_float64(residual_coarse)
    if tuple(r.shape) != tuple(footprint.coarse.shape):
        raise DataError(f"fit_variogram: residual of shape {tuple(r.shape)} is not on {footprint.coarse.describe()}")
    geometry = _geometry(footprint, 1)
    finite = r[torch.isfinite(r)]
    variance = float(finite.var()) if finite.numel() > 1 else 0.0
    empirical = empirical_variogram(r, geometry, max_lag)
    out = {"model": model, "lags": empirical["lags"].tolist(), "gamma": empirical["gamma"].tolist(),
           "pairs": empirical["pairs"].tolist(), "fallback": False}
    spacing = geometry["spacing"]
    if len(empirical["lags"]) < 3 or float(empirical["gamma"].max()) <= 0:
        out.update(nugget=0.0, sill=max(variance, 1e-12), range=2.0 * spacing, fallback=True,
                   coarse={"model": model, "nugget": 0.0, "sill": max(variance, 1e-12), "range": 2.0 * spacing},
                   regularised=[])
        return out
    lags, gamma, pairs = empirical["lags"], empirical["gamma"], empirical["pairs"]
    hi = 50.0 * float(lags.max())

    def coarse_fit(range_):
        return _wls(torch.ones_like(lags), 1.0 - correlation(lags, model, range_), gamma,
                    pairs / gamma.clamp(min=1e-12 * float(gamma.max())) ** 2)

    rc, nc, sc = _search_range(coarse_fit, 0.3 * spacing, hi)
    coarse = {"model": model, "nugget": nc, "sill": sc, "range": rc}
    # the nugget deconvolves in closed form (a point nugget c0 regularises to c0 * nugget_basis); the
    # structured part is searched for: coarse data hardly tell a point nugget from short-range structure
    fine_geometry = _geometry(footprint, FIT_QUADRATURE)
    nugget_basis, structured, sampled = _regularisation(empirical["samples"], len(lags), fine_geometry, model)
    npt = nc / float(nugget_basis[sampled].mean()) if bool(sampled.any()) else 0.0
    target = semivariance(lags, coarse) - nc
    weight = sampled * pairs / semivariance(lags, coarse).clamp(min=1e-12 * float(gamma.max())) ** 2

    def point_fit(range_):
        return _wls(torch.zeros_like(lags), structured(range_), target, weight)

    rp, _, sp = _search_range(point_fit, 1.0, hi)
    out.update(nugget=npt, sill=sp, range=rp, coarse=coarse,
               regularised=(npt * nugget_basis + sp * structured(rp)).tolist())
    if sp + npt <= 0:  # a constant residual: any shape krigs it exactly; keep one that is well posed
        out.update(nugget=0.0, sill=1e-12, range=2.0 * spacing, fallback=True)
    return out


# --------------------------------------------------------------------------- kriging


def _reach(n):
    """Coarse pixels searched in each direction for n neighbours (room for a few missing ones)."""
    return int(math.ceil(math.sqrt(n / math.pi))) + 3


def _neighbours(valid, centre, shape, n, reach):
    """The n coarse pixels nearest each valid pixel among the valid ones within `reach` pixels (itself first):
    valid (h*w,) bool, centre (h*w, 2) -> (h*w, n) long, -1 for none (invalid pixels, or fewer in reach)."""
    h, w = shape
    offsets = sorted(((di, dj) for di in range(-reach, reach + 1) for dj in range(-reach, reach + 1)
                      if di * di + dj * dj <= reach * reach), key=lambda o: (o[0] ** 2 + o[1] ** 2, o))
    di = torch.tensor([o[0] for o in offsets])
    dj = torch.tensor([o[1] for o in offsets])
    rank = torch.arange(len(offsets), dtype=torch.float64) * 1e-9  # ties broken in one order everywhere
    n = min(n, len(offsets))
    out = torch.full((h * w, n), -1, dtype=torch.long)
    cells = torch.nonzero(valid).flatten()
    step = max(1, CHUNK // len(offsets))
    for start in range(0, len(cells), step):
        c = cells[start:start + step]
        i, j = (c // w)[:, None] + di, (c % w)[:, None] + dj
        inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
        candidates = i.clamp(0, h - 1) * w + j.clamp(0, w - 1)
        d = (centre[candidates] - centre[c][:, None]).pow(2).sum(-1).sqrt() + rank
        d = torch.where(inside & valid[candidates], d, float("inf"))
        dist, pick = d.topk(n, largest=False, sorted=True)
        out[c] = torch.where(torch.isfinite(dist), candidates.gather(1, pick), -1)
    return out


def _lattice(geometry):
    """The coarse grid as seen from the fine one: centroid steps (y, x) per coarse row and per coarse column
    (medians; exact on an aligned grid), and the full footprint nearest the centre of the grid."""
    h, w = geometry["shape"]
    centre = geometry["centre"].reshape(h, w, 2)
    spacing = geometry["spacing"]

    def median_step(d, fallback):
        d = d.reshape(-1, 2)
        d = d[torch.isfinite(d).all(1)]
        return d.median(0).values if len(d) else torch.tensor(fallback, dtype=torch.float64)

    step_i = median_step(centre[1:] - centre[:-1], [spacing, 0.0])
    step_j = median_step(centre[:, 1:] - centre[:, :-1], [0.0, spacing])
    total = geometry["total"]
    full = torch.nonzero(total >= 0.999 * float(total.max())).flatten()
    far = ((full // w).double() - (h - 1) / 2) ** 2 + ((full % w).double() - (w - 1) / 2) ** 2
    return step_i, step_j, int(full[far.argmin()])


def _tables(footprint, geometry, variogram, reach):
    """Covariances taken as stationary in the coarse index offset, from the footprint nearest the grid
    centre translated along the lattice (exact on an aligned grid, where footprints are translates):
    'block' (4 reach + 1, 4 reach + 1): structured covariance of two footprints whose indices differ by
    (di, dj) (index [di + 2 reach, dj + 2 reach]), K^2; 'point' (aligned grids only, else None)
    (scale^2, (2 reach + 1)^2): of each fine pixel of a footprint with the footprint (di, dj) away;
    'field' (other grids, else None) (G, G): of a point with a footprint, by the point's position from the
    footprint's centroid on nodes one fine pixel apart (bilinear in between; module docstring)."""
    step_i, step_j, c0 = _lattice(geometry)
    model, range_, sill = variogram["model"], variogram["range"], variogram["sill"]
    rel = geometry["points"][c0] - geometry["centre"][c0]
    weight, area = geometry["weights"][c0], geometry["area"][c0]

    def shifts(r):
        d = torch.arange(-r, r + 1, dtype=torch.float64)
        return (d[:, None, None] * step_i + d[None, :, None] * step_j).reshape(-1, 2)

    far = shifts(2 * reach)
    d = torch.cdist(rel[None], rel[None] + far[:, None, :])  # (offsets, Q, Q)
    c = correlation(d, model, range_)
    middle = len(far) // 2
    c[middle] = _covariance_matrix(rel[None], area[None], model, range_)[0]
    block = sill * (c * weight[:, None] * weight[None, :]).sum((1, 2))
    point = field = None
    s = footprint.scale
    if s is not None:
        aspect = abs(footprint.fine.transform[5]) / footprint.fine.transform[1]
        a = torch.arange(s, dtype=torch.float64) + 0.5 - s / 2
        local = torch.stack(torch.meshgrid(a * aspect, a, indexing="ij"), -1).reshape(-1, 2)
        near = rel[None] + shifts(reach)[:, None, :]  # (offsets, Q, 2)
        d = torch.cdist(local[None].expand(len(near), -1, -1), near)  # (offsets, s*s, Q)
        point = sill * (correlation(d, model, range_) * weight).sum(-1).t().contiguous()
    else:  # a point at (y, x) from a footprint's centroid: node [y + half, x + half], one fine pixel apart
        half = int(math.ceil((reach + 2) * float(max(step_i.norm(), step_j.norm()))))
        g = torch.arange(-half, half + 1, dtype=torch.float64)
        field = torch.empty(len(g), len(g), dtype=torch.float64)
        rows = max(1, CHUNK // (len(g) * len(rel)))
        for r0 in range(0, len(g), rows):
            d = torch.hypot(g[r0:r0 + rows, None, None] - rel[:, 0], g[None, :, None] - rel[:, 1])
            field[r0:r0 + rows] = sill * (correlation(d, model, range_) * weight).sum(-1)
    return {"block": block.reshape(4 * reach + 1, 4 * reach + 1), "point": point, "field": field, "reach": reach}


def _fine_blocks(footprint, per_pixel):
    """(flat fine indices, their coarse index) in blocks of about CHUNK / per_pixel fine pixels."""
    index = footprint.coarse_index.reshape(-1)
    step = max(1, CHUNK // per_pixel)
    return [(torch.arange(s, min(s + step, len(index))), index[s:s + step]) for s in range(0, len(index), step)]


def _point_rhs(flat, cells, nbrs, geometry, variogram, footprint, field):
    """Point-to-block covariances (m, N) K^2 of fine pixels `flat` (m,), whose centres lie in coarse pixels
    `cells`, with those pixels' neighbours (bilinear in _tables' field, by the pixel's position from each
    neighbour's centroid), plus the point nugget on the own pixel (weight 1 / its fine pixels)."""
    W = footprint.fine.shape[1]
    aspect = abs(footprint.fine.transform[5]) / footprint.fine.transform[1]
    nb = nbrs[cells]
    centre = geometry["centre"][nb.clamp(min=0)]
    size = field.shape[0]
    half = (size - 1) // 2
    y = ((flat // W) + 0.5).double()[:, None] * aspect - centre[..., 0] + half
    x = ((flat % W) + 0.5).double()[:, None] - centre[..., 1] + half
    y, x = y.clamp(0, size - 1.000001), x.clamp(0, size - 1.000001)
    i, j = y.long(), x.long()
    ty, tx = y - i, x - j
    flat_field = field.reshape(-1)
    at = i * size + j
    k = ((flat_field[at] * (1 - tx) + flat_field[at + 1] * tx) * (1 - ty)
         + (flat_field[at + size] * (1 - tx) + flat_field[at + size + 1] * tx) * ty)
    k = torch.where(nb >= 0, k, 0.0)
    k[:, 0] += variogram["nugget"] / geometry["total"][cells]
    return k


def _offset_index(cells, nb, w, reach):
    """Index into the (2 reach + 1)^2 offsets of _tables' point table of each neighbour's index offset."""
    di = (nb // w - (cells // w)[:, None]).clamp(-reach, reach)
    dj = (nb % w - (cells % w)[:, None]).clamp(-reach, reach)
    return (di + reach) * (2 * reach + 1) + dj + reach


def _geometry(footprint, quadrature):
    """cell_geometry, kept while the footprint lives (one footprint serves every tile of a test set)."""
    cache = _GEOMETRY.setdefault(footprint, {})
    if quadrature not in cache:
        cache[quadrature] = cell_geometry(footprint, quadrature)
    return cache[quadrature]


def atpk_residual(residual_coarse, footprint, neighbours=16, variogram=None, kriging="ordinary",
                  quadrature=QUADRATURE, exact=True):
    """Area-to-point kriging of a coarse residual onto the fine grid (module docstring).

    residual_coarse: (h, w) tensor or numpy array on footprint.coarse, K (or any unit; NaN = none);
    neighbours: coarse pixels per system; variogram: fit_variogram's dict (fitted here when None);
    kriging: 'ordinary' or 'simple' (zero mean); quadrature: points per footprint side; exact: spread the
    remaining footprint error with make_exact (it changes nothing on aligned grids).
    Returns (H, W) float64 of the input's kind (tensor or numpy): footprint.aggregate(out) equals the
    residual where it is finite (EXACT_TOL), NaN where the fine pixel's coarse pixel is NaN or absent."""
    if kriging not in KRIGING:
        raise ConfigError(f"kriging={kriging!r}: expected one of {', '.join(KRIGING)}")
    if int(neighbours) < 1:
        raise ConfigError(f"neighbours={neighbours}: expected at least 1 coarse pixel")
    r, was_numpy = _as_float64(residual_coarse)
    if tuple(r.shape) != tuple(footprint.coarse.shape):
        raise DataError(f"atpk: residual of shape {tuple(r.shape)} is not on {footprint.coarse.describe()}")
    if variogram is None:
        variogram = fit_variogram(r, footprint)
    _check_model(variogram["model"])
    h, w = footprint.coarse.shape
    geometry = _geometry(footprint, quadrature)
    flat_r = r.reshape(-1)
    valid = torch.isfinite(flat_r) & (geometry["total"] > 0)
    reach = _reach(int(neighbours))
    nbrs = _neighbours(valid, geometry["centre"], (h, w), int(neighbours), reach)
    N = nbrs.shape[1]
    tables = _tables(footprint, geometry, variogram, reach)
    aligned = tables["point"] is not None
    H, W = footprint.fine.shape
    blocks = [] if aligned else _fine_blocks(footprint, 16 * N)

    def pixels(flat, cells, ok):  # the fine pixels whose coarse pixel has ok
        keep = cells >= 0
        keep[keep.clone()] = ok[cells[keep]]
        return flat[keep], cells[keep]

    # the own pixel's column: the mean point-to-block covariance of its own fine pixels
    if aligned:  # every pixel's own fine pixels are the table's
        cells = torch.arange(h * w)
        own = torch.where(nbrs >= 0, tables["point"].mean(0)[_offset_index(cells, nbrs, w, reach)], 0.0)
        own[:, 0] += variogram["nugget"] / geometry["total"]
        solvable = valid
    else:
        own = torch.zeros(h * w, N, dtype=torch.float64)
        count = torch.zeros(h * w, dtype=torch.float64)
        kept = [] if H * W * N <= KEEP_RHS else None  # the right-hand sides, for the second pass
        for flat, cells in blocks:
            flat, cells = pixels(flat, cells, valid)
            k = _point_rhs(flat, cells, nbrs, geometry, variogram, footprint, tables["field"])
            own.index_add_(0, cells, k)
            count.index_add_(0, cells, torch.ones(len(cells), dtype=torch.float64))
            if kept is not None:
                kept.append((flat, cells, k))
        solvable = valid & (count > 0)
        own /= count.clamp(min=1)[:, None]

    # one system per coarse pixel, in dual form: the prediction is [k, 1] . beta with beta = M^-1 [r, 0]
    ordinary = kriging == "ordinary"
    beta = torch.zeros(h * w, N + ordinary, dtype=torch.float64)
    cells = torch.nonzero(solvable).flatten()
    span = 2 * reach
    jitter = 1e-12 * (variogram["sill"] + variogram["nugget"])
    step = max(1, CHUNK // (N * N * 4))
    for start in range(0, len(cells), step):
        c = cells[start:start + step]
        nb = nbrs[c]
        there = nb >= 0
        index = nb.clamp(min=0)
        di = (index // w)[:, :, None] - (index // w)[:, None, :]
        dj = (index % w)[:, :, None] - (index % w)[:, None, :]
        K = tables["block"][(di + span).clamp(0, 2 * span), (dj + span).clamp(0, 2 * span)]
        K = K + torch.diag_embed(variogram["nugget"] * geometry["nugget"][index] + jitter)
        K[:, 0, :] = own[c]
        K[:, :, 0] = own[c]
        K = torch.where(there[:, :, None] & there[:, None, :], K, torch.diag_embed((~there).double()))
        rhs = torch.where(there, flat_r[index], 0.0)
        if ordinary:
            ones = there.double()
            K = torch.cat([torch.cat([K, ones[:, :, None]], 2),
                           torch.cat([ones, torch.zeros(len(c), 1, dtype=torch.float64)], 1)[:, None, :]], 1)
            rhs = torch.cat([rhs, torch.zeros(len(c), 1, dtype=torch.float64)], 1)
        beta[c] = torch.linalg.solve(K, rhs)

    if aligned:  # per coarse pixel: its s*s fine pixels' table rows times its beta
        s = footprint.scale
        out = torch.full((h * w, s * s), float("nan"), dtype=torch.float64)
        step = max(1, CHUNK // (s * s * N))
        for start in range(0, len(cells), step):
            c = cells[start:start + step]
            nb = nbrs[c]
            k = torch.where(nb >= 0, tables["point"][:, _offset_index(c, nb, w, reach)], 0.0)  # (s*s, B, N)
            k[:, :, 0] += variogram["nugget"] / geometry["total"][c]
            value = (k * beta[c, :N]).sum(-1)
            out[c] = (value + beta[c, N] if ordinary else value).t()
        out = out.reshape(h, w, s, s).permute(0, 2, 1, 3)
    else:
        out = torch.full((H * W,), float("nan"), dtype=torch.float64)
        for block, (flat, cells) in enumerate(blocks):
            if kept is not None:
                flat, cells, k = kept[block]
            else:
                flat, cells = pixels(flat, cells, valid)
                k = _point_rhs(flat, cells, nbrs, geometry, variogram, footprint, tables["field"])
            value = (k * beta[cells, :N]).sum(1)  # pixels of a valid pixel without a system: beta 0
            out[flat] = value + beta[cells, N] if ordinary else value
    out = out.reshape(H, W)
    if exact and footprint.scale is None:
        scale = float(r[torch.isfinite(r)].abs().max()) if bool(torch.isfinite(r).any()) else 0.0
        out = make_exact(out, r, footprint, tol=max(EXACT_TOL, 1e-12 * scale))
    return out.numpy() if was_numpy else out


def make_exact(fine, coarse, footprint, radiance=False, tol=EXACT_TOL, passes=EXACT_PASSES):
    """Add the remaining footprint error by nearest until footprint.aggregate(fine) == coarse within tol K
    where both are finite: fine (H, W), coarse (h, w) float64 tensors -> (H, W); fine's NaN pixels stay NaN
    (the footprint mean is over the finite ones). radiance: the footprint mean of T^4 (aggregate(...,
    radiance=True)), the error spread in T^4. One pass is exact on an aligned grid; across CRSs each pass
    shrinks the error by the share of straddling fine pixels. A coarse pixel that holds no fine pixel
    centre cannot be reached by nearest and is left as it is."""
    index = footprint.coarse_index
    h, w = footprint.coarse.shape
    owns = (torch.bincount(index[index >= 0], minlength=h * w) > 0).reshape(h, w)
    for _ in range(passes):
        agg = footprint.aggregate(fine, radiance)
        error = coarse - agg
        ok = torch.isfinite(error) & owns
        if not bool(ok.any()) or float(error[ok].abs().max()) <= tol:
            break
        if radiance:
            error = coarse ** 4 - agg ** 4
        spread = torch.nan_to_num(footprint.nearest(torch.where(ok, error, 0.0)))
        fine = (fine ** 4 + spread).clamp(min=0) ** 0.25 if radiance else fine + spread
    return fine


def atpk_consistent(pred, lr_lst, footprint=None, radiance=False, neighbours=16, variogram=None, kriging="ordinary",
                    quadrature=QUADRATURE):
    """Coarse-consistent prediction: pred plus the ATPK of its footprint residual lr_lst - aggregate(pred)
    (radiance=True: of lr_lst^4 - mean(pred^4), added to pred^4), then make_exact.

    pred (..., H, W) K on footprint.fine, lr_lst (..., h, w) K on footprint.coarse (tensors on any device,
    or numpy; same leading shape) -> like pred (same type, dtype and device; computed in float64 on the
    CPU, not differentiable): footprint.aggregate(out, radiance) == lr_lst within EXACT_TOL where both are
    finite. footprint None: the aligned pair of the shapes (H = h * scale), as engine.make_consistent. A
    variogram is fitted per image unless given. Coarse pixels where lr_lst is NaN, or whose footprint has
    too few finite pred pixels, get no correction; pred's NaN pixels stay NaN."""
    was_numpy = not torch.is_tensor(pred)
    p_all, _ = _as_float64(pred)
    l_all, _ = _as_float64(lr_lst)
    if footprint is None:
        scale = p_all.shape[-1] // max(l_all.shape[-1], 1)
        footprint = _aligned(tuple(p_all.shape[-2:]), scale)
    H, W = footprint.fine.shape
    h, w = footprint.coarse.shape
    if tuple(p_all.shape[-2:]) != (H, W) or tuple(l_all.shape[-2:]) != (h, w) or p_all.shape[:-2] != l_all.shape[:-2]:
        raise DataError(f"atpk: prediction {tuple(p_all.shape)} and LR {tuple(l_all.shape)} are not on "
                        f"{footprint.fine.describe()} and {footprint.coarse.describe()}")
    outs = []
    for p, lr in zip(p_all.reshape(-1, H, W), l_all.reshape(-1, h, w)):
        agg = footprint.aggregate(p, radiance)
        residual = lr ** 4 - agg ** 4 if radiance else lr - agg
        delta = torch.nan_to_num(atpk_residual(residual, footprint, neighbours, variogram, kriging, quadrature))
        out = (p ** 4 + delta).clamp(min=0) ** 0.25 if radiance else p + delta
        outs.append(make_exact(out, lr, footprint, radiance))
    out = torch.stack(outs).reshape(p_all.shape)
    if was_numpy:
        return out.numpy().astype(np.asarray(pred).dtype, copy=False)
    return out.to(device=pred.device, dtype=pred.dtype)


@functools.lru_cache(maxsize=8)
def _aligned(fine_shape, scale):
    """Footprint.aligned, one per shape and scale (its quadratures are cached with it: a test set's tiles
    share one)."""
    from footprint import Footprint
    return Footprint.aligned(fine_shape, scale)
