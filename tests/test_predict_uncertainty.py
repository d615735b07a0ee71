"""predict.py --uncertainty / --calibrate and test.py --calibrate: the sigma band (0 for tsharp, ~0 for an
equivariant model, > 0 for a learned one, 0 for an ensemble of identical checkpoints), the interval bands
(lo <= lst <= hi, width 2 k q for a constant sigma), flag errors, and the coverage table of test.py."""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

import data
import geotiff
import groklst
import layout
import predict

X0, Y0 = 500000.0, 4300000.0
X4 = ["data.scale=4"]
TINY = ["model.num_feats=4", "model.reduction=4", "model.num_stages=1", "model.n_resblocks=1", "data.scale=4"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 320 x 128 synthetic scene at 30 m (its truth; more rows than one 256-row output strip), its 4-fold
    LR LST at 120 m and the guidance."""
    d = tmp_path_factory.mktemp("unc_scene")
    hr, gui = layout.synth_scene(320, 128, seed=4)
    geotiff.write_geotiff(str(d / "lst.tif"), data.block_mean(hr, 4), geotiff.make_geo(X0, Y0, 120.0), ["lst"])
    geotiff.write_geotiff(str(d / "bands.tif"), gui, geotiff.make_geo(X0, Y0, 30.0), list(data.BANDS))
    # the same LST on a grid shifted by a third of its pixel: not aligned with the guidance grid
    geotiff.write_geotiff(str(d / "lst_shifted.tif"), data.block_mean(hr, 4), geotiff.make_geo(X0 + 40.0, Y0, 120.0), ["lst"])
    return {"dir": d, "lst": str(d / "lst.tif"), "shifted": str(d / "lst_shifted.tif"), "guidance": [str(d / "bands.tif")],
            "truth": hr}


def run(config, scene, out, **kw):
    kw.setdefault("overrides", X4)
    kw.setdefault("guidance", scene["guidance"])
    kw.setdefault("progress", False)
    return predict.predict(config(kw.pop("name")), kw.pop("lst", scene["lst"]), str(out), **kw)


def bands(path):
    array, info = geotiff.read_geotiff(str(path))
    return array, info["bands"]


def test_sigma_band_of_a_sharpener_without_trees_is_zero(scene, tmp_path, config):
    run(config, scene, tmp_path / "plain.tif", name="demo_tsharp_x8")
    run(config, scene, tmp_path / "sigma.tif", name="demo_tsharp_x8", uncertainty_band=True)
    plain, _ = bands(tmp_path / "plain.tif")
    both, names = bands(tmp_path / "sigma.tif")
    assert names == ["lst", "sigma"] and both.shape == (2, 320, 128)
    assert np.array_equal(both[0], plain[0])  # band 1 is the prediction as without --uncertainty
    assert np.array_equal(both[1], np.zeros_like(both[1]))


def test_calibrated_interval_bands(scene, tmp_path, config, capsys):
    r = run(config, scene, tmp_path / "cal.tif", name="demo_tsharp_x8", calibrate=0.1, consistency="bicubic")
    out, names = bands(tmp_path / "cal.tif")
    lst, sigma, lo, hi = out
    assert names == ["lst", "sigma", "lo", "hi"]
    cal = r["calibration"]
    printed = capsys.readouterr().out
    assert f"q {cal['q']:.3f} K" in printed and f"transfer {cal['transfer']:.3f} (variogram)" in printed
    assert cal["n"] == 2560 and cal["scale"] == 4 and 0 < cal["transfer"] < 1  # 80 x 32 coarse pixels
    assert (lo <= lst).all() and (lst <= hi).all()
    # sigma 0 everywhere: one width, 2 k q, around the prediction
    assert np.allclose(hi - lst, lst - lo, atol=1e-4)
    assert np.allclose(hi - lo, 2 * cal["transfer"] * cal["q"], atol=1e-3)
    # a given transfer factor scales the same q
    given = run(config, scene, tmp_path / "given.tif", name="demo_tsharp_x8", calibrate=0.1, consistency="bicubic",
                transfer="0.5")["calibration"]
    g, _ = bands(tmp_path / "given.tif")
    assert given["q"] == cal["q"] and given["transfer"] == 0.5
    assert np.allclose(g[3] - g[2], cal["q"], atol=1e-3)
    # the interval holds roughly its share of the truth here (one small scene: not a coverage test)
    inside = float(((scene["truth"] >= lo) & (scene["truth"] <= hi)).mean())
    assert 0.7 < inside <= 1.0


def test_tta_sigma_of_bicubic_is_zero_and_of_a_learned_model_positive(scene, tmp_path, config):
    run(config, scene, tmp_path / "bicubic.tif", name="bicubic_x8", overrides=X4, guidance=[], uncertainty_band=True)
    b, _ = bands(tmp_path / "bicubic.tif")
    assert np.nanmax(b[1]) < 1e-3  # bicubic commutes with the flips and rotations: float rounding only
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": groklst.build_model(groklst.load_config(config("mocolsk_x8"), TINY)).state_dict()}, ckpt)
    run(config, scene, tmp_path / "tiny.tif", name="mocolsk_x8", overrides=TINY, checkpoint=str(ckpt),
        uncertainty_band=True, lr_tile=16, lr_overlap=4)
    m, names = bands(tmp_path / "tiny.tif")
    assert names == ["lst", "sigma"] and np.isfinite(m).all()
    assert (m[1] >= 0).all() and float(m[1].mean()) > 1e-3
    # two copies of one checkpoint: a deep ensemble without spread, its mean the single model's prediction
    shutil.copy(ckpt, tmp_path / "copy.pth")
    run(config, scene, tmp_path / "plain.tif", name="mocolsk_x8", overrides=TINY, checkpoint=str(ckpt), lr_tile=16,
        lr_overlap=4, amp="none")
    run(config, scene, tmp_path / "ensemble.tif", name="mocolsk_x8", overrides=TINY, checkpoint=[str(ckpt),
        str(tmp_path / "copy.pth")], uncertainty_band=True, lr_tile=16, lr_overlap=4)
    e, _ = bands(tmp_path / "ensemble.tif")
    plain, _ = bands(tmp_path / "plain.tif")
    assert np.array_equal(e[1], np.zeros_like(e[1]))
    assert np.allclose(e[0], plain[0], atol=1e-4)


def test_tree_spread_and_own_grid(scene, tmp_path, config):
    pytest.importorskip("sklearn")
    run(config, scene, tmp_path / "dms.tif", name="demo_dms_x8", overrides=X4 + ["model.n_estimators=4", "model.window=0"],
        uncertainty_band=True)
    d, _ = bands(tmp_path / "dms.tif")
    assert (d[1] >= 0).all() and float(d[1].max()) > 0
    # an LST on its own grid: sigma of the trees through the footprint, and 0 for tsharp
    run(config, scene, tmp_path / "shifted_dms.tif", name="demo_dms_x8", overrides=X4 + ["model.n_estimators=4", "model.window=0"],
        lst=scene["shifted"], uncertainty_band=True)
    run(config, scene, tmp_path / "shifted_tsharp.tif", name="demo_tsharp_x8", lst=scene["shifted"], uncertainty_band=True)
    sd, names = bands(tmp_path / "shifted_dms.tif")
    st, _ = bands(tmp_path / "shifted_tsharp.tif")
    ok = np.isfinite(sd[0])
    assert names == ["lst", "sigma"] and ok.mean() > 0.8
    assert (sd[1][ok] >= 0).all() and float(sd[1][ok].max()) > 0 and np.array_equal(np.isnan(sd[1]), ~ok)
    assert np.array_equal(st[1][np.isfinite(st[0])], np.zeros(int(np.isfinite(st[0]).sum()), np.float32))


def test_flag_errors(scene, tmp_path, config):
    from errors import ConfigError
    with pytest.raises(ConfigError, match="aligned grids only"):
        run(config, scene, tmp_path / "x.tif", name="demo_tsharp_x8", lst=scene["shifted"], calibrate=0.1)
    with pytest.raises(ConfigError, match="transfer 'big'"):
        run(config, scene, tmp_path / "x.tif", name="demo_tsharp_x8", calibrate=0.1, transfer="big")
    with pytest.raises(SystemExit, match="--calibrate 1.5: the miscoverage alpha"):
        predict.main([config("demo_tsharp_x8"), "data.scale=4", "--lst", scene["lst"], "--guidance", *scene["guidance"],
                      "--out", str(tmp_path / "y.tif"), "--calibrate", "1.5"])
    assert not (tmp_path / "y.tif").exists()


def test_test_py_coverage_table(demo_root, tmp_path, config, root, capsys):
    spec = importlib.util.spec_from_file_location("groklst_test_script", os.path.join(root, "test.py"))
    script = importlib.util.module_from_spec(spec)  # test.py: the standard library has a `test` package
    spec.loader.exec_module(script)
    out = tmp_path / "tsharp.json"
    figure = tmp_path / "uncertainty.png" if importlib.util.find_spec("matplotlib") else None
    script.main([config("demo_tsharp_x8"), f"data.root={demo_root}", "consistency=bicubic", "--calibrate", "--out", str(out)]
                + (["--uncertainty-figure", str(figure)] if figure else []))
    printed = capsys.readouterr().out
    stored = json.loads(out.read_text())
    report = stored["uncertainty"]
    assert report["source"] == "none" and report["alpha"] == 0.1
    assert sorted(report["per_image"]) == sorted(stored["per_image"])  # every image of the test split
    rows = report["intervals"]
    assert len(rows) == 4 and all(0.0 < row["coverage"] <= 1.0 and row["width"] > 0 for row in rows.values())
    none, variogram = rows["scene-anchored q, no transfer"], rows["scene-anchored q, variogram transfer"]
    assert variogram["width"] < none["width"] and variogram["coverage"] <= none["coverage"]
    assert report["transfer_measured_here"] > 0 and "| scene-anchored q, transfer calibrated on val |" in printed
    if figure:  # prediction, sigma, |error| and the pixels outside the interval of the split's first image
        from matplotlib.image import imread
        pixels = imread(str(figure))
        assert pixels.shape[1] > 3 * pixels.shape[0] and pixels[..., :3].mean(-1).std() > 0.05


PGDM_TINY = ["data.scale=4", "model.ch_base=8", "model.ch_mult=[1,2]", "model.attn_levels=[]"]


def test_sigma_of_pgdm_is_the_spread_of_its_draws(tmp_path, config, capsys):
    """predict.py --uncertainty with a tiny untrained PGDM on a 64 x 64 scene (one unpadded tile): bands 1 and 2 are
    engine.downscale's mean and sigma of its draws (source 'draws'); one draw warns and has sigma 0."""
    import engine
    hr, gui = layout.synth_scene(64, 64, seed=5)
    lr = data.block_mean(hr, 4)
    geotiff.write_geotiff(str(tmp_path / "lst.tif"), lr, geotiff.make_geo(X0, Y0, 120.0), ["lst"])
    geotiff.write_geotiff(str(tmp_path / "bands.tif"), gui, geotiff.make_geo(X0, Y0, 30.0), list(data.BANDS))
    small = {"lst": str(tmp_path / "lst.tif"), "guidance": [str(tmp_path / "bands.tif")]}
    cfg = groklst.load_config(config("pgdm_x8"), PGDM_TINY + ["model.num_samples=3"])
    torch.manual_seed(0)
    model = groklst.build_model(cfg).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "tiny.pth")
    run(config, small, tmp_path / "draws.tif", name="pgdm_x8", overrides=PGDM_TINY + ["model.num_samples=3"],
        checkpoint=str(tmp_path / "tiny.pth"), uncertainty_band=True, lr_tile=16, lr_overlap=0, progress=True)
    printed = capsys.readouterr().err
    assert "sigma from draws" in printed and "amp none" in printed  # the spread path runs float32
    out, names = bands(tmp_path / "draws.tif")
    with torch.no_grad():
        mean, sigma = engine.downscale(model, groklst.build_normalizer(cfg), torch.from_numpy(lr)[None, None],
                                       torch.from_numpy(gui)[None], spread=True)
    assert names == ["lst", "sigma"] and np.isfinite(out).all()
    assert np.allclose(out[0], mean[0, 0].numpy(), atol=1e-3) and np.allclose(out[1], sigma[0, 0].numpy(), atol=1e-4)
    assert (out[1] >= 0).all() and float(out[1].max()) > 0
    run(config, small, tmp_path / "one.tif", name="pgdm_x8", overrides=PGDM_TINY, checkpoint=str(tmp_path / "tiny.pth"),
        uncertainty_band=True, lr_tile=16, lr_overlap=0)
    assert "averages 1 draw: sigma is 0" in capsys.readouterr().err
    one, _ = bands(tmp_path / "one.tif")
    assert np.array_equal(one[1], np.zeros_like(one[1]))


