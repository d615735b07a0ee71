"""Footprint operators between a fine grid (guidance, 30 m) and a coarse grid (the thermal sensor's own
grid and CRS: MODIS / VIIRS / Sentinel-3 at ~1 km, ECOSTRESS at 70 m), built once per grid pair.

    fp = Footprint(Grid.from_geotiff("bands_30m.tif"), Grid.from_geotiff("modis_lst.tif"), min_valid=0.5)
    lr = fp.aggregate(hr_lst)                  # (..., H, W) -> (..., h, w): area-weighted footprint means
    up = fp.interpolate(lr, "bicubic")         # (..., h, w) -> (..., H, W): values at fine pixel centres
    fp = Footprint.aligned((512, 512), 8)      # the GrokLST case: the coarse grid is the fine one / 8

Grids are north-up (geotiff.corner_transform: x = x0 + col*dx, y = y0 + row*dy, dx > 0, dy < 0). Pixel
coordinates are corner-based: pixel (i, j) covers rows [i, i+1) and columns [j, j+1), its centre is
(i + 0.5, j + 0.5).

The geometry (how each fine pixel lies on the coarse grid):
 - Same CRS: coarse pixel coordinates are an affine function of fine ones, evaluated exactly.
 - Two CRSs: pyproj transforms the fine pixel corners exactly on a lattice of nodes every `step` fine
   pixels; in between, coordinates are interpolated bilinearly (a map between CRSs is smooth at this
   scale). The error of bilinear interpolation is largest at the centres of the lattice cells, so the
   lattice is checked there against pyproj and `step` halved (64, 32, ...) until the error is below
   LATTICE_TOL = 1e-4 fine pixel (3 mm for 30 m pixels). A 7800 x 7800 UTM 50N grid against the MODIS
   grid (116-119 E, 40 N) gets step 8 and an error of 3e-5 fine pixel (python tools/footprint_speed.py);
   tests/test_footprint.py::test_lattice_error_is_bounded checks the bound at random points.
 - A fine pixel's footprint on the coarse grid is the quadrilateral of its four transformed corners
   (straight edges: bilinear error scales with the square of the distance, so a 30 m edge bends by
   1/64 of the 240 m lattice error, ~0.02 mm). Its overlap with each coarse cell is computed exactly
   (Green's theorem over the quadrilateral's edges, _cell_fraction); weights are the fractions of the
   fine pixel in each cell. A pixel inside one cell (the great majority) gets weight 1 without clipping.
 - Accuracy: a corner displaced by at most LATTICE_TOL changes a fine pixel's overlap with a cell by at
   most its perimeter times that, so every weight is within 4 * LATTICE_TOL of polygon clipping on
   exactly transformed corners (test_aggregate_matches_polygon_clipping, UTM -> WGS 84 and -> MODIS).

aggregate = weighted mean of the finite fine pixels over each coarse pixel (its fine pixels weighted by
overlap: fine pixels are taken to have one ground area within a coarse pixel, true to ~1e-4 for UTM or
geographic fine grids at 1 km), NaN where the valid part of the footprint (finite fine pixels; the part outside the fine grid
counts as invalid) is below `min_valid`. radiance=True averages T^4 and returns its fourth root (sensors
average emitted energy, not temperature). The weights are one torch sparse CSR matrix (n_coarse x
n_fine, int32 indices below 2^31 pixels), applied with torch on any device and differentiable w.r.t.
the fine input. When the coarse grid is the fine grid coarsened by an integer `scale` (same CRS, same
corner) aggregate is exactly data.block_mean_tensor and interpolate is F.interpolate / repeat_interleave.

interpolate = nearest, bilinear or bicubic (a = -0.75, as torch's) values of the coarse raster at fine
pixel centres. NaN coarse pixels are first filled from their valid neighbours (rings of 3 x 3 means of
valid pixels, as far as the kernel reaches) so that valid pixels next to a hole are not pulled toward
zero or NaN; fine pixels whose containing coarse pixel is NaN, or outside the coarse grid, are NaN
("nothing is painted under a cloud").
"""
import dataclasses
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from data import block_mean_tensor, fill_holes, hole_mask
from errors import ConfigError, DataError
from geotiff import corner_transform, crs_string, read_header

