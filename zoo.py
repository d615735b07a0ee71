"""The model zoo as one resumable queue: train and evaluate many configs, then write the paper's Table IX.

    python zoo.py --configs 'configs/*_x8.yaml' --root work_dirs/zoo --out table.md
    python zoo.py --models mocolsk,srcnn,bicubic --scales 2,4,8 --devices cuda:0,cuda:1
    python zoo.py --models srcnn,mocolsk --scales 8 --jobs 2 train.max_iters=200 data.root=data/demo
    python zoo.py --models srcnn,mocolsk --scales 8 'mocolsk:model.num_feats=16'   # one model only
    python zoo.py --table-only --root work_dirs/zoo [--split test]                  # the table of every run there

Each config is one `python train.py CFG work_dir=ROOT/<config stem> OVERRIDES` subprocess, its
output in ROOT/<run>/train.out. Runs go one per GPU at a time (--devices, via CUDA_VISIBLE_DEVICES)
or --jobs at a time on the CPU (each with OMP_NUM_THREADS = cores / jobs). Run it again to go on:
a run whose last.pth reached train.max_iters is skipped, one with an earlier last.pth is resumed
(--resume), any other starts afresh. Parameter-free models (bicubic, bilinear) are not trained, only
evaluated. Overrides apply to every run; `MODEL:key=value` only to the runs of that model. A failed
run is reported with the last line of its output and the queue goes on; the exit code is 1 if any
run failed. At the end every finished run is evaluated (table_ix) into --out.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

import torch

import engine
import groklst
from checkpoints import read_checkpoint
from errors import ConfigError, DataError, UserError, command
from geotiff import write_atomic
from metrics import COLUMNS

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(HERE, "configs")


def resolve_configs(patterns, models, scales, config_dir=CONFIG_DIR):
    """Config paths of --configs globs and of --models x --scales (configs/<model>_x<scale>.yaml;
    a model without that scale's config is skipped), in order, without repeats."""
    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if not found:
            raise ConfigError(f"--configs {pattern!r}: no config file matches")
        paths += found
    for model in models:
        groklst.get_model_class(model)  # a typo is an error, not an empty queue
        found = [p for s in scales if os.path.exists(p := os.path.join(config_dir, f"{model}_x{s}.yaml"))]
        if not found:
            raise ConfigError(f"--models {model}: no configs/{model}_x{{{','.join(map(str, scales))}}}.yaml")
        paths += found
    return list(dict.fromkeys(paths))


def run_overrides(overrides, model):
    """The overrides of one run: the plain ones and those scoped `model:key=value` to its model."""
    out = []
    for text in overrides:
        head, sep, rest = text.partition(":")
        if sep and "=" not in head:  # MODEL:key=value
            if head == model:
                out.append(rest)
        else:
            out.append(text)
    return out


def last_iteration(work_dir):
    """Iteration of <work_dir>/last.pth, or None (none, or a file that is not a whole checkpoint)."""
    path = os.path.join(work_dir, "last.pth")
    if not os.path.exists(path):
        return None
    try:
        return int(read_checkpoint(path)["iter"])
    except (UserError, KeyError, TypeError, ValueError):  # a torn or foreign file: train afresh
        return None


def plan(paths, root, overrides):
    """One dict per config: name, config path, model, scale, max_iters, work_dir, overrides,
    state (train | resume | done | evaluate | failed) and, if failed, error."""
    runs = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        run = {"name": name, "config": path, "work_dir": os.path.join(root, name), "model": name, "scale": "?"}
        try:
            model = groklst.load_config(path)["model"]["name"]
            run["overrides"] = run_overrides(overrides, model) + [f"work_dir={run['work_dir']}"]
            cfg = groklst.load_config(path, run["overrides"])
        except ConfigError as e:
            runs.append(dict(run, state="failed", error=f"error: {e}"))
            continue
        run.update(model=model, scale=cfg["data"]["scale"], max_iters=cfg["train"]["max_iters"], cfg=cfg)
        if groklst.count_parameters(model, cfg["data"]["scale"]) == 0:
            run["state"] = "evaluate"
        else:
            it = last_iteration(run["work_dir"])
            run["state"] = "train" if it is None else "done" if it >= run["max_iters"] else "resume"
            run["start_iter"] = it or 0
        runs.append(run)
    return runs


def slots(devices, jobs):
    """[(label, environment additions)] of the places runs go: GPUs, or CPU job slots."""
    if devices:
        out = []
        for d in devices:
            if d == "cpu":
                out.append(("cpu", {"CUDA_VISIBLE_DEVICES": ""}))
            elif d.startswith("cuda:") and d[5:].isdigit():
                out.append((d, {"CUDA_VISIBLE_DEVICES": d[5:]}))
            else:
                raise ConfigError(f"--devices {d!r}: expected cuda:N or cpu")
        return out
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return [(f"cpu{i}", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}) for i in range(jobs)]


