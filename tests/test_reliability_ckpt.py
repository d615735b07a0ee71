"""Issue #15, checkpoint and config side: nothing in a checkpoint can run, original checkpoints of every
layout convert, a checkpoint or config that does not fit ends in one line naming the cause, and a failed
command leaves nothing half-written. Commands run as a user runs them (subprocess), or through their
main(argv) when many cases share one process."""
import glob
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import groklst
from checkpoints import Unloaded, fit_state_dict, load_weights, read_checkpoint
from errors import ConfigError, DataError

TINY_MOCOLSK = {"name": "mocolsk", "num_feats": 8, "reduction": 4, "num_stages": 1, "n_resblocks": 1, "mlp_hidden": 8}
TINY = {  # original-layout families: their state dicts hold buffers ours derive
    "swinir": {"name": "swinir", "img_size": 16, "depths": [2], "num_heads": [2], "embed_dim": 8, "num_feat": 8},
    "ngswin": {"name": "ngswin", "embed_dim": 16, "depths": [2, 2, 2], "num_heads": [2, 2, 2], "dec_dim": 16,
               "dec_depths": 2, "dec_num_heads": 2},
}


@pytest.fixture(scope="session")
def cli(root):
    """cli(script, *args): the command run as a user runs it, in the repository root."""
    return lambda *args: subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=300)


def assert_user_error(r, *names):
    """Exit status 1, one `error:` line naming each of `names`, no traceback."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), r.stderr
    for name in names:
        assert str(name) in line, (name, line)


def main_error(main, *argv):
    """The `error:` line an entry script's main(argv) ends with (SystemExit, exit status 1)."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.fixture(scope="session")
def write_config(root):
    """write_config(path, model, scale=8, data_root='data/demo', **data keys): a config on the demo base."""
    def write(path, model, scale=8, data_root="data/demo", **data):
        cfg = {"_base_": os.path.join(root, "configs", "_base_", "demo_x8.yaml"), "model": model,
               "data": {"root": data_root, "scale": scale, **data}}
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        return str(path)
    return write


