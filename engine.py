"""Running a model: Kelvin in and Kelvin out (`downscale`), coarse-scale consistency, the training losses,
sharded evaluation, the torchrun process group, compilation and memory readings.

Every model computes forward(lr_lst, hr_guidance) on normalised tensors; `downscale` is the one place that
normalises its inputs and decodes its output, so train.py, test.py, predict.py and the speed tool all see
Kelvin. Models with `physical_units = True` (sharpeners.py) take Kelvin and physical guidance as they are.
Models that bring their own objective and sampler (groklst.py's docstring; PGDM) are trained through
`model_loss` and sampled by `downscale` with a seeded generator, which can also return their spread.
"""
import os
import resource
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from atpk import atpk_consistent
from data import block_mean_tensor, fill_holes, hole_mask
from errors import ConfigError, DataError
from metrics import COLUMNS, average, image_metrics_by_name

CONSISTENCY_MODES = ("none", "nearest", "bicubic", "atpk")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.amp / --amp -> autocast dtype


# --------------------------------------------------------------------------- Kelvin in, Kelvin out

SAMPLING_SEED = 0  # a stochastic model's draws in downscale: the original PGDM evaluates with seed 0, one draw


def bare_model(model):
    """The model inside DDP's and torch.compile's wrappers: the object whose attributes (stochastic,
    training_loss, physical_units) say how to run it."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def has_objective(model):
    """True for a model that brings its own training objective (a `training_loss` method)."""
    return callable(getattr(bare_model(model), "training_loss", None))


def encode_inputs(normalizer, lr_lst, hr_guidance=None):
    """Kelvin LR LST (B, 1, h, w) and physical guidance (B, C, H, W) or None -> the normalised model inputs.
    LR holes are filled from their valid neighbours (data.fill_holes), not with the mean: a valid pixel
    beside a hole then sees what it would see at the edge of a scene cropped there."""
    x = normalizer.encode_lst(fill_holes(lr_lst))
    return x, normalizer.encode_guidance(hr_guidance) if hr_guidance is not None else None


def downscale(model, normalizer, lr_lst, hr_guidance=None, amp="none", consistency="none", spread=False,
              num_samples=None, seed=SAMPLING_SEED):
    """Kelvin in, Kelvin out: fill LR holes from their neighbours (data.fill_holes), normalise, run the model
    (optionally under autocast), decode in float32, then make the output coarse-consistent (make_consistent;
    'none' = as the paper).
    lr_lst (B, 1, h, w) K, hr_guidance (B, C, H, W) physical units or None -> (B, 1, H, W) K. A model with
    `physical_units = True` (sharpeners.py) gets lr_lst and hr_guidance as they are, NaN included,
    and returns Kelvin: no normalising, decoding or autocast.

    A model with `stochastic = True` (PGDM) is run as model.sample(x, g, num_samples, generator): the mean of
    num_samples draws (None: the model's own num_samples), every draw from a torch.Generator on the input's
    device seeded with `seed` at each call, so the output is a function of the inputs (seed=None: the
    global RNG). spread=True returns (mean K, sigma K): sigma (B, 1, H, W) is the draws' population std
    times the LST normaliser's scale (K per normalised unit), not touched by `consistency`; 0 for one draw.
    spread=True with a deterministic model is a ConfigError."""
    net = bare_model(model)
    stochastic = getattr(net, "stochastic", False)
    if spread and not stochastic:
        raise ConfigError(f"model {type(net).__name__} is deterministic: it has no sample spread "
                          f"(models with stochastic = True have, e.g. pgdm)")
    if getattr(net, "physical_units", False):
        out = model(lr_lst, hr_guidance)
    else:
        x, g = encode_inputs(normalizer, lr_lst, hr_guidance)
        dtype = AMP_DTYPES[amp]
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            if stochastic:
                generator = None if seed is None else torch.Generator(x.device).manual_seed(seed)
                mean, std = net.sample(x, g, num_samples=num_samples, generator=generator)
            else:
                mean = model(x, g)
        out = normalizer.decode_lst(mean)
    out = make_consistent(out, lr_lst, consistency)
    if spread:
        return out, std.float() * normalizer.lst[1]
    return out


def make_consistent(pred, lr_lst, mode="bicubic", footprint=None):
    """Coarse-scale consistency ("energy conservation"): add back the residual between the LR input
    and the block mean of the prediction, so that the block mean of the output (data.block_mean's
    rule over its finite pixels) equals lr_lst exactly (float64 inside, ~1e-5 K after float32).

    pred (B, 1, H, W) K, lr_lst (B, 1, h, w) K (H = h * scale) -> like pred. mode:
      none     pred unchanged (the paper's protocol, the default everywhere)
      nearest  residual repeated over each scale x scale block: exact, but a step at block edges
      bicubic  residual upsampled bicubically (smooth; its block means are not the residual), then
               one nearest pass on what is left: exact too, and the steps are only that remainder.
               The one `--consistency` turns on without a value, because it is as exact as nearest
               without imprinting the LR grid on the output.
      atpk     the residual brought to the fine grid by area-to-point kriging (atpk.atpk_consistent: a
               variogram fitted on the coarse residuals, deconvolved to point support): coherent and
               smooth, without bicubic's assumption that the residual is a smooth surface. Whole images.
    Coarse pixels where lr_lst (or the whole block of pred) is NaN get no correction.

    footprint: a footprint.Footprint when lr_lst is on another grid than pred's blocks (a sensor's own
    grid: any CRS, any pixel size, not aligned); None (or an integer-aligned one) is the block case
    above, unchanged. Then the block mean is footprint.aggregate and consistent_on_footprint does the
    passes with the footprint's operators (interpolate for bicubic's smooth part)."""
    if mode not in CONSISTENCY_MODES:
        raise ConfigError(f"consistency={mode!r}: expected one of {', '.join(CONSISTENCY_MODES)}")
    if mode == "none":
        return pred
    if mode == "atpk":
        return atpk_consistent(pred, lr_lst, footprint)
    if footprint is not None and footprint.scale is None:
        return torch.stack([consistent_on_footprint(p[0], lr[0], mode, footprint)[None]
                            for p, lr in zip(pred, lr_lst)]).to(pred.dtype)
    scale = pred.shape[-1] // lr_lst.shape[-1]
    lr, out = lr_lst.double(), pred.double()
    holes = hole_mask(lr, scale)

    def residual(x):  # (B, 1, h, w) K, 0 where there is nothing to correct
        return torch.nan_to_num(lr - block_mean_tensor(x, scale, max_nan_fraction=1.0), nan=0.0, posinf=0.0, neginf=0.0)

    if mode == "bicubic":
        smooth = F.interpolate(residual(out), scale_factor=scale, mode="bicubic", align_corners=False)
        out = out + torch.where(holes, 0.0, smooth)
    out = out + residual(out).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    return out.to(pred.dtype)


CG_TOL_K, CG_MAX_ITERS = 1e-6, 200  # consistent_on_footprint: largest footprint residual left (K), iterations


def consistent_on_footprint(pred, lr_lst, mode, footprint):
    """make_consistent on any grid pair: pred (H, W) K on footprint.fine, lr_lst (h, w) K on footprint.coarse
    (tensors) -> (H, W) float64, whose footprint means (footprint.aggregate, min_valid included) equal lr_lst
    to CG_TOL_K wherever both are finite; NaN pixels stay NaN and other coarse pixels set no constraint.

    With A the aggregation (row c: the overlap weights w_cf of coarse pixel c over its finite fine pixels,
    divided by their sum, so A x = footprint.aggregate(x)), the exact pass adds A^T y where A A^T y = r,
    the residual lr_lst - A pred (solved by conjugate gradients, A A^T being symmetric positive definite
    on the constrained pixels): the smallest correction that makes every footprint mean exact. On an
    aligned grid A^T y is r repeated over each block, i.e. the `nearest` pass. `bicubic` first adds
    footprint.interpolate(r, 'bicubic') (0 where the coarse pixel holding a fine pixel is NaN), so that
    the exact pass only carries what is left. Memory: float64 copies of the scene and int64 indices,
    whole-scene: 73 bytes per fine pixel beyond the footprint's own (tools/consistency_memory.py)."""
    out = pred.double().reshape(-1).clone()
    lr = lr_lst.double().reshape(-1)
    a = footprint.weights
    crow, col = a.crow_indices().long(), a.col_indices().long()
    row = torch.repeat_interleave(torch.arange(len(crow) - 1), crow.diff())
    shape = tuple(footprint.fine.shape)

    def residual(x):  # coarse (h*w,) K, NaN where unconstrained
        return lr - torch.as_tensor(footprint.aggregate(x.reshape(shape))).reshape(-1)

    if mode == "bicubic":
        r = torch.nan_to_num(residual(out), nan=0.0).reshape(footprint.coarse.shape)
        smooth = torch.as_tensor(footprint.interpolate(r, "bicubic")).reshape(-1)
        under_data = torch.isfinite(torch.as_tensor(footprint.nearest(lr.reshape(r.shape)))).reshape(-1)
        out = out + torch.where(under_data & torch.isfinite(smooth), smooth, 0.0)
    r = residual(out)
    active = torch.isfinite(r)
    r = torch.where(active, r, 0.0)
    w = a.values().double() * torch.isfinite(out)[col]  # the weights over finite fine pixels
    total = torch.zeros(len(lr), dtype=torch.float64).index_add_(0, row, w)
    active &= total > 0
    scale = torch.where(active, 1.0 / torch.where(total > 0, total, 1.0), 0.0)

    def spread(y):  # A^T y: coarse -> fine
        return torch.zeros(len(out), dtype=torch.float64).index_add_(0, col, w * (y * scale)[row])

    def gather(x):  # A x over the active coarse pixels
        return torch.zeros(len(lr), dtype=torch.float64).index_add_(0, row, w * x[col]) * scale

    y, p, rest = torch.zeros_like(r), r.clone(), r.clone()
    for _ in range(CG_MAX_ITERS):
        if float(rest.abs().max()) <= CG_TOL_K:
            break
        q = gather(spread(p))
        alpha = float(rest @ rest) / float(p @ q)
        y += alpha * p
        new = rest - alpha * q
        p = new + (float(new @ new) / float(rest @ rest)) * p
        rest = new
    return (out + spread(y)).reshape(shape)


