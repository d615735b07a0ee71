"""GrokLST: the model registry, configuration, builders, checkpoints, runtime helpers and the command line.

    python groklst.py list [PATTERN]                    models with kind, scales, parameters
    python groklst.py make-demo data/demo               write the synthetic demo dataset
    python groklst.py stats data/groklst --split trainval   normalisation statistics as YAML
    python groklst.py convert-checkpoint IN.pth OUT.pth [--config CFG]   original -> this toolkit
    python groklst.py predict ...     = python predict.py ...   (whole scenes)
    python groklst.py prepare ...     = python prepare.py ...   (your own scenes -> a dataset)
    python groklst.py bench ...       = python bench.py ...     (speed and memory)
    python groklst.py benchmark ...   = python benchmark.py ... (train a queue of configs -> Table IX)

This is the library the scripts (train.py, test.py, predict.py, prepare.py, bench.py) import; it
imports none of them, except that its command line hands a script's subcommand to that script's main.

Every model has the signature forward(lr_lst, hr_guidance=None) on normalised tensors:
lr_lst (B, 1, h, w) -> (B, 1, h*scale, w*scale). The registry is the plain dict MODELS.
"""
import argparse
import copy
import difflib
import fnmatch
import importlib
import inspect
import os
import re
import resource
import sys

if __name__ == "__main__":  # `python groklst.py` is also `import groklst` for the scripts it runs: one module, not two
    sys.modules["groklst"] = sys.modules[__name__]

import torch
import yaml

from data import BANDS, GrokLSTDataset, Normalizer, hole_mask
from errors import ConfigError, DataError, command
from geotiff import read_geotiff, write_geotiff
from metrics import METRICS, average, image_metrics
from models.act import ACT
from models.ahmf import AHMF
from models.baselines import Bicubic, Bilinear
from models.cfgn import CFGN
from models.codon import CODON
from models.ctn import CTNet
from models.cunet import CUNet
from models.dagf import DAGF
from models.dbpn import DBPN
from models.dct import DCTNet
from models.dctlsa import DCTLSA
from models.dgf import DGF
from models.djf import DJF, DJFR
from models.dkn import DKN, FDKN
from models.dsrn import DSRN
from models.edsr import EDSR
from models.egasr import EGASR
from models.fdsr import FDSR
from models.fen import FENet
from models.fenet import FeNet
from models.han import HAN
from models.haunet import HAUNet
from models.mocolsk import MoCoLSKNet
from models.msg import DMSG
from models.ngswin import NGswin
from models.omni import OmniSR
from models.p2p import PixTransformNet
from models.pac import PAC
from models.pmba import PMBA
from models.rcan import RCAN
from models.rdn import RDN
from models.rsag import RSAG
from models.safmn import SAFMN
from models.san import SAN
from models.sgnet import SGNet
from models.srcnn import SRCNN
from models.srfbn import SRFBN
from models.suft import SUFTNet
from models.svlrm import SVLRM
from models.swinir import SwinIR

MODELS = {
    # baselines
    "bicubic": Bicubic,
    "bilinear": Bilinear,
    # guided (GISR); "msg" is the original config name of DMSG
    "ahmf": AHMF,
    "codon": CODON,
    "cunet": CUNet,
    "dagf": DAGF,
    "dct": DCTNet,
    "dgf": DGF,
    "djf": DJF,
    "djfr": DJFR,
    "dkn": DKN,
    "dmsg": DMSG,
    "dsrn": DSRN,
    "fdkn": FDKN,
    "fdsr": FDSR,
    "mocolsk": MoCoLSKNet,
    "msg": DMSG,
    "p2p": PixTransformNet,
    "pac": PAC,
    "pmba": PMBA,
    "rsag": RSAG,
    "sgnet": SGNet,
    "suft": SUFTNet,
    "svlrm": SVLRM,
    # single-image (SISR)
    "act": ACT,
    "cfgn": CFGN,
    "ctn": CTNet,
    "dbpn": DBPN,
    "dctlsa": DCTLSA,
    "edsr": EDSR,
    "egasr": EGASR,
    "fen": FENet,
    "fenet": FeNet,
    "han": HAN,
    "haunet": HAUNet,
    "ngswin": NGswin,
    "omni": OmniSR,
    "rcan": RCAN,
    "rdn": RDN,
    "safmn": SAFMN,
    "san": SAN,
    "srcnn": SRCNN,
    "srfbn": SRFBN,
    "swinir": SwinIR,
}


