"""train.objective=consistency (issue #25, item 2): the consistency loss and the texture term (engine.py),
their config keys, datasets without fine truth (data.py), prepare.py --real-ratio, train.py on such a dataset."""
import os

import numpy as np
import pytest
import torch

import engine
import geotiff
import groklst
import layout
import metrics
import prepare
from data import BANDS, GrokLSTDataset, block_mean, read_split
from errors import ConfigError, DataError
from footprint import Footprint, Grid

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo_mocolsk_x8.yaml")
TINY = ["model.num_feats=8", "model.reduction=4", "model.num_stages=1", "model.n_resblocks=1"]


# --------------------------------------------------------------------------- the losses


def test_consistency_loss_gradient_matches_finite_differences():
    """float64, an 8 x 8 prediction at x4, one fine pixel masked and one coarse pixel without data: the
    analytic gradient of the loss equals central finite differences (torch.autograd.gradcheck), and the
    masked block and the no-data coarse pixel give no gradient at all (they are not compared)."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=g).requires_grad_()
    lr = torch.randn(1, 1, 2, 2, dtype=torch.float64, generator=g)
    lr[0, 0, 1, 1] = float("nan")
    valid = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    valid[0, 0, 1, 2] = False  # in coarse pixel (0, 0)
    for kind in ("mse", "l1", "smooth_l1"):
        assert torch.autograd.gradcheck(lambda p, kind=kind: engine.consistency_loss(p, lr, kind, valid), (pred,))
    engine.consistency_loss(pred, lr, "mse", valid).backward()
    grad = pred.grad[0, 0]
    assert (grad[:4, :4] == 0).all() and (grad[4:, 4:] == 0).all()  # masked block, NaN coarse pixel
    assert (grad[:4, 4:] != 0).all() and (grad[4:, :4] != 0).all()
    # the value by hand: the mean squared difference of the two remaining block means
    p = pred.detach()[0, 0]
    want = ((p[:4, 4:].mean() - lr[0, 0, 0, 1]) ** 2 + (p[4:, :4].mean() - lr[0, 0, 1, 0]) ** 2) / 2
    assert torch.allclose(engine.consistency_loss(p[None, None], lr, "mse", valid), want)


def test_consistency_loss_through_a_footprint_gradient():
    """On a grid pair that is not aligned (a 3 x 3 coarse grid of 3-pixel cells offset by (0.3, -0.2) fine
    pixels) the loss goes through Footprint.aggregate's sparse operator; its gradient matches finite
    differences too, and on an aligned footprint it is the block case."""
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=g).requires_grad_()
    fine = Grid((8, 8), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), None, "fine")
    fp = Footprint(fine, Grid((3, 3), (0.3, 3.0, 0.0, -0.2, 0.0, -3.0), None, "coarse"))
    lr = torch.randn(1, 1, 3, 3, dtype=torch.float64, generator=g)
    valid = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    valid[0, 0, 4, 4] = False
    assert torch.autograd.gradcheck(lambda p: engine.consistency_loss(p, lr, "mse", valid, fp), (pred,))
    lr2 = torch.randn(1, 1, 2, 2, dtype=torch.float64, generator=g)
    assert torch.equal(engine.consistency_loss(pred, lr2, "l1", footprint=Footprint.aligned((8, 8), 4)),
                       engine.consistency_loss(pred, lr2, "l1"))


def test_consistency_loss_none_without_a_valid_coarse_pixel():
    pred = torch.zeros(1, 1, 8, 8)
    assert engine.consistency_loss(pred, torch.full((1, 1, 2, 2), float("nan")), "l1") is None


def test_texture_loss_gradient_and_where_it_allows_steps():
    """Differentiable (gradcheck); 0 for a flat prediction; a 2 K step along a guidance edge costs far less
    than the same step where the guidance is flat."""
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=g).requires_grad_()
    gui = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda p: engine.texture_loss(p, gui), (pred,))
    edge = torch.zeros(1, 2, 16, 16)
    edge[..., 8:] = 3.0  # the guidance changes between columns 7 and 8
    assert engine.texture_loss(torch.full((1, 1, 16, 16), 290.0), edge) == 0
    along, across = torch.full((1, 1, 16, 16), 290.0), torch.full((1, 1, 16, 16), 290.0)
    along[..., 8:] += 2.0
    across[..., 4:] += 2.0
    assert engine.texture_loss(along, edge) < 0.01 * engine.texture_loss(across, edge)


def test_a_model_trained_on_the_consistency_objective_reproduces_the_coarse_input():
    """A tiny guided MoCoLSK-Net, untrained, on a 32 x 32 synthetic scene at x4 (coarse = block means of its
    LST): 60 Adam steps on consistency + texture (weight 0.05), no fine truth read. The footprint means of
    its output then reproduce the coarse input: CONS below 0.3 K and below a fifth of the untrained
    model's (about 1.5 K)."""
    torch.manual_seed(0)
    cfg = groklst.load_config(DEMO, ["data.scale=4", "train.objective=consistency", "train.texture_weight=0.05"] + TINY)
    model, normalizer = groklst.build_model(cfg), groklst.build_normalizer(cfg)
    lst, gui = layout.synth_scene(32, 32, seed=21)
    lr, g = torch.from_numpy(block_mean(lst, 4))[None, None], torch.from_numpy(gui)[None]

    def cons():
        with torch.no_grad():
            return float(metrics.consistency_error(engine.downscale(model, normalizer, lr, g), lr)[0])

    before = cons()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: 3 s on one thread, 100 s with two threads on a busy 2-core CPU
    try:
        for _ in range(60):
            loss = engine.consistency_objective(engine.downscale(model, normalizer, lr, g), lr, g, normalizer, "l1", 0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    after = cons()
    assert after < 0.3 and after < 0.2 * before, (before, after)


# --------------------------------------------------------------------------- config keys


@pytest.mark.parametrize("overrides, message", [
    (["train.objective=coarse"], "train.objective='coarse': must be one of truth | consistency"),
    (["model.name=pgdm", "train.objective=consistency"], "not one with its own objective such as pgdm"),
    (["train.objective=consistency", "train.texture_weight=-0.1"], "train.texture_weight=-0.1: must be >= 0"),
    (["train.texture_weight=0.1"], "0 unless train.objective=consistency"),
    (["model.name=srcnn", "train.objective=consistency", "train.texture_weight=0.1"], "guided (gisr) model"),
])
def test_objective_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        groklst.load_config(DEMO, overrides)


def test_objective_keys_accepted_and_fixed_on_resume():
    cfg = groklst.load_config(DEMO, ["model.name=srcnn", "train.objective=consistency"])  # SISR without texture
    assert cfg["train"]["objective"] == "consistency" and cfg["train"]["texture_weight"] == 0
    assert groklst.config_changes(groklst.load_config(DEMO), cfg)  # another objective is another run
    assert not {"train.objective", "train.texture_weight"} & groklst.RESUME_FREE


def test_loss_units():
    model = groklst.create_model("bicubic", scale=4)
    assert engine.loss_units(model, "l1", "consistency", 0.1) == "K"
    assert engine.loss_units(model, "mse", "consistency", 0.1) == "K^2 + K"
    assert engine.loss_units(model, "mse", "consistency", 0.0) == "K^2"


# --------------------------------------------------------------------------- datasets without fine truth


@pytest.fixture(scope="module")
def no_truth(tmp_path_factory):
    """A demo-layout dataset (4 tiles of 32 x 32, x8) whose 30m/lst folder is removed."""
    import shutil
    root = str(tmp_path_factory.mktemp("notruth"))
    layout.make_demo(root, n_tiles=4, size=32, seed=4)
    shutil.rmtree(os.path.join(root, "30m", "lst"))
    return root


def test_dataset_without_fine_truth(no_truth):
    with pytest.raises(DataError, match=r"30m/lst: folder not found .*train.objective=consistency"):
        GrokLSTDataset(no_truth, "train", 8, list(BANDS))
    ds = GrokLSTDataset(no_truth, "train", 8, list(BANDS), truth="if_present")
    ds.check_files()
    item = ds[0]
    assert not ds.has_truth and "hr_lst" not in item and "mask" not in item
    assert item["lr_lst"].shape == (1, 4, 4) and item["hr_guidance"].shape == (10, 32, 32)
    assert read_split(no_truth, "train") == ds.names  # names resolved against 30m/guidance
    cfg = groklst.load_config(DEMO, [f"data.root={no_truth}", "data.cache=false", "data.hr_crop=16"])
    with pytest.raises(DataError, match="30m/lst: folder not found"):
        groklst.build_dataset(cfg, "train", train=True)  # objective truth: one error line
    cfg["train"]["objective"] = "consistency"
    crops = groklst.build_dataset(cfg, "train", train=True)
    assert crops[0]["hr_guidance"].shape == (10, 16, 16) and crops[0]["lr_lst"].shape == (1, 2, 2)


def test_training_never_reads_the_truth_with_the_consistency_objective(demo_root):
    cfg = groklst.load_config(DEMO, [f"data.root={demo_root}", "data.cache=false", "train.objective=consistency"])
    assert not groklst.build_dataset(cfg, "train", train=True).has_truth
    assert groklst.build_dataset(cfg, "val").has_truth  # evaluation reads it where it exists


def test_evaluation_without_truth_reports_cons_only(no_truth):
    cfg = groklst.load_config(DEMO, [f"data.root={no_truth}", "data.cache=false", "model.name=bicubic"])
    ds = groklst.build_dataset(cfg, "train")
    means, per_image = engine.evaluate(groklst.build_model(cfg), groklst.build_normalizer(cfg), ds, "cpu")
    assert set(means) == {metrics.CONS, "images"} and means["images"] == len(ds)
    assert all(set(row) == {metrics.CONS} for _, row in per_image) and 0 < means[metrics.CONS] < 1


# --------------------------------------------------------------------------- prepare.py --real-ratio


@pytest.fixture(scope="module")
def real_ratio(tmp_path_factory):
    """A 240 m LST (block means of a synthetic 30 m scene) and its 30 m guidance on the same corner, prepared
    with --real-ratio at x8; and the same LST on a 120 m grid offset by (37, -53) m at x4."""
    folder = str(tmp_path_factory.mktemp("realratio"))
    lst, gui = layout.synth_scene(192, 256, seed=6)
    x0, y0 = 500000.0, 4300000.0
    geotiff.write_geotiff(os.path.join(folder, "gui.tif"), gui, geotiff.make_geo(x0, y0, 30.0), band_names=list(BANDS))
    geotiff.write_geotiff(os.path.join(folder, "lst.tif"), block_mean(lst, 8), geotiff.make_geo(x0, y0, 240.0),
                          band_names=["lst"])
    geotiff.write_geotiff(os.path.join(folder, "lst120.tif"), block_mean(lst, 4)[:-1, :-1] + 0.0,
                          geotiff.make_geo(x0 + 37.0, y0 - 53.0, 120.0), band_names=["lst"])
    out = os.path.join(folder, "out")
    prepare.main(["--coarse-lst", os.path.join(folder, "lst.tif"), "--guidance", os.path.join(folder, "gui.tif"),
                  "--scale", "8", "--real-ratio", "--tile", "64", "--out", out])
    return {"folder": folder, "out": out, "lst": lst, "gui": gui}


def test_real_ratio_layout(real_ratio):
    """No 30m/lst; each sample is the coarse LST tile (240m/lst, 240 m pixels) and the guidance on its grid
    refined by 8 (30m/guidance, 30 m pixels, same corner): here the guidance grid is that grid, so the tiles
    are the guidance's own pixels, and the LST tiles the coarse scene's."""
    out, lst, gui = real_ratio["out"], real_ratio["lst"], real_ratio["gui"]
    assert sorted(os.listdir(os.path.join(out, "30m"))) == ["guidance"]
    names = read_split(out, "train") + read_split(out, "val") + read_split(out, "test")
    assert names
    coarse = block_mean(lst, 8)
    for name in names:
        r, c = int(name.split("_r")[1][:5]), int(name.split("_c")[1][:5])
        g, g_info = geotiff.read_geotiff(os.path.join(out, "30m", "guidance", name + ".tif"))
        t, t_info = geotiff.read_geotiff(os.path.join(out, "240m", "lst", name + ".tif"))
        assert g.shape == (10, 64, 64) and t.shape == (1, 8, 8)
        np.testing.assert_allclose(g, gui[:, r:r + 64, c:c + 64], atol=1e-4)
        np.testing.assert_array_equal(t[0], coarse[r // 8:r // 8 + 8, c // 8:c // 8 + 8])
        assert geotiff.corner_transform(g_info["geo"]) == pytest.approx((500000.0 + 30 * c, 30.0, 0.0, 4300000.0 - 30 * r, 0.0, -30.0))
        assert geotiff.corner_transform(t_info["geo"]) == pytest.approx((500000.0 + 30 * c, 240.0, 0.0, 4300000.0 - 30 * r, 0.0, -240.0))
    base = open(os.path.join(out, "base_x8.yaml")).read()
    assert "objective: consistency" in base
    cfg = groklst.load_config(os.path.join(out, "base_x8.yaml"), ["model.name=mocolsk"] + TINY)
    assert cfg["train"]["objective"] == "consistency" and len(groklst.build_dataset(cfg, "train", train=True))


def test_real_ratio_on_a_foreign_grid(real_ratio):
    """The 120 m LST offset by (37, -53) m at x4: the guidance is brought onto the 30 m grid of the LST's
    corner (bicubic from the equally fine guidance: crossgrid.onto_grid), tiles have that grid's corner."""
    folder = real_ratio["folder"]
    out = os.path.join(folder, "out120")
    summary = prepare.prepare([(os.path.join(folder, "lst120.tif"), os.path.join(folder, "gui.tif"))], out,
                              scales=(4,), coarse=True, real_ratio=True, tile=32)
    assert summary["mode"] == "real_ratio" and "bicubic" in summary["scenes"][0]["guidance_how"]
    name = read_split(out, "train")[0]
    g, info = geotiff.read_geotiff(os.path.join(out, "30m", "guidance", name + ".tif"))
    r, c = int(name.split("_r")[1][:5]), int(name.split("_c")[1][:5])
    assert geotiff.corner_transform(info["geo"])[:4] == pytest.approx((500037.0 + 30 * c, 30.0, 0.0, 4299947.0 - 30 * r))
    assert np.isfinite(g).all()
    with pytest.raises(DataError, match="one --scale"):
        prepare.prepare([(os.path.join(folder, "lst120.tif"), os.path.join(folder, "gui.tif"))],
                        os.path.join(folder, "x"), scales=(2, 4), coarse=True, real_ratio=True)


@pytest.mark.slow
def test_train_py_end_to_end_without_truth(real_ratio, tmp_path, run_script):
    """train.py with the consistency objective on the real-ratio dataset, from a config of another dataset (its
    norm kept, data.root overridden), 2 iterations: the log's loss is in K, validation picks best.pth on
    CONS, the final table has CONS only; test.py says it scores CONS only."""
    import json
    work = str(tmp_path / "run")
    out = run_script(["train.py", DEMO, f"data.root={real_ratio['out']}", "data.cache=false", "train.objective=consistency",
                      "train.texture_weight=0.05", "train.max_iters=2", "train.val_interval=2", "train.log_interval=1",
                      "data.hr_crop=32", "train.batch_size=2", f"work_dir={work}"] + TINY)
    assert out.returncode == 0, out.stderr
    log = [json.loads(line) for line in open(os.path.join(work, "log.jsonl"))]
    assert log[0]["loss_units"] == "K" and log[0]["loss"] > 0
    assert "CONS" in log[-1] and "RMSE" not in log[-1] and os.path.exists(os.path.join(work, "best.pth"))
    assert "CONS only" in out.stdout
    out = run_script(["test.py", os.path.join(work, "config.yaml"), os.path.join(work, "best.pth")])
    assert out.returncode == 0, out.stderr
    assert "only CONS" in out.stdout
