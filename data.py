"""GrokLST data: raster I/O (GeoTIFF and .mat), the dataset, normalisation.

Layout of a GrokLST-style dataset (the original's, with .mat or .tif files):

    <root>/30m/lst/<name>.{mat,tif}        HR LST, the target, (H, W) Kelvin
    <root>/30m/guidance/<name>.{mat,tif}   HR guidance, 10 bands (BANDS), (C, H, W)
    <root>/{60m,120m,240m}/lst/<name>.*    LR LST for scale 2/4/8, (H/s, W/s) Kelvin
    <root>/<30*s>m/lst/<name>.*            LR LST for any other integer scale s (480m: x16, 960m: x32)
    <root>/split/{train,val,trainval,test}.txt

The folder names are nominal: "30m" is the target grid and "<30*s>m" that grid coarsened by s, whatever
the pixel size (prepare.py --coarse-lst writes a 1 km target under "30m").

A dataset without fine truth (prepare.py --real-ratio: a sensor's coarse LST and the guidance at the ratio
the model is applied at) has no 30m/lst. It trains only with train.objective=consistency (the loss
compares footprint means with the coarse LST) and is scored by CONS only; its split files name samples
by file name, resolved against 30m/guidance.

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
import re
import shlex
import warnings

import numpy as np
import torch

from errors import ConfigError, DataError
from geotiff import read_geotiff, read_header

BANDS = ("dem", "deepblue", "blue", "green", "red", "vre", "nir", "ndmvi", "ndvi", "ndwi")
RASTER_EXTENSIONS = (".tif", ".tiff", ".mat")
LST_FIELD = "data"  # variable name of LST arrays in the original .mat files


# --------------------------------------------------------------------------- the rules of the layout


def lr_folder(scale):
    """The folder of the LR LST for an integer scale s >= 2: "<30*s>m" (GrokLST's 60m / 120m / 240m for
    2 / 4 / 8, then 480m, 960m, ...). DataError for anything else."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise DataError(f"scale {scale!r}: expected an integer >= 2")
    return f"{30 * int(scale)}m"


LR_FOLDERS = {s: lr_folder(s) for s in (2, 4, 8)}  # the scales of the GrokLST release


