"""GrokLST data: raster I/O (GeoTIFF and .mat), the dataset, normalisation.

Layout of a GrokLST-style dataset (the original's, with .mat or .tif files):

    <root>/30m/lst/<name>.{mat,tif}        HR LST, the target, (H, W) Kelvin
    <root>/30m/guidance/<name>.{mat,tif}   HR guidance, 10 bands (BANDS), (C, H, W)
    <root>/{60m,120m,240m}/lst/<name>.*    LR LST for scale 2/4/8, (H/s, W/s) Kelvin
    <root>/split/{train,val,trainval,test}.txt

A split file lists one sample per line: a file name (stem) shared by all folders, or, as in
the original release, an integer index into the sorted 30m/lst listing. Samples are always
paired by name: the same stem must exist in every folder used.

Units: LST in Kelvin, DEM in metres, reflectances unitless (0..1), indices in [-1, 1].
No-data (NaN, or the GeoTIFF's GDAL_NODATA value) is read as NaN and masked; it never
reaches the loss or the metrics as a number.
"""
import hashlib
import math
import os
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import tifffile
import torch

BANDS = ("dem", "deepblue", "blue", "green", "red", "vre", "nir", "ndmvi", "ndvi", "ndwi")
LR_FOLDERS = {2: "60m", 4: "120m", 8: "240m"}
RASTER_EXTENSIONS = (".tif", ".tiff", ".mat")
LST_FIELD = "data"  # variable name of LST arrays in the original .mat files

# GeoTIFF tags that carry georeferencing (copied to outputs; never copy all tags).
TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORM = 33550, 33922, 34264
TAG_GEOKEYS, TAG_GEO_DOUBLES, TAG_GEO_ASCII = 34735, 34736, 34737
TAG_GDAL_METADATA, TAG_GDAL_NODATA = 42112, 42113
GEO_TAGS = (TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORM, TAG_GEOKEYS, TAG_GEO_DOUBLES, TAG_GEO_ASCII)


class DataError(ValueError):
    """Bad input data; the message names the file (and band or key) at fault."""


# --------------------------------------------------------------------------- GeoTIFF


