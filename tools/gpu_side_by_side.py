"""Side by side on one GPU: the original GrokLST models (its checkout, OpenMMLab imports stubbed) and ours.

    python tools/gpu_side_by_side.py --original ../GrokLST                 # MoCoLSK-Net + the 3 next by GMACs
    python tools/gpu_side_by_side.py --original ../GrokLST --models mocolsk,sgnet --hr 512 --scale 8
    python tools/gpu_side_by_side.py --device cpu --hr 64 --models mocolsk --steps 1   # dry run, ours only

For each model: a train step (forward, L1 loss, backward, AdamW step) of the original, of ours and of
ours under torch.compile, timed in alternating rounds on the same input and batch, in fp32 and bf16
autocast, at batch 1 and at the largest batch (doubling up to --max-batch) that fits both; peak
memory is CUDA max allocated per configuration. Prints one markdown row per measurement.

The original's model files are imported from the checkout as they are: `mmengine.model.BaseModule`
becomes nn.Module, `mmagic.registry.MODELS.register_module()` a no-op decorator, and any other
mmagic / mmengine / mmcv name a placeholder (an original that really uses one fails, is reported,
and only ours is timed). Its constructor arguments come from its GrokLST config
(configs/{gisr,sisr}/<model>/<model>_x<scale>_4xb1-10k_groklst.py, `model.generator`), with
in-model normalisation off (norm_flag=0): ours normalises outside the model.
"""
import argparse
import copy
import glob
import importlib
import importlib.abc
import importlib.machinery
import os
import re
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import engine  # noqa: E402
import groklst  # noqa: E402
import speed  # noqa: E402  (count_macs: the one way MACs are counted)

STUBBED = ("mmagic", "mmengine", "mmcv")


class _Registry:
    def register_module(self, *args, **kwargs):
        if args and isinstance(args[0], type):  # used bare: @MODELS.register_module
            return args[0]
        return lambda cls: cls

    def __getattr__(self, name):
        return _placeholder(name)


class _BaseModule(nn.Module):
    def __init__(self, *args, init_cfg=None, **kwargs):
        super().__init__()


def _placeholder(name):
    def fail(*args, **kwargs):
        raise ImportError(f"the original uses OpenMMLab's {name!r}, which is stubbed here")
    return type(name, (), {"__init__": fail, "__call__": fail})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(name)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any import under mmagic / mmengine / mmcv gets a stub module."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        if spec.name.endswith("registry"):
            module.MODELS = _Registry()
        if spec.name.endswith(".model"):
            module.BaseModule = _BaseModule
        return module

    def exec_module(self, module):
        pass


def install_stubs():
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())


def original_generator(original, model, scale):
    """(type name, kwargs) of the original config's model.generator for `model` at `scale`."""
    pattern = os.path.join(original, "configs", "*", model, f"{model}_x{scale}_4xb1-10k_groklst.py")
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no original config {pattern}")
    namespace = {"dict": dict}
    exec(compile(open(paths[0]).read(), paths[0], "exec"), namespace)  # the user's own checkout
    generator = dict(namespace["model"]["generator"])
    return generator.pop("type"), generator


def build_original(original, model, scale, guidance_channels=10):
    """The original's model, built from its checkout (stubs for OpenMMLab). Returns (nn.Module, source file)."""
    install_stubs()
    type_name, kwargs = original_generator(original, model, scale)
    if "norm_flag" in kwargs:
        kwargs["norm_flag"] = 0
    if "gui_channels" in kwargs:
        kwargs["gui_channels"] = guidance_channels
    editors = os.path.join(original, "groklst", "models", "editors")
    defining = [p for p in glob.glob(os.path.join(editors, "*", "*.py"))
                if re.search(rf"^class {type_name}\(", open(p, errors="replace").read(), re.M)]
    if not defining:
        raise FileNotFoundError(f"no 'class {type_name}(' under {editors}")
    path = sorted(defining, key=lambda p: os.path.basename(os.path.dirname(p)) != model)[0]
    # the checkout's folders as packages whose __init__ is not run (it would import all of OpenMMLab):
    # relative imports (`from .x import`, `from ..rsag import common`) resolve inside the checkout
    parts = ["groklst", "models", "editors", os.path.basename(os.path.dirname(path))]
    for depth in range(len(parts) + 1):
        package = ".".join(["grokorig"] + parts[:depth])
        if package not in sys.modules:
            pkg = types.ModuleType(package)
            pkg.__path__ = [os.path.join(original, *parts[:depth])]
            sys.modules[package] = pkg
    if original not in sys.path:
        sys.path.append(original)  # absolute imports of the checkout's own modules
    module = importlib.import_module(f"{package}.{os.path.splitext(os.path.basename(path))[0]}")
    if model == "mocolsk" and "module" in kwargs and not hasattr(module, kwargs["module"]):
        kwargs["module"] = "DynamicLSKBlock"  # an older checkout: the same block under its earlier name
    return getattr(module, type_name)(**kwargs), os.path.relpath(path, original)


