"""PGDM: fidelity to the original (parameter counts, state-dict layout, U-Net and sampler fixtures,
eta schedule), the sampling protocol (mean, spread, determinism) and the training objective.

How the ORIGINAL's numbers below were produced (never committed): cas222huan/PGDM @256876c,
lib/models.py and lib/resshift.py copied to /work/scratch/pgdm/orig/lib/ and run with torch 2.13 CPU
+ einops 0.8.2 (a scratch venv), float64, weights from `fill_fixture` below (the same function,
applied to the original's state dict, whose keys and order are ours), inputs from `inputs` below.
The scratch scripts (counts.py, layout.py, fixture_unet.py, fixture_sampler.py) printed the numbers
hard-coded here; each test's docstring names the call it reproduces.
"""
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from models.pgdm import ORIGINAL_BANDS, PGDM, convert_original_state_dict, eta_schedule, posterior

# the published configs (configs/base.yaml model_params.unet, merged with configs/var.yaml), our arguments
BASE = dict(ch_mult=(1, 2, 4, 8), attn_levels=(3,), num_affine=2, use_gate=True, diffusion=False)
V1 = dict(ch_mult=(1, 2, 4, 8), attn_levels=(2, 3))
CONFIGS = {  # name: (our arguments, the original's parameter count, trainable, 16 hex of sha256 of its "key\tshape" lines)
    "base": (BASE, 8079746, 8079746, "5ca7c27814799b45"),
    "resshift_v1_10x": (V1, 12172473, 12172089, "4013124205d87dc1"),  # also resshift_v1_20x, hyper1, hyper2
    "resshift_10x_ch8": (dict(V1, ch_base=8), 894777, 894393, None),
    "resshift_10x_ch16": (dict(V1, ch_base=16), 3188537, 3188153, None),
    "resshift_10x_ch64": (dict(V1, ch_base=64), 47726009, 47725625, None),
    "resshift_v1_10x_hyper3": (dict(V1, timesteps=15, sqrt_etas=[], kappa=1.0), 12174009, 12172089, None),
    "resshift_8x_groklst_v3": ({}, 48108217, 48107833, "7b95f41e82c9286e"),  # the defaults
}


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_counts_and_layout_equal_original(name):
    """Counts from the original: `sum(p.numel() for p in denosing_unet(**cfg).parameters())` (and with
    requires_grad) on the meta device, cfg = base.yaml model_params.unet updated by the var.yaml entry.
    The digest is sha256 over "key\\tshape" lines of its state dict, in order: same keys, shapes, order."""
    kw, total, trainable, digest = CONFIGS[name]
    with torch.device("meta"):
        net = PGDM(**kw)
    assert sum(p.numel() for p in net.parameters()) == total
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == trainable
    if digest:
        text = "\n".join(f"{k}\t{tuple(v.shape)}" for k, v in net.state_dict().items())
        assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest


def fill_fixture(model):
    """The reference weights: tensor k (state-dict order) = amp * sin(0.37 * arange(numel) + k), amp =
    1 / sqrt(numel / shape[0]) for tensors of >= 2 dims, else 0.05 (the step-embedding table included)."""
    with torch.no_grad():
        for k, t in enumerate(model.state_dict().values()):
            amp = 1.0 / math.sqrt(t.numel() / t.shape[0]) if t.dim() >= 2 else 0.05
            t.copy_((amp * torch.sin(0.37 * torch.arange(t.numel(), dtype=torch.float64) + k)).view(t.shape))


def inputs(B=2, H=32, W=32, C=10):
    """Upsampled LST, guidance (the original's order: 6 reflectances, 3 indices, DEM), x_t, land cover."""
    n = torch.arange(B * H * W, dtype=torch.float64)
    lst = (0.3 * torch.sin(0.11 * n) + 0.05 * torch.cos(0.007 * n)).view(B, 1, H, W)
    gui = torch.cos(0.013 * torch.arange(B * C * H * W, dtype=torch.float64)).view(B, C, H, W)
    x_t = (0.4 * torch.sin(0.05 * n + 1.0)).view(B, 1, H, W)
    land_cover = (torch.arange(B * H * W) * 7 % 23).view(B, 1, H, W)
    return lst, gui, x_t, land_cover


PIXELS = [(0, 0, 0), (1, -1, -1), (0, 13, 21), (1, 30, 2)]


