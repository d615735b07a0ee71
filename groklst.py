"""GrokLST: the model registry, configuration, builders, checkpoints, runtime helpers and the command line.

    python groklst.py list [PATTERN]                    models with kind, scales, parameters
    python groklst.py make-demo data/demo               write the synthetic demo dataset
    python groklst.py stats data/groklst --split trainval   normalisation statistics as YAML
    python groklst.py convert-checkpoint IN.pth OUT.pth --config CFG [key=value ...]   original -> this toolkit
    python groklst.py plot-log work_dirs/RUN [RUN ...] --out curves.png   loss, lr, val RMSE vs iteration
    python groklst.py predict ...     = python predict.py ...   (whole scenes)
    python groklst.py prepare ...     = python prepare.py ...   (your own scenes -> a dataset)
    python groklst.py bench ...       = python bench.py ...     (speed and memory)
    python groklst.py landsat ...     = python landsat.py ...   (a Landsat 8/9 product -> LST + guidance)
    python groklst.py benchmark ...   = python benchmark.py ... (train a queue of configs -> Table IX)

This is the library the scripts (train.py, test.py, predict.py, prepare.py, bench.py) import; it
imports none of them, except that its command line hands a script's subcommand to that script's main.

Every model has the signature forward(lr_lst, hr_guidance=None) on normalised tensors:
lr_lst (B, 1, h, w) -> (B, 1, h*scale, w*scale). The registry is the plain dict MODELS. Models
with the class attribute `physical_units = True` (the statistical sharpeners of sharpeners.py)
take Kelvin and physical guidance instead; `downscale` is the one place that knows.
"""
import argparse
import codecs
import collections
import copy
import difflib
import fnmatch
import importlib
import inspect
import io
import math
import os
import pickle
import re
import resource
import sys
import types
import warnings
import zipfile

if __name__ == "__main__":  # `python groklst.py` is also `import groklst` for the scripts it runs: one module, not two
    sys.modules["groklst"] = sys.modules[__name__]

import torch
import torch.nn.functional as F
import yaml

from data import BANDS, GrokLSTDataset, Normalizer, block_mean_tensor, find_raster, guidance_names, hole_mask, read_split
from errors import ConfigError, DataError, UserError, command
from geotiff import read_geotiff, read_header, write_atomic, write_geotiff
from metrics import CONSISTENCY, METRICS, average, consistency_error, image_metrics
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
from sharpeners import DMS, LinReg, RFSharpener, TsHARP

