"""speed.py: one process per model, the numbers it reports, its JSON, its errors."""
import json
import subprocess
import sys

import pytest

import speed


@pytest.fixture
def run_speed(root):
    return lambda *args: subprocess.run([sys.executable, "speed.py", *args], cwd=root, capture_output=True, text=True)


@pytest.mark.slow
def test_speed_cli_rows_and_json(tmp_path, run_speed):
    out = tmp_path / "speed.json"
    r = run_speed("bicubic", "mocolsk", "--scale", "4", "--hr", "32", "--batch", "2", "--train",
                  "--steps", "2", "--warmup", "1", "--threads", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [row["model"] for row in rows] == ["bicubic", "mocolsk"]
    bicubic, mocolsk = rows
    assert mocolsk["parameters"] == 25430841 and bicubic["parameters"] == 0
    assert mocolsk["mode"] == "train" and mocolsk["batch"] == 2 and mocolsk["threads"] == 1
    assert len(mocolsk["step_s_all"]) == 2 and mocolsk["step_s_median"] > 0
    assert abs(mocolsk["samples_per_s"] - 2 / mocolsk["step_s_median"]) < 0.01 * mocolsk["samples_per_s"]
    # train step = 3 x the forward's 2 x MACs; the forward's MACs scale with the HR area
    expected = 6 * mocolsk["gmacs_forward"] / mocolsk["step_s_median"] / 1e3
    assert abs(mocolsk["tflops"] - expected) <= 1e-3 + 1e-2 * expected
    assert mocolsk["peak_memory_mb"] > 100
    for row in rows:  # the printed line carries the same numbers
        assert f"{row['parameters']:>11,} params" in r.stdout


def test_macs_counted_on_meta_scale_with_area():
    small, large = speed.count_macs("mocolsk", 8, 64, 1), speed.count_macs("mocolsk", 8, 128, 1)
    assert abs(large / small - 4) < 0.05
    assert abs(speed.count_macs("mocolsk", 8, 512, 1) - 2291.2) < 1.0  # the issue's ~2.29 TMACs at 512x512


@pytest.mark.slow
def test_speed_checkpointing_in_process():
    plain = speed.run_one("mocolsk", scale=8, hr=32, batch=1, train=True, steps=1, warmup=0, threads=1)
    ckpt = speed.run_one("mocolsk", scale=8, hr=32, batch=1, train=True, checkpointing=True, steps=1,
                         warmup=0, threads=1)
    assert ckpt["checkpointing"] and not plain["checkpointing"]
    assert ckpt["gmacs_forward"] == plain["gmacs_forward"]  # same function, recomputation not counted


def test_speed_unknown_model_and_missing_scale(tmp_path, run_speed):
    r = run_speed("mocolks", "--hr", "32", "--json", str(tmp_path / "x.json"))
    assert r.returncode != 0 and "mocolsk" in r.stderr  # the suggestion
    assert not (tmp_path / "x.json").exists()
    r = run_speed("mocolsk", "--scale", "3", "--hr", "32", "--json", str(tmp_path / "x.json"))
    assert r.returncode != 0 and "mocolsk supports scales [2, 4, 8], not --scale 3" in r.stderr
    assert not (tmp_path / "x.json").exists()
