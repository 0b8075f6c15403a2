"""Synthetic COCO 2014 dataset: coloured shapes on muted textures, captions true to each scene.

    OUT/annotations/captions_{train,val}2014.json   COCO captions format
    OUT/annotations/scenes_{train,val}2014.json     ground truth: objects per image
    OUT/train2014/COCO_train2014_%012d.jpg, OUT/val2014/COCO_val2014_%012d.jpg
    OUT/dataset_coco.json                           Karpathy split format

Same seed, same bytes: every image draws from its own Generator([seed, index]), so the
result does not depend on the number of worker processes.
"""

import io
import json
import math
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError
from pipeline.synth import other
from pipeline.synth.captions import captions
from pipeline.synth.scenes import BACKGROUND_WORDS, COLOURS, SHAPES, SIZES

RGB = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 30),
    "purple": (135, 55, 175),
    "white": (245, 245, 245),
}
assert tuple(RGB) == COLOURS
BACKGROUNDS = tuple(BACKGROUND_WORDS)
JPEG_QUALITY = 90
MAX_ID = 600_000
# Karpathy's split of val2014: 5,000 val + 5,000 test of 40,504, the rest restval.
KARPATHY_EVAL_SHARE = 5000 / 40504

_CC = "http://creativecommons.org/licenses/"
LICENSES = [
    {"url": url, "id": k + 1, "name": name}
    for k, (url, name) in enumerate(
        (
            (_CC + "by-nc-sa/2.0/", "Attribution-NonCommercial-ShareAlike License"),
            (_CC + "by-nc/2.0/", "Attribution-NonCommercial License"),
            (_CC + "by-nc-nd/2.0/", "Attribution-NonCommercial-NoDerivs License"),
            (_CC + "by/2.0/", "Attribution License"),
            (_CC + "by-sa/2.0/", "Attribution-ShareAlike License"),
            (_CC + "by-nd/2.0/", "Attribution-NoDerivs License"),
            ("http://flickr.com/commons/usage/", "No known copyright restrictions"),
            ("http://www.usa.gov/copyright.shtml", "United States Government Work"),
        )
    )
]


# ---------------------------------------------------------------- scenes


