"""Speed and memory of registered models: parameters, GMACs, step time, samples/s, peak memory.

    python speed.py mocolsk --scale 8 --hr 512 --batch 1 --train          # CPU, fp32
    python speed.py mocolsk --scale 8 --hr 512 --train --device cuda --amp bf16 --compile
    python speed.py mocolsk --scale 8 --hr 512 --train --checkpointing
    python speed.py all --hr 64                                            # every model
    python speed.py --data-wait data/matbench --make-mat 32 --step-s 0.136  # data loading vs a GPU step

Per model: parameters, GMACs of one forward (torch's FlopCounterMode on the meta device, so no
compute; MACs = FLOPs / 2), median step time over --steps timed steps after --warmup, samples/s,
peak memory (CUDA max allocated, or the process's peak RSS on CPU: each model runs in its own
process, so the numbers do not mix). A train step is forward + L1 loss + backward + AdamW step.
Achieved TFLOP/s counts model FLOPs: 2 x MACs of the forward, x 3 for a train step (backward ~ twice
the forward); recomputation (checkpointing) is not counted, so it shows as a lower rate.

--data-wait ROOT: the share of a training step spent waiting for data, for each data.cache and
num_workers setting, with the model step simulated by a sleep of --step-s seconds per sample (a
GPU step measured elsewhere; the sleep leaves the CPU to the loader, as a GPU step mostly does).
--make-mat N first writes N synthetic samples at the real dataset's sizes in the original .mat layout.
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

import engine
import groklst
from data import BANDS, GrokLSTDataset
from errors import ConfigError, command
from layout import write_mat_dataset


def inputs(model, scale, hr, batch, device, dtype=torch.float32):
    """Random (lr_lst (batch, 1, hr/scale, hr/scale), hr_guidance (batch, GrokLST bands, hr, hr) or None)."""
    lr = hr // scale
    x = torch.randn(batch, 1, lr, lr, device=device, dtype=dtype)
    g = torch.randn(batch, len(BANDS), hr, hr, device=device, dtype=dtype) if model.kind == "gisr" else None
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
    n_params = groklst.num_parameters(model)
    x, g = inputs(model, scale, hr, batch, device)
    target = torch.randn(batch, 1, hr, hr, device=device)
    step_model = engine.compile_model(model, device) if compile else model
    trainable = train and n_params > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if trainable else None
    dtype = engine.AMP_DTYPES[amp]

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
            "peak_memory_mb": round(engine.peak_memory_mb(device), 1),
            "torch": str(torch.__version__)}


def run_isolated(name, **kw):
    """run_one in a fresh Python process (peak RSS of this model only)."""
    code = ("import json, sys; sys.path.insert(0, %r); import speed; "
            "print('RESULT ' + json.dumps(speed.run_one(%r, **%r)))") % (os.path.dirname(os.path.abspath(__file__)), name, kw)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"model": name, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}


def data_wait(root, step_s, scale=8, batch=1, num_workers=0, cache=False, steps=30, split="train"):
    """Data-wait share of a training loop whose model step is a sleep of step_s x batch seconds: the
    loader of train.py (shuffled, full batches, pinned memory where CUDA is) over the split with every
    guidance band. With cache, one pass first builds the .npy copies (its time is reported apart).
    Returns a dict: share (wait / loop time), wait_s, loop_s, per-sample load time without overlap."""
    dataset = GrokLSTDataset(root, split, scale, BANDS, cache=cache)
    t0 = time.perf_counter()
    if cache:
        for i in range(len(dataset)):
            dataset[i]
    cache_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(min(len(dataset), 8)):  # load cost alone, no overlap (the page cache is warm by now)
        dataset[i]
    load_ms = 1e3 * (time.perf_counter() - t0) / min(len(dataset), 8)
    generator = torch.Generator().manual_seed(0)
    wait, step_total, epoch_starts, done = 0.0, 0.0, [], 0
    while done < steps:  # one DataLoader per epoch, as train.py
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, generator=generator,
                                             num_workers=num_workers, pin_memory=torch.cuda.is_available())
        for n, seconds in enumerate(timed(loader)):
            if n == 0:  # an epoch's first batch waits for the workers to start: amortised over an epoch
                epoch_starts.append(seconds)
            else:
                wait += seconds
                done += 1
            t = time.perf_counter()
            time.sleep(step_s * batch)
            step_total += time.perf_counter() - t
            if done >= steps:
                break
    return {"num_workers": num_workers, "cache": cache, "batch": batch, "step_s": step_s * batch, "steps": steps,
            "share": wait / (wait + step_total), "wait_s": round(wait, 3), "step_total_s": round(step_total, 3),
            "epoch_start_s": round(statistics.median(epoch_starts), 3), "epochs": len(epoch_starts),
            "load_ms_per_sample": round(load_ms, 1), "cache_build_s": round(cache_build_s, 2)}


def timed(loader):
    """Seconds each batch of a loader took to arrive."""
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            return
        yield time.perf_counter() - t


def run_data_wait(args):
    if args.make_mat:
        if os.path.exists(os.path.join(args.data_wait, "split", "train.txt")):
            print(f"# {args.data_wait} exists: --make-mat skipped", file=sys.stderr)
        else:
            t0 = time.perf_counter()
            write_mat_dataset(args.data_wait, args.make_mat, args.hr)
            print(f"# wrote {args.make_mat} .mat samples ({args.hr}x{args.hr}, 10 bands) in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
    print(f"# data wait, x{args.scale}, batch {args.batch}, model step simulated as {args.step_s} s/sample, "
          f"{args.steps} steps, {os.cpu_count()} CPUs\n"
          "| data.cache | num_workers | data wait | load ms/sample (alone) | epoch start s | cache build s |\n"
          "|---|---|---|---|---|---|")
    results = []
    for cache in [c == "on" for c in args.cache_modes.split(",")]:
        for workers in [int(w) for w in args.workers.split(",")]:
            r = data_wait(args.data_wait, args.step_s, args.scale, args.batch, workers, cache, args.steps)
            results.append(r)
            print(f"| {str(cache).lower()} | {workers} | {100 * r['share']:.1f} % | {r['load_ms_per_sample']} | "
                  f"{r['epoch_start_s']} | {r['cache_build_s'] if cache else '-'} |", flush=True)
    return results


def format_row(r):
    if "error" in r:
        return f"{r['model']:10s} error: {r['error']}"
    return (f"{r['model']:10s} x{r['scale']} hr {r['hr']} b{r['batch']} {r['mode']:7s} {r['device']:5s} "
            f"{r['amp']:4s}{' compile' if r['compile'] else ''}{' ckpt' if r['checkpointing'] else ''} | "
            f"{r['parameters']:>11,} params | {r['gmacs_forward']:>9.1f} GMACs | {r['step_s_median']:8.3f} s/step | "
            f"{r['samples_per_s']:7.2f} samples/s | {r['tflops']:7.3f} TFLOP/s | peak {r['peak_memory_mb']:8.0f} MB")


@command
def main(argv=None):
    p = argparse.ArgumentParser(prog="speed.py", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="model names, or 'all'")
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--hr", type=int, default=512, help="HR side in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--train", action="store_true", help="time a training step instead of a forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=list(engine.AMP_DTYPES))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--checkpointing", action="store_true", help="MoCoLSK-Net: recompute the HR reconstruction")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 3; --data-wait: 40)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default="speed.json")
    p.add_argument("--data-wait", default=None, metavar="ROOT", help="measure the data-wait share on this dataset")
    p.add_argument("--make-mat", type=int, default=0, metavar="N", help="--data-wait: first write N .mat samples (size --hr)")
    p.add_argument("--step-s", type=float, default=0.136, help="--data-wait: simulated model step, s per sample")
    p.add_argument("--workers", default="0,2", help="--data-wait: num_workers values")
    p.add_argument("--cache-modes", default="off,on", help="--data-wait: data.cache off and/or on")
    args = p.parse_args(argv)
    if args.data_wait:
        args.steps = args.steps or 40
        results = run_data_wait(args)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        return
    if not args.models:
        raise ConfigError("give model names (or 'all'), or --data-wait ROOT")
    args.steps = args.steps or 3
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
        print(f"# speed all: HR {args.hr}, batch {args.batch}, {'train step' if args.train else 'forward'}",
              file=sys.stderr)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
