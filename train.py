"""Train a model on a GrokLST-layout dataset; iteration-based, resumable, torchrun-ready.

    python train.py configs/mocolsk_x8.yaml [key.sub=value ...] [--resume [PATH]] [--init PATH] [--overwrite]
    torchrun --standalone --nproc_per_node=4 train.py configs/mocolsk_x8.yaml
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=4 train.py CFG   # multi-node

The work dir (work_dirs/<config name>/, or `work_dir`) receives config.yaml (resolved), log.jsonl
(loss, lr, throughput, data wait, skipped batches, validation metrics), last.pth (every ckpt_interval
iterations and at the end), best.pth (lowest validation RMSE, or CONS on a split without fine truth; none
with data.val_split=null) and, at the end, the test-split table of the weights used (best.pth, else
last.pth) next to bicubic's; with train.tensorboard=true also TensorBoard events. One run at a time per work dir: the run holds an
exclusive lock on <work_dir>/.lock (rank 0 under torchrun) for its whole life, and a second one (also a
--resume) stops with the pid of the first; the kernel drops the lock when the holder ends, even by
kill -9. A work dir that already holds a run is refused unless --resume (continue it) or --overwrite
(delete it first) is given. Checkpoints hold only tensors and plain types (torch.load(weights_only=True)),
keys without `module.` / `_orig_mod.`, and are written atomically (temp file, fsync, rename); weights
holding NaN are never written (the run stops with exit code 1). --resume restores model, optimizer,
grad scaler and the iteration, and refuses a config that changes the trajectory or a file of other
contents than train.py writes. Every random number is a pure function of (seed, rank, iteration): the
learning rate, the sample order, the crops and the model's own draws (drop path, dropout), so an
interrupted run (even kill -9) resumes to bit-identical weights on CPU.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

import engine
import groklst
import locks
from checkpoints import checkpoint_weights, clean_state_dict, fit_state_dict, load_weights, read_checkpoint, write_checkpoint
from errors import ConfigError, DataError, TrainingError, UserError, command
from geotiff import write_atomic
from metrics import COLUMNS, CONS, format_table

RUN_FILES = ("last.pth", "best.pth", "log.jsonl")  # what a work dir holds of a run that --overwrite deletes


# --------------------------------------------------------------------------- pure functions of the iteration


def learning_rate(it, lr, warmup_iters, restart_period, eta_min):
    """Linear warm-up, then cosine annealing with warm restarts every restart_period iterations
    (torch's CosineAnnealingWarmRestarts(T_0=period, eta_min) stepped per iteration)."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    phase = (it % restart_period) / restart_period
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * phase)) / 2


def stream_seed(*parts):
    """A 31-bit seed that is a pure function of integers (Python hashes int tuples alike in every process)."""
    return hash(tuple(int(p) for p in parts)) & 0x7FFFFFFF


def batches(dataset, batch_size, seed, rank, world, start_micro, num_workers=0):
    """Training batches forever, starting at micro-batch `start_micro` (a pure function of the
    iteration). Each epoch: a permutation seeded by (seed, epoch), padded to equal shards,
    rank r takes every world-th sample (as DistributedSampler), full batches only."""
    per_rank = math.ceil(len(dataset) / world)
    per_epoch = per_rank // batch_size
    if per_epoch == 0:
        raise DataError(f"training split has {len(dataset)} samples: fewer than batch_size x processes")
    epoch, pos = divmod(start_micro, per_epoch)
    while True:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
        order = torch.cat([order, order[:per_rank * world - len(order)]])[rank::world]
        dataset.set_epoch(epoch)
        subset = torch.utils.data.Subset(dataset, order[pos * batch_size:per_epoch * batch_size].tolist())
        # The loader's own generator: without one it draws its workers' base seed from the global RNG,
        # at a different moment in a run resumed mid-epoch.
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers, drop_last=True,
                                             pin_memory=torch.cuda.is_available(),
                                             generator=torch.Generator().manual_seed(stream_seed(seed, rank, epoch)))
        yield from loader
        epoch, pos = epoch + 1, 0


# --------------------------------------------------------------------------- work dir, checkpoints, resume