def read_geotiff(path):
    """Read a GeoTIFF. Returns (array float32 (C, H, W) with no-data as NaN, info dict).

    info: 'bands' (names from GDAL band descriptions, or None), 'nodata' (float or None),
    'geo' {tag code: (dtype, count, value)} for the georeferencing tags present.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            array = page.asarray()
            tags = page.tags
            geo = {c: (tags[c].dtype, tags[c].count, tags[c].value) for c in GEO_TAGS if c in tags}
            nodata = None
            if TAG_GDAL_NODATA in tags:  # page.nodata is 0 when the tag is absent: check the tag
                nodata = float(str(tags[TAG_GDAL_NODATA].value).strip())
            meta = tags[TAG_GDAL_METADATA].value if TAG_GDAL_METADATA in tags else None
            planar = page.planarconfig
            samples = page.samplesperpixel
    except ValueError as e:
        if "imagecodecs" in str(e):
            raise DataError(f"{path}: compressed with a codec that needs the 'imagecodecs' package "
                            f"(pip install imagecodecs, or re-save with gdal_translate -co COMPRESS=DEFLATE)") from e
        raise DataError(f"{path}: unreadable GeoTIFF ({e})") from e
    except (OSError, tifffile.TiffFileError) as e:
        raise DataError(f"{path}: unreadable GeoTIFF ({e})") from e
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and samples > 1 and planar == 1:  # contig: (H, W, C)
        array = np.moveaxis(array, -1, 0)
    elif array.ndim != 3:
        raise DataError(f"{path}: expected a 2-D or 3-D raster, got shape {array.shape}")
    array = array.astype(np.float32, copy=True)
    if nodata is not None and not math.isnan(nodata):
        array[array == np.float32(nodata)] = np.nan
    return array, {"bands": _band_names(meta, len(array)), "nodata": nodata, "geo": geo}


def _band_names(gdal_metadata, count):
    """Band names from GDAL_METADATA <Item name="DESCRIPTION" sample="i" role="description">."""
    if not gdal_metadata:
        return None
    try:
        root = ET.fromstring(gdal_metadata)
    except ET.ParseError:
        return None
    names = {}
    for item in root.iter("Item"):
        if item.get("role") == "description" and item.get("sample") is not None:
            names[int(item.get("sample"))] = (item.text or "").strip()
    if sorted(names) != list(range(count)):
        return None
    return [names[i] for i in range(count)]


def write_geotiff(path, array, geo=None, band_names=None, nodata=float("nan"), tile=None):
    """Write float32 (H, W) or (C, H, W) as a zlib-compressed GeoTIFF, atomically.

    geo: {tag code: (dtype, count, value)} as returned by read_geotiff / geo_* helpers.
    band_names are stored as GDAL band descriptions; nodata as the GDAL_NODATA tag.
    """
    array = np.asarray(array, dtype=np.float32)
    extratags = [(code, dtype, count, value, True) for code, (dtype, count, value) in sorted((geo or {}).items())]
    if band_names is not None:
        items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>'
                        for i, n in enumerate(band_names))
        extratags.append((TAG_GDAL_METADATA, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True))
    if nodata is not None:
        extratags.append((TAG_GDAL_NODATA, "s", 0, "nan" if math.isnan(nodata) else repr(float(nodata)), True))
        if not math.isnan(nodata):
            array = np.where(np.isnan(array), np.float32(nodata), array)
    kwargs = {"planarconfig": "separate"} if array.ndim == 3 else {}
    tmp = f"{path}.tmp{os.getpid()}"
    tifffile.imwrite(tmp, array, photometric="minisblack", compression="zlib", extratags=extratags,
                     tile=tile, bigtiff=array.nbytes > 3.9e9, metadata=None, **kwargs)
    os.replace(tmp, path)


def geo_transform(geo):
    """Affine (x0, dx, rx, y0, ry, dy) of the pixel-corner grid from geo tags, or None.

    x = x0 + col*dx + row*rx, y = y0 + col*ry + row*dy (dy < 0 for north-up rasters).
    """
    if TAG_TRANSFORM in geo:
        m = geo[TAG_TRANSFORM][2]
        return (m[3], m[0], m[1], m[7], m[4], m[5])
    if TAG_PIXEL_SCALE in geo and TAG_TIEPOINT in geo:
        sx, sy = geo[TAG_PIXEL_SCALE][2][:2]
        i, j, _, x, y = geo[TAG_TIEPOINT][2][:5]
        return (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
    return None


def geo_window(geo, row, col, factor=1):
    """Georeferencing of a raster derived from `geo`: cropped at (row, col) in the source grid
    and resampled by `factor` (> 1 = finer pixels, e.g. the scale of a downscaled output;
    < 1 = coarser). Pixel corners are kept (PixelIsArea)."""
    out = dict(geo)
    if TAG_TRANSFORM in geo:
        m = list(geo[TAG_TRANSFORM][2])
        x0 = m[3] + col * m[0] + row * m[1]
        y0 = m[7] + col * m[4] + row * m[5]
        m[0], m[1], m[4], m[5], m[3], m[7] = m[0] / factor, m[1] / factor, m[4] / factor, m[5] / factor, x0, y0
        out[TAG_TRANSFORM] = ("d", 16, tuple(m))
    elif TAG_PIXEL_SCALE in geo and TAG_TIEPOINT in geo:
        sx, sy, sz = geo[TAG_PIXEL_SCALE][2][:3]
        i, j, k, x, y, z = geo[TAG_TIEPOINT][2][:6]
        x0, y0 = x + (col - i) * sx, y - (row - j) * sy
        out[TAG_PIXEL_SCALE] = ("d", 3, (sx / factor, sy / factor, sz))
        out[TAG_TIEPOINT] = ("d", 6, (0.0, 0.0, k, x0, y0, z))
    return out


def make_geo(x0, y0, pixel_size, epsg=32647):
    """Georeferencing of a north-up grid in a projected EPSG CRS (metres), corner at (x0, y0)."""
    keys = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, epsg, 3076, 0, 1, 9001)
    return {TAG_PIXEL_SCALE: ("d", 3, (float(pixel_size), float(pixel_size), 0.0)),
            TAG_TIEPOINT: ("d", 6, (0.0, 0.0, 0.0, float(x0), float(y0), 0.0)),
            TAG_GEOKEYS: ("H", len(keys), keys)}


# --------------------------------------------------------------------------- rasters


def read_mat(path, fields):
    """Read 2-D arrays `fields` from a MATLAB (v5-v7.2) .mat file -> float32 (C, H, W)."""
    try:
        import scipy.io
    except ImportError as e:
        raise DataError(f"{path}: reading .mat files needs scipy (pip install scipy)") from e
    try:
        mat = scipy.io.loadmat(path, variable_names=list(fields))
    except Exception as e:  # scipy raises several types for corrupt / v7.3 files
        raise DataError(f"{path}: unreadable .mat file ({type(e).__name__}: {e})") from e
    missing = [f for f in fields if f not in mat]
    if missing:
        raise DataError(f"{path}: no variable {missing[0]!r} (needs {list(fields)})")
    arrays = []
    for f in fields:
        a = np.asarray(mat[f], dtype=np.float32)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 2:
            raise DataError(f"{path}: variable {f!r} has shape {a.shape}, expected 2-D")
        arrays.append(a)
    if len({a.shape for a in arrays}) > 1:
        raise DataError(f"{path}: variables {list(fields)} differ in shape")
    return np.stack(arrays)


def cached(path, fields, read, cache_dir):
    """read() through a memory-mapped .npy copy in cache_dir (None: no cache). The copy's name
    holds the source's size and mtime, so a changed source is re-read; writes are atomic."""
    if cache_dir is None:
        return read()
    st = os.stat(path)
    source = hashlib.sha1(f"{os.path.abspath(path)}|{'-'.join(fields)}".encode()).hexdigest()[:16]
    prefix = f"{os.path.splitext(os.path.basename(path))[0]}.{source}."
    key = f"{prefix}{st.st_size}.{st.st_mtime_ns}.npy"
    cache = os.path.join(cache_dir, key)
    if os.path.exists(cache):
        return np.load(cache, mmap_mode="r")
    array = read()
    os.makedirs(cache_dir, exist_ok=True)
    for old in os.listdir(cache_dir):  # stale copies of the same source and fields
        if old.startswith(prefix) and old != key:
            os.remove(os.path.join(cache_dir, old))
    tmp = f"{cache}.tmp{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, cache)
    return array