def dataset_scales(root):
    """The integer scales whose LR LST folder (<root>/<30*s>m/lst) exists, sorted."""
    found = []
    for entry in os.listdir(root) if os.path.isdir(root) else []:
        m = re.fullmatch(r"(\d+)m", entry)
        if m and int(m.group(1)) % 30 == 0 and int(m.group(1)) >= 60 and os.path.isdir(os.path.join(root, entry, "lst")):
            found.append(int(m.group(1)) // 30)
    return sorted(found)


def lst_band(array, path):
    """The one band of an LST raster (C, H, W) -> (H, W); DataError naming `path` otherwise."""
    check_lst_bands(len(array), path)
    return array[0]


def check_lst_bands(count, path):
    if count != 1:
        raise DataError(f"{path}: LST raster has {count} bands, expected 1 (Kelvin)")


def pick_bands(names, bands, path):
    """Indices of `bands` (any case) in a guidance file's band `names` (lower-cased, guidance_names)."""
    missing = [b for b in bands if b.lower() not in names]
    if missing:
        raise DataError(f"{path}: no band {missing[0]!r} (file has {names})")
    return [names.index(b.lower()) for b in bands]


def check_shapes(paths, scale, lr_shape, hr_shape, guidance_shape=None):
    """A sample's grids agree: LR (h, w) x scale == HR (H, W) == guidance (H, W); DataError naming the file.
    hr_shape None (a dataset without fine truth): the guidance is the fine grid LR x scale must match."""
    if hr_shape is None:
        paths, hr_shape, guidance_shape = dict(paths, hr_lst=paths.get("hr_guidance")), guidance_shape, None
        if hr_shape is None:
            return
    if tuple(hr_shape) != (lr_shape[0] * scale, lr_shape[1] * scale):
        raise DataError(f"{paths['lr_lst']}: LR shape {tuple(lr_shape)} x scale {scale} does not match "
                        f"HR {paths['hr_lst']} shape {tuple(hr_shape)}")
    if guidance_shape is not None and tuple(guidance_shape) != tuple(hr_shape):
        raise DataError(f"{paths['hr_guidance']}: guidance shape {tuple(guidance_shape)} does not match "
                        f"HR LST {paths['hr_lst']} shape {tuple(hr_shape)}")


def guidance_names(names, count, path):
    """Band names of a guidance file: its own (GDAL band descriptions, lower-cased: names match
    case-insensitively everywhere), or for a file of exactly 10 unnamed bands the GrokLST bands
    (BANDS order, as the original dataset stores them). Anything else unnamed is a DataError."""
    if names is not None:
        names = [n.lower() for n in names]
        if len(set(names)) != len(names):
            raise DataError(f"{path}: repeated band names {names}")
        return names
    if count == len(BANDS):
        return list(BANDS)
    raise DataError(f"{path}: {count} unnamed bands; name them (GDAL band descriptions, or --band-names), or "
                    f"give the {len(BANDS)} GrokLST bands {list(BANDS)}")


def hole_mask(lr_lst, scale, hr_guidance=None):
    """Output pixels without data, the one rule for saved predictions, figures and whole scenes: True where
    the LR support pixel is NaN or, when hr_guidance is given, any guidance band is NaN there.
    lr_lst (..., h, w), hr_guidance (..., C, h*scale, w*scale) or None -> bool (..., h*scale, w*scale);
    torch tensors or numpy arrays (the result is of the same kind)."""
    if torch.is_tensor(lr_lst):
        holes = torch.isnan(lr_lst).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        return holes if hr_guidance is None else holes | torch.isnan(hr_guidance).any(-3)
    holes = np.isnan(lr_lst).repeat(scale, -2).repeat(scale, -1)
    return holes if hr_guidance is None else holes | np.isnan(hr_guidance).any(-3)


def fill_holes(x, rings=None):
    """No-data (non-finite) pixels of x (..., h, w) filled from their valid neighbours, ring by ring: a pixel
    with a valid 4-neighbour takes the mean of its valid 4-neighbours (diagonal ones are reached one ring
    later). For a hole with straight edges (a scene collar) this repeats the edge value, so a valid pixel
    next to it meets what it would meet at the edge of a scene cropped there (the replicate padding of
    interpolation). rings: at most that many (None: until nothing is left to reach); still-empty pixels
    stay NaN. Valid pixels are unchanged; torch in, torch out."""
    import torch.nn.functional as F
    shape = x.shape
    x = x.reshape((-1, 1) + shape[-2:])
    valid = torch.isfinite(x)
    if bool(valid.all()) or not bool(valid.any()):
        return x.reshape(shape)
    cross = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=x.dtype, device=x.device)[None, None]
    out = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    for _ in range(rings if rings is not None else sum(shape[-2:])):
        total = F.conv2d(out, cross, padding=1)
        count = F.conv2d(valid.to(x.dtype), cross, padding=1)
        new = ~valid & (count > 0)
        if not bool(new.any()):
            break
        out = torch.where(new, total / count.clamp(min=1), out)
        valid = valid | new
    return torch.where(valid, out, torch.full((), float("nan"), dtype=x.dtype, device=x.device)).reshape(shape)


def read_scene_list(path):
    """A scene list: one scene a line, `LST_PATH [GUIDANCE_PATH ...]`, paths relative to the list's folder
    (`~` expanded), '#' starts a comment, quotes as in a shell (paths with spaces). The grammar of
    prepare.py --scenes and predict.py --scenes. Returns [(lst_path, [guidance paths], 'LIST:line')]."""
    base = os.path.dirname(os.path.abspath(path))
    scenes = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                words = shlex.split(line, comments=True)
            except ValueError as e:
                raise DataError(f"{path}:{n}: {e}") from None
            if words:
                paths = [os.path.join(base, os.path.expanduser(w)) for w in words]
                scenes.append((paths[0], paths[1:], f"{path}:{n}"))
    return scenes


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


# How LST values are stored: Kelvin (the default), or a product's integer DN with a scale and offset,
# an untagged fill value, and the range of plausible Kelvin values that every input must fall in.
LST_UNITS = {"scale": 1.0, "offset": 0.0, "nodata": None, "range": (150.0, 400.0)}