def lock_work_dir(work_dir, rank):
    """Make this run the work dir's one writer (locks.hold on rank 0, for the life of the process), before
    anything in it is looked at. Every rank gets rank 0's outcome, so no rank starts alone: a ConfigError
    naming the work dir and the pid of the run that holds it."""
    problem = None
    if rank == 0:
        try:
            locks.hold(work_dir, "train.py", elsewhere="choose another work_dir=...")
        except UserError as e:
            problem = str(e)
        except OSError as e:  # a work dir that cannot be created or opened
            problem = f"{work_dir}: cannot lock the work dir ({e.strerror or e})"
    problem = engine.gather(problem)[0]
    if problem:
        raise ConfigError(problem)


def check_work_dir(work_dir, args):
    """Refuse to mix two runs in one work dir -> the old run's files that --overwrite is to delete."""
    overwrite = getattr(args, "overwrite", False)
    if args.resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run or delete it")
    last = os.path.join(work_dir, "last.pth")
    if args.resume in ("auto", last) and not os.path.exists(last):
        best = os.path.join(work_dir, "best.pth")  # a run killed after its first validation, before its first last.pth
        hint = f"; go on from its best.pth with --resume {best}" if os.path.exists(best) else ""
        raise ConfigError(f"--resume: {last} does not exist (nothing to resume){hint}")
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(work_dir, f))]
    if found and not args.resume and not overwrite:
        raise ConfigError(f"{work_dir} already holds a run ({', '.join(found)}): continue it with --resume, choose "
                          f"another work_dir=..., or delete it and start over with --overwrite")
    return [] if args.resume else found


def prepare_work_dir(work_dir, old_files, main_process):
    """Create the work dir, delete the files of the run that --overwrite replaces, and the temp files of
    saves that an earlier crash cut short. Called once the data are checked: a failing start deletes nothing."""
    if not main_process:
        return
    os.makedirs(work_dir, exist_ok=True)
    for f in old_files + ["test_table.md"] * bool(old_files):
        if os.path.exists(os.path.join(work_dir, f)):
            os.remove(os.path.join(work_dir, f))
    if old_files:
        print(f"--overwrite: deleted {', '.join(old_files)} of the previous run in {work_dir}")
    for f in os.listdir(work_dir):
        if any(f.startswith(name + ".tmp") for name in RUN_FILES):
            os.remove(os.path.join(work_dir, f))


def check_same_config(stored, cfg, path):
    """A resumed run must follow the trajectory it started: ConfigError listing every changed key
    (the keys groklst.SCHEMA marks free to change on resume only affect what is logged, saved or how fast
    data arrives)."""
    changed = groklst.config_changes(stored, cfg) if stored is not None else []
    if changed:
        raise ConfigError(f"--resume: the config differs from the one {path} was trained with ({', '.join(changed)}); "
                          f"resume with the same config, or start a new run (another work_dir, or --overwrite)")


def _whole(v, low=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


# what train.py stores, as resume needs it: key -> (test, what it must be)
RESUME_KEYS = {
    "model": (lambda v: isinstance(v, dict), "a dict of tensors"),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list), "an optimizer state dict"),
    "scaler": (lambda v: isinstance(v, dict), "a dict"),
    "iter": (_whole, "an integer >= 0"),
    "best_rmse": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
    "config": (lambda v: v is None or isinstance(v, dict), "a config mapping"),
    "world": (lambda v: _whole(v, 1), "an integer >= 1"),
}


def check_resume_state(ckpt, path):
    """DataError naming `path` unless `ckpt` holds what train.py stores, of the types it stores."""
    if not isinstance(ckpt, dict):
        raise DataError(f"{path}: holds a {type(ckpt).__name__}, not a train.py checkpoint to resume")
    missing = [k for k in ("model", "optimizer", "scaler", "iter", "best_rmse") if k not in ckpt]
    if missing:
        raise DataError(f"{path}: not a train.py checkpoint to resume (no {', '.join(missing)}); to start from its "
                        f"weights use --init {path}")
    bad = [f"{k}={ckpt[k]!r:.40} is not {what}" for k, (ok, what) in RESUME_KEYS.items() if k in ckpt and not ok(ckpt[k])]
    if bad:
        raise DataError(f"{path}: not a train.py checkpoint to resume ({'; '.join(bad)}); resume from a checkpoint "
                        f"train.py wrote, or start afresh (--overwrite)")


