"""Speed and memory of registered models: parameters, GMACs, step time, samples/s, peak memory.

    python speed.py mocolsk --scale 8 --hr 512 --batch 1 --train          # CPU, fp32
    python speed.py mocolsk --scale 8 --hr 512 --train --device cuda --amp bf16 --compile
    python speed.py mocolsk --scale 8 --hr 512 --train --checkpointing
    python speed.py all --hr 64                                            # every model
    python speed.py --data-wait data/matbench --make-mat 32 --step-s 0.136  # data loading vs a GPU step

Per model: parameters, GMACs of one forward (torch's FlopCounterMode on the meta device, so no
compute; MACs = FLOPs / 2), median step time over --steps timed steps after --warmup, samples/s,
peak memory (CUDA max allocated, or the process's peak RSS on CPU: each model runs in its own
process, so the numbers do not mix). A train step is forward + L1 loss + backward + AdamW step; for a
model that brings its own objective (engine.has_objective: PGDM) its training_loss + backward + AdamW
step. A forward of a stochastic model is its sampler: the model's num_samples draws (1 by default), all
their steps (PGDM: 3 U-Net evaluations, counted in its GMACs; its training loss is one evaluation, so
the TFLOP/s of its train step are overstated about 3 times).
Achieved TFLOP/s counts model FLOPs: 2 x MACs of the forward, x 3 for a train step (backward ~ twice
the forward); recomputation (checkpointing) is not counted, so it shows as a lower rate.

--throughput: CPU inference throughput instead, in output megapixels per second of predict.py's own
inference path (predict.predict_rows on a random --hr x --hr scene, one tile) at the precision of
`--amp auto` (predict.resolve_amp: bf16 where the CPU computes it natively and the model has weights,
else float32), one process per model with a --timeout; rows are merged into --json (default
docs/throughput_cpu.json, which `groklst.py list --markdown` and zoo.py's table read) with the
machine they ran on:

    python speed.py all --hr 256 --throughput --json docs/throughput_cpu.json
    python speed.py pgdm --hr 256 --throughput --json docs/throughput_cpu.json   # add or redo one model

--data-wait ROOT: the share of a training step spent waiting for data, for each data.cache and
num_workers setting, with the model step simulated by a sleep of --step-s seconds per sample (a
GPU step measured elsewhere; the sleep leaves the CPU to the loader, as a GPU step mostly does).
--make-mat N first writes N synthetic samples at the real dataset's sizes in the original .mat layout.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import costs
import engine
import groklst
from data import BANDS, GrokLSTDataset
from errors import ConfigError, command
from geotiff import write_atomic
from layout import write_mat_dataset

HERE = os.path.dirname(os.path.abspath(__file__))


def inputs(model, scale, hr, batch, device, dtype=torch.float32):
    """Random (lr_lst (batch, 1, hr/scale, hr/scale), hr_guidance (batch, GrokLST bands, hr, hr) or None)."""
    lr = hr // scale
    x = torch.randn(batch, 1, lr, lr, device=device, dtype=dtype)
    g = torch.randn(batch, len(BANDS), hr, hr, device=device, dtype=dtype) if model.kind == "gisr" else None
    return x, g


def count_macs(name, scale, hr, batch, **model_kwargs):
    """GMACs of one forward of a registered model (its arguments at their defaults unless given, the
    ten GrokLST bands for a guided one), counted on the meta device (costs.count_macs)."""
    return costs.count_macs(lambda: groklst.create_model(name, scale=scale, **model_kwargs), scale, len(BANDS), hr, batch)


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
    objective = trainable and engine.has_objective(model)  # its own loss, through forward as train.py calls it
    mask = torch.ones_like(target, dtype=torch.bool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if trainable else None
    dtype = engine.AMP_DTYPES[amp]

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), torch.set_grad_enabled(trainable):
            out = step_model(x, g, hr_lst=target, mask=mask) if objective else step_model(x, g)
        if trainable:
            (out.float() if objective else (out.float() - target).abs().mean()).backward()
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
    return _in_child(f"speed.run_one({name!r}, **{kw!r})", name)


def _in_child(call, name, timeout=None, imports=""):
    """The JSON result of `call` (Python code using speed and `imports`) run in a fresh process, or
    {'model': name, 'error': its last line} (also after `timeout` seconds)."""
    code = (f"import json, sys; sys.path.insert(0, {HERE!r}); import speed{imports}; "
            f"print('RESULT ' + json.dumps({call}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "error": f"timed out after {timeout:g} s (--timeout)"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"model": name, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}


# --------------------------------------------------------------------------- CPU inference throughput


def machine():
    """The CPU (model name from /proc/cpuinfo, else platform's), torch's threads and version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": str(torch.__version__),
            "load_average": round(os.getloadavg()[0], 1)}  # other processes on the machine slow every number


