"""Raster I/O and georeferencing, written once: GeoTIFF reading and writing with tifffile, band names,
no-data, pixel grids (PixelIsArea / PixelIsPoint), windows and grid checks.

A raster's georeferencing travels as `geo`, {TIFF tag code: (dtype, count, value)} of the tags
below that the file has; outputs copy only these tags, never all of a file's tags. The affine of a
raster (`geo_transform`) maps pixel (col, row) to map coordinates

    x = x0 + col*dx + row*rx,   y = y0 + col*ry + row*dy      (dy < 0 for north-up rasters)

and refers to the tiepoint as the file stores it: the corner of pixel (0, 0) for PixelIsArea (the
GeoTIFF default) and its centre for PixelIsPoint; `corner_transform` always gives the corner.
Band names are GDAL band descriptions (the GDAL_METADATA tag); no-data is the GDAL_NODATA tag or
NaN, read as NaN.
"""
import errno
import math
import os
import sys
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import tifffile

from errors import DataError

TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORM = 33550, 33922, 34264
TAG_GEOKEYS, TAG_GEO_DOUBLES, TAG_GEO_ASCII = 34735, 34736, 34737
TAG_GDAL_METADATA, TAG_GDAL_NODATA = 42112, 42113
GEO_TAGS = (TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORM, TAG_GEOKEYS, TAG_GEO_DOUBLES, TAG_GEO_ASCII)

GEOKEY_MODEL_TYPE, GEOKEY_RASTER_TYPE, GEOKEY_GEOGRAPHIC, GEOKEY_PROJECTED = 1024, 1025, 2048, 3072
RASTER_PIXEL_IS_POINT = 2
CITATION_KEYS = (1026, 2049, 3073)  # free-text names, not compared
USER_DEFINED = 32767
TIFF_EXTENSIONS = (".tif", ".tiff")


# --------------------------------------------------------------------------- reading


def _open_error(path, e):
    """A DataError naming `path` for anything tifffile or a codec raises on a broken file."""
    if "imagecodecs" in str(e):
        return DataError(f"{path}: compressed with a codec that needs the 'imagecodecs' package "
                         f"(pip install imagecodecs, or re-save with gdal_translate -co COMPRESS=DEFLATE)")
    return DataError(f"{path}: unreadable GeoTIFF ({type(e).__name__}: {e}); the file may be truncated or "
                     f"not a TIFF: copy or export it again")


def _with_first_page(path, read):
    """read(page) of the file's first page; whatever a missing, broken or truncated file raises in
    tifffile or a codec becomes one DataError naming `path`."""
    try:
        with tifffile.TiffFile(path) as tif:
            return read(tif.pages[0])
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, tifffile.TiffFileError, zlib.error, RuntimeError) as e:
        raise _open_error(path, e) from e


def read_header(path):
    """A GeoTIFF's header, no pixels read: {'shape': (C, H, W), 'bands': names or None, 'nodata':
    float or None, 'geo': {...}, 'dtype': numpy dtype}."""
    return _with_first_page(path, lambda page: _header(path, page))


def _header(path, page):
    tags = page.tags
    end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
    if end > page.parent.filehandle.size:  # a cut copy: caught from the header, before any pixel is decoded
        raise DataError(f"{path}: truncated GeoTIFF (its pixel data ends at byte {end}, the file has "
                        f"{page.parent.filehandle.size} bytes): copy or export it again")
    count = page.samplesperpixel if page.ndim == 3 or page.samplesperpixel > 1 else 1
    if page.ndim == 3 and page.samplesperpixel == 1:  # several 2-D images stacked in one page
        count = page.shape[0]
    nodata = None
    if TAG_GDAL_NODATA in tags:  # page.nodata is 0 when the tag is absent: check the tag
        text = str(tags[TAG_GDAL_NODATA].value).strip().strip("\x00")
        try:
            nodata = float(text)
        except ValueError:
            raise DataError(f"{path}: GDAL_NODATA tag {text!r} is not a number") from None
    meta = tags[TAG_GDAL_METADATA].value if TAG_GDAL_METADATA in tags else None
    return {"shape": (count, page.imagelength, page.imagewidth), "bands": band_names(meta, count, path),
            "nodata": nodata, "geo": {c: (tags[c].dtype, tags[c].count, tags[c].value) for c in GEO_TAGS if c in tags},
            "dtype": page.dtype}