def read_lst(path, cache_dir=None):
    """One LST raster -> float32 (1, H, W) Kelvin, no-data as NaN."""
    return cached(path, ["lst"], lambda: _read_lst(path), cache_dir)


def _read_lst(path):
    if path.endswith(".mat"):
        return read_mat(path, [LST_FIELD])
    array, _ = read_geotiff(path)
    if len(array) != 1:
        raise DataError(f"{path}: LST raster has {len(array)} bands, expected 1")
    return array


def read_guidance(path, bands, cache_dir=None):
    """Guidance raster -> float32 (len(bands), H, W); see _read_guidance."""
    return cached(path, list(bands), lambda: _read_guidance(path, bands), cache_dir)


def _read_guidance(path, bands):
    """Guidance raster -> float32 (len(bands), H, W), bands picked by name in the given order.

    .mat: one variable per band. GeoTIFF: one multi-band file whose band descriptions name the
    bands; a file without names is accepted only if it has exactly the GrokLST bands (BANDS order).
    """
    if path.endswith(".mat"):
        return read_mat(path, bands)
    array, info = read_geotiff(path)
    names = info["bands"]
    if names is None:
        if len(array) != len(BANDS):
            raise DataError(f"{path}: {len(array)} unnamed bands; expected the {len(BANDS)} GrokLST "
                            f"bands {list(BANDS)} or band descriptions naming them")
        names = list(BANDS)
    missing = [b for b in bands if b not in names]
    if missing:
        raise DataError(f"{path}: no band {missing[0]!r} (file has {names})")
    return array[[names.index(b) for b in bands]]


def find_raster(folder, stem):
    """Path of `folder/stem.{tif,tiff,mat}`; DataError if none exists."""
    for ext in RASTER_EXTENSIONS:
        path = os.path.join(folder, stem + ext)
        if os.path.exists(path):
            return path
    raise DataError(f"{os.path.join(folder, stem)}.{{tif,mat}}: file not found")


