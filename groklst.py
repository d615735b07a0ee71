"""GrokLST: what a model name and a config mean. The model registry, the config (defaults, schema, loading,
overrides, validation), the builders, `load_model`, and a small command line.

    python groklst.py list [PATTERN] [--markdown]        models with kind, scales, parameters
    python groklst.py make-demo data/demo               write the synthetic demo dataset
    python groklst.py stats data/groklst --split trainval   normalisation statistics as YAML
    python groklst.py convert-checkpoint IN.pth OUT.pth --config CFG [key=value ...]   original -> this toolkit
    python groklst.py plot-log work_dirs/RUN [RUN ...] --out curves.png   loss, lr, val RMSE vs iteration

Every other job is a script of its own, run as itself: train.py, test.py, predict.py, prepare.py,
landsat.py, speed.py (speed and memory), zoo.py (train many models, Table IX).

Every model has the signature forward(lr_lst, hr_guidance=None) on normalised tensors:
lr_lst (B, 1, h, w) -> (B, 1, h*scale, w*scale). The registry is the plain dict MODELS. Models
with the class attribute `physical_units = True` (the statistical sharpeners of sharpeners.py)
take Kelvin and physical guidance instead; engine.downscale is the one place that knows.

Models that bring their own objective and sampler (diffusion: models/pgdm.py) add `training_loss`,
forward(..., hr_lst=, mask=) returning it, `stochastic = True` and `sample` -> (mean, std); the protocol and
why it goes through forward: docs/models.md#models-that-bring-their-own-objective-and-sampler.
test.py, predict.py, zoo.py and speed.py need nothing else. Where to change what: docs/where.md.
"""
import argparse
import collections
import copy
import difflib
import fnmatch
import inspect
import os
import re
import sys

import torch
import yaml

from checkpoints import checkpoint_weights, fit_state_dict, load_weights, misfit_hint, read_checkpoint, write_checkpoint
from costs import COST_HR, THROUGHPUT_JSON, read_throughput
from data import BANDS, LST_UNITS, GrokLSTDataset, Normalizer, compute_stats, dataset_bands, dataset_scales, lr_folder
from engine import AMP_DTYPES, CONSISTENCY_MODES, LOSSES, OBJECTIVES
from errors import ConfigError, UserError, command
from geotiff import write_atomic
from layout import make_demo
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
from models.pgdm import PGDM
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

# --------------------------------------------------------------------------- registry
# Each model name (the config's model.name) and its class, in one explicit dict.

