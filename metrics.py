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
"""
import torch

METRICS = ("RMSE", "MAE", "BIAS", "CC", "RSD")


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


def average(rows):
    """Mean over images of per-image metric rows (N, 5); rows with NaN are skipped.

    Returns ({name: float}, number of images averaged).
    """
    rows = torch.as_tensor(rows, dtype=torch.float64).reshape(-1, len(METRICS))
    keep = torch.isfinite(rows).all(1)
    rows = rows[keep]
    if len(rows) == 0:
        return {k: float("nan") for k in METRICS}, 0
    # callers pass rows in dataset-index order, so 1 process and N ranks that gathered the
    # same rows reduce identically and print bit-identical numbers
    return {k: float(v) for k, v in zip(METRICS, rows.mean(0))}, len(rows)


def format_table(results, title="method"):
    """Markdown table. results: {row name: {metric: value}} -> str."""
    lines = [f"| {title} | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    return "\n".join(lines)
