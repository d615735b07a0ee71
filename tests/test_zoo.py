"""zoo.py: the queue of training runs (skip, resume, failures), its configs and the Table IX it writes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import groklst
import locks
import zoo
from errors import ConfigError, DataError

TINY_MOCOLSK = ["mocolsk:model.num_feats=8", "mocolsk:model.reduction=4", "mocolsk:model.num_stages=1",
                "mocolsk:model.n_resblocks=1"]


@pytest.fixture
def configs(config):
    return lambda *names: [config(n) for n in names]


def test_models_and_scales_resolve_to_configs_skipping_missing_scales(root):
    paths = zoo.resolve_configs([], ["ctn", "srcnn"], [4, 8])  # ctn has no x8
    assert [os.path.basename(p) for p in paths] == ["ctn_x4.yaml", "srcnn_x4.yaml", "srcnn_x8.yaml"]
    both = zoo.resolve_configs([os.path.join(root, "configs", "srcnn_x*.yaml")], ["srcnn"], [8])
    assert [os.path.basename(p) for p in both] == ["srcnn_x2.yaml", "srcnn_x4.yaml", "srcnn_x8.yaml"]  # no repeats
    with pytest.raises(ConfigError, match="srcn"):
        zoo.resolve_configs([], ["srcn"], [8])
    with pytest.raises(ConfigError, match="no config file matches"):
        zoo.resolve_configs(["configs/nothing_*.yaml"], [], [8])


def test_scoped_overrides_and_cpu_slots():
    overrides = ["train.max_iters=2", "mocolsk:model.num_feats=8", "data.root=a:b"]
    assert zoo.run_overrides(overrides, "mocolsk") == ["train.max_iters=2", "model.num_feats=8", "data.root=a:b"]
    assert zoo.run_overrides(overrides, "srcnn") == ["train.max_iters=2", "data.root=a:b"]
    places = zoo.slots([], 2)
    assert len(places) == 2 and all(env["OMP_NUM_THREADS"] == str(max(1, os.cpu_count() // 2)) for _, env in places)
    assert zoo.slots(["cuda:1", "cpu"], 1) == [("cuda:1", {"CUDA_VISIBLE_DEVICES": "1"}),
                                                     ("cpu", {"CUDA_VISIBLE_DEVICES": ""})]
    with pytest.raises(ConfigError, match="gpu0"):
        zoo.slots(["gpu0"], 1)


def test_plan_states_from_checkpoints_and_their_configs(tmp_path, configs, monkeypatch):
    """done / resume / train follow the newest readable checkpoint, but only of a run made with the
    settings the queue runs now: max_iters may differ (it decides done or resume), any other key not."""
    root = tmp_path / "runs"
    paths = configs("srcnn_x8", "srcnn_x4", "srcnn_x2", "bicubic_x8")
    overrides = ["train.max_iters=5", "srcnn:train.lr=0.001"]

    def stored(name, extra=()):  # the config train.py would store for this run
        return groklst.load_config(configs(name)[0], ["train.max_iters=5", "train.lr=0.001", *extra,
                                                      f"work_dir={root / name}"])
    for name, it in [("srcnn_x8", 5), ("srcnn_x4", 2)]:
        (root / name).mkdir(parents=True)
        torch.save({"iter": it, "config": stored(name, ["train.max_iters=9"])}, root / name / "last.pth")
    def launched(run):  # the train.py command line zoo.start gives a run (nothing is started)
        monkeypatch.setattr(zoo.subprocess, "Popen", lambda args, **kw: args)
        return zoo.start(run, {})
    runs = zoo.plan(paths, str(root), overrides)
    assert [r["state"] for r in runs] == ["done", "resume", "train", "evaluate"]
    assert launched(runs[1])[-1] == "--resume" and launched(runs[2])[-1] == f"work_dir={root / 'srcnn_x2'}"
    assert runs[1]["start_iter"] == 2 and runs[1]["resume_from"] is None
    assert runs[0]["overrides"][-1] == f"work_dir={root / 'srcnn_x8'}" and not runs[2]["overwrite"]
    bad = zoo.plan(paths[:1], str(root), ["train.max_iters=five"])[0]
    assert bad["state"] == "failed" and "train.max_iters" in bad["error"]

    # the same runs asked for with another learning rate and crop: not this queue's runs
    changed = zoo.plan(paths[:2], str(root), ["train.max_iters=5", "train.lr=0.002", "data.hr_crop=64"])
    for run in changed:
        assert run["state"] == "failed", run
        assert "train.lr: 0.001 -> 0.002" in run["error"] and "data.hr_crop" in run["error"]
        assert "--root" in run["error"] and "--overwrite" in run["error"] and "max_iters" not in run["error"]
    again = zoo.plan(paths[:2], str(root), ["train.max_iters=5", "train.lr=0.002"], overwrite=True)
    assert [(r["state"], r["overwrite"]) for r in again] == [("train", True)] * 2

    # killed after its first best.pth, before its first last.pth: it goes on from best.pth
    (root / "srcnn_x2").mkdir(exist_ok=True)
    torch.save({"iter": 3, "config": stored("srcnn_x2")}, root / "srcnn_x2" / "best.pth")
    run = zoo.plan(paths[2:3], str(root), overrides)[0]
    assert run["state"] == "resume" and run["start_iter"] == 3 and run["resume_from"] == str(root / "srcnn_x2" / "best.pth")
    assert launched(run)[-2:] == ["--resume", str(root / "srcnn_x2" / "best.pth")]
    assert launched(changed[0])[-1] != "--overwrite" and launched(again[0])[-1] == "--overwrite"
    # a torn last.pth and nothing else to go on from: trained afresh, deleting what is there
    (root / "srcnn_x2" / "best.pth").unlink()
    (root / "srcnn_x2" / "last.pth").write_bytes(b"half a checkpoint")
    run = zoo.plan(paths[2:3], str(root), overrides)[0]
    assert run["state"] == "train" and run["overwrite"]
    # a checkpoint without a stored config (and no config.yaml) cannot be told apart from another run's
    torch.save({"iter": 5}, root / "srcnn_x8" / "last.pth")
    run = zoo.plan(paths[:1], str(root), overrides)[0]
    assert run["state"] == "failed" and "no stored config" in run["error"]


def test_plan_reports_a_run_whose_work_dir_is_held(tmp_path, configs, hold_in_child):
    """A train.py that outlived its zoo.py (or runs by hand) is found by its work dir's lock, with its pid."""
    holder = hold_in_child(tmp_path / "runs" / "srcnn_x8")
    try:
        run = zoo.plan(configs("srcnn_x8"), str(tmp_path / "runs"), [])[0]
        assert run["state"] == "failed" and f"pid {holder.pid}" in run["error"] and f"kill {holder.pid}" in run["error"]
    finally:
        holder.kill()
        holder.wait()
    assert zoo.plan(configs("srcnn_x8"), str(tmp_path / "runs"), [])[0]["state"] == "train"  # the kernel freed it


