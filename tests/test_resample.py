"""pipeline.imaging.resample: Pillow's antialiased bicubic in C, checked against Pillow itself."""

import numpy as np
import pytest
from PIL import Image

from pipeline.imaging import resample
from pipeline.imaging._resample import horizontal, reduce_rows, transpose


def noisy(h, w, seed=0):
    """Random pixels: every rounding difference shows (no smooth area hides one)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pil_bicubic(a, height, width):
    return np.asarray(Image.fromarray(a).resize((width, height), Image.BICUBIC))


def test_builder_shape_is_pil_bicubic_bit_for_bit():
    a = noisy(480, 640)
    assert np.array_equal(resample.resize(a, 256, 256), pil_bicubic(a, 256, 256))


@pytest.mark.parametrize(
    "shape, target",
    [
        ((480, 640), (480, 256)),  # horizontal only, reducing
        ((480, 640), (256, 640)),  # vertical only, reducing
        ((37, 50), (37, 131)),  # horizontal only, enlarging
        ((37, 50), (200, 50)),  # vertical only, enlarging
        ((1, 4000), (1, 3)),  # a reduction by 1333: 2,667 taps
        ((5, 7), (1, 1)),
    ],
)
def test_one_axis_is_pil_bicubic_bit_for_bit(shape, target):
    a = noisy(*shape, seed=1)
    assert np.array_equal(resample.resize(a, *target), pil_bicubic(a, *target))


def test_both_axes_and_views():
    a = noisy(300, 500, seed=2)
    view = a[10:290:1, 20:480]  # not contiguous: rows are strided
    out = resample.resize(view, 120, 200)
    assert out.shape == (120, 200, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, resample.resize(np.ascontiguousarray(view), 120, 200))
    assert np.array_equal(out, resample.resize(view, 120, 200))  # deterministic


def test_weights_of_a_row_sum_to_one_in_fixed_point():
    starts, counts, weights = resample.coefficients(640, 256)
    sums = weights.sum(axis=1)
    assert np.abs(sums - (1 << resample.PRECISION_BITS)).max() <= counts.max()  # one rounding per tap
    assert starts[0] == 0 and starts[-1] + counts[-1] == 640


def test_each_result_is_its_own_array():
    """The passes reuse scratch buffers per shape; what comes back never is one."""
    a, b = noisy(300, 500, seed=3), noisy(300, 500, seed=4)
    first = resample.resize(a, 120, 200)
    kept = first.copy()
    second = resample.resize(b, 120, 200)
    assert np.array_equal(first, kept) and not np.shares_memory(first, second)


@pytest.mark.parametrize("height_in, row_bytes, height_out", [(480, 1923, 256), (50, 65, 200), (9, 63, 4)])
def test_vector_loop_equals_plain_loop_and_numpy(height_in, row_bytes, height_out):
    """Whole 64-byte blocks and a tail, enlarging and reducing: the same bytes each way
    (the numpy loop runs where the C extension was never built)."""
    src = np.random.default_rng(5).integers(0, 256, (height_in, row_bytes), dtype=np.uint8)
    starts, counts, weights = resample.coefficients(height_in, height_out)
    fast, plain, slow = (np.empty((height_out, row_bytes), np.uint8) for _ in range(3))
    reduce_rows(src, row_bytes, starts, counts, weights, weights.shape[1], fast)
    reduce_rows(src, row_bytes, starts, counts, weights, weights.shape[1], plain, False)
    resample._reduce_rows_numpy(src, row_bytes, starts, counts, weights, weights.shape[1], slow)
    assert np.array_equal(fast, plain) and np.array_equal(fast, slow)
    pil = pil_bicubic(src.reshape(height_in, -1, 3), height_out, row_bytes // 3) if row_bytes % 3 == 0 else None
    if pil is not None:
        assert np.array_equal(plain, pil.reshape(height_out, row_bytes))


def test_the_kernel_refuses_taps_outside_the_image():
    src, dst = np.zeros((10, 6), np.uint8), np.zeros((2, 6), np.uint8)
    starts, counts, weights = resample.coefficients(10, 2)
    with pytest.raises(ValueError, match="reach outside src"):
        horizontal(
            np.zeros((10, 3, 2), np.uint8),
            10,
            3,
            2,
            starts,
            counts,
            weights,
            weights.shape[1],
            np.zeros((10, 2, 2), np.uint8),
            2,
        )
    with pytest.raises(ValueError, match="reach outside src"):
        reduce_rows(src[:5], 6, starts, counts, weights, weights.shape[1], dst)
    with pytest.raises(ValueError, match="a row per output"):
        reduce_rows(src, 6, starts[:1], counts, weights, weights.shape[1], dst)
    with pytest.raises(ValueError, match="whole rows"):
        reduce_rows(src, 7, starts, counts, weights, weights.shape[1], dst)


@pytest.mark.parametrize("h, w", [(480, 640), (256, 480), (8, 8), (9, 17), (1, 1), (7, 100), (100, 7), (33, 47)])
@pytest.mark.parametrize("channels", [3, 1, 4])
def test_transpose_vector_and_plain(h, w, channels):
    """8 x 8 blocks and the edges around them, for RGB and other pixel sizes."""
    a = np.random.default_rng(6).integers(0, 256, (h, w, channels), dtype=np.uint8)
    for vector in (True, False):
        out = np.full((w, h, channels), 7, np.uint8)
        transpose(a, h, w, channels, out, vector)
        assert np.array_equal(out, a.transpose(1, 0, 2))


@pytest.mark.parametrize(
    "h, w, width, channels",
    [
        (480, 640, 256, 3),
        (130, 640, 256, 3),
        (64, 50, 131, 3),
        (65, 7, 1, 3),
        (7, 9, 5, 3),
        (70, 90, 40, 1),
        (70, 90, 40, 4),
    ],
)
def test_horizontal_pass_vector_plain_and_numpy(h, w, width, channels):
    """Strips of 64 rows and a shorter last one; the same bytes each way, and PIL's for RGB."""
    a = np.random.default_rng(7).integers(0, 256, (h, w, channels), dtype=np.uint8)
    starts, counts, weights = resample.coefficients(w, width)
    outs = [np.empty((h, width, channels), np.uint8) for _ in range(3)]
    horizontal(a, h, w, channels, starts, counts, weights, weights.shape[1], outs[0], width)
    horizontal(a, h, w, channels, starts, counts, weights, weights.shape[1], outs[1], width, False)
    resample._horizontal_numpy(a, h, w, channels, starts, counts, weights, weights.shape[1], outs[2], width)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    if channels == 3:
        assert np.array_equal(outs[0], pil_bicubic(a, h, width))
