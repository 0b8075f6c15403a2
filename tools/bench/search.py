"""`capgen bench search`: text-to-image scoring speed on the demo model's shapes.

A synthetic feature cache of N rows of resnet18-layer3 features (8x8 grid, 256 channels;
random values: the weights and features do not change the arithmetic) and a random
256-d decoder. Timed in the same run:
- ours: one query against all N images (ImageIndex: blocks of images, no loop per image);
- baseline: the obvious loop, teacher forcing over the padded batch (tools/bench/padded_decoder.py's
  padded_forward) on one image at a time (over a subset, as images/s), and the ratio;
- Q queries in one pass against Q passes of one query each (what the server's batcher
  gains), and the ratio.
"""

import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from model.device import default_device
from model.nets.decoder import Decoder
from model.retrieval.index import ImageIndex, Query
from pipeline.loading.features import FeatureFile, FeatureWriter
from tools.bench.padded_decoder import padded_forward
from tools.bench.timing import best_of, seconds

GRID, CHANNELS, DIMS, VOCAB = 64, 256, 256, 60
QUERY = [1, *range(4, 10), 2]  # <start>, six words, <end>: "a red circle left of a blue square" is 8


def synthetic_cache(path, n, seed=0):
    rng = np.random.default_rng(seed)
    writer = FeatureWriter(
        path, n, GRID, CHANNELS, {"encoder": "resnet18", "stop": "layer3", "image_size": 128, "shard_set": ""}
    )
    for i in range(0, n, 500):
        rows = min(500, n - i)
        writer.write(np.arange(i, i + rows), rng.standard_normal((rows, GRID, CHANNELS), dtype=np.float32))
    writer.close()


def per_image(decoder, features, tokens, device):
    """The baseline: teacher forcing over the padded batch (padded_forward), one image at a time."""
    with torch.inference_mode():
        for row in features:
            logits, _ = padded_forward(decoder, row[None].to(device, torch.float32), tokens)
            F.log_softmax(logits.float(), -1).gather(3, tokens[:, :, 1:, None]).mean()


def run(images=5000, queries=8, baseline_images=200, rounds=3, device=None, threads=None):
    device = default_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    decoder = Decoder(VOCAB, CHANNELS, DIMS, DIMS, DIMS, dropout=0.3).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "features.h5")
        synthetic_cache(path, images)
        cache, held = FeatureFile(path), {}
        load_s = seconds(lambda: held.update(features=cache.read(0, images)), device)
        features = held["features"]
        prepare_s = seconds(
            lambda: held.update(index=ImageIndex(decoder, features, cache.image_ids, device=device)), device
        )
    index = held["index"]
    one = [Query("q", QUERY, [])]
    many = [Query(f"q{i}", QUERY, []) for i in range(queries)]
    tokens = torch.tensor(QUERY, device=device)[None, None]
    subset = torch.from_numpy(features[:baseline_images])
    one_s, base_s = best_of(
        [lambda: index.score(one), lambda: per_image(decoder, subset, tokens, device)], rounds, 1, device
    )
    batched_s, serial_s = best_of(
        [lambda: index.score(many), lambda: [index.score(one) for _ in many]], max(1, rounds - 1), 0, device
    )
    ours, base = images / one_s, baseline_images / base_s
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "images": images,
        "query_tokens": len(QUERY),
        "prepare_s": prepare_s,
        "load_s": load_s,
        "one_query_s": one_s,
        "images_per_s": ours,
        "baseline_images_per_s": base,
        "ratio": ours / base,
        "queries": queries,
        "batched_queries_per_s": queries / batched_s,
        "serial_queries_per_s": queries / serial_s,
        "batch_ratio": serial_s / batched_s,
    }


def report(r):
    return "\n".join(
        [
            f"search on {r['device']} ({r['threads']} threads): {r['images']} images of 8x8x256 features, "
            f"256-d decoder, a query of {r['query_tokens']} tokens; cache read in {r['load_s']:.2f} s, "
            f"index prepared in {r['prepare_s']:.2f} s",
            f"one query: {r['one_query_s']:.3f} s = {r['images_per_s']:.0f} images/s; per-image padded_forward loop "
            f"{r['baseline_images_per_s']:.0f} images/s; ratio {r['ratio']:.1f}x",
            f"{r['queries']} queries in one pass: {r['batched_queries_per_s']:.2f} queries/s; one at a time "
            f"{r['serial_queries_per_s']:.2f} queries/s; ratio {r['batch_ratio']:.2f}x",
        ]
    )