@pytest.fixture
def run_zoo(root):
    def run(runs_root, demo_root, *args):
        cmd = [sys.executable, "zoo.py", "--root", str(runs_root), "--jobs", "2", "--poll", "0.5",
               f"data.root={demo_root}", "data.hr_crop=32", "train.max_iters=2", "train.val_interval=2",
               "train.log_interval=1", "train.batch_size=2", *TINY_MOCOLSK, *args]
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return run


def table_rows(path_or_text):
    """(header cells, {row label: cells}) of a zoo table (the lines under it are notes)."""
    text = open(path_or_text).read() if os.path.exists(path_or_text) else path_or_text
    lines = text.strip().split("\n\n")[0].splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    return header, {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}


def last_iter(path):
    return torch.load(path, map_location="cpu", weights_only=True)["iter"]


@pytest.mark.slow
def test_queue_trains_skips_resumes_and_reports_failures(tmp_path, demo_root, configs, run_zoo):
    root, table = tmp_path / "runs", tmp_path / "table.md"
    queue = ["--models", "srcnn", "--scales", "8,4", "--configs", configs("mocolsk_x8")[0],
             "--configs", configs("bilinear_x8")[0], "--out", str(table)]
    first = run_zoo(root, demo_root, *queue)
    assert first.returncode == 0, first.stdout + first.stderr
    for run in ("srcnn_x8", "srcnn_x4", "mocolsk_x8"):
        assert last_iter(root / run / "last.pth") == 2
        assert "iter 2/2" in (root / run / "train.out").read_text()
        assert f"{'srcnn' if 'srcnn' in run else 'mocolsk':10s} x{run[-1]} | done in" in first.stdout
    header, rows = table_rows(table)
    # per scale: 5 metrics + CONS, then parameters, GMACs and CPU Mpx/s
    assert header[:2] == ["method", "x4 RMSE"] and header[6:10] == ["x4 CONS", "x4 params", "x4 GMACs/256²", "x4 CPU Mpx/s"]
    assert header[-1] == "x8 CPU Mpx/s" and len(header) == 19
    assert list(rows) == ["bicubic", "bilinear", "mocolsk", "srcnn"]
    assert rows["mocolsk"][:9] == ["-"] * 9 and "-" not in rows["mocolsk"][9:17]  # x8 only
    assert rows["mocolsk"][-1] == "-"  # no throughput: its model arguments are not the ones measured
    assert "-" not in rows["srcnn"][:8] and "-" not in rows["bicubic"][:6]
    assert all(float(c) > 0 for c in rows["srcnn"][9:11])  # x8 RMSE, MAE in kelvin
    assert rows["srcnn"][15] == "8,129" and rows["bicubic"][15] == "0"

    # again, plus a run that fails (hr_crop 36 is not a multiple of 8): the finished ones are skipped
    outputs = {run: (root / run / "train.out").read_text() for run in ("srcnn_x8", "srcnn_x4", "mocolsk_x8")}
    second = run_zoo(root, demo_root, *queue, "--configs", configs("dgf_x8")[0], "dgf:data.hr_crop=36")
    assert second.returncode == 1, second.stdout + second.stderr
    assert second.stdout.count("skipped") == 3
    assert all((root / run / "train.out").read_text() == text for run, text in outputs.items())  # not started
    failed = [line for line in second.stdout.splitlines() if line.startswith("dgf") and "FAILED" in line]
    assert len(failed) == 1 and "data.hr_crop=36" in failed[0] and "multiple" in failed[0], second.stdout
    assert "# 4 finished, 1 failed" in second.stdout
    assert list(table_rows(table)[1]) == ["bicubic", "bilinear", "mocolsk", "srcnn"]

    # an interrupted run: its last.pth from an earlier iteration is resumed, to the end
    for name in ("last.pth", "best.pth"):
        ckpt = torch.load(root / "mocolsk_x8" / name, map_location="cpu", weights_only=True)
        torch.save(dict(ckpt, iter=1), root / "mocolsk_x8" / name)
    third = run_zoo(root, demo_root, *queue)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "mocolsk    x8 | resumed at iteration 1" in third.stdout and third.stdout.count("skipped") == 2
    log = (root / "mocolsk_x8" / "train.out").read_text()
    assert [line for line in log.splitlines() if line.startswith("$ ")][-1].endswith(" --resume")
    assert "resumed from" in log and last_iter(root / "mocolsk_x8" / "last.pth") == 2

    # asked again with another learning rate: the runs made with the old one are neither skipped nor tabled
    outputs = {run: (root / run / "train.out").read_text() for run in ("srcnn_x8", "srcnn_x4", "mocolsk_x8")}
    fourth = run_zoo(root, demo_root, *queue, "train.lr=0.002")
    assert fourth.returncode == 1, fourth.stdout + fourth.stderr
    refused = [line for line in fourth.stdout.splitlines() if "| FAILED:" in line and "made with other settings" in line]
    assert len(refused) == 3 and all("train.lr: 0.0001 -> 0.002" in line and "--overwrite" in line for line in refused)
    assert "skipped" not in fourth.stdout
    assert all((root / run / "train.out").read_text() == text for run, text in outputs.items())  # not started
    assert list(table_rows(table)[1]) == ["bicubic", "bilinear"]