def read_geotiff(path, window=None):
    """Read a GeoTIFF -> (array float32 (C, H, W) with no-data as NaN, header as read_header).

    window (row0, col0, rows, cols): read only that part (whole strips or tiles are decoded,
    the rest is not kept); the header's 'geo' is then the window's and 'shape' its shape.
    """
    info, array, planar, samples = _with_first_page(
        path, lambda page: (_header(path, page), page.asarray(), page.planarconfig, page.samplesperpixel))
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and samples > 1 and planar == 1:  # contig: (H, W, C)
        array = np.moveaxis(array, -1, 0)
    elif array.ndim != 3:
        raise DataError(f"{path}: expected a 2-D or 3-D raster, got shape {array.shape}")
    if window is not None:
        r0, c0, rows, cols = window
        if r0 < 0 or c0 < 0 or rows <= 0 or cols <= 0 or r0 + rows > array.shape[1] or c0 + cols > array.shape[2]:
            raise DataError(f"{path}: window rows {r0}..{r0 + rows}, cols {c0}..{c0 + cols} is outside the "
                            f"raster's {array.shape[1]} x {array.shape[2]} pixels")
        array = array[:, r0:r0 + rows, c0:c0 + cols]
        info["geo"] = geo_window(info["geo"], r0, c0)
    array = array.astype(np.float32, copy=True)
    nodata = info["nodata"]
    if nodata is not None and not math.isnan(nodata):
        array[array == np.float32(nodata)] = np.nan
    info["shape"] = array.shape
    return array, info


def band_names(gdal_metadata, count, path="GeoTIFF"):
    """Band names from GDAL_METADATA <Item name="DESCRIPTION" sample="i" role="description">, or None
    when no band is named. Either every band is named or none: a partly named file is a DataError
    (reading it in the default band order would silently mix bands)."""
    if not gdal_metadata:
        return None
    try:
        root = ET.fromstring(gdal_metadata)
    except ET.ParseError:
        return None
    names = {}
    for item in root.iter("Item"):
        if item.get("role") == "description" and item.get("sample") is not None and (item.text or "").strip():
            names[int(item.get("sample"))] = item.text.strip()
    if not names:
        return None
    if sorted(names) != list(range(count)):
        unnamed = [i + 1 for i in range(count) if i not in names]
        raise DataError(f"{path}: {len(names)} of {count} bands have a description (band names); bands "
                        f"{unnamed} have none: name every band (gdal_edit.py -mo / rasterio "
                        f"set_band_description) or none")
    return [names[i] for i in range(count)]


# --------------------------------------------------------------------------- writing


def _extratags(geo, names, nodata):
    tags = [(code, dtype, count, value, True) for code, (dtype, count, value) in sorted((geo or {}).items())]
    if names is not None:
        items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>'
                        for i, n in enumerate(names))
        tags.append((TAG_GDAL_METADATA, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True))
    if nodata is not None:
        tags.append((TAG_GDAL_NODATA, "s", 0, "nan" if math.isnan(nodata) else repr(float(nodata)), True))
    return tags


def temp_path(path):
    """A unique temporary name beside `path` (same folder: os.replace is then atomic)."""
    return f"{path}.tmp{os.getpid()}.{os.urandom(4).hex()}"


