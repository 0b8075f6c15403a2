"""Caption a data source with a checkpoint, write COCO results json, score it.

The references are every raw caption of each image (the shard set's json
components), scored as the official toolkit does (model.metrics.coco_scores).
Where scene truth exists (`--scenes FILE`, or by default annotations/scenes_SPLIT.json
under the COCO root that the shard set's manifest records, when that file is there),
each attribute's accuracy too (pipeline/synth/scenes.py's attribute_scores).
"""

import json
import os

import numpy as np

from model.device import default_device
from model.eval.metrics import coco_scores
from model.infer.captioner import Captioner
from model.infer.decode import decode_source
from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError
from pipeline.loading.loader import make_loader
from pipeline.loading.source import DataSource
from pipeline.shards.shardset import read_manifest
from pipeline.synth.scenes import ATTRIBUTES, attribute_scores, read_scenes

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def check_features(source, encoder, config):
    """A feature cache must come from the checkpoint's encoder, or its features mean nothing."""
    attrs = source.cache.attrs
    want = {
        "encoder": config["encoder"]["name"],
        "stop": config["encoder"]["stop"],
        "image_size": config["image"]["size"],
    }
    for key, value in want.items():
        if attrs.get(key) != value:
            raise CapgenError(
                f"{source.path}: features from {key} {attrs.get(key)!r}, the checkpoint's encoder has {value!r}"
            )
    stored = source.cache.encoder_state()
    mine = encoder.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight"):
        if key in stored and key in mine and not np.array_equal(stored[key], mine[key].cpu().numpy()):
            raise CapgenError(
                f"{source.path}: features come from other {attrs['encoder']} weights than the checkpoint's encoder"
            )


def caption_source(ckpt, data, beam=3, batch_size=32, workers=1, limit=None, device=None, progress=False):
    """{image_id: caption} for every image of a shard set or feature cache; and the source."""
    device = default_device(device)
    captioner = Captioner.load(ckpt, device)
    encoder, decoder, vocab, config = captioner.encoder, captioner.decoder, captioner.vocab, captioner.config
    source = DataSource(data)
    if source.kind == "features":
        check_features(source, encoder, config)
    elif source.image_size != config["image"]["size"]:
        raise CapgenError(f"{data}: images are {source.image_size} px, the checkpoint wants {config['image']['size']}")
    loader = make_loader(source, batch_size, shuffle=False, workers=min(workers, 1))
    words = decode_source(encoder, decoder, loader, vocab, device, beam, limit, progress)
    return {i: " ".join(w) for i, w in sorted(words.items())}, source, vocab


def write_results(path, captions):
    """COCO results format: [{"image_id", "caption"}], sorted by image id."""
    rows = [{"image_id": int(i), "caption": c} for i, c in sorted(captions.items())]
    with atomic_write(path, "w") as f:
        json.dump(rows, f, ensure_ascii=False)


def default_scenes(source):
    """annotations/scenes_SPLIT.json of the COCO root recorded in the shard set's manifest, if it exists."""
    args = read_manifest(source.shard_set).get("build_args") or {}
    if not args.get("coco_root") or not args.get("split"):
        return None
    path = os.path.join(args["coco_root"], "annotations", f"scenes_{args['split']}.json")
    return path if os.path.isfile(path) else None


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
    device: str | None = None,
    progress: bool = False,
    scenes: str | os.PathLike | None = None,
) -> dict:
    """Caption `data`, write `out` (COCO results), score against all raw references; as `capgen eval`.

    scenes: a scenes file (default: `default_scenes`). The result also holds "per_image"
    scores, the references ("refs"), the source, and "attributes" (attribute_scores, or
    None without scene truth) with "scenes" (the file used).

    Example::

        >>> r = capgen.evaluate("run/best", "shards/val", "run/results.json", beam=3)  # README's "From Python"
        >>> round(r["scores"]["CIDEr"], 2), r["images"], sorted(r["attributes"])
        (0.92, 60, ['all', 'colour', 'count', 'position', 'shape', 'size'])
    """
    captions, source, vocab = caption_source(ckpt, data, beam, batch_size, workers, limit, device, progress)
    if not captions:
        raise CapgenError(f"{data}: no images")
    write_results(out, captions)
    refs = source.references()
    missing = [i for i in captions if not refs.get(i)]
    if missing:
        raise CapgenError(f"{source.shard_set}: no reference captions for image id {missing[0]}")
    per_image = {}
    scores = coco_scores(captions, refs, per_image)
    scenes = scenes or default_scenes(source)
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
