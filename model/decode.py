"""Decode a data source with a trained encoder + decoder; validation BLEU on it.

Used by the trainer (validation each epoch) and by model/evaluate.py (COCO results).
"""
import warnings

import torch
from tqdm import tqdm

from model.metrics import bleu
from model.search import beam_search, greedy
from model.step import to_device
from pipeline.errors import CapgenError
from pipeline.text import clean


@torch.no_grad()
def decode_source(encoder, decoder, loader, vocab, device, beam=1, limit=None, progress=False):
    """{image_id: best caption words} for a loader's images (greedy or beam search).

    progress: a tqdm bar on stderr (images/s, ETA) when stderr is a terminal."""
    out = {}
    encoder.eval()
    total = loader.num_samples() if limit is None else min(limit, loader.num_samples())
    bar = tqdm(total=total, unit="img", desc="captions", disable=None if progress else True, dynamic_ncols=True,
               leave=False)
    for batch in loader:
        batch = to_device(batch, device)
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
    bar.close()
    return out


def validate(encoder, decoder, loader, vocab, refs, device, beam=1, limit=None):
    """BLEU-1..4 (nltk, words cleaned with the vocabulary's preset) of decoded val captions."""
    words = decode_source(encoder, decoder, loader, vocab, device, beam, limit)
    ids = sorted(words)
    missing = [i for i in ids if not refs.get(i)]
    if missing:
        raise CapgenError(f"{loader.source.path}: no reference captions for image id {missing[0]}")
    hyps = [words[i] for i in ids]
    ref_words = [[clean(r, vocab.preset) for r in refs[i]] for i in ids]
    with warnings.catch_warnings():  # nltk warns at length about zero n-gram counts early on
        warnings.simplefilter("ignore")
        scores = bleu(hyps, ref_words)
    return scores, {i: " ".join(words[i]) for i in ids}