def write_atomic(path, payload):
    """Write bytes to `path` atomically (unique temp file beside it, fsync, rename): `path` is either the
    old file or the whole new one, and no temp file is left behind on an error (which propagates)."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_geotiff(path, array, geo=None, band_names=None, nodata=float("nan"), tile=None):
    """Write float32 (H, W) or (C, H, W) as a zlib-compressed GeoTIFF, atomically (temp file, fsync,
    rename): a crash or a full disk leaves any previous `path` intact.

    geo: {tag code: (dtype, count, value)} as read_geotiff returns / geo_window makes.
    band_names are stored as GDAL band descriptions; nodata as the GDAL_NODATA tag (NaN pixels are
    written as that value).
    """
    array = np.asarray(array, dtype=np.float32)
    if nodata is not None and not math.isnan(nodata):
        array = np.where(np.isnan(array), np.float32(nodata), array)
    kwargs = {"planarconfig": "separate"} if array.ndim == 3 else {}
    _atomic_imwrite(path, [dict(data=array, extratags=_extratags(geo, band_names, nodata), tile=tile, **kwargs)],
                    bigtiff=array.nbytes > 3.9e9)


def _atomic_imwrite(path, pages, bigtiff=False, spill=None):
    """Write TIFF pages (dicts of tifffile.TiffWriter.write arguments, zlib-compressed) to a temp file beside
    `path`, fsync, rename: `path` is either the old file or the whole new one, never half-written, and no temp
    file is left behind on an error. spill: another temp file the pages read from (removed here too). A failed
    write (a full disk: ENOSPC, or EFBIG past a file size limit) is one DataError naming `path`."""
    tmp = temp_path(path)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            for page in pages:
                tif.write(photometric="minisblack", compression="zlib", metadata=None, **page)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is None:
            raise
        kept = "the previous file is intact" if os.path.exists(path) else "nothing was written there"
        free = "free some space and " if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        raise DataError(f"{path}: writing the GeoTIFF failed ({e.strerror or e}); {kept}; {free}run again") from None
    finally:
        for name in (tmp, spill):
            if name and os.path.exists(name):
                os.remove(name)


def remove_stale_temps(path):
    """Remove the temp files of `path` (temp_path's `<path>.tmp<pid>.<hex>`) left by processes that no longer
    exist (killed runs); a temp file of a live process, or of a pid this user cannot see, is kept.
    Returns the removed paths."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = []
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        rest = entry[len(name) + 4:] if entry.startswith(name + ".tmp") else ""
        pid = rest.split(".", 1)[0]
        if not pid.isdigit() or "." not in rest:
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        try:
            os.remove(os.path.join(folder, entry))
            removed.append(os.path.join(folder, entry))
        except FileNotFoundError:
            pass
    return removed


OVERVIEW_MIN = 256  # px: reduced-resolution pages are added until one is smaller than this


def overview_factors(shape, min_size=OVERVIEW_MIN):
    """Reduction factors 2, 4, 8, ... of a raster's overviews: each is added while the previous level's
    longer side is at least `min_size` pixels, so the last one is the first below it ([] for a raster
    smaller than min_size)."""
    factors, f = [], 1
    while -(-max(shape) // f) >= min_size:
        f *= 2
        factors.append(f)
    return factors


class _Overview:
    """One reduced-resolution level of a raster written row band by row band: NaN-aware means of its
    f x f blocks (the blocks of the last row and column may be partial: means of the pixels there),
    stored into `out` ((ceil(H/f), ceil(W/f)) float32, NaN where a block has no finite pixel) as each
    block row is complete. Host memory: one row of block sums."""

    def __init__(self, f, shape, out):
        self.f, self.H, self.out = f, shape[0], out
        self.starts = np.arange(0, shape[1], f)
        self.sum, self.count, self.row = np.zeros(len(self.starts)), np.zeros(len(self.starts), np.int64), 0

    def add(self, band):
        i = 0
        while i < len(band):
            take = min(self.f - self.row % self.f, len(band) - i)
            part = band[i:i + take]
            finite = np.isfinite(part)
            self.sum += np.add.reduceat(np.where(finite, part, 0).sum(0, dtype=np.float64), self.starts)
            self.count += np.add.reduceat(finite.sum(0), self.starts)
            self.row, i = self.row + take, i + take
            if self.row % self.f == 0 or self.row == self.H:
                with np.errstate(invalid="ignore", divide="ignore"):
                    self.out[(self.row - 1) // self.f] = np.where(self.count > 0, self.sum / self.count, np.nan)
                self.sum[:], self.count[:] = 0.0, 0


def _tiles(rows, shape, tile, fill, consume=None):
    """tile x tile float32 tiles, row-major, of a raster given as row bands of `tile` rows (the last may be
    shorter); NaN -> fill (None: kept). consume(band) sees each band first (NaN as NaN)."""
    h, w = shape
    done = 0
    for band in rows:
        band = np.asarray(band, np.float32)
        if band.shape[1] != w or (band.shape[0] != tile and done + band.shape[0] != h):
            raise ValueError(f"row band of shape {band.shape} at row {done}: expected ({tile}, {w}) (the last may be shorter)")
        if consume is not None:
            consume(band)
        if fill is not None:
            band = np.where(np.isnan(band), fill, band)
        for c in range(0, w, tile):
            block = np.zeros((tile, tile), np.float32)
            block[:band.shape[0], :min(tile, w - c)] = band[:, c:c + tile]
            yield block
        done += band.shape[0]
    if done != h:
        raise ValueError(f"write_geotiff_rows: got {done} rows, expected {h}")


def write_geotiff_rows(path, shape, rows, geo=None, nodata=float("nan"), tile=256, band_name=None, overviews=True):
    """Write a single-band float32 (H, W) GeoTIFF from an iterator of row bands, so that host memory
    holds one band, not the scene: `rows` yields (tile, W) float32 arrays top to bottom (the last may
    be shorter), each consumed as tifffile writes its tile x tile tiles. NaN pixels are written as
    `nodata` (the GDAL_NODATA tag); band_name: the GDAL band description.

    overviews: also write reduced-resolution pages (overview_factors: 2, 4, ... until one is below 256 px),
    each the NaN-aware mean of f x f blocks of the full page (partial blocks at the right and bottom
    edges: the mean of the pixels there), tiled and compressed like page 0, as the IFDs after it with
    NewSubfileType = 1, the layout GDAL reads as internal overviews (QGIS then draws a large map fast).
    They are accumulated from the row bands as they pass, into a temp file beside `path` (float32, 1/3 of
    the page at most), so host memory stays one band plus one row of block sums per level.
    Atomic like write_geotiff: on any error (also one raised by `rows`) the temp files are removed and
    a previous `path` is intact."""
    h, w = shape
    fill = None if nodata is None or math.isnan(nodata) else np.float32(nodata)
    factors = overview_factors(shape) if overviews else []
    sizes = [(-(-h // f), -(-w // f)) for f in factors]
    spill = temp_path(path) if factors else None
    store = np.memmap(spill, np.float32, "w+", shape=(sum(a * b for a, b in sizes),)) if factors else None
    levels, offset = [], 0
    for f, (a, b) in zip(factors, sizes):
        levels.append(_Overview(f, shape, store[offset:offset + a * b].reshape(a, b)))
        offset += a * b

    def consume(band):
        for level in levels:
            level.add(band)

    def bands_of(level):
        for r in range(0, len(level.out), tile):
            yield level.out[r:r + tile]

    def pages():
        yield dict(data=_tiles(rows, shape, tile, fill, consume), shape=(h, w), dtype=np.float32, tile=(tile, tile),
                   extratags=_extratags(geo, None if band_name is None else [band_name], nodata))
        for level in levels:
            yield dict(data=_tiles(bands_of(level), level.out.shape, tile, fill), shape=level.out.shape,
                       dtype=np.float32, tile=(tile, tile), subfiletype=1, extratags=_extratags(None, None, nodata))

    try:
        _atomic_imwrite(path, pages(), bigtiff=4.0 * h * w * 4 / 3 > 3.9e9, spill=spill)
    finally:
        if spill and os.path.exists(spill):
            os.remove(spill)


def check_writable(path):
    """DataError unless a file can be created at `path` (its folder exists and is writable), checked
    before a long computation rather than after it."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(f"{path}: output folder {folder} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise DataError(f"{path}: output folder {folder} is not writable")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; give an output file name")


# --------------------------------------------------------------------------- grids


def geokeys(geo):
    """GeoKeyDirectory as {key id: value} (ints, tuples of doubles, or ASCII strings)."""
    if TAG_GEOKEYS not in geo:
        return {}
    d = list(geo[TAG_GEOKEYS][2])
    doubles = tuple(geo[TAG_GEO_DOUBLES][2]) if TAG_GEO_DOUBLES in geo else ()
    ascii_ = geo[TAG_GEO_ASCII][2] if TAG_GEO_ASCII in geo else ""
    keys = {}
    for n in range(d[3]):
        key, loc, count, value = d[4 + 4 * n:8 + 4 * n]
        if loc == TAG_GEO_DOUBLES:
            keys[key] = doubles[value:value + count]
        elif loc == TAG_GEO_ASCII:
            keys[key] = ascii_[value:value + count].rstrip("|\x00")
        else:
            keys[key] = value
    return keys


def pixel_is_point(geo):
    """True when the GeoKeys say GTRasterType = PixelIsPoint (the tiepoint is a pixel centre)."""
    return geokeys(geo).get(GEOKEY_RASTER_TYPE) == RASTER_PIXEL_IS_POINT


def crs_of(geo):
    """What identifies the CRS: (model type, geographic, projected) EPSG codes; all non-citation
    keys when the CRS is user-defined (32767). None without GeoKeys."""
    keys = geokeys(geo)
    if not keys:
        return None
    crs = tuple(keys.get(k) for k in (GEOKEY_MODEL_TYPE, GEOKEY_GEOGRAPHIC, GEOKEY_PROJECTED))
    if USER_DEFINED in crs:
        crs = tuple(sorted((k, v) for k, v in keys.items() if k not in CITATION_KEYS + (GEOKEY_RASTER_TYPE,)))
    return crs


def geo_transform(geo):
    """Affine (x0, dx, rx, y0, ry, dy) of the grid as stored (pixel corner for PixelIsArea, pixel
    centre for PixelIsPoint), or None without georeferencing."""
    if TAG_TRANSFORM in geo:
        m = geo[TAG_TRANSFORM][2]
        return (m[3], m[0], m[1], m[7], m[4], m[5])
    if TAG_PIXEL_SCALE in geo and TAG_TIEPOINT in geo:
        sx, sy = geo[TAG_PIXEL_SCALE][2][:2]
        i, j, _, x, y = geo[TAG_TIEPOINT][2][:5]
        return (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
    return None


def corner_transform(geo):
    """Affine (x0, dx, rx, y0, ry, dy) of pixel corners, whatever the raster type. None without geo."""
    t = geo_transform(geo) if geo else None
    if t is not None and pixel_is_point(geo):
        x0, dx, rx, y0, ry, dy = t
        t = (x0 - 0.5 * (dx + rx), dx, rx, y0 - 0.5 * (ry + dy), ry, dy)
    return t


def geo_window(geo, row, col, factor=1):
    """Georeferencing of a raster derived from `geo`: cut at (row, col) of the source grid and
    resampled by `factor` (> 1: finer pixels, e.g. a downscaled output at `scale`; < 1: coarser, e.g.
    an LR tile). Pixel corners stay where they are; the raster type is kept, so for PixelIsPoint the
    origin moves to the centre of the new pixel (0, 0). CRS tags are copied."""
    out = dict(geo)
    t = geo_transform(geo)
    if t is None:
        return out
    x0, dx, rx, y0, ry, dy = t
    x0, y0 = x0 + col * dx + row * rx, y0 + col * ry + row * dy
    if pixel_is_point(geo):  # from the source pixel's centre to the new one's
        x0 += 0.5 * (1 / factor - 1) * (dx + rx)
        y0 += 0.5 * (1 / factor - 1) * (ry + dy)
    if TAG_TRANSFORM in geo:
        m = list(geo[TAG_TRANSFORM][2])
        m[0], m[1], m[4], m[5], m[3], m[7] = dx / factor, rx / factor, ry / factor, dy / factor, x0, y0
        out[TAG_TRANSFORM] = ("d", 16, tuple(m))
    else:
        sz = geo[TAG_PIXEL_SCALE][2][2]
        z, k = geo[TAG_TIEPOINT][2][5], geo[TAG_TIEPOINT][2][2]
        out[TAG_PIXEL_SCALE] = ("d", 3, (dx / factor, -dy / factor, sz))
        out[TAG_TIEPOINT] = ("d", 6, (0.0, 0.0, k, x0, y0, z))
    return out


def make_geo(x0, y0, pixel_size, epsg=32647, point=False):
    """Georeferencing of a north-up grid in a projected EPSG CRS (metres), tiepoint at (x0, y0):
    the corner of pixel (0, 0), or its centre with point=True (PixelIsPoint)."""
    keys = (1, 1, 0, 4, GEOKEY_MODEL_TYPE, 0, 1, 1, GEOKEY_RASTER_TYPE, 0, 1, 2 if point else 1,
            GEOKEY_PROJECTED, 0, 1, epsg, 3076, 0, 1, 9001)
    return {TAG_PIXEL_SCALE: ("d", 3, (float(pixel_size), float(pixel_size), 0.0)),
            TAG_TIEPOINT: ("d", 6, (0.0, 0.0, 0.0, float(x0), float(y0), 0.0)),
            TAG_GEOKEYS: ("H", len(keys), keys)}


def describe_grid(path, shape, geo):
    """One line: size, pixel size, corner, extent and CRS of a raster."""
    h, w = shape
    t = corner_transform(geo)
    if t is None:
        return f"{path}: {w} x {h} px, not georeferenced"
    x0, dx, rx, y0, ry, dy = t
    xs = [x0, x0 + w * dx, x0 + h * rx, x0 + w * dx + h * rx]
    ys = [y0, y0 + w * ry, y0 + h * dy, y0 + w * ry + h * dy]
    crs = crs_of(geo)
    crs = ("EPSG:" + str(crs[2] or crs[1])) if crs and len(crs) == 3 and (crs[1] or crs[2]) else crs
    return (f"{path}: {w} x {h} px of {math.hypot(dx, ry):g} x {math.hypot(rx, dy):g}, corner ({x0:.3f}, {y0:.3f}), "
            f"x {min(xs):.3f}..{max(xs):.3f}, y {min(ys):.3f}..{max(ys):.3f}, CRS {crs}")


def check_grids(lst_path, lst_shape, lst_geo, gui_path, gui_shape, gui_geo, scale=1, labels=("LST", "guidance")):
    """The one co-registration rule: DataError stating both grids unless the guidance grid is the LST grid
    refined by `scale` (1: the same grid): pixel size / scale (to 1e-4), same CRS, the same first and last
    pixel corners (to 1e-3 of a guidance pixel), shape x scale. Without georeferencing on either side only
    the shapes are checked (warning on stderr). Grids that are not aligned this way are a footprint
    problem (footprint.py), not a reason to shift one raster. labels: what the two rasters are (the message
    is one line)."""
    def fail(reason):
        raise DataError(f"grids disagree: {reason} (scale {scale}); {labels[0]} "
                        f"{describe_grid(lst_path, lst_shape, lst_geo)}; {labels[1]} "
                        f"{describe_grid(gui_path, gui_shape, gui_geo)}; resample both onto one grid first")

    lt, gt = corner_transform(lst_geo), corner_transform(gui_geo)
    if lt is None or gt is None:
        which = " and ".join(p for p, t in ((lst_path, lt), (gui_path, gt)) if t is None)
        print(f"warning: {which}: no georeferencing; grids checked by shape only", file=sys.stderr)
    else:
        X0, DX, RX, Y0, RY, DY = lt
        x0, dx, rx, y0, ry, dy = gt
        tol = 1e-4 * math.hypot(DX, RX, RY, DY)
        if any(abs(a / scale - b) > tol for a, b in ((DX, dx), (RX, rx), (RY, ry), (DY, dy))):
            fail("guidance pixel size is not the LST pixel size / scale" if scale > 1 else "pixel sizes differ")
        if crs_of(lst_geo) != crs_of(gui_geo):
            fail(f"different CRS (GeoKeys {crs_of(lst_geo)} vs {crs_of(gui_geo)})")
        (h, w), (gh, gw) = lst_shape, gui_shape
        tol_x, tol_y = 1e-3 * (abs(dx) + abs(rx)), 1e-3 * (abs(ry) + abs(dy))
        if abs(X0 - x0) > tol_x or abs(Y0 - y0) > tol_y:
            fail(f"extents differ: the first pixel corners are ({X0 - x0:.3f}, {Y0 - y0:.3f}) map units apart")
        if tuple(gui_shape) == (h * scale, w * scale):
            for (c, r), (gc, gr) in (((w, h), (gw, gh)),):  # the last corner: pixel sizes that drift over the scene
                if (abs(X0 + c * DX + r * RX - (x0 + gc * dx + gr * rx)) > tol_x
                        or abs(Y0 + c * RY + r * DY - (y0 + gc * ry + gr * dy)) > tol_y):
                    fail("extents differ at the last pixel corner")
    if tuple(gui_shape) != (lst_shape[0] * scale, lst_shape[1] * scale):
        fail(f"guidance shape {tuple(gui_shape)} is not LST shape x scale {(lst_shape[0] * scale, lst_shape[1] * scale)}"
             if scale > 1 else f"guidance shape {tuple(gui_shape)} differs from the LST's {tuple(lst_shape)}")


# --------------------------------------------------------------------------- CRS definitions
# The GeoKeys of a CRS as pyproj reads it: an EPSG code, or for a user-defined projection (MODIS and
# VIIRS sinusoidal exports) a PROJ string built from ProjCoordTransGeoKey, its parameter keys and the
# ellipsoid keys. Key ids and codes are those of the GeoTIFF 1.0 specification.

GEOKEY_PROJ_COORD_TRANS, GEOKEY_PROJ_LINEAR_UNITS, GEOKEY_ANGULAR_UNITS = 3075, 3076, 2054
GEOKEY_ELLIPSOID, GEOKEY_SEMI_MAJOR, GEOKEY_SEMI_MINOR, GEOKEY_INV_FLATTENING = 2056, 2057, 2058, 2059
METRE, DEGREE = 9001, 9102
MODEL_PROJECTED, MODEL_GEOGRAPHIC = 1, 2

# PROJ parameter -> the GeoKeys that may hold it, first found wins (writers differ: GDAL stores the
# sinusoidal's central meridian as ProjCenterLongGeoKey, others as ProjNatOriginLongGeoKey)
PROJ_PARAMETER_KEYS = {"lat_0": (3081, 3085, 3089), "lon_0": (3080, 3084, 3088), "lat_1": (3078,), "lat_2": (3079,),
                       "k_0": (3092, 3093), "x_0": (3082, 3086, 3090), "y_0": (3083, 3087, 3091)}
# ProjCoordTransGeoKey -> (PROJ projection, its parameters); any other is refused
PROJECTIONS = {1: ("tmerc", ("lat_0", "lon_0", "k_0", "x_0", "y_0")),   # CT_TransverseMercator
               8: ("lcc", ("lat_1", "lat_2", "lat_0", "lon_0", "x_0", "y_0")),  # CT_LambertConfConic_2SP
               10: ("laea", ("lat_0", "lon_0", "x_0", "y_0")),  # CT_LambertAzimEqualArea
               11: ("aea", ("lat_1", "lat_2", "lat_0", "lon_0", "x_0", "y_0")),  # CT_AlbersEqualArea
               24: ("sinu", ("lon_0", "x_0", "y_0"))}  # CT_Sinusoidal (MODIS, VIIRS)
# a geographic CRS, ellipsoid or datum given by EPSG code under a user-defined projection
DATUMS = {4326: "+datum=WGS84", 4269: "+datum=NAD83", 4267: "+datum=NAD27", 4258: "+ellps=GRS80",
          6326: "+datum=WGS84", 6269: "+datum=NAD83", 6267: "+datum=NAD27", 6258: "+ellps=GRS80",
          7030: "+ellps=WGS84", 7019: "+ellps=GRS80", 7008: "+ellps=clrk66"}

# GeoKeys of two CRSs the tests and docs write: geographic WGS 84 (degrees) and the MODIS / VIIRS
# sinusoidal grid (a sphere of radius 6371007.181 m), as GDAL exports the latter (user-defined)
WGS84_KEYS = {GEOKEY_MODEL_TYPE: MODEL_GEOGRAPHIC, GEOKEY_RASTER_TYPE: 1, GEOKEY_GEOGRAPHIC: 4326,
              GEOKEY_ANGULAR_UNITS: DEGREE}
MODIS_SINUSOIDAL_KEYS = {GEOKEY_MODEL_TYPE: MODEL_PROJECTED, GEOKEY_RASTER_TYPE: 1, GEOKEY_GEOGRAPHIC: USER_DEFINED,
                         2050: USER_DEFINED, GEOKEY_ANGULAR_UNITS: DEGREE, GEOKEY_ELLIPSOID: USER_DEFINED,
                         GEOKEY_SEMI_MAJOR: 6371007.181, GEOKEY_SEMI_MINOR: 6371007.181,
                         GEOKEY_PROJECTED: USER_DEFINED, 3074: USER_DEFINED, GEOKEY_PROJ_COORD_TRANS: 24,
                         GEOKEY_PROJ_LINEAR_UNITS: METRE, 3082: 0.0, 3083: 0.0, 3088: 0.0}
MODIS_PIXEL = 926.625433055833  # metres: the 1 km MODIS sinusoidal grid, 1200 pixels per 10-degree tile


def crs_string(geo, path="GeoTIFF"):
    """The CRS of a raster as pyproj reads it: 'EPSG:<code>' for an EPSG projected or geographic CRS,
    a PROJ string for a user-defined one (e.g. '+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +a=6371007.181
    +b=6371007.181 +units=m +no_defs' for MODIS); None without GeoKeys. DataError naming `path` for a
    user-defined CRS it cannot read (another projection, unit or ellipsoid)."""
    keys = geokeys(geo or {})
    if not keys:
        return None
    model = keys.get(GEOKEY_MODEL_TYPE, MODEL_PROJECTED if GEOKEY_PROJECTED in keys else MODEL_GEOGRAPHIC)
    code = keys.get(GEOKEY_PROJECTED if model == MODEL_PROJECTED else GEOKEY_GEOGRAPHIC)
    if model not in (MODEL_PROJECTED, MODEL_GEOGRAPHIC):
        raise DataError(f"{path}: GTModelTypeGeoKey {model} is neither projected (1) nor geographic (2)")
    if code is not None and code != USER_DEFINED:
        return f"EPSG:{code}"
    if keys.get(GEOKEY_ANGULAR_UNITS, DEGREE) != DEGREE:
        raise DataError(f"{path}: angles in unit code {keys[GEOKEY_ANGULAR_UNITS]} (GeogAngularUnitsGeoKey); only "
                        f"degrees ({DEGREE}) are read: re-export it with an EPSG CRS (gdalwarp -t_srs EPSG:...)")
    earth = _ellipsoid(keys, path)
    if model == MODEL_GEOGRAPHIC:
        return f"+proj=longlat {earth} +no_defs"
    transform = keys.get(GEOKEY_PROJ_COORD_TRANS)
    if transform not in PROJECTIONS:
        raise DataError(f"{path}: user-defined projection ProjCoordTransGeoKey={transform} is not one of the "
                        f"codes read here {sorted(PROJECTIONS)}: re-export it with an EPSG CRS (gdalwarp -t_srs EPSG:...)")
    if keys.get(GEOKEY_PROJ_LINEAR_UNITS, METRE) != METRE:
        raise DataError(f"{path}: user-defined projection in linear unit code {keys[GEOKEY_PROJ_LINEAR_UNITS]}; only "
                        f"metres ({METRE}) are read: re-export it in metres (gdalwarp -t_srs)")
    name, params = PROJECTIONS[transform]
    values = {p: next((_number(keys[k]) for k in PROJ_PARAMETER_KEYS[p] if k in keys), 1.0 if p == "k_0" else 0.0)
              for p in params}
    return " ".join([f"+proj={name}"] + [f"+{p}={v:.12g}" for p, v in values.items()] + [earth, "+units=m +no_defs"])


def _number(value):
    return float(value[0] if isinstance(value, tuple) else value)


def _ellipsoid(keys, path):
    """The PROJ words of a user-defined CRS's earth: semi-axes, or a datum / ellipsoid EPSG code."""
    if GEOKEY_SEMI_MAJOR in keys:
        a = _number(keys[GEOKEY_SEMI_MAJOR])
        if GEOKEY_SEMI_MINOR in keys:
            return f"+a={a:.12g} +b={_number(keys[GEOKEY_SEMI_MINOR]):.12g}"
        rf = _number(keys.get(GEOKEY_INV_FLATTENING, 0.0))
        return f"+a={a:.12g} +rf={rf:.12g}" if rf else f"+a={a:.12g} +b={a:.12g}"
    for key in (GEOKEY_GEOGRAPHIC, 2050, GEOKEY_ELLIPSOID):  # geographic CRS, datum, ellipsoid codes
        if keys.get(key) in DATUMS:
            return DATUMS[keys[key]]
    codes = {k: keys[k] for k in (GEOKEY_GEOGRAPHIC, 2050, GEOKEY_ELLIPSOID) if k in keys}
    raise DataError(f"{path}: user-defined CRS on an earth this reader does not know (GeoKeys {codes}, no "
                    f"GeogSemiMajorAxisGeoKey): re-export it with an EPSG CRS (gdalwarp -t_srs EPSG:...)")


def make_geo_keys(x0, y0, pixel_size, keys, point=False):
    """Georeferencing of a north-up grid in any CRS given as GeoKeys {key id: int, or float for a
    double}, e.g. WGS84_KEYS (pixel_size in degrees) or MODIS_SINUSOIDAL_KEYS (metres); the tiepoint
    (x0, y0) is the corner of pixel (0, 0), or its centre with point=True. pixel_size: one number, or
    (x size, y size)."""
    keys = {**keys, GEOKEY_RASTER_TYPE: RASTER_PIXEL_IS_POINT if point else 1}
    sx, sy = (pixel_size, pixel_size) if np.isscalar(pixel_size) else pixel_size
    directory, doubles = [1, 1, 0, len(keys)], []
    for key, value in sorted(keys.items()):
        if isinstance(value, float):
            directory += [key, TAG_GEO_DOUBLES, 1, len(doubles)]
            doubles.append(value)
        else:
            directory += [key, 0, 1, int(value)]
    geo = {TAG_PIXEL_SCALE: ("d", 3, (float(sx), float(sy), 0.0)),
           TAG_TIEPOINT: ("d", 6, (0.0, 0.0, 0.0, float(x0), float(y0), 0.0)),
           TAG_GEOKEYS: ("H", len(directory), tuple(directory))}
    if doubles:
        geo[TAG_GEO_DOUBLES] = ("d", len(doubles), tuple(doubles))
    return geo


# --------------------------------------------------------------------------- windows and resampling

# Fill values that elevation rasters carry without a GDAL_NODATA tag: the SRTM / HGT void (-32768), the common
# -9999, and the lowest float32 (-3.4028235e38, written by several GIS tools). resample_to_grid(voids=DEM_VOIDS)
# reads them as no-data only in a file that declares no no-data value of its own.
DEM_VOIDS = (-32768.0, -9999.0, -3.4028235e38)


def bbox_window(bbox, shape, geo, path):
    """Map box (xmin, ymin, xmax, ymax) in the raster's CRS -> pixel window (row0, col0, rows, cols) of the
    raster (shape (H, W), geo): every pixel the box touches, clipped to the raster. DataError for an empty
    box or one that misses the raster, or a grid that is not georeferenced or not north-up."""
    t = corner_transform(geo)
    if t is None:
        raise DataError(f"{path}: not georeferenced: a map box cannot be placed on it; give a pixel window")
    x0, dx, rx, y0, ry, dy = t
    if rx or ry:
        raise DataError(f"{path}: rotated grid: a map box needs a north-up grid; give a pixel window")
    xmin, ymin, xmax, ymax = bbox
    if xmin >= xmax or ymin >= ymax:
        raise DataError(f"bbox {tuple(bbox)}: need XMIN < XMAX and YMIN < YMAX")
    cols = sorted(((xmin - x0) / dx, (xmax - x0) / dx))
    rows = sorted(((ymax - y0) / dy, (ymin - y0) / dy))
    c0, c1 = max(0, math.floor(cols[0])), min(shape[1], math.ceil(cols[1]))
    r0, r1 = max(0, math.floor(rows[0])), min(shape[0], math.ceil(rows[1]))
    if c0 >= c1 or r0 >= r1:
        raise DataError(f"bbox {tuple(bbox)} does not overlap the raster: {describe_grid(path, shape, geo)}")
    return r0, c0, r1 - r0, c1 - c0


def _linear_weights(centres, n):
    """Source pixel coordinates (0 = centre of the first pixel) of the target centres along one axis of n source
    pixels -> (i0, i1, w1, inside) for linear interpolation v = v[i0] * (1 - w1) + v[i1] * w1. A point within half
    a pixel beyond the outer centres takes the edge value; `inside` is False further out."""
    inside = (centres >= -0.5) & (centres <= n - 0.5)
    c = np.clip(centres, 0, n - 1)
    i0 = np.clip(np.floor(c).astype(np.int64), 0, max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (c - i0).astype(np.float32), inside


def _lerp(a, b, w):
    """a * (1 - w) + b * w, where a neighbour of weight 0 does not count (its NaN does not spread)."""
    with np.errstate(invalid="ignore"):
        return np.where(w == 0, a, np.where(w == 1, b, a * (1 - w) + b * w))


def resample_to_grid(path, shape, geo, voids=()):
    """A one-band GeoTIFF brought onto the grid (shape (H, W), geo) by bilinear interpolation at the target
    pixel centres -> ((H, W) float32 in the file's units, how: 'same grid' or 'bilinear from DX x DY pixels').

    Same CRS required (DataError naming both otherwise: reproject first), north-up grids only. NaN outside
    the raster (beyond half a source pixel from its outer centres) and wherever a source pixel with a
    weight > 0 is no-data. voids: values read as no-data when the file has no GDAL_NODATA tag (DEM_VOIDS
    for elevation). The whole file is read once."""
    array, info = read_geotiff(path)
    if len(array) != 1:
        raise DataError(f"{path}: {len(array)} bands, expected 1")
    if info["nodata"] is None and voids:
        array[np.isin(array, np.float32(voids))] = np.nan
    if crs_of(info["geo"]) != crs_of(geo):
        raise DataError(f"{path}: its CRS (GeoKeys {crs_of(info['geo'])}) is not the target grid's "
                        f"({crs_of(geo)}): reproject it onto that CRS first (gdalwarp -t_srs EPSG:...)")
    src, dst = corner_transform(info["geo"]), corner_transform(geo)
    if src is None or dst is None:
        raise DataError(f"{path}: it or the target grid is not georeferenced: cannot place one on the other")
    if src[2] or src[4] or dst[2] or dst[4]:
        raise DataError(f"{path}: rotated grid: only north-up grids are resampled")
    h, w = shape
    cols = (dst[0] + (np.arange(w) + 0.5) * dst[1] - src[0]) / src[1] - 0.5
    rows = (dst[3] + (np.arange(h) + 0.5) * dst[5] - src[3]) / src[5] - 0.5
    c0, c1, wc, inside_c = _linear_weights(cols, array.shape[2])
    r0, r1, wr, inside_r = _linear_weights(rows, array.shape[1])
    band = array[0]
    top = _lerp(band[r0][:, c0], band[r0][:, c1], wc[None, :])
    bottom = _lerp(band[r1][:, c0], band[r1][:, c1], wc[None, :])
    out = _lerp(top, bottom, wr[:, None])
    out[~(inside_r[:, None] & inside_c[None, :])] = np.nan
    try:
        check_grids(path, array.shape[1:], info["geo"], "the target grid", shape, geo)
        how = "same grid"
    except DataError:
        how = f"bilinear from {abs(src[1]):g} x {abs(src[5]):g} pixels"
    return out.astype(np.float32), how