def check(out, lst, expected):
    residual = out - lst
    assert math.isclose(out.mean().item(), expected["mean"], rel_tol=1e-6)
    assert math.isclose(residual.std().item(), expected["rstd"], rel_tol=1e-6)
    for (b, y, x), v in zip(PIXELS, expected["px"]):
        assert math.isclose(out[b, 0, y, x].item(), v, rel_tol=1e-6, abs_tol=1e-12)


def test_unet_matches_original_base_config():
    """configs/base.yaml's U-Net (no x_t branch, hybrid gate, num_affine 2, attention at level 3) with
    residual_limit=0, a land-cover map, guidance band 4 dropped for both samples, band 7 and the land
    cover for the second. Original: denosing_unet(**base, residual_limit=0)(lst, gui[:, :6], gui[:, 6:9],
    gui[:, 9:10], land_cover, mask), mask (2, 11) of ones with mask[:, 4] = mask[1, 7] = mask[1, 10] = 0."""
    model = PGDM(**BASE, residual_limit=0).double().eval()
    fill_fixture(model)
    lst, gui, _, land_cover = inputs()
    mask = torch.ones(2, 11, dtype=torch.float64)
    mask[:, 4] = mask[1, 7] = mask[1, 10] = 0
    with torch.no_grad():
        out = model.unet(lst, gui, land_cover=land_cover, channel_mask=mask)
    check(out, lst, dict(mean=0.271263116734, rstd=0.00586047903756,
                         px=[0.310982455071, 0.004648481641, -0.029901710274, -0.030637812801]))


def test_unet_matches_original_groklst_config():
    """The GrokLST x8 U-Net (resshift_8x_groklst_v3: x_t branch, FiLM num_affine 3, attention at levels
    3 and 4) with residual_limit=0.15 (34 % of the pixels clamped), t = (0, 2), and GrokLST's land-cover
    handling: here land_cover=None, in the original a class map of ones and mask entry 0 (its
    dataset_groklst.py). Original: denosing_unet(**v3, residual_limit=0.15)(lst, ..., ones, mask, xt=x_t,
    t=tensor([0, 2])), mask (2, 11) of ones with mask[:, -1] = 0."""
    model = PGDM(residual_limit=0.15).double().eval()
    fill_fixture(model)
    lst, gui, x_t, _ = inputs()
    with torch.no_grad():
        out = model.unet(lst, gui, x_t, torch.tensor([0, 2]))
    check(out, lst, dict(mean=-0.124810548754, rstd=0.0213917882643,
                         px=[-0.077928603713, -0.413277858314, -0.443173575361, -0.406489646762]))
    assert ((out - lst).abs() > 0.15 - 1e-12).float().mean().item() == pytest.approx(0.33642578125)


def test_step_embedding_table():
    """Row t of the frozen table: sin(t w_i) at even and cos(t w_i) at odd columns, w_i = 10000 ** (-2i / dim)."""
    table = PGDM(ch_base=8, ch_mult=(1, 2), attn_levels=(), timesteps=15, sqrt_etas=None, kappa=1.0).timestep_embedder.embedding.weight
    assert table.shape == (15, 128) and not table.requires_grad
    for t, i in [(0, 0), (1, 0), (3, 5), (14, 63), (7, 20)]:
        w = 10000 ** (-2 * i / 128)
        assert math.isclose(table[t, 2 * i].item(), math.sin(t * w), abs_tol=1e-6)
        assert math.isclose(table[t, 2 * i + 1].item(), math.cos(t * w), abs_tol=1e-6)


def reference_sqrt_etas(T, kappa, min_noise_level, etas_end, power):
    """ResShift's schedule written out: start = min(m / kappa, m), r = exp(log(end / start) / (T - 1)),
    sqrt(eta_t) = start * r ** ((t / (T - 1)) ** power * (T - 1))."""
    start = min(min_noise_level / kappa, min_noise_level)
    r = math.exp(math.log(etas_end / start) / (T - 1))
    return [start * r ** ((t / (T - 1)) ** power * (T - 1)) for t in range(T)]


@pytest.mark.parametrize("T, kappa, m, end, p", [(15, 2.0, 0.04, 0.99, 0.3), (4, 0.5, 0.04, 0.99, 0.3), (15, 1.0, 0.04, 0.99, 0.3),
                                                   (10, 0.05, 0.1, 0.9, 1.0), (2, 4.0, 0.2, 0.8, 0.5)])