def list_stems(folder):
    return sorted(os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(RASTER_EXTENSIONS))


def read_split(root, split):
    """Sample names of `<root>/split/<split>.txt` (names, or integer indices into 30m/lst)."""
    path = os.path.join(root, "split", f"{split}.txt")
    if not os.path.exists(path):
        raise DataError(f"{path}: split file not found")
    with open(path) as f:
        entries = [line.split()[0] for line in f if line.strip()]
    hr_folder = os.path.join(root, "30m", "lst")
    if not os.path.isdir(hr_folder):
        raise DataError(f"{hr_folder}: folder not found")
    stems = list_stems(hr_folder)
    known = set(stems)
    names = []
    for i, entry in enumerate(entries):
        if entry in known:
            names.append(entry)
        elif entry.isdigit() and int(entry) < len(stems):  # the original release's index format
            names.append(stems[int(entry)])
        else:
            raise DataError(f"{path}, line {i + 1}: {entry!r} is neither a file in {hr_folder} "
                            f"nor an index below {len(stems)}")
    return names


# --------------------------------------------------------------------------- dataset


class GrokLSTDataset(torch.utils.data.Dataset):
    """Samples of a GrokLST-layout folder.

    Each item is a dict of float32 tensors in physical units:
        lr_lst      (1, h, w)   Kelvin, h = H / scale
        hr_lst      (1, H, W)   Kelvin (target)
        hr_guidance (C, H, W)   bands in `guidance_bands` order (only when C > 0)
        mask        (1, H, W)   bool, True where hr_lst is finite
        name        str, index  int
    `hr_crop` (training only) takes a random HR crop aligned to the LR grid; the crop is a
    pure function of (seed, epoch, index), so resumed runs see identical crops.
    """

    def __init__(self, root, split, scale, guidance_bands=(), hr_crop=None, seed=0, cache=False):
        if scale not in LR_FOLDERS:
            raise DataError(f"scale {scale} not supported (GrokLST has {sorted(LR_FOLDERS)})")
        if not os.path.isdir(root):
            raise DataError(f"{root}: dataset folder not found")
        self.root, self.scale, self.bands = root, scale, list(guidance_bands)
        self.hr_crop, self.seed, self.epoch = hr_crop, seed, 0
        # cache: memory-mapped float32 .npy copies under <root>/.cache, rebuilt when a source changes
        self.cache_dir = os.path.join(root, ".cache") if cache else None
        if hr_crop is not None and hr_crop % scale:
            raise DataError(f"data.hr_crop={hr_crop} is not a multiple of scale {scale}")
        self.names = read_split(root, split)
        self.paths = []
        for name in self.names:  # fail early, naming the first missing file
            p = {"lr_lst": find_raster(os.path.join(root, LR_FOLDERS[scale], "lst"), name),
                 "hr_lst": find_raster(os.path.join(root, "30m", "lst"), name)}
            if self.bands:
                p["hr_guidance"] = find_raster(os.path.join(root, "30m", "guidance"), name)
            self.paths.append(p)

    def __len__(self):
        return len(self.names)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, index):
        p = self.paths[index]
        lr, hr = read_lst(p["lr_lst"], self.cache_dir), read_lst(p["hr_lst"], self.cache_dir)
        s = self.scale
        if hr.shape[1] != lr.shape[1] * s or hr.shape[2] != lr.shape[2] * s:
            raise DataError(f"{p['lr_lst']}: LR shape {lr.shape[1:]} x scale {s} does not match "
                            f"HR {p['hr_lst']} shape {hr.shape[1:]}")
        item = {"lr_lst": lr, "hr_lst": hr}
        if self.bands:
            gui = read_guidance(p["hr_guidance"], self.bands, self.cache_dir)
            if gui.shape[1:] != hr.shape[1:]:
                raise DataError(f"{p['hr_guidance']}: guidance shape {gui.shape[1:]} does not match "
                                f"HR LST {p['hr_lst']} shape {hr.shape[1:]}")
            item["hr_guidance"] = gui
        if self.hr_crop is not None:
            item = self._crop(item, index)
        out = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in item.items()}  # copies memmaps
        out["mask"] = torch.isfinite(out["hr_lst"])
        out["name"], out["index"] = self.names[index], index
        return out

    def _crop(self, item, index):
        s, lc = self.scale, self.hr_crop // self.scale
        h, w = item["lr_lst"].shape[1:]
        if lc > h or lc > w:
            raise DataError(f"{self.paths[index]['lr_lst']}: LR size {(h, w)} smaller than crop {lc}")
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
        top = int(torch.randint(0, h - lc + 1, (1,), generator=g))
        left = int(torch.randint(0, w - lc + 1, (1,), generator=g))
        out = {"lr_lst": item["lr_lst"][:, top:top + lc, left:left + lc]}
        for k in ("hr_lst", "hr_guidance"):
            if k in item:
                out[k] = item[k][:, top * s:(top + lc) * s, left * s:(left + lc) * s]
        return out


