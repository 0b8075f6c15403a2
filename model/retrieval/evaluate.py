"""`capgen eval --retrieval`: text-to-image recall with every caption of the images as a query.

The COCO 1K/5K protocol: the first N images of the source (all by default), each of
their reference captions a query against those N; R@K is the share of queries whose
own image ranks in the top K. Where scene truth exists (synthetic data), P@1 by the
scene is the share of queries whose top image holds every object the query names
(its shape, and its colour where one is named), over the queries that name one.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from tqdm import tqdm

from model.retrieval.index import encode_query
from model.retrieval.metrics import named_objects, recall_at, scene_has, source_ranks
from model.retrieval.source import load_index
from pipeline.errors import CapgenError
from pipeline.loading.source import DataSource
from pipeline.synth.scenes import default_scenes, read_scenes

QUERY_BATCH = 64  # queries scored in one pass over the images


def query_set(index, refs, vocab):
    """(encoded queries, their image rows, skipped count): every reference caption of the index's images."""
    queries, rows, skipped = [], [], 0
    for row, image_id in enumerate(index.image_ids.tolist()):
        if not refs.get(image_id):
            raise CapgenError(f"no reference captions for image id {image_id}")
        for caption in refs[image_id]:
            try:
                queries.append(encode_query(caption, vocab))
                rows.append(row)
            except CapgenError:  # a caption with no known word cannot be a query
                skipped += 1
    return queries, np.asarray(rows), skipped


def evaluate_retrieval(
    ckpt: str | os.PathLike,
    data: str | os.PathLike,
    images: int | None = None,
    scenes: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict:
    """R@1/5/10 (and P@1 by the scene when scenes exist) of text-to-image retrieval over `data`
    (a shard set or feature cache; its first `images` images when given).

    scenes: a scenes file (default: pipeline/synth/scenes.py's `default_scenes`). The result
    also holds the image, query and skipped-query counts, the speed, the text preset, and
    with scene truth "P@1_scene", "scene_queries" and "scenes" (the file used)."""
    index, captioner, _ = load_index(ckpt, data, device, progress=progress)
    if images is not None:
        index.keep(images)
    source = DataSource(data)
    queries, rows, skipped = query_set(index, source.references(), captioner.vocab)
    if not queries:
        raise CapgenError(f"{data}: no caption can be a query (no word the vocabulary knows)")
    scenes_path = scenes or default_scenes(source.shard_set)
    truth = read_scenes(scenes_path) if scenes_path else None
    ranks, top = [], []
    start = time.perf_counter()
    with tqdm(total=len(queries), unit="query", desc="retrieval", disable=not progress, dynamic_ncols=True) as bar:
        for i in range(0, len(queries), QUERY_BATCH):
            scores = index.score(queries[i : i + QUERY_BATCH]).numpy()
            ranks.append(source_ranks(scores, rows[i : i + QUERY_BATCH]))
            top.append(scores.argmax(axis=0))
            bar.update(scores.shape[1])
    seconds = time.perf_counter() - start
    ranks, top = np.concatenate(ranks), np.concatenate(top)
    out = {
        **recall_at(ranks),
        "images": len(index),
        "queries": len(queries),
        "skipped_queries": skipped,
        "queries_per_s": len(queries) / seconds,
        "seconds": seconds,
        "text_preset": captioner.vocab.preset,
    }
    if truth is not None:
        out.update(scene_precision(queries, top, index.image_ids, truth), scenes=os.fspath(scenes_path))
    return out


def scene_precision(queries, top_rows, image_ids, scenes):
    """{"P@1_scene", "scene_queries"}: over the queries that name an object."""
    hits = judged = 0
    for query, row in zip(queries, top_rows):
        named = named_objects(query.text)
        if not named:
            continue
        image_id = int(image_ids[row])
        if image_id not in scenes:
            raise CapgenError(f"scenes: no scene for image id {image_id}")
        judged += 1
        hits += scene_has(named, scenes[image_id])
    return {"P@1_scene": hits / judged if judged else 0.0, "scene_queries": judged}


def format_retrieval(r):
    lines = [f"{k:<10} {r[k]:.4f}" for k in ("R@1", "R@5", "R@10")]
    if "P@1_scene" in r:
        lines.append(f"{'P@1 scene':<10} {r['P@1_scene']:.4f}  ({r['scene_queries']} queries naming objects)")
    return "\n".join(lines)