def test_eta_schedule_and_posterior(T, kappa, m, end, p):
    ref = reference_sqrt_etas(T, kappa, m, end, p)
    ours = eta_schedule(T, kappa, m, end, p)
    assert ours.dtype == torch.float64 and len(ours) == T
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(ours.tolist(), ref))
    net = PGDM(ch_base=8, ch_mult=(1, 2), attn_levels=(), timesteps=T, sqrt_etas=None, kappa=kappa,
               min_noise_level=m, etas_end=end, power=p)
    assert torch.equal(net.sqrt_etas, ours)
    etas = [s * s for s in ref]
    c_xt, c_x0, sigma = posterior(ours ** 2, kappa)
    for t in range(T):
        prev = etas[t - 1] if t else 0.0
        assert math.isclose(c_xt[t].item(), prev / etas[t], abs_tol=1e-15)
        assert math.isclose(c_x0[t].item(), (etas[t] - prev) / etas[t], rel_tol=1e-12)
        var = kappa ** 2 * prev / etas[t] * (etas[t] - prev) if t else kappa ** 2 * etas[0] / etas[1] * (etas[1] - etas[0])
        assert math.isclose(sigma[t].item(), math.sqrt(var), rel_tol=1e-12)


def test_eta_schedule_of_the_original_for_t4():
    """resshift_diffusion(n_timesteps=4, kappa=0.5, sqrt_etas=None).sqrt_etas printed by the original."""
    ours = eta_schedule(4, 0.5, 0.04, 0.99, 0.3).tolist()
    for a, b in zip(ours, [0.04, 0.40211609813820437, 0.6855285292475223, 0.9899999999999998]):
        assert math.isclose(a, b, rel_tol=1e-13)


SMALL_V3 = dict(ch_base=8, residual_limit=0.15)  # the GrokLST layout at width 8
SMALL_2 = dict(ch_base=8, ch_mult=(1, 2, 4), attn_levels=(1, 2), num_affine=2, use_gate=True, residual_limit=0,
               timesteps=4, sqrt_etas=None, kappa=0.5)


@pytest.mark.parametrize("kw, seed, land_cover, expected", [
    (dict(SMALL_V3, kappa=0.02), 7, False, dict(
        mean1=-0.0340085555114, px1=[0.014629504935, -0.415599414817, -0.443173575361],
        mean2=-0.0340076829966, pxm=[0.014646589339, -0.34574207802], std=1.8635817881e-05, pxs=[1.7084404e-05, 2.052327e-05])),
    (SMALL_2, 11, True, dict(
        mean1=-0.0638992726809, px1=[0.006421607076, -0.337592684523, -0.417332334532],
        mean2=-0.0639038858451, pxm=[0.005922428246, -0.275976769172], std=0.000531300808906, pxs=[0.00049917883, 0.001175137897])),
])
def test_sampler_matches_original(kw, seed, land_cover, expected):
    """The original's sampler for the same noise. Original: torch.manual_seed(seed), then two
    consecutive resshift_diffusion(...).sample(model=denosing_unet(...), lst_lr_itp=lst, ...) calls
    (x_T's noise, then one per step, from the global CPU generator), float64, fill_fixture weights:
    (1) published schedule (T 3, sqrt_etas 0.05/0.6/0.99, kappa 0.02), GrokLST layout at ch_base 8,
    GrokLST's dummy land cover; (2) computed schedule (T 4, kappa 0.5), num_affine 2 with the time
    branch, the gate, land cover valid, band 4 dropped. Ours draws the same stream from a generator
    seeded alike; draw 1 alone, then mean and population std of the two."""
    model = PGDM(**kw).double()
    fill_fixture(model)
    lst, gui, _, lc = inputs()
    mask = None
    if land_cover:
        mask = torch.ones(2, 11, dtype=torch.float64)
        mask[:, 4] = 0
    lc = lc if land_cover else None
    with torch.no_grad():
        one, zero = model.sample_upsampled(lst, gui, 1, torch.Generator().manual_seed(seed), lc, mask)
        mean, std = model.sample_upsampled(lst, gui, 2, torch.Generator().manual_seed(seed), lc, mask)
    assert torch.equal(zero, torch.zeros_like(zero))
    assert math.isclose(one.mean().item(), expected["mean1"], rel_tol=1e-6)
    for (b, y, x), v in zip(PIXELS, expected["px1"]):
        assert math.isclose(one[b, 0, y, x].item(), v, rel_tol=1e-6)
    assert math.isclose(mean.mean().item(), expected["mean2"], rel_tol=1e-6)
    assert math.isclose(std.mean().item(), expected["std"], rel_tol=1e-5)
    for (b, y, x), v, s in zip([(0, 0, 0), (1, 30, 2)], expected["pxm"], expected["pxs"]):
        assert math.isclose(mean[b, 0, y, x].item(), v, rel_tol=1e-6)
        assert math.isclose(std[b, 0, y, x].item(), s, rel_tol=1e-5)