# --------------------------------------------------------------------------- normalisation


class Normalizer:
    """Per-quantity normalisation: z-score (default), min-max or none.

    Models see normalised inputs and return normalised LST; the toolkit reports Kelvin.
    LST uses one set of statistics (the original's LR-resolution constants) for the LR input
    and for decoding the HR output; each guidance band has its own. After normalising,
    non-finite inputs (no-data) are set to 0, i.e. the mean for z-score.

    norm: the config's `norm` section; bands: guidance band names in channel order.
    """

    def __init__(self, norm, bands=()):
        self.lst = _affine(norm["lst"], "norm.lst")
        method = norm["guidance"]["method"]
        stats = norm["guidance"]["stats"]
        params = []
        for b in bands:
            if b not in stats:
                raise KeyError(f"norm.guidance.stats has no entry for band {b!r} (has {sorted(stats)})")
            params.append(_affine(dict(stats[b], method=method), f"norm.guidance.stats.{b}"))
        self.gui_shift = torch.tensor([p[0] for p in params], dtype=torch.float32).view(-1, 1, 1)
        self.gui_scale = torch.tensor([p[1] for p in params], dtype=torch.float32).view(-1, 1, 1)

    def encode_lst(self, x):
        shift, scale = self.lst
        return torch.nan_to_num((x - shift) / scale, nan=0.0, posinf=0.0, neginf=0.0)

    def decode_lst(self, x):
        shift, scale = self.lst
        return x.float() * scale + shift  # float32 before Kelvin: bf16 has 2 K steps near 300 K

    def encode_guidance(self, g):
        shift, scale = self.gui_shift.to(g.device), self.gui_scale.to(g.device)
        shift, scale = shift[-g.shape[-3]:], scale[-g.shape[-3]:]
        return torch.nan_to_num((g - shift) / scale, nan=0.0, posinf=0.0, neginf=0.0)


def _affine(stats, where):
    """(shift, scale) with normalised = (x - shift) / scale."""
    method = stats["method"]
    needed = {"zscore": ("mean", "std"), "minmax": ("min", "max"), "none": ()}
    if method not in needed:
        raise ValueError(f"{where}.method={method!r}: expected one of {list(needed)}")
    for key in needed[method]:
        if not isinstance(stats.get(key), (int, float)):
            raise ValueError(f"{where}.{key} must be a number for method {method!r}")
    if method == "zscore":
        if stats["std"] <= 0:
            raise ValueError(f"{where}.std must be > 0")
        return float(stats["mean"]), float(stats["std"])
    if method == "minmax":
        if stats["max"] <= stats["min"]:
            raise ValueError(f"{where}: max must exceed min")
        return float(stats["min"]), float(stats["max"] - stats["min"])
    return 0.0, 1.0


