"""Pillow's antialiased bicubic resize of uint8 RGB in Pillow's own arithmetic, about 8x faster.

The same fixed-point arithmetic as Pillow's Resample.c: its coefficients (the
same floating-point steps, so the same rounded weights), 22 bits of precision,
its rounding, and a horizontal pass then a vertical one with a uint8 image
between them. So the output equals `Image.fromarray(a).resize((w, h),
Image.BICUBIC)` bit for bit whenever Pillow also runs the horizontal pass first:
always for one axis, and for 640x480 -> 256x256 (Pillow 13 runs the vertical
pass first for some other shapes, by a rule of its own; the other order can
move a pixel by a few levels). Integer arithmetic only: the same bytes on any
CPU. Each pass is one C loop along whole rows of bytes (pipeline/imaging/_resample.c:
AVX2 where the CPU has it, and channels need no special case); the horizontal
pass runs as that loop between two transposes, a strip of rows at a time. One
thread.
"""

import functools
import threading
import warnings

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's, for 8-bit images
SUPPORT = 2.0  # the bicubic kernel's, in source pixels when not reducing


def _bicubic(x, a=-0.5):
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.cache
def coefficients(size_in, size_out):
    """(first source index, tap count, int32 weights [size_out, taps]) of one axis,
    computed as Pillow's precompute_coeffs and normalize_coeffs_8bpc do (same order
    of floating-point operations, so the same rounded weights)."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = SUPPORT * filterscale
    taps = int(np.ceil(support)) * 2 + 1
    starts = np.zeros(size_out, np.int64)
    counts = np.zeros(size_out, np.int64)
    weights = np.zeros((size_out, taps), np.int32)
    ss = 1.0 / filterscale
    for i in range(size_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), size_in) - lo
        k = [_bicubic((x + lo - center + 0.5) * ss) for x in range(n)]
        total = 0.0
        for v in k:
            total += v
        if total != 0.0:
            k = [v / total for v in k]
        starts[i], counts[i] = lo, n
        weights[i, :n] = [int(v * (1 << PRECISION_BITS) + (-0.5 if v < 0 else 0.5)) for v in k]
    return starts, counts, weights


def _reduce_rows_numpy(src, row_bytes, starts, counts, weights, taps, dst):
    """pipeline/imaging/_resample.c's reduce_rows in numpy (the same integers, far slower),
    for a source checkout whose C extension was never built."""
    src = np.frombuffer(src, np.uint8).reshape(-1, row_bytes)
    rows = np.minimum(starts[:, None] + np.arange(taps), len(src) - 1)  # taps past counts weigh 0
    acc = np.einsum("ok,okn->on", weights.astype(np.int64), src[rows].astype(np.int64)) + (1 << (PRECISION_BITS - 1))
    dst.reshape(-1, row_bytes)[:] = np.clip(acc >> PRECISION_BITS, 0, 255)


def _horizontal_numpy(src, h, w, c, starts, counts, weights, taps, dst, width):
    """pipeline/imaging/_resample.c's horizontal in numpy: a row pass between two transposes."""
    flipped = np.ascontiguousarray(np.frombuffer(src, np.uint8).reshape(h, w, c).transpose(1, 0, 2))
    reduced = np.empty((width, h, c), np.uint8)
    _reduce_rows_numpy(flipped, h * c, starts, counts, weights, taps, reduced)
    dst.reshape(h, width, c)[:] = reduced.transpose(1, 0, 2)


try:
    from pipeline.imaging._resample import horizontal, reduce_rows
except ImportError:
    warnings.warn(
        "pipeline.imaging._resample is not built (pip install -e . builds it): resizing with numpy, "
        "about a hundred times slower",
        stacklevel=2,
    )
    horizontal, reduce_rows = _horizontal_numpy, _reduce_rows_numpy


def _vertical(pixels, height, out=None):
    """uint8 [H, W, C] contiguous -> [height, W, C] (into out when given)."""
    h, w, c = pixels.shape
    starts, counts, weights = coefficients(h, height)
    out = np.empty((height, w, c), np.uint8) if out is None else out
    reduce_rows(pixels, w * c, starts, counts, weights, weights.shape[1], out)
    return out


def _horizontal(pixels, width, out=None):
    """uint8 [H, W, C] contiguous -> [H, width, C] (into out when given)."""
    h, w, c = pixels.shape
    starts, counts, weights = coefficients(w, width)
    out = np.empty((h, width, c), np.uint8) if out is None else out
    horizontal(pixels, h, w, c, starts, counts, weights, weights.shape[1], out, width)
    return out


# The image between the two passes, kept per thread for the next image of the same shape:
# freed and allocated anew, it page-faults again each time (glibc hands large blocks back
# to the kernel), which costs more than a pass.
_scratch = threading.local()


def _between(h, width, c):
    if getattr(_scratch, "shape", None) != (h, width, c):
        _scratch.shape = (h, width, c)
        _scratch.array = np.empty((h, width, c), np.uint8)
    return _scratch.array


def resize(pixels, height, width):
    """uint8 [H, W, 3] -> uint8 [height, width, 3] (a new array), Pillow's BICUBIC (antialiased)."""
    h, w, c = pixels.shape
    out = np.ascontiguousarray(pixels)
    if w != width:
        out = _horizontal(out, width, _between(h, width, c) if h != height else None)
    if h != height:
        out = _vertical(out, height)
    return out
