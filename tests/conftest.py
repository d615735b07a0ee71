"""Shared test fixtures. The repository root comes from the `root` fixture (and `config` builds a path
under configs/); scripts run through the `run_script` fixture; `tiny_config` writes a quick CPU config; `hold_in_child` holds a work dir's lock from another process."""
import glob
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # the toolkit is a folder of modules, not an installed package


@pytest.fixture(scope="session")
def root():
    """The repository root (scripts run with it as the working directory)."""
    return _ROOT


@pytest.fixture(scope="session")
def config():
    """config(name) -> the path of configs/<name>.yaml."""
    return lambda name: os.path.join(_ROOT, "configs", name + ".yaml")


def pytest_generate_tests(metafunc):
    """`config_path` parametrizes a test over every file of configs/."""
    if "config_path" in metafunc.fixturenames:
        paths = sorted(glob.glob(os.path.join(_ROOT, "configs", "*.yaml")))
        metafunc.parametrize("config_path", paths, ids=[os.path.basename(p) for p in paths])


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset (GeoTIFF, GrokLST layout): 16 tiles of 64 x 64 at 30 m."""
    from layout import make_demo
    folder = str(tmp_path_factory.mktemp("demo"))
    make_demo(folder, n_tiles=16, size=64, seed=3)
    return folder


def _tiny_config(tmp_path, data_root, model, **train):
    """A config file for a few quick CPU iterations on `data_root` (x4, 32-pixel crops): the demo base with
    `model` ({name: ..., args}) and train keys overridden."""
    import yaml
    cfg = yaml.safe_load(open(os.path.join(_ROOT, "configs", "_base_", "demo_x8.yaml")))
    cfg["model"] = dict(model)
    cfg["data"].update(root=str(data_root), hr_crop=32, scale=4)
    cfg["train"].update(dict(dict(max_iters=8, batch_size=2, val_interval=100, log_interval=1, lr=1.0e-3,
                                  restart_period=8), **train))
    path = tmp_path / f"tiny_{cfg['model']['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="session")
def tiny_config():
    """tiny_config(tmp_path, data_root, model, **train) -> path of a quick CPU training config."""
    return _tiny_config


def _run_script(args, **kw):
    """`python ARGS` in the repository root, one thread, output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable] + args, cwd=_ROOT, capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="session")
def run_script():
    """run_script([script, args...], **subprocess kwargs) -> CompletedProcess, in the repository root."""
    return _run_script


def _hold_in_child(folder):
    """A Python process that holds `folder`'s lock (locks.hold) until killed; returned once it holds it."""
    code = (f"import sys, time; sys.path.insert(0, {_ROOT!r}); "
            f"import locks; locks.hold({str(folder)!r}, 'test'); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture(scope="session")
def hold_in_child():
    """hold_in_child(folder) -> a child process holding folder's work-dir lock until it is killed."""
    return _hold_in_child
