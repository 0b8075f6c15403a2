"""The second synthetic style (`capgen synth --style other`): a set the demo's recipe was not
tuned on, to check that it is general.

Unlike the first style (pipeline/synth/generator.py's make_scene and render, captions.py):
other shapes (hexagon, pentagon, cross, diamond, ring, crescent), other colours, three
sizes, smaller objects (a tenth to a third of the short side), 1 to 4 objects, light
checkered, dotted or plain backgrounds, and other wordings. The words are
pipeline/synth/scenes.py's OTHER_* tables, so `capgen eval` checks its captions with
the same checker and reads the same scenes_SPLIT.json (objects with shape, colour, size,
position and bbox [x, y, w, h], listed left to right).
"""

import math

import numpy as np
from PIL import Image, ImageDraw

from pipeline.synth.captions import captions as style_captions
from pipeline.synth.scenes import (
    OTHER_BACKGROUND_WORDS,
    OTHER_COLOURS,
    OTHER_SHAPE_WORDS,
    OTHER_SIZE_WORDS,
    POSITION_PHRASES,
    RELATION_PHRASES,
)

RGB = dict(
    zip(OTHER_COLOURS, ((245, 130, 20), (240, 105, 180), (20, 195, 215), (125, 70, 30), (25, 25, 25), (150, 215, 40)))
)
SHAPES = tuple(OTHER_SHAPE_WORDS)
SIZES = tuple(OTHER_SIZE_WORDS)
BACKGROUNDS = tuple(OTHER_BACKGROUND_WORDS)
SIDE = {"small": (0.11, 0.14), "medium": (0.18, 0.22), "large": (0.27, 0.32)}  # of the short side
COUNTS = (1, 2, 3, 4)
COUNT_P = (0.3, 0.35, 0.25, 0.1)
# x spans (share of the width) of each object, by count; y spans of one object by its label
X_SPANS = {
    2: ((0.18, 0.36), (0.64, 0.82)),
    3: ((0.13, 0.2), (0.45, 0.55), (0.8, 0.87)),
    4: ((0.1, 0.14), (0.35, 0.4), (0.6, 0.65), (0.86, 0.9)),
}
LABELS = {2: ("left", "right"), 3: ("left", "center", "right"), 4: ("left", "left", "right", "right")}
ONE = {"left": (0.2, 0.3), "right": (0.7, 0.8), "center": (0.45, 0.55), "top": (0.4, 0.6), "bottom": (0.4, 0.6)}
ONE_Y = {"top": (0.18, 0.26), "bottom": (0.74, 0.82)}