def tiny(**kw):
    torch.manual_seed(0)
    return PGDM(**dict(dict(ch_base=8, ch_mult=(1, 2, 4), attn_levels=(2,), scale=4), **kw))


def lr_and_guidance(B=2, h=6, w=5, scale=4):
    torch.manual_seed(1)
    return torch.randn(B, 1, h, w), torch.randn(B, 10, h * scale, w * scale)


def test_sampling_is_deterministic_with_a_generator_and_shapes():
    model = tiny(num_samples=4)
    lr, gui = lr_and_guidance()
    with torch.no_grad():
        a = model.sample(lr, gui, generator=torch.Generator().manual_seed(3))
        b = model.sample(lr, gui, generator=torch.Generator().manual_seed(3))
        c = model.sample(lr, gui, generator=torch.Generator().manual_seed(4))
        out = model(lr, gui)
    assert a[0].shape == a[1].shape == out.shape == (2, 1, 24, 20)  # 24 x 20 is padded to 32 x 32 inside
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert (a[1] > 0).all()  # a real network and kappa > 0: the draws differ everywhere
    # the mean and spread are those of the individual draws
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        draws = torch.stack([model.sample(lr, gui, num_samples=1, generator=g)[0] for _ in range(4)])
    assert torch.allclose(a[0], draws.mean(0), atol=1e-6) and torch.allclose(a[1], draws.std(0, correction=0), atol=1e-6)


class IgnoresState(PGDM):
    """A network that does not see x_t: every draw ends at the same x0_hat."""

    def denoise(self, geo, lst_itp, x_t=None, t=None):
        return super().denoise(geo, lst_itp, torch.zeros_like(lst_itp), t)


