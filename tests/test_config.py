import ast
import glob
import os
import subprocess
import sys

import pytest

import groklst
from checkpoints import clean_state_dict
from groklst import ConfigError, load_config


def test_every_config_loads(config_path):
    cfg = load_config(config_path)
    if cfg["model"]["name"] in groklst.MODELS:
        assert cfg["data"]["scale"] in groklst.MODELS[cfg["model"]["name"]].scales
        groklst.build_normalizer(cfg)  # stats exist for every band the model reads


def test_overrides_are_typed(config):
    cfg = load_config(config("mocolsk_x8"),
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
    ("data.scale=3", r"supports scales \[2, 4, 8, 16\], not data.scale=3"),
    ("train", r"expected key.sub=value"),
])
def test_override_errors(override, message, config):
    with pytest.raises(ConfigError, match=message):
        load_config(config("mocolsk_x8"), [override])


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
        assert cls.kind in ("sisr", "gisr") and set(cls.scales) <= {2, 4, 8, 16, 32}, name
        assert groklst.paper(name) != "-", name


def test_clean_state_dict():
    keys = ["generator.module.lst_stem.weight", "module.a.b", "_orig_mod.c", "generator.d", "x.module.y"]
    assert list(clean_state_dict(dict.fromkeys(keys)).keys()) == ["lst_stem.weight", "a.b", "c", "d", "x.y"]


@pytest.mark.slow
def test_cli_list(root):
    out = subprocess.run([sys.executable, "groklst.py", "list"], cwd=root, capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("mocolsk "))
    assert "x2 20,011,833" in line and "x4 25,430,841" in line and "x8 40,913,721" in line and "gisr" in line


@pytest.mark.slow
def test_model_table_is_current(root):
    """docs/models.md holds the model table exactly as `groklst.py list --markdown` prints it."""
    out = subprocess.run([sys.executable, "groklst.py", "list", "--markdown"], cwd=root, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out in open(os.path.join(root, "docs", "models.md")).read(), \
        "regenerate the table in docs/models.md with: python groklst.py list --markdown"


def test_demo_config_matches_demo_data(demo_root, config):
    """configs/demo_*.yaml carry the demo's statistics; the generator must not drift from them."""
    from data import compute_stats
    cfg = load_config(config("demo_mocolsk_x8"))
    stats = compute_stats(demo_root, "trainval")
    assert abs(stats["lst"]["240m"]["mean"] - cfg["norm"]["lst"]["mean"]) < 3.0
    assert 0.6 < stats["lst"]["240m"]["std"] / cfg["norm"]["lst"]["std"] < 1.5
    for band, s in cfg["norm"]["guidance"]["stats"].items():
        got = stats["guidance"][band]
        assert abs(got["mean"] - s["mean"]) < 0.5 * s["std"] and 0.5 < got["std"] / s["std"] < 2, band


def modules(root):
    """(library, scripts): the top-level modules of the repository. A script runs a `main` under
    `if __name__ == "__main__"` and no other module imports it; every other module is library (groklst.py
    has a command line of its own, but the scripts import it)."""
    paths = sorted(glob.glob(os.path.join(root, "*.py")))
    names = [os.path.basename(p)[:-3] for p in paths]
    imported = {m for p in paths for m in imports_of(p, names) if m != os.path.basename(p)[:-3]}
    library, scripts = [], []
    for path, name in zip(paths, names):
        tree = ast.parse(open(path).read())
        runs_main = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)
        (scripts if runs_main and name not in imported else library).append(name)
    return library, scripts


def imports_of(path, names):
    """{module it imports (top-level or inside functions) that is one of `names`: line}."""
    out = {}
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in found:
                if name.split(".")[0] in names:
                    out[name.split(".")[0]] = node.lineno
    return out


def test_library_and_scripts_are_told_apart(root):
    library, scripts = modules(root)
    assert {"groklst", "data", "geotiff", "engine", "checkpoints", "errors", "metrics"} <= set(library)
    assert {"train", "test", "predict", "prepare", "landsat", "speed", "zoo"} <= set(scripts)
    assert "groklst" not in scripts  # it has a main, but it is the library's registry: its CLI is only its own
    assert not set(library) & set(scripts)


def test_library_never_imports_scripts(root):
    """Dependencies flow one way: no library module (every top-level module that is not a script, and every
    model file) imports a script, statically or inside a function, and nothing is imported by name at
    run time (importlib, a sys.modules alias)."""
    library, scripts = modules(root)
    for path in [os.path.join(root, m + ".py") for m in library] + glob.glob(os.path.join(root, "models", "*.py")):
        found = imports_of(path, scripts)
        assert not found, f"{path} imports the script(s) {found}"
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module"):
                arg = node.args[0]  # a literal name (an optional package, e.g. f"sklearn.{what}"), never a local module
                head = arg.values[0] if isinstance(arg, ast.JoinedStr) and arg.values else arg
                assert isinstance(head, ast.Constant) and head.value.split(".")[0] not in library + scripts + [""], \
                    f"{path}:{node.lineno} imports a module named at run time"
            if isinstance(node, ast.Assign):
                assert not any(ast.unparse(t).startswith("sys.modules[") for t in node.targets), \
                    f"{path}:{node.lineno} aliases a module in sys.modules"


def test_no_import_cycle_between_library_modules(root):
    library, _ = modules(root)
    graph = {m: set(imports_of(os.path.join(root, m + ".py"), library)) - {m} for m in library}
    done, active = set(), []

    def visit(m):
        assert m not in active, "import cycle: " + " -> ".join(active[active.index(m):] + [m])
        if m in done:
            return
        active.append(m)
        for n in graph[m]:
            visit(n)
        active.pop()
        done.add(m)

    for m in library:
        visit(m)


@pytest.mark.slow
def test_every_module_imports_and_every_command_has_help(root):
    """Each module imports on its own (no cycles hidden by lazy imports), each script and each
    groklst.py subcommand answers --help."""
    library, scripts = modules(root)
    for module in library + scripts:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=root, capture_output=True, text=True)
        assert r.returncode == 0, (module, r.stderr)
    commands = [[f"{s}.py"] for s in scripts] + [["groklst.py", c] for c in
                                                  ("list", "stats", "make-demo", "convert-checkpoint", "plot-log")]
    for cmd in commands:
        r = subprocess.run([sys.executable, *cmd, "--help"], cwd=root, capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr)


@pytest.mark.parametrize("old, script", [("predict", "predict.py"), ("bench", "speed.py"), ("benchmark", "zoo.py")])
def test_groklst_no_longer_runs_other_scripts(old, script):
    """`groklst.py predict ...` (an old spelling) ends in one line naming the script to run, and runs nothing."""
    with pytest.raises(SystemExit) as e:
        groklst.main([old, "--help"])
    assert str(e.value).startswith("error: ") and f"python {script} --help" in str(e.value)
