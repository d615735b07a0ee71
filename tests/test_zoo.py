"""zoo.py: the queue of training runs (skip, resume, failures), its configs and the Table IX it writes."""
import os
import subprocess
import sys

import pytest
import torch

import zoo
from errors import ConfigError

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


def test_plan_states_from_last_checkpoint(tmp_path, configs):
    root = tmp_path / "runs"
    for name, it in [("srcnn_x8", 5), ("srcnn_x4", 2)]:
        (root / name).mkdir(parents=True)
        torch.save({"iter": it}, root / name / "last.pth")
    paths = configs("srcnn_x8", "srcnn_x4", "srcnn_x2", "bicubic_x8")
    runs = zoo.plan(paths, str(root), ["train.max_iters=5", "srcnn:train.lr=0.001"])
    assert [r["state"] for r in runs] == ["done", "resume", "train", "evaluate"]
    assert runs[1]["start_iter"] == 2 and runs[0]["overrides"][-1] == f"work_dir={root / 'srcnn_x8'}"
    bad = zoo.plan(paths[:1], str(root), ["train.max_iters=five"])[0]
    assert bad["state"] == "failed" and "train.max_iters" in bad["error"]


@pytest.fixture
def run_zoo(root):
    def run(runs_root, demo_root, *args):
        cmd = [sys.executable, "zoo.py", "--root", str(runs_root), "--jobs", "2", "--poll", "0.5",
               f"data.root={demo_root}", "data.hr_crop=32", "train.max_iters=2", "train.val_interval=2",
               "train.log_interval=1", "train.batch_size=2", *TINY_MOCOLSK, *args]
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return run


def table_rows(path):
    lines = open(path).read().strip().splitlines()
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
    assert header[:2] == ["method", "x4 RMSE"] and header[-1] == "x8 CONS" and len(header) == 13  # 5 metrics + CONS per scale
    assert list(rows) == ["bicubic", "bilinear", "mocolsk", "srcnn"]
    assert rows["mocolsk"][:6] == ["-"] * 6 and "-" not in rows["mocolsk"][6:]  # x8 only
    assert "-" not in rows["srcnn"] and "-" not in rows["bicubic"]
    assert all(float(c) > 0 for c in rows["srcnn"][6:8])  # x8 RMSE, MAE in kelvin

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
    ckpt = torch.load(root / "mocolsk_x8" / "last.pth", map_location="cpu", weights_only=True)
    torch.save(dict(ckpt, iter=1), root / "mocolsk_x8" / "last.pth")
    third = run_zoo(root, demo_root, *queue)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "mocolsk    x8 | resumed at iteration 1" in third.stdout and third.stdout.count("skipped") == 2
    log = (root / "mocolsk_x8" / "train.out").read_text()
    assert [line for line in log.splitlines() if line.startswith("$ ")][-1].endswith(" --resume")
    assert "resumed from" in log and last_iter(root / "mocolsk_x8" / "last.pth") == 2