def test_test_py_uncertainty_of_pgdm(demo_root, tmp_path, config, root, tiny_config, capsys):
    """test.py --calibrate with a tiny untrained PGDM: sigma from its draws, and the raw Gaussian interval
    (mean +- 1.645 sigma) first in the table."""
    spec = importlib.util.spec_from_file_location("groklst_test_script", os.path.join(root, "test.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = tiny_config(tmp_path, demo_root, {"name": "pgdm", "ch_base": 8, "ch_mult": [1, 2], "attn_levels": []})
    torch.manual_seed(0)
    torch.save({"model": groklst.build_model(groklst.load_config(cfg)).state_dict()}, tmp_path / "tiny.pth")
    out = tmp_path / "pgdm.json"
    script.main([cfg, str(tmp_path / "tiny.pth"), "model.num_samples=2", "consistency=bicubic", "--calibrate",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())["uncertainty"]
    assert report["source"] == "draws" and "sigma from draws" in printed
    assert all(row["sigma_mean"] > 0 for row in report["per_image"].values())
    rows = report["intervals"]
    raw = rows["sigma as it is, Gaussian (no calibration)"]
    assert list(rows)[0] == "sigma as it is, Gaussian (no calibration)" and raw["factor"] == "z 1.645"
    assert 0.0 <= raw["coverage"] <= 1.0 and raw["width"] > 0 and len(rows) == 6