# --------------------------------------------------------------------------- training losses


def _l1(pred, target):
    return (pred - target).abs().mean()


LOSSES = {  # train.loss -> loss over the valid pixels' values (1-D tensors), Kelvin
    "l1": _l1,
    "smooth_l1": lambda pred, target: F.smooth_l1_loss(pred, target, beta=1.0),
    "mse": F.mse_loss,
}


def pixel_loss(pred, target, mask, kind):
    """Mean loss over valid pixels, float32, Kelvin: pred, target (B, 1, H, W), mask bool like them."""
    return LOSSES[kind](pred.float()[mask], target.float()[mask])


LOSS_UNITS = {"l1": "K", "smooth_l1": "K", "mse": "K^2"}

OBJECTIVES = ("truth", "consistency")  # train.objective: what the pixel loss compares the prediction with


def consistency_loss(pred, lr_lst, kind="l1", fine_valid=None, footprint=None):
    """The no-truth objective: the loss `kind` (LOSSES) between the prediction's footprint means and the
    coarse LST, over the valid coarse pixels, float32; None when there is none (the caller skips the batch).

    pred (B, 1, H, W) K, differentiable; lr_lst (B, 1, h, w) K; fine_valid (B, 1, H, W) bool or None: fine
    pixels that may enter a mean (e.g. where the guidance has data; non-finite pred pixels never do).
    Aligned grids (footprint None, H = h * scale): the block means over scale x scale, and a coarse pixel
    counts only when lr_lst is finite and every one of its fine pixels is valid. The coarse LST is the mean
    of the whole footprint, so the mean of a part of it is not compared with it: with fine pixels missing
    the difference would measure where they are, not the prediction. A footprint.Footprint (lr_lst on
    footprint.coarse, pred on footprint.fine, any CRS): its differentiable aggregate, with its own
    min_valid rule for partly valid footprints. Units: those of `kind` (LOSS_UNITS). At least float32
    (bf16 has 2 K steps at 300 K), float64 kept."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    pred, lr_lst = pred.to(dtype), lr_lst.to(dtype)
    valid = torch.isfinite(pred) if fine_valid is None else torch.isfinite(pred) & fine_valid
    masked = torch.where(valid, pred, float("nan"))
    if footprint is None or footprint.scale is not None:
        scale = pred.shape[-1] // lr_lst.shape[-1]
        coarse = block_mean_tensor(masked, scale, max_nan_fraction=0.0)
    else:
        coarse = footprint.aggregate(masked)
    used = torch.isfinite(coarse) & torch.isfinite(lr_lst)
    if not bool(used.any()):
        return None
    return LOSSES[kind](coarse[used], lr_lst[used])


def texture_loss(pred, guidance, fine_valid=None):
    """Guidance-weighted regularity (train.texture_weight): fine detail where the guidance shows no edge.

    pred (B, 1, H, W) K; guidance (B, C, H, W) normalised as the model sees it (Normalizer.encode_guidance:
    every band in its own z-units, so no band dominates by its physical units) -> float32 scalar, K per
    fine pixel step. Over each pair of 4-neighbours (right and down) with both pixels valid, the term is

        |pred_a - pred_b| * exp(-e_ab / mean(e)),   e_ab = mean over bands of |g_a - g_b|,

    the mean e taken over each image's valid pairs. Where the guidance is flat (e << its mean) a step in
    the LST costs its full size, across a guidance edge (e >> its mean) almost nothing: the sub-pixel
    detail that the consistency objective leaves free is placed where the surface changes (a field edge,
    a shore, a ridge), not spread as texture of its own. The scale by mean(e) makes the weight independent
    of the bands' units and of how busy a scene is. Weighted total variation, so steps are not smoothed
    into ramps. 0 when no pair is valid."""
    pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
    valid = torch.isfinite(pred) & torch.isfinite(guidance).all(1, keepdim=True)
    if fine_valid is not None:
        valid = valid & fine_valid
    pred = torch.where(valid, pred, 0.0)
    g = torch.nan_to_num(guidance.to(pred.dtype))
    terms, edges, pairs = [], [], []
    for dim in (-1, -2):
        n = pred.shape[dim] - 1
        step = (pred.narrow(dim, 1, n) - pred.narrow(dim, 0, n)).abs()
        edge = (g.narrow(dim, 1, n) - g.narrow(dim, 0, n)).abs().mean(1, keepdim=True)
        pair = valid.narrow(dim, 1, n) & valid.narrow(dim, 0, n)
        terms.append(step), edges.append(edge), pairs.append(pair)
    count = sum(p.flatten(1).sum(1) for p in pairs).clamp(min=1)  # (B,) valid pairs per image
    mean_edge = sum((e * p).flatten(1).sum(1) for e, p in zip(edges, pairs)) / count
    scale = mean_edge.clamp(min=1e-6).view(-1, 1, 1, 1)
    total = sum((t * torch.exp(-e / scale) * p).flatten(1).sum(1) for t, e, p in zip(terms, edges, pairs))
    return (total / count).mean()


def consistency_objective(pred, lr_lst, hr_guidance, normalizer, kind="l1", texture_weight=0.0, footprint=None):
    """train.objective=consistency, what train.py's train_step minimises: consistency_loss(pred, lr_lst) plus
    texture_weight x texture_loss(pred, the normalised guidance). pred (B, 1, H, W) K from downscale,
    lr_lst (B, 1, h, w) K, hr_guidance (B, C, H, W) physical units or None (then no texture term and every
    fine pixel is valid; with it, fine pixels where a band is NaN are left out of both terms). No fine
    truth is read. -> float32 scalar in loss_units, or None without a valid coarse pixel."""
    fine_valid = None if hr_guidance is None else torch.isfinite(hr_guidance).all(1, keepdim=True)
    loss = consistency_loss(pred, lr_lst, kind, fine_valid, footprint)
    if loss is None or not texture_weight:
        return loss
    return loss + texture_weight * texture_loss(pred, normalizer.encode_guidance(hr_guidance), fine_valid)


def model_loss(model, normalizer, lr_lst, hr_guidance, hr_lst, mask, amp="none"):
    """The objective of a model that brings its own (has_objective): lr_lst (B, 1, h, w) K, hr_guidance
    (B, C, H, W) physical units or None, hr_lst (B, 1, H, W) K, mask (B, 1, H, W) bool (True = valid)
    -> its training_loss as a float32 scalar in the model's units (loss_units). Inputs are normalised as
    downscale normalises them, hr_lst with the LST normaliser. The call goes through the model's forward,
    model(x, g, hr_lst=..., mask=...), so that DDP's hooks see it and all-reduce its gradients."""
    x, g = encode_inputs(normalizer, lr_lst, hr_guidance)
    dtype = AMP_DTYPES[amp]
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        loss = model(x, g, hr_lst=normalizer.encode_lst(hr_lst), mask=mask)
    return loss.float()


