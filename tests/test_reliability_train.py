"""Nothing silently wrong, nothing lost (issue #15), on the training and data-reading side: every case runs
through the real command line (train.py, test.py, groklst.py stats) and checks the exit code, the one
`error:` line naming the file / key / value at fault, and that nothing on disk was lost or half-written."""
import copy
import errno
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch
import yaml

import data
import geotiff
import layout
import locks
import prepare
import train
from checkpoints import write_checkpoint
from errors import ConfigError, DataError

SRCNN = {"name": "srcnn"}
TINY_MOCOLSK = {"name": "mocolsk", "num_feats": 8, "reduction": 4, "num_stages": 1, "n_resblocks": 1}


@pytest.fixture
def write_config(tiny_config):
    """write_config(tmp_path, data_root, model=SRCNN, **train keys): a 2-iteration config."""
    return lambda tmp_path, data_root, model=SRCNN, **train_keys: tiny_config(
        tmp_path, data_root, model, **dict(dict(max_iters=2), **train_keys))


@pytest.fixture
def run(run_script):
    return run_script


def fails(out, *needles):
    """A user error: exit code 1, no traceback, one `error:` line that holds every needle."""
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def succeeds(out):
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def log_records(wd):
    return [json.loads(line) for line in open(os.path.join(wd, "log.jsonl"))]


def logged_iters(wd):
    """(iterations of the loss records, iterations of the validation records) of log.jsonl."""
    records = log_records(wd)
    return [r["iter"] for r in records if "loss" in r], [r["iter"] for r in records if "split" in r]


def copy_demo(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root, ignore=shutil.ignore_patterns(".cache"))
    return root


def first(root, split):
    return data.read_split(str(root), split)[0]


# --------------------------------------------------------------------------- work dirs and resume


@pytest.mark.slow
def test_work_dir_of_another_run_is_refused_then_overwritten(tmp_path, demo_root, run, write_config):
    cfg = write_config(tmp_path, demo_root, max_iters=4, val_interval=4)
    wd = tmp_path / "run"
    succeeds(run(["train.py", cfg, f"work_dir={wd}", "--no-test"]))
    best = (wd / "best.pth").read_bytes()
    fails(run(["train.py", cfg, f"work_dir={wd}", "train.max_iters=2", "--no-test"]),
          str(wd), "best.pth", "--resume", "work_dir", "--overwrite")
    assert (wd / "best.pth").read_bytes() == best and logged_iters(wd) == ([1, 2, 3, 4], [4])
    out = succeeds(run(["train.py", cfg, f"work_dir={wd}", "train.max_iters=2", "train.val_interval=2", "--overwrite",
                        "--no-test"]))
    assert "--overwrite: deleted" in out.stdout
    assert logged_iters(wd) == ([1, 2], [2])  # nothing of the old run mixed in
    assert torch.load(wd / "best.pth", weights_only=True)["iter"] == 2


