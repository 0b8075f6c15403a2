"""What a search leaves: each image's finished captions (Hyp), ranked, and the result a captioner
returns for an image. numpy only, no torch: model/nets/search.py and the ONNX runtime
(model/export/runtime.py) share it, so both rank and report captions alike.
"""

from dataclasses import dataclass

import numpy as np

from pipeline.text import PAD


@dataclass
class Hyp:
    tokens: list  # word ids then <end>; no <start>, no <pad>
    score: float  # sum of the log-probs of tokens (not length-normalised)
    alphas: np.ndarray  # [len(tokens), P] attention for each token


def ranked(tokens, scores, alphas, topk, length_norm):
    """Backtracked beams, numpy: tokens [B,k,L], scores [B,k] (best first), alphas [B,k,L,P] ->
    for each image its best `topk` Hyps; by the raw score, or by the score per token with length_norm."""
    out = []
    for b in range(tokens.shape[0]):
        hyps = []
        for j in range(tokens.shape[1]):
            n = int((tokens[b, j] != PAD).sum())
            hyps.append(Hyp(tokens[b, j, :n].tolist(), float(scores[b, j]), alphas[b, j, :n]))
        if length_norm:
            hyps.sort(key=lambda hyp: -hyp.score / len(hyp.tokens))
        out.append(hyps[:topk])
    return out


def caption_result(vocab, hyps, grid):
    """One image's Hyps (best first) -> {"captions": [{"text", "score"}], "words", "attention", "grid"}:
    words and attention (one [P] list per word, row-major over `grid`) of the best caption."""
    words = vocab.words(hyps[0].tokens)
    return {
        "captions": [{"text": vocab.decode(h.tokens), "score": h.score} for h in hyps],
        "words": words,
        "attention": hyps[0].alphas[: len(words)].tolist(),
        "grid": grid,
    }
