import glob
import os
import subprocess
import sys

import pytest
from conftest import ROOT

import groklst
from groklst import ConfigError, load_config

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads(path):
    cfg = load_config(path)
    if cfg["model"]["name"] in groklst.MODELS:
        assert cfg["data"]["scale"] in groklst.MODELS[cfg["model"]["name"]].scales
        groklst.build_normalizer(cfg)  # stats exist for every band the model reads


def test_overrides_are_typed():
    cfg = load_config(os.path.join(ROOT, "configs/mocolsk_x8.yaml"),
                      ["train.lr=3e-4", "train.max_iters=20", "model.num_feats=16", "data.hr_crop=64", "train.compile=true"])
    assert cfg["train"]["lr"] == 3e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["max_iters"] == 20 and cfg["model"]["num_feats"] == 16 and cfg["data"]["hr_crop"] == 64
    assert cfg["train"]["compile"] is True and cfg["name"] == "mocolsk_x8"


@pytest.mark.parametrize("override, message", [
    ("train.lr=fast", r"train.lr='fast': expected float"),
    ("train.max_iters=1.5", r"train.max_iters=1.5: expected int"),
    ("train.max_iter=3", r"unknown config key 'train.max_iter'; valid keys here: .*max_iters"),
    ("model.num_featz=3", r"unknown config key 'model.num_featz' for model 'mocolsk'; valid: num_feats"),
    ("model.name=mocolks", r"Did you mean 'mocolsk'"),
    ("model.scale=4", r"derived from data.scale"),
    ("data.scale=3", r"supports scales \[2, 4, 8\], not data.scale=3"),
    ("train", r"expected key.sub=value"),
])
def test_override_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(os.path.join(ROOT, "configs/mocolsk_x8.yaml"), [override])


def test_base_chain_limited_to_one(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {name: bicubic}\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    (tmp_path / "c.yaml").write_text("_base_: b.yaml\n")
    assert load_config(str(tmp_path / "b.yaml"))["model"]["name"] == "bicubic"
    with pytest.raises(ConfigError, match="may not have a _base_ itself"):
        load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("model: {name: bicubic}\nbogus: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        load_config(str(tmp_path / "d.yaml"))


def test_registry():
    assert groklst.list_models("bi*") == ["bicubic", "bilinear"]
    with pytest.raises(groklst.ConfigError, match="Did you mean 'mocolsk'"):
        groklst.create_model("mocolks")
    with pytest.raises(ConfigError, match="has no argument 'num_featz'"):
        groklst.create_model("mocolsk", num_featz=3)
    model = groklst.create_model("bicubic", scale=4)
    assert sum(p.numel() for p in model.parameters()) == 0
    for name, cls in groklst.MODELS.items():
        assert cls.kind in ("sisr", "gisr") and set(cls.scales) <= {2, 4, 8}, name
        assert groklst.paper(name) != "-", name


def test_clean_state_dict():
    keys = ["generator.module.lst_stem.weight", "module.a.b", "_orig_mod.c", "generator.d", "x.module.y"]
    assert list(groklst.clean_state_dict(dict.fromkeys(keys)).keys()) == ["lst_stem.weight", "a.b", "c", "d", "x.y"]


@pytest.mark.slow
def test_cli_list():
    out = subprocess.run([sys.executable, "groklst.py", "list"], cwd=ROOT, capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("mocolsk "))
    assert "x2 20,011,833" in line and "x4 25,430,841" in line and "x8 40,913,721" in line and "gisr" in line


@pytest.mark.slow
def test_model_table_is_current():
    """docs/models.md holds the model table exactly as `groklst.py list --markdown` prints it."""
    out = subprocess.run([sys.executable, "groklst.py", "list", "--markdown"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out in open(os.path.join(ROOT, "docs", "models.md")).read(), \
        "regenerate the table in docs/models.md with: python groklst.py list --markdown"


def test_demo_config_matches_demo_data(demo_root):
    """configs/demo_*.yaml carry the demo's statistics; the generator must not drift from them."""
    from data import compute_stats
    cfg = load_config(os.path.join(ROOT, "configs", "demo_mocolsk_x8.yaml"))
    stats = compute_stats(demo_root, "trainval")
    assert abs(stats["lst"]["240m"]["mean"] - cfg["norm"]["lst"]["mean"]) < 3.0
    assert 0.6 < stats["lst"]["240m"]["std"] / cfg["norm"]["lst"]["std"] < 1.5
    for band, s in cfg["norm"]["guidance"]["stats"].items():
        got = stats["guidance"][band]
        assert abs(got["mean"] - s["mean"]) < 0.5 * s["std"] and 0.5 < got["std"] / s["std"] < 2, band


SCRIPTS = ["train", "test", "predict", "prepare", "bench", "landsat", "benchmark"]


@pytest.mark.slow
def test_every_module_imports_and_every_command_has_help():
    """Each module imports on its own (no cycles hidden by lazy imports), each script and each
    groklst.py subcommand answers --help."""
    for module in ["errors", "geotiff", "data", "metrics", "figures", "sharpeners", "footprint", "groklst"] + SCRIPTS:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    commands = [[f"{s}.py"] for s in SCRIPTS] + [["groklst.py", c] for c in
                                                 ("list", "stats", "make-demo", "convert-checkpoint", "plot-log", *groklst.SCRIPTS)]
    for cmd in commands:
        r = subprocess.run([sys.executable, *cmd, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr)


def test_groklst_runs_once_as_script():
    """`python groklst.py predict` runs groklst.py once: the scripts it hands over to import the
    running module, not a second copy (two MODELS dicts, two ConfigError classes)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "groklst.py", "predict", "--help"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line]
    assert "figures" in imported, "predict.py (which imports figures) was not run"
    assert "groklst" not in imported


def test_library_never_imports_scripts():
    """Dependencies flow one way: library modules import no entry script (groklst.main's dispatch aside)."""
    import ast
    library = ["errors.py", "geotiff.py", "data.py", "metrics.py", "figures.py", "sharpeners.py", "footprint.py", "groklst.py"] + \
        glob.glob(os.path.join("models", "*.py"))
    for path in library:
        tree = ast.parse(open(os.path.join(ROOT, path)).read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not set(n.split(".")[0] for n in names) & set(SCRIPTS), f"{path}:{node.lineno} imports a script"