def load_optimizer_state(optimizer, scaler, ckpt, path):
    """The optimizer's and scaler's states of a checked checkpoint; DataError naming `path` when they do
    not belong to this model (parameter groups, moment shapes)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = ckpt["optimizer"]["state"]
    odd = [i for i, s in state.items() if not (_whole(i) and i < len(params) and isinstance(s, dict)) or any(
           torch.is_tensor(v) and v.ndim and v.shape != params[i].shape for v in s.values())]
    try:
        if odd:
            raise ValueError(f"state of parameter(s) {', '.join(map(str, odd[:3]))} does not fit")
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"{path}: its optimizer state does not fit this model ({reason}); to start from its "
                        f"weights use --init {path}") from None


def resume_from(path, cfg, model, optimizer, scaler, world):
    """Restore a checkpoint of train.py -> (iteration, best validation RMSE). Anything of another type or
    shape than train.py stores is a DataError naming `path` (one line)."""
    ckpt = read_checkpoint(path)
    check_resume_state(ckpt, path)
    check_same_config(ckpt.get("config"), cfg, path)
    model.load_state_dict(fit_state_dict(model, checkpoint_weights(ckpt, path), path, name=cfg["model"]["name"]))
    load_optimizer_state(optimizer, scaler, ckpt, path)
    if ckpt.get("world", world) != world:
        print(f"warning: {path} was written by {ckpt['world']} processes, now {world}: the shards and random "
              "streams differ from the original run's", file=sys.stderr)
    return ckpt["iter"], float(ckpt["best_rmse"])


def truncate_log(path, last_iter):
    """Drop log.jsonl records past the resumed iteration: the resumed run writes them again."""
    if not os.path.exists(path):
        return
    def kept(line):
        try:
            return json.loads(line).get("iter", 0) <= last_iter
        except json.JSONDecodeError:  # the half-written last line of a killed run
            return False
    with open(path) as f:
        lines = [line for line in f if line.strip() and kept(line)]
    write_atomic(path, "".join(lines).encode())


def require_tensorboard():
    """torch's SummaryWriter class; checked on every rank before anything is written, so all fail alike."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard needs tensorboard: pip install tensorboard") from None
    return SummaryWriter