@pytest.mark.parametrize("case", ["ignores_x_t", "kappa_0", "no_diffusion"])
def test_spread_is_zero_where_the_model_is_deterministic(case):
    """The spread comes from the noise only: none when the network ignores x_t (the last posterior
    step returns x0_hat), when kappa = 0 (no noise), or without the diffusion branch."""
    torch.manual_seed(0)
    kw = dict(ch_base=8, ch_mult=(1, 2, 4), attn_levels=(2,), scale=4)
    model = {"ignores_x_t": lambda: IgnoresState(**kw), "kappa_0": lambda: PGDM(**kw, kappa=0.0),
             "no_diffusion": lambda: PGDM(**kw, diffusion=False)}[case]()
    lr, gui = lr_and_guidance()
    with torch.no_grad():
        mean, std = model.sample(lr, gui, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(std, torch.zeros_like(std)) and torch.isfinite(mean).all()
    assert model.stochastic == (case != "no_diffusion")


def test_sampling_steps():
    """All T steps = the default; one step = x0_hat at t = T-1 from x_{T-1} = y + kappa sqrt(eta_{T-1}) noise."""
    model = tiny(timesteps=4, sqrt_etas=(0.1, 0.4, 0.7, 0.95), kappa=0.3)
    lr, gui = lr_and_guidance()
    with torch.no_grad():
        full = model.sample(lr, gui, generator=torch.Generator().manual_seed(5))[0]
        model.sampling_steps = 4
        assert torch.equal(model.sample(lr, gui, generator=torch.Generator().manual_seed(5))[0], full)
        model.sampling_steps = 1
        one = model.sample(lr, gui, generator=torch.Generator().manual_seed(5))[0]
        y = model.upsample(lr)
        y_pad, gui_pad = model._pad(y, gui)
        noise = torch.randn(y_pad.shape, generator=torch.Generator().manual_seed(5))
        x_t = y_pad + 0.3 * 0.95 * noise
        direct = model.unet(y_pad, gui_pad, x_t / (3 * 0.3 * 0.95 + 1), torch.full((2,), 3))[..., :24, :20]
    assert torch.allclose(one, direct, atol=1e-6)
    assert model.steps()[0] == [3]
    model.sampling_steps = 3
    assert model.steps()[0] == [0, 2, 3]  # round(0), round(1.5) = 2, round(3)


@pytest.mark.parametrize("kw", [{}, dict(diffusion=False, use_gate=True, num_affine=2), dict(loss_type="mae", guidance_drop=0.5)])
def test_training_loss_finite_with_gradients_over_valid_pixels(kw):
    model = tiny(**kw)
    lr, gui = lr_and_guidance()
    hr = torch.randn(2, 1, 24, 20)
    mask = torch.ones(2, 1, 24, 20, dtype=torch.bool)
    mask[0, :, :5] = False
    loss = model.training_loss(lr, gui, hr, mask, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    unused = model.unused_parameters
    missing = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith(unused)]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the same draws with other values at invalid pixels give the same loss
    hr2 = torch.where(mask, hr, torch.full_like(hr, 50.0))
    loss2 = model.training_loss(lr, gui, hr2, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss, loss2)


def test_training_loss_is_the_original_objective():
    """MSE between x0_hat(x_t / (3 kappa sqrt(eta_t) + 1), t) and x_0, with x_t = x_0 + eta_t (y - x_0) +
    kappa sqrt(eta_t) noise, t and noise the generator's first draws (the original's train_step)."""
    model = tiny(kappa=0.2)
    lr, gui = lr_and_guidance()
    hr = torch.randn(2, 1, 24, 20)
    mask = torch.ones(2, 1, 24, 20, dtype=torch.bool)
    with torch.no_grad():
        loss = model.training_loss(lr, gui, hr, mask, generator=torch.Generator().manual_seed(9))
        g = torch.Generator().manual_seed(9)
        t = torch.randint(0, 3, (2,), generator=g)
        noise = torch.randn(2, 1, 24, 20, generator=g)
        s = torch.tensor([0.05, 0.6, 0.99])[t].view(2, 1, 1, 1)
        y = model.upsample(lr)
        x_t = hr + s ** 2 * (y - hr) + 0.2 * s * noise
        y_p, g_p, x_p = model._pad(y, gui, x_t / (3 * 0.2 * s + 1))
        pred = model.unet(y_p, g_p, x_p, t)[..., :24, :20]
    assert math.isclose(loss.item(), (pred - hr).square().mean().item(), rel_tol=1e-5)


def test_convert_original_state_dict_reorders_the_guidance():
    """An original checkpoint (guidance in ORIGINAL_BANDS order) converted to the toolkit's band order
    gives the same output on the same bands in the toolkit's order."""
    toolkit = ("dem", "deepblue", "blue", "green", "red", "vre", "nir", "ndmvi", "ndvi", "ndwi")
    original = tiny(use_gate=True).double().eval()
    state = convert_original_state_dict(original.state_dict(), toolkit)
    ours = tiny(use_gate=True).double().eval()
    ours.load_state_dict(state)
    lst, gui, x_t, _ = inputs(B=2, H=16, W=16)
    permuted = gui[:, [ORIGINAL_BANDS.index(b) for b in toolkit]]
    with torch.no_grad():
        a = original.unet(lst, gui, x_t, torch.tensor([1, 2]))
        b = ours.unet(lst, permuted, x_t, torch.tensor([1, 2]))
        c = original.unet(lst, permuted, x_t, torch.tensor([1, 2]))
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="lst"):
        convert_original_state_dict(state, ("lst",))


@pytest.mark.parametrize("scale, h, w", [(2, 3, 5), (4, 6, 5), (8, 2, 3), (8, 9, 4)])
def test_any_size_is_padded_and_cropped(scale, h, w):
    model = tiny(scale=scale)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(1, 1, h, w), torch.randn(1, 10, h * scale, w * scale))
    assert out.shape == (1, 1, h * scale, w * scale) and torch.isfinite(out).all()


def test_documents_its_arguments_and_shapes():
    """The zoo's rule (tests/test_models.py) for a model not yet registered: every constructor
    argument is one `model.<arg>` line of the docstring; forward states its shapes."""
    import inspect
    doc = PGDM.__doc__
    args = list(inspect.signature(PGDM.__init__).parameters)[1:]
    assert "config key `model.<arg>`" in doc
    assert sorted(set(re.findall(r"^        (\w+): \S", doc, re.M))) == sorted(args)
    shapes = PGDM.forward.__doc__
    assert "lr_lst (B, 1, h, w)" in shapes and "hr_guidance (B, C, h*scale, w*scale)" in shapes
    assert "(B, 1, h*scale, w*scale)" in shapes
    assert PGDM.kind == "gisr" and PGDM.stochastic and PGDM.lr_multiple == 1