LATTICE_TOL = 1e-4     # fine pixels: largest interpolation error allowed in the cross-CRS lattice
LATTICE_STEP = 64      # fine pixels between lattice nodes to start from (halved until LATTICE_TOL holds)
SNAP = 1e-9            # coarse pixels: a corner this close to a cell edge is on it (no slivers for aligned grids)
MIN_FRACTION = 1e-9    # overlaps below this fraction of a fine pixel are dropped (rounding slivers)
CHUNK_PIXELS = 1 << 20  # fine pixels per block of rows while building or interpolating (bounds memory)
MODES = ("nearest", "bilinear", "bicubic")  # interpolate


# --------------------------------------------------------------------------- grids


@dataclasses.dataclass(frozen=True)
class Grid:
    """A north-up pixel grid.

    shape (rows, cols); transform (x0, dx, 0, y0, 0, dy): corner of pixel (0, 0) and pixel size in CRS
    units (metres, or degrees for a geographic CRS), dx > 0, dy < 0; crs: 'EPSG:<code>' or a PROJ string
    (geotiff.crs_string), None when unknown (two grids without CRS are taken to share one); name: the
    file or grid named in messages.
    """
    shape: tuple
    transform: tuple
    crs: str = None
    name: str = "grid"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "transform", tuple(float(v) for v in self.transform))
        x0, dx, rx, y0, ry, dy = self.transform
        if rx or ry:
            raise DataError(f"{self.name}: rotated or sheared grid (affine rx={rx:g}, ry={ry:g}); resample it to a "
                            f"north-up grid first (gdalwarp)")
        if dy > 0:
            raise DataError(f"{self.name}: flipped raster: rows run south to north (pixel height dy={dy:g} > 0); "
                            f"make it north-up first (gdalwarp writes north-up; in numpy: flip the rows and put "
                            f"y0 at the top edge with a negative dy)")
        if dx < 0:
            raise DataError(f"{self.name}: flipped raster: columns run east to west (pixel width dx={dx:g} < 0); "
                            f"make it north-up first (gdalwarp writes north-up; in numpy: flip the columns and put "
                            f"x0 at the west edge with a positive dx)")
        if dx == 0 or dy == 0 or min(self.shape) < 1:
            raise DataError(f"{self.name}: empty grid (shape {tuple(self.shape)}, pixel size {dx:g} x {dy:g})")

    @classmethod
    def from_geotiff(cls, path, header=None):
        """The grid of a GeoTIFF (header: geotiff.read_header's, read if not given)."""
        header = header if header is not None else read_header(path)
        t = corner_transform(header["geo"])
        if t is None:
            raise DataError(f"{path}: not georeferenced (no GeoTIFF affine tags): its pixels cannot be placed")
        return cls(tuple(header["shape"][1:]), tuple(float(v) for v in t), crs_string(header["geo"], path), str(path))

    def extent(self):
        """(xmin, xmax, ymin, ymax) in CRS units."""
        x0, dx, _, y0, _, dy = self.transform
        h, w = self.shape
        return x0, x0 + w * dx, y0 + h * dy, y0

    def describe(self):
        x0, dx, _, y0, _, dy = self.transform
        xmin, xmax, ymin, ymax = self.extent()
        return (f"{self.name}: {self.shape[1]} x {self.shape[0]} px of {dx:g} x {-dy:g}, x {xmin:.6g}..{xmax:.6g}, "
                f"y {ymin:.6g}..{ymax:.6g}, CRS {self.crs}")


def _pyproj(fine, coarse):
    try:
        import pyproj
    except ImportError:
        raise DataError(f"{fine.name} ({fine.crs}) and {coarse.name} ({coarse.crs}) are in different CRSs: relating "
                        f"them needs pyproj: pip install pyproj") from None
    return pyproj


# --------------------------------------------------------------------------- fine -> coarse pixel coordinates


