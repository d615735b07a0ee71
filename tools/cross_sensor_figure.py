"""A synthetic cross-CRS scene and what predict.py makes of it: the figure and numbers of docs/sensors.md.

    python tools/cross_sensor_figure.py data/cross_sensor docs/figures/cross_sensor.png

A 1024 x 1024 synthetic 30 m scene (layout.synth_scene: guidance and its LST) on a UTM 31N grid (southern
France), its LST aggregated over the footprints of a MODIS 1 km sinusoidal grid (footprint.Footprint, with a
cloud of NaN pixels), written as GeoTIFFs (lst_modis.tif: MODIS_SINUSOIDAL_KEYS; bands_30m.tif: EPSG:32631).
predict.py then downscales it with bicubic interpolation, TsHARP, linreg (10 bands, and DEM + NDVI) and the
random forest (configs/demo_*_x8.yaml: the demo's 10 bands), with and without --consistency; the script
prints the RMSE of each against the truth over the pixels all of them cover and draws coarse / bicubic /
tsharp / linreg / truth / |linreg - truth| (figures.draw_figure). Takes a few minutes on one CPU core.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import figures  # noqa: E402
import geotiff  # noqa: E402
import predict  # noqa: E402
from data import BANDS  # noqa: E402
from footprint import Footprint, Grid  # noqa: E402
from layout import synth_scene  # noqa: E402

X0, Y0, SIZE = 500000.0, 4900000.0, 1024   # UTM 31N: 3 E, 44.2 N; 30.7 km a side
MODELS = {"bicubic": ("bicubic_x8", []), "tsharp": ("demo_tsharp_x8", []), "linreg": ("demo_linreg_x8", []),
          "linreg [dem, ndvi]": ("demo_linreg_x8", ["data.guidance_bands=[dem,ndvi]"]), "rf": ("demo_rf_x8", [])}


def make_scene(folder, seed=7):
    """The guidance, the truth and the MODIS-grid LST as GeoTIFFs -> (truth (H, W) K, Footprint, MODIS LST)."""
    import pyproj
    os.makedirs(folder, exist_ok=True)
    truth, gui = synth_scene(SIZE, SIZE, seed=seed)
    fine_geo = geotiff.make_geo(X0, Y0, 30.0, epsg=32631)
    geotiff.write_geotiff(os.path.join(folder, "bands_30m.tif"), gui, fine_geo, band_names=list(BANDS))
    geotiff.write_geotiff(os.path.join(folder, "truth_30m.tif"), truth, fine_geo)
    fine = Grid.from_geotiff(os.path.join(folder, "bands_30m.tif"))
    sinu = geotiff.crs_string(geotiff.make_geo_keys(0, 0, 1, geotiff.MODIS_SINUSOIDAL_KEYS))
    to = pyproj.Transformer.from_crs("EPSG:32631", sinu, always_xy=True)
    xs, ys = to.transform([X0, X0 + 30 * SIZE, X0, X0 + 30 * SIZE], [Y0, Y0, Y0 - 30 * SIZE, Y0 - 30 * SIZE])
    p = geotiff.MODIS_PIXEL
    x0, y0 = np.floor(min(xs) / p) * p, np.ceil(max(ys) / p) * p  # on the MODIS pixel lattice
    shape = (int(np.ceil((y0 - min(ys)) / p)), int(np.ceil((max(xs) - x0) / p)))
    coarse_geo = geotiff.make_geo_keys(x0, y0, p, geotiff.MODIS_SINUSOIDAL_KEYS)
    fp = Footprint(fine, Grid(shape, geotiff.corner_transform(coarse_geo), sinu, "modis"))
    modis = fp.aggregate(truth)
    modis[20:24, 6:11] = np.nan  # a cloud
    geotiff.write_geotiff(os.path.join(folder, "lst_modis.tif"), modis, coarse_geo)
    return truth, fp, modis


def main(folder, png):
    truth, fp, modis = make_scene(folder)
    runs, scores = {}, {}
    for consistency in ((), ("--consistency",)):
        for name, (config, overrides) in MODELS.items():
            out = os.path.join(folder, f"{name.split()[0]}{len(overrides)}{'_consistent' if consistency else ''}.tif")
            predict.main([os.path.join(ROOT, "configs", config + ".yaml"), *overrides,
                          "--lst", os.path.join(folder, "lst_modis.tif"),
                          "--guidance", os.path.join(folder, "bands_30m.tif"), "--out", out, "--overwrite",
                          *consistency])
            runs[name + (" + consistency" if consistency else "")] = geotiff.read_geotiff(out)[0][0]
    common = np.logical_and.reduce([np.isfinite(a) for a in runs.values()])
    for label, a in runs.items():
        d = (a - truth)[common].astype(np.float64)
        means = fp.aggregate(a.astype(np.float64))
        ok = np.isfinite(means) & np.isfinite(modis)
        scores[label] = (np.sqrt(np.mean(d * d)), np.abs(d).mean(), np.abs(means - modis)[ok].max())
    print(f"| method | RMSE (K) | MAE (K) | max footprint mean - MODIS (K) |  ({common.sum()} pixels, MODIS "
          f"{modis.shape[1]} x {modis.shape[0]}, {np.isnan(modis).sum()} NaN)")
    print("|---|---|---|---|")
    for label, (r, m, c) in scores.items():
        print(f"| {label} | {r:.3f} | {m:.3f} | {c:.2g} |")
    figures.require_matplotlib("the figure")
    rows = [("synthetic, UTM 31N under MODIS sinusoidal",
             {"LR input": np.asarray(fp.nearest(modis), np.float32), "bicubic": runs["bicubic"],
              "tsharp": runs["tsharp"], "linreg": runs["linreg"], "ground truth": truth})]
    figures.draw_figure(png, rows, "linreg")
    print(f"figure written to {png}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/cross_sensor_figure.py OUT_FOLDER FIGURE.png")
    main(sys.argv[1], sys.argv[2])
