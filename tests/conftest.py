import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset (GeoTIFF, GrokLST layout): 16 tiles of 64 x 64 at 30 m."""
    from data import make_demo
    root = str(tmp_path_factory.mktemp("demo"))
    make_demo(root, n_tiles=16, size=64, seed=3)
    return root


def tiny_config(tmp_path, root, model, **train):
    """A config file for a few quick CPU iterations on `root` (x4, 32-pixel crops): the demo base with
    `model` ({name: ..., args}) and train keys overridden."""
    import yaml
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "_base_", "demo_x8.yaml")))
    cfg["model"] = dict(model)
    cfg["data"].update(root=str(root), hr_crop=32, scale=4)
    cfg["train"].update(dict(dict(max_iters=8, batch_size=2, val_interval=100, log_interval=1, lr=1.0e-3,
                                  restart_period=8), **train))
    path = tmp_path / f"tiny_{cfg['model']['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_script(args, **kw):
    """`python ARGS` in the repository root, one thread, output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, env=env, **kw)
