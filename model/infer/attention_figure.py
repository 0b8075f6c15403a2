"""The Show, Attend and Tell figure: the image, then one panel per word with its attention map.

Each word's attention grid (h x w, over the image the model saw) is upsampled
bicubically to the image size and then smoothed with a Gaussian (sigma 0.3 cell),
so a coarse 8x8 grid reads as soft regions rather than tiles.
"""

import os
from collections import defaultdict, deque

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageFilter, ImageOps

from model.runs.checkpoint_config import fit_mode
from pipeline.atomic import atomic_write

COLUMNS = 5
PANEL_INCHES = 2.4
SHADE = 0.8  # how dark the unattended parts get
MAX_SIDE = 512  # panels are small; a 12-megapixel photo would only slow the figure down


def attention_region(size, resize_mode="stretch"):
    """The box [x0, y0, x1, y1] of an image of `size` (W, H) that the model's grid covers.

    stretch, pad: the whole image; center-crop: the centred square the captioner cut out.
    """
    width, height = size
    if fit_mode(resize_mode) == "center-crop":
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        return [x0, y0, x0 + side, y0 + side]
    return [0, 0, width, height]


def upsample(attention, grid, size, smooth=True):
    """attention [h*w] -> float32 [H, W] in [0, 1] (peak 1), size = (W, H) as PIL gives it."""
    h, w = grid
    values = np.asarray(attention, dtype=np.float32).reshape(h, w)
    peak = float(values.max())
    if peak > 0:
        values = values / peak
    # Bicubic in 8 bits is enough for a shade; PIL filters 'L' images fast and without new dependencies.
    cells = Image.fromarray(np.round(values * 255).astype(np.uint8), "L")
    big = cells.resize(size, Image.BICUBIC)
    if smooth:
        radius = 0.3 * min(size[0] / w, size[1] / h)
        big = big.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(big, dtype=np.float32) / 255.0


def shade_map(attention, grid, size, region):
    """Attention over the whole image [H, W]: upsampled inside `region`, 0 (unseen) outside."""
    x0, y0, x1, y1 = region
    shade = np.zeros((size[1], size[0]), dtype=np.float32)
    shade[y0:y1, x0:x1] = upsample(attention, grid, (x1 - x0, y1 - y0))
    return shade


def attention_figure(
    image: Image.Image, result: dict, resize_mode: str = "stretch", max_words: int | None = None
) -> Figure:
    """PIL image + one Captioner result -> matplotlib Figure (not drawn on any screen).

    resize_mode: the captioner's (`Captioner.image["resize_mode"]`); with "center-crop" the
    grid covers the centred square only and the sides stay dark.

    Example::

        >>> image = PIL.Image.open("photo.jpg")
        >>> result = captioner.caption([image])[0]
        >>> fig = capgen.attention_figure(image, result, captioner.image["resize_mode"])
        >>> fig.savefig("attention.png")
    """
    image = ImageOps.exif_transpose(image).convert("RGB")  # as the captioner saw it
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
    words = result["words"][:max_words] if max_words else result["words"]
    panels = 1 + len(words)
    cols = min(COLUMNS, panels)
    rows = -(-panels // cols)
    aspect = min(3.0, max(0.3, image.height / image.width))  # keep room for titles on strip-like images
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * (PANEL_INCHES * aspect + 0.4)))
    pixels = np.asarray(image)
    region = attention_region(image.size, resize_mode)
    best = result["captions"][0] if result["captions"] else {"text": "", "score": float("nan")}
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(pixels)
    axes[0].set_title(f"score {best['score']:.2f}", fontsize=9)
    for ax, word, attention in zip(axes[1:], words, result["attention"]):
        shade = shade_map(attention, result["grid"], image.size, region)
        ax.imshow(pixels)
        overlay = np.zeros(shade.shape + (4,), dtype=np.float32)
        overlay[..., 3] = SHADE * (1.0 - shade)
        ax.imshow(overlay)
        ax.set_title(word, fontsize=11)
    fig.suptitle(best["text"], fontsize=12)
    fig.tight_layout()
    return fig


def save_attention_figure(
    image: Image.Image, result: dict, path: str | os.PathLike, resize_mode: str = "stretch", dpi: int = 100
) -> str | os.PathLike:
    """Write the figure as PNG, atomically (as `capgen caption --attention`); returns path.

    Example::

        >>> capgen.save_attention_figure(image, captioner.caption([image])[0], "attention.png")
        'attention.png'
    """
    fig = attention_figure(image, result, resize_mode)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


def figure_paths(out, image_paths):
    """OUT.png for one image; OUT-<stem>.png for each of several (OUT-<stem>-2.png for a repeated stem)."""
    out = os.fspath(out)
    if len(image_paths) == 1:
        return [out]
    base, ext = os.path.splitext(out)
    seen, paths = {}, []
    for path in image_paths:
        stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
        seen[stem] = seen.get(stem, 0) + 1
        paths.append(f"{base}-{stem}{'' if seen[stem] == 1 else '-' + str(seen[stem])}{ext or '.png'}")
    return paths


def figure_writer(resize_mode, out, image_paths, echo=print):
    """A callback (path, image, result) for `capgen caption`: writes each image's figure, in order;
    resize_mode: the captioner's (`.image["resize_mode"]`)."""
    pending = defaultdict(deque)
    for path, fig_path in zip(image_paths, figure_paths(out, image_paths)):
        pending[path].append(fig_path)

    def write(path, image, result):
        fig_path = pending[path].popleft()
        save_attention_figure(image, result, fig_path, resize_mode)
        echo(f"{path}: attention figure {fig_path}")

    return write
