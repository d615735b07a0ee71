"""predict.py and test.py lose nothing and say what is wrong: outputs never replace inputs, existing outputs
need --overwrite, full disks and bad flags are one `error:` line, empty outputs fail, killed runs' temp
files are cleaned, reruns skip finished scenes, guidance far from the training statistics is a warning,
brightness temperature stays labelled so, sharpeners that cannot fit; and the output's overviews."""
import errno
import json
import os
import resource
import signal

import numpy as np
import pytest
import tifffile
from test_predict import TINY, X0, Y0, tiny_checkpoint, write_guidance, write_lst

import data
import engine
import figures
import geotiff
import groklst
import layout
import predict
import sharpeners


@pytest.fixture
def small(tmp_path):
    """A 24 x 28 LR scene at 120 m (x4) and its 30 m guidance (nir, dem, red, ndvi named)."""
    hr, gui = layout.synth_scene(96, 112, seed=51)
    bands = ["nir", "dem", "red", "ndvi"]
    return {"lst": write_lst(tmp_path / "lst.tif", data.block_mean(hr, 4), geotiff.make_geo(X0, Y0, 120.0)),
            "guidance": write_guidance(tmp_path / "gui.tif", gui[[data.BANDS.index(b) for b in bands]], bands,
                                       geotiff.make_geo(X0, Y0, 30.0)),
            "gui": gui, "hr": hr, "bands": bands}


def bicubic(config, small, out, *extra):
    predict.main([config("bicubic_x4"), "--lst", small["lst"], "--out", str(out), "--lr-tile", "8", *extra])


# --------------------------------------------------------------------------- 1: outputs never replace inputs


def test_output_that_is_an_input_is_refused(small, tmp_path, config):
    before = {p: open(p, "rb").read() for p in (small["lst"], small["guidance"])}
    link = tmp_path / "link.tif"
    os.symlink(small["lst"], link)
    hard = tmp_path / "hard.tif"
    os.link(small["guidance"], hard)
    tsharp = [config("demo_tsharp_x8"), "data.scale=4", "data.guidance_bands=[ndvi]", "--lst", small["lst"],
              "--guidance", small["guidance"], "--lr-tile", "8"]
    for argv in ([config("bicubic_x4"), "--lst", small["lst"], "--out", small["lst"]],
                 [config("bicubic_x4"), "--lst", small["lst"], "--out", str(link), "--overwrite"],  # through a symlink
                 [*tsharp, "--out", small["guidance"]],
                 [*tsharp, "--out", str(hard), "--overwrite"]):                                    # a hard link
        with pytest.raises(SystemExit, match="is the input .*an output never replaces an input"):
            predict.main(argv)
    assert {p: open(p, "rb").read() for p in before} == before

    # many scenes written into the folder that holds them, under the same names: refused before any scene runs
    listing = tmp_path / "scenes.txt"
    (tmp_path / "a.tif").write_bytes(before[small["lst"]])
    listing.write_text("lst.tif\na.tif\n")
    with pytest.raises(SystemExit, match="scene a's output .*a.tif is the input .*a.tif"):
        predict.main([config("bicubic_x4"), "--scenes", str(listing), "--out-dir", str(tmp_path), "--overwrite"])
    assert (tmp_path / "a.tif").read_bytes() == before[small["lst"]] and not (tmp_path / f"{tmp_path.name}.tif").exists()


def test_existing_output_needs_overwrite(small, tmp_path, config):
    out = tmp_path / "out.tif"
    bicubic(config, small, out)
    first = out.read_bytes()
    out.write_bytes(b"precious")
    with pytest.raises(SystemExit, match="out.tif: exists; give --overwrite to replace it"):
        bicubic(config, small, out)
    assert out.read_bytes() == b"precious"
    bicubic(config, small, out, "--overwrite")
    assert out.read_bytes() == first


# --------------------------------------------------------------------------- 2: one error line


def _limit_file_size(limit):
    def limit_writes():  # writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


