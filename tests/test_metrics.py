import math

import torch

from metrics import CONS, METRICS, average, format_table, image_metrics, image_metrics_by_name


def rows(tensor):
    return [dict(zip(METRICS, r)) for r in tensor.tolist()]


def t(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_hand_computed():
    gt = t([280.0, 282.0, 284.0, 286.0])
    pred = t([281.0, 282.0, 283.0, 288.0])
    rmse, mae, bias, cc, rsd = image_metrics(pred, gt)[0].tolist()
    d = [1.0, 0.0, -1.0, 2.0]
    assert math.isclose(rmse, math.sqrt(sum(x * x for x in d) / 4))
    assert math.isclose(mae, 1.0)
    assert math.isclose(bias, 0.5)
    # population moments for CC, sample std for RSD
    g, p = [280, 282, 284, 286], [281, 282, 283, 288]
    gm, pm = sum(g) / 4, sum(p) / 4
    cov = sum((a - gm) * (b - pm) for a, b in zip(g, p)) / 4
    sg, sp = math.sqrt(sum((a - gm) ** 2 for a in g) / 4), math.sqrt(sum((b - pm) ** 2 for b in p) / 4)
    assert math.isclose(cc, cov / (sg * sp + 1e-12), rel_tol=1e-12)
    s_g, s_p = math.sqrt(sum((a - gm) ** 2 for a in g) / 3), math.sqrt(sum((b - pm) ** 2 for b in p) / 3)
    assert math.isclose(rsd, abs(s_g - s_p) / (s_g + 1e-12), rel_tol=1e-12)


def test_nan_pixels_are_ignored():
    gt = t([280.0, float("nan"), 284.0, 286.0, 290.0])
    pred = t([281.0, 300.0, 283.0, float("nan"), 290.0])
    ref = image_metrics(t([281.0, 283.0, 290.0]), t([280.0, 284.0, 290.0]))
    assert torch.allclose(image_metrics(pred, gt), ref)
    mask = torch.tensor([True, True, True, True, False]).view(1, 1, 1, -1)
    ref = image_metrics(t([281.0, 283.0]), t([280.0, 284.0]))
    assert torch.allclose(image_metrics(pred, gt, mask), ref)


def test_constant_image_cc_is_zero_and_finite():
    gt = t([280.0, 281.0, 282.0])
    pred = t([281.0, 281.0, 281.0])
    rmse, mae, bias, cc, rsd = image_metrics(pred, gt)[0].tolist()
    assert cc == 0.0 and math.isclose(rsd, 1.0) and math.isclose(bias, 0.0)


def test_average_is_per_image_not_pooled():
    a = image_metrics(t([1.0, 1.0]), t([0.0, 0.0]))  # RMSE 1
    b = image_metrics(t([3.0, 3.0, 3.0, 3.0]), t([0.0, 0.0, 0.0, 0.0]))  # RMSE 3
    means = average(rows(torch.cat([a, b])))
    assert means["images"] == 2 and math.isclose(means["RMSE"], 2.0)  # pooled would be sqrt(38/6)


def test_empty_image_is_skipped():
    per_image = image_metrics(torch.full((2, 1, 2, 2), 280.0), torch.tensor([float("nan")] * 4 + [281.0] * 4).view(2, 1, 2, 2))
    assert torch.isnan(per_image[0]).all() and torch.isfinite(per_image[1]).all()
    means = average(rows(per_image))
    assert means["images"] == 1 and math.isclose(means["RMSE"], 1.0)


def test_batch_equals_single_images():
    torch.manual_seed(0)
    gt, pred = 280 + 5 * torch.randn(3, 1, 8, 8), 280 + 5 * torch.randn(3, 1, 8, 8)
    batch = image_metrics(pred, gt)
    for i in range(3):
        assert torch.allclose(batch[i], image_metrics(pred[i:i + 1], gt[i:i + 1])[0])


def test_table():
    table = format_table({"bicubic": dict(zip(METRICS, [1.0, 0.5, 0.0, 0.9, 0.1]))})
    assert "| bicubic | 1.0000 | 0.5000 | 0.0000 | 0.9000 | 0.1000 |" in table


def test_rows_keyed_by_name_and_cons_averaged_apart():
    """Rows carry names, not positions: CONS is averaged over the images where it is finite, the paper's
    five over the images where all five are."""
    gt = 280 + torch.arange(32.0).view(2, 1, 4, 4)
    pred = gt + 1.0
    lr = torch.stack([gt[0, :, ::2, ::2], torch.full((1, 2, 2), float("nan"))])  # image 2: no valid coarse pixel
    by_name = image_metrics_by_name(pred, gt, None, lr)
    assert set(by_name[0]) == set(METRICS) | {CONS} and math.isnan(by_name[1][CONS])
    means = average(by_name)
    assert means["images"] == 2 and math.isclose(means["RMSE"], 1.0)
    assert math.isclose(means[CONS], by_name[0][CONS])
