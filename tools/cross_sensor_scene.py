"""A cross-sensor scene with a known fine LST, the toolkit's DMS on it, and the score of any sharpened map.

    python tools/cross_sensor_scene.py write DIR [--size 3000]          # the scene as GeoTIFFs
    OMP_NUM_THREADS=2 python tools/cross_sensor_scene.py sharpen DIR    # model 'dms' -> DIR/dms_30m.tif
    python tools/cross_sensor_scene.py score DIR DIR/dms_30m.tif [OTHER.tif ...]

write: layout.synth_scene(size, size) (the fine LST in K and its 10 guidance bands, data.BANDS) placed on
a UTM grid of 30 m pixels (default: zone 31N, corner 500000 E, 4500000 N: 3.0 E, 40.6 N; --epsg, --x0,
--y0 move it), and the LST's footprint means on the block of the global MODIS 1 km sinusoidal grid
(926.625 m) that covers it
(tools/footprint_speed.py's grid; footprint.Footprint.aggregate with radiance=True: a sensor averages
emitted radiance, not temperature; coarse pixels less than half inside the fine grid are NaN). Files:
DIR/truth_30m.tif, DIR/guidance_30m.tif (10 bands, float32), DIR/lst_1km.tif (float32 K, NaN no-data).
Why 3 E by default: near the sinusoidal grid's central meridian its pixels are close to squares on
the UTM grid (rotated ~2 degrees), which pyDMS's regridding needs: at 116 E (tools/footprint_speed.py's
place) the sinusoidal pixel is so sheared that pyDMS estimates a negative pixel width and stops
("Attempt to create -301x99 dataset"); the toolkit's footprint takes either. --utm-coarse writes
the coarse LST on a 900 m grid of the fine grid's own CRS and corner instead (30 x 30 fine pixels
each, still named lst_1km.tif): no regridding for either implementation to do.

sharpen: reads those files, builds the footprint between the two grids, fits model 'dms' on the whole
scene and applies it (sharpeners.DMS.fit / sharpen with the footprint), writes DIR/dms_30m.tif (or
--out) and prints the seconds of each step. Defaults are pyDMS's run_pyDMS.py template (10 trees on
all pixels and bands, 15-pixel windows, radiance); --sen-et uses the DMS class defaults instead.

score: RMSE, MAE, BIAS, CC (and RSD) of each map against DIR/truth_30m.tif (metrics.image_metrics),
over the pixels where the truth and every given map are finite, and each map's own coverage; with
--bicubic also of bicubic interpolation of the coarse LST (footprint.Footprint.interpolate).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # footprint_speed's MODIS grid

TRUTH, GUIDANCE, LST, OUT = "truth_30m.tif", "guidance_30m.tif", "lst_1km.tif", "dms_30m.tif"
UTM_EPSG, X0, Y0, PIXEL = 32631, 500000.0, 4500000.0, 30.0
PYDMS_TEMPLATE = {"n_estimators": 10, "max_samples": 1.0, "max_features": 1.0, "window": 15, "radiance": True}


def write(work_dir, size, seed, epsg, x0, y0, utm_coarse):
    from footprint_speed import modis_grid_over

    import geotiff
    import layout
    from data import BANDS
    from footprint import Footprint, Grid
    t = time.perf_counter()
    lst, gui = layout.synth_scene(size, size, seed)
    fine = Grid((size, size), (x0, PIXEL, 0.0, y0, 0.0, -PIXEL), f"EPSG:{epsg}", "UTM 30 m")
    if utm_coarse:  # the same CRS and corner, 30 x 30 fine pixels per coarse one
        coarse = Grid((-(-size // 30),) * 2, (x0, 30 * PIXEL, 0.0, y0, 0.0, -30 * PIXEL), fine.crs, "UTM 900 m")
    else:
        coarse = modis_grid_over(fine)
    lr = Footprint(fine, coarse).aggregate(lst.astype(np.float64), radiance=True)
    os.makedirs(work_dir, exist_ok=True)
    geo = geotiff.make_geo(x0, y0, PIXEL, epsg)
    geotiff.write_geotiff(os.path.join(work_dir, TRUTH), lst, geo)
    geotiff.write_geotiff(os.path.join(work_dir, GUIDANCE), gui, geo, band_names=list(BANDS))
    cx0, pixel, _, cy0, _, _ = coarse.transform
    geotiff.write_geotiff(os.path.join(work_dir, LST), lr, geotiff.make_geo(cx0, cy0, pixel, epsg) if utm_coarse
                          else geotiff.make_geo_keys(cx0, cy0, pixel, geotiff.MODIS_SINUSOIDAL_KEYS))
    print(f"{fine.describe()}\n{coarse.describe()}\n{int(np.isfinite(lr).sum())} valid coarse pixels; "
          f"written to {work_dir} in {time.perf_counter() - t:.1f} s")


def sharpen(work_dir, out, threads, sen_et):
    import torch

    import geotiff
    from footprint import Footprint, Grid
    from sharpeners import DMS
    torch.set_num_threads(threads)
    start = t = time.perf_counter()
    paths = {name: os.path.join(work_dir, name) for name in (GUIDANCE, LST)}
    gui, gui_info = geotiff.read_geotiff(paths[GUIDANCE])
    lr, lr_info = geotiff.read_geotiff(paths[LST])
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    fp = Footprint(Grid.from_geotiff(paths[GUIDANCE], gui_info), Grid.from_geotiff(paths[LST], lr_info))
    build_s = time.perf_counter() - t
    settings = {} if sen_et else PYDMS_TEMPLATE
    model = DMS(guidance_channels=len(gui), n_jobs=threads, **settings)
    t = time.perf_counter()
    fit = model.fit(lr[0], gui, fp)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    fine = model.sharpen(lr[0], gui, fit, fp)
    apply_s = time.perf_counter() - t
    out = out or os.path.join(work_dir, OUT)
    geotiff.write_geotiff(out, fine, gui_info["geo"])
    print(f"dms ({'class defaults' if sen_et else 'pyDMS template settings'}, {threads} threads): read "
          f"{read_s:.1f} s, footprint {build_s:.1f} s, fit {fit_s:.1f} s ({fit['samples']} training pixels, "
          f"{len(fit['local'])} local models), sharpen {apply_s:.1f} s, total {time.perf_counter() - start:.1f} s "
          f"-> {out}")


def score(work_dir, maps, bicubic):
    import torch

    import geotiff
    from footprint import Footprint, Grid
    from metrics import METRICS, image_metrics
    truth, info = geotiff.read_geotiff(os.path.join(work_dir, TRUTH))
    truth = truth[0]
    preds = [geotiff.read_geotiff(path)[0][0] for path in maps]
    for path, pred in zip(maps, preds):
        if pred.shape != truth.shape:
            raise SystemExit(f"{path}: {pred.shape} pixels, the truth has {truth.shape}")
    if bicubic:  # interpolation alone, the reference a sharpener has to beat
        lst = os.path.join(work_dir, LST)
        lr, lr_info = geotiff.read_geotiff(lst)
        fp = Footprint(Grid.from_geotiff(os.path.join(work_dir, TRUTH), info), Grid.from_geotiff(lst, lr_info))
        maps, preds = maps + ["bicubic (footprint.interpolate)"], preds + [fp.interpolate(lr[0], "bicubic")]
    common = np.isfinite(truth) & np.all([np.isfinite(p) for p in preds], 0)
    print(f"over {int(common.sum())} pixels ({common.mean():.1%} of the scene) where every map is finite")
    print("| map | " + " | ".join(METRICS) + " | coverage |")
    print("|---" * (len(METRICS) + 2) + "|")
    gt = torch.from_numpy(truth)[None, None]
    for path, pred in zip(maps, preds):
        values = image_metrics(torch.from_numpy(pred)[None, None], gt, torch.from_numpy(common)[None, None])[0]
        print(f"| {os.path.basename(path)} | " + " | ".join(f"{v:.4f}" for v in values.tolist())
              + f" | {np.isfinite(pred).mean():.1%} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the scene's GeoTIFFs into DIR")
    w.add_argument("dir")
    w.add_argument("--size", type=int, default=3000, help="fine pixels per side (30 m)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--epsg", type=int, default=UTM_EPSG, help="the fine grid's UTM CRS (EPSG code)")
    w.add_argument("--x0", type=float, default=X0, help="the fine grid's west edge (metres)")
    w.add_argument("--y0", type=float, default=Y0, help="the fine grid's north edge (metres)")
    w.add_argument("--utm-coarse", action="store_true",
                   help="a 900 m grid in the fine grid's own CRS (30 x 30 blocks) instead of MODIS sinusoidal")
    s = sub.add_parser("sharpen", help="model 'dms' on DIR's scene")
    s.add_argument("dir")
    s.add_argument("--out", help=f"output GeoTIFF (default DIR/{OUT})")
    s.add_argument("--threads", type=int, default=2, help="DMS n_jobs and torch threads")
    s.add_argument("--sen-et", action="store_true", help="the DMS class defaults instead of pyDMS's template")
    c = sub.add_parser("score", help="metrics of sharpened maps against DIR's truth")
    c.add_argument("dir")
    c.add_argument("maps", nargs="+")
    c.add_argument("--bicubic", action="store_true", help="also score bicubic interpolation of the coarse LST")
    args = p.parse_args(argv)
    if args.command == "write":
        write(args.dir, args.size, args.seed, args.epsg, args.x0, args.y0, args.utm_coarse)
    elif args.command == "sharpen":
        sharpen(args.dir, args.out, args.threads, args.sen_et)
    else:
        score(args.dir, args.maps, args.bicubic)


if __name__ == "__main__":
    main()