class CoarseCoordinates:
    """The map from fine pixel coordinates (row, col) to coarse pixel coordinates (row, col), both
    corner-based: exact (affine) in one CRS, lattice-interpolated across CRSs (module docstring).

    __call__(rows (m,), cols (n,)) float64 -> (rows (m, n), cols (m, n)) float64, coarse pixels.
    `error`: the lattice's largest measured interpolation error in fine pixels (0 in one CRS), `step`
    its node spacing in fine pixels (None in one CRS)."""

    def __init__(self, fine, coarse):
        self.fine, self.coarse = fine, coarse
        self.step, self.error, self.transformer = None, 0.0, None
        if fine.crs != coarse.crs:
            pyproj = _pyproj(fine, coarse)
            try:
                self.transformer = pyproj.Transformer.from_crs(pyproj.CRS(fine.crs), pyproj.CRS(coarse.crs),
                                                               always_xy=True)
            except pyproj.exceptions.CRSError as e:
                raise DataError(f"{fine.name} -> {coarse.name}: pyproj cannot read the CRSs "
                                f"({fine.crs!r}, {coarse.crs!r}): {e}") from None
            self._build_lattice()

    def exact(self, rows, cols):
        """Exact coarse coordinates of fine (rows, cols), arrays of one shape (pyproj across CRSs)."""
        X0, DX, _, Y0, _, DY = self.fine.transform
        x0, dx, _, y0, _, dy = self.coarse.transform
        x, y = X0 + cols * DX, Y0 + rows * DY
        if self.transformer is not None:
            x, y = self.transformer.transform(x, y)
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                raise DataError(f"{self.fine.name}: some of its pixels cannot be transformed into the CRS of "
                                f"{self.coarse.name} ({self.coarse.crs}): the grids are too far apart for it")
        return (y - y0) / dy, (x - x0) / dx

    def _build_lattice(self):
        H, W = self.fine.shape
        step = LATTICE_STEP
        while True:
            self.node_rows = np.unique(np.r_[np.arange(0, H, step), H]).astype(np.float64)
            self.node_cols = np.unique(np.r_[np.arange(0, W, step), W]).astype(np.float64)
            self.node_values = self.exact(*np.meshgrid(self.node_rows, self.node_cols, indexing="ij"))
            mid_rows = 0.5 * (self.node_rows[1:] + self.node_rows[:-1])
            mid_cols = 0.5 * (self.node_cols[1:] + self.node_cols[:-1])
            true = self.exact(*np.meshgrid(mid_rows, mid_cols, indexing="ij"))
            guess = self(mid_rows, mid_cols)
            error = max(np.abs(t - g).max() for t, g in zip(true, guess))  # coarse pixels
            fine_size = self._fine_pixel_size()
            self.step, self.error = step, error / fine_size
            if self.error <= LATTICE_TOL or step == 1:
                return
            step //= 2

    def _fine_pixel_size(self):
        """Side of a fine pixel in coarse pixels (median over the lattice cells)."""
        r, c = self.node_values
        corners = [(slice(None, -1), slice(None, -1)), (slice(None, -1), slice(1, None)),
                   (slice(1, None), slice(1, None)), (slice(1, None), slice(None, -1))]
        area = _quad_area(np.stack([c[k].ravel() for k in corners]), np.stack([r[k].ravel() for k in corners]))
        pixels = np.outer(np.diff(self.node_rows), np.diff(self.node_cols)).ravel()
        return math.sqrt(np.median(np.abs(area) / pixels))

    def __call__(self, rows, cols):
        rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        if self.transformer is None:  # one CRS: separable and affine
            r, c = self.exact(rows[:, None], cols[None, :])
            return np.broadcast_to(r, (len(rows), len(cols))), np.broadcast_to(c, (len(rows), len(cols)))
        a, ta = _bracket(self.node_rows, rows)
        b, tb = _bracket(self.node_cols, cols)
        out = []
        for values in self.node_values:
            along_rows = values[a] * (1 - ta)[:, None] + values[a + 1] * ta[:, None]  # (m, nodes along cols)
            out.append(along_rows[:, b] * (1 - tb) + along_rows[:, b + 1] * tb)
        return tuple(out)


def _bracket(nodes, x):
    """Index of the lattice interval holding each x, and x's position in it (0..1)."""
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    return i, (x - nodes[i]) / (nodes[i + 1] - nodes[i])


# --------------------------------------------------------------------------- exact overlaps


def _quad_area(xs, ys):
    """Signed area of quadrilaterals with corners xs, ys (4, n) in order (shoelace), positive for the
    order of pixel corners (0, 0), (0, 1), (1, 1), (1, 0) as (row, col) with x = col, y = row."""
    return -sum((xs[(k + 1) % 4] - xs[k]) * (ys[k] + ys[(k + 1) % 4]) for k in range(4)) / 2


