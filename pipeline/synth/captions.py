"""Captions of synthetic scenes: true to the scene, in varied human-like wordings.

The words come from the tables in pipeline/synth/scenes.py, whose checker reads them back.
"""

import numpy as np

from pipeline.synth.scenes import BACKGROUND_WORDS, POSITION_PHRASES, RELATION_PHRASES, SHAPE_WORDS, SIZE_WORDS


def _pick(rng, words, usual=0.65):
    """The first word most of the time, otherwise one of the others."""
    if len(words) == 1 or rng.random() < usual:
        return words[0]
    return words[1 + rng.integers(len(words) - 1)]


def _noun_phrase(rng, obj, size_p=0.4):
    words = [obj["colour"], _pick(rng, SHAPE_WORDS[obj["shape"]])]
    if rng.random() < size_p:
        words.insert(0, _pick(rng, SIZE_WORDS[obj["size"]], usual=0.6))
    article = "an" if words[0][0] in "aeiou" else "a"
    return f"{article} {' '.join(words)}"


def _pos(rng, obj):
    return _pick(rng, POSITION_PHRASES[obj["position"]], usual=0.6)


def _rel(rng, name):
    return _pick(rng, RELATION_PHRASES[name], usual=0.5)


PREFIXES = ("a picture of", "an image of", "a photo of")


# Each returns (weight, wording) pairs; wordings are lambdas so only the chosen one draws.
def _one(rng, objs):
    A, pos = _noun_phrase(rng, objs[0]), _pos(rng, objs[0])
    return [
        (3, lambda: f"{A} {pos}"),
        (2, lambda: f"there is {A} {pos}"),
        (1.5, lambda: f"{pos} there is {A}"),
        (1, lambda: f"{A} is {pos}"),
        (1, lambda: f"{A} {rng.choice(['sitting', 'placed', 'shown'])} {pos}"),
        (1, lambda: f"{rng.choice(PREFIXES)} {A} {pos}"),
        (1, lambda: f"{pos} is {A}"),
    ]


def _two(rng, objs):
    left, right = objs
    L, R = _noun_phrase(rng, left), _noun_phrase(rng, right)
    pl, pr = _pos(rng, left), _pos(rng, right)
    near = _rel(rng, "beside")
    return [
        (3, lambda: f"{L} {_rel(rng, 'left_of')} {R}"),
        (2, lambda: f"{R} {_rel(rng, 'right_of')} {L}"),
        (3, lambda: f"{L} {pl} and {R} {pr}"),
        (1, lambda: f"{R} {pr} and {L} {pl}"),
        (2, lambda: f"there is {L} {pl} and {R} {pr}"),
        (1.5, lambda: f"{pl} is {L} and {pr} is {R}"),
        (1, lambda: f"{L} {near} {R}" if rng.random() < 0.5 else f"{R} {near} {L}"),
        (0.5, lambda: f"{L} and {R} from left to right"),
        (0.5, lambda: f"from left to right: {L} and {R}"),
        (0.5, lambda: f"two shapes: {L} {pl} and {R} {pr}"),
        (1, lambda: f"{rng.choice(PREFIXES)} {L} {_rel(rng, 'left_of')} {R}"),
    ]


def _three(rng, objs):
    L, C, R = (_noun_phrase(rng, o, size_p=0.25) for o in objs)
    pl, pc, pr = (_pos(rng, o) for o in objs)
    return [
        (2, lambda: f"{L}, {C} and {R} from left to right"),
        (1, lambda: f"from left to right: {L}, {C} and {R}"),
        (2, lambda: f"{L} {pl}, {C} {pc} and {R} {pr}"),
        (1, lambda: f"three shapes: {L} {pl}, {C} {pc} and {R} {pr}"),
    ]


def caption(rng, scene):
    """One caption true to the scene, in one of several human-like wordings."""
    objs = scene["objects"]
    forms = {1: _one, 2: _two, 3: _three}[len(objs)](rng, objs)
    weights = np.array([w for w, _ in forms])
    text = forms[rng.choice(len(forms), p=weights / weights.sum())][1]()
    if rng.random() < 0.1:
        text += f" against a {_pick(rng, BACKGROUND_WORDS[scene['background']])} background"
    if rng.random() < 0.85:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.75:
        text += "."
    if rng.random() < 0.04:
        text += " "
    return text


def captions(rng, scene, count, write=None):
    """count captions, distinct where the grammar allows; write(rng, scene) draws one
    (default: this style's caption; pipeline/synth/other.py passes its own)."""
    write = write or caption
    out = []
    for _ in range(count * 20):
        text = write(rng, scene)
        if text not in out:
            out.append(text)
        if len(out) == count:
            return out
    while len(out) < count:
        out.append(write(rng, scene))
    return out