def to_kelvin(array, path, units=None):
    """LST as stored -> Kelvin, in place where possible: the fill value units['nodata'] (compared before
    scaling) -> NaN, then array * scale + offset. Finite values outside units['range'] are a DataError
    naming the file and the value: DN taken for Kelvin, or a fill value without a GDAL_NODATA tag,
    would otherwise give results off by hundreds of kelvin without a word."""
    u = dict(LST_UNITS, **(units or {}))
    array = np.asarray(array, np.float32)
    if u["nodata"] is not None:
        array = np.where(array == np.float32(u["nodata"]), np.float32(np.nan), array)
    if u["scale"] != 1.0 or u["offset"] != 0.0:
        array = array * np.float32(u["scale"]) + np.float32(u["offset"])
    lo, hi = u["range"]
    finite = array[np.isfinite(array)]
    if finite.size and (finite.min() < lo or finite.max() > hi):
        bad = float(finite.min()) if finite.min() < lo else float(finite.max())
        raise DataError(f"{path}: LST value {bad:g} is outside the plausible range {lo:g}..{hi:g} K. If the file "
                        f"stores a product's DN, give its scale and offset (data.lst_scale / data.lst_offset, "
                        f"--lst-scale / --lst-offset; Landsat C2 ST: 0.00341802, 149.0); if {bad:g} is a fill value, "
                        f"declare it (data.nodata, predict --nodata-in); for another range set data.lst_range")
    return array


def read_lst(path, cache_dir=None, units=None):
    """One LST raster -> float32 (1, H, W) Kelvin, no-data as NaN (units: see to_kelvin)."""
    return to_kelvin(cached(path, ["lst"], lambda: _read_lst(path), cache_dir), path, units)


def read_lst_geotiff(path, units=None, window=None):
    """A whole LST scene GeoTIFF -> ((H, W) float32 Kelvin, header as geotiff.read_geotiff)."""
    array, info = read_geotiff(path, window)
    return to_kelvin(lst_band(array, path), path, units), info


