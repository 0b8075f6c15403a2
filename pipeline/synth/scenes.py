"""Ground truth of synthetic scenes: the caption grammar and a checker for captions.

The vocabulary below is the one place that says which words name a colour, a
shape, a size, a position or a relation; pipeline/synth/captions.py writes
captions from these tables and check_caption() reads them back, so the two
cannot disagree.

A caption is read as a sequence of symbols (unknown words are ignored):
    object    = [size] colour [size] shape        "a small red circle", "big blue box"
    position  = "on the left", "in the middle", "at the top", ...
    relation  = object ("left of" | "right of" | "beside" ...) object
    order     = "from left to right" (objects listed left to right)
A position attaches to the object before it ("a red circle on the left"), or,
at the start of a clause, to the object after it ("on the left is a red circle").
"""

import json
import os
import re

from pipeline.errors import CapgenError
from pipeline.shards.shardset import read_manifest

COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
# The first word of each tuple is the usual one; synth picks the others less often.
SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "heart": ("heart",),
}
SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "to the left"),
    "right": ("on the right", "on the right side", "to the right"),
    "center": ("in the middle", "in the center", "in the centre"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
}
RELATION_PHRASES = {
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
    "beside": ("beside", "next to"),
}
ORDER_PHRASES = ("from left to right",)
CONJUNCTIONS = ("and",)
# Words synth may add that carry no object information (the parser ignores them).
BACKGROUND_WORDS = {"noise": ("speckled", "grainy"), "gradient": ("shaded", "gradient"), "stripes": ("striped",)}

SHAPES = tuple(SHAPE_WORDS)
SIZES = tuple(SIZE_WORDS)
POSITIONS = tuple(POSITION_PHRASES)

# The second style's words (`capgen synth --style other`, pipeline/synth/other.py): other colours,
# shapes and a third size. The checker reads both styles' words; the tables above stay the
# first style's, whose draws they fix.
OTHER_COLOURS = ("orange", "pink", "cyan", "brown", "black", "lime")
OTHER_SHAPE_WORDS = {
    "hexagon": ("hexagon",),
    "pentagon": ("pentagon",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
    "ring": ("ring", "hoop"),
    "crescent": ("crescent", "moon"),
}
OTHER_SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium sized"),
    "large": ("large", "big", "huge"),
}
OTHER_BACKGROUND_WORDS = {"checks": ("checkered", "chequered"), "dots": ("dotted",), "plain": ("plain", "pale")}


def _phrase_table():
    table = {}
    for colour in COLOURS + OTHER_COLOURS:
        table[(colour,)] = ("colour", colour)
    for kind, words in (
        ("shape", SHAPE_WORDS),
        ("shape", OTHER_SHAPE_WORDS),
        ("size", SIZE_WORDS),
        ("size", OTHER_SIZE_WORDS),
    ):
        for name, synonyms in words.items():
            for word in synonyms:
                table[tuple(word.split())] = (kind, name)
    for kind, phrases in (("pos", POSITION_PHRASES), ("rel", RELATION_PHRASES)):
        for name, variants in phrases.items():
            for phrase in variants:
                table[tuple(phrase.split())] = (kind, name)
    for phrase in ORDER_PHRASES:
        table[tuple(phrase.split())] = ("order", None)
    for word in CONJUNCTIONS:
        table[(word,)] = ("and", None)
    return table


PHRASES = _phrase_table()
_LONGEST = max(len(key) for key in PHRASES)


def symbols(caption):
    """Caption -> list of (kind, value), longest phrase first; other words dropped."""
    words = re.findall(r"[a-z]+", caption.lower())
    out, i = [], 0
    while i < len(words):
        for n in range(min(_LONGEST, len(words) - i), 0, -1):
            hit = PHRASES.get(tuple(words[i : i + n]))
            if hit:
                out.append(hit)
                i += n
                break
        else:
            i += 1
    return out