MODELS = {
    # baselines
    "bicubic": Bicubic,
    "bilinear": Bilinear,
    # statistical sharpeners (parameter-free, fit per image; sharpeners.py)
    "dms": DMS,
    "linreg": LinReg,
    "rf": RFSharpener,
    "tsharp": TsHARP,
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
    """A model's reference: its class's `paper`, else the first line of its model file's docstring."""
    doc = getattr(MODELS[name], "paper", None) or sys.modules[MODELS[name].__module__].__doc__ or ""
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
    unknown kwargs raise a ConfigError that lists the valid ones."""
    cls = get_model_class(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    valid = model_arguments(cls)
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ConfigError(f"model {name!r} has no argument {unknown[0]!r}; valid: {', '.join(valid)}")
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
        "tensorboard": False,          # also write TensorBoard events to the work dir (needs tensorboard)
    },
    "work_dir": None,                  # default work_dirs/<config name>
    # coarse-scale consistency of every prediction (groklst.make_consistent): none (the paper's
    # protocol) | nearest | bicubic; on, the block mean of the output equals the LR input
    "consistency": "none",
}

CONSISTENCY_MODES = ("none", "nearest", "bicubic")

LIST_KEYS_FREE = {("norm", "guidance", "stats")}  # dicts whose keys are not fixed (band names)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(*choices):
    return (lambda v, cfg: v in choices), "one of " + " | ".join(choices)


def _at_least(low, none_ok=False):
    return (lambda v, cfg: (none_ok and v is None) or v >= low), ("null or " if none_ok else "") + f">= {low}"


def _above(low, none_ok=False):
    return (lambda v, cfg: (none_ok and v is None) or v > low), ("null or " if none_ok else "") + f"> {low}"


# The types of the keys whose default is None (a None default says nothing about the type).
NONE_DEFAULT_TYPES = {"data.hr_crop": int, "data.nodata": float, "train.clip_grad": float, "train.ckpt_interval": int,
                      "work_dir": str}
# Keys whose default is not None but that take null: data.val_split=null trains without validation.
NULLABLE = {"data.val_split"}

# Every rule on config values beyond their type, in one table: key -> (test(value, cfg), what the value
# must be). Checked once the config is complete (file, _base_ and overrides), so a rule may read other
# keys. A value outside is a ConfigError "key=value: must be ...". Model widths are checked by building
# the model (check_model_builds).
RULES = {
    "data.hr_crop": ((lambda v, cfg: v is None or (v > 0 and v % cfg["data"]["scale"] == 0)),
                     "null (whole tiles) or a positive multiple of data.scale"),
    "data.num_workers": _at_least(0),
    "data.lst_scale": ((lambda v, cfg: v != 0), "a non-zero factor (Kelvin = stored * lst_scale + lst_offset)"),
    "data.lst_range": ((lambda v, cfg: len(v) == 2 and all(map(_number, v)) and v[0] < v[1]),
                       "two increasing numbers [low, high] in Kelvin"),
    "data.guidance_bands": ((lambda v, cfg: all(isinstance(b, str) for b in v) and len(set(v)) == len(v)),
                            "a list of distinct band names"),
    "norm.lst.method": _one_of("zscore", "minmax", "none"),
    "norm.guidance.method": _one_of("zscore", "minmax", "none"),
    "norm.guidance.stats": ((lambda v, cfg: all(isinstance(s, dict) for s in v.values())),
                            "a mapping band -> {mean, std, min, max}"),
    "train.max_iters": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.grad_accum": _at_least(1),
    "train.lr": _above(0),
    "train.weight_decay": _at_least(0),
    "train.betas": ((lambda v, cfg: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v)), "two numbers in [0, 1)"),
    "train.restart_period": _at_least(1),
    "train.eta_min": _at_least(0),
    "train.warmup_iters": _at_least(0),
    "train.loss": _one_of("l1", "smooth_l1", "mse"),
    "train.clip_grad": _above(0, none_ok=True),
    "train.val_interval": _at_least(1),
    "train.ckpt_interval": _at_least(1, none_ok=True),
    "train.log_interval": _at_least(1),
    "train.amp": _one_of("none", "bf16", "fp16"),
    "train.seed": _at_least(0),
}


def _lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def check_rules(cfg):
    """Apply RULES to a complete config; ConfigError naming the first key outside its rule."""
    for key, (test, what) in RULES.items():
        value = _lookup(cfg, key)
        if not test(value, cfg):
            raise ConfigError(f"{key}={value!r}: must be {what}")


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
    """Type-check a config value against its default (NONE_DEFAULT_TYPES for a None default);
    returns the (coerced) value."""
    value = _coerce(value)
    kind = NONE_DEFAULT_TYPES[key]() if default is None and key in NONE_DEFAULT_TYPES else default
    if kind is None or (value is None and (default is None or key.startswith("model.") or key in NULLABLE)):
        return value  # null: allowed where the default is null; a model argument at null takes its default
    if isinstance(kind, bool):
        ok = isinstance(value, bool)
    elif isinstance(kind, float):
        ok = _number(value)
        value = float(value) if ok else value
    elif isinstance(kind, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, (list, tuple)):
        ok = isinstance(value, (list, tuple, str)) if key.startswith("model.") else isinstance(value, list)
    elif isinstance(kind, str):
        ok = isinstance(value, str)
    elif isinstance(kind, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {type(kind).__name__} (default {default!r})")
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
    if not isinstance(name, str):
        raise ConfigError(f"model.name={name!r}: expected a model name (python groklst.py list)")
    cls = get_model_class(name)
    args = model_arguments(cls)
    for k, v in cfg["model"].items():
        if k == "name":
            continue
        if k in ("scale", "guidance_channels", "guidance_bands"):
            raise ConfigError(f"model.{k} is derived from data.scale / data.guidance_bands; set those instead")
        if k not in args:
            raise ConfigError(f"unknown config key 'model.{k}' for model {name!r}; "
                              f"valid: {', '.join(a for a in args if a not in ('scale', 'guidance_channels'))}")
        default = args[k] if args[k] is not inspect.Parameter.empty else None
        cfg["model"][k] = _check(f"model.{k}", v, default)
    if cfg["data"]["scale"] not in cls.scales:
        raise ConfigError(f"model {name!r} supports scales {list(cls.scales)}, not data.scale={cfg['data']['scale']}")


def check_model_builds(cfg):
    """Build the configured model on the meta device (no memory, no compute) when the config sets
    model arguments, so widths the model cannot take fail at load time as a ConfigError naming them."""
    args = {k: v for k, v in cfg["model"].items() if k != "name"}
    if not args:
        return  # every model builds at its defaults (tests/test_models.py)
    try:
        with torch.device("meta"):
            build_model(cfg)
    except UserError:
        raise
    except (ValueError, AssertionError, TypeError, IndexError, KeyError, ZeroDivisionError, RuntimeError) as e:
        if "meta" in str(e):
            return  # an operation meta tensors cannot do (a value read in __init__): no verdict, not a user error
        given = ", ".join(f"model.{k}={v!r}" for k, v in args.items())
        raise ConfigError(f"model {cfg['model']['name']!r} cannot be built with {given} at data.scale="
                          f"{cfg['data']['scale']} ({type(e).__name__}: {str(e).strip() or 'no message'})") from None


def parse_override(text):
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None


def load_config(path, overrides=()):
    """Read a YAML config (with at most one `_base_`, relative to the file), apply `key.sub=value`
    overrides, check every key, type and rule (RULES) and that the model builds. Returns a plain dict;
    cfg['name'] is the file stem.

    An override of model.name to another model starts a fresh model section: the file's model
    arguments belong to its model and are dropped; model.* overrides after it apply to the new one
    (`test.py configs/mocolsk_x8.yaml model.name=bicubic`)."""
    cfg = _read_yaml(path)
    base = cfg.pop("_base_", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: _base_={base!r}: expected a file name relative to {path}")
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
        name = value if parts == ["model", "name"] else value.get("name") if parts == ["model"] else None
        if name is not None and name != cfg["model"].get("name"):
            cfg["model"] = {}  # another model: the previous model's arguments are not its arguments
        cfg = _merge(cfg, update)
    validate_model(cfg)
    check_rules(cfg)
    if cfg["consistency"] not in CONSISTENCY_MODES:
        raise ConfigError(f"consistency={cfg['consistency']!r}: expected one of {', '.join(CONSISTENCY_MODES)}")
    check_model_builds(cfg)
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
        if "guidance_bands" in model_arguments(get_model_class(cfg["model"]["name"])):  # models that need names (tsharp)
            kwargs["guidance_bands"] = tuple(cfg["data"]["guidance_bands"])
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
# A checkpoint is a pickle, and unpickling may call anything a file names. This toolkit's own
# checkpoints hold only tensors and plain types and load with torch.load(weights_only=True). Original
# (mmagic) checkpoints also hold mmengine and numpy objects in `meta` and `message_hub`, which
# weights_only refuses; they are read by a restricted unpickler instead: the classes torch needs to
# rebuild tensors are allowed, every other class named in the file becomes an inert `Unloaded`
# stand-in that only records its arguments. Nothing in a file can run.


class Unloaded:
    """Stand-in for a class a checkpoint names but that is not allowed (mmengine's HistoryBuffer, numpy
    arrays, os.system...): calling, building or filling it only stores what the pickle passed."""
    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("list", []).extend(values)

    def __repr__(self):
        return f"<unloaded {self.qualname}>"


_UNLOADED = {}


def _unloaded_class(module, name):
    qualname = f"{module}.{name}"
    if qualname not in _UNLOADED:
        _UNLOADED[qualname] = type(f"Unloaded[{qualname}]", (Unloaded,), {"qualname": qualname})
    return _UNLOADED[qualname]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    # backward hooks stored in a file are dropped: they would be called later
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, collections.OrderedDict(),
                                           metadata if isinstance(metadata, dict) else None)


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _allowed_global(module, name):
    """The object a checkpoint may name as module.name, or None (it becomes an Unloaded stand-in)."""
    module = {"__builtin__": "builtins"}.get(module, module)  # protocol-2 pickles (torch.save's) name Python 2 modules
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch", "Size"): torch.Size, ("torch", "device"): torch.device,
        ("torch", "UntypedStorage"): torch.UntypedStorage, ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
    }
    if (module, name) in allowed:
        return allowed[module, name]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None  # typed storages (torch.FloatStorage...) are resolved by torch.load before they get here


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals of `_allowed_global`; torch.load subclasses it and
    supplies the storages (persistent ids) from the checkpoint's zip records itself."""

    def find_class(self, module, name):
        obj = _allowed_global(module, name)
        return _unloaded_class(module, name) if obj is None else obj


# torch.load(pickle_module=...) takes a module-like object with an Unpickler class and load()
restricted_pickle = types.SimpleNamespace(
    __name__="groklst.restricted_pickle", Unpickler=RestrictedUnpickler,
    load=lambda f, **kwargs: RestrictedUnpickler(f, **kwargs).load())

# What torch.load and a damaged file raise (zip reader, pickle, legacy format); anything else is a bug
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, KeyError,
               IndexError, UnicodeDecodeError, zipfile.BadZipFile)