def one_error_line(stderr):
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.slow
def test_file_size_limit_is_one_error_line(small, tmp_path, config, run_script):
    out = tmp_path / "out.tif"
    run = run_script(["predict.py", config("bicubic_x4"), "--lst", small["lst"], "--out", str(out), "--lr-tile", "8"],
                     preexec_fn=_limit_file_size(20000))
    line = one_error_line(run.stderr)
    assert run.returncode == 1 and "writing the GeoTIFF failed (File too large)" in line and str(out) in line
    assert sorted(os.listdir(tmp_path)) == ["gui.tif", "lst.tif"]  # no output, no temp file


def test_full_disk_is_one_error_line(small, tmp_path, config, monkeypatch):
    out = tmp_path / "out.tif"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SystemExit, match="No space left on device.*nothing was written there; free some space"):
        bicubic(config, small, out)
    assert sorted(os.listdir(tmp_path)) == ["gui.tif", "lst.tif"]  # no output, no temp file


def test_full_disk_while_test_writes_its_json(demo_root, tmp_path, config, monkeypatch, capsys):
    import test
    out = tmp_path / "metrics.json"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SystemExit, match="metrics.json: writing the metrics failed \\(No space left on device\\)"):
        test.main([config("demo_bicubic_x8"), f"data.root={demo_root}", "--out", str(out)])
    assert "| bicubic x8 |" in capsys.readouterr().out and not out.exists()  # the table was printed first


@pytest.mark.parametrize("flags, match", [
    (["--threads", "-1"], "--threads -1: give a number of CPU threads >= 1"),
    (["--threads", "0"], "--threads 0: give a number"),
    (["--lr-tile", "0"], "--lr-tile 0: the tile side is in LR pixels and must be >= 1"),
    (["--lr-overlap", "-2"], "--lr-overlap -2: must be >= 0 and below --lr-tile 8"),
    (["--lr-overlap", "8"], "--lr-overlap 8: must be >= 0 and below --lr-tile 8"),
    (["--batch", "0"], "--batch 0: tiles per forward must be >= 1"),
])
def test_bad_flags_name_themselves(small, tmp_path, config, flags, match):
    with pytest.raises(SystemExit, match=match):
        bicubic(config, small, tmp_path / "out.tif", *flags)
    assert not (tmp_path / "out.tif").exists()


# --------------------------------------------------------------------------- 3: empty outputs


def test_all_nan_inputs_fail_unless_allowed(small, tmp_path, config, capsys):
    nan_lst = write_lst(tmp_path / "nan.tif", np.full((24, 28), np.nan, np.float32), geotiff.make_geo(X0, Y0, 120.0))
    argv = [config("bicubic_x4"), "--lst", nan_lst, "--lr-tile", "8"]
    with pytest.raises(SystemExit, match="nan.tif: no valid LST pixel .*--allow-empty"):
        predict.main([*argv, "--out", str(tmp_path / "a.tif")])
    assert not (tmp_path / "a.tif").exists()
    predict.main([*argv, "--out", str(tmp_path / "a.tif"), "--allow-empty"])
    assert np.isnan(tifffile.imread(tmp_path / "a.tif")).all()

    gui = small["gui"][[data.BANDS.index(b) for b in small["bands"]]].copy()
    gui[2] = np.nan  # red: used by the tiny model
    empty_gui = write_guidance(tmp_path / "gui_nan.tif", gui, small["bands"], geotiff.make_geo(X0, Y0, 30.0))
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth", config("mocolsk_x4"))
    with pytest.raises(SystemExit, match="guidance band 'red' is all no-data"):
        predict.main([config("mocolsk_x4"), *TINY, "--checkpoint", ckpt, "--lst", small["lst"], "--guidance", empty_gui,
                      "--out", str(tmp_path / "b.tif"), "--lr-tile", "8"])
    # no pixel where both are valid: found while writing, nothing left behind
    half = small["gui"][[data.BANDS.index(b) for b in small["bands"]]].copy()
    half[:, :, :56] = np.nan
    lr = data.block_mean(small["hr"], 4)
    lr[:, 14:] = np.nan
    disjoint = write_lst(tmp_path / "left.tif", lr, geotiff.make_geo(X0, Y0, 120.0))
    half_gui = write_guidance(tmp_path / "gui_half.tif", half, small["bands"], geotiff.make_geo(X0, Y0, 30.0))
    with pytest.raises(SystemExit, match="every output pixel is no-data .*nothing written; --allow-empty"):
        predict.main([config("mocolsk_x4"), *TINY, "--checkpoint", ckpt, "--lst", disjoint, "--guidance", half_gui,
                      "--out", str(tmp_path / "c.tif"), "--lr-tile", "8"])
    assert not (tmp_path / "c.tif").exists() and not [f for f in os.listdir(tmp_path) if ".tmp" in f]

    listing = tmp_path / "scenes.txt"
    listing.write_text(f"{small['lst']}\n{nan_lst}\n")
    capsys.readouterr()
    with pytest.raises(SystemExit, match="1 of 2 scenes failed: nan"):
        predict.main([config("bicubic_x4"), "--scenes", str(listing), "--out-dir", str(tmp_path / "out"), "--lr-tile", "8"])
    assert "error: scene nan: " in capsys.readouterr().err and os.listdir(tmp_path / "out") == [tmp_path.name + ".tif"]


