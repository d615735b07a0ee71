"""Train a model on a GrokLST-layout dataset; iteration-based, resumable, torchrun-ready.

    python train.py configs/mocolsk_x8.yaml [key.sub=value ...] [--resume [PATH]] [--init PATH]
    torchrun --standalone --nproc_per_node=4 train.py configs/mocolsk_x8.yaml
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=4 train.py CFG   # multi-node

The work dir (work_dirs/<config name>/, or `work_dir`) receives config.yaml (resolved), log.jsonl
(loss, lr, throughput, data wait, validation metrics), last.pth (every ckpt_interval iterations and
at the end), best.pth (lowest validation RMSE) and, at the end, the test-split table of best.pth
next to bicubic's. Checkpoints hold only tensors and plain types (torch.load(weights_only=True)),
keys without `module.` / `_orig_mod.`. --resume restores model, optimizer, grad scaler, every rank's
RNG states and the iteration; the learning rate and the sampler position are pure functions of the
iteration, so an interrupted run (even kill -9) resumes to bit-identical weights on CPU.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import groklst
from errors import ConfigError, DataError, TrainingError, command
from metrics import format_table


def learning_rate(it, t):
    """Linear warm-up, then cosine annealing with warm restarts every restart_period iterations
    (torch's CosineAnnealingWarmRestarts(T_0=period, eta_min) stepped per iteration)."""
    if it < t["warmup_iters"]:
        return t["lr"] * (it + 1) / t["warmup_iters"]
    phase = (it % t["restart_period"]) / t["restart_period"]
    return t["eta_min"] + (t["lr"] - t["eta_min"]) * (1 + math.cos(math.pi * phase)) / 2


def pixel_loss(pred, target, mask, kind):
    """Mean loss over valid pixels, float32, Kelvin."""
    pred, target = pred.float()[mask], target.float()[mask]
    if kind == "l1":
        return (pred - target).abs().mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ConfigError(f"train.loss={kind!r}: expected l1, smooth_l1 or mse")


def batches(dataset, t, rank, world, start_micro, num_workers=0):
    """Training batches forever, starting at micro-batch `start_micro` (a pure function of the
    iteration). Each epoch: a permutation seeded by (seed, epoch), padded to equal shards,
    rank r takes every world-th sample (as DistributedSampler), full batches only."""
    per_rank = math.ceil(len(dataset) / world)
    per_epoch = per_rank // t["batch_size"]
    if per_epoch == 0:
        raise DataError(f"training split has {len(dataset)} samples: fewer than batch_size x processes")
    epoch, pos = divmod(start_micro, per_epoch)
    while True:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(t["seed"] * 1000003 + epoch))
        order = torch.cat([order, order[:per_rank * world - len(order)]])[rank::world]
        dataset.set_epoch(epoch)
        subset = torch.utils.data.Subset(dataset, order[pos * t["batch_size"]:per_epoch * t["batch_size"]].tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=t["batch_size"], num_workers=num_workers,
                                             drop_last=True, pin_memory=torch.cuda.is_available())
        yield from loader
        epoch, pos = epoch + 1, 0


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"]))
    random.setstate((3, tuple(s["python"]), None))
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def save_checkpoint(path, **content):
    """Atomic: write a temp file, then rename."""
    tmp = f"{path}.tmp"
    torch.save(content, tmp)
    os.replace(tmp, path)


