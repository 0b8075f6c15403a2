"""Caption a data source with a checkpoint, write COCO results json, score it.

The references are every raw caption of each image (the shard set's json
components), scored as the official toolkit does (model.metrics.coco_scores).
Where scene truth exists (`--scenes FILE`, or by default annotations/scenes_SPLIT.json
under the COCO root that the shard set's manifest records, when that file is there:
pipeline/synth/scenes.py's default_scenes),
each attribute's accuracy too (pipeline/synth/scenes.py's attribute_scores).
"""

from __future__ import annotations

import json
import os

import torch

from model.device import default_device
from model.eval.metrics import coco_scores
from model.infer.captioner import Captioner
from model.infer.decode import decode_source
from model.infer.source_check import check_source
from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError
from pipeline.loading.loader import MAX_LOST, check_lost, make_loader
from pipeline.loading.source import DataSource
from pipeline.synth.scenes import ATTRIBUTES, attribute_scores, default_scenes, read_scenes
from pipeline.text import Vocabulary

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def caption_source(
    ckpt: str | os.PathLike,
    data: str | os.PathLike,
    beam: int = 3,
    batch_size: int = 32,
    workers: int = 1,
    limit: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    max_lost: float = MAX_LOST,
) -> tuple[dict[int, str], DataSource, Vocabulary]:
    """({image_id: caption}, the DataSource, the checkpoint's Vocabulary) for every image (the
    first `limit`) of `data`, a shard set or feature cache that the checkpoint can read
    (model/infer/source_check.py), captioned by beam search of width `beam`. Unreadable
    shards, samples or cache blocks are warned about and left out, up to a share of max_lost."""
    device = default_device(device)
    captioner = Captioner.load(ckpt, device)
    encoder, decoder, vocab, config = captioner.encoder, captioner.decoder, captioner.vocab, captioner.config
    source = DataSource(data)
    check_source(source, config, encoder, ckpt)
    loader = make_loader(source, batch_size, shuffle=False, workers=min(workers, 1))
    words = decode_source(encoder, decoder, loader, vocab, device, beam, limit, progress)
    check_lost(os.fspath(data), *loader.lost(), max_lost)
    return {i: " ".join(w) for i, w in sorted(words.items())}, source, vocab


def write_results(path, captions):
    """COCO results format: [{"image_id", "caption"}], sorted by image id."""
    rows = [{"image_id": int(i), "caption": c} for i, c in sorted(captions.items())]
    with atomic_write(path, "w") as f:
        json.dump(rows, f, ensure_ascii=False)


def scene_scores(captions, path):
    """attribute_scores of the captions against the scenes file `path`."""
    scenes = read_scenes(path)
    missing = [i for i in captions if i not in scenes]
    if missing:
        raise CapgenError(f"{path}: no scene for image id {missing[0]} ({len(missing)} such ids)")
    return attribute_scores(captions, scenes)


def evaluate(
    ckpt: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    beam: int = 3,
    batch_size: int = 32,
    workers: int = 1,
    limit: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    scenes: str | os.PathLike | None = None,
    max_lost: float = MAX_LOST,
) -> dict:
    """Caption `data`, write `out` (COCO results), score against all raw references; as `capgen eval`.

    scenes: a scenes file (default: pipeline/synth/scenes.py's `default_scenes`). max_lost: the share of
    samples that may be unreadable (warned about, left out; more is an error). The result also holds "per_image"
    scores, the references ("refs"), the source, and "attributes" (attribute_scores, or
    None without scene truth) with "scenes" (the file used).

    Example::

        >>> r = capgen.evaluate("run/best", "shards/val", "run/results.json", beam=3)  # README's "From Python"
        >>> round(r["scores"]["CIDEr"], 2), r["images"], sorted(r["attributes"])
        (0.92, 60, ['all', 'colour', 'count', 'position', 'shape', 'size'])
    """
    captions, source, vocab = caption_source(ckpt, data, beam, batch_size, workers, limit, device, progress, max_lost)
    if not captions:
        raise CapgenError(f"{data}: no images")
    write_results(out, captions)
    refs = source.references()
    missing = [i for i in captions if not refs.get(i)]
    if missing:
        raise CapgenError(f"{source.shard_set}: no reference captions for image id {missing[0]}")
    per_image = {}
    scores = coco_scores(captions, refs, per_image)
    scenes = scenes or default_scenes(source.shard_set)
    attributes = scene_scores(captions, scenes) if scenes else None
    return {
        "scores": scores,
        "attributes": attributes,
        "scenes": scenes,
        "images": len(captions),
        "beam": beam,
        "text_preset": vocab.preset,
        "results": os.fspath(out),
        "captions": captions,
        "per_image": per_image,
        "refs": {i: refs[i] for i in captions},
        "source": source,
    }


def format_scores(scores, attributes=None):
    """One table row per metric, in the toolkit's order; then each attribute's accuracy and
    the all-right share, when given."""
    rows = [f"{k:<8} {scores[k]:.4f}" for k in METRICS if k in scores]
    if attributes:
        rows += [f"{k:<8} {attributes[k]:.4f}" for k in ATTRIBUTES]
        rows.append(f"{'all':<8} {attributes['all']:.4f}  (attribute accuracy: every attribute right)")
    return "\n".join(rows)