def parse_caption(caption):
    """Caption -> {"objects": [{colour, shape, size, positions}], "relations": [(i, rel, j)],
    "order": bool, "broken": bool}. broken: a word that fits no object or clause."""
    items, objects, pending, broken = [], [], {}, False
    for kind, value in symbols(caption):
        if kind in ("colour", "size"):
            if kind in pending:
                broken = True
            pending[kind] = value
        elif kind == "shape":
            objects.append(
                {"colour": pending.get("colour"), "shape": value, "size": pending.get("size"), "positions": []}
            )
            items.append(("obj", len(objects) - 1))
            pending = {}
        else:
            if pending:
                broken = True
                pending = {}
            items.append((kind, value))
    broken = broken or bool(pending)

    relations, order = [], False
    for k, (kind, value) in enumerate(items):
        before = items[k - 1] if k > 0 else None
        after = items[k + 1] if k + 1 < len(items) else None
        if kind == "rel":
            if before and after and before[0] == "obj" and after[0] == "obj":
                relations.append((before[1], value, after[1]))
            else:
                broken = True
        elif kind == "pos":
            if before and before[0] == "obj":
                objects[before[1]]["positions"].append(value)
            elif (before is None or before[0] == "and") and after and after[0] == "obj":
                objects[after[1]]["positions"].append(value)
            else:
                broken = True
        elif kind == "order":
            order = True
    return {"objects": objects, "relations": relations, "order": order, "broken": broken}


def _x_centre(obj):
    x, _, w, _ = obj["bbox"]
    return x + w / 2


def _match(mentions, truth):
    """Mention index -> scene object index: same colour and shape, else the only
    unused object of that shape, else of that colour; None when ambiguous."""
    match, used = {}, set()
    keys = (
        lambda m, o: m["colour"] == o["colour"] and m["shape"] == o["shape"],
        lambda m, o: m["shape"] == o["shape"],
        lambda m, o: m["colour"] == o["colour"],
    )
    for same in keys:
        for i, mention in enumerate(mentions):
            if i in match:
                continue
            found = [j for j, obj in enumerate(truth) if j not in used and same(mention, obj)]
            if len(found) == 1:
                match[i] = found[0]
                used.add(found[0])
    return match


def _positions(parsed, match, truth):
    """(every stated position, relation and order right, the mention indices whose position is stated)."""
    mentions = parsed["objects"]
    positions = not parsed["broken"]
    named = set()
    for i, mention in enumerate(mentions):
        for position in mention["positions"]:
            positions &= i in match and truth[match[i]]["position"] == position
            named.add(i)
    for a, rel, b in parsed["relations"]:
        if a not in match or b not in match:
            positions = False
            continue
        xa, xb = _x_centre(truth[match[a]]), _x_centre(truth[match[b]])
        if rel == "left_of":
            positions &= xa < xb
        elif rel == "right_of":
            positions &= xa > xb
        if rel != "beside":
            named.update((a, b))
    if parsed["order"]:
        if len(match) == len(mentions):
            xs = [_x_centre(truth[match[i]]) for i in range(len(mentions))]
            positions &= all(x0 < x1 for x0, x1 in zip(xs, xs[1:]))
        else:
            positions = False
        named.update(range(len(mentions)))
    return positions, named


def check_caption(caption, scene):
    """Is the caption true to the scene?

    Returns {"colours_shapes": every scene object named once with its colour and shape,
    nothing else named; "sizes": every stated size right; "positions": every stated
    position, relation and order right; "complete": every object's position stated
    (directly, by a left/right relation, or by "from left to right");
    "all": colours_shapes and sizes and positions}.
    """
    parsed = parse_caption(caption)
    mentions, truth = parsed["objects"], scene["objects"]
    match = _match(mentions, truth)

    colours_shapes = (
        not parsed["broken"]
        and len(mentions) == len(truth)
        and len(match) == len(mentions)
        and all(
            mentions[i]["colour"] == truth[j]["colour"] and mentions[i]["shape"] == truth[j]["shape"]
            for i, j in match.items()
        )
    )
    sizes = all(
        m["size"] is None or (i in match and m["size"] == truth[match[i]]["size"]) for i, m in enumerate(mentions)
    )

    positions, named = _positions(parsed, match, truth)
    complete = colours_shapes and len(named) == len(mentions)
    return {
        "colours_shapes": colours_shapes,
        "sizes": sizes,
        "positions": positions,
        "complete": complete,
        "all": colours_shapes and sizes and positions,
    }