# --------------------------------------------------------------------------- 4: killed runs, reruns


def test_stale_temp_files_are_removed_and_finished_scenes_skipped(small, tmp_path, config, capsys):
    out = tmp_path / "out.tif"
    dead = tmp_path / "out.tif.tmp999999999.0badf00d"   # a pid above any pid_max: no such process
    alive = tmp_path / f"out.tif.tmp{os.getpid()}.0badf00d"
    other = tmp_path / "other.tif.tmp999999999.0badf00d"
    for f in (dead, alive, other):
        f.write_bytes(b"x" * 1000)
    bicubic(config, small, out)
    assert not dead.exists() and alive.exists() and other.exists()
    assert f"removed {dead}" in capsys.readouterr().err

    names = [f"s{i}" for i in range(3)]
    for n in names:
        os.symlink(small["lst"], tmp_path / f"{n}.tif")
    listing = tmp_path / "scenes.txt"
    listing.write_text("".join(f"{n}.tif\n" for n in names))
    argv = [config("bicubic_x4"), "--scenes", str(listing), "--out-dir", str(tmp_path / "res"), "--lr-tile", "8"]
    predict.main(argv)
    os.remove(tmp_path / "res" / "s1.tif")
    stamps = {n: os.stat(tmp_path / "res" / f"{n}.tif").st_mtime_ns for n in ("s0", "s2")}
    capsys.readouterr()
    predict.main(argv)  # a rerun: only the missing scene is computed
    printed = capsys.readouterr().out
    assert "scene s0: skipped (exists)" in printed and "scene s2: skipped (exists)" in printed
    assert "scene s1: " in printed and "scenes: 1 done, 0 failed, 1 process(es), 2 skipped" in printed
    assert {n: os.stat(tmp_path / "res" / f"{n}.tif").st_mtime_ns for n in ("s0", "s2")} == stamps
    predict.main([*argv, "--overwrite"])
    assert "scenes: 3 done, 0 failed, 1 process(es)\n" in capsys.readouterr().out


# --------------------------------------------------------------------------- 5: guidance against the training statistics


