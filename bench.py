"""Speed and memory benchmark of registered models (`python bench.py ...` = `python groklst.py bench ...`).

    python bench.py mocolsk --scale 8 --hr 512 --batch 1 --train          # CPU, fp32
    python bench.py mocolsk --scale 8 --hr 512 --train --device cuda --amp bf16 --compile
    python bench.py mocolsk --scale 8 --hr 512 --train --checkpointing
    python bench.py all --hr 64                                            # every model

Per model: parameters, GMACs of one forward (torch's FlopCounterMode on the meta device, so no
compute; MACs = FLOPs / 2), median step time over --steps timed steps after --warmup, samples/s,
peak memory (CUDA max allocated, or the process's peak RSS on CPU: each model runs in its own
process, so the numbers do not mix). A train step is forward + L1 loss + backward + AdamW step.
Achieved TFLOP/s counts model FLOPs: 2 x MACs of the forward, x 3 for a train step (backward ~ twice
the forward); recomputation (checkpointing) is not counted, so it shows as a lower rate.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import groklst
from errors import ConfigError, command


def inputs(cls, scale, hr, batch, device, dtype=torch.float32):
    lr = hr // scale
    x = torch.randn(batch, 1, lr, lr, device=device, dtype=dtype)
    g = torch.randn(batch, 10, hr, hr, device=device, dtype=dtype) if cls.kind == "gisr" else None
    return x, g


def count_macs(name, scale, hr, batch, **model_kwargs):
    """GMACs of one forward, counted on the meta device (shapes only)."""
    with torch.device("meta"):
        model = groklst.create_model(name, scale=scale, **model_kwargs)
        x, g = inputs(model, scale, hr, batch, "meta")
        with FlopCounterMode(display=False) as counter:
            model(x, g)
    return counter.get_total_flops() / 2e9


def run_one(name, scale=8, hr=512, batch=1, train=False, device="cpu", amp="none", compile=False,
            checkpointing=False, steps=3, warmup=1, threads=None):
    """Benchmark one model in this process; returns a dict of the measurements."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    torch.manual_seed(0)
    kwargs = {"checkpointing": True} if checkpointing else {}
    model = groklst.create_model(name, scale=scale, **kwargs).to(device)
    model.train(train)
    n_params = sum(p.numel() for p in model.parameters())
    x, g = inputs(model, scale, hr, batch, device)
    target = torch.randn(batch, 1, hr, hr, device=device)
    step_model = groklst.compile_model(model, device) if compile else model
    trainable = train and n_params > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if trainable else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), torch.set_grad_enabled(trainable):
            out = step_model(x, g)
        if trainable:
            (out.float() - target).abs().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    gmacs = count_macs(name, scale, hr, batch, **kwargs)
    return {"model": name, "scale": scale, "hr": hr, "batch": batch, "mode": "train" if train else "forward",
            "device": str(device), "amp": amp, "compile": compile, "checkpointing": checkpointing,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "parameters": n_params, "gmacs_forward": round(gmacs, 2),
            "step_s_median": round(median, 4), "step_s_all": [round(t, 4) for t in times],
            "samples_per_s": round(batch / median, 3),
            "tflops": round(2 * gmacs * (3 if trainable else 1) / median / 1e3, 3),
            "peak_memory_mb": round(groklst.peak_memory_mb(device), 1),
            "torch": str(torch.__version__)}


def run_isolated(name, **kw):
    """run_one in a fresh Python process (peak RSS of this model only)."""
    code = ("import json, sys; sys.path.insert(0, %r); import bench; "
            "print('RESULT ' + json.dumps(bench.run_one(%r, **%r)))") % (os.path.dirname(os.path.abspath(__file__)), name, kw)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"model": name, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}


def format_row(r):
    if "error" in r:
        return f"{r['model']:10s} error: {r['error']}"
    return (f"{r['model']:10s} x{r['scale']} hr {r['hr']} b{r['batch']} {r['mode']:7s} {r['device']:5s} "
            f"{r['amp']:4s}{' compile' if r['compile'] else ''}{' ckpt' if r['checkpointing'] else ''} | "
            f"{r['parameters']:>11,} params | {r['gmacs_forward']:>9.1f} GMACs | {r['step_s_median']:8.3f} s/step | "
            f"{r['samples_per_s']:7.2f} samples/s | {r['tflops']:7.3f} TFLOP/s | peak {r['peak_memory_mb']:8.0f} MB")


@command
def main(argv=None):
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model names, or 'all'")
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--hr", type=int, default=512, help="HR side in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--train", action="store_true", help="time a training step instead of a forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--checkpointing", action="store_true", help="MoCoLSK-Net: recompute the HR reconstruction")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default="bench.json")
    args = p.parse_args(argv)
    names = groklst.list_models() if args.models == ["all"] else args.models
    for name in names:  # typos and impossible scales fail before any work
        cls = groklst.get_model_class(name)
        if args.models != ["all"] and args.scale not in cls.scales:
            raise ConfigError(f"{name} supports scales {list(cls.scales)}, not --scale {args.scale}")
    results = []
    for name in names:
        cls = groklst.MODELS[name]
        scale = args.scale if args.scale in cls.scales else max(cls.scales)
        if scale != args.scale:  # only under `all`: a named model without --scale failed above
            print(f"# {name} has no x{args.scale}; using x{scale}", file=sys.stderr)
        kw = dict(scale=scale, hr=args.hr, batch=args.batch, train=args.train, device=args.device, amp=args.amp,
                  compile=args.compile, checkpointing=args.checkpointing and name == "mocolsk", steps=args.steps,
                  warmup=args.warmup, threads=args.threads)
        r = run_isolated(name, **kw)
        print(format_row(r), flush=True)
        results.append(r)
    if args.models == ["all"]:
        print(f"# bench all: HR {args.hr}, batch {args.batch}, {'train step' if args.train else 'forward'}",
              file=sys.stderr)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