@pytest.mark.slow
def test_resume_drops_later_log_records_and_refuses_a_changed_config(tmp_path, demo_root, run, write_config):
    cfg = write_config(tmp_path, demo_root, max_iters=2)
    wd = tmp_path / "run"
    succeeds(run(["train.py", cfg, f"work_dir={wd}", "--no-test"]))
    shutil.copy(wd / "last.pth", tmp_path / "iter2.pth")
    (wd / "last.pth.tmp999.deadbeef").write_bytes(b"half a checkpoint of a crashed save")
    with open(wd / "log.jsonl", "a") as f:
        f.write('{"iter": 3, "lo')  # the torn last line of a killed run
    succeeds(run(["train.py", cfg, f"work_dir={wd}", "train.max_iters=4", "--resume", "--no-test"]))  # allowed change
    assert not any(".tmp" in f for f in os.listdir(wd))  # the crashed save's temp file is gone
    assert logged_iters(wd) == ([1, 2, 3, 4], [2, 4])  # validation at the end of each run
    # resuming again from iteration 2: records 3 and 4 are written once, not twice
    succeeds(run(["train.py", cfg, f"work_dir={wd}", "train.max_iters=4", "--resume", str(tmp_path / "iter2.pth"),
                  "--no-test"]))
    assert logged_iters(wd) == ([1, 2, 3, 4], [2, 4])
    last, log = (wd / "last.pth").read_bytes(), (wd / "log.jsonl").read_text()
    line = fails(run(["train.py", cfg, f"work_dir={wd}", "train.max_iters=6", "train.lr=0.5", "data.hr_crop=16",
                      "--resume", "--no-test"]), "data.hr_crop: 32 -> 16", "train.lr: 0.001 -> 0.5")
    assert "max_iters" not in line
    assert (wd / "last.pth").read_bytes() == last and (wd / "log.jsonl").read_text() == log


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["empty", "half", "weights only"])
def test_unusable_checkpoint_is_one_error_line(tmp_path, demo_root, cut, run, write_config):
    cfg = write_config(tmp_path, demo_root)
    wd = tmp_path / "run"
    wd.mkdir()
    torch.save({"model": {"w": torch.zeros(1000)}, "iter": 2}, wd / "last.pth")
    content = (wd / "last.pth").read_bytes()
    if cut != "weights only":
        (wd / "last.pth").write_bytes(b"" if cut == "empty" else content[:len(content) // 2])
    out = run(["train.py", cfg, f"work_dir={wd}", "--resume", "--no-test"])
    if cut == "weights only":
        fails(out, str(wd / "last.pth"), "no optimizer, scaler, best_rmse", "--init")
    else:
        fails(out, str(wd / "last.pth"), "truncated or not a checkpoint")


def _file_size_limit(limit):
    def limit_writes():  # writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


@pytest.mark.slow
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, demo_root, run, write_config):
    cfg = write_config(tmp_path, demo_root, max_iters=2, val_interval=2)
    wd = tmp_path / "run"
    succeeds(run(["train.py", cfg, f"work_dir={wd}", "--no-test"]))
    before = {f: (wd / f).read_bytes() for f in ("last.pth", "best.pth")}
    limit = len(before["last.pth"]) // 2
    out = run(["train.py", cfg, f"work_dir={wd}", "train.max_iters=4", "train.val_interval=4", "--resume", "--no-test"],
              preexec_fn=_file_size_limit(limit))
    line = fails(out, "saving the checkpoint failed", "is intact", "--resume")
    assert f"{wd}{os.sep}" in line and ".pth:" in line
    assert {f: (wd / f).read_bytes() for f in ("last.pth", "best.pth")} == before
    assert sorted(os.listdir(wd)) == [".lock", "best.pth", "config.yaml", "last.pth", "log.jsonl"]  # no temp file left


def test_full_disk_during_save_names_the_file(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    write_checkpoint(path, {"iter": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DataError) as e:
        write_checkpoint(path, {"iter": 2}, hint="continue with --resume")
    message = str(e.value)
    assert path in message and "No space left on device" in message and "previous last.pth is intact" in message
    assert "free some space and continue with --resume" in message
    assert torch.load(path, weights_only=True) == {"iter": 1} and os.listdir(tmp_path) == ["last.pth"]


# --------------------------------------------------------------------------- one writer per work dir


def test_work_dir_lock_names_its_holder_and_dies_with_it(tmp_path, hold_in_child):
    wd = tmp_path / "run"
    holder = hold_in_child(wd)
    try:
        assert locks.holder(str(wd)) == holder.pid
        with pytest.raises(ConfigError) as e:
            locks.hold(str(wd), "train.py", elsewhere="choose another work_dir=...")
        assert str(e.value) == (f"{wd} is in use by another run (pid {holder.pid}, test); wait for it to end, "
                                f"stop it (kill {holder.pid}), or choose another work_dir=...")
    finally:
        holder.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel releases the lock
        holder.wait()
    assert locks.holder(str(wd)) is None
    locks.hold(str(wd), "test")
    assert (wd / ".lock").read_text() == f"{os.getpid()} test\n" and locks.holder(str(wd)) is None  # our own
    locks.release(str(wd))


@pytest.mark.slow
def test_second_run_in_a_work_dir_is_refused_while_the_first_runs(tmp_path, demo_root, run, write_config, root):
    """Two train.py on one work dir: the second (also a --resume) stops at once with the first's pid, and
    writes nothing; once the first is killed (-9) the work dir is free again."""
    cfg = write_config(tmp_path, demo_root, max_iters=1000000, val_interval=1000000, log_interval=1, ckpt_interval=1)
    wd = tmp_path / "run"
    first_run = subprocess.Popen([sys.executable, "train.py", cfg, f"work_dir={wd}", "--no-test"], cwd=root,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        t0 = time.time()
        while not (wd / "last.pth").exists():  # it holds the work dir and has saved a checkpoint
            assert first_run.poll() is None and time.time() - t0 < 180, first_run.stdout.read()
            time.sleep(0.2)
        for extra in ([], ["--resume"], ["--overwrite"]):
            line = fails(run(["train.py", cfg, f"work_dir={wd}", "--no-test", *extra]),
                         f"{wd} is in use by another run (pid {first_run.pid}, train.py)", "work_dir=")
            assert "already holds a run" not in line
        assert first_run.poll() is None  # untouched
    finally:
        first_run.kill()
        first_run.wait()
    assert locks.holder(str(wd)) is None
    succeeds(run(["train.py", cfg, f"work_dir={wd}", "train.max_iters=1", "--overwrite", "--no-test"]))


@pytest.mark.slow
def test_torchrun_ranks_all_stop_when_the_work_dir_is_held(tmp_path, demo_root, run, write_config):
    """Under torchrun only rank 0 takes the lock; the other ranks learn its outcome and stop too (no hang)."""
    cfg = write_config(tmp_path, demo_root)
    wd = tmp_path / "run"
    locks.hold(str(wd), "test")
    try:
        out = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", cfg,
                   f"work_dir={wd}", "--no-test"], timeout=300)
    finally:
        locks.release(str(wd))
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    # every rank stops with the same line; torchrun may stop a rank before it prints once another has failed
    assert 1 <= len(errors) <= 2 and all(f"{wd} is in use by another run (pid {os.getpid()}, test)" in e
                                         for e in errors)
    assert sorted(os.listdir(wd)) == [".lock"]


# --------------------------------------------------------------------------- NaN weights, hostile checkpoints


@pytest.mark.slow
def test_divergence_at_the_last_iteration_saves_nothing(tmp_path, demo_root, run, write_config, root):
    """A NaN weight after the last optimizer step: exit code 1 and one error line; best.pth and last.pth
    stay those of earlier iterations, finite; no test table."""
    cfg = write_config(tmp_path, demo_root, max_iters=3, val_interval=1, ckpt_interval=1)
    wd = tmp_path / "run"
    poison = ("import sys, torch; sys.path.insert(0, %r); import train\n"
              "step, calls = torch.optim.AdamW.step, [0]\n"
              "def last_step_poisons(self, *a, **k):\n"
              "    out = step(self, *a, **k)\n"
              "    calls[0] += 1\n"
              "    if calls[0] == 3:\n"
              "        with torch.no_grad():\n"
              "            self.param_groups[0]['params'][0].view(-1)[0] = float('nan')\n"
              "    return out\n"
              "torch.optim.AdamW.step = last_step_poisons\n"
              "train.main(sys.argv[1:])\n") % root
    line = fails(run(["-c", poison, cfg, f"work_dir={wd}"]), str(wd / "last.pth"), "not saved", "NaN or infinity",
                 "conv1.weight", "train.lr")
    assert "best.pth" not in line
    for name, upto in (("last.pth", 2), ("best.pth", 2)):
        ckpt = torch.load(wd / name, weights_only=True)
        assert ckpt["iter"] <= upto and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert torch.load(wd / "last.pth", weights_only=True)["iter"] == 2
    assert not (wd / "test_table.md").exists() and not any(".tmp" in f for f in os.listdir(wd))


@pytest.fixture(scope="module")
def resumable(tmp_path_factory, demo_root, tiny_config):
    """(config, a 1-iteration train.py checkpoint of it): trained in this process."""
    tmp = tmp_path_factory.mktemp("resumable")
    cfg = tiny_config(tmp, demo_root, SRCNN, max_iters=1)
    train.main([cfg, f"work_dir={tmp / 'run'}", "--no-test"])
    return cfg, torch.load(tmp / "run" / "last.pth", weights_only=True)


@pytest.mark.parametrize("damage, named", [
    (dict(iter="2"), "iter='2' is not an integer >= 0"),
    (dict(best_rmse=[1.0]), "best_rmse=[1.0] is not a number >= 0"),
    (dict(optimizer="adamw"), "optimizer='adamw' is not an optimizer state dict"),
    (dict(config="cfg"), "config='cfg' is not a config mapping"),
    (dict(model=["weights"]), "model=['weights'] is not a dict of tensors"),
    (dict(world=0), "world=0 is not an integer >= 1"),
    ("exp_avg of another shape", "its optimizer state does not fit this model"),
    ("a parameter group less", "its optimizer state does not fit this model"),
    ("list", "holds a list, not a train.py checkpoint"),
])
def test_hostile_checkpoint_on_resume_is_one_error_line(tmp_path, resumable, damage, named):
    cfg, ckpt = resumable
    wd = tmp_path / "run"
    wd.mkdir()
    if isinstance(damage, dict):
        bad = dict(ckpt, **damage)
    elif damage == "list":
        bad = [ckpt]
    else:
        optimizer = copy.deepcopy(ckpt["optimizer"])
        if damage == "a parameter group less":
            optimizer["param_groups"] = []
        else:
            optimizer["state"][0]["exp_avg"] = torch.zeros(3)
        bad = dict(ckpt, optimizer=optimizer)
    torch.save(bad, wd / "last.pth")
    with pytest.raises(SystemExit) as e:
        train.main([cfg, f"work_dir={wd}", "train.max_iters=2", "--resume", "--no-test"])
    message = str(e.value)
    assert message.startswith(f"error: {wd / 'last.pth'}: ") and named in message and "\n" not in message
    assert torch.load(wd / "last.pth", weights_only=False) is not None  # not replaced
    assert not (wd / "log.jsonl").exists()


# --------------------------------------------------------------------------- no-data, validation, file checks


def _cloudy_dataset(folder):
    """prepare.py --max-nodata 1.0 on a 256 x 256 scene whose left 160 columns are a cloud: whole tiles
    without a valid LST pixel are kept."""
    lst, gui = layout.synth_scene(256, 256, seed=2)
    lst[:, :160] = np.nan
    geo = geotiff.make_geo(500000.0, 4300000.0, 30.0)
    geotiff.write_geotiff(os.path.join(folder, "cloudy.tif"), lst, geo)
    geotiff.write_geotiff(os.path.join(folder, "cloudy_gui.tif"), gui, geo, band_names=data.BANDS)
    out = os.path.join(folder, "out")
    prepare.prepare([(os.path.join(folder, "cloudy.tif"), os.path.join(folder, "cloudy_gui.tif"))], out,
                    tile=32, step=32, block=64, scales=(4,), split=(0.5, 0.25, 0.25), max_nodata=1.0, lr_max_nodata=1.0)
    return out


@pytest.mark.slow
def test_dataset_of_max_nodata_1_trains_and_skips_empty_batches(tmp_path, run):
    out = _cloudy_dataset(str(tmp_path))
    wd = tmp_path / "run"
    res = succeeds(run(["train.py", os.path.join(out, "base_x4.yaml"), "model.name=srcnn", "data.hr_crop=16",
                        "train.batch_size=1", "train.max_iters=8", "train.log_interval=1", "train.val_interval=8",
                        f"work_dir={wd}", "--no-test"]))
    records = [r for r in log_records(wd) if "loss" in r]
    assert len(records) == 8 and sum(r["skipped_batches"] for r in records) > 0
    assert all(r["loss"] is None or np.isfinite(r["loss"]) for r in records)
    assert "skipped 1 batches without valid pixels" in res.stdout
    assert torch.load(wd / "last.pth", weights_only=True)["iter"] == 8


def test_crops_are_drawn_inside_valid_pixels(tmp_path, demo_root, monkeypatch):
    root = copy_demo(demo_root, tmp_path)
    name = first(root, "train")
    path = root / "30m" / "lst" / f"{name}.tif"
    lst, info = geotiff.read_geotiff(str(path))
    lst[0, :, :40] = np.nan  # 40 of 64 columns: most 16-pixel crops lie in the cloud
    geotiff.write_geotiff(str(path), lst[0], info["geo"])
    dataset = data.GrokLSTDataset(str(root), "train", 4, hr_crop=16)
    index = dataset.names.index(name)

    def valid_crops():
        out = []
        for epoch in range(12):
            dataset.set_epoch(epoch)
            out.append(bool(dataset[index]["mask"].any()))
        return out
    assert all(valid_crops())
    monkeypatch.setattr(data.GrokLSTDataset, "CROP_TRIES", 1)  # one draw: the cloud is hit
    assert not all(valid_crops())


@pytest.mark.slow
def test_empty_validation_split_is_an_error_and_null_trains_without(tmp_path, demo_root, run, write_config):
    root = copy_demo(demo_root, tmp_path)
    (root / "split" / "val.txt").write_text("")
    cfg = write_config(tmp_path, root)
    fails(run(["train.py", cfg, f"work_dir={tmp_path / 'a'}", "--no-test"]), str(root / "split" / "val.txt"),
          "data.val_split=null")
    wd = tmp_path / "b"
    out = succeeds(run(["train.py", cfg, f"work_dir={wd}", "data.val_split=null"]))
    assert "srcnn (last.pth)" in out.stdout and "best.pth" not in out.stdout
    assert not (wd / "best.pth").exists() and (wd / "last.pth").exists()
    assert "srcnn (last.pth)" in (wd / "test_table.md").read_text()


@pytest.mark.slow
def test_final_table_names_best_pth_when_validated(tmp_path, demo_root, run, write_config):
    cfg = write_config(tmp_path, demo_root, val_interval=1)
    out = succeeds(run(["train.py", cfg, f"work_dir={tmp_path / 'run'}"]))
    assert "srcnn (best.pth)" in out.stdout and (tmp_path / "run" / "best.pth").exists()


@pytest.mark.slow
def test_every_split_file_is_checked_before_the_first_iteration(tmp_path, demo_root, run, write_config):
    root = copy_demo(demo_root, tmp_path)
    cfg = write_config(tmp_path, root, model=TINY_MOCOLSK)
    name = first(root, "test")  # even the test split, even with --no-test
    lr_path = root / "120m" / "lst" / f"{name}.tif"
    geotiff.write_geotiff(str(lr_path), np.full((15, 16), 290.0, np.float32))
    out = run(["train.py", cfg, f"work_dir={tmp_path / 'a'}", "--no-test"])
    fails(out, str(lr_path), "(15, 16) x scale 4", "(64, 64)")
    assert "iter 1/" not in out.stdout and not (tmp_path / "a" / "log.jsonl").exists()
    geotiff.write_geotiff(str(lr_path), np.full((16, 16), 290.0, np.float32))
    gui_path = root / "30m" / "guidance" / f"{first(root, 'val')}.tif"
    gui, _ = geotiff.read_geotiff(str(gui_path))
    geotiff.write_geotiff(str(gui_path), gui[:9], band_names=list(data.BANDS[:9]))  # ndwi missing
    fails(run(["train.py", cfg, f"work_dir={tmp_path / 'b'}", "--no-test"]), str(gui_path), "no band 'ndwi'")


def _write_guidance_named(path, gui, names):
    """A 10-band guidance GeoTIFF whose GDAL_METADATA names only len(names) bands."""
    items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>' for i, n in enumerate(names))
    tifffile.imwrite(path, gui, photometric="minisblack", planarconfig="separate", compression="zlib", metadata=None,
                     extratags=[(geotiff.TAG_GDAL_METADATA, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True)])


@pytest.mark.slow
def test_guidance_band_names_partial_is_an_error_upper_case_works(tmp_path, demo_root, run, write_config):
    root = copy_demo(demo_root, tmp_path)
    name = first(root, "val")
    path = root / "30m" / "guidance" / f"{name}.tif"
    gui, _ = geotiff.read_geotiff(str(path))
    _write_guidance_named(str(path), gui, data.BANDS[:9])
    cfg = write_config(tmp_path, root, model=TINY_MOCOLSK)
    fails(run(["train.py", cfg, f"work_dir={tmp_path / 'a'}", "--no-test"]), str(path), "9 of 10 bands")
    _write_guidance_named(str(path), gui, [b.upper() for b in data.BANDS])  # DEM, DEEPBLUE, ...
    out = succeeds(run(["groklst.py", "stats", str(root), "--split", "val"]))
    stats = yaml.safe_load(out.stdout)["guidance"]["stats"]
    dem = data.read_guidance(str(path), ["dem"])[0]
    assert set(stats) == set(data.BANDS) and stats["dem"]["max"] >= float(np.nanmax(dem))


@pytest.mark.slow
def test_lst_storage_errors_name_file_value_and_key(tmp_path, demo_root, run, write_config):
    root = copy_demo(demo_root, tmp_path)
    cfg = write_config(tmp_path, root)
    bicubic = ["test.py", cfg, "model.name=bicubic", "--out", str(tmp_path / "m.json")]
    name = first(root, "test")
    path = root / "30m" / "lst" / f"{name}.tif"
    kelvin, info = geotiff.read_geotiff(str(path))
    original = path.read_bytes()
    # a product's DN (Landsat C2 ST: K = DN * 0.00341802 + 149) stored as uint16, taken for Kelvin
    dn = np.nan_to_num((kelvin[0] - 149.0) / 0.00341802, nan=0).round().astype(np.uint16)
    tifffile.imwrite(str(path), dn, photometric="minisblack", compression="zlib", metadata=None)
    line = fails(run(bicubic), str(path), "data.lst_scale", "outside the plausible range")
    assert f"{int(dn.max())}" in line or f"{int(dn[dn > 0].min())}" in line
    # a -9999 fill value without a GDAL_NODATA tag: an error naming data.nodata; declared, it works
    filled = np.where(np.isnan(kelvin[0]), np.float32(-9999), kelvin[0])
    filled[:8, :8] = -9999
    geotiff.write_geotiff(str(path), filled, info["geo"], nodata=None)
    fails(run(bicubic), str(path), "-9999", "data.nodata")
    out = succeeds(run(bicubic + ["data.nodata=-9999"]))
    assert "bicubic" in out.stdout
    # a zlib-compressed GeoTIFF cut in half (an interrupted copy)
    path.write_bytes(original[:len(original) // 2])
    fails(run(bicubic), str(path), "truncated")
    out = run(["train.py", cfg, f"work_dir={tmp_path / 'a'}", "--no-test"])  # a test-split file, found at the start
    fails(out, str(path), "truncated")
    assert "iter 1/" not in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None,
                    reason="tensorboard is installed: the error case cannot happen")
def test_tensorboard_without_the_package_is_one_error_line(tmp_path, demo_root, run, write_config):
    cfg = write_config(tmp_path, demo_root)
    fails(run(["train.py", cfg, f"work_dir={tmp_path / 'a'}", "train.tensorboard=true"]),
          "train.tensorboard needs tensorboard: pip install tensorboard")
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_tensorboard_events_get_loss_lr_and_val_metrics(tmp_path, demo_root, monkeypatch, write_config):
    """The wiring, with a stand-in SummaryWriter (the real one needs the tensorboard package)."""
    scalars = []

    class SummaryWriter:
        def __init__(self, log_dir):
            scalars.append(("dir", log_dir, None))

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", None, None))
    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    wd = str(tmp_path / "run")
    train.main([write_config(tmp_path, demo_root), f"work_dir={wd}", "train.tensorboard=true", "--no-test"])
    tags = {tag for tag, _, _ in scalars}
    assert scalars[0] == ("dir", wd, None) and scalars[-1][0] == "closed"
    assert {"train/loss", "train/lr", "train/grad_norm_max", "val/RMSE", "val/CC"} <= tags
    assert [step for tag, _, step in scalars if tag == "train/loss"] == [1, 2]
