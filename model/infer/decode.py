"""Decode a data source with a trained encoder + decoder: greedy or beam captions per image.

Used by the trainer's validation (model/train/validate.py) and by model/eval/evaluate.py (COCO results).
"""

import torch
from tqdm import tqdm

from model.nets.caption_model import to_device
from model.nets.search import beam_search, greedy
from pipeline.loading.features import corrupt_input


@torch.no_grad()
def decode_source(encoder, decoder, loader, vocab, device, beam=1, limit=None, progress=False):
    """{image_id: best caption words} for a loader's images (greedy or beam search).

    progress: a tqdm bar on stderr (images/s, ETA) when stderr is a terminal. Non-finite
    features are a one-line error naming the source as corrupt input."""
    out = {}
    encoder.eval()
    total = loader.num_samples() if limit is None else min(limit, loader.num_samples())
    bar = tqdm(
        total=total, unit="img", desc="captions", disable=None if progress else True, dynamic_ncols=True, leave=False
    )
    try:
        for batch in loader:
            batch = to_device(batch, device)
            if "features" in batch and not torch.isfinite(batch["features"]).all():
                raise corrupt_input(loader.source.path)
            feats = batch["features"] if "features" in batch else encoder(batch["images"])
            ids = batch["image_ids"].tolist()
            if beam <= 1:
                tokens, _ = greedy(decoder, feats, vocab.max_len)
                words = [vocab.words(row) for row in tokens.tolist()]
            else:
                hyps = beam_search(decoder, feats, beam=beam, max_len=vocab.max_len, topk=1)
                words = [vocab.words(h[0].tokens) for h in hyps]
            out.update(zip(ids, words))
            bar.update(len(ids))
            if limit is not None and len(out) >= limit:
                break
    finally:
        bar.close()  # before any error is printed
    return out