class Payload:
    """Unpickling this runs `touch marker` with a plain pickle (torch.load(weights_only=False))."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --------------------------------------------------------------------------- nothing in a file runs


@pytest.mark.parametrize("form", ["zip", "raw_pickle", "legacy"])
def test_malicious_checkpoint_runs_nothing(tmp_path, form, cli):
    marker, src, dst = tmp_path / "MARKER", tmp_path / f"evil_{form}.pth", tmp_path / "out.pth"
    obj = {"state_dict": {"generator.conv.weight": Payload(marker)}, "meta": {"x": Payload(marker)}}
    if form == "raw_pickle":
        with open(src, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, src, _use_new_zipfile_serialization=form == "zip")
    r = cli("groklst.py", "convert-checkpoint", str(src), str(dst))
    assert not marker.exists(), "the checkpoint's code ran"
    assert_user_error(r, src)
    assert not dst.exists()
    with pytest.raises(DataError, match="no model weights|not a checkpoint"):  # the library path as well
        load_weights(torch.nn.Conv2d(1, 1, 1), str(src))
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_payload_beside_weights_is_inert(tmp_path, zip_format):
    """A payload in `meta` of a checkpoint that also holds weights (zip or legacy torch format): the
    weights load, the payload stays an Unloaded stand-in that records what it was given."""
    marker, src = tmp_path / "MARKER", tmp_path / "mixed.pth"
    net = torch.nn.Conv2d(1, 2, 3)
    torch.save({"meta": {"hook": Payload(marker)}, "state_dict": {"generator." + k: v for k, v in net.state_dict().items()}},
               src, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(src, weights_only=True)  # so the restricted unpickler is what reads it
    ckpt = read_checkpoint(str(src))
    hook = ckpt["meta"]["hook"]
    assert isinstance(hook, Unloaded) and hook.qualname.endswith(".system") and "touch" in hook.args[0]
    other = torch.nn.Conv2d(1, 2, 3)
    load_weights(other, str(src))
    assert torch.equal(other.weight, net.weight) and not marker.exists()


def test_torchscript_archive_refused(tmp_path):
    src = tmp_path / "scripted.pth"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(1, 1, 1)), str(src))
    with pytest.raises(DataError, match="not a checkpoint"):
        read_checkpoint(str(src))


def test_mmagic_checkpoint_converts(tmp_path, cli, write_config):
    """An original checkpoint: `state_dict` with generator. keys, and meta/message_hub holding objects of
    mmengine (absent here; a fake module exists only while saving) and numpy."""
    fake = tmp_path / "fake"
    (fake / "mmengine" / "logging").mkdir(parents=True)
    (fake / "mmengine" / "__init__.py").write_text("")
    (fake / "mmengine" / "logging" / "__init__.py").write_text("")
    (fake / "mmengine" / "logging" / "history_buffer.py").write_text(
        "class HistoryBuffer:\n    def __init__(self):\n        self.data = [1.0, 2.0]\n")
    sys.path.insert(0, str(fake))
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        cfg = groklst.load_config(write_config(tmp_path / "tiny.yaml", TINY_MOCOLSK))
        net = groklst.build_model(cfg)
        state = {"generator." + k: v for k, v in net.state_dict().items()}
        torch.save({"meta": {"epoch": 3, "iter": 10000, "dtype": np.dtype("float32"), "seed": np.int64(7)},
                    "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}, "arr": np.arange(4.0)},
                    "state_dict": state, "optimizer": {"state": {}}}, tmp_path / "orig.pth")
    finally:
        sys.path.remove(str(fake))
        for name in [m for m in sys.modules if m.split(".")[0] == "mmengine"]:
            del sys.modules[name]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "orig.pth", weights_only=True)
    r = cli("groklst.py", "convert-checkpoint", str(tmp_path / "orig.pth"), str(tmp_path / "ours.pth"),
            "--config", str(tmp_path / "tiny.yaml"))
    assert r.returncode == 0, r.stderr
    ours = torch.load(tmp_path / "ours.pth", weights_only=True)  # our format: plain types only
    assert ours["model_name"] == "mocolsk" and ours["config"]["model"]["num_feats"] == 8
    fresh = groklst.build_model(cfg)
    fresh.load_state_dict(ours["model"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))


# --------------------------------------------------------------------------- every original layout converts


def upstream_attn_mask(side, ws, shift):
    """The shifted-window mask as the original SwinIR/NGswin stored it, written out pixel by pixel:
    (nW, ws*ws, ws*ws), 0 where two pixels of a window come from the same region of the rolled image."""
    def region(i):
        return 0 if i < side - ws else 1 if i < side - shift else 2
    label = np.array([[3 * region(y) + region(x) for x in range(side)] for y in range(side)])
    n = side // ws
    windows = label.reshape(n, ws, n, ws).transpose(0, 2, 1, 3).reshape(n * n, ws * ws)
    return torch.from_numpy(np.where(windows[:, None, :] == windows[:, :, None], 0.0, -100.0).astype(np.float32))


def original_layout(net, side=32):
    """An original checkpoint's state dict for `net`: every buffer, and each shifted block's attn_mask at
    `side` x `side`, under generator."""
    state = dict(net.state_dict())
    state.update(dict(net.named_buffers()))
    for name, block in net.named_modules():
        if type(block).__name__ in ("SwinTransformerBlock", "NSTB") and block.shift_size > 0:
            state[f"{name}.attn_mask"] = upstream_attn_mask(side, block.window_size, block.shift_size)
    return {"generator." + k: v for k, v in state.items()}


@pytest.mark.parametrize("family", sorted(TINY))
def test_convert_original_layout(tmp_path, family, cli, write_config):
    cfg_path = write_config(tmp_path / f"{family}.yaml", TINY[family], scale=2)
    cfg = groklst.load_config(cfg_path)
    torch.manual_seed(0)
    net = groklst.build_model(cfg)
    state = original_layout(net)
    assert len(state) > len(net.state_dict())  # the original stores buffers ours do not
    masks = [k for k in state if k.endswith(".attn_mask")]
    assert masks, "no shifted block"
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "orig.pth")
    r = cli("groklst.py", "convert-checkpoint", str(tmp_path / "orig.pth"), str(tmp_path / "ours.pth"), "--config", cfg_path)
    assert r.returncode == 0, r.stderr
    fresh = groklst.build_model(cfg)
    fresh.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True)["model"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    other = groklst.build_model(cfg)
    load_weights(other, str(tmp_path / "orig.pth"))  # test.py/predict read the original directly too

    # a derived buffer with other values than ours is refused, nothing written
    for key in (masks[0], next(k for k in state if k.endswith("relative_position_index"))):
        torch.save({"state_dict": dict(state, **{key: state[key].flip(-1)})}, tmp_path / "bad.pth")
        message = main_error(groklst.main, "convert-checkpoint", str(tmp_path / "bad.pth"), str(tmp_path / "bad_out.pth"),
                             "--config", cfg_path)
        assert f"{tmp_path / 'bad.pth'}: checkpoint does not fit the model '{family}'" in message
        assert "1 derived buffers unlike the model's: " + key[len("generator."):] in message
        assert not (tmp_path / "bad_out.pth").exists()


def test_convert_reports_what_does_not_fit(tmp_path, cli, write_config):
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY_MOCOLSK)
    state = groklst.build_model(groklst.load_config(cfg_path)).state_dict()
    first, second = list(state)[:2]
    state = {k: v for k, v in state.items() if k != first}
    state["extra.weight"] = torch.zeros(1)
    state[second] = torch.zeros(3, 3)
    torch.save({"state_dict": {"generator." + k: v for k, v in state.items()}}, tmp_path / "orig.pth")
    (tmp_path / "ours.pth").write_bytes(b"previous")
    r = cli("groklst.py", "convert-checkpoint", str(tmp_path / "orig.pth"), str(tmp_path / "ours.pth"), "--config", cfg_path)
    assert_user_error(r, "1 missing", first, "1 unexpected: extra.weight", "1 size mismatches", second)
    assert (tmp_path / "ours.pth").read_bytes() == b"previous"  # the old output is untouched
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


# --------------------------------------------------------------------------- checkpoints that do not fit


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, demo_root, write_config):
    """A config of a tiny MoCoLSK on the demo data and a train.py-style checkpoint of it (config stored)."""
    tmp = tmp_path_factory.mktemp("run")
    cfg_path = write_config(tmp / "tiny.yaml", TINY_MOCOLSK, data_root=demo_root)
    cfg = groklst.load_config(cfg_path)
    ckpt = tmp / "best.pth"
    torch.save({"model": groklst.build_model(cfg).state_dict(), "iter": 1, "config": cfg}, ckpt)
    return tmp, cfg_path, str(ckpt)


def test_checkpoint_of_another_config_names_the_keys(tiny_run, cli, write_config):
    tmp, cfg_path, ckpt = tiny_run
    wider = write_config(tmp / "wider.yaml", dict(TINY_MOCOLSK, num_feats=16), data_root=groklst.load_config(cfg_path)["data"]["root"])
    r = cli("test.py", wider, ckpt, "--out", str(tmp / "wider.json"))
    assert_user_error(r, ckpt, "size mismatches", "model.num_feats=8 (here 16)")
    assert not (tmp / "wider.json").exists()
    # the library path, for every key the message compares
    for overrides, named in [(["data.guidance_bands=[dem,red,nir]"], "data.guidance_bands=["),
                             (["data.scale=4", "data.hr_crop=32"], "data.scale=8 (here 4)")]:
        cfg = groklst.load_config(cfg_path, overrides)
        with pytest.raises(DataError, match="does not fit") as e:
            groklst.load_model(cfg, ckpt, "cpu")
        assert named in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_damaged_checkpoint_is_one_line(tiny_run, damage, cli):
    tmp, cfg_path, ckpt = tiny_run
    bad = tmp / f"{damage}.pth"
    content = open(ckpt, "rb").read()
    bad.write_bytes({"empty": b"", "truncated": content[:len(content) // 2], "text": b"not a checkpoint\n"}[damage])
    r = cli("test.py", cfg_path, str(bad), "--out", str(tmp / f"{damage}.json"))
    assert_user_error(r, f"{bad}: truncated or not a checkpoint (")
    assert not (tmp / f"{damage}.json").exists()


def test_checkpoint_with_nan_weights_is_refused_by_test_and_predict(tiny_run, cli, tmp_path):
    """Weights of a run that diverged: one error line in test.py and predict.py, nothing written."""
    import geotiff
    tmp, cfg_path, ckpt = tiny_run
    state = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][name] = state["model"][name].clone()
    state["model"][name].view(-1)[1] = float("nan")
    nan = tmp_path / "nan.pth"
    torch.save(state, nan)
    assert_user_error(cli("test.py", cfg_path, str(nan), "--out", str(tmp_path / "t.json")), nan, name,
                      "NaN or infinity", "diverged")
    lst, gui = tmp_path / "lst.tif", tmp_path / "gui.tif"
    geotiff.write_geotiff(str(lst), np.full((4, 4), 290.0, np.float32), geotiff.make_geo(500000.0, 4300000.0, 240.0))
    bands = groklst.load_config(cfg_path)["data"]["guidance_bands"]
    geotiff.write_geotiff(str(gui), np.ones((len(bands), 32, 32), np.float32), geotiff.make_geo(500000.0, 4300000.0, 30.0),
                          band_names=bands)
    r = cli("predict.py", cfg_path, "--checkpoint", str(nan), "--lst", str(lst), "--guidance", str(gui),
            "--out", str(tmp_path / "out.tif"))
    assert_user_error(r, nan, name, "NaN or infinity")
    assert len([line for line in r.stderr.splitlines() if line.startswith("error")]) == 1
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "out.tif").exists()


def test_missing_checkpoint(tiny_run):
    tmp, cfg_path, _ = tiny_run
    with pytest.raises(DataError, match="nothing.pth: checkpoint not found"):
        groklst.load_model(groklst.load_config(cfg_path), str(tmp / "nothing.pth"), "cpu")


def test_model_name_override_drops_the_other_models_keys(tiny_run, cli):
    """`test.py CFG model.name=bicubic` on a config with MoCoLSK arguments evaluates bicubic."""
    tmp, cfg_path, _ = tiny_run
    r = cli("test.py", cfg_path, "model.name=bicubic", "--out", str(tmp / "bicubic.json"))
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp / "bicubic.json"))["metrics"]["RMSE"] > 0
    cfg = groklst.load_config(cfg_path, ["model.name=swinir", "model.embed_dim=12", "model.depths=[2]",
                                         "model.num_heads=[2]"])
    assert cfg["model"] == {"name": "swinir", "embed_dim": 12, "depths": [2], "num_heads": [2]}
    assert groklst.load_config(cfg_path, ["model.name=mocolsk"])["model"]["num_feats"] == 8  # same model: kept


# --------------------------------------------------------------------------- config rules


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
    ("train.grad_accum=0", "train.grad_accum=0: must be >= 1"),
    ("train.val_interval=0", "train.val_interval=0: must be >= 1"),
    ("train.log_interval=-1", "train.log_interval=-1: must be >= 1"),
    ("train.max_iters=0", "train.max_iters=0: must be >= 1"),
    ("train.ckpt_interval=0", "train.ckpt_interval=0: must be null or >= 1"),
    ("train.lr=0", "train.lr=0.0: must be > 0"),
    ("train.eta_min=-1e-7", "train.eta_min=-1e-07: must be >= 0"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1: must be >= 0"),
    ("train.warmup_iters=-5", "train.warmup_iters=-5: must be >= 0"),
    ("train.warmup_iters=10000", "train.warmup_iters=10000: must be >= 0 and < train.max_iters"),  # max_iters 10000
    ("train.eta_min=0.001", "train.eta_min=0.001: must be >= 0 and <= train.lr"),  # lr 1e-4
    ("train.restart_period=0", "train.restart_period=0: must be >= 1"),
    ("train.clip_grad=0", "train.clip_grad=0.0: must be null or > 0"),
    ("train.clip_grad=fast", "train.clip_grad='fast': expected float"),
    ("train.betas=[0.9,1.5]", "train.betas=[0.9, 1.5]: must be two numbers in [0, 1)"),
    ("train.amp=bf61", "train.amp='bf61': must be one of none | bf16 | fp16"),
    ("train.loss=l2", "train.loss='l2': must be one of l1 | smooth_l1 | mse"),
    ("train.lr=null", "train.lr=None: expected float"),
    ("data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
    ("data.hr_crop=big", "data.hr_crop='big': expected int"),
    ("data.hr_crop=60", "data.hr_crop=60: must be null (whole tiles) or a positive multiple of data.scale"),
    ("data.hr_crop=0", "data.hr_crop=0: must be null"),
    ("data.lst_range=[400,150]", "data.lst_range=[400, 150]: must be two increasing numbers"),
    ("data.lst_range=[150]", "data.lst_range=[150]: must be two increasing numbers"),
    ("data.lst_scale=0", "data.lst_scale=0.0: must be a non-zero factor"),
    ("data.nodata=none", "data.nodata='none': expected float"),
    ("data.guidance_bands=[dem,dem]", "data.guidance_bands=['dem', 'dem']: must be a list of distinct band names"),
    ("norm.lst.method=zcore", "norm.lst.method='zcore': must be one of zscore | minmax | none"),
    ("norm.guidance.method=max", "norm.guidance.method='max': must be one of zscore"),
    ("work_dir=3", "work_dir=3: expected str"),
    ("model.stages=42", "model 'mocolsk' cannot be built with model.stages=42"),
    ("model.num_feats=0", "model 'mocolsk' cannot be built with model.num_feats=0"),
    ("model.name=42", "model.name=42: expected a model name"),
    ("model.lk_kernels=[[5", "the value is not valid YAML"),
])
def test_config_rules(override, message, config):
    with pytest.raises(ConfigError) as e:
        groklst.load_config(config("mocolsk_x8"), [override])
    assert message in str(e.value)


@pytest.mark.slow
def test_config_rules_through_the_command_line(tiny_run, cli, write_config):
    tmp, cfg_path, ckpt = tiny_run
    assert_user_error(cli("test.py", cfg_path, ckpt, "train.amp=bf61"), "train.amp='bf61'", "none | bf16 | fp16")
    ng = write_config(tmp / "ngswin.yaml", dict(TINY["ngswin"], embed_dim=8), scale=2)
    assert_user_error(cli("groklst.py", "convert-checkpoint", ckpt, str(tmp / "x.pth"), "--config", ng),
                      "model 'ngswin' cannot be built with", "model.embed_dim=8", "groups must be a positive integer")
    assert not (tmp / "x.pth").exists()


def test_unknown_model_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="model 'edsr' has no argument 'width'"):
        groklst.create_model("edsr", scale=2, width=3)


# --------------------------------------------------------------------------- papercuts


def test_stats_defaults_to_the_bands_the_files_name(tmp_path, cli):
    from geotiff import make_geo
    from layout import make_layout, synth_scene, write_sample, write_splits
    make_layout(str(tmp_path))
    lst, gui = synth_scene(32, 32, seed=1)
    write_sample(str(tmp_path), "a", lst, gui[[0, 4, 6]], ["dem", "red", "nir"], make_geo(500000.0, 4300000.0, 30.0))
    write_splits(str(tmp_path), {"train": ["a"], "val": [], "test": []})
    r = cli("groklst.py", "stats", str(tmp_path), "--split", "train")
    assert r.returncode == 0, r.stderr
    stats = yaml.safe_load(r.stdout)["guidance"]["stats"]
    assert list(stats) == ["dem", "red", "nir"]
    assert stats["red"]["mean"] == pytest.approx(float(gui[4].mean()), rel=1e-3)


def test_base_configs_reference_existing_files(root):
    for name in os.listdir(os.path.join(root, "configs", "_base_")):
        text = open(os.path.join(root, "configs", "_base_", name)).read()
        for word in text.split():
            word = word.strip("`'\"(),.;:")
            if word.startswith("configs/") and word.endswith(".yaml"):
                assert glob.glob(os.path.join(root, word)), (name, word)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in groklst.MODELS if groklst.MODELS[n].__module__.startswith("models.")))
def test_every_model_takes_its_original_layout(name, root):
    """Every registered model at its paper settings accepts its own state dict plus every buffer it
    derives (what an original checkpoint may hold): convert-checkpoint and load_weights work for all."""
    path = sorted(glob.glob(os.path.join(root, "configs", f"{name}_x*.yaml")))[0]
    net = groklst.build_model(groklst.load_config(path))
    state = dict(net.state_dict(), **dict(net.named_buffers()))
    kept = fit_state_dict(net, state, path)
    assert list(kept) == list(net.state_dict())
