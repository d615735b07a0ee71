"""The model zoo as one resumable queue: train and evaluate many configs, then write the paper's Table IX.

    python zoo.py --configs 'configs/*_x8.yaml' --root work_dirs/zoo --out table.md
    python zoo.py --models mocolsk,srcnn,bicubic --scales 2,4,8 --devices cuda:0,cuda:1
    python zoo.py --models srcnn,mocolsk --scales 8 --jobs 2 train.max_iters=200 data.root=data/demo
    python zoo.py --models srcnn,mocolsk --scales 8 'mocolsk:model.num_feats=16'   # one model only
    python zoo.py --table-only --root work_dirs/zoo [--split test]                  # the table of every run there

Each config is one `python train.py CFG work_dir=ROOT/<config stem> OVERRIDES` subprocess, its
output in ROOT/<run>/train.out. Runs go one per GPU at a time (--devices, via CUDA_VISIBLE_DEVICES)
or --jobs at a time on the CPU (each with OMP_NUM_THREADS = cores / jobs). Run it again to go on:
a run whose checkpoint (last.pth, or best.pth of a run killed before its first last.pth) reached
train.max_iters is skipped, one with an earlier checkpoint is resumed (--resume), any other starts
afresh; but only a run whose stored config equals what the queue runs now (groklst.config_changes:
keys free to change on resume, such as train.max_iters, may differ): a run made with other settings is
reported with the keys that differ and left out of the table, or trained again with --overwrite.
Parameter-free models (bicubic, bilinear) are not trained, only evaluated. Overrides apply to every
run; `MODEL:key=value` only to the runs of that model. A failed run is reported with the last line of
its output and the queue goes on; the exit code is 1 if any run failed. At the end every finished run
is evaluated (table_ix) into --out, with its parameters, GMACs and CPU throughput; a run that cannot be
evaluated is reported under the table, the others are written.

One queue per root: zoo.py holds <root>/.lock while it runs (and each train.py its work dir's).
Its train.py processes run in their own process groups and die with it: SIGINT / SIGTERM (or an
error) stops them (SIGTERM, then SIGKILL after --grace s), and on Linux the kernel kills them when
zoo.py dies however it dies (kill -9 included: PR_SET_PDEATHSIG); elsewhere a train.py that outlived
its zoo.py is found by its work dir's lock and reported with its pid.
"""
import argparse
import ctypes
import glob
import json
import os
import signal
import subprocess
import sys
import time
import traceback

import torch
import yaml

import costs
import engine
import figures
import groklst
import locks
from checkpoints import examples, read_checkpoint
from data import BANDS
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


def checkpoints_of(work_dir):
    """{'last.pth' / 'best.pth': (iteration, stored config or None)} of the work dir's train.py checkpoints
    that can be read (a torn or foreign file is left out)."""
    out = {}
    for name in ("last.pth", "best.pth"):
        path = os.path.join(work_dir, name)
        if not os.path.exists(path):
            continue
        try:
            ckpt = read_checkpoint(path)
            it = ckpt["iter"]
        except (UserError, KeyError, TypeError, IndexError, AttributeError):
            continue
        if isinstance(it, int) and not isinstance(it, bool) and it >= 0:
            out[name] = (it, ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None)
    return out


def stored_config(work_dir, stored):
    """The config a run's checkpoint stored, else its config.yaml (what train.py wrote when it started), or None."""
    if stored is not None:
        return stored
    try:
        with open(os.path.join(work_dir, "config.yaml")) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return cfg if isinstance(cfg, dict) else None


