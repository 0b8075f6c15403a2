"""Batched greedy and beam search."""

import numpy as np
import pytest
import torch

from model.nets.decoder import Decoder
from model.nets.search import beam_search, greedy
from pipeline.text import END, PAD, START
from tools.bench.padded_decoder import padded_forward

V, C, P, MAX = 30, 16, 6, 7


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    dec = Decoder(V, C, embed_dim=12, attention_dim=10, hidden_dim=14, dropout=0.5)
    with torch.no_grad():
        dec.fc.weight.mul_(20)  # peaked distributions: captions end at varied lengths
        dec.fc.bias[END] = 2.0
    return dec, torch.randn(6, P, C).relu()


def teacher_forced(dec, features, words):
    """Sum of log-probs and attention of `words` (ending in <end>) for one image."""
    tokens = torch.tensor([[[START] + words]])
    with torch.no_grad():
        logits, alphas = padded_forward(dec.eval(), features[None], tokens)
    logp = logits[0, 0].log_softmax(-1)
    return float(logp[torch.arange(len(words)), torch.tensor(words)].sum()), alphas[0, 0].numpy()


def test_greedy_shapes_and_padding(model):
    dec, features = model
    tokens, alphas = greedy(dec, features, max_len=MAX)
    assert tokens.shape[0] == 6 and tokens.shape[1] <= MAX + 1 and alphas.shape == (*tokens.shape, P)
    lengths = []
    for row, a in zip(tokens.tolist(), alphas):
        n = row.index(END) + 1
        lengths.append(n)
        assert PAD not in row[:n] and START not in row[:n] and set(row[n:]) <= {PAD}
        torch.testing.assert_close(a[:n].sum(-1), torch.ones(n))
        assert (a[n:] == 0).all()
    assert len(set(lengths)) > 1  # the cases below see both early and late endings
    assert dec.training  # search left the module's mode as it was


def test_beam_1_is_greedy(model):
    dec, features = model
    tokens, alphas = greedy(dec, features, max_len=MAX)
    for b, (hyp,) in enumerate(beam_search(dec, features, beam=1, max_len=MAX)):
        n = len(hyp.tokens)
        assert hyp.tokens == tokens[b, :n].tolist() and hyp.tokens[-1] == END
        np.testing.assert_array_equal(hyp.alphas, alphas[b, :n].numpy())


def test_scores_are_the_log_probs_of_the_tokens(model):
    dec, features = model
    for b, hyps in enumerate(beam_search(dec, features, beam=3, max_len=MAX)):
        assert len(hyps) == 3 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 3
        for h in hyps:
            assert h.tokens[-1] == END and len(h.tokens) <= MAX + 1 and h.alphas.shape == (len(h.tokens), P)
            score, alphas = teacher_forced(dec, features[b], h.tokens)
            assert h.score == pytest.approx(score, abs=1e-4)
            np.testing.assert_allclose(h.alphas, alphas, atol=1e-5)


def test_beam_does_not_depend_on_batch_composition(model):
    dec, features = model
    together = beam_search(dec, features, beam=4, max_len=MAX)
    for b in range(len(features)):
        for mates in ([b], [b, (b + 3) % 6], list(range(5, -1, -1))):
            alone = beam_search(dec, features[mates], beam=4, max_len=MAX)[mates.index(b)]
            assert [h.tokens for h in alone] == [h.tokens for h in together[b]]
            np.testing.assert_allclose([h.score for h in alone], [h.score for h in together[b]], atol=1e-5)


def test_topk_length_norm_and_max_len(model):
    dec, features = model
    raw = beam_search(dec, features, beam=5, max_len=MAX)
    top2 = beam_search(dec, features, beam=5, max_len=MAX, topk=2)
    assert [[h.tokens for h in hs] for hs in top2] == [[h.tokens for h in hs[:2]] for hs in raw]
    norm = beam_search(dec, features, beam=5, max_len=MAX, length_norm=True)
    for a, b in zip(raw, norm):
        assert sorted(h.score for h in a) == sorted(h.score for h in b)
        keys = [h.score / len(h.tokens) for h in b]
        assert keys == sorted(keys, reverse=True)
    with torch.no_grad():
        dec.fc.bias[END] = -50.0  # never chooses to stop: closed after MAX words
    try:
        for (hyp,) in beam_search(dec, features, beam=1, max_len=3):
            assert len(hyp.tokens) == 4 and hyp.tokens[-1] == END
    finally:
        with torch.no_grad():
            dec.fc.bias[END] = 2.0


