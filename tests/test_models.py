"""Every registered model x scale: the original's parameter count, the forward contract,
gradients, an optimizer step, and that its file runs when copied alone."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import groklst

# Parameter counts of the original toolkit (GrokCV/GrokLST d5c4740, its configs), per scale.
REFERENCE = {
    "ahmf": {2: 2509864, 4: 2542954, 8: 3362476}, "codon": {4: 1871320, 8: 1871320},
    "cunet": {2: 1093839, 4: 1093839, 8: 1093839}, "dagf": {2: 2442223, 4: 2442223, 8: 2442223},
    "dct": {2: 486897, 4: 486897, 8: 486897}, "dgf": {2: 4553, 4: 4553, 8: 4553},
    "djf": {2: 110755, 4: 110755, 8: 110755}, "djfr": {2: 136295, 4: 136295, 8: 136295},
    "dkn": {2: 1169046, 4: 1169046, 8: 1169046}, "dsrn": {2: 45495171, 4: 45495171, 8: 45495171},
    "fdkn": {2: 613720, 4: 735328, 8: 1221760}, "fdsr": {2: 642577, 4: 642577, 8: 642577},
    "mocolsk": {2: 20011833, 4: 25430841, 8: 40913721}, "msg": {2: 198108, 4: 326240, 8: 454372},
    "dmsg": {2: 198108, 4: 326240, 8: 454372},
    "p2p": {2: 201185, 4: 201185, 8: 201185}, "pac": {2: 150641, 4: 189089, 8: 227537},
    "pmba": {2: 17740242, 4: 25080274, 8: 46051794}, "rsag": {4: 12026779, 8: 57492097},
    "sgnet": {2: 20227937, 4: 25335221, 8: 39927461}, "suft": {2: 15734938, 4: 22014106, 8: 39954586},
    "svlrm": {2: 376834, 4: 376834, 8: 376834}, "act": {2: 46027393, 4: 46175105, 8: 46322817},
    "cfgn": {2: 528520, 4: 533716, 8: 554500}, "ctn": {2: 400321, 4: 411337},
    "dbpn": {2: 5940852, 4: 10413684, 8: 23193204}, "dctlsa": {2: 862514, 4: 868466, 8: 892274},
    "edsr": {2: 1367553, 4: 1515265, 8: 1662977}, "egasr": {2: 35443298, 4: 35591010, 8: 35738722},
    "fen": {2: 635778, 4: 673154, 8: 710530}, "fenet": {2: 346204, 4: 351400, 8: 372184},
    "han": {2: 63603807, 4: 64194143, 8: 64784479}, "haunet": {2: 8983710, 4: 9003162, 8: 9080970},
    "ngswin": {2: 992542, 4: 999466}, "omni": {2: 2827716, 4: 2834640, 8: 2862336},
    "rcan": {2: 15442337, 4: 15590049, 8: 15737761}, "rdn": {2: 22121089, 4: 22268801, 8: 24336769},
    "safmn": {2: 222052, 4: 225952, 8: 241552}, "san": {2: 15710470, 4: 15858182, 8: 16005894},
    "srcnn": {2: 8129, 4: 8129, 8: 8129}, "srfbn": {2: 279536, 4: 480240, 8: 1053680},
    "swinir": {2: 11748093, 4: 11895805, 8: 12043517},
    "bicubic": {2: 0, 4: 0, 8: 0}, "bilinear": {2: 0, 4: 0, 8: 0},
    # not in the original toolkit: the statistical sharpeners of sharpeners.py
    "tsharp": {2: 0, 4: 0, 8: 0}, "linreg": {2: 0, 4: 0, 8: 0}, "rf": {2: 0, 4: 0, 8: 0}, "dms": {2: 0, 4: 0, 8: 0},
    # not in the original toolkit: PGDM (cas222huan/PGDM, its GrokLST x8 U-Net, the same at every scale)
    "pgdm": {2: 48108217, 4: 48108217, 8: 48108217},
}
# the original's scales (2 / 4 / 8); scales 16 and 32, where models have them, are tests/test_scales.py's
CASES = [(n, s) for n in groklst.list_models() for s in groklst.MODELS[n].scales if s in REFERENCE.get(n, {})]


def test_registry_is_complete():
    """The 20 SISR and 21 GISR models of the original toolkit, the two interpolation baselines, the
    statistical sharpeners of sharpeners.py and PGDM (not in the original)."""
    missing = sorted(set(REFERENCE) - set(groklst.MODELS))
    assert not missing, f"not registered yet: {missing}"
    assert set(groklst.MODELS) == set(REFERENCE)


@pytest.mark.parametrize("name, scale", CASES, ids=[f"{n}-x{s}" for n, s in CASES])
def test_parameter_count_and_scales(name, scale):
    assert set(groklst.MODELS[name].scales) - {16, 32} == set(REFERENCE[name])
    assert groklst.count_parameters(name, scale) == REFERENCE[name][scale]


# the quick loop steps every model at one scale; the other scales run with the slow tier
STEP_CASES = [pytest.param(n, s, id=f"{n}-x{s}", marks=[pytest.mark.slow] if s != groklst.MODELS[n].scales[0] else [])
              for n, s in CASES]


@pytest.mark.parametrize("name, scale", STEP_CASES)
def test_forward_backward_step(name, scale):
    cls = groklst.MODELS[name]
    torch.manual_seed(0)
    model = groklst.create_model(name, scale=scale)
    # a statistical sharpener refuses fewer than 10 coarse pixels per fitted parameter (sharpeners.CannotFit):
    # 11 parameters on 10 bands need 110, so 12 x 13 for them
    lr = max(12 if getattr(cls, "physical_units", False) else 8, cls.lr_multiple)
    lr = -(-lr // cls.lr_multiple) * cls.lr_multiple
    x = torch.randn(2, 1, lr, lr + cls.lr_multiple)  # batch 2, not square
    g = torch.randn(2, 10, lr * scale, (lr + cls.lr_multiple) * scale) if cls.kind == "gisr" else None
    out = model(x, g)
    assert out.shape == (2, 1, lr * scale, (lr + cls.lr_multiple) * scale)
    assert torch.isfinite(out).all()
    params = list(model.named_parameters())
    if not params:
        return
    out.abs().mean().backward()
    unused = tuple(model.unused_parameters)
    no_grad = [n for n, p in params if p.grad is None and not n.startswith(unused)]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    before = [p.detach().clone() for _, p in params]
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    assert any(not torch.equal(b, p) for b, (_, p) in zip(before, params))


# models/ only: sharpeners.py is a library module (numpy, scikit-learn), not a copy-alone model file
FILES = sorted({sys.modules[c.__module__].__file__ for c in groklst.MODELS.values() if c.__module__.startswith("models.")})


@pytest.mark.slow  # a subprocess per file (~1.3 s each); tests/test_mocolsk.py copies MoCoLSK-Net alone in the quick loop
@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_model_file_imports_alone(path, tmp_path, root):
    shutil.copy(path, tmp_path)
    module = os.path.splitext(os.path.basename(path))[0]
    code = f"import sys; sys.path = [p for p in sys.path if p not in ('', {root!r})]; import {module}"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert out.returncode == 0, out.stderr[-2000:]
    source = open(path).read()
    for forbidden in ("import numpy", "einops", "timm", "mmcv", "mmagic", "mmengine", "scipy"):
        assert forbidden not in source, f"{path} uses {forbidden}"


@pytest.mark.parametrize("name", [n for n in groklst.list_models() if groklst.MODELS[n].__module__.startswith("models.")])
def test_model_documents_its_arguments_and_shapes(name):
    """Each constructor argument is a documented config key (`model.<arg>`: one line each), forward
    states its shapes, and no model takes an LST channel count (always 1 here)."""
    import re
    cls = groklst.MODELS[name]
    doc, args = cls.__doc__ or "", groklst.model_arguments(cls)
    assert "config key `model.<arg>`" in doc
    documented = re.findall(r"^        (\w+): \S", doc, re.M)
    assert sorted(set(documented)) == sorted(args), f"documented {documented}, signature {list(args)}"
    lst_channel_names = {"lst_channels", "in_nc", "num_channels", "dep_in_channels", "dep_channel", "in_chans",
                         "num_in_ch", "n_colors", "img_channel", "in_channels"}
    assert not lst_channel_names & set(args)
    shapes = cls.forward.__doc__ or ""
    assert "lr_lst (B, 1, h, w)" in shapes and "(B, 1, h*scale, w*scale)" in shapes
    if cls.kind == "gisr":
        assert "hr_guidance (B, C, h*scale, w*scale)" in shapes