def log_record(work_dir, writer, record, line):
    """The line on stdout, the record in log.jsonl and, with a SummaryWriter, its numbers in TensorBoard."""
    print(line, flush=True)
    with open(os.path.join(work_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        group = "val" if "split" in record else "train"
        for k, v in record.items():
            if k not in ("iter", "split") and isinstance(v, (int, float)):
                writer.add_scalar(f"{group}/{k}", v, record["iter"])
        writer.flush()


# --------------------------------------------------------------------------- one iteration, one log line, validation


def train_step(model, optimizer, scaler, normalizer, stream, it, tcfg, rank, world, device):
    """One optimizer step over tcfg['grad_accum'] micro-batches -> {'lr', 'loss' (sum over the micro-batches
    with valid pixels, in 'loss_units': K for the pixel losses, the model's units for a model with its own
    objective), 'batches' (those), 'skipped' (micro-batches without a valid pixel), 'grad_norm', 'data_wait' (s)}.
    No step is taken when no process had a valid pixel."""
    lr = learning_rate(it, tcfg["lr"], tcfg["warmup_iters"], tcfg["restart_period"], tcfg["eta_min"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    own = engine.has_objective(model)  # a model that brings its own objective (groklst.py): its training_loss
    consistency = tcfg["objective"] == "consistency"  # no fine truth: footprint means against the LR input
    out = {"lr": lr, "loss": 0.0, "batches": 0, "skipped": 0, "grad_norm": 0.0, "data_wait": 0.0,
           "loss_units": engine.loss_units(model, tcfg["loss"], tcfg["objective"], tcfg["texture_weight"])}
    for micro in range(tcfg["grad_accum"]):
        t0 = time.time()
        batch = next(stream)
        out["data_wait"] += time.time() - t0
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        # Drop path and dropout draw from the global RNG; reseeding it from (seed, rank, iteration) makes
        # those draws a function of the iteration, so a resumed run repeats them without stored RNG states.
        torch.manual_seed(stream_seed(tcfg["seed"], rank, it, micro))
        # DDP all-reduces gradients in backward; with accumulation only the last micro-batch needs to
        sync = micro == tcfg["grad_accum"] - 1 or world == 1
        with contextlib.nullcontext() if sync else model.no_sync():
            if own:  # through the model's forward (DDP), in normalised units; 0 with a graph without a valid pixel
                pred = loss = engine.model_loss(model, normalizer, batch["lr_lst"], batch.get("hr_guidance"),
                                                batch["hr_lst"], batch["mask"], tcfg["amp"])
            else:
                pred = engine.downscale(model, normalizer, batch["lr_lst"], batch.get("hr_guidance"), tcfg["amp"])
            if consistency:  # None without a valid coarse pixel
                loss = engine.consistency_objective(pred, batch["lr_lst"], batch.get("hr_guidance"), normalizer,
                                                    tcfg["loss"], tcfg["texture_weight"])
            if loss is not None if consistency else batch["mask"].any():
                if not own and not consistency:  # in Kelvin and float32 whatever the autocast dtype: bf16 has 2 K steps at 300 K
                    loss = engine.pixel_loss(pred, batch["hr_lst"], batch["mask"], tcfg["loss"])
                if not torch.isfinite(loss):  # stop before a NaN reaches the weights (and a checkpoint)
                    raise TrainingError(f"loss is {loss.item()} at iteration {it + 1}, samples {batch['name']}: "
                                        f"lower train.lr or set train.clip_grad")
                out["loss"] += loss.item()
                out["batches"] += 1
            else:  # crops inside clouds, no target pixel: a zero loss keeps DDP's all-reduce in step with the other ranks
                loss = pred.sum() * 0.0
                out["skipped"] += 1
            # the mean over micro-batches, so accumulation gives the gradient of one batch grad_accum times larger;
            # the scaler multiplies the loss for fp16 (its gradients would underflow) and is a no-op otherwise
            scaler.scale(loss / tcfg["grad_accum"]).backward()
    # every rank must take the same decision to step, or DDP's next all-reduce would hang
    valid = torch.tensor(out["batches"], device=device)
    if world > 1:
        torch.distributed.all_reduce(valid)
    if valid.item() == 0:
        optimizer.zero_grad(set_to_none=True)
        return out
    scaler.unscale_(optimizer)  # true gradients: the norm is logged (its largest value per log interval), and clipped if asked
    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["clip_grad"] or float("inf")).item()
    scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return out


def interval_record(acc, done, tcfg, world, device):
    """The log record and line of the iterations since the last one; acc sums train_step's results
    over them (plus 'iters', 'start' time). Every rank takes part (the loss is averaged over ranks)."""
    loss, n, skipped = (sum(x) for x in zip(*engine.gather((acc["loss"], acc["batches"], acc["skipped"]))))
    loss_avg = loss / n if n else None
    elapsed = time.time() - acc["start"]
    speed = acc["iters"] / elapsed
    eta = (tcfg["max_iters"] - done) / speed
    mem = engine.peak_memory_mb(device)
    record = {"iter": done, "loss": loss_avg, "loss_units": acc["loss_units"], "lr": acc["lr"],
              "grad_norm_max": acc["grad_norm_max"], "it_per_s": speed, "data_wait": acc["data_wait"] / elapsed,
              "skipped_batches": skipped, "peak_mem_mb": mem}
    line = (f"iter {done}/{tcfg['max_iters']} | loss {'-' if loss_avg is None else f'{loss_avg:.4f}'} {acc['loss_units']} "
            f"| lr {acc['lr']:.2e} "
            f"| grad norm <= {acc['grad_norm_max']:.3g} | {speed:.2f} it/s (data {100 * acc['data_wait'] / elapsed:.0f}%) "
            f"| eta {time.strftime('%H:%M:%S', time.gmtime(eta))} | peak mem {mem:.0f} MB"
            + (f" | skipped {skipped} batches without valid pixels" if skipped else ""))
    return record, line


def new_interval():
    return {"loss": 0.0, "batches": 0, "skipped": 0, "grad_norm_max": 0.0, "data_wait": 0.0, "iters": 0,
            "lr": 0.0, "start": time.time()}


def add_step(acc, step):
    for k in ("loss", "batches", "skipped", "data_wait"):
        acc[k] += step[k]
    acc["grad_norm_max"] = max(acc["grad_norm_max"], step["grad_norm"])
    acc["iters"] += 1
    acc["lr"], acc["loss_units"] = step["lr"], step["loss_units"]


def selection_metric(dataset):
    """What best.pth is chosen on: RMSE against the fine truth, or CONS on a split without one."""
    return "RMSE" if dataset.has_truth else CONS


def validate(model, normalizer, val_set, split, device, amp, consistency, done, best_rmse):
    """Validation metrics -> (record, line, improved). Runs on every rank: engine.evaluate shards the images
    over the ranks and gathers their metrics, so every rank gets the same numbers (and the same decision to
    save best.pth). The config's `consistency` applies, as in test.py: best.pth is chosen on what is reported
    (selection_metric; `best_rmse` holds its best value)."""
    means, _ = engine.evaluate(model, normalizer, val_set, device, amp, consistency)
    improved = means[selection_metric(val_set)] < best_rmse  # NaN (no valid pixel in the split) never improves
    line = (f"val ({split}) iter {done}: " + " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "images")
            + (" *best*" if improved else ""))
    return {"iter": done, "split": split, **means}, line, improved


# --------------------------------------------------------------------------- the run


def build_datasets(cfg):
    """Training and validation sets (None: data.val_split is null, no validation), after checking every
    file the splits list (train, val, test) from its header: a bad file fails the run now, not hours in."""
    dcfg = cfg["data"]
    train_set = groklst.build_dataset(cfg, dcfg["train_split"], train=True)
    val_set = None if dcfg["val_split"] is None else groklst.build_dataset(cfg, dcfg["val_split"])
    if val_set is not None and len(val_set) == 0:
        split_file = os.path.join(dcfg["root"], "split", f"{dcfg['val_split']}.txt")
        raise DataError(f"{split_file}: the validation split lists no samples; best.pth is chosen on it. List "
                        f"samples there, or train without validation with data.val_split=null (last.pth is then used)")
    test_set = groklst.build_dataset(cfg, dcfg["test_split"])
    for dataset in (train_set, val_set, test_set):
        if dataset is not None:
            dataset.check_files()
    return train_set, val_set


def seed_everything(seed, rank):
    """The same initial weights on every rank (torch seeded alike); Python's and numpy's streams differ per
    rank. Later torch draws are reseeded per iteration (train_step)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)


def train(cfg, args, rank, world, device):
    """Build -> resume (or init) -> loop -> save. Returns (normalizer, model) with the last weights."""
    tcfg, dcfg, work_dir = cfg["train"], cfg["data"], cfg["work_dir"]
    main_process = rank == 0
    summary_writer = require_tensorboard() if tcfg["tensorboard"] else None
    lock_work_dir(work_dir, rank)
    old_files = check_work_dir(work_dir, args)

    # build
    seed_everything(tcfg["seed"], rank)
    if tcfg["deterministic"]:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    train_set, val_set = build_datasets(cfg)
    prepare_work_dir(work_dir, old_files, main_process)
    writer = summary_writer(work_dir) if summary_writer and main_process else None
    log = functools.partial(log_record, work_dir, writer) if main_process else lambda record, line: None
    normalizer = groklst.build_normalizer(cfg)
    model = raw_model = groklst.build_model(cfg).to(device)
    n_params = groklst.num_parameters(model)
    if n_params == 0:
        raise ConfigError(f"model {cfg['model']['name']!r} has no parameters to train; use test.py")
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], betas=tuple(tcfg["betas"]),
                                  weight_decay=tcfg["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg["amp"] == "fp16")

    # resume: the iteration alone fixes the learning rate, the sample order, the crops and the model's draws
    start_iter, best_rmse = 0, math.inf
    resume = os.path.join(work_dir, "last.pth") if args.resume == "auto" else args.resume
    if resume:
        start_iter, best_rmse = resume_from(resume, cfg, raw_model, optimizer, scaler, world)
        if main_process:
            truncate_log(os.path.join(work_dir, "log.jsonl"), start_iter)
            print(f"resumed from {resume} at iteration {start_iter}")
    elif args.init:
        load_weights(raw_model, args.init)
        if main_process:
            print(f"initialised weights from {args.init}")
    if tcfg["compile"]:
        model = engine.compile_model(model, device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(raw_model.unused_parameters))
    if main_process:
        groklst.write_config(cfg, os.path.join(work_dir, "config.yaml"))
        print(f"{cfg['model']['name']} x{dcfg['scale']}: {n_params:,} parameters, {len(train_set)} training and "
              f"{'no' if val_set is None else len(val_set)} validation samples, {world} process(es) x batch "
              f"{tcfg['batch_size']} x accumulation {tcfg['grad_accum']}, device {device}")

    def save(name, it):
        if main_process:  # one writer; the weights without DDP's `module.` or compile's `_orig_mod.` prefixes
            write_checkpoint(os.path.join(work_dir, name), dict(
                model=clean_state_dict(raw_model.state_dict()), optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(), iter=it, best_rmse=best_rmse, world=world, config=cfg,
                model_name=cfg["model"]["name"], torch_version=str(torch.__version__)),
                hint="continue with --resume")

    # loop
    ckpt_interval = tcfg["ckpt_interval"] or tcfg["val_interval"]
    stream = batches(train_set, tcfg["batch_size"], tcfg["seed"], rank, world, start_iter * tcfg["grad_accum"],
                     dcfg["num_workers"])
    model.train()
    acc = new_interval()
    for it in range(start_iter, tcfg["max_iters"]):
        add_step(acc, train_step(model, optimizer, scaler, normalizer, stream, it, tcfg, rank, world, device))
        done, last = it + 1, it + 1 == tcfg["max_iters"]
        if done % tcfg["log_interval"] == 0 or last:
            log(*interval_record(acc, done, tcfg, world, device))
            acc = new_interval()
        if val_set is not None and (done % tcfg["val_interval"] == 0 or last):
            record, line, improved = validate(raw_model, normalizer, val_set, dcfg["val_split"], device, tcfg["amp"],
                                              cfg["consistency"], done, best_rmse)
            log(record, line)
            if improved:
                best_rmse = record[selection_metric(val_set)]
                save("best.pth", done)
        if done % ckpt_interval == 0 or last:
            save("last.pth", done)
    if writer is not None:
        writer.close()
    return normalizer, raw_model


def final_test(cfg, normalizer, model, device):
    """The test split with the weights the run selected (best.pth; last.pth, the model as trained, when
    there was no validation or it never improved) and with bicubic, both with the config's `consistency`
    as test.py applies it: the table a user wants at the end."""
    dcfg = cfg["data"]
    test_set = groklst.build_dataset(cfg, dcfg["test_split"])
    best = os.path.join(cfg["work_dir"], "best.pth")
    used = "last.pth"
    if dcfg["val_split"] is not None and os.path.exists(best):
        load_weights(model, best)
        used = "best.pth"
    consistency = cfg["consistency"]
    suffix = f", consistency {consistency}" if consistency != "none" else ""
    rows = {f"{cfg['model']['name']} ({used}{suffix})":
            engine.evaluate(model, normalizer, test_set, device, cfg["train"]["amp"], consistency)[0]}
    bicubic = groklst.create_model("bicubic", scale=dcfg["scale"]).to(device)
    rows[f"bicubic{' (' + suffix[2:] + ')' if suffix else ''}"] = engine.evaluate(
        bicubic, normalizer, test_set, device, consistency=consistency)[0]
    return rows


@command
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from PATH, or from <work_dir>/last.pth when no path is given")
    p.add_argument("--init", default=None, help="initial weights only (no optimizer state, iteration 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the checkpoints and log of a previous run in the work dir, then start afresh")
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options
    rank, world, device = engine.setup_distributed()
    try:
        cfg = groklst.load_config(args.config, args.overrides)
        normalizer, model = train(cfg, args, rank, world, device)
        if not args.no_test:
            rows = final_test(cfg, normalizer, model, device)
            if rank == 0:
                table = format_table(rows, f"{cfg['data']['test_split']} x{cfg['data']['scale']}", COLUMNS)
                if not any("RMSE" in m for m in rows.values()):  # a split without fine truth (engine.evaluate)
                    table += "\n\nNo fine truth in this split (30m/lst): CONS only."
                print(table)
                write_atomic(os.path.join(cfg["work_dir"], "test_table.md"), (table + "\n").encode())
        engine.teardown_distributed(barrier=True)
    finally:
        engine.teardown_distributed()


if __name__ == "__main__":
    main()