def throughput(name, predict, scale=8, hr=256, steps=3, warmup=1, threads=None, seed=0):
    """Output megapixels per second of predict.py's inference on one random hr x hr scene (the LST at
    hr / scale, the ten guidance bands about their GrokLST means): predict.predict_rows with one tile
    (lr_tile = hr / scale, no overlap, batch 1), which normalises, runs the model, decodes to Kelvin and
    masks, at --amp auto's precision (predict.resolve_amp). Not run: predict.bf16_check, auto's accuracy
    check of a trained checkpoint (random weights would decide it; where it rejects bf16, float32's
    speed applies). A statistical sharpener's per-scene fit (predict.py's fit_scene) is counted in each
    step. `predict`: the predict module, imported by the caller (a script imports no other script).
    The fastest of `steps` timed steps after `warmup` (on a shared machine other processes only ever
    slow a step down); random weights (seed)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = groklst.load_config(os.path.join(HERE, "configs", "_base_", f"groklst_x{scale}.yaml"), [f"model.name={name}"])
    model = groklst.build_model(cfg).eval()
    normalizer, bands = groklst.build_normalizer(cfg), groklst.guidance_bands(cfg)
    rng = np.random.default_rng(seed)
    lst = (cfg["norm"]["lst"]["mean"] + cfg["norm"]["lst"]["std"] * rng.standard_normal((hr // scale,) * 2)).astype(np.float32)
    stats = cfg["norm"]["guidance"]["stats"]
    gui = np.stack([stats[b]["mean"] + stats[b]["std"] * rng.standard_normal((hr, hr)) for b in bands]).astype(np.float32) \
        if bands else None
    amp = predict.resolve_amp("auto", "cpu", model)[0]

    def step():
        if hasattr(model, "fit_scene"):
            model.fit_scene(lst, gui)
        for _ in predict.predict_rows(model, normalizer, lst, gui, scale, hr // scale, 0, 1, "cpu", amp):
            pass

    with torch.inference_mode():
        for _ in range(warmup):
            try:
                step()
            except RuntimeError:  # no bf16 kernel for one of its operations (SGNet): auto runs float32 (bf16_check)
                if amp == "none":
                    raise
                amp = "none"
                step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    best = min(times)
    gmacs = _gmacs(name, scale, hr)
    return {"model": name, "scale": scale, "hr": hr, "amp": amp, "mpx_per_s": round(hr * hr / 1e6 / best, 4),
            "forward_s_best": round(best, 4), "forward_s_all": [round(t, 4) for t in times],
            "parameters": groklst.num_parameters(model), "gmacs": gmacs, **machine()}


def _gmacs(name, scale, hr):
    try:
        return round(count_macs(name, scale, hr, 1), 4)
    except (NotImplementedError, RuntimeError):  # fitted per image: nothing to count on the meta device
        return None


def run_throughput(names, args):
    """--throughput: each model in its own process (--timeout s), its row merged into --json as soon as
    it is measured (an interrupted measurement keeps the rows done); returns the rows of this call."""
    rows = {}
    if os.path.exists(args.json):
        with open(args.json) as f:
            rows = {r["model"]: r for r in json.load(f).get("rows", [])}
    here, results = machine(), []
    here.pop("load_average")  # each row has its own
    if args.threads:
        here["threads"] = args.threads
    here["command"] = f"python speed.py all --hr {args.hr} --throughput --json {os.path.relpath(args.json)}"  # remakes it
    for name in names:
        scale = args.scale if args.scale in groklst.MODELS[name].scales else max(groklst.MODELS[name].scales)
        t0 = time.perf_counter()
        kw = dict(scale=scale, hr=args.hr, steps=args.steps, warmup=args.warmup, threads=args.threads)
        r = _in_child(f"speed.throughput({name!r}, predict, **{kw!r})", name, args.timeout, imports=", predict")
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        if "error" in r:  # what it costs can still be counted
            r.update(scale=scale, hr=args.hr, gmacs=_gmacs(name, scale, args.hr))
        rows[name] = dict(r, measured=time.strftime("%Y-%m-%d"))
        results.append(r)
        print(f"{name:10s} x{scale} " + (f"error: {r['error']}" if "error" in r else
              f"{r['mpx_per_s']:8.4f} Mpx/s ({r['amp']}) | {r['forward_s_best']:8.3f} s per {args.hr}² | "
              f"{'-' if r['gmacs'] is None else format(r['gmacs'], '.3g')} GMACs") + f" | {r['wall_s']} s wall", flush=True)
        content = {"what": f"CPU inference throughput (output Mpx/s, --amp auto) and GMACs per {args.hr} x {args.hr} "
                           "output, default model arguments, x8 or the model's largest scale (speed.py --throughput)",
                   "machine": here,
                   "rows": sorted(rows.values(), key=lambda r: r["model"])}
        write_atomic(args.json, (json.dumps(content, indent=1) + "\n").encode())
    return results


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
    p.add_argument("--json", default=None, help="results (default speed.json; --throughput: merged into "
                   "docs/throughput_cpu.json)")
    p.add_argument("--throughput", action="store_true", help="CPU inference throughput (Mpx/s of output) under "
                   "--amp auto, through predict.py's inference")
    p.add_argument("--timeout", type=float, default=900, help="--throughput: seconds per model (default 900)")
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
    args.json = args.json or (costs.THROUGHPUT_JSON if args.throughput else "speed.json")
    names = groklst.list_models() if args.models == ["all"] else args.models
    for name in names:  # typos and impossible scales fail before any work
        cls = groklst.get_model_class(name)
        if args.models != ["all"] and args.scale not in cls.scales:
            raise ConfigError(f"{name} supports scales {list(cls.scales)}, not --scale {args.scale}")
    if args.throughput:
        if args.device != "cpu" or args.train or args.amp != "none" or args.compile or args.batch != 1:
            raise ConfigError("--throughput measures CPU inference of one scene under --amp auto: drop --device, "
                              "--train, --amp, --compile and --batch")
        run_throughput(names, args)
        print(f"rows merged into {args.json}")
        return
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
