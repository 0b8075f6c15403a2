"""Greedy and beam search, and sampling, over a whole batch of images at once.

Every step is one decoder call on [B, k] (images x beams); no Python loop per
image, so each image's result is the same alone or in any batch. <pad> and
<start> are never emitted; a caption still open after max_len words is closed
with <end> (its log-prob counted), as training captions were cut.
"""

import torch

from model.nets.hyps import ranked
from pipeline.text import END, MAX_LEN, PAD, START


def _mask(logp, last):
    """Forbid <pad>/<start>; on the last step allow only <end>. In place."""
    if last:
        end = logp[..., END].clone()
        logp.fill_(-torch.inf)
        logp[..., END] = end
    else:
        logp[..., PAD] = -torch.inf
        logp[..., START] = -torch.inf
    return logp


def _ended(logp, done):
    """An ended beam continues only with <pad>, at no cost: its row -inf but 0 at <pad>. In place
    (logp [B, k, V] is the step's largest tensor: no second one)."""
    logp.masked_fill_(done[..., None], -torch.inf)
    logp[..., PAD].masked_fill_(done, 0.0)
    return logp


class _eval:
    """Run the decoder in eval mode (no dropout) and restore its mode after."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.mode = self.module.training
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.mode)


@torch.inference_mode()
def greedy(decoder, features, max_len=MAX_LEN, stop_early=True):
    """features [B,P,C] -> tokens [B,L] (words, <end>, then <pad>), alphas [B,L,P] (zeros after <end>).

    L <= max_len + 1; the loop stops once every caption has ended (stop_early; on a GPU that
    check is a host sync per word: stop_early=False runs max_len + 1 steps without one).
    """
    with _eval(decoder):
        ctx = decoder.prepare(features)
        B = features.shape[0]
        h, c = ctx.h[:, None], ctx.c[:, None]
        prev = torch.full((B, 1), START, dtype=torch.long, device=features.device)
        done = torch.zeros(B, 1, dtype=torch.bool, device=features.device)
        tokens, alphas = [], []
        for t in range(max_len + 1):
            logp, alpha, h, c = decoder.step(ctx, prev, h, c)
            tok = _mask(logp, t == max_len).argmax(dim=2).masked_fill(done, PAD)
            tokens.append(tok)
            alphas.append(alpha.float().masked_fill(done[..., None], 0.0))
            done = done | (tok == END)
            prev = tok
            if stop_early and bool(done.all()):
                break
        return torch.cat(tokens, dim=1), torch.cat(alphas, dim=1)


@torch.inference_mode()
def beam_search(decoder, features, beam=3, max_len=MAX_LEN, topk=None, length_norm=False):
    """features [B,P,C] -> for each image, its best `topk` (default: all `beam`) Hyps (model/nets/hyps.py), best first.

    A beam that emits <end> stays in the beam with its score frozen and competes
    with the open ones until every beam of every image has ended. Hyp.score is the
    raw sum of log-probs; ranking is by that sum, or by sum / len(tokens) (counting
    <end>) when length_norm=True. beam=1 gives exactly the greedy caption.
    """
    with _eval(decoder):
        B, k = features.shape[0], beam
        dev = features.device
        ctx = decoder.prepare(features)
        h = ctx.h[:, None].expand(B, k, -1)
        c = ctx.c[:, None].expand(B, k, -1)
        prev = torch.full((B, k), START, dtype=torch.long, device=dev)
        scores = torch.full((B, k), -torch.inf, device=dev)
        scores[:, 0] = 0.0  # all beams start equal: expand only the first
        done = torch.zeros(B, k, dtype=torch.bool, device=dev)
        hist = []  # per step: (token [B,k], parent [B,k], alpha [B,k,P])
        for t in range(max_len + 1):
            logp, alpha, h, c = decoder.step(ctx, prev, h, c)
            logp = _ended(_mask(logp, t == max_len), done)
            V = logp.shape[2]
            scores, idx = logp.add_(scores[..., None]).view(B, k * V).topk(k, dim=1)
            parent, tok = idx // V, idx % V
            h = h.gather(1, parent[..., None].expand_as(h))
            c = c.gather(1, parent[..., None].expand_as(c))
            alpha = alpha.float().gather(1, parent[..., None].expand_as(alpha))
            done = done.gather(1, parent) | (tok == END)
            hist.append((tok, parent, alpha))
            prev = tok
            if bool(done.all()):
                break
        tokens, alphas = _backtrack(hist)
        return ranked(tokens.cpu().numpy(), scores.cpu().numpy(), alphas.cpu().numpy(), topk or k, length_norm)


def sample(decoder, features, k, max_len=MAX_LEN, generator=None, stop_early=None):
    """k captions per image drawn from the decoder's distribution, all B x k at once.

    features [B,P,C] -> tokens [B,k,L] (words, <end>, then <pad>), logp [B,k,L]: the
    log-prob of each drawn token (0 after <end>). Runs in the decoder's current mode
    (dropout on in training, as self-critical training samples) and with autograd as the
    caller sets it: under grad, logp carries the policy gradient. Draws come from
    `generator` (a torch.Generator on the features' device) or torch's global RNG.
    The loop stops once every caption has ended when stop_early (default: on the CPU, where
    that check is free; on a GPU it would be a host sync per word, so all max_len + 1 steps run).
    """
    if stop_early is None:
        stop_early = features.device.type == "cpu"
    ctx = decoder.prepare(features)
    B, dev = features.shape[0], features.device
    h, c = ctx.h[:, None].expand(B, k, -1), ctx.c[:, None].expand(B, k, -1)
    prev = torch.full((B, k), START, dtype=torch.long, device=dev)
    done = torch.zeros(B, k, dtype=torch.bool, device=dev)
    tokens, logps = [], []
    for t in range(max_len + 1):
        logp, _, h, c = decoder.step(ctx, prev, h, c)
        logp = _mask(logp.clone(), t == max_len)
        draw = torch.multinomial(logp.detach().exp().view(B * k, -1), 1, generator=generator).view(B, k)
        tok = draw.masked_fill(done, PAD)
        logps.append(logp.gather(2, draw[..., None])[..., 0].masked_fill(done, 0.0))
        tokens.append(tok)
        done = done | (tok == END)
        prev = tok
        if stop_early and bool(done.all()):
            break
    return torch.stack(tokens, dim=2), torch.stack(logps, dim=2)


def _backtrack(hist):
    """Follow parents from the last step: tokens [B,k,L], alphas [B,k,L,P]."""
    beam = torch.arange(hist[0][0].shape[1], device=hist[0][0].device).expand_as(hist[0][0])
    tokens, alphas = [], []
    for tok, parent, alpha in reversed(hist):
        tokens.append(tok.gather(1, beam))
        alphas.append(alpha.gather(1, beam[..., None].expand(-1, -1, alpha.shape[2])))
        beam = parent.gather(1, beam)
    return torch.stack(tokens[::-1], dim=2), torch.stack(alphas[::-1], dim=2)
