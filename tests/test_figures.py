"""Figures are drawn, not only written: test.py --figure (with a guidance column), groklst.py plot-log and
the tutorial's figures (docs/make_figures.py -> figures.py), on the demo data. Each PNG must exist, have
pixel dimensions in the expected range and not be blank (pixel variance above a threshold)."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

import figures
import groklst

needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                               reason="matplotlib not installed (pip install matplotlib)")


def load_script(root, name, path):
    """A script as a module (test.py would clash with the standard library's `test` package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_pixels(path):
    """(H, W, channels) floats in [0, 1] of a PNG."""
    from matplotlib.image import imread
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return imread(path)


def check_png(path, width, height, min_std=0.08):
    """The PNG's pixel size lies in width=(lo, hi), height=(lo, hi) and its grey levels vary (not blank)."""
    pixels = png_pixels(path)
    h, w = pixels.shape[:2]
    print(f"{path}: {w}x{h} px, grey std {pixels[..., :3].mean(-1).std():.3f}")
    assert width[0] <= w <= width[1] and height[0] <= h <= height[1], f"{path}: {w}x{h} px"
    grey = pixels[..., :3].mean(-1)
    assert grey.std() > min_std, f"{path}: nearly uniform (std {grey.std():.3f})"
    return pixels


@pytest.fixture(scope="module")
def demo_cfg(demo_root, tmp_path_factory):
    """The demo configs pointed at the test's demo data (16 tiles of 64 x 64)."""
    return {"root": f"data.root={demo_root}", "tmp": tmp_path_factory.mktemp("figures")}


@pytest.fixture(scope="module")
def tiny_run(demo_root, demo_cfg, root):
    """A 3-iteration run of a small SRCNN on the demo data: a work dir with log.jsonl and best.pth."""
    train = load_script(root, "groklst_train_script", "train.py")
    work_dir = demo_cfg["tmp"] / "tiny_srcnn"
    train.main(["configs/demo_bicubic_x8.yaml", demo_cfg["root"], "model.name=srcnn", "data.hr_crop=32",
                "train.max_iters=3", "train.log_interval=1", "train.val_interval=2", "train.batch_size=2",
                f"work_dir={work_dir}", "--no-test"])
    return str(work_dir)


@pytest.mark.slow
@needs_mpl
def test_test_figure_panel_with_guidance(demo_root, demo_cfg, tiny_run, root):
    test_script = load_script(root, "groklst_test_script", "test.py")
    png = demo_cfg["tmp"] / "panel.png"
    names = groklst.build_dataset(groklst.load_config("configs/demo_bicubic_x8.yaml", [demo_cfg["root"]]), "test").names
    test_script.main(["configs/demo_bicubic_x8.yaml", demo_cfg["root"], "--out", str(demo_cfg["tmp"] / "m.json"),
                      "--figure", str(png), "--figure-samples", names[0], "--figure-guidance", "dem",
                      "--figure-models", f"{tiny_run}/best.pth,configs/demo_bicubic_x8.yaml"])
    # LR, dem, bicubic, srcnn, bicubic (config), truth, error + two colour bars: wide, one row high
    pixels = check_png(png, width=(1800, 2500), height=(280, 400))
    # the guidance column is grey: its centre pixel has R = G = B, the LST columns are coloured
    h, w = pixels.shape[:2]
    assert np.ptp(pixels[h // 2, :, :3], axis=-1).max() > 0.3  # some coloured pixel on the middle row


@pytest.mark.slow
@needs_mpl
def test_figure_guidance_adds_a_column(demo_root, demo_cfg, tmp_path, root):
    """Without --figure-guidance the panel has one column fewer (narrower)."""
    test_script = load_script(root, "groklst_test_script", "test.py")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for png, extra in ((a, []), (b, ["--figure-guidance", "ndvi"])):
        test_script.main(["configs/demo_bicubic_x8.yaml", demo_cfg["root"], "--out", str(tmp_path / "m.json"),
                          "--figure", str(png), *extra])
    wa, wb = png_pixels(a).shape[1], png_pixels(b).shape[1]
    assert wb - wa > 200, (wa, wb)


@pytest.mark.slow
@needs_mpl
def test_plot_log_of_two_runs(tiny_run, demo_cfg):
    png = demo_cfg["tmp"] / "curves.png"
    groklst.main(["plot-log", tiny_run, tiny_run, "--out", str(png)])
    check_png(png, width=(1100, 1300), height=(300, 380))
    train, val = figures.read_log(tiny_run)
    assert [r["iter"] for r in train] == [1, 2, 3] and [r["iter"] for r in val] == [2, 3]


def test_plot_log_errors(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="no log.jsonl"):
        groklst.main(["plot-log", str(tmp_path), "--out", str(tmp_path / "c.png")])
    (tmp_path / "log.jsonl").write_text('{"iter": 1, "loss": 1.0, "lr": 0.1}\nnot json\n')
    with pytest.raises(SystemExit, match="log.jsonl:2: not a JSON line"):
        groklst.main(["plot-log", str(tmp_path), "--out", str(tmp_path / "c.png")])
    (tmp_path / "log.jsonl").write_text(json.dumps({"iter": 1, "loss": 1.0, "lr": 0.1}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match="plot-log needs matplotlib: pip install matplotlib"):
        groklst.main(["plot-log", str(tmp_path), "--out", str(tmp_path / "c.png")])


@pytest.mark.slow
@needs_mpl
def test_tutorial_figures(demo_root, demo_cfg, tmp_path, root):
    """docs/make_figures.py's figures (Wald's protocol, normalisation histograms, error panel) and scene."""
    make = load_script(root, "groklst_make_figures", os.path.join("docs", "make_figures.py"))
    wald = tmp_path / "wald.png"
    make.main(["wald", demo_root, "tile_000", str(wald)])
    check_png(wald, width=(1200, 1550), height=(260, 340))
    hist = tmp_path / "hist.png"
    make.main(["histograms", "configs/demo_mocolsk_x8.yaml", str(hist), f"data.root={demo_root}"])
    # histograms are mostly white, so a lower variance threshold
    check_png(hist, width=(900, 1020), height=(640, 740), min_std=0.04)
    test_script = load_script(root, "groklst_test_script", "test.py")
    pred_dir = tmp_path / "pred"
    test_script.main(["configs/demo_bicubic_x8.yaml", demo_cfg["root"], "--out", str(tmp_path / "m.json"),
                      "--save-dir", str(pred_dir)])
    errors = tmp_path / "errors.png"
    make.main(["errors", demo_root, str(errors), str(pred_dir), str(pred_dir)])
    check_png(errors, width=(780, 900), height=(300, 380), min_std=0.04)
    make.main(["scene", str(tmp_path / "scene"), "--size", "64"])
    from geotiff import read_geotiff
    lr, lr_header = read_geotiff(str(tmp_path / "scene" / "lst_240m.tif"))
    gui, _ = read_geotiff(str(tmp_path / "scene" / "bands_30m.tif"))
    assert lr.shape[-2:] == (8, 8) and gui.shape == (10, 64, 64)


@needs_mpl
def test_wald_panel_of_a_ramp(tmp_path):
    """wald_panel on a known tile: its coarse values are block means (data.block_mean)."""
    from data import block_mean
    hr = np.add.outer(np.arange(32.0), np.arange(32.0)).astype(np.float32) + 280
    lr = {s: block_mean(hr, s) for s in (2, 4, 8)}
    assert lr[8][1, 1] == pytest.approx(hr[8:16, 8:16].mean())
    path = str(tmp_path / "wald.png")
    figures.wald_panel(path, hr, lr)
    check_png(path, width=(1200, 1550), height=(260, 340))