def test_file_runs_when_copied_alone(tmp_path, root):
    shutil.copy(os.path.join(root, "models", "pgdm.py"), tmp_path)
    code = ("import sys; sys.path = [p for p in sys.path if p not in ('', %r)]; sys.path.insert(0, %r); "
            "import torch, pgdm; n = pgdm.PGDM(scale=2, ch_base=8, ch_mult=(1, 2), attn_levels=(1,)); "
            "m, s = n.sample(torch.randn(1, 1, 4, 4), torch.randn(1, 10, 8, 8), num_samples=2); "
            "print(tuple(m.shape), tuple(s.shape))") % (root, str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 1, 8, 8) (1, 1, 8, 8)"
    source = open(os.path.join(root, "models", "pgdm.py")).read()
    assert not re.search(r"^(import|from) (?!torch|math)", source, re.M)


@pytest.mark.parametrize("kw, match", [(dict(sqrt_etas=(0.05, 0.99)), "timesteps=3"), (dict(sqrt_etas=(0.6, 0.05, 0.99)), "increasing"),
                                       (dict(num_affine=4), "num_affine"), (dict(sampling_steps=5), "sampling_steps"),
                                       (dict(loss_type="l2"), "loss_type"), (dict(num_samples=0), "num_samples")])
def test_bad_arguments_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match), torch.device("meta"):
        PGDM(**kw)


# --------------------------------------------------------------------------- the toolkit's protocol


def test_registered_with_configs_in_the_originals_kelvin(config):
    """pgdm is a registered GISR model; each config's kappa and residual clamp are the original's 0.02 and
    40/180 of its 44.395 K unit, in the config's own norm.lst.std; schedule and seed as the original's."""
    import groklst
    assert groklst.MODELS["pgdm"] is PGDM
    unit = (330.92 - 242.13) / 2
    for name in ("pgdm_x2", "pgdm_x4", "pgdm_x8", "demo_pgdm_x8"):
        cfg = groklst.load_config(config(name))
        std, m, t = cfg["norm"]["lst"]["std"], cfg["model"], cfg["train"]
        assert m["kappa"] * std == pytest.approx(0.02 * unit, rel=1e-4)
        assert m["residual_limit"] * std == pytest.approx(40 / 180 * unit, rel=1e-4)
        if name.startswith("pgdm"):
            assert (t["lr"], t["weight_decay"], t["eta_min"], t["batch_size"], t["seed"]) == (1e-4, 1e-4, 1e-5, 4, 42)
            assert t["restart_period"] == t["max_iters"] == 300 * t["val_interval"]  # one cosine over 300 "epochs"
            assert cfg["data"]["hr_crop"] is None and m["num_samples"] == 1
    with torch.device("meta"):
        assert groklst.num_parameters(groklst.build_model(groklst.load_config(config("pgdm_x8")))) == 48108217


def test_forward_with_a_target_is_the_training_loss():
    """forward(lr, g, hr_lst=, mask=) is training_loss with the global RNG: the call DDP sees."""
    model = tiny()
    lr, gui = lr_and_guidance()
    hr = torch.randn(2, 1, 24, 20)
    mask = torch.rand(2, 1, 24, 20) > 0.2
    torch.manual_seed(5)
    a = model(lr, gui, hr_lst=hr, mask=mask)
    b = model.training_loss(lr, gui, hr, mask, generator=torch.Generator().manual_seed(5))
    assert a.dim() == 0 and torch.equal(a, b)
    assert model.loss_units == "normalised^2" and tiny(loss_type="mae").loss_units == "normalised"


def normalizer_and_kelvin(model_scale=4):
    from data import Normalizer
    norm = {"lst": {"method": "zscore", "mean": 290.0, "std": 8.0},
            "guidance": {"method": "zscore", "stats": {f"b{i}": {"mean": 0.5 * i, "std": 2.0} for i in range(10)}}}
    lr, gui = lr_and_guidance(scale=model_scale)
    return Normalizer(norm, [f"b{i}" for i in range(10)]), 290.0 + 8.0 * lr, 2.0 * gui + 0.5 * torch.arange(10.0).view(1, 10, 1, 1)


