"""speed.py: one process per model, the numbers it reports, its JSON, its errors."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

import costs
import groklst
import predict
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
    assert r.returncode != 0 and "mocolsk supports scales [2, 4, 8, 16], not --scale 3" in r.stderr
    assert not (tmp_path / "x.json").exists()


SRCNN_MACS_PER_PIXEL = 9 * 9 * 1 * 64 + 1 * 1 * 64 * 32 + 5 * 5 * 32 * 1  # its three convolutions, at the output size


def test_macs_of_srcnn_counted_by_hand():
    assert speed.count_macs("srcnn", 8, 256, 1) == 256 * 256 * SRCNN_MACS_PER_PIXEL / 1e9
    cfg = groklst.load_config(os.path.join(os.path.dirname(speed.__file__), "configs", "srcnn_x4.yaml"),
                              ["model.channels=[1,16,8,1]"])  # the run's own model arguments count
    assert costs.count_macs(lambda: groklst.build_model(cfg), 4, 0, 128, 2) == 2 * 128 * 128 * (81 * 16 + 16 * 8 + 25 * 8) / 1e9


def test_throughput_runs_predict_rows_at_auto_precision():
    """speed.throughput times predict.py's own inference (predict_rows, one tile, no overlap) at the precision
    --amp auto resolves to: bf16 on a CPU with native bf16 for a model with weights, else float32."""
    calls = []

    def predict_rows(model, normalizer, lst, gui, scale, tile, overlap, batch, device, amp):
        calls.append((lst.shape, None if gui is None else gui.shape, scale, tile, overlap, batch, amp))
        return predict.predict_rows(model, normalizer, lst, gui, scale, tile, overlap, batch, device, amp)
    spy = types.SimpleNamespace(resolve_amp=predict.resolve_amp, predict_rows=predict_rows)
    native = predict.cpu_has_bf16()
    for name, scale, bands, amp in [("srcnn", 8, None, "bf16" if native else "none"), ("bicubic", 4, None, "none"),
                                    ("dgf", 8, (10, 64, 64), "bf16" if native else "none")]:
        calls.clear()
        r = speed.throughput(name, spy, scale=scale, hr=64, steps=2, warmup=1)
        assert calls == [((64 // scale,) * 2, bands, scale, 64 // scale, 0, 1, amp)] * 3  # warm-up + 2 timed
        assert r["amp"] == amp and len(r["forward_s_all"]) == 2
        # the fastest step, both rounded to 4 decimals: Mpx/s near 0.02 keeps only 3 digits, so compare relatively
        best = min(r["forward_s_all"])
        assert abs(64 * 64 / 1e6 / best - r["mpx_per_s"]) <= 5e-5 + 64 * 64 / 1e6 * 5e-5 / best ** 2
        assert r["cpu"] and r["threads"] == torch.get_num_threads()
    assert r["parameters"] == groklst.num_parameters(groklst.create_model("dgf", scale=8))


def test_list_markdown_takes_costs_from_the_throughput_file(tmp_path, capsys):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"machine": {"cpu": "Test CPU", "threads": 3, "torch": "9.9", "command": "speed.py ..."},
                                "rows": [{"model": "srcnn", "scale": 8, "mpx_per_s": 0.25, "gmacs": 0.5264},
                                         {"model": "ctn", "scale": 4, "mpx_per_s": 0.0123, "gmacs": 1.7596},
                                         {"model": "rf", "error": "timed out after 9 s (--timeout)"}]}))
    table = {}
    for pattern in ("srcnn", "ctn", "rf"):
        groklst.main(["list", pattern, "--markdown", "--throughput", str(path)])
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == ("| model | kind | scales | parameters (x2 / x4 / x8) | GMACs per 256² output | CPU Mpx/s "
                            "| paper |")
        table[pattern] = lines[2].split(" | ")
        assert "Test CPU, 3 threads, torch 9.9" in lines[-1]
    assert table["srcnn"][3:6] == ["8,129 / 8,129 / 8,129", "0.526", "0.25"]
    assert table["ctn"][4:6] == ["1.76 (x4)", "0.0123 (x4)"]  # no x8: measured at its largest scale
    assert table["rf"][4:6] == ["-", "failed"]  # its error is in the JSON


@pytest.mark.slow
def test_throughput_cli_merges_rows_into_its_json(tmp_path, run_speed):
    out = tmp_path / "throughput.json"
    r = run_speed("bicubic", "srcnn", "--hr", "64", "--throughput", "--steps", "1", "--warmup", "0", "--json", str(out))
    assert r.returncode == 0, r.stderr
    first = json.loads(out.read_text())
    assert [row["model"] for row in first["rows"]] == ["bicubic", "srcnn"]
    assert first["machine"]["cpu"] and first["machine"]["cores"] == os.cpu_count() and "--throughput" in first["machine"]["command"]
    r = run_speed("srcnn", "--hr", "64", "--throughput", "--steps", "1", "--warmup", "0", "--timeout", "0.01",
                  "--json", str(out))
    assert r.returncode == 0 and "srcnn      x8 error: timed out after 0.01 s" in r.stdout, r.stdout + r.stderr
    second = json.loads(out.read_text())
    assert second["rows"][0] == first["rows"][0] and "error" in second["rows"][1]  # bicubic's kept, srcnn's replaced
    r = run_speed("srcnn", "--throughput", "--amp", "bf16", "--json", str(out))
    assert r.returncode == 1 and "--throughput measures CPU inference" in r.stderr


@pytest.mark.slow
def test_committed_throughput_file_matches_the_models(root):
    """docs/throughput_cpu.json (what docs/models.md shows) was measured on the models as they are: the same
    parameters and GMACs, a row per registered model."""
    rows, machine = costs.read_throughput()
    assert machine["cpu"] and machine["threads"] >= 1
    for name, row in rows.items():
        assert "parameters" not in row or row["parameters"] == groklst.count_parameters(name, row["scale"]), name
        if row["gmacs"] is not None:  # also of a model whose measurement failed
            assert abs(speed.count_macs(name, row["scale"], row["hr"], 1) - row["gmacs"]) < 1e-3, name


def test_train_step_of_a_model_with_its_own_objective(monkeypatch):
    """speed.py --train times PGDM's training_loss (not an L1 loss through its sampler); a small PGDM."""
    from models.pgdm import PGDM
    real, calls = groklst.create_model, []
    monkeypatch.setattr(groklst, "create_model", lambda name, scale, **kw: real(
        name, scale=scale, **dict(dict(ch_base=8, ch_mult=(1, 2), attn_levels=()), **kw)))
    loss = PGDM.training_loss
    monkeypatch.setattr(PGDM, "training_loss", lambda self, *a, **k: calls.append(1) or loss(self, *a, **k))
    r = speed.run_one("pgdm", scale=4, hr=32, batch=1, train=True, steps=1, warmup=0, threads=1)
    assert r["mode"] == "train" and r["step_s_median"] > 0 and len(calls) == 1
    assert speed.run_one("pgdm", scale=4, hr=32, batch=1, steps=1, warmup=0, threads=1)["mode"] == "forward"
    assert len(calls) == 1  # a forward samples
