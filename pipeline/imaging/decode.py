"""Image file bytes -> upright RGB pixels: the first half of the shard builder's inner loop.

The fast path decodes with libjpeg-turbo through simplejpeg, at 1/2, 1/4 or 1/8
scale (DCT scaling) when the source is at least twice the target; other
scales (5/8, 3/8, ...) decode slower than full size, so they are never asked
for. Everything simplejpeg cannot read (PNG named .jpg, CMYK, recoverable JPEG
errors) goes through PIL. EXIF orientation is applied (simplejpeg ignores it).
A file that cannot become an image raises BadImage with a reason the builder
counts. pipeline/imaging/convert.py resizes and encodes what this decodes.
"""

import io
import struct

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from pipeline.imaging.pixels import to_rgb

MAX_PIXELS = 100_000_000  # larger sources are skipped ("too_large"), not decoded


class BadImage(Exception):
    """The file cannot become a sample; .reason is the manifest's skip reason."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BadImage("missing", path) from None
    except OSError as err:
        raise BadImage("unreadable", f"{path}: {err.strerror}") from None


def decode(data, size=None, mode="stretch"):
    """File bytes -> (uint8 [H, W, 3] RGB upright, source width, source height).

    With a target size, JPEGs may decode at 1/2, 1/4 or 1/8 scale, never below
    what `fit` needs; width and height are the full source's, as displayed."""
    if not data:
        raise BadImage("corrupt", "empty file")
    if data[:3] == b"\xff\xd8\xff":
        out = _decode_turbo(data, size, mode)
        if out is not None:
            pixels, width, height = out
            orientation = jpeg_orientation(data)
            if orientation >= 5:
                width, height = height, width
            return _orient(pixels, orientation), width, height
    return _decode_pil(data, size, mode)


def _decode_turbo(data, size, mode):
    """libjpeg-turbo, or None to let PIL try (CMYK, recoverable stream errors)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if height * width > MAX_PIXELS:
        raise BadImage("too_large", f"{width}x{height}")
    if colorspace in ("CMYK", "YCCK"):
        return None
    f = scale_factor(height, width, size, mode) if size else 1
    try:
        if f == 1:
            return simplejpeg.decode_jpeg(data, colorspace="RGB"), width, height
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // f), min_width=-(-width // f))
        return pixels, width, height
    except ValueError:  # PIL decides: it reads recoverable errors and names truncation
        return None


def scale_factor(height, width, size, mode="stretch"):
    """Largest of 1, 2, 4, 8 the source can be divided by and still cover the target."""
    need = max(height, width) if mode == "pad" else min(height, width)
    f = 8
    while f > 1 and need // f < size:
        f //= 2
    return f


def _decode_pil(data, size, mode):
    try:
        im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise BadImage("corrupt", "not an image PIL can identify") from None
    except Exception as err:  # noqa: BLE001 -- plugins raise anything on garbage headers
        raise _pil_error(err) from None
    if im.width * im.height > MAX_PIXELS:
        raise BadImage("too_large", f"{im.width}x{im.height}")
    try:
        width, height = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
        if size and im.format == "JPEG":
            f = scale_factor(im.height, im.width, size, mode)
            im.draft(im.mode, (-(-im.width // f), -(-im.height // f)))
        im.load()
        im = ImageOps.exif_transpose(im)
        return np.array(to_rgb(im)), width, height
    except Exception as err:  # noqa: BLE001 -- decoders raise OSError, SyntaxError, ValueError, ...
        raise _pil_error(err) from None


def _pil_error(err):
    if isinstance(err, Image.DecompressionBombError):
        return BadImage("too_large", str(err))
    reason = "truncated" if "truncat" in str(err).lower() else "corrupt"
    return BadImage(reason, f"{type(err).__name__}: {err}")


# ---------------------------------------------------------------- EXIF

_TRANSPOSE = {  # EXIF orientation -> numpy ops on [H, W, C], as PIL's exif_transpose
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a[::-1].transpose(1, 0, 2),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a[:, ::-1].transpose(1, 0, 2),
}


def _orient(pixels, orientation):
    op = _TRANSPOSE.get(orientation)
    return pixels if op is None else np.ascontiguousarray(op(pixels))


def jpeg_orientation(data):
    """The EXIF orientation tag (1..8) of a JPEG, read from its APP1 segment
    without decoding; 1 when absent or unreadable."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no EXIF before the pixels
            return 1
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\0\0":
            return _tiff_orientation(data[pos + 10 : pos + 2 + length])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff):
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
            if tag == 0x0112 and kind == 3:  # Orientation, SHORT
                (value,) = struct.unpack(order + "H", tiff[entry + 8 : entry + 10])
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error):
        pass
    return 1


# ---------------------------------------------------------------- geometry
