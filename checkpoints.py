"""Checkpoint files, in and out: a reader that runs nothing a file names, conversion of the original
toolkit's checkpoints, fitting a state dict to a model with one-line misfit messages, and the one writer.

A checkpoint is a pickle, and unpickling may call anything a file names. This toolkit's own checkpoints
hold only tensors and plain types and load with torch.load(weights_only=True). Original (mmagic)
checkpoints also hold mmengine and numpy objects in `meta` and `message_hub`, which weights_only
refuses; they are read by a restricted unpickler instead: the classes torch needs to rebuild tensors are
allowed, every other class named in the file becomes an inert `Unloaded` stand-in that only records its
arguments. Nothing in a file can run.

What a checkpoint of train.py holds (a dict): model (state dict, no `module.` / `_orig_mod.` prefixes),
optimizer, scaler, iter, best_rmse, world, config (the resolved config), model_name, torch_version.
convert-checkpoint writes model, model_name, iter, source and, when checked, config.
"""
import codecs
import collections
import errno
import io
import math
import os
import pickle
import re
import sys
import types
import warnings
import zipfile

import torch

from errors import DataError
from geotiff import write_atomic

# --------------------------------------------------------------------------- the restricted unpickler


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
    __name__="checkpoints.restricted_pickle", Unpickler=RestrictedUnpickler,
    load=lambda f, **kwargs: RestrictedUnpickler(f, **kwargs).load())

# What torch.load and a damaged file raise (zip reader, pickle, legacy format, a read cut short by the file's
# end: OSError EINVAL from the zip reader's seek); anything else is a bug
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, KeyError,
               IndexError, UnicodeDecodeError, zipfile.BadZipFile)


def _unreadable(path, e):
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return DataError(f"{path}: truncated or not a checkpoint ({reason})")


