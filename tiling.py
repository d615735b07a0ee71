"""Tiled inference over a whole scene: tiles, blending weights, the streamed strip blender, --amp, and
coarse consistency on a stream of strips. predict.py (the script) reads the inputs and writes the output;
this module turns an LR scene (and its guidance) into finished output row strips.

Tiling. Tiles of `lr_tile` x `lr_tile` LR (input) pixels step by lr_tile - lr_overlap; the last tile of a
row/column ends flush with the scene, so every tile is full-size and scene borders see the same border as
a whole-scene forward. A scene smaller than one tile is edge-padded (replicate) to a full tile. Each HR
pixel of a tile has the separable weight w(y) w(x), where w is 1 inside the tile and falls linearly to
`eps` (1e-6) at overlap/4 from the tile edge, staying eps in that outer band; the output is
sum(w * pred) / sum(w). Two neighbours thus hand over across the middle half of their overlap and the
outermost overlap/4 LR pixels of every tile (where zero padding of the convolutions is felt) get weight ~0.
Receptive-field caveat: the blend equals a whole-scene forward (to ~eps) only for models whose receptive
field radius is <= overlap/4 LR pixels (bicubic: 2.5). CNNs reach further, and global operations (channel
attention's global mean, MoCoLSK's pyramid pooling, window attention) make a tile's prediction depend on
the whole tile: the residual difference is small but not zero (see tests/test_predict.py for the bound
measured on a 1504 x 1504 scene).

No-data. Invalid inputs become 0 after normalisation (the band mean for z-score; the Normalizer does
this), so the model always sees finite numbers. Output pixels whose LR support pixel or any guidance band
is invalid are NaN (data.hole_mask). A hole changes valid pixels only within the model's receptive field
of it (bicubic: 2 LR pixels); tiles with no valid LR pixel are skipped.

Memory. Tiles run in row-major order and StripBlender keeps only the strips a later tile still touches,
about (tile*scale + 256) x W float32. Device: one batch of tiles, batch * bands * (tile*scale)^2 inputs
plus the model's activations at that size, whatever the scene size.

Precision. amp 'auto': bf16 autocast with model and inputs in channels_last on CUDA with bf16 and on CPUs
with AMX / AVX512-BF16, for models with weights; float32 elsewhere. The first tile is also run in float32
(once per process) and auto falls back to float32 if the two differ by >= 0.01 K RMSE. 'none': float32;
'bf16': bf16 whatever the device. Training is not affected.
"""
import sys
import time

import numpy as np
import torch

import engine
from data import hole_mask
from errors import ConfigError

# --------------------------------------------------------------------------- tiles and weights


def tile_starts(n, tile, overlap):
    """Start offsets of `tile`-pixel tiles covering [0, n), stepping tile - overlap, the last one
    ending flush at n (so it may overlap more); [0] when n <= tile (that tile gets padded)."""
    if n <= tile:
        return [0]
    return list(range(0, n - tile, tile - overlap)) + [n - tile]


def taper(n, overlap, eps=1e-6):
    """1-D blending weight (n,) float32 of a tile n pixels long whose outer `overlap` pixels overlap
    its neighbours: eps within overlap/4 of an edge, rising linearly to 1 at overlap/2, 1 inside."""
    if overlap <= 0:
        return np.ones(n, np.float32)
    i = np.arange(n)
    d = np.minimum(i + 0.5, n - 0.5 - i)  # pixel centre to the nearest tile edge
    return np.clip((d - overlap / 4) / (overlap / 4), eps, 1.0).astype(np.float32)


def _window(a, r0, c0, size):
    """a[..., r0:r0+size, c0:c0+size], edge-padded to size x size where the scene is smaller."""
    w = a[..., r0:r0 + size, c0:c0 + size]
    pad = [(0, 0)] * (w.ndim - 2) + [(0, size - w.shape[-2]), (0, size - w.shape[-1])]
    return np.pad(w, pad, mode="edge") if any(p[1] for p in pad) else w


ROW_STRIP = 256  # output rows per emitted strip: the GeoTIFF tile height of write_geotiff_rows