MODELS = {
    # baselines; statistical sharpeners (parameter-free, fitted per image: sharpeners.py)
    "bicubic": Bicubic, "bilinear": Bilinear,
    "dms": DMS, "linreg": LinReg, "rf": RFSharpener, "tsharp": TsHARP,
    # guided (GISR); "msg" is the original config name of DMSG
    "ahmf": AHMF, "codon": CODON, "cunet": CUNet, "dagf": DAGF, "dct": DCTNet, "dgf": DGF, "djf": DJF, "djfr": DJFR,
    "dkn": DKN, "dmsg": DMSG, "dsrn": DSRN, "fdkn": FDKN, "fdsr": FDSR, "mocolsk": MoCoLSKNet, "msg": DMSG,
    "p2p": PixTransformNet, "pac": PAC, "pmba": PMBA, "rsag": RSAG, "sgnet": SGNet, "suft": SUFTNet, "svlrm": SVLRM,
    # guided, with its own objective and sampler (diffusion)
    "pgdm": PGDM,
    # single-image (SISR)
    "act": ACT, "cfgn": CFGN, "ctn": CTNet, "dbpn": DBPN, "dctlsa": DCTLSA, "edsr": EDSR, "egasr": EGASR, "fen": FENet,
    "fenet": FeNet, "han": HAN, "haunet": HAUNet, "ngswin": NGswin, "omni": OmniSR, "rcan": RCAN, "rdn": RDN,
    "safmn": SAFMN, "san": SAN, "srcnn": SRCNN, "srfbn": SRFBN, "swinir": SwinIR,
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


def num_parameters(model):
    """Number of parameters of a built model (the one way every script counts them)."""
    return sum(p.numel() for p in model.parameters())


def count_parameters(name, scale):
    """Parameters of a model at its default settings, built on the meta device (no memory)."""
    with torch.device("meta"):
        return num_parameters(create_model(name, scale=scale))


# --------------------------------------------------------------------------- configuration
# A config is a nested dict. SCHEMA below is every key a config may set, one row each: its default,
# its type, the rule its value must follow beyond the type, whether it may be null (None) though its
# default is not, and whether a resumed run (train.py --resume) may change it. `model` holds the model
# name plus any of the model's constructor arguments, checked against its signature instead.

Key = collections.namedtuple("Key", "default type rule nullable resume_free")


def key(default, kind, rule=None, nullable=False, resume_free=False):
    return Key(default, kind, rule, nullable or default is None, resume_free)


def one_of(*choices):
    return (lambda v, cfg: v in choices), "one of " + " | ".join(map(str, choices))


def at_least(low):
    return (lambda v, cfg: v is None or v >= low), f">= {low}"


def above(low):
    return (lambda v, cfg: v is None or v > low), f"> {low}"


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


NORM_METHODS = ("zscore", "minmax", "none")

SCHEMA = {
    "model.name": key(None, None),  # checked by validate_model (a registered name)
    "data.root": key("data/groklst", str),
    "data.scale": key(8, int, at_least(2)),
    "data.guidance_bands": key(list(BANDS), list, ((lambda v, cfg: all(isinstance(b, str) for b in v) and len(set(v)) == len(v)),
                                                   "a list of distinct band names")),  # any subset, any order; SISR reads none
    # the paper trained on trainval and validated on test: configs/paper_protocol_*.yaml reproduce that
    "data.train_split": key("train", str),
    "data.val_split": key("val", str, nullable=True),  # null: train without validation (last.pth is used)
    "data.test_split": key("test", str),
    "data.hr_crop": key(None, int, ((lambda v, cfg: v is None or (v > 0 and v % cfg["data"]["scale"] == 0)),
                                    "null (whole tiles) or a positive multiple of data.scale")),  # random HR training crops
    # loader processes: data wait 19 % -> 4 % of a 0.136 s step (docs/benchmark.md)
    "data.num_workers": key(2, int, at_least(0), resume_free=True),
    "data.cache": key(False, bool, resume_free=True),  # memory-mappable .npy copies of the rasters (data.cached)
    # how LST files store Kelvin (data.to_kelvin): Kelvin = stored * lst_scale + lst_offset, nodata = an untagged
    # fill value, and the plausible range every value must fall in
    "data.lst_scale": key(LST_UNITS["scale"], float, ((lambda v, cfg: v != 0), "a non-zero factor")),
    "data.lst_offset": key(LST_UNITS["offset"], float),
    "data.nodata": key(LST_UNITS["nodata"], float),
    "data.lst_range": key(list(LST_UNITS["range"]), list, ((lambda v, cfg: len(v) == 2 and all(map(_number, v)) and v[0] < v[1]),
                                                           "two increasing numbers [low, high] in Kelvin")),
    # the original's LR-resolution LST statistics (GrokLST trainval), and per-band guidance statistics
    "norm.lst.method": key("zscore", str, one_of(*NORM_METHODS)),
    "norm.lst.mean": key(282.51, float),
    "norm.lst.std": key(14.59, float),
    "norm.lst.min": key(243.53, float),
    "norm.lst.max": key(320.85, float),
    "norm.guidance.method": key("zscore", str, one_of(*NORM_METHODS)),
    "norm.guidance.stats": key({}, dict, ((lambda v, cfg: all(isinstance(s, dict) for s in v.values())),
                                          "a mapping band -> {mean, std, min, max}")),
    "train.max_iters": key(10000, int, at_least(1), resume_free=True),
    "train.batch_size": key(1, int, at_least(1)),  # per process (GPU); the paper used 4 GPUs x 1
    "train.grad_accum": key(1, int, at_least(1)),
    "train.lr": key(1.0e-4, float, above(0)),
    "train.weight_decay": key(1.0e-5, float, at_least(0)),
    "train.betas": key([0.9, 0.999], list, ((lambda v, cfg: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v)),
                                            "two numbers in [0, 1)")),
    "train.restart_period": key(2500, int, at_least(1)),  # cosine annealing with warm restarts (per iteration)
    # the cosine's floor, under its peak (above it the schedule would rise as it anneals)
    "train.eta_min": key(1.0e-7, float, ((lambda v, cfg: 0 <= v <= cfg["train"]["lr"]), ">= 0 and <= train.lr")),
    # a warm-up as long as the run would be all of it
    "train.warmup_iters": key(0, int, ((lambda v, cfg: 0 <= v and (v == 0 or v < cfg["train"]["max_iters"])),
                                       ">= 0 and < train.max_iters (0: none)")),
    "train.loss": key("l1", str, one_of(*LOSSES)),  # engine.LOSSES, over valid pixels, in Kelvin
    # what train.loss compares: truth = the fine LST (30m/lst); consistency = the prediction's block means with
    # the coarse input (engine.consistency_objective: no fine truth read, so a model can be fine-tuned with
    # --init on the scene it will sharpen). Not for a model with its own objective (pgdm): it has no pixel loss.
    # Fixed on resume: another objective is another run (train.py --init PATH starts it from those weights).
    "train.objective": key("truth", str, ((lambda v, cfg: v in OBJECTIVES and (v == "truth" or not callable(
        getattr(get_model_class(cfg["model"]["name"]), "training_loss", None)))),
        f"one of {' | '.join(OBJECTIVES)} (consistency needs a model trained by train.loss, not one with its own "
        f"objective such as pgdm)")),
    # weight of engine.texture_loss (guidance-weighted total variation, K per fine pixel step) in the consistency
    # objective; it reads the guidance, so > 0 needs a guided (gisr) model
    "train.texture_weight": key(0.0, float, ((lambda v, cfg: v == 0 or (v > 0 and cfg["train"]["objective"] == "consistency"
                                                                          and model_kind(cfg) == "gisr")),
                                             ">= 0, and 0 unless train.objective=consistency with a guided (gisr) model "
                                             "(the term weighs fine steps by the guidance)")),
    "train.clip_grad": key(None, float, above(0)),  # max gradient norm, or null
    "train.val_interval": key(1000, int, at_least(1), resume_free=True),
    "train.ckpt_interval": key(None, int, at_least(1), resume_free=True),  # last.pth every N iterations (default: val_interval)
    "train.log_interval": key(100, int, at_least(1), resume_free=True),
    "train.amp": key("none", str, one_of(*AMP_DTYPES)),  # the model under autocast; the loss in float32
    "train.compile": key(False, bool),
    "train.seed": key(0, int, at_least(0)),
    "train.deterministic": key(False, bool),
    "train.tensorboard": key(False, bool, resume_free=True),  # also TensorBoard events in the work dir
    "work_dir": key(None, str, resume_free=True),  # default work_dirs/<config name>
    # coarse-scale consistency of every prediction (engine.make_consistent): none (the paper's protocol) |
    # nearest | bicubic; on, the block mean of the output equals the LR input
    "consistency": key("none", str, one_of(*CONSISTENCY_MODES)),
}
FREE_KEY_SECTIONS = {"norm.guidance.stats"}  # dicts whose own keys are not fixed (band names)