def test_guidance_far_from_training_statistics_warns(small, tmp_path, config, capsys):
    gui = small["gui"][[data.BANDS.index(b) for b in small["bands"]]].copy()
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth", config("mocolsk_x4"))
    argv = [config("mocolsk_x4"), *TINY, "--checkpoint", ckpt, "--lst", small["lst"], "--lr-tile", "8"]
    predict.main([*argv, "--guidance", small["guidance"], "--out", str(tmp_path / "a.tif")])
    assert "warning:" not in capsys.readouterr().err  # the synthetic scene is within the GrokLST statistics
    gui[[0, 2]] *= 10000  # nir and red as scaled integers (another reflectance convention)
    scaled = write_guidance(tmp_path / "gui_dn.tif", gui, small["bands"], geotiff.make_geo(X0, Y0, 30.0))
    predict.main([*argv, "--guidance", scaled, "--out", str(tmp_path / "b.tif")])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    stats = groklst.load_config(config("mocolsk_x4"))["norm"]["guidance"]["stats"]
    assert len(warnings) == 2 and "band 'nir'" in warnings[0] and "band 'red'" in warnings[1]
    nir = gui[0][np.isfinite(gui[0])].astype(np.float64)
    assert f"scene mean {nir.mean():.4g}, std {nir.std():.4g}" in warnings[0]
    assert f"trained on mean {stats['nir']['mean']:.4g}, std {stats['nir']['std']:.4g}" in warnings[0]
    # sharpeners work in physical units and have no training statistics: no warning
    predict.main([config("demo_tsharp_x8"), "data.scale=4", "data.guidance_bands=[ndvi,nir]", "--lst", small["lst"],
                  "--guidance", scaled, "--out", str(tmp_path / "c.tif"), "--lr-tile", "8"])
    assert "warning:" not in capsys.readouterr().err


# --------------------------------------------------------------------------- 6: brightness temperature


@pytest.mark.parametrize("band, label", [("bt", "brightness temperature (K)"),
                                         ("bt_emissivity_corrected", "brightness temperature (K)"),
                                         ("lst", "LST (K)"), (None, "LST (K)")])
def test_brightness_temperature_keeps_its_label(small, tmp_path, config, monkeypatch, band, label):
    lst = str(tmp_path / "in.tif")
    geotiff.write_geotiff(lst, data.block_mean(small["hr"], 4), geotiff.make_geo(X0, Y0, 120.0),
                          band_names=None if band is None else [band])
    drawn = {}
    monkeypatch.setattr(figures, "write_png", lambda path, array, title="", label="": drawn.update(label=label))
    predict.main([config("bicubic_x4"), "--lst", lst, "--out", str(tmp_path / "out.tif"), "--lr-tile", "8", "--png"]
                 if figures_available() else
                 [config("bicubic_x4"), "--lst", lst, "--out", str(tmp_path / "out.tif"), "--lr-tile", "8"])
    assert geotiff.read_header(str(tmp_path / "out.tif"))["bands"] == [band if band and band.startswith("bt") else "lst"]
    if figures_available():
        assert drawn["label"] == label
    assert figures.quantity_label(band) == label


def figures_available():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


# --------------------------------------------------------------------------- 7: sharpeners that cannot fit


class CannotFit(data.DataError):
    """Stands for sharpeners.CannotFit (a DataError) on a branch where it does not exist yet."""


def test_sharpener_that_cannot_fit_is_one_error_line(small, tmp_path, config, monkeypatch):
    def refuse(self, lr_lst, hr_guidance):
        raise CannotFit("model 'tsharp': 3 valid coarse pixels, needs at least 20")
    monkeypatch.setattr(sharpeners.Sharpener, "fit", refuse)
    with pytest.raises(SystemExit, match=r"^error: .*lst.tif: model 'tsharp' cannot fit this scene: model 'tsharp': 3 "
                                         r"valid coarse pixels, needs at least 20$"):
        predict.main([config("demo_tsharp_x8"), "data.scale=4", "data.guidance_bands=[ndvi]", "--lst", small["lst"],
                      "--guidance", small["guidance"], "--out", str(tmp_path / "out.tif"), "--lr-tile", "8"])
    assert not (tmp_path / "out.tif").exists()


