"""One image file -> one square RGB JPEG, the shard builder's inner loop.

pipeline/imaging/decode.py decodes (DCT-scaled where it can) and orients; this
module fits the pixels to the square (stretch, center-crop or pad) and encodes
them. The resize is pipeline/imaging/resample.py: Pillow's antialiased bicubic in
Pillow's own fixed-point arithmetic (for 640x480 -> 256x256 the same bytes as
PIL's BICUBIC), in C loops over whole rows (pipeline/imaging/_resample.c), one
thread: about 0.5 ms for 640x480 -> 256x256, several times faster than PIL, and
no torch on the shard builder's path (`capgen bench shards --resize` measures
the candidates).
"""

import numpy as np
import simplejpeg

from pipeline.imaging import resample
from pipeline.imaging.decode import decode

RESIZE_MODES = ("stretch", "center-crop", "pad")
QUALITY = 90


def convert(data, size, mode="stretch", quality=QUALITY):
    """Image file bytes -> (JPEG bytes of a size x size RGB image, source width, height).

    The width and height are the source's as displayed (after EXIF orientation).
    """
    pixels, width, height = decode(data, size, mode)
    pixels = fit(pixels, size, mode)
    return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420"), width, height


def versions():
    """The libraries that decide the output bytes (a resumed build checks them)."""
    import PIL

    return {
        "simplejpeg": simplejpeg.__version__,
        "resize": "pillow-bicubic-exact",
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def fit(pixels, size, mode="stretch"):
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: stretch, center-crop or pad (black)."""
    h, w = pixels.shape[:2]
    if mode == "stretch":
        return resize(pixels, size, size)
    if mode == "center-crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return resize(pixels[top : top + side, left : left + side], size, size)
    if mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
        out = np.zeros((size, size, 3), dtype=np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top : top + nh, left : left + nw] = resize(pixels, nh, nw)
        return out
    raise ValueError(f"resize mode {mode!r} not in {RESIZE_MODES}")


def resize(pixels, height, width):
    """uint8 [H, W, 3] -> uint8 [height, width, 3]: PIL's antialiased bicubic in PIL's
    arithmetic (pipeline.resample); a shape already right comes back unchanged (made contiguous)."""
    if pixels.shape[:2] == (height, width):
        return np.ascontiguousarray(pixels)
    return resample.resize(pixels, height, width)