def _nested(flat):
    out = {}
    for dotted, value in flat.items():
        node, parts = out, dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    return out


DEFAULTS = _nested({k: row.default for k, row in SCHEMA.items()})


def _lookup(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def check_rules(cfg):
    """SCHEMA's rules on a complete config (file, _base_ and overrides applied), so a rule may read other
    keys; ConfigError "key=value: must be ..." naming the first key outside its rule."""
    for dotted, row in SCHEMA.items():
        value = _lookup(cfg, dotted)
        if row.rule is not None and value is not None and not row.rule[0](value, cfg):
            what = row.rule[1] if not row.nullable or row.rule[1].startswith("null") else "null or " + row.rule[1]
            raise ConfigError(f"{dotted}={value!r}: must be {what}")


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


TYPE_CHECKS = {bool: lambda v: isinstance(v, bool), float: _number, int: lambda v: isinstance(v, int) and not isinstance(v, bool)}


def _check_type(dotted, value, kind, nullable, default=None):
    """A config value of type `kind` (None: any) -> the value (coerced: YAML's '1e-4', an int for a
    float); ConfigError naming the key otherwise. Model arguments take lists as tuples and strings."""
    value = _coerce(value)
    if kind is None or (value is None and nullable):
        return value
    if kind in (list, tuple):
        ok = isinstance(value, (list, tuple, str)) if dotted.startswith("model.") else isinstance(value, list)
    else:
        ok = TYPE_CHECKS.get(kind, lambda v: isinstance(v, kind))(value)
    if not ok:
        raise ConfigError(f"{dotted}={value!r}: expected {kind.__name__} (default {default!r})")
    return float(value) if kind is float else value


def _validate(cfg, path=()):
    """Unknown keys and wrong types of a (partial) config, in place; model.* is validate_model's."""
    for k, v in cfg.items():
        dotted = ".".join(path + (k,))
        if path == ("model",) and k != "name":
            continue
        row = SCHEMA.get(dotted)
        if row is None:
            section = _lookup(DEFAULTS, ".".join(path)) if path else DEFAULTS
            if k not in section:
                raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {', '.join(sorted(section))}")
            if not isinstance(v, dict):
                raise ConfigError(f"{dotted}={v!r}: expected a section with keys {', '.join(sorted(section[k]))}")
            _validate(v, path + (k,))
        elif dotted in FREE_KEY_SECTIONS:
            cfg[k] = _check_type(dotted, v, dict, False, row.default)
        else:
            cfg[k] = _check_type(dotted, v, row.type, row.nullable, row.default)


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
        # a model argument at null takes its default
        cfg["model"][k] = _check_type(f"model.{k}", v, None if default is None else type(default), True, default)
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
    dotted, value = text.split("=", 1)
    try:
        return dotted.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None


def load_config(path, overrides=()):
    """Read a YAML config (with at most one `_base_`, relative to the file), apply `key.sub=value`
    overrides, check every key, type and rule (SCHEMA) and that the model builds. Returns a plain dict;
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
    _validate(cfg)
    cfg = _merge(DEFAULTS, cfg)
    for text in overrides:
        dotted, value = parse_override(text)
        node, parts = cfg, dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:i + 1])} is not a section")
            node = node[part]
        update = value
        for part in reversed(parts):
            update = {part: update}
        _validate(update)  # raises on unknown keys / wrong types
        name = value if parts == ["model", "name"] else value.get("name") if parts == ["model"] else None
        if name is not None and name != cfg["model"].get("name"):
            cfg["model"] = {}  # another model: the previous model's arguments are not its arguments
        cfg = _merge(cfg, update)
    validate_model(cfg)
    check_rules(cfg)
    check_model_builds(cfg)
    cfg["name"] = os.path.splitext(os.path.basename(path))[0]
    if cfg["work_dir"] is None:
        cfg["work_dir"] = os.path.join("work_dirs", cfg["name"])
    return cfg


def write_config(cfg, path):
    """A resolved config as YAML (what train.py stores in its work dir), written atomically."""
    write_atomic(path, yaml.safe_dump(cfg, sort_keys=False).encode())


def flatten(cfg, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}; model arguments and band statistics included."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


RESUME_FREE = {k for k, row in SCHEMA.items() if row.resume_free} | {"name"}  # may change when a run goes on


def config_changes(old, new, ignore=RESUME_FREE):
    """'key: old -> new' for every key but `ignore` that two configs set differently; a key one of them
    leaves out counts at its default. Used by train.py --resume and zoo.py (is a run the one asked for?)."""
    old, new, default = flatten(old), flatten(new), flatten(DEFAULTS)
    return [f"{k}: {old.get(k, default.get(k))!r} -> {new.get(k, default.get(k))!r}"
            for k in sorted(set(old) | set(new)) if k not in ignore and old.get(k, default.get(k)) != new.get(k, default.get(k))]


# --------------------------------------------------------------------------- builders


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
    """The data section's LST storage rule, as data.to_kelvin takes it (data.LST_UNITS's keys)."""
    d = cfg["data"]
    return {"scale": d["lst_scale"], "offset": d["lst_offset"], "nodata": d["nodata"], "range": tuple(d["lst_range"])}


def build_dataset(cfg, split, bands=None, train=False):
    """The config's dataset of `split`: the model's guidance bands unless `bands` is given ([] for
    none), training crops (data.hr_crop) only with train=True. The fine truth (30m/lst): required for
    training with train.objective=truth, never read for training with consistency, read when present
    for evaluation (without it only CONS can be scored)."""
    d = cfg["data"]
    bands = guidance_bands(cfg) if bands is None else bands
    truth = ("none" if cfg["train"]["objective"] == "consistency" else "required") if train else "if_present"
    return GrokLSTDataset(d["root"], split, d["scale"], bands, d["hr_crop"] if train else None, cfg["train"]["seed"],
                          d["cache"], lst_units(cfg), truth)


def build_normalizer(cfg):
    return Normalizer(cfg["norm"], guidance_bands(cfg))


def load_model(cfg, checkpoint, device):
    """The config's model in eval mode on `device`, with the checkpoint's weights (checkpoints.load_weights;
    a misfit names the config keys that differ from the checkpoint's); parameter-free models (bicubic,
    bilinear, the sharpeners) need none."""
    model = build_model(cfg)
    if checkpoint:
        load_weights(model, checkpoint, lambda stored: misfit_hint(cfg, stored, model_arguments(type(model))),
                     cfg["model"]["name"])
    elif num_parameters(model):
        raise ConfigError(f"model {cfg['model']['name']!r} has parameters: "
                          "give its checkpoint (test.py CONFIG CHECKPOINT; predict --checkpoint PATH), "
                          "a .pth of train.py or of the original toolkit")
    return model.to(device).eval()


# --------------------------------------------------------------------------- command line


def cmd_list(args):
    if args.markdown:
        measured, machine = read_throughput(args.throughput)
        print(f"| model | kind | scales | parameters (x2 / x4 / x8) | GMACs per {COST_HR}² output | CPU Mpx/s | paper |\n"
              "|---|---|---|---|---|---|---|")
        for name in list_models(args.pattern):
            cls = MODELS[name]
            counts = " / ".join(f"{count_parameters(name, s):,}" if s in cls.scales else "-" for s in (2, 4, 8))
            row = measured.get(name, {})
            at = f" (x{row['scale']})" if row.get("scale", 8) != 8 else ""
            gmacs = f"{row['gmacs']:.3g}{at}" if row.get("gmacs") is not None else "-"
            speed = f"{row['mpx_per_s']:.3g}{at}" if "mpx_per_s" in row else "failed" if "error" in row else "-"
            print(f"| {name} | {cls.kind} | {', '.join(f'x{s}' for s in cls.scales)} | {counts} | {gmacs} | {speed} | "
                  f"{paper(name)} |")
        if measured:
            print(f"\nGMACs and CPU Mpx/s at x8 (else at the scale shown), for one {COST_HR} x {COST_HR} output, default "
                  f"model arguments: MACs counted on the meta device; Mpx/s of output through predict.py's tiled "
                  f"inference with --amp auto (bf16 where the CPU has it natively and the model has weights, else "
                  f"float32), measured on {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, torch "
                  f"{machine.get('torch', '?')} (`{machine.get('command', 'speed.py --throughput')}`); failed: the "
                  f"measurement ended in the error its row in that file records.")
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
    bands = [b.strip() for b in args.bands.split(",") if b.strip()] if args.bands else dataset_bands(args.root, args.split)
    stats = compute_stats(args.root, args.split, bands)
    print(f"# statistics of {args.root} split {args.split}; paste under `norm:`")
    for scale, res in ((s, lr_folder(s)) for s in dataset_scales(args.root)):
        if res in stats["lst"]:
            print(f"# x{scale}: lst: {{method: zscore, {', '.join(f'{k}: {v}' for k, v in stats['lst'][res].items())}}}")
    print("guidance:\n  method: zscore\n  stats:")
    for band, v in stats["guidance"].items():
        print(f"    {band}: {{{', '.join(f'{k}: {x}' for k, x in v.items())}}}")


def cmd_make_demo(args):
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
        stored = ckpt.get("config") if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) else None
        model = build_model(cfg)
        state = fit_state_dict(model, state, args.src, lambda: misfit_hint(cfg, stored, model_arguments(type(model))),
                               cfg["model"]["name"])
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


# Jobs that are scripts of their own: `groklst.py NAME` only says which script to run.
SCRIPTS = {"predict": "predict.py", "prepare": "prepare.py", "landsat": "landsat.py", "bench": "speed.py",
           "benchmark": "zoo.py", "train": "train.py", "test": "test.py"}


@command
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SCRIPTS:
        raise ConfigError(f"`groklst.py {argv[0]}` is now a script of its own: run `python {SCRIPTS[argv[0]]} "
                          f"{' '.join(argv[1:])}`".rstrip() + " (--help lists its options)")
    p = argparse.ArgumentParser(prog="groklst.py", description=__doc__.split("\n")[0],
                                epilog="other jobs are scripts: " + ", ".join(dict.fromkeys(SCRIPTS.values())))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("list", help="registered models")
    s.add_argument("pattern", nargs="?", default="*")
    s.add_argument("--markdown", action="store_true", help="the model table of docs/models.md")
    s.add_argument("--throughput", default=THROUGHPUT_JSON, help="--markdown: the GMACs and CPU Mpx/s of this "
                   "speed.py --throughput JSON (default docs/throughput_cpu.json)")
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
