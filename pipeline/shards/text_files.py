"""A shard set's text files: vocab.json and tokens.npz, written beside the shards
(and again by `capgen vocab`) so that text settings never re-encode images."""

import os

from pipeline.errors import writing
from pipeline.folder_lock import folder_lock
from pipeline.shards.shardset import read_captions, read_manifest, write_manifest
from pipeline.text import TokenTable, Vocabulary


def write_text(out, captions_by_id, preset, min_freq, captions_per_image, vocab_from=None):
    """vocab.json (built from these captions, or the given training vocabulary) and
    tokens.npz over these images; returns the manifest's text section."""
    ids = sorted(captions_by_id)
    if vocab_from:
        vocab = Vocabulary.load(vocab_from)
    else:
        vocab = Vocabulary.build((c for i in ids for c in captions_by_id[i]), preset, min_freq)
    with writing(os.path.join(out, "vocab.json")):
        vocab.save(os.path.join(out, "vocab.json"))
    table = TokenTable.build(captions_by_id, vocab, captions_per_image)
    with writing(os.path.join(out, "tokens.npz")):
        table.save(os.path.join(out, "tokens.npz"))
    return {
        "vocab": "vocab.json",
        "tokens": "tokens.npz",
        "vocab_size": len(vocab),
        "preset": vocab.preset,
        "min_freq": vocab.min_freq,
        "max_len": vocab.max_len,
        "captions_per_image": captions_per_image,
        "vocab_from": vocab_from,
    }


def rebuild_text(shard_dir, preset=None, min_freq=None, vocab=None, captions_per_image=None):
    """`capgen vocab`: vocab.json and tokens.npz again from the captions in the shards.
    Options not given keep the set's; a set that borrowed a training vocabulary keeps
    it unless a new vocabulary, preset or min freq is asked for."""
    read_manifest(shard_dir)  # a shard set, before its folder's lock is taken (and the folder made)
    with folder_lock(shard_dir):
        return _rebuild_text(shard_dir, preset, min_freq, vocab, captions_per_image)


def _rebuild_text(shard_dir, preset, min_freq, vocab, captions_per_image):
    manifest = read_manifest(shard_dir)
    old = manifest.get("text", {})
    borrowed = old.get("vocab_from") if vocab is None and preset is None and min_freq is None else None
    preset = preset or old.get("preset", "seed")
    min_freq = min_freq if min_freq is not None else old.get("min_freq", 5)
    per_image = captions_per_image or old.get("captions_per_image", 5)
    captions = read_captions(shard_dir)
    source = os.path.join(shard_dir, "vocab.json") if borrowed else os.path.abspath(vocab) if vocab else None
    text = write_text(shard_dir, captions, preset, min_freq, per_image, source)
    manifest["text"] = dict(text, vocab_from=borrowed) if borrowed else text
    write_manifest(shard_dir, manifest)
    return manifest
