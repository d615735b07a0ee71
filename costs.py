"""What a model costs, beside what it achieves: GMACs counted on the meta device, and the CPU throughput
that speed.py --throughput measured into a JSON file. `groklst.py list --markdown` (docs/models.md) and
zoo.py's Table IX read that file rather than measure again each time a table is printed, so the
committed docs/throughput_cpu.json keeps docs/models.md reproducible.
"""
import json
import os

import torch

from errors import DataError

THROUGHPUT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docs", "throughput_cpu.json")
COST_HR = 256  # side of the output the costs are given for (pixels)


def count_macs(build, scale, guidance_channels, hr=COST_HR, batch=1):
    """GMACs of one forward of the model that `build()` returns, for `batch` outputs of hr x hr pixels at
    `scale` (guidance of `guidance_channels` bands for a guided model), counted by torch's
    FlopCounterMode on the meta device: shapes only, no memory, no compute; MACs = FLOPs / 2. A model
    that needs values while it runs (the statistical sharpeners fit per image) raises
    NotImplementedError or RuntimeError there."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = build()
        lr_lst = torch.zeros(batch, 1, hr // scale, hr // scale)
        hr_guidance = torch.zeros(batch, guidance_channels, hr, hr) if model.kind == "gisr" else None
        with FlopCounterMode(display=False) as counter:
            model(lr_lst, hr_guidance)
    return counter.get_total_flops() / 2e9


def read_throughput(path=THROUGHPUT_JSON):
    """speed.py --throughput's JSON -> ({model: row}, the file's `machine` dict); ({}, {}) when there is no
    such file. A row: model, scale, hr, gmacs and either the measurement (amp, mpx_per_s, parameters, the
    machine: cpu, threads, torch, load_average) or the `error` that stopped it."""
    if not os.path.exists(path):
        return {}, {}
    try:
        with open(path) as f:
            content = json.load(f)
        rows = {r["model"]: r for r in content["rows"]}
        return rows, content.get("machine", {})
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a throughput file of speed.py --throughput ({type(e).__name__}: {e}); "
                        f"measure again: python speed.py all --hr {COST_HR} --throughput --json {path}") from None
