"""A decoded image -> the pixels a model sees, with numpy and Pillow alone (no JPEG library, no torch).

`to_rgb` makes any PIL mode RGB, `fit` fits uint8 pixels to the square (stretch,
center-crop or pad) with pipeline/imaging/resample.py (Pillow's bicubic, byte for
byte), and `model_input` does what a captioner does to a PIL image: EXIF orientation,
RGB, fit, scale to 0..1 and normalise per channel; `image_input` the same from a PIL
image or an image file, naming the file when it cannot be read. The shard builder
(pipeline/imaging/convert.py, decode.py), the torch Captioner and the ONNX runtime
all use these, so they see the same pixels.
"""

import os

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import CapgenError
from pipeline.imaging import resample

RESIZE_MODES = ("stretch", "center-crop", "pad")


def to_rgb(im):
    """Any PIL mode -> RGB. Transparent pixels are composited over white (their
    colour under alpha 0 is often black or garbage); 16-bit data keeps its top byte."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        im = Image.fromarray((np.asarray(im).clip(0, 65535) >> 8).astype(np.uint8))
    elif im.mode == "F":
        im = Image.fromarray(np.asarray(im).clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB") if im.mode != "RGB" else im


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


def model_input(img, size, mode, mean, std):
    """PIL image -> float32 [3, size, size]: upright (EXIF), RGB, fitted as the shard builder
    fits (`mode` one of RESIZE_MODES), scaled to 0..1, minus `mean`, over `std` (per channel)."""
    pixels = fit(np.asarray(to_rgb(ImageOps.exif_transpose(img))), size, mode)
    x = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    return (x - mean) / std


def image_input(img, size, mode, mean, std):
    """model_input of a PIL image or an image file (a path); CapgenError '<file>: cannot read
    image (cause)' when it cannot be read or decoded."""
    is_path = isinstance(img, (str, os.PathLike))
    name = os.fspath(img) if is_path else getattr(img, "filename", "")
    try:
        return model_input(Image.open(img) if is_path else img, size, mode, mean, std)
    except (OSError, ValueError) as err:
        raise CapgenError(f"{name or 'image'}: cannot read image ({err})") from None
