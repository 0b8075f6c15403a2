"""Text-to-image retrieval metrics: recall at K of the source image, and precision at 1
judged by the scene (synthetic images, pipeline/synth/scenes.py)."""

import numpy as np

from pipeline.synth.scenes import parse_caption

RECALL_AT = (1, 5, 10)


def source_ranks(scores, truth_rows):
    """scores [N, Q] (higher is better), truth_rows [Q]: each query's source image row
    -> 0-based rank of that image (how many images score strictly higher)."""
    scores = np.asarray(scores)
    truth = scores[np.asarray(truth_rows), np.arange(scores.shape[1])]
    return (scores > truth[None]).sum(axis=0)


def recall_at(ranks, ks=RECALL_AT):
    """{"R@k": share of queries whose source image is among the top k}."""
    ranks = np.asarray(ranks)
    return {f"R@{k}": float((ranks < k).mean()) if len(ranks) else 0.0 for k in ks}


def named_objects(caption):
    """The (colour, shape) pairs a caption names; colour None where it names a shape alone."""
    return [(o["colour"], o["shape"]) for o in parse_caption(caption)["objects"]]


def scene_has(named, scene):
    """Does the scene hold every object named (same shape, and same colour where one is named)?"""
    objects = [(o["colour"], o["shape"]) for o in scene["objects"]]
    return all(any(shape == s and colour in (None, c) for c, s in objects) for colour, shape in named)