def plan(paths, root, overrides, overwrite=False):
    """One dict per config: name, config path, model, scale, max_iters, work_dir, overrides, state
    (train | resume | done | evaluate | failed) and: start_iter; resume_from (resume: the checkpoint, None
    for last.pth); overwrite (train: delete what the work dir holds first); error (failed).

    A run that holds checkpoints is this queue's only if its stored config equals the one it would run
    now (groklst.config_changes; the keys free to change on resume may differ, max_iters decides done or
    resume); otherwise it fails with the keys that differ, or with `overwrite` it is trained again. A run
    killed before its first last.pth goes on from its best.pth. A work dir whose lock another process
    holds (a train.py left running by an earlier zoo.py) fails with that pid."""
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
        run.update(model=model, scale=cfg["data"]["scale"], max_iters=cfg["train"]["max_iters"], cfg=cfg, start_iter=0)
        wd = run["work_dir"]
        if groklst.count_parameters(model, cfg["data"]["scale"]) == 0:
            runs.append(dict(run, state="evaluate"))
            continue
        pid = locks.holder(wd)
        if pid is not None:
            who = f"pid {pid}" if pid else "a process"
            runs.append(dict(run, state="failed", error=f"{wd} is in use by {who} (a train.py of an earlier zoo.py, "
                                                       f"or one started by hand): wait for it or stop it"
                                                       f"{f' (kill {pid})' if pid else ''}, then run the queue again"))
            continue
        found = checkpoints_of(wd)
        if not found:  # nothing to go on from; files a killed or foreign run left are deleted by train.py --overwrite
            leftovers = [f for f in ("last.pth", "best.pth") if os.path.exists(os.path.join(wd, f))]
            runs.append(dict(run, state="train", overwrite=bool(leftovers)))
            continue
        it, newest = max((it, name) for name, (it, _) in found.items())
        stored = stored_config(wd, found[newest][1])
        changed = ["no stored config"] if stored is None else groklst.config_changes(stored, cfg)
        if changed and overwrite:
            runs.append(dict(run, state="train", overwrite=True))
        elif changed:
            runs.append(dict(run, state="failed", error=f"{wd} holds a run made with other settings ({examples(changed, 4)}): "
                                                        f"not this queue's run; use another --root, or --overwrite to "
                                                        f"train it again"))
        else:
            run.update(start_iter=it, resume_from=None if newest == "last.pth" else os.path.join(wd, newest))
            runs.append(dict(run, state="done" if it >= run["max_iters"] else "resume"))
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


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal the kernel sends a process when its parent dies


def die_with(parent):
    """preexec_fn of a run: on Linux it gets SIGKILL when zoo.py (`parent`) dies, however it dies; a run
    whose parent is already gone exits at once."""
    def arm():
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
    return arm


