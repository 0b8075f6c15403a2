"""The fully padded reference decoder: every step for every caption, the loss masking the padding.

What the training step ran before the length-aware `Decoder.train_loss` (model/nets/decoder.py),
kept beside the benchmarks as a reference: `padded_forward` runs a Decoder's own modules
step by step over the padded batch (the search benchmark's per-image baseline), and
`caption_loss` is the masked loss of its logits, which train_loss matches in value and
gradients (tests/test_decoder.py). `trim_steps` cuts a batch to the steps its longest
caption needs, rounded up to a multiple of STEP_MULTIPLE.
"""

import torch
import torch.nn.functional as F

from model.nets.decoder import wide

STEP_MULTIPLE = 4  # trim_steps rounds a batch's steps up to a multiple of this (or the table's full length)


def padded_forward(decoder, features, tokens, lengths=None):
    """Teacher forcing. decoder (a Decoder), features [B,P,C], tokens [B,K,T] -> logits [B,K,T-1,V],
    alphas [B,K,T-1,P].

    `lengths` is not needed here (every step runs; `caption_loss` masks); it is accepted
    so callers can pass the batch as it comes.
    """
    B, K = tokens.shape[:2]
    ctx = decoder.prepare(features)
    # unbind: its backward is one stack, where per-step slicing would zero-fill [B,K,T,E] each step.
    embs = decoder.embedding(tokens[:, :, :-1]).unbind(dim=2)
    h = ctx.h[:, None].expand(B, K, -1)
    c = ctx.c[:, None].expand(B, K, -1)
    hs, alphas = [], []
    for emb in embs:
        h, c, alpha = decoder.advance(ctx, emb, h, c)
        hs.append(h)
        alphas.append(alpha)
    logits = decoder.fc(decoder.dropout(torch.stack(hs, dim=2)))
    return logits, torch.stack(alphas, dim=2)


def decode_steps(longest, full, multiple=STEP_MULTIPLE):
    """Decoder steps for a batch whose longest caption has `longest` tokens (<start>/<end> included):
    its longest-1 predictions rounded up to a multiple of `multiple`, at most `full` (T-1)."""
    return min(-(-(longest - 1) // multiple) * multiple, full)


def trim_steps(tokens, longest, multiple=STEP_MULTIPLE):
    """tokens [B,K,T] -> [B,K,steps+1]: only the columns the batch's `longest` caption needs
    (`decode_steps`); a view. Everything cut is <pad>, which the loss masks anyway."""
    return tokens[:, :, : decode_steps(int(longest), tokens.shape[2] - 1, multiple) + 1]


def caption_mask(lengths, steps):
    """[B, K] lengths (with <start>/<end>) -> [B, K, steps] bool: which predictions count."""
    return torch.arange(steps, device=lengths.device) < (lengths[..., None] - 1)


def caption_loss(logits, alphas, tokens, lengths, alpha_c=1.0):
    """Masked cross-entropy over the predicted words and <end>, plus the doubly
    stochastic attention term alpha_c * mean((1 - sum_t alpha)^2) over valid steps.
    Returns (loss, stats) with stats as detached tensors (no device sync)."""
    steps = logits.shape[2]
    mask = caption_mask(lengths, steps)
    targets = tokens[:, :, 1:].long()
    ce = F.cross_entropy(wide(logits.flatten(0, 2)), targets.flatten(), reduction="none").view_as(mask)
    n = mask.sum()
    ce = (ce * mask).sum() / n.clamp_min(1)
    att = alpha_c * ((1.0 - (wide(alphas) * mask[..., None]).sum(dim=2)) ** 2).mean()
    total = ce + att
    return total, {"loss": total.detach(), "ce": ce.detach(), "att": att.detach(), "tokens": n}
