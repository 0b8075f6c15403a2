"""model/nets/search.py's greedy and batched beam search in numpy, over any decoder step.

`step(prev [B,G] int64, h [B,G,H], c [B,G,H]) -> (log_probs [B,G,V] float32, alpha [B,G,P], h, c)`
is one decoder step for every image and group (the ONNX runtime's: model/export/runtime.py).
Step for step the same search as the torch one: <pad> and <start> never emitted, a
caption open after max_len words closed with <end>, an ended beam kept with its score
frozen; scores summed in float32 as torch sums them, so the same inputs give the same captions.
"""

import numpy as np

from model.nets.hyps import ranked
from pipeline.text import END, MAX_LEN, PAD, START


def _mask(logp, last):
    """Forbid <pad>/<start>; on the last step allow only <end>. In place."""
    if last:
        end = logp[..., END].copy()
        logp[...] = -np.inf
        logp[..., END] = end
    else:
        logp[..., PAD] = -np.inf
        logp[..., START] = -np.inf
    return logp


def greedy(step, h0, c0, max_len=MAX_LEN):
    """h0, c0 [B,H] (the decoder's initial state) -> tokens [B,L] (words, <end>, then <pad>),
    alphas [B,L,P] (zeros after <end>); L <= max_len + 1."""
    h, c = h0[:, None], c0[:, None]
    prev = np.full((h0.shape[0], 1), START, dtype=np.int64)
    done = np.zeros(prev.shape, dtype=bool)
    tokens, alphas = [], []
    for t in range(max_len + 1):
        logp, alpha, h, c = step(prev, h, c)
        tok = np.where(done, PAD, _mask(logp, t == max_len).argmax(axis=2))
        tokens.append(tok)
        alphas.append(np.where(done[..., None], np.float32(0), alpha))
        done = done | (tok == END)
        prev = tok
        if done.all():
            break
    return np.concatenate(tokens, axis=1), np.concatenate(alphas, axis=1)


def top(values, k):
    """values [B, N] -> (indices, values) [B, k] of each row's k largest, largest first
    (equal values: the lower index first)."""
    part = np.argpartition(-values, k - 1, axis=1)[:, :k] if k < values.shape[1] else np.argsort(-values, axis=1)
    part_values = np.take_along_axis(values, part, axis=1)
    order = np.lexsort((part, -part_values), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_values, order, axis=1)


def beam_search(step, h0, c0, beam=3, max_len=MAX_LEN, topk=None, length_norm=False):
    """h0, c0 [B,H] -> for each image its best `topk` (default: all `beam`) Hyps
    (model/nets/hyps.py), best first; ranked by the sum of log-probs, or per token with length_norm."""
    B, k = h0.shape[0], beam
    h = np.repeat(h0[:, None], k, axis=1)
    c = np.repeat(c0[:, None], k, axis=1)
    prev = np.full((B, k), START, dtype=np.int64)
    scores = np.full((B, k), -np.inf, dtype=np.float32)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first
    done = np.zeros((B, k), dtype=bool)
    hist = []  # per step: (token [B,k], parent [B,k], alpha [B,k,P])
    for t in range(max_len + 1):
        logp, alpha, h, c = step(prev, h, c)
        logp = _mask(logp, t == max_len)
        V = logp.shape[2]
        logp[done] = -np.inf  # an ended beam continues only with <pad>, at no cost
        logp[done, PAD] = 0.0
        idx, scores = top((scores[..., None] + logp).reshape(B, k * V), k)
        parent, tok = idx // V, idx % V
        h = np.take_along_axis(h, parent[..., None], axis=1)
        c = np.take_along_axis(c, parent[..., None], axis=1)
        alpha = np.take_along_axis(alpha, parent[..., None], axis=1)
        done = np.take_along_axis(done, parent, axis=1) | (tok == END)
        hist.append((tok, parent, alpha))
        prev = tok
        if done.all():
            break
    tokens, alphas = _backtrack(hist)
    return ranked(tokens, scores, alphas, topk or k, length_norm)


def _backtrack(hist):
    """Follow parents from the last step: tokens [B,k,L], alphas [B,k,L,P]."""
    beam = np.broadcast_to(np.arange(hist[0][0].shape[1]), hist[0][0].shape)
    tokens, alphas = [], []
    for tok, parent, alpha in reversed(hist):
        tokens.append(np.take_along_axis(tok, beam, axis=1))
        alphas.append(np.take_along_axis(alpha, beam[..., None], axis=1))
        beam = np.take_along_axis(parent, beam, axis=1)
    return np.stack(tokens[::-1], axis=2), np.stack(alphas[::-1], axis=2)