def loss_units(model, kind, objective="truth", texture_weight=0.0):
    """What a training loss is measured in: the model's `loss_units` ('normalised' if it does not say)
    for a model with its own objective, else those of the pixel loss `kind` (train.loss), with the
    consistency objective's texture term (K per fine pixel step) added where it is on and kind is not in K."""
    if has_objective(model):
        return getattr(bare_model(model), "loss_units", "normalised")
    units = LOSS_UNITS[kind]
    if objective == "consistency" and texture_weight and units != "K":
        return f"{units} + K"
    return units


# --------------------------------------------------------------------------- processes and devices


def rank_and_world():
    """(rank, world size) of this process: (0, 1) unless a torch.distributed process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed():
    """torchrun environment -> (rank, world_size, device). NCCL on CUDA, gloo on CPU.
    Without torchrun: (0, 1, cuda if available else cpu)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def teardown_distributed(barrier=False):
    """Destroy the process group (no-op without one). barrier=True (on success only: a rank that
    failed must not wait for the others) first waits until every rank is done with it."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def gather(obj):
    """All ranks' objects as a list on every rank (just [obj] when not distributed)."""
    if rank_and_world()[1] == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def peak_memory_mb(device):
    """CUDA max allocated on a GPU, else the process's peak RSS (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_model(model, device):
    """torch.compile(model), the one way train.py and the speed tool compile. On CPU the convolutions keep
    their NCHW layout: with inductor's channels_last layout, oneDNN (torch 2.13) returns wrong weight
    gradients for bf16 depthwise convs with dilation > 1 (relative error ~1 or NaN; MoCoLSK's 7x7
    dilation-3 conv), so bf16 + compile training diverged at once (tests/test_mocolsk.py)."""
    if torch.device(device).type == "cpu":
        from torch._inductor import config as inductor_config
        inductor_config.layout_optimization = False
    return torch.compile(model)


# --------------------------------------------------------------------------- evaluation


def _batch_to(item, device):
    return {k: v[None].to(device) if torch.is_tensor(v) else v for k, v in item.items()}


@torch.no_grad()
def evaluate(model, normalizer, dataset, device, amp="none", consistency="none", on_prediction=None, progress=False,
             on_error=None):
    """Per-image metrics over a dataset, sharded over ranks (image i on rank i % world), gathered and
    averaged in dataset order: the same numbers as one process.

    Returns (means, per_image): means = metrics.average of the rows ({metric: mean} plus 'images'),
    per_image = [(name, {metric: value})] with every metric of metrics.COLUMNS (the paper's five and CONS);
    on a dataset without fine truth (dataset.has_truth False) CONS alone.
    consistency: make_consistent's mode for every prediction. on_prediction(index, item, pred): called
    with each dataset item (batched, on `device`) and its prediction (1, 1, H, W) K, e.g. to write it.
    on_error(name, message): given, an image whose prediction raises a DataError (a sharpener that cannot
    fit it: sharpeners' CannotFit) gets a row of NaN metrics (left out of the means, like an image
    without valid pixels) and on_error is called, on every rank after the gather, once per such image in
    dataset order; without it the error propagates. Other errors (a ConfigError: the same for every
    image) always propagate."""
    rank, world = rank_and_world()
    was_training = model.training
    model.eval()
    rows = []
    indices = range(rank, len(dataset), world)
    for n, i in enumerate(indices):
        item = _batch_to(dataset[i], device)
        try:
            pred = downscale(model, normalizer, item["lr_lst"], item.get("hr_guidance"), amp, consistency)
        except DataError as e:
            if on_error is None:
                raise
            rows.append((i, item["name"], {k: float("nan") for k in COLUMNS}, str(e)))
            continue
        rows.append((i, item["name"], image_metrics_by_name(pred, item.get("hr_lst"), item.get("mask"),
                                                            item["lr_lst"])[0], None))
        if on_prediction is not None:
            on_prediction(i, item, pred)
        if progress and rank == 0:
            print(f"\r  {n + 1}/{len(indices)} images", end="", file=sys.stderr, flush=True)
    if progress and rank == 0:
        print(file=sys.stderr)
    model.train(was_training)
    rows = sorted((r for part in gather(rows) for r in part), key=lambda r: r[0])
    for _, name, _, message in rows:
        if message is not None:
            on_error(name, message)
    return average([r[2] for r in rows]), [(r[1], r[2]) for r in rows]