class StripBlender:
    """The weighted sum of overlapping tile predictions over an (H, W) output, kept only for the strips
    of `strip` rows that a tile still to come may touch, and handed out normalised once none can.

    Each output pixel is sum(w * pred) / sum(w) over the tiles that cover it, with the separable tile
    weight w(y) w(x) (taper); sum(w) is then outer(row_sums, col_sums), so only sum(w * pred) is stored."""

    def __init__(self, shape, row_sums, col_sums, strip=ROW_STRIP):
        self.shape, self.row_sums, self.col_sums, self.strip = shape, row_sums, col_sums, strip
        self.sums = {}  # strip index -> (rows, W) float32 sum of w * pred
        self.emitted = 0  # strips handed out so far

    def add(self, y0, x0, weighted):
        """Add a tile's w * pred (th, tw) whose top-left output pixel is (y0, x0)."""
        H, W = self.shape
        th, tw = weighted.shape
        for k in range(y0 // self.strip, (y0 + th - 1) // self.strip + 1):  # the strips this tile overlaps
            top, bottom = k * self.strip, min((k + 1) * self.strip, H)
            acc = self.sums.setdefault(k, np.zeros((bottom - top, W), np.float32))
            a, b = max(top, y0), min(bottom, y0 + th)
            acc[a - top:b - top, x0:x0 + tw] += weighted[a - y0:b - y0]

    def finished(self, upto):
        """Yield (y0, y1, blended rows) for every strip lying wholly above output row `upto`: tiles still to
        come start at or below it (tiles run in row-major order), so nothing can be added to those strips."""
        H, W = self.shape
        while self.emitted * self.strip < H and min((self.emitted + 1) * self.strip, H) <= upto:
            y0, y1 = self.emitted * self.strip, min((self.emitted + 1) * self.strip, H)
            acc = self.sums.pop(self.emitted, None)
            acc = np.zeros((y1 - y0, W), np.float32) if acc is None else acc  # no tile here: all no-data
            self.emitted += 1
            yield y0, y1, acc / np.outer(self.row_sums[y0:y1], self.col_sums)


@torch.no_grad()
def predict_rows(model, normalizer, lst, guidance=None, scale=8, lr_tile=64, lr_overlap=16, batch=4,
                 device="cpu", amp="none", progress=False, strip=ROW_STRIP):
    """Tiled, blended downscaling of a whole scene, yielded as finished output row strips.

    lst (h, w) float32 Kelvin; guidance (C, h*scale, w*scale) physical units or None (SISR); NaN =
    no data in both. lr_tile, lr_overlap: tile side and overlap in LR pixels. amp: see resolve_amp ('auto' and 'bf16' put the
    model in channels_last). Yields (strip, w*scale) float32 Kelvin arrays top to bottom (the last
    may be shorter), NaN where data.hole_mask says (the LR support pixel or any guidance band is
    invalid). Tiles run in row-major order and StripBlender keeps only the strips a tile still to come
    touches, so host memory is about one row of tiles (tile*scale + strip rows x w*scale float32),
    and device memory one batch of tiles.
    """
    h, w = lst.shape
    tile, overlap = lr_tile, lr_overlap
    s, hr_tile = scale, tile * scale
    H, W = h * s, w * s
    multiple = getattr(model, "lr_multiple", 1)
    if not (tile >= 1 and 0 <= overlap < tile and tile % multiple == 0 and batch >= 1 and strip % s == 0):
        raise ConfigError(f"tile={tile}, overlap={overlap}, batch={batch} (LR pixels): need 0 <= overlap < tile, "
                          f"tile a multiple of {multiple}, batch >= 1")
    verify = amp == "auto"  # auto's bf16 is checked against float32 once per model (bf16_check)
    amp, channels_last = resolve_amp(amp, device, model)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wt = taper(hr_tile, overlap * s)
    row_sums, col_sums = np.zeros(H, np.float32), np.zeros(W, np.float32)  # sum of the tiles' weights per row / column
    for r in rows:
        row_sums[r * s:(r + tile) * s] += wt[:min(tile, h - r) * s]
    for c in cols:
        col_sums[c * s:(c + tile) * s] += wt[:min(tile, w - c) * s]
    blender = StripBlender((H, W), row_sums, col_sums, strip)
    w2d = np.outer(wt, wt)
    valid_lr = np.isfinite(lst)
    tiles = [(r, c) for r in rows for c in cols if valid_lr[r:r + tile, c:c + tile].any()]  # all-NaN tiles: skipped
    model.eval()
    start, total = time.time(), len(rows) * len(cols)

    def masked(upto):  # the finished strips, no-data pixels set to NaN
        for y0, y1, rows_out in blender.finished(upto):
            holes = hole_mask(lst[y0 // s:y1 // s], s, None if guidance is None else guidance[:, y0:y1])
            if progress and y1 == H:  # before the last strip: its consumer need not ask for more
                seconds = time.time() - start
                print(f"\r  tiles {total}/{total}  {H * W / 1e6:.1f} Mpx in {seconds:.1f} s "
                      f"({H * W / 1e6 / max(seconds, 1e-9):.3g} Mpx/s)", file=sys.stderr, flush=True)
            yield np.where(holes, np.float32(np.nan), rows_out)

    for b in range(0, len(tiles), batch):
        chunk = tiles[b:b + batch]
        x = torch.from_numpy(np.stack([_window(lst, r, c, tile) for r, c in chunk]))[:, None].to(device)
        g = None
        if guidance is not None:
            g = torch.from_numpy(np.stack([_window(guidance, r * s, c * s, hr_tile) for r, c in chunk])).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            g = None if g is None else g.contiguous(memory_format=torch.channels_last)
        if verify and amp == "bf16":
            amp = bf16_check(model, normalizer, x, g)
        pred = engine.downscale(model, normalizer, x, g, amp)[:, 0].float().cpu().numpy()
        for (r, c), p in zip(chunk, pred):
            th, tw = min(tile, h - r) * s, min(tile, w - c) * s  # a padded tile (scene smaller than it) is cut back
            blender.add(r * s, c * s, w2d[:th, :tw] * p[:th, :tw])
        if progress:
            done = b + len(chunk) + total - len(tiles)  # skipped (all no-data) tiles count as done
            rate = done / total * H * W / max(time.time() - start, 1e-9)
            print(f"\r  tiles {done}/{total}  {rate / 1e6:.3g} Mpx/s", end="", file=sys.stderr, flush=True)
        more = b + batch < len(tiles)
        yield from masked(tiles[b + batch][0] * s if more else H)
    yield from masked(H)  # a scene without any valid LR pixel


def predict_array(model, normalizer, lst, guidance=None, scale=8, lr_tile=64, lr_overlap=16, batch=4,
                  device="cpu", amp="none", progress=False):
    """predict_rows assembled in memory: (h*scale, w*scale) float32 Kelvin (for small scenes and tests)."""
    strips = list(predict_rows(model, normalizer, lst, guidance, scale, lr_tile, lr_overlap, batch, device, amp, progress))
    return np.concatenate(strips) if strips else np.zeros((0, lst.shape[1] * scale), np.float32)



# --------------------------------------------------------------------------- precision


def cpu_has_bf16():
    """True when this CPU computes bf16 natively (AMX or AVX512-BF16; oneDNN's own check where torch has it)."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


BF16_MAX_RMSE_K = 0.01  # auto keeps bf16 only while it stays this close to float32


def bf16_check(model, normalizer, x, g):
    """'bf16' or 'none' for `model`: the first tile it sees is run both ways, once per model (the
    verdict is kept as model.bf16_rmse_k); bf16 is kept when the RMSE between the two is below
    BF16_MAX_RMSE_K. Most models are ~1e-3 K apart, but not all (tests/test_predict.py)."""
    if not hasattr(model, "bf16_rmse_k"):  # on one tile: the float32 forward costs ~2.5 bf16 ones
        x, g = x[:1], None if g is None else g[:1]
        a = engine.downscale(model, normalizer, x, g, "bf16").float()
        b = engine.downscale(model, normalizer, x, g, "none").float()
        model.bf16_rmse_k = float(torch.sqrt(torch.mean((a - b) ** 2)))
        if model.bf16_rmse_k >= BF16_MAX_RMSE_K:
            print(f"note: --amp auto: bf16 differs from float32 by {model.bf16_rmse_k:.3f} K RMSE on the first tiles "
                  f"(> {BF16_MAX_RMSE_K} K); running in float32", file=sys.stderr)
    return "bf16" if model.bf16_rmse_k < BF16_MAX_RMSE_K else "none"


def resolve_amp(amp, device, model=None):
    """--amp -> (autocast dtype name for engine.downscale, channels_last). 'none': float32. 'bf16':
    bf16 autocast with model and inputs in channels_last. 'auto': bf16 where the device computes it
    natively (CUDA with bf16, a CPU with AMX / AVX512-BF16) and the model has weights (parameter-free
    interpolation gains nothing), float32 elsewhere. Puts the model in channels_last when used."""
    if amp not in ("none", "auto", "bf16"):
        raise ConfigError(f"amp={amp!r}: expected none, auto or bf16")
    device = torch.device(device)
    if amp == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu_has_bf16()
        weights = model is None or any(True for _ in model.parameters())
        amp = "bf16" if native and weights else "none"
    if amp == "none":
        return "none", False
    if model is not None:
        model.to(memory_format=torch.channels_last)
    return "bf16", True



# --------------------------------------------------------------------------- coarse consistency of a stream


def consistent_rows(strips, lr_lst, scale, mode, halo=3):
    """engine.make_consistent on a stream of output row strips (each a multiple of `scale` rows, as
    predict_rows yields them), equal to applying it to the whole blended scene: each strip is
    corrected inside a window with `halo` coarse rows of the neighbouring strips' (uncorrected)
    prediction above and below, which covers the bicubic residual's 4-tap support; the nearest
    pass is per block. Host memory: two strips. lr_lst (h, w) K."""
    if mode == "none":
        yield from strips
        return
    if mode == "atpk":  # kriging reads the whole scene's residual (its variogram, its neighbours): in memory
        whole = np.concatenate(list(strips))
        fixed = engine.make_consistent(torch.from_numpy(whole)[None, None], torch.from_numpy(lr_lst)[None, None], mode)
        rows = fixed[0, 0].numpy()
        yield from (rows[y:y + ROW_STRIP] for y in range(0, len(rows), ROW_STRIP))
        return
    margin, top = halo * scale, 0  # top: the first output row of `current`
    tail = None  # the last `margin` rows of the previous strip, uncorrected
    strips = iter(strips)
    current = next(strips, None)
    while current is not None:
        following = next(strips, None)
        parts = ([] if tail is None else [tail]) + [current] + ([] if following is None else [following[:margin]])
        window, start = np.concatenate(parts), top - (0 if tail is None else len(tail))
        lr = lr_lst[start // scale:(start + len(window)) // scale]
        fixed = engine.make_consistent(torch.from_numpy(window)[None, None], torch.from_numpy(lr)[None, None], mode)
        offset = top - start
        yield fixed[0, 0, offset:offset + len(current)].numpy()
        tail, top, current = current[-margin:], top + len(current), following