def test_test_py_skips_an_image_a_sharpener_cannot_fit(demo_root, tmp_path, config, monkeypatch, capsys):
    """The image gets a NaN row, left out of the means; the reason is printed and stored in the JSON; the other
    images' numbers are those of a run where nothing failed."""
    import test
    # three bands: the test tiles' 8 x 8 coarse pixels fit 4 parameters (10 bands would need 110 pixels)
    argv = [config("demo_linreg_x8"), f"data.root={demo_root}", "data.guidance_bands=[dem,red,nir]"]
    test.main([*argv, "--out", str(tmp_path / "all.json")])
    full = json.loads((tmp_path / "all.json").read_text())
    victim = sorted(full["per_image"])[1]
    real = sharpeners.Sharpener.fit

    def picky(self, lr_lst, hr_guidance):  # the victim is recognised by its LR LST
        if abs(float(np.nanmean(np.asarray(lr_lst))) - victim_mean) < 1e-4:
            raise CannotFit("model 'linreg': 5 valid coarse pixels, needs at least 110")
        return real(self, lr_lst, hr_guidance)

    ds = groklst.build_dataset(groklst.load_config(argv[0], argv[1:]), "test")
    victim_mean = float(np.nanmean(ds[ds.names.index(victim)]["lr_lst"].numpy()))
    monkeypatch.setattr(sharpeners.Sharpener, "fit", picky)
    capsys.readouterr()
    test.main([*argv, "--out", str(tmp_path / "skip.json")])
    assert f"skipped {victim} (NaN row, not in the means): model 'linreg': 5 valid" in capsys.readouterr().out
    got = json.loads((tmp_path / "skip.json").read_text())
    assert got["skipped"] == {victim: "model 'linreg': 5 valid coarse pixels, needs at least 110"}
    assert got["images"] == full["images"] - 1 and np.isnan(got["per_image"][victim]["RMSE"])
    others = [m for n, m in full["per_image"].items() if n != victim]
    for k, v in got["metrics"].items():
        assert v == pytest.approx(np.mean([m[k] for m in others]), rel=1e-12, abs=1e-12), k
    assert full["skipped"] == {}


def test_evaluate_numbers_do_not_change_with_on_error(demo_root, config):
    cfg = groklst.load_config(config("demo_bicubic_x8"), [f"data.root={demo_root}"])
    model, normalizer, ds = groklst.build_model(cfg), groklst.build_normalizer(cfg), groklst.build_dataset(cfg, "test")
    plain = engine.evaluate(model, normalizer, ds, "cpu")
    seen = []
    assert engine.evaluate(model, normalizer, ds, "cpu", on_error=lambda *a: seen.append(a)) == plain and not seen


# --------------------------------------------------------------------------- overviews


def test_output_has_overviews_of_block_means(tmp_path):
    rng = np.random.default_rng(3)
    H, W = 700, 530
    a = (290 + rng.standard_normal((H, W))).astype(np.float32)
    a[100:180, 40:77] = np.nan
    a[600:, 500:] = np.nan
    path = str(tmp_path / "o.tif")
    geo = geotiff.make_geo(X0, Y0, 30.0)
    geotiff.write_geotiff_rows(path, (H, W), (a[r:r + 256] for r in range(0, H, 256)), geo, nodata=-9999.0,
                               band_name="lst")
    assert os.listdir(tmp_path) == ["o.tif"]  # the overviews' temp file is gone
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert [p.shape for p in pages] == [(700, 530), (350, 265), (175, 133)]  # 2, 4; 175 < 256: the last
        assert [p.subfiletype for p in pages] == [0, 1, 1] and all(p.is_tiled for p in pages)
        for f, page in zip((2, 4), pages[1:]):
            got = page.asarray()
            for i, j in ((0, 0), (30, 20), (55, 12), (page.shape[0] - 1, page.shape[1] - 1), (300 // f, 520 // f)):
                block = a[i * f:(i + 1) * f, j * f:(j + 1) * f]  # partial at the last row / column
                want = np.nanmean(block) if np.isfinite(block).any() else -9999.0
                assert got[i, j] == pytest.approx(want, abs=1e-4), (f, i, j)
            assert (got == -9999.0).sum() == np.isnan(data.block_mean(np.pad(a, ((0, -H % f), (0, -W % f)),
                                                                            constant_values=np.nan), f, 1.0)).sum()
    array, info = geotiff.read_geotiff(path)  # page 0, as before
    assert array.shape == (1, H, W) and np.array_equal(np.isnan(array[0]), np.isnan(a)) and info["bands"] == ["lst"]
    np.testing.assert_array_equal(array[0][np.isfinite(a)], a[np.isfinite(a)])
    assert geotiff.overview_factors((255, 100)) == [] and geotiff.overview_factors((256, 10)) == [2]
