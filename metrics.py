"""LST accuracy metrics of the GrokLST paper (eqs. 11-16), per image over valid pixels.

All five are computed for each image separately, in float64, over the pixels where the
validity mask is true, and then averaged over images (the original toolkit's rule:
mmagic's sample-wise metrics, not pooled over all pixels). Units: Kelvin for RMSE, MAE
and BIAS; CC and RSD are dimensionless.

    d = pred - gt over the n valid pixels
    RMSE = sqrt(mean(d^2))
    MAE  = mean(|d|)
    BIAS = mean(d)                                  (> 0: the prediction is too warm)
    CC   = cov(gt, pred) / (sd(gt) * sd(pred) + 1e-12)          population moments
    RSD  = |s(gt) - s(pred)| / (s(gt) + 1e-12)     s = sample std (ddof = 1)

CC of a constant image is 0 (the 1e-12 keeps it finite), as in the original code.

A sixth metric, not in the paper and kept apart from METRICS (the paper's tables and the JSON
"metrics" keep their five; the toolkit's tables show COLUMNS = METRICS + CONS): CONS, the
coarse-scale consistency ("energy conservation") error,

    CONS = sqrt(mean over valid coarse pixels of (block_mean(pred) - lr_lst)^2)      Kelvin

per image, where block_mean is data.block_mean's rule over the finite prediction pixels of each
scale x scale block and a coarse pixel is valid where lr_lst and that block mean are finite. It is
0 when the prediction, averaged back to the LR grid, reproduces the LR input.
"""
import torch

from data import block_mean_tensor

METRICS = ("RMSE", "MAE", "BIAS", "CC", "RSD")
CONS = "CONS"
COLUMNS = METRICS + (CONS,)


def image_metrics(pred, gt, mask=None):
    """Per-image metrics. pred, gt: (B, 1, H, W) Kelvin; mask: (B, 1, H, W) bool or None.

    Pixels where gt or pred is not finite are never counted. Returns a float64 tensor (B, 5)
    in METRICS order; an image without valid pixels gets NaN (and is skipped by `average`).
    """
    pred = pred.detach().double().flatten(1)
    gt = gt.detach().double().flatten(1)
    valid = torch.isfinite(pred) & torch.isfinite(gt)
    if mask is not None:
        valid &= mask.flatten(1).bool()
    n = valid.sum(1).double()
    w = valid.double()
    pred = torch.where(valid, pred, 0.0)
    gt = torch.where(valid, gt, 0.0)

    def mean(x):
        return (x * w).sum(1) / n

    d = pred - gt
    rmse = mean(d * d).sqrt()
    mae = mean(d.abs())
    bias = mean(d)
    gt_c = (gt - mean(gt)[:, None]) * w
    pred_c = (pred - mean(pred)[:, None]) * w
    var_gt = mean(gt_c * gt_c)
    var_pred = mean(pred_c * pred_c)
    cc = mean(gt_c * pred_c) / (var_gt.sqrt() * var_pred.sqrt() + 1e-12)
    s_gt = (var_gt * n / (n - 1)).sqrt()
    s_pred = (var_pred * n / (n - 1)).sqrt()
    rsd = (s_gt - s_pred).abs() / (s_gt + 1e-12)
    out = torch.stack([rmse, mae, bias, cc, rsd], 1)
    out[n < 2] = float("nan")  # no valid pixels (or one: no spread to speak of)
    return out


def consistency_error(pred, lr_lst):
    """CONS per image: pred (B, 1, H, W) K, lr_lst (B, 1, h, w) K with H = h * scale -> float64 (B,);
    NaN for an image without a valid coarse pixel."""
    scale = pred.shape[-1] // lr_lst.shape[-1]
    coarse = block_mean_tensor(pred.detach().double(), scale, max_nan_fraction=1.0).flatten(1)
    lr = lr_lst.detach().double().flatten(1)
    valid = torch.isfinite(coarse) & torch.isfinite(lr)
    d2 = torch.where(valid, (coarse - lr) ** 2, 0.0)
    return (d2.sum(1) / valid.sum(1)).sqrt()  # 0 / 0 = NaN without valid pixels


def image_metrics_by_name(pred, gt, mask, lr_lst):
    """Per-image rows keyed by metric name: [{RMSE, MAE, BIAS, CC, RSD, CONS}] (floats), one per image of
    the batch; pred, gt (B, 1, H, W) K, mask as image_metrics, lr_lst (B, 1, h, w) K. gt None (a dataset
    without fine truth): [{CONS}], the one metric that needs no truth."""
    cons = consistency_error(pred, lr_lst).tolist()
    if gt is None:
        return [{CONS: c} for c in cons]
    paper = image_metrics(pred, gt, mask).tolist()
    return [dict(zip(METRICS, row), **{CONS: c}) for row, c in zip(paper, cons)]


def average(rows):
    """Mean over images of per-image rows keyed by metric name ({name: value}, e.g. image_metrics_by_name).

    The paper's METRICS are averaged over the images where all of them are finite (an image without
    valid pixels is skipped); any other metric (CONS) over the images where it is finite. Returns
    {name: mean, ..., 'images': number of images the paper's metrics averaged}. Rows without the paper's
    metrics (no fine truth: CONS only) give means without them, and 'images' counts every row.
    """
    # callers pass rows in dataset-index order, so 1 process and N ranks that gathered the
    # same rows reduce identically and print bit-identical numbers
    shown = [k for k in METRICS if not rows or any(k in row for row in rows)]
    names = list(dict.fromkeys(shown + [k for row in rows for k in row]))
    table = torch.tensor([[row.get(k, float("nan")) for k in names] for row in rows], dtype=torch.float64)
    table = table.reshape(len(rows), len(names))
    paper = [names.index(k) for k in METRICS if k in names]
    keep = torch.isfinite(table[:, paper]).all(1)
    out = {}
    for j, k in enumerate(names):
        column = table[keep, j] if k in METRICS else table[torch.isfinite(table[:, j]), j]
        out[k] = float(column.mean()) if len(column) else float("nan")
    out["images"] = int(keep.sum())
    return out


def format_table(results, title="method", columns=METRICS):
    """Markdown table. results: {row name: {metric: value}} -> str; columns: the metrics shown
    (e.g. COLUMNS); a row without one gets '-', a NaN value 'nan'."""
    lines = [f"| {title} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "-" for k in columns) + " |")
    return "\n".join(lines)