def test_downscale_samples_with_seed_0_and_returns_sigma_in_kelvin():
    """engine.downscale of a stochastic model: mean and sigma (K) of model.sample on the normalised inputs
    with a generator seeded with engine.SAMPLING_SEED, the same at every call; sigma = std x norm.lst.std."""
    import engine
    model = tiny(num_samples=2).eval()
    normalizer, lr_k, gui_k = normalizer_and_kelvin()
    with torch.no_grad():
        mean, sigma = engine.downscale(model, normalizer, lr_k, gui_k, spread=True, num_samples=4)
        again = engine.downscale(model, normalizer, lr_k, gui_k, num_samples=4)
        own = engine.downscale(model, normalizer, lr_k, gui_k)  # the model's num_samples: 2
        lr, gui = lr_and_guidance()  # the same tensors, normalised by hand
        ref_mean, ref_std = model.sample(lr, gui, num_samples=4, generator=torch.Generator().manual_seed(0))
        ref_two = model.sample(lr, gui, num_samples=2, generator=torch.Generator().manual_seed(0))[0]
    assert engine.SAMPLING_SEED == 0
    assert mean.shape == sigma.shape == (2, 1, 24, 20) and torch.equal(mean, again)
    assert torch.allclose(mean, 290.0 + 8.0 * ref_mean, atol=1e-4) and torch.allclose(sigma, 8.0 * ref_std, atol=1e-6)
    assert (sigma > 0).all() and torch.allclose(own, 290.0 + 8.0 * ref_two, atol=1e-4)
    with torch.no_grad():
        one = engine.downscale(model, normalizer, lr_k, gui_k, spread=True, num_samples=1)[1]
    assert torch.equal(one, torch.zeros_like(one))


def test_spread_of_a_deterministic_model_is_an_error():
    import engine
    import groklst
    from errors import ConfigError
    normalizer, lr_k, gui_k = normalizer_and_kelvin()
    for model in (groklst.create_model("bicubic", scale=4), tiny(diffusion=False)):
        with pytest.raises(ConfigError, match="deterministic"):
            engine.downscale(model, normalizer, lr_k, gui_k, spread=True)


def test_model_loss_normalises_and_goes_through_the_wrapper():
    """engine.model_loss: Kelvin in, the model's training_loss on the normalised tensors out (NaN targets at
    invalid pixels stay out), via forward; has_objective and loss_units look through torch.compile's wrapper."""
    import engine
    import groklst
    model = tiny()
    normalizer, lr_k, gui_k = normalizer_and_kelvin()
    hr = torch.randn(2, 1, 24, 20)
    mask = torch.rand(2, 1, 24, 20) > 0.3
    hr_k = torch.where(mask, 290.0 + 8.0 * hr, float("nan"))
    torch.manual_seed(2)
    loss = engine.model_loss(model, normalizer, lr_k, gui_k, hr_k, mask)
    lr, gui = lr_and_guidance()
    ref = model.training_loss(lr, gui, torch.where(mask, hr, 0.0), mask, generator=torch.Generator().manual_seed(2))
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and math.isclose(loss.item(), ref.item(), rel_tol=1e-5)
    wrapped = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert engine.bare_model(wrapped) is model and engine.has_objective(wrapped)
    assert engine.loss_units(wrapped, "l1") == "normalised^2"
    bicubic = groklst.create_model("bicubic", scale=4)
    assert not engine.has_objective(bicubic) and engine.loss_units(bicubic, "l1") == "K"
    assert engine.loss_units(bicubic, "mse") == "K^2"


TINY_PGDM = {"name": "pgdm", "ch_base": 8, "ch_mult": [1, 2], "attn_levels": []}