def train_step_fn(model, kind, x, g, target, amp, device):
    """A closure: one train step (forward, L1 loss in float32, backward, AdamW step), synchronised."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if amp == "bf16" else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x, g) if kind == "gisr" else model(x)
        (out.float() - target).abs().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return step


def make_inputs(kind, scale, hr, batch, device):
    torch.manual_seed(0)
    x = torch.randn(batch, 1, hr // scale, hr // scale, device=device)
    g = torch.randn(batch, 10, hr, hr, device=device) if kind == "gisr" else None
    return x, g, torch.randn(batch, 1, hr, hr, device=device)


def fits(builders, kind, scale, hr, batch, device):
    """True if one fp32 train step of every builder's model runs at this batch."""
    for build in builders.values():
        model = None
        try:
            model = build().to(device)
            x, g, target = make_inputs(kind, scale, hr, batch, device)
            train_step_fn(model, kind, x, g, target, "none", device)()
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return True


def peak_alone(build, kind, scale, hr, batch, amp, device):
    """Peak memory (MB) of one train step of one implementation, alone on the device (after a first
    step, so AdamW's states exist, as in training)."""
    model = build().to(device)
    x, g, target = make_inputs(kind, scale, hr, batch, device)
    step = train_step_fn(model, kind, x, g, target, amp, device)
    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()
    peak = engine.peak_memory_mb(device)
    del model, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peak


def measure(builders, kind, scale, hr, batch, amp, device, steps, warmup, rounds):
    """{implementation: (median step s, peak MB)}: step times in alternating rounds (all models on the
    device), peak memory of each alone."""
    peaks = {name: peak_alone(build, kind, scale, hr, batch, amp, device) for name, build in builders.items()}
    x, g, target = make_inputs(kind, scale, hr, batch, device)
    models = {name: build().to(device) for name, build in builders.items()}
    steps_of = {name: train_step_fn(m, kind, x, g, target, amp, device) for name, m in models.items()}
    times = {name: [] for name in models}
    for step in steps_of.values():
        for _ in range(warmup):  # compile happens here
            step()
    for _ in range(rounds):
        for name, step in steps_of.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    del models, steps_of
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {name: (statistics.median(times[name]), peaks[name]) for name in times}


def next_most_expensive(scale, hr, count=3, exclude=("mocolsk",)):
    """The `count` registered models with the most forward GMACs at (scale, hr), besides `exclude`."""
    names = [n for n in groklst.list_models() if scale in groklst.MODELS[n].scales and n not in exclude
             and groklst.count_parameters(n, scale) > 0 and n != "msg"]  # msg: another name of dmsg
    return sorted(names, key=lambda n: -speed.count_macs(n, scale, hr, 1))[:count]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--original", default=None, help="root of a GrokCV/GrokLST checkout (none: ours only)")
    p.add_argument("--models", default=None, help="comma-separated (default: mocolsk + the 3 next by GMACs)")
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--hr", type=int, default=512, help="HR side in pixels")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--amp", default="none,bf16", help="comma-separated: none (fp32) and/or bf16")
    p.add_argument("--no-compile", action="store_true", help="skip ours under torch.compile")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    models = args.models.split(",") if args.models else ["mocolsk"] + next_most_expensive(args.scale, args.hr)
    print(f"# train step, x{args.scale}, HR {args.hr}, {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), torch {torch.__version__}; "
          f"median of {args.rounds} alternating rounds x {args.steps} steps")
    print("| model | implementation | batch | precision | step s | samples/s | peak MB | parameters | GMACs/sample |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in models:
        cls = groklst.get_model_class(name)
        builders = {"ours": lambda n=name: groklst.create_model(n, scale=args.scale)}
        if args.original:
            try:
                original, source = build_original(os.path.abspath(args.original), name, args.scale)
                builders = {"original": lambda o=original: copy.deepcopy(o), **builders}  # a fresh copy per use
                print(f"# {name}: original from {source}, {sum(t.numel() for t in original.parameters()):,} parameters",
                      file=sys.stderr)
            except Exception as e:  # reported, and ours is still timed
                print(f"| {name} | original: not built ({type(e).__name__}: {e}) | | | | | | | |", flush=True)
        if not args.no_compile:
            builders["ours compiled"] = lambda n=name: engine.compile_model(groklst.create_model(n, scale=args.scale),
                                                                             device)
        eager = {k: v for k, v in builders.items() if k != "ours compiled"}
        batch = 1
        while batch * 2 <= args.max_batch and fits(eager, cls.kind, args.scale, args.hr, batch * 2, device):
            batch *= 2
        gmacs = speed.count_macs(name, args.scale, args.hr, 1)
        for b in sorted({1, batch}):
            for amp in args.amp.split(","):
                results = measure(builders, cls.kind, args.scale, args.hr, b, amp, device, args.steps, args.warmup,
                                  args.rounds)
                for impl, (step_s, peak) in results.items():
                    n_params = sum(q.numel() for q in builders[impl]().parameters()) if impl != "ours compiled" else ""
                    print(f"| {name} | {impl} | {b} | {'bf16' if amp == 'bf16' else 'fp32'} | {step_s:.4f} | "
                          f"{b / step_s:.2f} | {peak:.0f} | {n_params and f'{n_params:,}'} | {gmacs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