# --------------------------------------------------------------------------- reading


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
    except OSError as e:  # a file cut short: the zip reader seeks past its end (EINVAL)
        raise _unreadable(path, e) from None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist()):
                # torch.load would hand it to torch.jit.load, which runs the archive's code
                raise DataError(f"{path}: a TorchScript archive, not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except (_UNREADABLE + (OSError,)) as e:
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


# --------------------------------------------------------------------------- fitting weights to a model


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


def examples(items, n=3):
    """The first n items and how many more: 'a, b, c (+4 more)'."""
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def non_finite(state):
    """Names of the floating-point tensors of a state dict that hold NaN or infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def fit_state_dict(model, state, path, explain=None, name=None):
    """The entries of `state` that `model` stores, after checking that they fit.

    Derived buffers (derived_buffer) are dropped when they equal the model's own. Anything missing,
    unexpected, of another shape, a derived buffer with other values, or a weight that is NaN or
    infinite (a run that diverged) is a one-line DataError naming `path` (and the model's `name`);
    `explain()`, when given, appends why (groklst.load_model names the config keys the checkpoint was
    trained with)."""
    ours = model.state_dict()
    kept, unexpected, differ = {}, [], []
    for k, v in state.items():
        if k in ours:
            kept[k] = v
            continue
        # a key the model does not store may still be one it computes (the original stored attention masks
        # and position indices): dropped only if it holds exactly what the model computes, else the file was
        # made for another configuration (window size, image size) and loading it would change the function
        own = derived_buffer(model, k, v)
        if own is None:
            unexpected.append(k)
        elif own.shape != v.shape or not torch.equal(own, v.to(own.dtype)):
            differ.append(k)
    missing = [k for k in ours if k not in kept]
    # every kind of misfit is collected before failing, so one message says all that is wrong (a few
    # examples each), not only the first key load_state_dict would trip on
    shapes = [f"{k} {tuple(v.shape)} vs model {tuple(ours[k].shape)}" for k, v in kept.items() if v.shape != ours[k].shape]
    problems = [f"{len(items)} {what}: {examples(items)}" for what, items in (
        ("size mismatches", shapes), ("missing", missing), ("unexpected", unexpected),
        ("derived buffers unlike the model's", differ)) if items]
    if problems:
        raise DataError(f"{path}: checkpoint does not fit the model{f' {name!r}' if name else ''}: {'; '.join(problems)}"
                        f"{explain() if explain else ''}")
    bad = non_finite(kept)
    if bad:
        raise DataError(f"{path}: {len(bad)} weight tensors hold NaN or infinity ({examples(bad)}): the run that wrote "
                        f"it diverged; use an earlier checkpoint or train again with a lower train.lr")
    return kept


def load_weights(model, path, explain=None, name=None):
    """Load model weights from a checkpoint of this toolkit or of the original (mmagic) one into `model`;
    returns the checkpoint (a dict). explain(stored_config) -> str: called only when the weights do not
    fit, with the config the checkpoint stored (or None), to say why; name: the model's registry name, for
    messages. Errors: DataError naming `path`."""
    ckpt = read_checkpoint(path)
    stored = ckpt.get("config") if isinstance(ckpt, dict) else None
    why = (lambda: explain(stored if isinstance(stored, dict) else None)) if explain else None
    model.load_state_dict(fit_state_dict(model, checkpoint_weights(ckpt, path), path, why, name))
    return ckpt


def config_differences(cfg, stored, defaults):
    """'key=stored (here value)' for each of data.scale, data.guidance_bands and model.* that a
    checkpoint's stored config (train.py writes it) sets differently from `cfg`; a model argument
    one of them leaves out counts at its default (`defaults`: the model constructor's, {argument: default})."""
    out = []
    for k in ("scale", "guidance_bands"):
        theirs = (stored.get("data") or {}).get(k) if isinstance(stored.get("data"), dict) else None
        if theirs != cfg["data"].get(k):
            out.append(f"data.{k}={theirs!r} (here {cfg['data'].get(k)!r})")
    ours, theirs = cfg["model"], stored.get("model") if isinstance(stored.get("model"), dict) else {}
    if theirs.get("name") != ours.get("name"):
        return out + [f"model.name={theirs.get('name')!r} (here {ours.get('name')!r})"]
    for k in sorted((set(ours) | set(theirs)) - {"name"}):
        a, b = theirs.get(k, defaults.get(k)), ours.get(k, defaults.get(k))
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out.append(f"model.{k}={a!r} (here {b!r})")
    return out


def misfit_hint(cfg, stored, defaults):
    """Why a checkpoint's weights may not fit the model of `cfg`, from the config it stored (or None)."""
    diffs = config_differences(cfg, stored, defaults) if stored is not None else []
    if diffs:
        return f"; the checkpoint was trained with {examples(diffs, 5)}"
    if stored is None:
        return "; check data.scale, data.guidance_bands and the model.* keys against the run that wrote it"
    return ""


# --------------------------------------------------------------------------- writing


def write_checkpoint(path, content, hint="fix the cause and run again"):
    """torch.save, atomically (geotiff.write_atomic: unique temp file, fsync, rename), so `path` is the old
    file or the whole new one. Weights (`content['model']`) holding NaN or infinity are never written:
    a DataError says so. A failed write (full disk) is a DataError saying that the previous file is intact
    (or that none was written) and `hint`."""
    bad = non_finite(content["model"]) if isinstance(content.get("model"), dict) else []
    if bad:
        raise DataError(f"{path}: not saved: {len(bad)} weight tensors hold NaN or infinity ({examples(bad)}); "
                        f"the run diverged: lower train.lr or set train.clip_grad")
    buffer = io.BytesIO()
    torch.save(content, buffer)
    try:
        write_atomic(path, buffer.getbuffer())
    except OSError as e:
        kept = (f"the previous {os.path.basename(path)} is intact" if os.path.exists(path)
                else "no checkpoint was written")
        free = "free some space and " if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise DataError(f"{path}: saving the checkpoint failed ({e.strerror or e}); {kept}; {free}{hint}") from None
