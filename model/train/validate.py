"""Validation: decode the val source and score it with BLEU-1..4 (the trainer, each epoch)."""

import warnings

from model.eval.metrics import bleu
from model.infer.decode import decode_source
from pipeline.errors import CapgenError
from pipeline.text import clean


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