def compute_stats(root, split, bands=BANDS):
    """Mean / std / min / max of every LST resolution and guidance band over a split (float64,
    finite pixels only). Returns {'lst': {'30m': {...}, '60m': ...}, 'guidance': {band: {...}}}."""
    names = read_split(root, split)
    acc = {}

    def add(key, a):
        a = a[np.isfinite(a)].astype(np.float64)
        s = acc.setdefault(key, [0, 0.0, 0.0, math.inf, -math.inf])
        if a.size:
            s[0] += a.size
            s[1] += a.sum()
            s[2] += (a * a).sum()
            s[3] = min(s[3], a.min())
            s[4] = max(s[4], a.max())

    folders = ["30m"] + [LR_FOLDERS[s] for s in sorted(LR_FOLDERS)]
    for name in names:
        for res in folders:
            folder = os.path.join(root, res, "lst")
            if os.path.isdir(folder):
                add(("lst", res), read_lst(find_raster(folder, name))[0])
        if bands:
            gui = read_guidance(find_raster(os.path.join(root, "30m", "guidance"), name), list(bands))
            for b, a in zip(bands, gui):
                add(("guidance", b), a)
    out = {"lst": {}, "guidance": {}}
    for (kind, key), (n, s1, s2, lo, hi) in acc.items():
        if n == 0:
            continue
        mean = s1 / n
        std = math.sqrt(max(s2 / n - mean * mean, 0.0) * n / max(n - 1, 1))
        out[kind][key] = {k: round(float(v), 4) for k, v in zip(("mean", "std", "min", "max"), (mean, std, lo, hi))}
    return out



# --------------------------------------------------------------------------- demo data


def _smooth_noise(rng, h, w, length):
    """Gaussian random field (h, w), unit std, correlation length `length` pixels (FFT filter)."""
    noise = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    field = np.fft.irfft2(np.fft.rfft2(noise) * np.exp(-2 * (np.pi * length) ** 2 * (fx ** 2 + fy ** 2)), s=(h, w))
    return (field - field.mean()) / (field.std() + 1e-12)


def synth_scene(h, w, seed=0):
    """A synthetic, physically plausible 30 m scene: guidance bands and LST.

    Returns (lst (H, W) Kelvin, guidance (10, H, W) in BANDS order). Terrain is multi-scale
    (DEM in metres, ~900-5000 m); land cover mixes vegetation, bare/built soil and water with
    reflectances from end-members, and NDVI / NDWI / NDMVI computed from them. LST follows a
    spatially varying lapse rate with elevation, is cooler over vegetation and water, warmer on
    bare/built ground and on sun-facing slopes, plus 0.3 K noise (mean ~282 K, std ~10-15 K).
    """
    rng = np.random.default_rng(seed)
    terrain = 0.6 * _smooth_noise(rng, h, w, 96) + 0.3 * _smooth_noise(rng, h, w, 24) + 0.1 * _smooth_noise(rng, h, w, 6)
    dem = 2700.0 + 2100.0 * np.tanh(terrain / terrain.std() / 1.8)  # metres, ~900-4700
    gy, gx = np.gradient(dem, 30.0)
    illumination = np.clip((-gx * 0.6 + gy * 0.8) / 0.5, -1, 1)  # sun from the south-west, slope-weighted
    wet = _smooth_noise(rng, h, w, 20) - 0.8 * terrain
    water = (wet > 1.6).astype(np.float64)
    veg = 1 / (1 + np.exp(-(1.5 * _smooth_noise(rng, h, w, 12) - 2.0 * ((dem - 2300) / 900) ** 2 + 1.0)))
    veg *= 1 - water
    built = np.clip(_smooth_noise(rng, h, w, 8) - 1.2, 0, 1) * (1 - water) * (1 - veg)
    soil = np.clip(1 - veg - water - built, 0, 1)
    #            deepblue blue  green red   vre   nir
    end = {"veg": (0.05, 0.04, 0.09, 0.05, 0.22, 0.42), "soil": (0.17, 0.16, 0.18, 0.22, 0.26, 0.30),
           "built": (0.20, 0.19, 0.20, 0.21, 0.22, 0.24), "water": (0.08, 0.07, 0.06, 0.04, 0.02, 0.01)}
    frac = {"veg": veg, "soil": soil, "built": built, "water": water}
    refl = [sum(frac[k] * end[k][i] for k in end) + 0.004 * rng.standard_normal((h, w)) for i in range(6)]
    refl = [np.clip(r, 0.001, 1.0) for r in refl]
    deepblue, blue, green, red, vre, nir = refl
    ndvi = (nir - red) / (nir + red)
    ndwi = (green - nir) / (green + nir)
    nir_d, red_d = nir - nir.min(), red - red.min()  # NDMVI: NDVI relative to the darkest pixels
    ndmvi = (nir_d - red_d) / (nir_d + red_d + 0.02)
    lapse = -1.0e-2 + 2.0e-3 * _smooth_noise(rng, h, w, 64)   # K per metre, varies in space
    lst = (283.0 + lapse * (dem - 2700.0) - 12.0 * veg * (1 + 0.3 * _smooth_noise(rng, h, w, 32))
           - 12.0 * water + 10.0 * built + 7.0 * soil + 4.0 * illumination + 0.3 * rng.standard_normal((h, w)))
    guidance = np.stack([dem, deepblue, blue, green, red, vre, nir, ndmvi, ndvi, ndwi]).astype(np.float32)
    return lst.astype(np.float32), guidance


