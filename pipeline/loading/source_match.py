"""Train and val sources must agree: the same encoder and preprocessing, the same vocabulary.

Validation (and so early stopping and `best`) means nothing when the val features come
from another encoder, the val images are resized otherwise, or the val token ids name
other words: such a run refuses to start, naming both files.
"""

import os

import numpy as np

from pipeline.errors import CapgenError

# What a source records of how its inputs were made (feature cache attributes; a shard
# set's manifest has the image part).
IMAGE_KEYS = ("image_size", "resize_mode")
FEATURE_KEYS = ("encoder", "stop", "weights", "mean", "std", "grid")
# The encoder tensors compared to tell two encoders' weights apart (the first conv and the
# first residual block's: cheap to read, and two random inits of one architecture differ there).
ENCODER_PROBES = ("conv1.weight", "layer1.0.conv1.weight")


def preprocessing(source):
    """{key: value} of how `source`'s (a DataSource) model inputs were made."""
    made = {k: getattr(source, k) for k in IMAGE_KEYS}
    if source.kind == "features":
        made.update({k: source.cache.attrs.get(k) for k in FEATURE_KEYS})
    return made


def check_same_inputs(train, val):
    """Refuse a val source made otherwise than the train source (both DataSources)."""
    a, b = preprocessing(train), preprocessing(val)
    for key in [k for k in a if k in b]:
        if a[key] != b[key]:
            raise CapgenError(f"{val.path}: made with {key} {b[key]!r}, but {train.path} with {a[key]!r}")
    if train.kind == val.kind == "features" and not same_encoder_weights(
        train.cache.encoder_state(ENCODER_PROBES), val.cache.encoder_state(ENCODER_PROBES)
    ):
        raise CapgenError(f"{val.path}: features from other encoder weights than {train.path}")
    vocab_a, vocab_b = (os.path.join(os.path.dirname(s.tokens_path), "vocab.json") for s in (train, val))
    if os.path.abspath(vocab_a) != os.path.abspath(vocab_b) and _words(train) != _words(val):
        raise CapgenError(
            f"{vocab_b}: not the vocabulary of {vocab_a} (build the val set with --vocab TRAIN/vocab.json)"
        )


def _words(source):
    v = source.vocab()
    return v.itos, v.preset, v.max_len


def same_encoder_weights(a: dict, b: dict) -> bool:
    """Whether two encoders' tensors ({name: numpy array}, e.g. FeatureFile.encoder_state's)
    agree on the ENCODER_PROBES both hold (two random inits of one architecture do not)."""
    return all(np.array_equal(a[k], b[k]) for k in ENCODER_PROBES if k in a and k in b)