def make_scene(rng, width, height):
    """Random scene: 1-3 objects with distinct (colour, shape), their size class,
    position label and bbox [x, y, w, h] (COCO style), plus a background kind.
    Objects are listed left to right."""
    n = rng.choice([1, 2, 3], p=[0.45, 0.5, 0.05])
    kinds = rng.choice(len(COLOURS) * len(SHAPES), size=n, replace=False)
    if n == 1:
        labels = [str(rng.choice(["left", "right", "center", "top", "bottom"]))]
        xs = {
            "left": (0.22, 0.32),
            "right": (0.68, 0.78),
            "center": (0.45, 0.55),
            "top": (0.4, 0.6),
            "bottom": (0.4, 0.6),
        }[labels[0]]
        ys = {"top": (0.15, 0.25), "bottom": (0.75, 0.85)}.get(labels[0], (0.38, 0.62))
        spans = [(xs, ys)]
    elif n == 2:
        labels = ["left", "right"]
        spans = [((0.2, 0.33), (0.3, 0.7)), ((0.67, 0.8), (0.3, 0.7))]
    else:
        labels = ["left", "center", "right"]
        spans = [((0.14, 0.19), (0.35, 0.65)), ((0.47, 0.53), (0.35, 0.65)), ((0.81, 0.86), (0.35, 0.65))]
    base = min(width, height)
    objects = []
    for kind, label, (xs, ys) in zip(kinds, labels, spans):
        size = str(rng.choice(SIZES))
        side = base * (rng.uniform(0.15, 0.19) if size == "small" else rng.uniform(0.31, 0.37))
        side *= 0.85 if n == 3 else 1.0
        half = side / 2
        margin = 0.02 * base
        cx = np.clip(rng.uniform(*xs) * width, half + margin, width - half - margin)
        cy = np.clip(rng.uniform(*ys) * height, half + margin, height - half - margin)
        objects.append(
            {
                "shape": SHAPES[kind % len(SHAPES)],
                "colour": COLOURS[kind // len(SHAPES)],
                "size": size,
                "position": label,
                "centre": (float(cx), float(cy)),
                "side": float(side),
                "angle": float(rng.uniform(-10, 10)),
            }
        )
        objects[-1]["bbox"] = _bbox(objects[-1])
    return {"background": str(rng.choice(BACKGROUNDS)), "objects": objects}


def _outline(shape, cx, cy, side, angle):
    """Polygon points of a shape centred at (cx, cy) filling a side x side box."""
    r = side / 2
    if shape == "square":
        pts = [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    elif shape == "triangle":
        pts = [(0, -1), (0.95, 0.75), (-0.95, 0.75)]
    elif shape == "star":
        pts = [
            (
                math.sin(k * math.pi / 5) * (1 if k % 2 == 0 else 0.42),
                -math.cos(k * math.pi / 5) * (1 if k % 2 == 0 else 0.42),
            )
            for k in range(10)
        ]
    elif shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        hx = 16 * np.sin(ts) ** 3
        hy = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
        pts = list(zip(hx / 17, (hy + 2.5) / 15))
    else:
        raise ValueError(shape)
    a = math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in pts]


def _muted(rng, value):
    """A low-saturation colour of the given brightness (0..1)."""
    hue = rng.uniform(0, 2 * math.pi)
    sat = rng.uniform(0.03, 0.15)
    rgb = value * (1 + sat * np.cos(hue - np.array([0, 2.094, 4.189])))
    return np.clip(rgb * 255, 0, 255).astype(np.float32)


def background(rng, kind, width, height):
    """Muted texture [H, W, 3] uint8: smooth noise, a linear gradient or soft stripes.
    Drawn at quarter size and scaled up (all three are smooth), then grain is added."""
    v0 = rng.uniform(0.38, 0.62)
    c0 = _muted(rng, v0)
    c1 = _muted(rng, np.clip(v0 + rng.uniform(-0.18, 0.18), 0.3, 0.7))
    w, h = max(width // 4, 8), max(height // 4, 8)
    if kind == "noise":
        cells = rng.random((h // 12 + 2, w // 12 + 2), dtype=np.float32)
        t = np.asarray(Image.fromarray(cells).resize((w, h), Image.BILINEAR))
    else:
        a = rng.uniform(0, math.pi)
        t = np.arange(w, dtype=np.float32)[None, :] * math.cos(a) + np.arange(h, dtype=np.float32)[:, None] * math.sin(
            a
        )
        if kind == "gradient":
            t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        else:
            period = rng.uniform(0.04, 0.12) * max(w, h)
            t = 0.5 + 0.5 * np.sin(t * (2 * math.pi / period))
    small = (c0 + t[..., None] * (c1 - c0)).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR)).copy()
    # Muted colours stay within [55, 230], so uint8 grain cannot wrap.
    img += rng.integers(0, 13, size=(height, width, 1), dtype=np.uint8)
    img -= 6
    return img


def _bbox(obj):
    cx, cy = obj["centre"]
    side = obj["side"]
    if obj["shape"] == "circle":
        box = [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]
    else:
        pts = _outline(obj["shape"], cx, cy, side, obj["angle"])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        box = [min(xs), min(ys), max(xs), max(ys)]
    return [round(box[0], 1), round(box[1], 1), round(box[2] - box[0], 1), round(box[3] - box[1], 1)]


def render(scene, rng, width, height):
    """Scene -> RGB PIL image."""
    img = Image.fromarray(background(rng, scene["background"], width, height))
    draw = ImageDraw.Draw(img)
    for obj in scene["objects"]:
        colour = tuple(int(c) for c in np.clip(np.array(RGB[obj["colour"]]) + rng.integers(-12, 13, size=3), 0, 255))
        cx, cy = obj["centre"]
        side = obj["side"]
        if obj["shape"] == "circle":
            draw.ellipse([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], fill=colour)
        else:
            draw.polygon(_outline(obj["shape"], cx, cy, side, obj["angle"]), fill=colour)
    return img


# A style's (make_scene, render, captions); "shapes" is the demo's.
STYLES = {"shapes": (make_scene, render, captions), "other": (other.make_scene, other.render, other.captions)}


# ---------------------------------------------------------------- dataset


@dataclass
class Layout:
    """Who is who in the dataset: drawn from the seed before any image is."""

    image_ids: list
    splits: list  # train2014 or val2014, train images first
    names: list  # file names
    ann_ids: list  # per image, one caption id per caption
    licenses: list
    captured: list  # unix times in 2013
    karpathy: list  # per val2014 image: val, test or restval
    n_train: int


def _karpathy_splits(rng, n_val):
    """val2014 -> Karpathy val / test / restval, in Karpathy's proportions."""
    n_eval = min(n_val // 2, max(1, round(n_val * KARPATHY_EVAL_SHARE))) if n_val else 0
    splits = ["val"] * n_eval + ["test"] * n_eval + ["restval"] * (n_val - 2 * n_eval)
    return [splits[i] for i in rng.permutation(n_val)]


def _layout(rng, images, val_fraction):
    n_val = min(images - 1, round(images * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0 and images >= 2:
        n_val = max(n_val, 1)
    n_train = images - n_val
    image_ids = (rng.choice(MAX_ID, size=images, replace=False) + 1).tolist()
    n_caps = rng.choice([5, 6, 7], size=images, p=[0.88, 0.1, 0.02]).tolist()
    ann_ids = (rng.choice(max(1_000_000, 10 * sum(n_caps)), size=sum(n_caps), replace=False) + 1).tolist()
    licenses = rng.integers(1, len(LICENSES) + 1, size=images).tolist()
    captured = rng.integers(1_356_998_400, 1_388_534_400, size=images).tolist()  # 2013
    karpathy = _karpathy_splits(rng, n_val)
    splits = ["train2014"] * n_train + ["val2014"] * n_val
    names = [f"COCO_{split}_{image_id:012d}.jpg" for split, image_id in zip(splits, image_ids)]
    ends = np.cumsum(n_caps).tolist()
    per_image = [ann_ids[end - n : end] for n, end in zip(n_caps, ends)]
    return Layout(image_ids, splits, names, per_image, licenses, captured, karpathy, n_train)


def _make_image(task):
    """Worker: draw, encode and write one image; return its scene and captions."""
    seed, index, path, width, height, n_captions, style = task
    rng = np.random.default_rng([seed, index])
    make, draw, words = STYLES[style]
    scene = make(rng, width, height)
    img = draw(scene, rng, width, height)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    texts = words(rng, scene, n_captions)
    objects = [{k: o[k] for k in ("shape", "colour", "size", "position", "bbox")} for o in scene["objects"]]
    return {"background": scene["background"], "objects": objects}, texts


def _make_images(out, layout, seed, width, height, workers, style):
    """[(scene, captions)] per image, the images written under out."""
    tasks = [
        (seed, i, os.path.join(out, split, name), width, height, len(ann_ids), style)
        for i, (split, name, ann_ids) in enumerate(zip(layout.splits, layout.names, layout.ann_ids))
    ]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(tasks) >= 200 else 1
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_make_image, tasks, chunksize=16))
    return [_make_image(task) for task in tasks]


def _write_json(path, data):
    with atomic_write(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))


def write_coco(out, layout, results, rng, width, height):
    """annotations/captions_SPLIT.json (COCO captions format) and scenes_SPLIT.json (the truth)."""
    coco = {split: {"images": [], "annotations": [], "scenes": []} for split in ("train2014", "val2014")}
    for i, (scene, texts) in enumerate(results):
        split, image_id, name = layout.splits[i], layout.image_ids[i], layout.names[i]
        date = np.datetime64(layout.captured[i], "s").astype(str).replace("T", " ")
        coco[split]["images"].append(
            {
                "license": layout.licenses[i],
                "file_name": name,
                "coco_url": f"http://capgen.invalid/{split}/{name}",
                "height": height,
                "width": width,
                "date_captured": date,
                "flickr_url": f"http://capgen.invalid/flickr/{image_id}.jpg",
                "id": image_id,
            }
        )
        coco[split]["annotations"] += [
            {"image_id": image_id, "id": ann_id, "caption": text} for text, ann_id in zip(texts, layout.ann_ids[i])
        ]
        coco[split]["scenes"].append({"image_id": image_id, **scene})
    info = {
        "description": "capgen synthetic shapes in the COCO 2014 captions format",
        "url": "http://capgen.invalid",
        "version": "1.0",
        "year": 2014,
        "contributor": "capgen synth",
        "date_created": "2014-01-01 00:00:00.000000",
    }
    for split, data in coco.items():
        # COCO files list images and captions in no particular order.
        images_json = [data["images"][k] for k in rng.permutation(len(data["images"]))]
        anns_json = [data["annotations"][k] for k in rng.permutation(len(data["annotations"]))]
        _write_json(
            os.path.join(out, "annotations", f"captions_{split}.json"),
            {"info": info, "images": images_json, "licenses": LICENSES, "annotations": anns_json},
        )
        scenes = sorted(data["scenes"], key=lambda s: s["image_id"])
        _write_json(os.path.join(out, "annotations", f"scenes_{split}.json"), {"scenes": scenes})


def write_karpathy(out, layout, results):
    """dataset_coco.json in Karpathy's split format."""
    n_train = layout.n_train
    # Karpathy's file lists val2014 images first; imgid is the position in the list.
    order = list(range(n_train, len(results))) + list(range(n_train))
    entries = []
    for imgid, i in enumerate(order):
        split = layout.splits[i]
        sentences = [
            {"tokens": re.findall(r"[a-z0-9]+", text.lower()), "raw": text, "imgid": imgid, "sentid": ann_id}
            for text, ann_id in zip(results[i][1], layout.ann_ids[i])
        ]
        entries.append(
            {
                "filepath": split,
                "sentids": layout.ann_ids[i],
                "filename": layout.names[i],
                "imgid": imgid,
                "split": "train" if split == "train2014" else layout.karpathy[i - n_train],
                "sentences": sentences,
                "cocoid": layout.image_ids[i],
            }
        )
    _write_json(os.path.join(out, "dataset_coco.json"), {"images": entries, "dataset": "coco"})


def synthesize(
    out: str | os.PathLike,
    images: int,
    seed: int,
    val_fraction: float = 0.2,
    width: int = 640,
    height: int = 480,
    workers: int | None = None,
    style: str = "shapes",
) -> dict:
    """Write the synthetic dataset (COCO 2014 layout, scenes, Karpathy splits) under out; same seed,
    same bytes, whatever the number of workers (processes; default: up to 8 cores for 200+ images, else 1).

    images: train2014 + val2014; val_fraction: the share in val2014; width, height: of every image;
    style: a STYLES name ("shapes": the demo's; "other": pipeline/synth/other.py's shapes, colours and words).
    Returns counts: {"images", "train2014", "val2014", "captions", "karpathy": {"val", "test", "restval"}}.
    CapgenError for bad sizes or counts, or a folder that cannot be written.

    Example::

        >>> capgen.synthesize("data", images=40, seed=0, width=64, height=48)
        {'images': 40, 'train2014': 32, 'val2014': 8, 'captions': 207, 'karpathy': {'val': 1, 'test': 1, 'restval': 6}}
    """
    if style not in STYLES:
        raise CapgenError(f"{out}: unknown style {style!r} (one of: {', '.join(STYLES)})")
    if images < 1:
        raise CapgenError(f"{out}: --images must be at least 1, got {images}")
    if not 0 <= val_fraction < 1:
        raise CapgenError(f"{out}: --val-fraction must be in [0, 1), got {val_fraction}")
    if width < 32 or height < 32:
        raise CapgenError(f"{out}: image size must be at least 32x32, got {width}x{height}")
    rng = np.random.default_rng(seed)
    layout = _layout(rng, images, val_fraction)
    try:
        for folder in ("train2014", "val2014", "annotations"):
            os.makedirs(os.path.join(out, folder), exist_ok=True)
    except OSError as err:
        raise CapgenError(f"{out}: cannot create the dataset folders ({err.strerror})") from None
    results = _make_images(out, layout, seed, width, height, workers, style)
    write_coco(out, layout, results, rng, width, height)
    write_karpathy(out, layout, results)
    return {
        "images": images,
        "train2014": layout.n_train,
        "val2014": images - layout.n_train,
        "captions": sum(len(a) for a in layout.ann_ids),
        "karpathy": {s: layout.karpathy.count(s) for s in ("val", "test", "restval")},
    }
