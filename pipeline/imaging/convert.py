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

from pipeline.imaging.decode import decode
from pipeline.imaging.pixels import fit

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