def attribute_accuracy(captions, scenes):
    """Share of captioned images whose caption names every object's colour, shape and
    position correctly (and says nothing false). captions: {image_id: caption}."""
    if not captions:
        return 0.0
    hits = 0
    for image_id, caption in captions.items():
        if image_id not in scenes:
            raise CapgenError(f"scenes: no scene for image id {image_id}")
        result = check_caption(caption, scenes[image_id])
        hits += result["all"] and result["complete"]
    return hits / len(captions)


ATTRIBUTES = ("colour", "shape", "size", "position", "count")


def attribute_judgements(caption, scene):
    """Is each attribute of the caption right? Mentions are matched to scene objects as in
    check_caption (same colour and shape, else the only object of that shape, else of that colour).

      colour:   at least one object named, and every named object has a scene object
                matched to it with the colour the caption gives (no colour given is wrong);
      shape:    the same for the shape;
      size:     every stated size is the matched object's (a caption stating none is right);
      position: the caption parses, every stated position, left/right relation and
                "from left to right" order is true, and every named object's position is
                stated (directly, by a left/right relation or by the order);
      count:    as many objects named as the scene holds;
      all:      all five, which is check_caption's all and complete (attribute_accuracy).
    """
    parsed = parse_caption(caption)
    mentions, truth = parsed["objects"], scene["objects"]
    match = _match(mentions, truth)

    def same(key):
        return bool(mentions) and all(i in match and m[key] == truth[match[i]][key] for i, m in enumerate(mentions))

    positions, named = _positions(parsed, match, truth)
    out = {
        "colour": same("colour"),
        "shape": same("shape"),
        "size": all(
            m["size"] is None or (i in match and m["size"] == truth[match[i]]["size"]) for i, m in enumerate(mentions)
        ),
        "position": positions and len(named) == len(mentions),
        "count": len(mentions) == len(truth),
    }
    out["all"] = all(out.values())
    return out


def attribute_scores(captions, scenes):
    """{attribute: share of captioned images whose caption has it right} for ATTRIBUTES and
    "all" (attribute_judgements); captions: {image_id: caption}. No captions: all 0.0."""
    totals = dict.fromkeys((*ATTRIBUTES, "all"), 0)
    for image_id, caption in captions.items():
        if image_id not in scenes:
            raise CapgenError(f"scenes: no scene for image id {image_id}")
        for key, right in attribute_judgements(caption, scenes[image_id]).items():
            totals[key] += right
    return {key: total / len(captions) if captions else 0.0 for key, total in totals.items()}


def read_scenes(path):
    """OUT/annotations/scenes_{split}.json -> {image_id: scene}."""
    try:
        with open(path) as f:
            data = json.load(f)
        return {int(scene["image_id"]): scene for scene in data["scenes"]}
    except OSError as err:
        raise CapgenError(f"{path}: cannot read ({err.strerror})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CapgenError(f"{path}: not a scenes file ({type(err).__name__}: {err})") from None


def default_scenes(shard_set):
    """The scene truth of the dataset a shard set folder was built from: annotations/scenes_SPLIT.json
    under the COCO root and split its manifest's build_args record, or None when they record none
    or the file is not there. A relative root is relative to where the build ran: the working
    folder, or a folder above the set (the first that has the file)."""
    args = read_manifest(shard_set).get("build_args") or {}
    root, split = args.get("coco_root"), args.get("split")
    if not root or not split:
        return None
    name = os.path.join(root, "annotations", f"scenes_{split}.json")
    folders, folder = [""], os.path.abspath(shard_set)
    while os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
        folders.append(folder)
    return next((os.path.join(f, name) for f in folders if os.path.isfile(os.path.join(f, name))), None)