def start(run, env_extra):
    """Launch train.py for a run; returns the Popen (output to <work_dir>/train.out)."""
    wd = run["work_dir"]
    os.makedirs(wd, exist_ok=True)
    args = [sys.executable, os.path.join(HERE, "train.py"), run["config"], *run["overrides"]]
    if run["state"] == "resume":
        args.append("--resume")
    elif os.path.exists(os.path.join(wd, "log.jsonl")):  # a fresh start: the old log would mislead progress
        os.remove(os.path.join(wd, "log.jsonl"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # never a DDP rank of ours
        env.pop(key, None)
    out = open(os.path.join(wd, "train.out"), "a")
    out.write(f"$ {' '.join(args)}\n")
    out.flush()
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=HERE)
    out.close()
    return proc


def write_config(run):
    """A parameter-free run's folder: just its resolved config (what table_ix evaluates)."""
    os.makedirs(run["work_dir"], exist_ok=True)
    groklst.write_config({k: v for k, v in run["cfg"].items() if k != "name"}, os.path.join(run["work_dir"], "config.yaml"))


def progress(run):
    """(iteration, iterations per second) of the run's last training record in log.jsonl."""
    it, speed = run.get("start_iter", 0), None
    try:
        with open(os.path.join(run["work_dir"], "log.jsonl")) as f:
            for line in f:
                record = json.loads(line)
                if "it_per_s" in record:
                    it, speed = record["iter"], record["it_per_s"]
    except (OSError, ValueError):
        pass
    return it, speed


def last_line(path):
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def clock(seconds):
    return time.strftime("%H:%M:%S", time.gmtime(max(0, seconds)))


def say(run, text):
    print(f"{run['model']:10s} x{run['scale']} | {text}", flush=True)


def execute(runs, places, poll_s=3.0):
    """Train every run in state train/resume, at most one per place at a time; print a line per
    run when it starts, advances (iteration, it/s, ETA), finishes or fails. Sets state done/failed."""
    queue = [r for r in runs if r["state"] in ("train", "resume")]
    free, active = list(places), {}  # active: place label -> (run, process, started)
    while queue or active:
        while queue and free:
            label, env_extra = free.pop(0)
            run = queue.pop(0)
            active[label] = (run, start(run, env_extra), time.time())
            run["shown"] = run.get("start_iter", 0)
            say(run, f"{'resumed at iteration ' + str(run['start_iter']) if run['state'] == 'resume' else 'started'} "
                     f"on {label} -> {os.path.join(run['work_dir'], 'train.out')}")
        time.sleep(poll_s)
        for label in list(active):
            run, proc, started = active[label]
            it, speed = progress(run)
            if it != run["shown"]:
                run["shown"] = it
                eta = f" | eta {clock((run['max_iters'] - it) / speed)}" if speed else ""
                say(run, f"iter {it}/{run['max_iters']}" + (f" | {speed:.2f} it/s" if speed else "") + eta)
            if proc.poll() is None:
                continue
            del active[label]
            free.append((label, dict(places)[label]))
            if proc.returncode == 0:
                run["state"] = "done"
                say(run, f"done in {clock(time.time() - started)}")
            else:
                run["state"] = "failed"
                run["error"] = last_line(os.path.join(run["work_dir"], "train.out"))
                say(run, f"FAILED (exit {proc.returncode}): {run['error']}")


# --------------------------------------------------------------------------- Table IX


def run_label(run, scale):
    """A run's row label: its folder name without the `_x<scale>` suffix (srcnn_x8 -> srcnn), so the runs of
    one method at several scales share a row."""
    suffix = f"_x{scale}"
    return run[:-len(suffix)] if run.endswith(suffix) and len(run) > len(suffix) else run


def table_ix(work_root, split=None, overrides=(), device="cpu", runs=None):
    """Table IX of the paper (markdown) for the runs under work_root: trained ones (<run>/config.yaml +
    <run>/best.pth) and parameter-free ones (<run>/config.yaml of bicubic or bilinear, no checkpoint),
    plus bicubic per scale where no run has it. runs: folder names (default: every such run). Rows =
    methods (run_label), columns = metrics.COLUMNS per scale, evaluated on `split` (default data.test_split)."""
    if not os.path.isdir(work_root):
        raise DataError(f"{work_root}: folder not found")

    def checkpoint_of(run):
        best = os.path.join(work_root, run, "best.pth")
        return best if os.path.exists(best) else None

    def parameter_free(run):
        cfg = groklst.load_config(os.path.join(work_root, run, "config.yaml"), overrides)
        return groklst.count_parameters(cfg["model"]["name"], cfg["data"]["scale"]) == 0

    if runs is None:
        runs = sorted(d for d in os.listdir(work_root) if os.path.exists(os.path.join(work_root, d, "config.yaml"))
                      and (checkpoint_of(d) or parameter_free(d)))
    if not runs:
        raise DataError(f"{work_root}: no <run>/best.pth (or <run>/config.yaml of a parameter-free model) found")
    results, data_of_scale = {}, {}
    for run in runs:
        cfg = groklst.load_config(os.path.join(work_root, run, "config.yaml"), overrides)
        scale, data_split = cfg["data"]["scale"], split or cfg["data"]["test_split"]
        model = groklst.load_model(cfg, checkpoint_of(run), device)
        metrics = engine.evaluate(model, groklst.build_normalizer(cfg), groklst.build_dataset(cfg, data_split), device,
                                  consistency=cfg["consistency"])[0]
        results.setdefault(run_label(run, scale), {})[scale] = metrics
        data_of_scale.setdefault(scale, (cfg, data_split))
        print(f"  evaluated {run} (x{scale})", file=sys.stderr)
    for scale, (cfg, data_split) in data_of_scale.items():  # the reference row, on the same data
        if scale not in results.get("bicubic", {}):
            bicubic = groklst.create_model("bicubic", scale=scale).to(device)
            base = groklst.build_dataset(cfg, data_split, bands=[])
            results.setdefault("bicubic", {})[scale] = engine.evaluate(bicubic, groklst.build_normalizer(cfg), base,
                                                                       device)[0]
    order = sorted(results, key=lambda name: (name not in ("bicubic", "bilinear"), name))  # baselines first
    scales = sorted(data_of_scale)
    lines = ["| method | " + " | ".join(f"x{s} {m}" for s in scales for m in COLUMNS) + " |",
             "|---" * (1 + len(scales) * len(COLUMNS)) + "|"]
    for name in order:
        cells = [f"{results[name][s][m]:.4f}" if s in results[name] else "-" for s in scales for m in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@command
def main(argv=None):
    p = argparse.ArgumentParser(prog="zoo.py", description=__doc__.split("\n")[0])
    p.add_argument("--configs", action="append", default=[], help="glob of config files (repeatable)")
    p.add_argument("--models", default=None, help="comma-separated models: configs/<model>_x<scale>.yaml")
    p.add_argument("--scales", default="2,4,8", help="scales of --models (default 2,4,8)")
    p.add_argument("--root", default="work_dirs/zoo", help="one work dir per run under here")
    p.add_argument("--devices", default=None, help="comma-separated cuda:N (one run per GPU at a time) or cpu")
    p.add_argument("--jobs", type=int, default=1, help="concurrent CPU runs without --devices (default 1)")
    p.add_argument("--out", default=None, help="write the markdown table here (default ROOT/table.md)")
    p.add_argument("--split", default=None, help="split of the table (default: data.test_split)")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: the table of the runs finished so far (every run under --root without "
                        "--configs / --models)")
    p.add_argument("--poll", type=float, default=3.0, help="seconds between progress checks")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, or MODEL:key.sub=value")
    args = p.parse_intermixed_args(argv)
    models = [m for m in (args.models or "").split(",") if m]
    scales = [int(s) for s in args.scales.split(",") if s]
    paths = resolve_configs(args.configs, models, scales)
    if args.table_only and not paths:  # every run under the root, as they are
        table = table_ix(args.root, args.split, args.overrides)
        print(table)
        write_atomic(args.out or os.path.join(args.root, "table.md"), (table + "\n").encode())
        return
    if not paths:
        raise ConfigError("nothing to run: give --configs GLOB and/or --models A,B --scales 2,4,8")
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: expected 1 or more")
    devices = args.devices.split(",") if args.devices else []
    if not devices and torch.cuda.is_available():
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    places = slots(devices, args.jobs)

    t0 = time.time()
    runs = plan(paths, args.root, args.overrides)
    for run in runs:
        if run["state"] == "done":
            say(run, f"done already (last.pth at iteration {run['max_iters']}): skipped")
        elif run["state"] == "failed":
            say(run, f"FAILED: {run['error']}")
        elif run["state"] == "evaluate":
            write_config(run)
            run["state"] = "done"
    todo = sum(r["state"] in ("train", "resume") for r in runs)
    where = "not trained (--table-only)" if args.table_only else f"to train on {', '.join(p[0] for p in places)}"
    print(f"# {len(runs)} runs under {args.root}: {todo} {where}", flush=True)
    if not args.table_only:
        execute(runs, places, args.poll)

    finished = [os.path.basename(r["work_dir"]) for r in runs if r["state"] == "done"]
    failed = [r for r in runs if r["state"] == "failed"]
    if finished:
        device = "cuda" if devices and devices[0].startswith("cuda") else "cpu"
        table = table_ix(args.root, args.split, device=device, runs=finished)
        out = args.out or os.path.join(args.root, "table.md")
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        write_atomic(out, (table + "\n").encode())
        print(table)
        print(f"table written to {out}")
    print(f"# {len(finished)} finished, {len(failed)} failed, {clock(time.time() - t0)} wall", flush=True)
    for run in failed:
        print(f"# failed: {run['name']}: {run['error']}  (log: {os.path.join(run['work_dir'], 'train.out')})")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
