import os
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
