"""Writing datasets in the GrokLST layout (data.py reads them): the layout's folders, one sample, the split
files, the synthetic scene behind the demo, the demo itself, and samples in the original release's .mat form.

prepare.py (your scenes -> a dataset), `groklst.py make-demo` and the speed tool's data-loading benchmark write
through these functions, so every dataset the toolkit writes has one layout (data.py's docstring).
"""
import math
import os

import numpy as np

from data import BANDS, LR_FOLDERS, LST_FIELD, block_mean, lr_folder
from errors import ConfigError, DataError
from geotiff import geo_window, make_geo, write_geotiff

# --------------------------------------------------------------------------- the layout


def write_sample(root, name, hr_lst, hr_guidance, bands, geo, scales=tuple(LR_FOLDERS), degrade=block_mean,
                 quantity=None):
    """One sample of the layout: HR LST (H, W) K and guidance (C, H, W) named `bands` under 30m/, and
    LR LST `degrade(hr_lst, s)` under each scale's folder (data.lr_folder), with the LR grid's
    georeferencing (pixel size x s, same corner). geo: the HR tile's georeferencing. quantity: the LST
    files' band description ('lst', 'bt', ...: data.lst_quantity reads it back), None for none."""
    lst_band = [quantity] if quantity else None
    write_geotiff(os.path.join(root, "30m", "lst", name + ".tif"), hr_lst, geo, band_names=lst_band)
    write_geotiff(os.path.join(root, "30m", "guidance", name + ".tif"), hr_guidance, geo, band_names=bands)
    for s in scales:
        write_geotiff(os.path.join(root, lr_folder(s), "lst", name + ".tif"), degrade(hr_lst, s),
                      geo_window(geo, 0, 0, 1 / s), band_names=lst_band)


def make_layout(root, scales=tuple(LR_FOLDERS)):
    """The folders of an empty dataset."""
    for sub in ["30m/lst", "30m/guidance", "split"] + [f"{lr_folder(s)}/lst" for s in scales]:
        os.makedirs(os.path.join(root, sub), exist_ok=True)


def write_splits(root, splits):
    """split/<name>.txt for {name: [sample names]}, sorted, plus trainval = train + val."""
    splits = dict(splits, trainval=list(splits["train"]) + list(splits["val"]))
    for split, names in splits.items():
        with open(os.path.join(root, "split", f"{split}.txt"), "w") as f:
            f.write("".join(f"{n}\n" for n in sorted(names)))


# --------------------------------------------------------------------------- the synthetic scene and the demo


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


def make_demo(root, n_tiles=48, size=128, seed=0):
    """Write a small synthetic GrokLST-layout dataset (GeoTIFF): one synthetic scene cut into
    n_tiles non-overlapping size x size tiles (30 m), LR LST at 60/120/240 m by block mean,
    a few cloud holes (NaN) in some LST tiles, split 60/10/30 % into train/val/test."""
    if size % 8:
        raise DataError(f"tile size {size} must be a multiple of 8")
    cols = int(math.ceil(math.sqrt(n_tiles * 4 / 3)))
    rows = int(math.ceil(n_tiles / cols))
    lst, gui = synth_scene(rows * size, cols * size, seed)
    rng = np.random.default_rng(seed + 1)
    make_layout(root)
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
        write_sample(root, name, hr, gui[:, r * size:(r + 1) * size, c * size:(c + 1) * size], BANDS, geo)
    order = np.random.default_rng(seed + 2).permutation(n_tiles)
    n_train, n_val = round(0.6 * n_tiles), round(0.1 * n_tiles)
    cuts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    write_splits(root, {split: [names[i] for i in idx] for split, idx in cuts.items()})


def write_mat_dataset(root, n_samples=32, size=512, seed=0):
    """N synthetic samples in the original release's .mat layout and sizes: 30m/lst/<name>.mat (variable
    `data`, (size, size) float32 K), 30m/guidance/<name>.mat (one (size, size) variable per band, named as
    data.BANDS), {60m,120m,240m}/lst/<name>.mat (block means); split train = all, val = test = first 2."""
    try:
        import scipy.io
    except ImportError:
        raise ConfigError("writing .mat samples needs scipy: pip install scipy") from None
    make_layout(root)
    lst, guidance = synth_scene(size, size, seed)  # one scene, shifted per sample: content does not matter here
    rng = np.random.default_rng(seed)
    names = [f"{i:04d}" for i in range(n_samples)]
    for name in names:
        hr = (lst + rng.normal(0, 1, lst.shape)).astype(np.float32)
        scipy.io.savemat(os.path.join(root, "30m", "lst", name + ".mat"), {LST_FIELD: hr})
        scipy.io.savemat(os.path.join(root, "30m", "guidance", name + ".mat"),
                         {band: guidance[b] for b, band in enumerate(BANDS)})
        for scale, folder in LR_FOLDERS.items():
            scipy.io.savemat(os.path.join(root, folder, "lst", name + ".mat"), {LST_FIELD: block_mean(hr, scale)})
    write_splits(root, {"train": names, "val": names[:2], "test": names[:2]})