@pytest.mark.slow
def test_train_kill_and_resume_gives_identical_weights(tmp_path, demo_root, tiny_config, run_script, root):
    """A tiny PGDM through train.py: its own objective (the log says normalised^2), killed with SIGKILL in
    iteration 5, resumed from the checkpoint of iteration 4, to every weight bit for bit (the diffusion's t
    and noise come from the global RNG, which train.py reseeds from (seed, rank, iteration))."""
    import json
    cfg = tiny_config(tmp_path, demo_root, TINY_PGDM, ckpt_interval=2)
    full = run_script(["train.py", cfg, f"work_dir={tmp_path / 'full'}", "--no-test"])
    assert full.returncode == 0, full.stderr[-3000:]
    assert "normalised^2 | lr" in full.stdout
    killer = ("import os, signal, sys; sys.path.insert(0, %r); import engine, train\n"
              "calls, real = [0], engine.model_loss\n"
              "def dying(*a, **k):\n"
              "    calls[0] += 1\n"
              "    if calls[0] == 5: os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return real(*a, **k)\n"
              "engine.model_loss = dying\n"
              "train.main(sys.argv[1:])\n") % root
    killed = run_script(["-c", killer, cfg, f"work_dir={tmp_path / 'cut'}", "--no-test"])
    assert killed.returncode == -9
    assert torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["iter"] == 4
    resumed = run_script(["train.py", cfg, f"work_dir={tmp_path / 'cut'}", "--resume", "--no-test"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "full" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in open(tmp_path / "cut" / "log.jsonl")]
    assert [r["iter"] for r in log if "loss" in r] == list(range(1, 9))
    assert all(r["loss_units"] == "normalised^2" and 0 < r["loss"] < 100 for r in log if "loss" in r)


DDP_SCRIPT = """
import argparse, json, os, sys
sys.path.insert(0, {root!r})
import torch, engine, groklst, train
torch.set_num_threads(1)
rank, world, device = engine.setup_distributed()
try:
    cfg = groklst.load_config(sys.argv[1], sys.argv[2:])
    if world > 1:
        normalizer, model = train.train(cfg, argparse.Namespace(resume=None, init=None), rank, world, device)
        torch.save(model.state_dict(), os.path.join(cfg["work_dir"], f"rank{{rank}}.pt"))
    else:
        normalizer, model = groklst.build_normalizer(cfg), groklst.build_model(cfg)
        model.load_state_dict(torch.load(os.path.join(cfg["work_dir"], "rank0.pt")))
    means, rows = engine.evaluate(model, normalizer, groklst.build_dataset(cfg, "test"), device)
    if rank == 0:
        json.dump({{"means": means, "rows": rows}}, open(os.path.join(cfg["work_dir"], f"eval{{world}}.json"), "w"))
    engine.teardown_distributed(barrier=True)
finally:
    engine.teardown_distributed()
"""


@pytest.mark.slow
def test_ddp_two_processes_keeps_the_ranks_identical(tmp_path, demo_root, tiny_config, run_script, root):
    """Two gloo processes train a tiny PGDM: its loss goes through DDP's forward, so the gradients are
    all-reduced and both ranks end with the same weights (a call that bypassed forward would leave them
    apart); the sharded evaluation, every image sampled with seed 0, equals one process's."""
    import json
    cfg = tiny_config(tmp_path, demo_root, TINY_PGDM, max_iters=3)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=root))
    wd = tmp_path / "ddp"
    out = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), cfg,
                      f"work_dir={wd}"], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = torch.load(wd / "rank0.pt"), torch.load(wd / "rank1.pt")
    torch.manual_seed(0)  # train.seed_everything's seed (the demo base's train.seed): the initial weights
    init = PGDM(scale=4, ch_base=8, ch_mult=(1, 2), attn_levels=()).state_dict()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert any(not torch.equal(r0[k], init[k]) for k in r0)  # and they were trained
    single = run_script([str(script), cfg, f"work_dir={wd}"])
    assert single.returncode == 0, single.stderr[-3000:]
    two, one = json.load(open(wd / "eval2.json")), json.load(open(wd / "eval1.json"))
    assert two["rows"] == one["rows"] and two["means"] == one["means"]


def test_pgdm_numbers_spread_and_time(demo_root, tmp_path, tiny_config, root, capsys):
    """tools/pgdm_numbers.py on a tiny untrained PGDM: the spread table (test.py's metrics row of the mean,
    per image RMSE and mean sigma, r, the face-value coverage) and the time per tile."""
    import importlib.util

    import groklst
    spec = importlib.util.spec_from_file_location("pgdm_numbers", os.path.join(root, "tools", "pgdm_numbers.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = tiny_config(tmp_path, demo_root, TINY_PGDM)
    torch.manual_seed(0)
    torch.save({"model": groklst.build_model(groklst.load_config(cfg)).state_dict()}, tmp_path / "tiny.pth")
    tool.main(["spread", cfg, str(tmp_path / "tiny.pth"), "--samples", "2", "--split", "val"])
    printed = capsys.readouterr().out
    spec = importlib.util.spec_from_file_location("groklst_test_script", os.path.join(root, "test.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([cfg, str(tmp_path / "tiny.pth"), "model.num_samples=2", "--split", "val", "--out", str(tmp_path / "t.json")])
    table = capsys.readouterr().out.split("| pgdm x4 |")[1].split("\n")[0]
    assert f"| pgdm x4, mean of 2 draws |{table}" in printed  # the metrics row of test.py, from the same draws
    assert printed.count("| tile_") == 2 and "Pearson r (sigma vs |error|, every valid pixel)" in printed
    covered = float(re.search(r"covers ([0-9.]+) of the valid pixels, mean width ([0-9.]+) K", printed).group(1))
    assert 0.0 <= covered <= 1.0
    tool.main(["time", cfg, "--hr", "32", "--samples", "1", "2", "--repeat", "1"])
    printed = capsys.readouterr().out
    assert "32 x 32 output tile" in printed and "2 sample(s):" in printed