def _unreadable(path, e):
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return DataError(f"{path}: truncated or not a checkpoint ({reason})")


def read_checkpoint(path):
    """A checkpoint file -> the object it holds (a dict for every known format), on the CPU.

    This toolkit's files load with weights_only=True; original (mmagic) files, whose metadata holds
    mmengine/numpy objects, with the restricted unpickler (those objects become `Unloaded` stand-ins).
    A missing, empty, truncated or foreign file is a DataError naming `path`."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: checkpoint not found")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: truncated or not a checkpoint (empty file)")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # objects beyond tensors and plain types: an original checkpoint, or a damaged pickle
    except _UNREADABLE as e:
        raise _unreadable(path, e) from None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist()):
                # torch.load would hand it to torch.jit.load, which runs the archive's code
                raise DataError(f"{path}: a TorchScript archive, not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except _UNREADABLE as e:
        raise _unreadable(path, e) from None


def clean_state_dict(state):
    """Strip wrapper prefixes anywhere in the keys: 'generator.' (mmagic), 'module.' (DDP),
    '_orig_mod.' (torch.compile)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"(^|\.)(module|_orig_mod)\.", r"\1", k)
        k = re.sub(r"^generator\.", "", k)
        out[k] = v
    return out


def checkpoint_weights(ckpt, path):
    """The model tensors of a checkpoint, wrapper prefixes stripped: this toolkit's `model`, mmagic's
    `state_dict` (its `generator.` entries only: the rest belongs to the training wrapper), or a bare
    state dict. DataError naming `path` if it holds none."""
    state = ckpt
    if isinstance(ckpt, dict):
        state = next((ckpt[k] for k in ("model", "state_dict") if isinstance(ckpt.get(k), dict)), ckpt)
    if not isinstance(state, dict):
        raise DataError(f"{path}: holds a {type(state).__name__}, not model weights")
    # detach(): plain tensors, without whatever attributes or hooks a file attached to them
    state = {k: v.detach() for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    if any(k.startswith("generator.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("generator.")}
    state = clean_state_dict(state)
    if not state:
        raise DataError(f"{path}: no model weights (tensors) in the checkpoint")
    return state


def derived_buffer(model, key, value):
    """The model's own value of a buffer it derives instead of storing, for a checkpoint entry `key`, or
    None. Two kinds: a non-persistent buffer of that name (relative_position_index of SwinIR, NGswin,
    Omni-SR...), and the shifted-window `attn_mask` the original SwinIR and NGswin stored per block,
    which ours compute per input size with their file's shifted_window_mask (for a square image,
    the size the stored mask has)."""
    buffers = dict(model.named_buffers())
    if key in buffers:
        return buffers[key]
    prefix, _, name = key.rpartition(".")
    if name != "attn_mask" or value.ndim != 3:
        return None
    try:
        block = model.get_submodule(prefix)
    except AttributeError:
        return None
    mask_fn = getattr(sys.modules[type(block).__module__], "shifted_window_mask", None)
    ws, shift = getattr(block, "window_size", None), getattr(block, "shift_size", 0)
    if mask_fn is None or not isinstance(ws, int) or not shift or value.shape[1] != ws * ws:
        return None
    side = math.isqrt(value.shape[0]) * ws
    return mask_fn(side, side, ws, shift)


def _examples(items, n=3):
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def config_differences(cfg, stored):
    """'key=stored (here value)' for each of data.scale, data.guidance_bands and model.* that a
    checkpoint's stored config (train.py writes it) sets differently from `cfg`; a model argument
    one of them leaves out counts at its default."""
    out = []
    for k in ("scale", "guidance_bands"):
        theirs = (stored.get("data") or {}).get(k) if isinstance(stored.get("data"), dict) else None
        if theirs != cfg["data"].get(k):
            out.append(f"data.{k}={theirs!r} (here {cfg['data'].get(k)!r})")
    ours, theirs = cfg["model"], stored.get("model") if isinstance(stored.get("model"), dict) else {}
    if theirs.get("name") != ours.get("name"):
        return out + [f"model.name={theirs.get('name')!r} (here {ours.get('name')!r})"]
    defaults = model_arguments(get_model_class(ours["name"]))
    for k in sorted((set(ours) | set(theirs)) - {"name"}):
        a, b = theirs.get(k, defaults.get(k)), ours.get(k, defaults.get(k))
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out.append(f"model.{k}={a!r} (here {b!r})")
    return out


def fit_state_dict(model, state, path, cfg=None, stored_cfg=None):
    """The entries of `state` that `model` stores, after checking that they fit: derived buffers are
    dropped when they equal the model's own; anything missing, unexpected, of another shape, or a
    derived buffer with other values, is a one-line DataError naming `path`, and, when the checkpoint
    stored its config, the config keys that differ from `cfg`."""
    ours = model.state_dict()
    kept, unexpected, differ = {}, [], []
    for k, v in state.items():
        if k in ours:
            kept[k] = v
            continue
        own = derived_buffer(model, k, v)
        if own is None:
            unexpected.append(k)
        elif own.shape != v.shape or not torch.equal(own, v.to(own.dtype)):
            differ.append(k)
    missing = [k for k in ours if k not in kept]
    shapes = [f"{k} {tuple(v.shape)} vs model {tuple(ours[k].shape)}" for k, v in kept.items() if v.shape != ours[k].shape]
    problems = [f"{len(items)} {what}: {_examples(items)}" for what, items in (
        ("size mismatches", shapes), ("missing", missing), ("unexpected", unexpected),
        ("derived buffers unlike the model's", differ)) if items]
    if not problems:
        return kept
    name = f" {cfg['model']['name']!r}" if cfg else ""
    hint = ""
    if cfg is not None:
        diffs = config_differences(cfg, stored_cfg) if isinstance(stored_cfg, dict) else []
        hint = (f"; the checkpoint was trained with {_examples(diffs, 5)}" if diffs else
                "" if isinstance(stored_cfg, dict) else
                "; check data.scale, data.guidance_bands and the model.* keys against the run that wrote it")
    raise DataError(f"{path}: checkpoint does not fit the model{name}: {'; '.join(problems)}{hint}")


def load_weights(model, path, cfg=None):
    """Load model weights from a checkpoint of this toolkit or of the original (mmagic) one; returns
    the checkpoint (a dict). cfg: the config the model was built from, to name the keys that differ
    from the checkpoint's stored config when the weights do not fit. Errors: DataError naming `path`."""
    ckpt = read_checkpoint(path)
    stored = ckpt.get("config") if isinstance(ckpt, dict) else None
    model.load_state_dict(fit_state_dict(model, checkpoint_weights(ckpt, path), path, cfg, stored))
    return ckpt


def write_checkpoint(path, content):
    """torch.save, atomically (geotiff.write_atomic): no half-written file."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    write_atomic(path, buffer.getbuffer())


def load_model(cfg, checkpoint, device):
    """The config's model in eval mode on `device`, with the checkpoint's weights; parameter-free
    models (bicubic, bilinear) need none."""
    model = build_model(cfg)
    if checkpoint:
        load_weights(model, checkpoint, cfg)
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


def downscale(model, normalizer, lr_lst, hr_guidance=None, amp="none", consistency="none"):
    """Kelvin in, Kelvin out: normalise, run the model (optionally under autocast), decode in
    float32, then make the output coarse-consistent (make_consistent; 'none' = as the paper).
    lr_lst (B, 1, h, w) K, hr_guidance (B, C, H, W) physical units or None. A model with
    `physical_units = True` (sharpeners.py) gets lr_lst and hr_guidance as they are, NaN included,
    and returns Kelvin: no normalising, decoding or autocast."""
    if getattr(model, "physical_units", False):
        out = model(lr_lst, hr_guidance)
    else:
        x = normalizer.encode_lst(lr_lst)
        g = normalizer.encode_guidance(hr_guidance) if hr_guidance is not None else None
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = normalizer.decode_lst(model(x, g))
    return make_consistent(out, lr_lst, consistency)


def make_consistent(pred, lr_lst, mode="bicubic"):
    """Coarse-scale consistency ("energy conservation"): add back the residual between the LR input
    and the block mean of the prediction, so that the block mean of the output (data.block_mean's
    rule over its finite pixels) equals lr_lst exactly (float64 inside, ~1e-5 K after float32).

    pred (B, 1, H, W) K, lr_lst (B, 1, h, w) K (H = h * scale) -> like pred. mode:
      none     pred unchanged (the paper's protocol, the default everywhere)
      nearest  residual repeated over each scale x scale block: exact, but a step at block edges
      bicubic  residual upsampled bicubically (smooth; its block means are not the residual), then
               one nearest pass on what is left: exact too, and the steps are only that remainder.
               The one `--consistency` turns on without a value, because it is as exact as nearest
               without imprinting the LR grid on the output.
    Coarse pixels where lr_lst (or the whole block of pred) is NaN get no correction."""
    if mode not in CONSISTENCY_MODES:
        raise ConfigError(f"consistency={mode!r}: expected one of {', '.join(CONSISTENCY_MODES)}")
    if mode == "none":
        return pred
    scale = pred.shape[-1] // lr_lst.shape[-1]
    lr, out = lr_lst.double(), pred.double()
    holes = hole_mask(lr, scale)

    def residual(x):  # (B, 1, h, w) K, 0 where there is nothing to correct
        return torch.nan_to_num(lr - block_mean_tensor(x, scale, max_nan_fraction=1.0), nan=0.0, posinf=0.0, neginf=0.0)

    if mode == "bicubic":
        smooth = F.interpolate(residual(out), scale_factor=scale, mode="bicubic", align_corners=False)
        out = out + torch.where(holes, 0.0, smooth)
    out = out + residual(out).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    return out.to(pred.dtype)


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
def evaluate(model, normalizer, dataset, device, amp="none", save_dir=None, progress=False, consistency="none"):
    """Per-image metrics over a dataset, sharded over ranks (image i on rank i % world), gathered
    and averaged in dataset order: the same numbers as one process. Returns
    ({metric: mean}, [(name, per-image metrics)]): the five METRICS plus CONS (metrics.consistency_error,
    the sixth entry of each per-image row; its mean over the images where it is finite). save_dir: write
    each prediction as a float32 Kelvin GeoTIFF (NaN where the LR input had no data), georeferenced like
    its target. consistency: make_consistent's mode for every prediction."""
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
        pred = downscale(model, normalizer, batch["lr_lst"], batch.get("hr_guidance"), amp, consistency)
        row = image_metrics(pred, batch["hr_lst"], batch["mask"])[0].tolist()
        rows.append((i, batch["name"], row + [consistency_error(pred, batch["lr_lst"]).item()]))
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
    means, count = average([r[2][:5] for r in rows])
    cons = torch.tensor([r[2][5] for r in rows], dtype=torch.float64)
    means[CONSISTENCY] = float(cons[torch.isfinite(cons)].mean()) if torch.isfinite(cons).any() else float("nan")
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
    methods (run_label), columns = METRICS and CONS per scale, evaluated on `split` (default data.test_split)."""
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
        metrics = evaluate(model, build_normalizer(cfg), build_dataset(cfg, data_split), device,
                           consistency=cfg["consistency"])[0]
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
    columns = METRICS + (CONSISTENCY,)
    lines = ["| method | " + " | ".join(f"x{s} {m}" for s in scales for m in columns) + " |",
             "|---" * (1 + len(scales) * len(columns)) + "|"]
    for name in order:
        cells = [f"{results[name][s][m]:.4f}" if s in results[name] else "-" for s in scales for m in columns]
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


def default_stats_bands(root, split):
    """The guidance bands a dataset's files name (its first guidance file's header); the GrokLST bands
    for .mat files; none without a guidance folder."""
    folder = os.path.join(root, "30m", "guidance")
    names = read_split(root, split)
    if not os.path.isdir(folder) or not names:
        return []
    path = find_raster(folder, names[0])
    if path.endswith(".mat"):
        return list(BANDS)
    header = read_header(path)
    return guidance_names(header["bands"], header["shape"][0], path)


def cmd_stats(args):
    from data import compute_stats
    bands = [b.strip() for b in args.bands.split(",") if b.strip()] if args.bands else default_stats_bands(args.root, args.split)
    stats = compute_stats(args.root, args.split, bands)
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
    if args.tiles < 1 or args.size < 8:
        raise ConfigError(f"make-demo: --tiles {args.tiles} --size {args.size}: need at least 1 tile of at least 8 pixels")
    make_demo(args.root, n_tiles=args.tiles, size=args.size, seed=args.seed)
    print(f"wrote demo dataset to {args.root}")


def cmd_convert(args):
    """Original (mmagic) checkpoint -> this toolkit's format. With --config, the weights are checked
    against that config's model (derived buffers the original stored are dropped when they equal
    ours) and the config is stored with them; nothing is written unless everything fits."""
    ckpt = read_checkpoint(args.src)
    state = checkpoint_weights(ckpt, args.src)
    out = {"model": state, "model_name": None, "iter": 0, "source": os.path.basename(args.src)}
    if args.config:
        cfg = load_config(args.config, args.overrides)
        state = fit_state_dict(build_model(cfg), state, args.src, cfg)
        out.update(model=state, model_name=cfg["model"]["name"], config=cfg)
    elif args.overrides:
        raise ConfigError(f"convert-checkpoint: overrides {args.overrides} need --config")
    write_checkpoint(args.dst, out)
    checked = f"checked against {args.config}" if args.config else "not checked against a model: give --config CFG"
    print(f"wrote {args.dst} ({len(state)} tensors; {checked})")


def cmd_plot_log(args):
    import figures
    figures.plot_log(args.runs, args.out)
    print(f"wrote {args.out}")


# Subcommands that are scripts of their own: `groklst.py NAME ARGS` runs `NAME.py ARGS` (its main).
SCRIPTS = {"predict": "predict", "prepare": "prepare", "bench": "bench", "landsat": "landsat", "benchmark": "benchmark"}


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
    s.add_argument("--markdown", action="store_true", help="the model table of docs/models.md")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("stats", help="normalisation statistics of a dataset split, as YAML")
    s.add_argument("root")
    s.add_argument("--split", default="trainval")
    s.add_argument("--bands", default=None, help="comma-separated guidance bands (default: the bands the guidance files name)")
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
    s.add_argument("--config", default=None, help="check that the weights fit this config's model (and store it)")
    s.add_argument("overrides", nargs="*", help="overrides key.sub=value of --config")
    s.set_defaults(func=cmd_convert)
    s = sub.add_parser("plot-log", help="training curves of train.py runs (needs matplotlib)")
    s.add_argument("runs", nargs="+", help="work dirs, each with a log.jsonl")
    s.add_argument("--out", default="curves.png", help="PNG (or .pdf, .svg) to write")
    s.set_defaults(func=cmd_plot_log)
    args, extra = p.parse_known_args(argv)
    if extra and args.cmd == "convert-checkpoint" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # overrides after --config CFG
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    args.func(args)


if __name__ == "__main__":
    main()