def _blocks(a, s):
    """(..., H, W) -> view (..., H/s, s, W/s, s) of its s x s blocks (H, W multiples of s)."""
    return a.reshape(a.shape[:-2] + (a.shape[-2] // s, s, a.shape[-1] // s, s))


def block_nan_fraction(a, s):
    """Fraction of NaN pixels in each s x s block of (..., H, W) (H, W multiples of s) -> (..., H/s, W/s)."""
    return np.isnan(_blocks(a, s)).mean((-3, -1))


def block_mean(a, s, max_nan_fraction=0.0):
    """Wald's protocol: mean over s x s blocks of (..., H, W) (H, W multiples of s), ignoring NaN;
    a block with more than `max_nan_fraction` NaN pixels becomes NaN."""
    blocks = _blocks(a, s)
    nan_fraction = block_nan_fraction(a, s)
    if nan_fraction.any():
        with warnings.catch_warnings():  # all-NaN blocks: "Mean of empty slice"
            warnings.simplefilter("ignore", RuntimeWarning)
            out = np.nanmean(blocks, (-3, -1))
    else:
        out = blocks.mean((-3, -1))
    out[nan_fraction > max_nan_fraction] = np.nan
    return out.astype(np.float32)


def make_demo(root, n_tiles=48, size=128, seed=0):
    """Write a small synthetic GrokLST-layout dataset (GeoTIFF): one synthetic scene cut into
    n_tiles non-overlapping size x size tiles (30 m), LR LST at 60/120/240 m by block mean,
    a few cloud holes (NaN) in some LST tiles, split 60/10/30 % into train/val/test."""
    if size % 8:
        raise ValueError(f"tile size {size} must be a multiple of 8")
    cols = int(math.ceil(math.sqrt(n_tiles * 4 / 3)))
    rows = int(math.ceil(n_tiles / cols))
    lst, gui = synth_scene(rows * size, cols * size, seed)
    rng = np.random.default_rng(seed + 1)
    for sub in ["30m/lst", "30m/guidance", "60m/lst", "120m/lst", "240m/lst", "split"]:
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    names = []
    for t in range(n_tiles):
        r, c = divmod(t, cols)
        name = f"tile_{t:03d}"
        names.append(name)
        hr = lst[r * size:(r + 1) * size, c * size:(c + 1) * size].copy()
        if rng.random() < 0.15:  # a cloud: an elliptic NaN hole
            yy, xx = np.mgrid[:size, :size]
            cy, cx, ry, rx = rng.uniform(0, size, 2).tolist() + rng.uniform(4, size / 6, 2).tolist()
            hr[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = np.nan
        geo = make_geo(500000.0 + c * size * 30.0, 4300000.0 - r * size * 30.0, 30.0)
        write_geotiff(os.path.join(root, "30m/lst", name + ".tif"), hr, geo)
        g = gui[:, r * size:(r + 1) * size, c * size:(c + 1) * size]
        write_geotiff(os.path.join(root, "30m/guidance", name + ".tif"), g, geo, band_names=BANDS)
        for s, res in LR_FOLDERS.items():
            write_geotiff(os.path.join(root, res, "lst", name + ".tif"), block_mean(hr, s),
                          geo_window(geo, 0, 0, 1 / s))
    order = np.random.default_rng(seed + 2).permutation(n_tiles)
    n_train, n_val = round(0.6 * n_tiles), round(0.1 * n_tiles)
    splits = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    splits["trainval"] = np.concatenate([splits["train"], splits["val"]])
    for split, idx in splits.items():
        with open(os.path.join(root, "split", f"{split}.txt"), "w") as f:
            f.write("".join(f"{names[i]}\n" for i in sorted(idx)))