def start(run, env_extra):
    """Launch train.py for a run in its own process group (stop_runs signals the group: its data loader
    workers too); returns the Popen (output to <work_dir>/train.out)."""
    wd = run["work_dir"]
    os.makedirs(wd, exist_ok=True)
    args = [sys.executable, os.path.join(HERE, "train.py"), run["config"], *run["overrides"]]
    if run["state"] == "resume":
        args += ["--resume"] + ([run["resume_from"]] if run.get("resume_from") else [])
    elif run.get("overwrite"):
        args.append("--overwrite")
    elif os.path.exists(os.path.join(wd, "log.jsonl")):  # a fresh start: the old log would mislead progress
        os.remove(os.path.join(wd, "log.jsonl"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # never a DDP rank of ours
        env.pop(key, None)
    out = open(os.path.join(wd, "train.out"), "a")
    out.write(f"$ {' '.join(args)}\n")
    out.flush()
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=HERE, start_new_session=True,
                            preexec_fn=die_with(os.getpid()))
    out.close()
    return proc


def signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass


def stop_runs(procs, grace_s):
    """Stop running train.py processes and what they started (their process groups): SIGTERM, then SIGKILL
    after grace_s seconds. A run's last.pth stays: the next queue resumes from it."""
    for proc in procs:
        signal_group(proc, signal.SIGTERM)
    deadline = time.time() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        signal_group(proc, signal.SIGKILL)  # also loader workers a terminated train.py left behind
        proc.wait()


class Stopped(Exception):
    """zoo.py received SIGINT or SIGTERM."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_stopped(signum, frame):
    raise Stopped(signum)


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


def execute(runs, places, poll_s=3.0, grace_s=10.0):
    """Train every run in state train/resume, at most one per place at a time; print a line per
    run when it starts, advances (iteration, it/s, ETA), finishes or fails. Sets state done/failed.
    Whatever ends it early (Stopped, an error) first stops the running ones (stop_runs): state stopped."""
    queue = [r for r in runs if r["state"] in ("train", "resume")]
    free, active = list(places), {}  # active: place label -> (run, process, started)
    try:
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
    except BaseException:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        stop_runs([proc for _, proc, _ in active.values()], grace_s)
        for run, _, _ in active.values():
            run["state"] = "stopped"
            say(run, f"stopped (it resumes from its last.pth when the queue runs again; log: "
                     f"{os.path.join(run['work_dir'], 'train.out')})")
        raise


# --------------------------------------------------------------------------- Table IX


def run_label(run, scale):
    """A run's row label: its folder name without the `_x<scale>` suffix (srcnn_x8 -> srcnn), so the runs of
    one method at several scales share a row."""
    suffix = f"_x{scale}"
    return run[:-len(suffix)] if run.endswith(suffix) and len(run) > len(suffix) else run


def weights_of(run_dir, cfg):
    """The checkpoint a run's row uses, as train.py's own final test: best.pth when the run validated,
    else last.pth (data.val_split=null, or validation never improved); None when it has neither."""
    for name in ("best.pth",) * (cfg["data"]["val_split"] is not None) + ("last.pth",):
        if os.path.exists(os.path.join(run_dir, name)):
            return os.path.join(run_dir, name)
    return None


COSTS = ("params", f"GMACs/{costs.COST_HR}²", "CPU Mpx/s")  # the columns after the metrics of each scale


def run_costs(cfg, model, measured):
    """{COSTS column: value or None} of a run: parameters of its model, GMACs per COST_HR² output (counted),
    and the CPU throughput measured for that model (costs.read_throughput rows), which holds only for
    default model arguments, the ten GrokLST bands and the scale it was measured at."""
    try:
        gmacs = costs.count_macs(lambda: groklst.build_model(cfg), cfg["data"]["scale"], len(groklst.guidance_bands(cfg)))
    except (NotImplementedError, RuntimeError):  # sharpeners fit per image: nothing to count on the meta device
        gmacs = None
    row = measured.get(cfg["model"]["name"])
    same = (row is not None and "mpx_per_s" in row and row["scale"] == cfg["data"]["scale"] and set(cfg["model"]) == {"name"}
            and groklst.guidance_bands(cfg) in ([], list(BANDS)))
    return {COSTS[0]: groklst.num_parameters(model), COSTS[1]: gmacs, COSTS[2]: row["mpx_per_s"] if same else None}


def cell(column, value):
    if value is None:
        return "-"
    if column == COSTS[0]:
        return f"{value:,}"
    return f"{value:.3g}" if column in COSTS else f"{value:.4f}"


def evaluate_run(work_root, run, split, overrides, device, measured):
    """(label, scale, {metric or COSTS column: value}, weights used) of one run folder."""
    cfg = groklst.load_config(os.path.join(work_root, run, "config.yaml"), overrides)
    scale, data_split = cfg["data"]["scale"], split or cfg["data"]["test_split"]
    weights = weights_of(os.path.join(work_root, run), cfg)
    model = groklst.load_model(cfg, weights, device)
    metrics = engine.evaluate(model, groklst.build_normalizer(cfg), groklst.build_dataset(cfg, data_split), device,
                              consistency=cfg["consistency"])[0]
    return run_label(run, scale), cfg, dict(metrics, **run_costs(cfg, model, measured)), weights and os.path.basename(weights)


def table_ix(work_root, split=None, overrides=(), device="cpu", runs=None, throughput=costs.THROUGHPUT_JSON,
             failed=None):
    """Table IX of the paper (markdown) for the runs under work_root: trained ones (<run>/config.yaml and
    best.pth, or last.pth where the run has no best.pth: the label then says `(last.pth)`) and
    parameter-free ones (<run>/config.yaml of bicubic or bilinear, no checkpoint), plus bicubic per scale
    where no run has it. runs: folder names (default: every such run). Rows = methods (run_label);
    per scale, columns = metrics.COLUMNS on `split` (default data.test_split), then COSTS (CPU Mpx/s from
    the `throughput` JSON of speed.py --throughput). A run that cannot be evaluated is left out with its
    reason in a line under the table (and appended to `failed`, a list, when given)."""
    if not os.path.isdir(work_root):
        raise DataError(f"{work_root}: folder not found")
    measured, machine = costs.read_throughput(throughput) if throughput else ({}, {})

    def ready(run):
        cfg = groklst.load_config(os.path.join(work_root, run, "config.yaml"), overrides)
        return weights_of(os.path.join(work_root, run), cfg) or groklst.count_parameters(cfg["model"]["name"],
                                                                                         cfg["data"]["scale"]) == 0

    notes = []
    if runs is None:
        runs = []
        for d in sorted(os.listdir(work_root)):
            if os.path.exists(os.path.join(work_root, d, "config.yaml")):
                try:
                    runs += [d] * bool(ready(d))
                except UserError as e:
                    notes.append((d, str(e)))
    if not runs and not notes:
        raise DataError(f"{work_root}: no <run>/best.pth or last.pth (or <run>/config.yaml of a parameter-free "
                        f"model) found")
    results, used, data_of_scale = {}, {}, {}
    for run in runs:
        try:
            label, cfg, values, weights = evaluate_run(work_root, run, split, overrides, device, measured)
        except Exception as e:  # one row must not cost the table of hours of training
            if not isinstance(e, UserError):
                traceback.print_exc()
            notes.append((run, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"))
            print(f"  NOT evaluated: {run}: {notes[-1][1]}", file=sys.stderr)
            continue
        scale = cfg["data"]["scale"]
        results.setdefault(label, {})[scale] = values
        used.setdefault(label, {})[scale] = weights
        data_of_scale.setdefault(scale, (cfg, split or cfg["data"]["test_split"]))
        print(f"  evaluated {run} (x{scale}{', ' + weights if weights else ''})", file=sys.stderr)
    for scale, (cfg, data_split) in data_of_scale.items():  # the reference row, on the same data
        if scale not in results.get("bicubic", {}):
            ref = dict(cfg, model={"name": "bicubic"})
            bicubic = groklst.build_model(ref).to(device)
            base = groklst.build_dataset(cfg, data_split, bands=[])
            results.setdefault("bicubic", {})[scale] = dict(
                engine.evaluate(bicubic, groklst.build_normalizer(ref), base, device)[0], **run_costs(ref, bicubic, measured))
    order = sorted(results, key=lambda name: (name not in ("bicubic", "bilinear"), name))  # baselines first
    scales = sorted(data_of_scale)
    columns = COLUMNS + COSTS
    lines = ["| method | " + " | ".join(f"x{s} {m}" for s in scales for m in columns) + " |",
             "|---" * (1 + len(scales) * len(columns)) + "|"]
    for name in order:
        last = [s for s, w in used.get(name, {}).items() if w == "last.pth"]
        label = name + (f" (last.pth{'' if len(last) == len(used[name]) else ' at ' + ', '.join(f'x{s}' for s in last)})"
                        if last else "")
        cells = [cell(m, results[name][s][m]) if s in results[name] else "-" for s in scales for m in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if measured:
        lines.append(f"\nCPU Mpx/s: output megapixels per second under predict.py --amp auto on "
                     f"{machine.get('cpu', '?')} ({machine.get('threads', '?')} threads), from "
                     f"{os.path.relpath(throughput, HERE) if throughput.startswith(HERE) else throughput}; "
                     f"'-' where a run's model arguments, bands or scale are not the ones measured.")
    if notes:
        lines.append("")
        lines += [f"- {run}: not evaluated ({reason})" for run, reason in notes]
    if failed is not None:
        failed += notes
    return "\n".join(lines)


def read_table(path):
    """The first Table IX (a markdown table whose header starts `| method | x<scale> RMSE`) in a file, such as
    table_ix writes or docs/zoo.md shows -> {row label: {column: float, or None for '-'}}."""
    rows, header = {}, None
    try:
        with open(path) as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise DataError(f"{path}: cannot read the table ({e.strerror or e})") from None
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else None
        if header is None:
            if cells and cells[0] == "method" and len(cells) > 1 and cells[1].endswith(" RMSE"):
                header = cells
        elif cells is None:
            break
        elif not set(cells[0]) <= set("-"):
            rows[cells[0]] = {h: (None if c == "-" else float(c.replace(",", ""))) for h, c in zip(header[1:], cells[1:])}
    if not rows:
        raise DataError(f"{path}: no table of zoo.py (a header `| method | x8 RMSE | ...`) found")
    return rows


def tradeoff_points(rows, scale, measured):
    """(points, bicubic's RMSE) for figures.accuracy_vs_throughput from a table's rows at `scale`: (label,
    Mpx/s, RMSE, kind) of each method with both numbers; Mpx/s from the table's `CPU Mpx/s` column, else
    from `measured` (costs.read_throughput rows) when that model was measured at this scale."""
    points, reference = [], None
    for label, row in rows.items():
        name, rmse = label.split(" (")[0], row.get(f"x{scale} RMSE")
        if rmse is None or name not in groklst.MODELS:
            continue
        speed = row.get(f"x{scale} CPU Mpx/s")
        if speed is None and name in measured and measured[name]["scale"] == scale:
            speed = measured[name].get("mpx_per_s")
        free = groklst.count_parameters(name, scale) == 0
        if name == "bicubic":
            reference = rmse
        if speed is not None:
            points.append((label, speed, rmse, "baseline" if free else groklst.MODELS[name].kind))
    return points, reference


def draw_tradeoff(table_path, out, throughput=costs.THROUGHPUT_JSON, scale=None):
    """figures.accuracy_vs_throughput of a table file at `scale` (default its largest)."""
    rows = read_table(table_path)
    scales = sorted({int(c.split()[0][1:]) for row in rows.values() for c in row if c.endswith(" RMSE")})
    scale = scale or scales[-1]
    measured, machine = costs.read_throughput(throughput) if throughput else ({}, {})
    points, reference = tradeoff_points(rows, scale, measured)
    figures.accuracy_vs_throughput(out, points, None if reference is None else ("bicubic", reference),
                                   f"x{scale}: test RMSE ({os.path.basename(table_path)}) against CPU throughput "
                                   f"({machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, --amp auto)")
    return points


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
    p.add_argument("--overwrite", action="store_true",
                   help="train again (deleting their checkpoints) the runs under --root made with other settings")
    p.add_argument("--figure", default=None, metavar="PNG", help="also draw test RMSE against CPU throughput "
                   "(the table's largest scale) into PNG")
    p.add_argument("--from-table", default=None, metavar="FILE",
                   help="with --figure: draw from this table (zoo.py's, or the first in a markdown file) and run nothing")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds a run gets to end after SIGTERM when zoo.py is stopped, before SIGKILL (default 10)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, or MODEL:key.sub=value")
    args = p.parse_intermixed_args(argv)
    models = [m for m in (args.models or "").split(",") if m]
    scales = [int(s) for s in args.scales.split(",") if s]
    paths = resolve_configs(args.configs, models, scales)
    if args.from_table:
        if not args.figure:
            raise ConfigError("--from-table draws a table's --figure PNG: give --figure")
        points = draw_tradeoff(args.from_table, args.figure)
        print(f"wrote {args.figure} ({len(points)} methods)")
        return
    if args.table_only and not paths:  # every run under the root, as they are
        unevaluated = []
        table = table_ix(args.root, args.split, args.overrides, failed=unevaluated)
        print(table)
        write_atomic(args.out or os.path.join(args.root, "table.md"), (table + "\n").encode())
        if args.figure:
            draw_tradeoff(args.out or os.path.join(args.root, "table.md"), args.figure)
        if unevaluated:
            sys.exit(1)
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
    locks.hold(args.root, "zoo.py", elsewhere="choose another --root")  # one queue per root, until zoo.py ends
    runs = plan(paths, args.root, args.overrides, args.overwrite)
    for run in runs:
        if run["state"] == "done":
            which = os.path.basename(run["resume_from"]) if run.get("resume_from") else "last.pth"
            say(run, f"done already ({which} at iteration {run['start_iter']} of {run['max_iters']}): skipped")
        elif run["state"] == "failed":
            say(run, f"FAILED: {run['error']}")
        elif run["state"] == "evaluate":
            write_config(run)
            run["state"] = "done"
    todo = sum(r["state"] in ("train", "resume") for r in runs)
    where = "not trained (--table-only)" if args.table_only else f"to train on {', '.join(p[0] for p in places)}"
    print(f"# {len(runs)} runs under {args.root}: {todo} {where}", flush=True)
    if not args.table_only:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, raise_stopped)
        try:
            execute(runs, places, args.poll, args.grace)
        except Stopped as e:
            stopped = [r["name"] for r in runs if r["state"] == "stopped"]
            print(f"zoo.py: stopped by {e}; {len(stopped)} running run(s) stopped ({', '.join(stopped) or 'none'}): "
                  f"run the same command again to resume", file=sys.stderr)
            sys.exit(128 + e.signum)  # the shell's code of a process ended by that signal
        finally:  # no run left to stop: the signals' usual meaning again
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    finished = [os.path.basename(r["work_dir"]) for r in runs if r["state"] == "done"]
    failed = [r for r in runs if r["state"] == "failed"]
    unevaluated = []
    if finished:
        device = "cuda" if devices and devices[0].startswith("cuda") else "cpu"
        table = table_ix(args.root, args.split, device=device, runs=finished, failed=unevaluated)
        out = args.out or os.path.join(args.root, "table.md")
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        write_atomic(out, (table + "\n").encode())
        print(table)
        print(f"table written to {out}")
        if args.figure:
            draw_tradeoff(out, args.figure)
            print(f"figure written to {args.figure}")
    print(f"# {len(finished) - len(unevaluated)} finished, {len(failed)} failed, {len(unevaluated)} not evaluated, "
          f"{clock(time.time() - t0)} wall", flush=True)
    for run in failed:
        print(f"# failed: {run['name']}: {run['error']}  (log: {os.path.join(run['work_dir'], 'train.out')})")
    for name, reason in unevaluated:
        print(f"# not evaluated: {name}: {reason}")
    if failed or unevaluated:
        sys.exit(1)


if __name__ == "__main__":
    main()