def make_scene(rng, width, height):
    """1-4 objects of distinct (colour, shape), left to right, each with its size class, position
    label, centre, side, angle and bbox; and a background kind."""
    n = int(rng.choice(COUNTS, p=COUNT_P))
    kinds = rng.choice(len(OTHER_COLOURS) * len(SHAPES), size=n, replace=False)
    if n == 1:
        labels = (str(rng.choice(tuple(ONE))),)
        spans = [(ONE[labels[0]], ONE_Y.get(labels[0], (0.35, 0.65)))]
    else:
        labels, spans = LABELS[n], [(xs, (0.3, 0.7)) for xs in X_SPANS[n]]
    base, objects = min(width, height), []
    for kind, label, (xs, ys) in zip(kinds, labels, spans):
        size = str(rng.choice(SIZES))
        side = base * rng.uniform(*SIDE[size]) * (0.8 if n == 4 else 1.0)
        half, margin = side / 2, 0.02 * base
        obj = {
            "shape": SHAPES[kind % len(SHAPES)],
            "colour": OTHER_COLOURS[kind // len(SHAPES)],
            "size": size,
            "position": label,
            "centre": (
                float(np.clip(rng.uniform(*xs) * width, half + margin, width - half - margin)),
                float(np.clip(rng.uniform(*ys) * height, half + margin, height - half - margin)),
            ),
            "side": float(side),
            "angle": float(rng.uniform(-15, 15)),
        }
        xs_, ys_ = zip(*outline(obj["shape"], *obj["centre"], side, obj["angle"]))
        obj["bbox"] = [
            round(min(xs_), 1),
            round(min(ys_), 1),
            round(max(xs_) - min(xs_), 1),
            round(max(ys_) - min(ys_), 1),
        ]
        objects.append(obj)
    return {"background": str(rng.choice(BACKGROUNDS)), "objects": objects}


def _polygon(k, start=-math.pi / 2):
    return [(math.cos(start + 2 * math.pi * i / k), math.sin(start + 2 * math.pi * i / k)) for i in range(k)]


def _unit_outline(shape):
    """The shape's outer polygon in [-1, 1]^2."""
    if shape == "hexagon":
        return _polygon(6, 0)
    if shape == "pentagon":
        return _polygon(5)
    if shape == "diamond":
        return [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    if shape == "cross":
        a = 0.32
        return [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
    if shape in ("ring", "crescent"):
        return _polygon(40)
    raise ValueError(shape)


def outline(shape, cx, cy, side, angle):
    """Outer polygon points of a shape centred at (cx, cy) filling a side x side box."""
    r, a = side / 2, math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in _unit_outline(shape)]


def background(rng, kind, width, height):
    """A light background [H, W, 3] uint8: checks, dots or plain, with a soft vignette and grain."""
    base = rng.uniform(185, 235) + rng.uniform(-12, 12, size=3)
    other = base - rng.uniform(18, 35)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "checks":
        cell = rng.uniform(0.05, 0.1) * min(width, height)
        mask = ((xx // cell + yy // cell) % 2)[..., None]
    elif kind == "dots":
        cell = rng.uniform(0.04, 0.07) * min(width, height)
        d = np.hypot(xx % cell - cell / 2, yy % cell - cell / 2)
        mask = (d < cell * 0.18)[..., None].astype(np.float32)
    else:
        mask = np.zeros((height, width, 1), np.float32)
    img = base + mask * (other - base)
    vignette = np.hypot((xx - width / 2) / width, (yy - height / 2) / height)[..., None]
    img = img - 40 * vignette + rng.normal(0, 3, size=(height, width, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def render(scene, rng, width, height):
    """Scene -> RGB PIL image: each shape filled with its colour through a mask (a ring's and a
    crescent's hole cut out of it, showing the background)."""
    img = Image.fromarray(background(rng, scene["background"], width, height))
    for obj in scene["objects"]:
        colour = tuple(int(c) for c in np.clip(np.array(RGB[obj["colour"]]) + rng.integers(-10, 11, size=3), 0, 255))
        (cx, cy), r = obj["centre"], obj["side"] / 2
        mask = Image.new("L", (width, height))
        draw = ImageDraw.Draw(mask)
        draw.polygon(outline(obj["shape"], cx, cy, obj["side"], obj["angle"]), fill=255)
        if obj["shape"] in ("ring", "crescent"):
            shift, hole = (0.0, 0.55 * r) if obj["shape"] == "ring" else (0.45 * r, 0.85 * r)
            a = math.radians(obj["angle"])
            hx, hy = cx + shift * math.cos(a), cy + shift * math.sin(a)
            draw.ellipse([hx - hole, hy - hole, hx + hole, hy + hole], fill=0)
        img.paste(colour, (0, 0), mask)
    return img


# ---------------------------------------------------------------- captions


def _pick(rng, words):
    return words[0] if len(words) == 1 or rng.random() < 0.6 else words[1 + rng.integers(len(words) - 1)]


def _np(rng, obj, size_p=0.35):
    words = [obj["colour"], _pick(rng, OTHER_SHAPE_WORDS[obj["shape"]])]
    if rng.random() < size_p:
        words.insert(0, _pick(rng, OTHER_SIZE_WORDS[obj["size"]]))
    return f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"


def _wordings(rng, objs):
    """(weight, wording) pairs for the scene's object count; wordings are lambdas so only the chosen one draws."""
    nps = [_np(rng, o, 0.35 if len(objs) < 3 else 0.2) for o in objs]
    pos = [_pick(rng, POSITION_PHRASES[o["position"]]) for o in objs]
    if len(objs) == 1:
        (A,), (p,) = nps, pos
        return [
            (3, lambda: f"we see {A} {p}"),
            (2, lambda: f"{p} we see {A}"),
            (2, lambda: f"only {A} {p}"),
            (1, lambda: f"this picture shows {A} {p}"),
            (1, lambda: f"{A} drawn {p}"),
        ]
    if len(objs) == 2:
        (L, R), (pl, pr) = nps, pos
        return [
            (3, lambda: f"we see {L} {pl} and {R} {pr}"),
            (2, lambda: f"{L} {_pick(rng, RELATION_PHRASES['left_of'])} {R}"),
            (2, lambda: f"{R} {_pick(rng, RELATION_PHRASES['right_of'])} {L}"),
            (1, lambda: f"{pl} {L} and {pr} {R}"),
            (1, lambda: f"{L} and {R} from left to right"),
        ]
    listed = ", ".join(nps[:-1]) + f" and {nps[-1]}"
    return [
        (3, lambda: f"from left to right {listed}"),
        (2, lambda: f"{listed} from left to right"),
        (1, lambda: f"a row of shapes from left to right: {listed}"),
    ]


def caption(rng, scene):
    """One caption true to the scene, in this style's wordings."""
    forms = _wordings(rng, scene["objects"])
    weights = np.array([w for w, _ in forms])
    text = forms[rng.choice(len(forms), p=weights / weights.sum())][1]()
    if rng.random() < 0.15:
        text += f" on a {_pick(rng, OTHER_BACKGROUND_WORDS[scene['background']])} background"
    return (text[0].upper() + text[1:] if rng.random() < 0.5 else text) + ("." if rng.random() < 0.5 else "")


def captions(rng, scene, count):
    """count captions, distinct where the wordings allow (the demo style's loop)."""
    return style_captions(rng, scene, count, write=caption)
