"""Scales beyond GrokLST's 8 (x16: 480 m, x32: 960 m over 30 m guidance): every model whose `scales` lists
16 or 32 keeps the forward contract there, and every model that does not list them cannot be built or run
at them with its code, so `scales` stays the truth."""
import pytest
import torch

import data
import groklst
import layout

LARGE = (16, 32)
CASES = [(n, s) for n in groklst.list_models() for s in LARGE if s in groklst.MODELS[n].scales]
REFUSED = [(n, s) for n in groklst.list_models() for s in LARGE if s not in groklst.MODELS[n].scales]
QUICK = {"bicubic", "srcnn", "djf", "mocolsk", "linreg"}  # the quick loop's share; all of them run in the slow tier
SHAPE_CASES = [pytest.param(n, s, id=f"{n}-x{s}", marks=[] if n in QUICK else [pytest.mark.slow]) for n, s in CASES]


def small_input(cls, scale, batch, device=None):
    """LR LST (batch, 1, 4, 5) (or the model's LR multiple) and guidance at x scale, seeded."""
    g = torch.Generator().manual_seed(0)
    h = -(-max(4, cls.lr_multiple) // cls.lr_multiple) * cls.lr_multiple
    shape = (h, h + cls.lr_multiple)
    lr = torch.randn(batch, 1, *shape, generator=g)
    gui = torch.randn(batch, 10, shape[0] * scale, shape[1] * scale, generator=g) if cls.kind == "gisr" else None
    return lr.to(device), (gui.to(device) if gui is not None else None), shape


def test_large_scales_are_listed():
    """The outcome of trying every model at 16 and 32 (tests below): which ones can."""
    only_16 = {n for n, s in REFUSED if s == 32 and (n, 16) in CASES}
    neither = {n for n, s in REFUSED if s == 16}
    assert only_16 == {"mocolsk", "pmba", "sgnet", "suft"}
    assert neither == {"ctn", "dbpn", "fen", "ngswin", "rsag", "srfbn"}
    assert len({n for n, _ in CASES}) == len(groklst.MODELS) - len(neither)


@pytest.mark.parametrize("name, scale", SHAPE_CASES)
def test_forward_shape_at_large_scale(name, scale):
    """Built at the scale through the registry; on the meta device (shapes, no arithmetic) for the
    networks, on the CPU for the statistical sharpeners (numpy inside)."""
    cls = groklst.MODELS[name]
    if getattr(cls, "physical_units", False):  # 12 x 13 LR pixels: sharpeners fit 11 parameters on >= 110 of them
        lst, gui = layout.synth_scene(12 * scale, 13 * scale, seed=1)
        model = groklst.create_model(name, scale=scale)
        lr = torch.from_numpy(data.block_mean(lst, scale))[None, None]
        out = model(lr, torch.from_numpy(gui)[None])
        assert out.shape == (1, 1, 12 * scale, 13 * scale) and torch.isfinite(out).all()
        return
    with torch.device("meta"):
        model = groklst.create_model(name, scale=scale)
        lr, gui, (h, w) = small_input(cls, scale, 2, "meta")
        out = model(lr, gui)
    assert out.shape == (2, 1, h * scale, w * scale)


@pytest.mark.slow  # real arithmetic: ~4 minutes for all of them on the 2-core CPU
@pytest.mark.parametrize("name, scale", CASES, ids=[f"{n}-x{s}" for n, s in CASES])
def test_forward_backward_at_large_scale(name, scale):
    cls = groklst.MODELS[name]
    if getattr(cls, "physical_units", False):
        pytest.skip("no weights: covered by test_forward_shape_at_large_scale")
    torch.manual_seed(0)
    model = groklst.create_model(name, scale=scale)
    lr, gui, (h, w) = small_input(cls, scale, 2)
    out = model(lr, gui)
    assert out.shape == (2, 1, h * scale, w * scale) and torch.isfinite(out).all()
    if any(True for _ in model.parameters()):
        out.abs().mean().backward()


@pytest.mark.parametrize("name, scale", REFUSED, ids=[f"{n}-x{s}" for n, s in REFUSED])
def test_unlisted_scales_fail(name, scale):
    """A model without 16 / 32 in `scales` is refused by the registry, and its code does fail there."""
    cls = groklst.MODELS[name]
    with pytest.raises(groklst.ConfigError, match=f"supports scales .*not {scale}"):
        groklst.create_model(name, scale=scale)
    with pytest.raises(Exception), torch.device("meta"):  # noqa: B017 - any error of the model's own code
        model = cls(scale=scale)
        lr, gui, _ = small_input(cls, scale, 1, "meta")
        model(lr, gui)