class CountingSteps:
    """The model's own decoder, counting the search steps it is asked for."""

    def __init__(self, dec):
        self.dec, self.calls = dec, 0

    def __getattr__(self, name):
        return getattr(self.dec, name)

    def step(self, *args):
        self.calls += 1
        return self.dec.step(*args)


def test_beam_search_stops_once_every_beam_of_the_batch_has_ended(model):
    dec, features = model
    counted = CountingSteps(dec)
    short = beam_search(counted, features, beam=3, max_len=MAX)
    longest = max(len(h.tokens) for hyps in short for h in hyps)
    assert counted.calls == longest < MAX + 1  # no step after the last beam's <end>
    # A longer limit is never reached: the same result, the same steps.
    counted.calls = 0
    far = beam_search(counted, features, beam=3, max_len=MAX + 10)
    assert counted.calls == longest
    for a, b in zip(short, far):
        assert [h.tokens for h in a] == [h.tokens for h in b] and [h.score for h in a] == [h.score for h in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.alphas, y.alphas)


def plain_beam(dec, features, k, max_len):
    """The beam step written out of place (torch.where over a <pad> row, a new sum tensor), as
    beam_search was before it reused the step's log-probs: (tokens [B,k,L], scores [B,k])."""
    B = features.shape[0]
    with torch.inference_mode():
        dec.eval()
        ctx = dec.prepare(features)
        h, c = ctx.h[:, None].expand(B, k, -1), ctx.c[:, None].expand(B, k, -1)
        prev = torch.full((B, k), START)
        scores = torch.full((B, k), -torch.inf)
        scores[:, 0] = 0.0
        done = torch.zeros(B, k, dtype=torch.bool)
        pad_row = torch.full((dec.vocab_size,), -torch.inf)
        pad_row[PAD] = 0.0
        toks, parents = [], []
        for t in range(max_len + 1):
            logp, _, h, c = dec.step(ctx, prev, h, c)
            logp[..., [PAD, START]] = -torch.inf
            if t == max_len:
                logp[..., [i for i in range(dec.vocab_size) if i != END]] = -torch.inf
            logp = torch.where(done[..., None], pad_row, logp)
            Vs = logp.shape[2]
            scores, idx = (scores[..., None] + logp).view(B, k * Vs).topk(k, dim=1)
            parent, tok = idx // Vs, idx % Vs
            h, c = (x.gather(1, parent[..., None].expand_as(x)) for x in (h, c))
            done = done.gather(1, parent) | (tok == END)
            toks.append(tok)
            parents.append(parent)
            prev = tok
            if bool(done.all()):
                break
        beam, out = torch.arange(k).expand(B, k), []
        for tok, parent in zip(reversed(toks), reversed(parents)):
            out.append(tok.gather(1, beam))
            beam = parent.gather(1, beam)
        return torch.stack(out[::-1], dim=2), scores


@pytest.mark.parametrize("vocab", [V, 300])
def test_beam_search_in_place_finds_what_the_plain_step_finds(model, vocab):
    """Same beams, same scores to the bit, as the step written out of place."""
    dec, features = model
    if vocab != V:
        torch.manual_seed(1)
        dec = Decoder(vocab, C, embed_dim=12, attention_dim=10, hidden_dim=14)
        with torch.no_grad():
            dec.fc.bias[END] = 3.0
        features = torch.randn(16, P, C).relu()
    tokens, scores = plain_beam(dec, features, 3, MAX)
    hyps = beam_search(dec, features, beam=3, max_len=MAX)
    for b, image in enumerate(hyps):
        order = scores[b].argsort(descending=True, stable=True)
        assert [h.score for h in image] == scores[b, order].tolist()
        for h, j in zip(image, order.tolist()):
            assert h.tokens == [x for x in tokens[b, j].tolist() if x != PAD]