def _read_lst(path):
    if path.endswith(".mat"):
        return read_mat(path, [LST_FIELD])
    array, _ = read_geotiff(path)
    return lst_band(array, path)[None]


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
    return array[pick_bands(guidance_names(info["bands"], len(array), path), bands, path)]


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
    """Sample names of `<root>/split/<split>.txt` (names, or integer indices into 30m/lst; in a dataset
    without fine truth, no 30m/lst, into 30m/guidance)."""
    path = os.path.join(root, "split", f"{split}.txt")
    if not os.path.exists(path):
        raise DataError(f"{path}: split file not found")
    with open(path) as f:
        entries = [line.split()[0] for line in f if line.strip()]
    hr_folder = os.path.join(root, "30m", "lst")
    if not os.path.isdir(hr_folder) and os.path.isdir(os.path.join(root, "30m", "guidance")):
        hr_folder = os.path.join(root, "30m", "guidance")
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
        hr_lst      (1, H, W)   Kelvin (target; only when the fine truth is read: has_truth)
        hr_guidance (C, H, W)   bands in `guidance_bands` order (only when C > 0)
        mask        (1, H, W)   bool, True where hr_lst is finite (only with hr_lst)
        name        str, index  int
    `hr_crop` (training only) takes a random HR crop aligned to the LR grid; the crop is a
    pure function of (seed, epoch, index), so resumed runs see identical crops.
    truth: 'required' (30m/lst must exist: DataError naming it otherwise), 'if_present' (read when the
    dataset has it: evaluation), 'none' (never read, even when present: training with the consistency
    objective, so nothing of the fine truth reaches it, crops included). has_truth says which.
    """

    TRUTH = ("required", "if_present", "none")

    def __init__(self, root, split, scale, guidance_bands=(), hr_crop=None, seed=0, cache=False, lst_units=None,
                 truth="required"):
        if not os.path.isdir(root):
            raise DataError(f"{root}: dataset folder not found")
        if truth not in self.TRUTH:
            raise ValueError(f"truth={truth!r}: expected one of {self.TRUTH}")
        truth_folder = os.path.join(root, "30m", "lst")
        if truth == "required" and not os.path.isdir(truth_folder):
            raise DataError(f"{truth_folder}: folder not found (no fine LST to train against; a dataset without "
                            f"fine truth, such as prepare.py --real-ratio writes, trains with train.objective=consistency)")
        self.has_truth = truth != "none" and os.path.isdir(truth_folder)
        lr_lst_folder = os.path.join(root, lr_folder(scale), "lst")
        if not os.path.isdir(lr_lst_folder):
            raise DataError(f"{lr_lst_folder}: no LR LST for scale {scale} (this dataset has scales "
                            f"{dataset_scales(root)}; prepare.py --scales {scale} writes it)")
        self.root, self.scale, self.bands = root, scale, list(guidance_bands)
        self.hr_crop, self.seed, self.epoch = hr_crop, seed, 0
        # cache: memory-mapped float32 .npy copies under <root>/.cache, rebuilt when a source changes
        self.cache_dir = os.path.join(root, ".cache") if cache else None
        self.lst_units = lst_units
        if hr_crop is not None and hr_crop % scale:
            raise DataError(f"data.hr_crop={hr_crop} is not a multiple of scale {scale}")
        self.names = read_split(root, split)
        self.paths = []
        for name in self.names:  # fail early, naming the first missing file
            p = {"lr_lst": find_raster(lr_lst_folder, name)}
            if self.has_truth:
                p["hr_lst"] = find_raster(truth_folder, name)
            if self.bands:
                p["hr_guidance"] = find_raster(os.path.join(root, "30m", "guidance"), name)
            self.paths.append(p)

    def __len__(self):
        return len(self.names)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, index):
        p = self.paths[index]
        lr = read_lst(p["lr_lst"], self.cache_dir, self.lst_units)
        item = {"lr_lst": lr}
        if self.has_truth:
            item["hr_lst"] = read_lst(p["hr_lst"], self.cache_dir, self.lst_units)
        if self.bands:
            item["hr_guidance"] = read_guidance(p["hr_guidance"], self.bands, self.cache_dir)
        check_shapes(p, self.scale, lr.shape[1:], item["hr_lst"].shape[1:] if self.has_truth else None,
                     item["hr_guidance"].shape[1:] if self.bands else None)
        if self.hr_crop is not None:
            item = self._crop(item, index)
        out = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in item.items()}  # copies memmaps
        if self.has_truth:
            # numpy, not torch.isfinite: on a busy CPU torch's 2-thread kernel took 150 ms per 512x512 tile (speed.py --data-wait)
            out["mask"] = torch.from_numpy(np.isfinite(out["hr_lst"].numpy()))
        out["name"], out["index"] = self.names[index], index
        return out

    def geo(self, index):
        """Georeferencing of sample `index`'s HR grid (its HR LST header's geotiff `geo`; None for .mat)."""
        path = self.paths[index]["hr_lst"]
        return None if path.endswith(".mat") else read_header(path)["geo"]

    def check_files(self):
        """Every sample's headers, no pixels: one LST band, LR shape x scale == HR shape == guidance shape,
        the guidance bands present, tiles not smaller than the crop. DataError naming the first bad file;
        cheap (headers only), so a run fails before its first iteration, not hours later. .mat samples
        are checked when read."""
        for p in self.paths:
            if any(path.endswith(".mat") for path in p.values()):
                continue
            lr = read_header(p["lr_lst"])
            check_lst_bands(lr["shape"][0], p["lr_lst"])
            hr_shape = None
            if self.has_truth:
                hr = read_header(p["hr_lst"])
                check_lst_bands(hr["shape"][0], p["hr_lst"])
                hr_shape = hr["shape"][1:]
            gui_shape = None
            if self.bands:
                gui = read_header(p["hr_guidance"])
                pick_bands(guidance_names(gui["bands"], gui["shape"][0], p["hr_guidance"]), self.bands, p["hr_guidance"])
                gui_shape = gui["shape"][1:]
            check_shapes(p, self.scale, lr["shape"][1:], hr_shape, gui_shape)
            self._check_crop(lr["shape"][1:], p)

    def _check_crop(self, lr_shape, paths):
        if self.hr_crop is not None and self.hr_crop // self.scale > min(lr_shape):
            raise DataError(f"{paths['lr_lst']}: LR size {tuple(lr_shape)} smaller than crop {self.hr_crop // self.scale}")

    CROP_TRIES = 8

    def _crop(self, item, index):
        """A random crop aligned to the LR grid that holds valid target pixels: up to CROP_TRIES draws from
        the (seed, epoch, index) stream, the first with a finite HR pixel (without fine truth: a finite LR
        pixel, the consistency objective's target) (else the first draw; the training loop skips a batch
        without any). Deterministic, so a resumed run sees the same crops."""
        s, lc = self.scale, self.hr_crop // self.scale
        h, w = item["lr_lst"].shape[1:]
        self._check_crop((h, w), self.paths[index])
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
        for attempt in range(self.CROP_TRIES):
            top = int(torch.randint(0, h - lc + 1, (1,), generator=g))
            left = int(torch.randint(0, w - lc + 1, (1,), generator=g))
            if attempt == 0:
                first = top, left
            if "hr_lst" in item:
                found = np.isfinite(item["hr_lst"][:, top * s:(top + lc) * s, left * s:(left + lc) * s]).any()
            else:
                found = np.isfinite(item["lr_lst"][:, top:top + lc, left:left + lc]).any()
            if found:
                break
        else:
            top, left = first
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
                raise ConfigError(f"norm.guidance.stats has no entry for band {b!r} (has {sorted(stats)})")
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
        raise ConfigError(f"{where}.method={method!r}: expected one of {list(needed)}")
    for key in needed[method]:
        if not isinstance(stats.get(key), (int, float)):
            raise ConfigError(f"{where}.{key} must be a number for method {method!r}")
    if method == "zscore":
        if stats["std"] <= 0:
            raise ConfigError(f"{where}.std must be > 0")
        return float(stats["mean"]), float(stats["std"])
    if method == "minmax":
        if stats["max"] <= stats["min"]:
            raise ConfigError(f"{where}: max must exceed min")
        return float(stats["min"]), float(stats["max"] - stats["min"])
    return 0.0, 1.0


def dataset_bands(root, split):
    """The guidance bands a dataset's files name (the header of the split's first guidance file); the
    GrokLST bands for .mat files; none without a guidance folder."""
    folder = os.path.join(root, "30m", "guidance")
    names = read_split(root, split)
    if not os.path.isdir(folder) or not names:
        return []
    path = find_raster(folder, names[0])
    if path.endswith(".mat"):
        return list(BANDS)
    header = read_header(path)
    return guidance_names(header["bands"], header["shape"][0], path)


LST_QUANTITIES = {  # LST band descriptions (landsat.py, prepare.py) -> what the values are, for labels
    "lst": "land surface temperature",
    "bt": "brightness temperature",
    "bt_emissivity_corrected": "emissivity-corrected brightness temperature",
}


def lst_quantity(root):
    """What a dataset's LST holds: the band description of its first HR LST tile (sorted 30m/lst) when it is
    one of LST_QUANTITIES ('bt' for a Landsat Level-1 brightness temperature), else 'lst' (no or another
    description, .mat files). LST_QUANTITIES[lst_quantity(root)] is the label of a figure or a table."""
    folder = os.path.join(root, "30m", "lst")
    stems = list_stems(folder) if os.path.isdir(folder) else []
    if not stems:
        return "lst"
    path = find_raster(folder, stems[0])
    return "lst" if path.endswith(".mat") else lst_quantity_of(read_header(path)["bands"])


def lst_quantity_of(band_names):
    """What an LST raster holds, from its band descriptions (geotiff header 'bands'): a key of LST_QUANTITIES,
    'lst' when it has no or another description."""
    name = (band_names or ["lst"])[0].lower()
    return name if name in LST_QUANTITIES else "lst"


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

    folders = ["30m"] + [lr_folder(s) for s in dataset_scales(root)]
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


# --------------------------------------------------------------------------- block means (Wald's protocol)


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


def block_mean_tensor(x, s, max_nan_fraction=0.0):
    """block_mean for tensors: (..., H, W) -> (..., H/s, W/s) in x's dtype, same rule (mean of the
    finite pixels of each s x s block; NaN where more than `max_nan_fraction` of them are not finite)."""
    blocks = x.reshape(x.shape[:-2] + (x.shape[-2] // s, s, x.shape[-1] // s, s))
    valid = torch.isfinite(blocks)
    n = valid.sum((-3, -1))
    total = torch.where(valid, blocks, torch.zeros((), dtype=x.dtype, device=x.device)).sum((-3, -1))
    out = total / n.clamp(min=1)
    return torch.where((n == 0) | (1 - n / (s * s) > max_nan_fraction), float("nan"), out)