def _mean_clamp(ta, tb):
    """Mean of clip(t, 0, 1) while t runs linearly from ta to tb (arrays)."""
    lo, hi = np.minimum(ta, tb), np.maximum(ta, tb)
    a, b = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
    length = hi - lo
    integral = (b - a) * (a + b) / 2 + np.maximum(hi - np.maximum(lo, 1), 0)  # the ramp part, then the part above 1
    return np.where(length > 0, integral / np.where(length > 0, length, 1), a)


def _cell_fraction(xs, ys):
    """Area of quadrilaterals xs, ys (4, n) inside the unit cell [0, 1] x [0, 1], exact.

    Green's theorem: area(P and cell) = -(contour integral over P's edges of f dx) with f(x, y) =
    clip(y, 0, 1) for x in [0, 1] and 0 elsewhere (its y-derivative is the cell's indicator). Along a
    straight edge y is linear in x, so each edge contributes its x-extent inside [0, 1] times the mean
    of clip(y, 0, 1) over that part."""
    area = 0.0
    for k in range(4):
        x1, y1, x2, y2 = xs[k], ys[k], xs[(k + 1) % 4], ys[(k + 1) % 4]
        xa, xb = np.clip(x1, 0, 1), np.clip(x2, 0, 1)
        run = np.where(x2 != x1, x2 - x1, 1.0)  # a vertical edge has xa == xb: contributes 0
        ya, yb = y1 + (xa - x1) / run * (y2 - y1), y1 + (xb - x1) / run * (y2 - y1)
        area = area - (xb - xa) * _mean_clamp(ya, yb)
    return area


def _snap(a):
    nearest = np.round(a)
    return np.where(np.abs(a - nearest) < SNAP, nearest, a)


def _corners(a):
    """The four corners of every pixel of a corner array (m+1, n+1): views (m, n), in pixel order."""
    return a[:-1, :-1], a[:-1, 1:], a[1:, 1:], a[1:, :-1]


def _span(a):
    """First and last cell each pixel reaches along one axis, from its corners' coordinates a (m+1, n+1)
    -> two (m*n,) float arrays of integers (a corner on a cell edge does not reach past it)."""
    lo, hi = _corners(np.floor(a)), _corners(np.ceil(a))
    first = np.minimum(np.minimum(lo[0], lo[1]), np.minimum(lo[2], lo[3]))
    last = np.maximum(np.maximum(hi[0], hi[1]), np.maximum(hi[2], hi[3])) - 1
    return first.ravel(), last.ravel()


def _overlaps(rows, cols, coarse_shape, index_dtype):
    """Weights of a block of fine rows: rows, cols (m+1, W+1) coarse coordinates of the block's pixel
    corners -> (coarse index, fine index within the block, fraction of the fine pixel inside that coarse
    pixel float32), sorted by fine index; indices of `index_dtype`."""
    h, w = coarse_shape
    i0, i1 = _span(rows)
    j0, j1 = _span(cols)
    single = (i0 == i1) & (j0 == j1)  # the great majority: inside one cell, weight 1
    keep = np.flatnonzero(single & (i0 >= 0) & (i0 < h) & (j0 >= 0) & (j0 < w))
    parts = [((i0[keep] * w + j0[keep]).astype(index_dtype), keep.astype(index_dtype), np.ones(len(keep), np.float32))]
    edge = np.flatnonzero(~single & (i1 >= 0) & (i0 < h) & (j1 >= 0) & (j0 < w))
    if len(edge):
        ys = np.stack([c.ravel()[edge] for c in _corners(rows)])  # (4, edge pixels)
        xs = np.stack([c.ravel()[edge] for c in _corners(cols)])
        i0, i1, j0, j1 = i0[edge], i1[edge], j0[edge], j1[edge]
        area = _quad_area(xs - xs[0], ys - ys[0])
        for di in range(int((i1 - i0).max()) + 1):
            for dj in range(int((j1 - j0).max()) + 1):
                i, j = i0 + di, j0 + dj
                sel = np.flatnonzero((i <= i1) & (j <= j1) & (i >= 0) & (i < h) & (j >= 0) & (j < w))
                frac = _cell_fraction(xs[:, sel] - j[sel], ys[:, sel] - i[sel]) / area[sel]
                big = frac > MIN_FRACTION
                sel = sel[big]
                parts.append(((i[sel] * w + j[sel]).astype(index_dtype), edge[sel].astype(index_dtype),
                              frac[big].astype(np.float32)))
    coarse_index, fine_index, fraction = (np.concatenate(p) for p in zip(*parts))
    order = np.argsort(fine_index, kind="stable")  # a few sorted runs: cheap
    return coarse_index[order], fine_index[order], fraction[order]