def train(cfg, args, rank, world, device):
    t, d, wd = cfg["train"], cfg["data"], cfg["work_dir"]
    main_process = rank == 0

    def log(record, line=None):
        if main_process:
            if line:
                print(line, flush=True)
            with open(os.path.join(wd, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    seed = t["seed"] + rank
    random.seed(seed), np.random.seed(seed), torch.manual_seed(t["seed"])  # same init on every rank
    if t["deterministic"]:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    train_set = groklst.build_dataset(cfg, d["train_split"], train=True)
    val_set = groklst.build_dataset(cfg, d["val_split"])
    normalizer = groklst.build_normalizer(cfg)
    model = groklst.build_model(cfg).to(device)
    raw_model = model
    n_params = sum(p.numel() for p in model.parameters())
    if n_params == 0:
        raise ConfigError(f"model {cfg['model']['name']!r} has no parameters to train; use test.py")
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["lr"], betas=tuple(t["betas"]), weight_decay=t["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=t["amp"] == "fp16")

    start_iter, best_rmse = 0, math.inf
    resume = args.resume
    if resume == "auto":
        resume = os.path.join(wd, "last.pth")
        if not os.path.exists(resume):
            raise ConfigError(f"--resume: {resume} does not exist (nothing to resume)")
    if resume:
        ckpt = torch.load(resume, map_location="cpu", weights_only=True)
        raw_model.load_state_dict(groklst.clean_state_dict(ckpt["model"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_iter, best_rmse = ckpt["iter"], ckpt["best_rmse"]
        if len(ckpt["rng"]) != world:
            print(f"warning: checkpoint was written by {len(ckpt['rng'])} processes, now {world}: "
                  "RNG streams and shards differ from the original run", file=sys.stderr)
        set_rng_state(ckpt["rng"][rank % len(ckpt["rng"])])
        if main_process:
            print(f"resumed from {resume} at iteration {start_iter}")
    elif args.init:
        groklst.load_weights(raw_model, args.init)
        if main_process:
            print(f"initialised weights from {args.init}")
    else:
        torch.manual_seed(seed)  # per-rank stream for everything after the (shared) init

    if t["compile"]:
        model = groklst.compile_model(model, device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(raw_model.unused_parameters))
    if main_process:
        os.makedirs(wd, exist_ok=True)
        with open(os.path.join(wd, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        print(f"{cfg['model']['name']} x{d['scale']}: {n_params:,} parameters, {len(train_set)} training and "
              f"{len(val_set)} validation samples, {world} process(es) x batch {t['batch_size']} x "
              f"accumulation {t['grad_accum']}, device {device}")

    def checkpoint(it):
        return dict(model=groklst.clean_state_dict(raw_model.state_dict()), optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict(), iter=it, best_rmse=best_rmse, rng=groklst.gather(rng_state()),
                    config=cfg, model_name=cfg["model"]["name"], torch_version=str(torch.__version__))

    ckpt_interval = t["ckpt_interval"] or t["val_interval"]
    stream = batches(train_set, t, rank, world, start_iter * t["grad_accum"], d["num_workers"])
    model.train()
    t_last, data_wait, loss_sum, n_logged, grad_norm_max = time.time(), 0.0, 0.0, 0, 0.0
    for it in range(start_iter, t["max_iters"]):
        lr = learning_rate(it, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(t["grad_accum"]):
            t0 = time.time()
            batch = next(stream)
            data_wait += time.time() - t0
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            sync = micro == t["grad_accum"] - 1 or world == 1
            ctx = model.no_sync() if not sync else torch.enable_grad()
            with ctx:
                pred = groklst.downscale(model, normalizer, batch["lr_lst"], batch.get("hr_guidance"), t["amp"])
                loss = pixel_loss(pred, batch["hr_lst"], batch["mask"], t["loss"])
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss is {loss.item()} at iteration {it + 1}, samples {batch['name']}: "
                                        f"lower train.lr or set train.clip_grad")
                scaler.scale(loss / t["grad_accum"]).backward()
            loss_sum += loss.item() / t["grad_accum"]
        scaler.unscale_(optimizer)  # the norm is logged (its largest value per log interval), and clipped if asked
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t["clip_grad"] or float("inf"))
        grad_norm_max = max(grad_norm_max, grad_norm.item())
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        n_logged += 1
        done = it + 1

        if done % t["log_interval"] == 0 or done == t["max_iters"]:
            loss_avg = sum(groklst.gather(loss_sum / n_logged)) / world
            elapsed = time.time() - t_last
            speed = n_logged / elapsed
            eta = (t["max_iters"] - done) / speed
            mem = groklst.peak_memory_mb(device)
            log({"iter": done, "loss": loss_avg, "lr": lr, "grad_norm_max": grad_norm_max, "it_per_s": speed,
                 "data_wait": data_wait / elapsed, "peak_mem_mb": mem},
                f"iter {done}/{t['max_iters']} | loss {loss_avg:.4f} K | lr {lr:.2e} | grad norm <= {grad_norm_max:.3g} "
                f"| {speed:.2f} it/s "
                f"(data {100 * data_wait / elapsed:.0f}%) | eta {time.strftime('%H:%M:%S', time.gmtime(eta))} "
                f"| peak mem {mem:.0f} MB")
            t_last, data_wait, loss_sum, n_logged, grad_norm_max = time.time(), 0.0, 0.0, 0, 0.0

        if done % t["val_interval"] == 0 or done == t["max_iters"]:
            means, _ = groklst.evaluate(raw_model, normalizer, val_set, device, t["amp"])
            improved = means["RMSE"] < best_rmse
            best_rmse = min(best_rmse, means["RMSE"])
            log({"iter": done, "split": d["val_split"], **means},
                f"val ({d['val_split']}) iter {done}: " + " ".join(f"{k} {v:.4f}" for k, v in means.items()
                                                                   if k != "images") + (" *best*" if improved else ""))
            if improved:
                state = checkpoint(done)
                if main_process:
                    save_checkpoint(os.path.join(wd, "best.pth"), **state)
        if done % ckpt_interval == 0 or done == t["max_iters"]:
            state = checkpoint(done)  # gathers RNG states: every rank takes part
            if main_process:
                save_checkpoint(os.path.join(wd, "last.pth"), **state)
    return normalizer, raw_model


def final_test(cfg, normalizer, model, device):
    """best.pth and bicubic on the test split: the table a user wants at the end of a run."""
    d = cfg["data"]
    test_set = groklst.build_dataset(cfg, d["test_split"])
    best = os.path.join(cfg["work_dir"], "best.pth")
    if os.path.exists(best):
        groklst.load_weights(model, best)
    rows = {f"{cfg['model']['name']} (best.pth)": groklst.evaluate(model, normalizer, test_set, device, cfg["train"]["amp"])[0]}
    bicubic = groklst.create_model("bicubic", scale=d["scale"]).to(device)
    rows["bicubic"] = groklst.evaluate(bicubic, normalizer, test_set, device)[0]
    return rows


@command
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from PATH, or from <work_dir>/last.pth when no path is given")
    p.add_argument("--init", default=None, help="initial weights only (no optimizer state, iteration 0)")
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options
    rank, world, device = groklst.setup_distributed()
    try:
        cfg = groklst.load_config(args.config, args.overrides)
        normalizer, model = train(cfg, args, rank, world, device)
        if not args.no_test:
            rows = final_test(cfg, normalizer, model, device)
            if rank == 0:
                table = format_table(rows, f"{cfg['data']['test_split']} x{cfg['data']['scale']}")
                print(table)
                with open(os.path.join(cfg["work_dir"], "test_table.md"), "w") as f:
                    f.write(table + "\n")
        groklst.teardown_distributed(barrier=True)
    finally:
        groklst.teardown_distributed()


if __name__ == "__main__":
    main()