def paper(name):
    """A model's reference: the first line of its model file's docstring."""
    doc = sys.modules[MODELS[name].__module__].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else "-"


def list_models(pattern="*"):
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in MODELS if fnmatch.fnmatch(n, pattern))


def get_model_class(name):
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} Registered: {', '.join(list_models())}")
    return MODELS[name]


def create_model(name, **kwargs):
    """Build a registered model. kwargs go to the constructor (None values are dropped);
    unknown kwargs raise a TypeError that lists the valid ones."""
    cls = get_model_class(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    valid = model_arguments(cls)
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise TypeError(f"model {name!r} has no argument {unknown[0]!r}; valid: {', '.join(valid)}")
    scale = kwargs.get("scale", valid.get("scale"))
    if scale not in cls.scales:
        raise ConfigError(f"model {name!r} supports scales {list(cls.scales)}, not {scale}")
    return cls(**kwargs)


def model_arguments(cls):
    """{argument: default} of a model constructor."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def count_parameters(name, scale):
    """Parameters of a model at its default settings, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = create_model(name, scale=scale)
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- configuration

# Every key a config may set, with its default. `model` holds the model name plus any of
# the model's constructor arguments (checked against its signature).
DEFAULTS = {
    "model": {"name": None},
    "data": {
        "root": "data/groklst",
        "scale": 8,
        "guidance_bands": list(BANDS),      # any subset, any order; SISR models load none
        "train_split": "train",        # the paper trained on trainval and validated on test:
        "val_split": "val",            # configs/paper_protocol_*.yaml reproduce that
        "test_split": "test",
        "hr_crop": None,               # random HR training crops (multiple of scale); None = whole tiles
        "num_workers": 2,              # loader processes: data wait 19 % -> 4 % of a 0.136 s step (docs/benchmark.md)
        "cache": False,                # memory-mappable .npy copies of the rasters (see data.py)
        "lst_scale": 1.0,              # Kelvin = stored * lst_scale + lst_offset (a product's DN)
        "lst_offset": 0.0,
        "nodata": None,                # a fill value of LST files without a GDAL_NODATA tag
        "lst_range": [150.0, 400.0],   # plausible Kelvin: values outside are an error naming the file
    },
    "norm": {
        "lst": {"method": "zscore", "mean": 282.51, "std": 14.59, "min": 243.53, "max": 320.85},
        "guidance": {"method": "zscore", "stats": {}},
    },
    "train": {
        "max_iters": 10000,
        "batch_size": 1,               # per process (GPU); the paper used 4 GPUs x 1
        "grad_accum": 1,
        "lr": 1.0e-4,
        "weight_decay": 1.0e-5,
        "betas": [0.9, 0.999],
        "restart_period": 2500,        # cosine annealing with warm restarts (per iteration)
        "eta_min": 1.0e-7,
        "warmup_iters": 0,
        "loss": "l1",                  # l1 | smooth_l1 | mse, over valid pixels, in Kelvin
        "clip_grad": None,             # max gradient norm, or None
        "val_interval": 1000,
        "ckpt_interval": None,         # last.pth every N iterations (default: val_interval)
        "log_interval": 100,
        "amp": "none",                 # none | bf16 | fp16 (model under autocast; loss in float32)
        "compile": False,
        "seed": 0,
        "deterministic": False,
    },
    "work_dir": None,                  # default work_dirs/<config name>
}

LIST_KEYS_FREE = {("norm", "guidance", "stats")}  # dicts whose keys are not fixed (band names)


def _read_yaml(path):
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a config must be a mapping")
    return cfg


def _merge(base, update):
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _coerce(value):
    """YAML 1.1 reads '1e-4' as a string; read such strings as floats."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)", value):
        return float(value)
    return value


def _check(key, value, default):
    """Type-check a config value against its default; returns the (coerced) value."""
    value = _coerce(value)
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple, str)) if key.startswith("model.") else isinstance(value, list)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {type(default).__name__} (default {default!r})")
    return value


def _validate(cfg, defaults, path=()):
    for k, v in cfg.items():
        key = ".".join(path + (k,))
        if path == ("model",):
            continue  # checked against the model's signature in validate_model
        if k not in defaults:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(defaults))}")
        if path + (k,) in LIST_KEYS_FREE:
            continue
        if isinstance(defaults[k], dict) and isinstance(v, dict):
            _validate(v, defaults[k], path + (k,))
        else:
            cfg[k] = _check(key, v, defaults[k])


def validate_model(cfg):
    name = cfg["model"].get("name")
    if not name:
        raise ConfigError("model.name is not set")
    cls = get_model_class(name)
    args = model_arguments(cls)
    for k, v in cfg["model"].items():
        if k == "name":
            continue
        if k in ("scale", "guidance_channels"):
            raise ConfigError(f"model.{k} is derived from data.scale / data.guidance_bands; set those instead")
        if k not in args:
            raise ConfigError(f"unknown config key 'model.{k}' for model {name!r}; "
                              f"valid: {', '.join(a for a in args if a not in ('scale', 'guidance_channels'))}")
        default = args[k] if args[k] is not inspect.Parameter.empty else None
        cfg["model"][k] = _check(f"model.{k}", v, default)
    if cfg["data"]["scale"] not in cls.scales:
        raise ConfigError(f"model {name!r} supports scales {list(cls.scales)}, not data.scale={cfg['data']['scale']}")


def parse_override(text):
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def load_config(path, overrides=()):
    """Read a YAML config (with at most one `_base_`, relative to the file), apply `key.sub=value`
    overrides, check every key and type. Returns a plain dict; cfg['name'] is the file stem."""
    cfg = _read_yaml(path)
    base = cfg.pop("_base_", None)
    if base is not None:
        base_path = os.path.join(os.path.dirname(path), base)
        base_cfg = _read_yaml(base_path)
        if "_base_" in base_cfg:
            raise ConfigError(f"{base_path}: a _base_ config may not have a _base_ itself")
        cfg = _merge(base_cfg, cfg)
    cfg.pop("name", None)
    _validate(cfg, DEFAULTS)
    cfg = _merge(DEFAULTS, cfg)
    for text in overrides:
        key, value = parse_override(text)
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i + 1])} is not a section")
            node = node[part]
        update = value
        for part in reversed(parts):
            update = {part: update}
        _validate(update, DEFAULTS)  # raises on unknown keys / wrong types
        cfg = _merge(cfg, update)
    validate_model(cfg)
    cfg["name"] = os.path.splitext(os.path.basename(path))[0]
    if cfg["work_dir"] is None:
        cfg["work_dir"] = os.path.join("work_dirs", cfg["name"])
    return cfg


def model_kind(cfg):
    return get_model_class(cfg["model"]["name"]).kind


def guidance_bands(cfg):
    """Bands the model reads: the configured ones for GISR models, none for SISR."""
    return list(cfg["data"]["guidance_bands"]) if model_kind(cfg) == "gisr" else []


def build_model(cfg):
    """The configured model (scale and guidance channels from the data section)."""
    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    kwargs["scale"] = cfg["data"]["scale"]
    if model_kind(cfg) == "gisr":
        if not cfg["data"]["guidance_bands"]:
            raise ConfigError(f"model {cfg['model']['name']!r} is guided but data.guidance_bands is empty")
        kwargs["guidance_channels"] = len(cfg["data"]["guidance_bands"])
    return create_model(cfg["model"]["name"], **kwargs)


def lst_units(cfg):
    """The data section's LST storage rule, as data.to_kelvin takes it."""
    d = cfg["data"]
    return {"scale": d["lst_scale"], "offset": d["lst_offset"], "nodata": d["nodata"], "range": tuple(d["lst_range"])}


def build_dataset(cfg, split, bands=None, train=False):
    """The config's dataset of `split`: the model's guidance bands unless `bands` is given ([] for
    none), training crops (data.hr_crop) only with train=True."""
    d = cfg["data"]
    bands = guidance_bands(cfg) if bands is None else bands
    return GrokLSTDataset(d["root"], split, d["scale"], bands, d["hr_crop"] if train else None, cfg["train"]["seed"],
                          d["cache"], lst_units(cfg))


def build_normalizer(cfg):
    return Normalizer(cfg["norm"], guidance_bands(cfg))


# --------------------------------------------------------------------------- checkpoints


def clean_state_dict(state):
    """Strip wrapper prefixes anywhere in the keys: 'generator.' (mmagic), 'module.' (DDP),
    '_orig_mod.' (torch.compile)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"(^|\.)(module|_orig_mod)\.", r"\1", k)
        k = re.sub(r"^generator\.", "", k)
        out[k] = v
    return out


def load_weights(model, path):
    """Load model weights from a checkpoint of this toolkit or of the original (mmagic) one."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("model", ckpt.get("state_dict", ckpt)) if isinstance(ckpt, dict) else ckpt
    state = clean_state_dict(state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{path}: checkpoint does not fit the model: missing {missing[:5]}"
                       f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                       f"{'...' if len(unexpected) > 5 else ''}")
    return ckpt


def load_model(cfg, checkpoint, device):
    """The config's model in eval mode on `device`, with the checkpoint's weights; parameter-free
    models (bicubic, bilinear) need none."""
    model = build_model(cfg)
    if checkpoint:
        load_weights(model, checkpoint)
    elif any(True for _ in model.parameters()):
        raise ConfigError(f"model {cfg['model']['name']!r} has parameters: "
                          "give its checkpoint (test.py CONFIG CHECKPOINT; predict --checkpoint PATH), "
                          "a .pth of train.py or of the original toolkit")
    return model.to(device).eval()


def peak_memory_mb(device):
    """CUDA max allocated on a GPU, else the process's peak RSS (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_model(model, device):
    """torch.compile(model), the one way train.py and bench compile. On CPU the convolutions keep
    their NCHW layout: with inductor's channels_last layout, oneDNN (torch 2.13) returns wrong weight
    gradients for bf16 depthwise convs with dilation > 1 (relative error ~1 or NaN; MoCoLSK's 7x7
    dilation-3 conv), so bf16 + compile training diverged at once (tests/test_mocolsk.py)."""
    if torch.device(device).type == "cpu":
        from torch._inductor import config as inductor_config
        inductor_config.layout_optimization = False
    return torch.compile(model)


def downscale(model, normalizer, lr_lst, hr_guidance=None, amp="none"):
    """Kelvin in, Kelvin out: normalise, run the model (optionally under autocast), decode in
    float32. lr_lst (B, 1, h, w) K, hr_guidance (B, C, H, W) physical units or None."""
    x = normalizer.encode_lst(lr_lst)
    g = normalizer.encode_guidance(hr_guidance) if hr_guidance is not None else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        out = model(x, g)
    return normalizer.decode_lst(out)


# --------------------------------------------------------------------------- distributed + evaluation


def setup_distributed():
    """torchrun environment -> (rank, world_size, device). NCCL on CUDA, gloo on CPU.
    Without torchrun: (0, 1, cuda if available else cpu)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def teardown_distributed(barrier=False):
    """Destroy the process group (no-op without one). barrier=True (on success only: a rank that
    failed must not wait for the others) first waits until every rank is done with it."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def gather(obj):
    """All ranks' objects as a list on every rank (just [obj] when not distributed)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _batch_to(item, device):
    return {k: v[None].to(device) if torch.is_tensor(v) else v for k, v in item.items()}


@torch.no_grad()
def evaluate(model, normalizer, dataset, device, amp="none", save_dir=None, progress=False):
    """Per-image metrics over a dataset, sharded over ranks (image i on rank i % world), gathered
    and averaged in dataset order: the same numbers as one process. Returns
    ({metric: mean}, [(name, per-image metrics)]). save_dir: write each prediction as a
    float32 Kelvin GeoTIFF (NaN where the LR input had no data), georeferenced like its target."""
    rank, world = 0, 1
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    was_training = model.training
    model.eval()
    rows = []
    indices = range(rank, len(dataset), world)
    for n, i in enumerate(indices):
        batch = _batch_to(dataset[i], device)
        pred = downscale(model, normalizer, batch["lr_lst"], batch.get("hr_guidance"), amp)
        rows.append((i, batch["name"], image_metrics(pred, batch["hr_lst"], batch["mask"])[0].tolist()))
        if save_dir:
            scale = pred.shape[-1] // batch["lr_lst"].shape[-1]
            out = torch.where(hole_mask(batch["lr_lst"], scale), float("nan"), pred)[0, 0].cpu().numpy()
            hr_path = dataset.paths[i]["hr_lst"]
            geo = read_geotiff(hr_path)[1]["geo"] if hr_path.endswith((".tif", ".tiff")) else None
            os.makedirs(save_dir, exist_ok=True)
            write_geotiff(os.path.join(save_dir, batch["name"] + ".tif"), out, geo)
        if progress and rank == 0:
            print(f"\r  {n + 1}/{len(indices)} images", end="", file=sys.stderr, flush=True)
    if progress and rank == 0:
        print(file=sys.stderr)
    model.train(was_training)
    rows = sorted(r for part in gather(rows) for r in part)
    means, count = average([r[2] for r in rows])
    means["images"] = count
    return means, [(r[1], r[2]) for r in rows]


def run_label(run, scale):
    """A benchmark run's row label: its folder name without the `_x<scale>` suffix (srcnn_x8 -> srcnn),
    so the runs of one method at several scales share a row."""
    suffix = f"_x{scale}"
    return run[:-len(suffix)] if run.endswith(suffix) and len(run) > len(suffix) else run


def benchmark_table(work_root, split=None, overrides=(), device="cpu", runs=None):
    """Table IX of the paper (markdown) for the runs under work_root: trained ones (<run>/config.yaml +
    <run>/best.pth) and parameter-free ones (<run>/config.yaml of bicubic or bilinear, no checkpoint),
    plus bicubic per scale where no run has it. runs: folder names (default: every such run). Rows =
    methods (run_label), columns = METRICS per scale, evaluated on `split` (default data.test_split)."""
    if not os.path.isdir(work_root):
        raise DataError(f"{work_root}: folder not found")

    def checkpoint_of(run):
        best = os.path.join(work_root, run, "best.pth")
        return best if os.path.exists(best) else None

    def parameter_free(run):
        cfg = load_config(os.path.join(work_root, run, "config.yaml"), overrides)
        return count_parameters(cfg["model"]["name"], cfg["data"]["scale"]) == 0

    if runs is None:
        runs = sorted(d for d in os.listdir(work_root) if os.path.exists(os.path.join(work_root, d, "config.yaml"))
                      and (checkpoint_of(d) or parameter_free(d)))
    if not runs:
        raise DataError(f"{work_root}: no <run>/best.pth (or <run>/config.yaml of a parameter-free model) found")
    results, data_of_scale = {}, {}
    for run in runs:
        cfg = load_config(os.path.join(work_root, run, "config.yaml"), overrides)
        scale, data_split = cfg["data"]["scale"], split or cfg["data"]["test_split"]
        model = load_model(cfg, checkpoint_of(run), device)
        metrics = evaluate(model, build_normalizer(cfg), build_dataset(cfg, data_split), device)[0]
        results.setdefault(run_label(run, scale), {})[scale] = metrics
        data_of_scale.setdefault(scale, (cfg, data_split))
        print(f"  evaluated {run} (x{scale})", file=sys.stderr)
    for scale, (cfg, data_split) in data_of_scale.items():  # the reference row, on the same data
        if scale not in results.get("bicubic", {}):
            bicubic = create_model("bicubic", scale=scale).to(device)
            base = build_dataset(cfg, data_split, bands=[])
            results.setdefault("bicubic", {})[scale] = evaluate(bicubic, build_normalizer(cfg), base, device)[0]
    order = sorted(results, key=lambda name: (name not in ("bicubic", "bilinear"), name))  # baselines first
    scales = sorted(data_of_scale)
    lines = ["| method | " + " | ".join(f"x{s} {m}" for s in scales for m in METRICS) + " |",
             "|---" * (1 + len(scales) * len(METRICS)) + "|"]
    for name in order:
        cells = [f"{results[name][s][m]:.4f}" if s in results[name] else "-" for s in scales for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def cmd_list(args):
    if args.markdown:
        print("| model | kind | scales | parameters (x2 / x4 / x8) | paper |\n|---|---|---|---|---|")
        for name in list_models(args.pattern):
            cls = MODELS[name]
            counts = " / ".join(f"{count_parameters(name, s):,}" if s in cls.scales else "-" for s in (2, 4, 8))
            print(f"| {name} | {cls.kind} | {', '.join(f'x{s}' for s in cls.scales)} | {counts} | {paper(name)} |")
        return
    rows = []
    for name in list_models(args.pattern):
        cls = MODELS[name]
        counts = [f"x{s} {count_parameters(name, s):,}" for s in cls.scales]
        rows.append((name, cls.kind, ",".join(map(str, cls.scales)), "  ".join(counts)))
    print(f"{'model':10s} {'kind':5s} {'scales':7s} parameters")
    for r in rows:
        print(f"{r[0]:10s} {r[1]:5s} {r[2]:7s} {r[3]}")


def cmd_stats(args):
    from data import compute_stats
    stats = compute_stats(args.root, args.split, args.bands.split(",") if args.bands else BANDS)
    lr = {2: "60m", 4: "120m", 8: "240m"}
    print(f"# statistics of {args.root} split {args.split}; paste under `norm:`")
    for scale, res in lr.items():
        if res in stats["lst"]:
            print(f"# x{scale}: lst: {{method: zscore, {', '.join(f'{k}: {v}' for k, v in stats['lst'][res].items())}}}")
    print("guidance:\n  method: zscore\n  stats:")
    for band, v in stats["guidance"].items():
        print(f"    {band}: {{{', '.join(f'{k}: {x}' for k, x in v.items())}}}")


def cmd_make_demo(args):
    from data import make_demo
    make_demo(args.root, n_tiles=args.tiles, size=args.size, seed=args.seed)
    print(f"wrote demo dataset to {args.root}")


def cmd_convert(args):
    """Original (mmagic) checkpoint -> this toolkit's format."""
    ckpt = torch.load(args.src, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    state = {k: v for k, v in clean_state_dict(state).items() if torch.is_tensor(v)}
    if args.config:
        cfg = load_config(args.config)
        model = build_model(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            sys.exit(f"{args.src}: does not fit {args.config}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        name = cfg["model"]["name"]
    else:
        name = None
    torch.save({"model": state, "model_name": name, "iter": 0, "source": os.path.basename(args.src)}, args.dst)
    print(f"wrote {args.dst} ({len(state)} tensors)")


# Subcommands that are scripts of their own: `groklst.py NAME ARGS` runs `NAME.py ARGS` (its main).
SCRIPTS = {"predict": "predict", "prepare": "prepare", "bench": "bench", "benchmark": "benchmark"}


@command
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SCRIPTS:
        return importlib.import_module(SCRIPTS[argv[0]]).main(argv[1:])
    p = argparse.ArgumentParser(prog="groklst.py", description=__doc__.split("\n")[0],
                                epilog="also: " + ", ".join(f"{k} (python {v}.py --help)" for k, v in SCRIPTS.items()))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("list", help="registered models")
    s.add_argument("pattern", nargs="?", default="*")
    s.add_argument("--markdown", action="store_true", help="the README's model table")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("stats", help="normalisation statistics of a dataset split, as YAML")
    s.add_argument("root")
    s.add_argument("--split", default="trainval")
    s.add_argument("--bands", default=None, help="comma-separated guidance bands (default: the 10 GrokLST bands)")
    s.set_defaults(func=cmd_stats)
    s = sub.add_parser("make-demo", help="write the small synthetic demo dataset")
    s.add_argument("root")
    s.add_argument("--tiles", type=int, default=48)
    s.add_argument("--size", type=int, default=128, help="HR tile side in pixels (multiple of 8)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_make_demo)
    s = sub.add_parser("convert-checkpoint", help="original GrokLST (mmagic) checkpoint -> this toolkit")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--config", default=None, help="check that the weights fit this config's model")
    s.set_defaults(func=cmd_convert)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