def test_two_queues_on_one_root(tmp_path, root, hold_in_child):
    """One queue per root: a second zoo.py stops at once with the pid of the one that holds it."""
    holder = hold_in_child(tmp_path / "runs")
    try:
        r = subprocess.run([sys.executable, "zoo.py", "--models", "srcnn", "--scales", "8", "--root",
                            str(tmp_path / "runs"), "train.max_iters=2"], cwd=root, capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'runs'} is in use by another run (pid {holder.pid}")
    assert "--root" in lines[0] and not (tmp_path / "runs" / "srcnn_x8").exists()


def running(pid):
    """True while `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def wait_for(condition, timeout=180.0):
    t0 = time.time()
    while not condition():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_stopped_or_killed_queue_leaves_no_training_behind(tmp_path, demo_root, root):
    """SIGTERM: zoo.py stops its train.py (and says so, exit 143); kill -9: the kernel kills its train.py
    (PR_SET_PDEATHSIG), so no orphan holds the work dir; either way the next queue can go on."""
    runs, wd = tmp_path / "runs", tmp_path / "runs" / "srcnn_x8"
    cmd = [sys.executable, "zoo.py", "--models", "srcnn", "--scales", "8", "--root", str(runs), "--poll", "0.2",
           "--grace", "5", f"data.root={demo_root}", "data.hr_crop=32", "data.num_workers=0", "train.batch_size=2",
           "train.max_iters=1000000", "train.val_interval=1000000", "train.ckpt_interval=5", "train.log_interval=5"]
    for stop in (signal.SIGTERM, signal.SIGKILL):
        queue = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: locks.holder(str(wd)))  # train.py runs and holds its work dir
        trainer = locks.holder(str(wd))
        assert running(trainer) and trainer != queue.pid
        queue.send_signal(stop)
        out, err = queue.communicate(timeout=60)
        if stop == signal.SIGTERM:
            assert queue.returncode == 128 + signal.SIGTERM, err
            assert "stopped by SIGTERM; 1 running run(s) stopped (srcnn_x8)" in err and "again to resume" in err
            assert "srcnn      x8 | stopped" in out
        wait_for(lambda pid=trainer: not running(pid), timeout=30)
        # nothing holds the work dir any more: the kernel drops the lock once the last of the trainer's threads
        # has ended, which may be a moment after its main thread shows as a zombie
        wait_for(lambda: locks.holder(str(wd)) is None, timeout=30)


def test_table_uses_last_pth_without_validation_and_survives_a_failing_row(tmp_path, demo_root, tiny_config):
    """Rows: srcnn trained without validation (last.pth only: said in its label), a tiny MoCoLSK with best.pth,
    a run whose checkpoint is damaged (reported under the table, the rest written) and the bicubic
    reference. Costs: parameters of the model, GMACs per 256² (SRCNN's three convolutions counted by hand)
    and the CPU Mpx/s of a throughput file, only for default model arguments at the measured scale."""
    import engine
    runs = tmp_path / "runs"

    def fake_run(name, model, weights, **overrides):  # what train.py leaves: config.yaml and a checkpoint
        cfg = groklst.load_config(tiny_config(tmp_path, demo_root, model), [f"{k}={v}" for k, v in overrides.items()])
        (runs / name).mkdir(parents=True)
        groklst.write_config(cfg, str(runs / name / "config.yaml"))
        torch.manual_seed(1)
        net = groklst.build_model(cfg)
        torch.save({"model": net.state_dict(), "iter": 2, "config": cfg}, runs / name / weights)
        return cfg, net
    srcnn_cfg, srcnn = fake_run("srcnn_x4", {"name": "srcnn"}, "last.pth", **{"data.val_split": "null"})
    fake_run("mocolsk_x4", dict(name="mocolsk", num_feats=8, reduction=4, num_stages=1, n_resblocks=1), "best.pth")
    fake_run("broken_x4", {"name": "srcnn"}, "best.pth")
    (runs / "broken_x4" / "best.pth").write_bytes(b"torn")
    measured = tmp_path / "throughput.json"
    measured.write_text(json.dumps({"machine": {"cpu": "Test CPU", "threads": 2}, "rows": [
        {"model": m, "scale": 4, "mpx_per_s": v} for m, v in (("srcnn", 0.5), ("mocolsk", 0.125), ("bicubic", 2.0))]}))
    failed = []
    text = zoo.table_ix(str(runs), throughput=str(measured), failed=failed)
    header, rows = table_rows(text)
    assert list(rows) == ["bicubic", "mocolsk", "srcnn (last.pth)"]
    assert header[7:] == ["x4 params", "x4 GMACs/256²", "x4 CPU Mpx/s"]
    srcnn_params = sum(p.numel() for p in srcnn.parameters())
    srcnn_gmacs = 256 * 256 * (9 * 9 * 1 * 64 + 1 * 1 * 64 * 32 + 5 * 5 * 32 * 1) / 1e9  # per output pixel, three convs
    assert rows["srcnn (last.pth)"][6:] == [f"{srcnn_params:,}", f"{srcnn_gmacs:.3g}", "0.5"]
    assert rows["mocolsk"][8] == "-" and float(rows["mocolsk"][7]) > 0  # not the measured (default) arguments
    assert rows["bicubic"][6:] == ["0", "0", "2"]
    # the srcnn row is last.pth's weights on the test split
    srcnn.load_state_dict(torch.load(runs / "srcnn_x4" / "last.pth", weights_only=True)["model"])
    means = engine.evaluate(srcnn.eval(), groklst.build_normalizer(srcnn_cfg),
                            groklst.build_dataset(srcnn_cfg, "test"), "cpu")[0]
    assert rows["srcnn (last.pth)"][0] == f"{means['RMSE']:.4f}"
    assert len(failed) == 1 and failed[0][0] == "broken_x4" and "truncated or not a checkpoint" in failed[0][1]
    assert f"- broken_x4: not evaluated (DataError: {runs / 'broken_x4' / 'best.pth'}: truncated" in text
    assert "Test CPU (2 threads)" in text


def test_accuracy_against_throughput_from_a_table(tmp_path):
    """read_table takes the first Table IX of a markdown file; the throughput comes from the table's column,
    else from the throughput file for the scale measured; bicubic's RMSE is the reference."""
    page = tmp_path / "page.md"
    page.write_text("intro\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                    "| method | x8 RMSE | x8 MAE | x8 CPU Mpx/s |\n|---|---|---|---|\n"
                    "| bicubic | 1.5 | 1.0 | - |\n| srcnn (last.pth) | 7.0 | 5.0 | 0.2 |\n| dgf | 2.0 | 1.2 | - |\n"
                    "| mocolsk | 1.2 | 0.9 | - |\n| myrun | 3.0 | 2.0 | 1.0 |\n\n| method | x8 RMSE |\n|---|---|\n| late | 9 |\n")
    rows = zoo.read_table(str(page))
    assert list(rows) == ["bicubic", "srcnn (last.pth)", "dgf", "mocolsk", "myrun"]
    assert rows["dgf"] == {"x8 RMSE": 2.0, "x8 MAE": 1.2, "x8 CPU Mpx/s": None}
    measured = {"bicubic": {"scale": 8, "mpx_per_s": 1.1}, "dgf": {"scale": 8, "mpx_per_s": 0.01},
                "mocolsk": {"scale": 4, "mpx_per_s": 0.5}}  # measured at another scale: not used
    points, reference = zoo.tradeoff_points(rows, 8, measured)
    assert reference == 1.5
    assert points == [("bicubic", 1.1, 1.5, "baseline"), ("srcnn (last.pth)", 0.2, 7.0, "sisr"), ("dgf", 0.01, 2.0, "gisr")]
    path = tmp_path / "tradeoff.png"
    json_path = tmp_path / "t.json"
    json_path.write_text(json.dumps({"machine": {}, "rows": [dict(measured["dgf"], model="dgf")]}))
    assert len(zoo.draw_tradeoff(str(page), str(path), str(json_path))) == 2 and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError, match="no table of zoo.py"):
        zoo.read_table(str(json_path))