# --------------------------------------------------------------------------- the operator


def _as_tensor(x):
    """(tensor, was_numpy): numpy arrays become tensors (float32 unless floating already)."""
    if torch.is_tensor(x):
        return x, False
    x = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(x if x.dtype.kind == "f" else x.astype(np.float32))), True


def _back(x, was_numpy):
    return x.detach().cpu().numpy() if was_numpy else x


class Footprint:
    """Aggregation and interpolation between a fine and a coarse grid (module docstring).

    Footprint(fine, coarse, min_valid=0.5): fine, coarse are Grids; min_valid is the fraction of a
    coarse pixel's footprint that must hold finite fine pixels for aggregate to give a value.
    Footprint.aligned(fine_shape, scale): the coarse grid is the fine one coarsened by `scale`, no CRS.

    Attributes: fine, coarse (Grid), min_valid (float), scale (int when the grids are integer-aligned,
    else None), weights (torch sparse CSR (h*w, H*W) float32: fraction of fine pixel f inside coarse
    pixel c, in fine pixels), coverage ((h, w) float64 tensor: fraction of each coarse pixel's footprint
    inside the fine grid), coarse_index ((H, W) int64 tensor: flat index i*w + j of the coarse pixel
    holding each fine pixel centre, -1 outside), fine_in_coarse ((rows, cols), two (H, W) float32 tensors:
    fine pixel centres in corner-based coarse pixel coordinates), to_coarse (the CoarseCoordinates map:
    to_coarse.step and to_coarse.error describe its lattice).
    """

    def __init__(self, fine, coarse, min_valid=0.5):
        if not 0.0 <= float(min_valid) <= 1.0:
            raise ConfigError(f"min_valid={min_valid}: expected a fraction of a coarse pixel in 0..1")
        if (fine.crs is None) != (coarse.crs is None):
            unknown, known = (fine, coarse) if fine.crs is None else (coarse, fine)
            raise DataError(f"{unknown.name}: no CRS (no GeoKeys), so it cannot be placed on {known.name} "
                            f"({known.crs}): write its CRS into the file (gdal_edit.py -a_srs)")
        self.fine, self.coarse, self.min_valid = fine, coarse, float(min_valid)
        self.scale = _aligned_scale(fine, coarse)
        self.to_coarse = CoarseCoordinates(fine, coarse)
        self._check_overlap()
        self._weights = self._coverage = self._index = self._centres = None
        self._cast = {}
        if self.scale is None:
            self._build()

    @classmethod
    def aligned(cls, fine_shape, scale, min_valid=0.5):
        """The coarse grid is the fine grid (H, W) coarsened by the integer `scale` (H, W multiples of it)."""
        H, W = fine_shape
        if H % scale or W % scale:
            raise DataError(f"fine shape {tuple(fine_shape)} is not a multiple of scale {scale}")
        return cls(Grid((H, W), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), None, "fine grid"),
                   Grid((H // scale, W // scale), (0.0, float(scale), 0.0, 0.0, 0.0, -float(scale)), None, "coarse grid"),
                   min_valid)

    # ------------------------------------------------------------------ building

    def _check_overlap(self):
        """DataError with both extents in the coarse grid's CRS unless the fine grid touches the coarse one."""
        H, W = self.fine.shape
        h, w = self.coarse.shape
        edge_rows, edge_cols = np.arange(H + 1.0), np.arange(W + 1.0)
        rows, cols = zip(*(self.to_coarse(r, c) for r, c in
                           ((edge_rows, [0.0, W]), ([0.0, H], edge_cols))))
        rows = np.concatenate([r.ravel() for r in rows])
        cols = np.concatenate([c.ravel() for c in cols])
        if rows.max() > 0 and rows.min() < h and cols.max() > 0 and cols.min() < w:
            return
        x0, dx, _, y0, _, dy = self.coarse.transform
        xs, ys = x0 + cols * dx, y0 + rows * dy
        xmin, xmax, ymin, ymax = self.coarse.extent()
        raise DataError(f"{self.fine.name} and {self.coarse.name} do not overlap: in {self.coarse.crs}, the fine "
                        f"grid spans x {xs.min():.6g}..{xs.max():.6g}, y {ys.min():.6g}..{ys.max():.6g}; the coarse "
                        f"grid x {xmin:.6g}..{xmax:.6g}, y {ymin:.6g}..{ymax:.6g}")

    def _build(self):
        """The sparse weights, block of fine rows by block (memory: one block of corners at a time), then
        placed row by row of the CSR matrix (a counting sort: coarse pixel, then fine index)."""
        H, W = self.fine.shape
        h, w = self.coarse.shape
        index_dtype = np.int32 if max(h * w, H * W) < 2 ** 31 else np.int64  # int32: half the memory
        snap = _snap if self.to_coarse.transformer is None else (lambda a: a)  # one CRS: cell edges exactly
        block = max(1, CHUNK_PIXELS // (W + 1))
        blocks, counts, totals = [], np.zeros(h * w, np.int64), np.zeros(h * w)
        for r0 in range(0, H, block):
            rows, cols = self.to_coarse(np.arange(r0, min(H, r0 + block) + 1.0), np.arange(W + 1.0))
            c, f, v = _overlaps(snap(rows), snap(cols), (h, w), index_dtype)
            blocks.append((r0 * W, c, f, v))
            counts += np.bincount(c, minlength=h * w)
            totals += np.bincount(c, weights=v, minlength=h * w)  # fine pixels in each cell
        nnz = int(counts.sum())
        if nnz == 0:
            self._check_overlap()  # extents that touch, pixels that do not: the same message
            raise DataError(f"{self.fine.name} and {self.coarse.name} do not overlap")
        index_dtype = index_dtype if nnz < 2 ** 31 else np.int64
        crow = np.zeros(h * w + 1, index_dtype)
        np.cumsum(counts, out=crow[1:])
        cursor = crow[:-1].astype(np.int64)
        fine_index, fraction = np.empty(nnz, index_dtype), np.empty(nnz, np.float32)
        while blocks:  # blocks in fine order, each sorted by fine index: rows of the matrix come out sorted
            first, c, f, v = blocks.pop(0)
            order = np.argsort(c, kind="stable")
            c = c[order]
            starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
            runs = np.diff(np.r_[starts, len(c)])
            position = cursor[c] + np.arange(len(c)) - np.repeat(starts, runs)
            fine_index[position] = f[order] + first
            fraction[position] = v[order]
            cursor[c[starts]] += runs
        with warnings.catch_warnings():  # "sparse CSR support is in beta": said once per process, not our news
            warnings.simplefilter("ignore", UserWarning)
            self._weights = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(fine_index),
                                                    torch.from_numpy(fraction), (h * w, H * W), check_invariants=False)
        self._coverage = self._coverage_of(totals)

    def _coverage_of(self, total):
        """Fraction of each coarse pixel's footprint inside the fine grid: its summed weights `total`
        (h*w,) over its area in fine pixels (its corners transformed into the fine grid); exactly 1 for a
        cell whose corners all lie in the fine grid."""
        h, w = self.coarse.shape
        H, W = self.fine.shape
        cells = np.flatnonzero(total > 0)
        i, j = cells // w, cells % w
        ci = np.stack([i, i, i + 1, i + 1]).astype(np.float64)  # corners in order (0,0), (0,1), (1,1), (1,0)
        cj = np.stack([j, j + 1, j + 1, j]).astype(np.float64)
        rows, cols = self._coarse_to_fine(ci, cj)
        area = np.abs(_quad_area(cols, rows))
        inside = ((rows >= -1e-6) & (rows <= H + 1e-6) & (cols >= -1e-6) & (cols <= W + 1e-6)).all(0)
        coverage = np.zeros(h * w)
        with np.errstate(invalid="ignore", divide="ignore"):
            coverage[cells] = np.where(inside, 1.0, np.minimum(total[cells] / area, 1.0))
        return torch.from_numpy(np.nan_to_num(coverage).reshape(h, w))

    def _coarse_to_fine(self, rows, cols):
        """Fine pixel coordinates of coarse pixel coordinates (exact; pyproj across CRSs)."""
        X0, DX, _, Y0, _, DY = self.fine.transform
        x0, dx, _, y0, _, dy = self.coarse.transform
        x, y = x0 + cols * dx, y0 + rows * dy
        if self.to_coarse.transformer is not None:
            x, y = self.to_coarse.transformer.transform(x, y, direction="INVERSE")
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return (y - Y0) / DY, (x - X0) / DX

    # ------------------------------------------------------------------ what the grids give

    @property
    def weights(self):
        if self._weights is None:
            self._build()
        return self._weights

    @property
    def coverage(self):
        if self.scale is not None:
            return torch.ones(self.coarse.shape, dtype=torch.float64)
        return self._coverage

    @property
    def fine_in_coarse(self):
        if self._centres is None:
            rows, cols = torch.empty(self.fine.shape), torch.empty(self.fine.shape)  # float32: 0.5 GB for 7800^2
            for r0, r1 in self._blocks():
                r, c = self._centres_of(r0, r1)
                rows[r0:r1], cols[r0:r1] = torch.from_numpy(r.astype(np.float32)), torch.from_numpy(c.astype(np.float32))
            self._centres = rows, cols
        return self._centres

    @property
    def coarse_index(self):
        if self._index is None:
            self._index = torch.empty(self.fine.shape, dtype=torch.int64)
            for r0, r1 in self._blocks():
                self._index[r0:r1] = torch.from_numpy(self._index_of(*self._centres_of(r0, r1)))
        return self._index

    def _blocks(self):
        H, W = self.fine.shape
        block = max(1, CHUNK_PIXELS // W)
        return [(r0, min(H, r0 + block)) for r0 in range(0, H, block)]

    def _centres_of(self, r0, r1):
        """Coarse coordinates (rows, cols), each (r1 - r0, W) float64, of the centres of fine rows r0..r1-1."""
        return self.to_coarse(np.arange(r0, r1) + 0.5, np.arange(self.fine.shape[1]) + 0.5)

    def _index_of(self, rows, cols):
        h, w = self.coarse.shape
        i, j = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
        return np.where((i >= 0) & (i < h) & (j >= 0) & (j < w), i * w + j, -1)

    # ------------------------------------------------------------------ the operators

    def _matrix(self, dtype, device):
        """The weights in `dtype` on `device` (cached, with their row sums)."""
        key = (dtype, str(device))
        if key not in self._cast:
            a = self.weights.to(device=device, dtype=dtype)
            ones = torch.ones(a.shape[1], 1, dtype=dtype, device=device)
            self._cast = {key: (a, torch.sparse.mm(a, ones)[:, 0])}  # one cast kept: the big case is 1 GB
        return self._cast[key]

    def aggregate(self, x, radiance=False):
        """Footprint means of a fine raster.

        x: (..., H, W) tensor or numpy array (Kelvin, or any quantity), NaN = no data -> (..., h, w), same
        type and dtype (numpy integers -> float32); NaN where less than min_valid of the footprint is
        valid. radiance=True: (mean of x^4)^(1/4), for temperatures in Kelvin. Differentiable w.r.t. x."""
        x, was_numpy = _as_tensor(x)
        H, W = self.fine.shape
        if tuple(x.shape[-2:]) != (H, W):
            raise DataError(f"aggregate: input of shape {tuple(x.shape)} is not on {self.fine.describe()}")
        if not x.is_floating_point():
            x = x.float()
        if radiance:
            x = x ** 4
        if self.scale is not None:
            out = block_mean_tensor(x, self.scale, 1.0 - self.min_valid)
        else:
            out = self._sparse_mean(x)
        if radiance:
            out = out ** 0.25
        return _back(out, was_numpy)

    def _sparse_mean(self, x):
        h, w = self.coarse.shape
        a, row_sum = self._matrix(x.dtype, x.device)
        flat = x.reshape(-1, x.shape[-2] * x.shape[-1]).t()  # (H*W, N)
        valid = torch.isfinite(flat)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        total = torch.sparse.mm(a, torch.where(valid, flat, zero))
        row_sum = row_sum[:, None]
        if bool(valid.all()):  # the common case: the footprint fraction is the coverage, exactly
            weight, lost = row_sum, torch.zeros_like(row_sum)
        else:
            lost = torch.sparse.mm(a, (~valid).to(x.dtype))  # exactly 0 where no invalid pixel is touched
            weight = row_sum - lost
        coverage = self.coverage.reshape(-1, 1).to(device=x.device, dtype=x.dtype)
        fraction = (1 - lost / row_sum.clamp(min=1e-30)) * coverage
        ok = (weight > 0) & (fraction >= self.min_valid)
        out = torch.where(ok, total / torch.where(ok, weight, torch.ones_like(weight)), float("nan"))
        return out.t().reshape(x.shape[:-2] + (h, w))

    def interpolate(self, lr, mode="bilinear"):
        """Values of a coarse raster at the fine pixel centres.

        lr: (..., h, w) tensor or numpy array, NaN = no data -> (..., H, W), same type and dtype; mode:
        'nearest', 'bilinear' or 'bicubic' (torch's: F.interpolate when aligned, else F.grid_sample, both
        with a = -0.75, align_corners=False and edges clamped).
        NaN where the coarse pixel holding the fine pixel centre is NaN or outside the coarse grid.
        Differentiable w.r.t. lr."""
        if mode not in MODES:
            raise ConfigError(f"interpolation mode {mode!r}: expected one of {list(MODES)}")
        c, was_numpy = _as_tensor(lr)
        h, w = self.coarse.shape
        if tuple(c.shape[-2:]) != (h, w):
            raise DataError(f"interpolate: input of shape {tuple(c.shape)} is not on {self.coarse.describe()}")
        if not c.is_floating_point():
            c = c.float()
        batch = c.shape[:-2]
        c = c.reshape(-1, 1, h, w)
        # holes filled from their neighbours (data.fill_holes): values near a hole are not pulled toward anything
        filled = torch.nan_to_num(fill_holes(c), nan=0.0)
        if self.scale is not None:
            s = self.scale
            if mode == "nearest":
                out = filled.repeat_interleave(s, -2).repeat_interleave(s, -1)
            else:
                out = F.interpolate(filled, scale_factor=s, mode=mode, align_corners=False)
            out = torch.where(hole_mask(c, s), float("nan"), out)
        else:
            nan = torch.isnan(c).reshape(-1, h * w)
            filled = filled.reshape(1, -1, h, w)  # the batch as channels: one sampling grid for all
            out = torch.cat([self._sample(filled, nan, *self._centres_of(r0, r1), mode)
                             for r0, r1 in self._blocks()], 1)
        return _back(out.reshape(batch + tuple(self.fine.shape)), was_numpy)

    def nearest(self, lr):
        """interpolate(lr, 'nearest'): the value of the coarse pixel holding each fine pixel centre."""
        return self.interpolate(lr, "nearest")

    def _sample(self, filled, nan, rows, cols, mode):
        """filled (1, N, h, w) at coarse coordinates rows, cols (m, W) -> (N, m*W); NaN outside the coarse
        grid or where the coarse pixel holding the point is NaN."""
        h, w = self.coarse.shape
        index = torch.from_numpy(self._index_of(rows, cols).ravel()).to(filled.device)
        if mode == "nearest":
            out = filled.reshape(-1, h * w)[:, index.clamp(min=0)]
        else:  # grid_sample's -1 and 1 are the grid's outer edges (align_corners=False): corner-based / size
            grid = np.stack([2 * cols / w - 1, 2 * rows / h - 1], -1)[None]
            grid = torch.from_numpy(grid).to(filled.device, filled.dtype)
            out = F.grid_sample(filled, grid, mode=mode, padding_mode="border", align_corners=False)
            out = out.reshape(filled.shape[1], -1)
        dark = (index < 0) | nan[:, index.clamp(min=0)]
        return torch.where(dark, float("nan"), out)


def _aligned_scale(fine, coarse):
    """The integer s when the coarse grid is the fine grid coarsened by s (same CRS and corner, shape x s),
    else None."""
    X0, DX, _, Y0, _, DY = fine.transform
    x0, dx, _, y0, _, dy = coarse.transform
    s = round(dx / DX)
    H, W = fine.shape
    h, w = coarse.shape
    if (fine.crs != coarse.crs or s < 1 or abs(dx - s * DX) > 1e-9 * dx or abs(dy - s * DY) > 1e-9 * -dy
            or abs(x0 - X0) > 1e-6 * DX or abs(y0 - Y0) > 1e-6 * -DY or (H, W) != (h * s, w * s)):
        return None
    return s
