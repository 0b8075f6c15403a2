"""Soft-attention decoder: shapes, masks, grouping, the loss, overfitting, the benchmark's baseline."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.nets.decoder import Decoder, top5_accuracy, train_plan
from model.nets.search import greedy
from pipeline.text import END, PAD, START
from tools.bench.padded_decoder import caption_loss, caption_mask, decode_steps, padded_forward, trim_steps
from tools.bench.train import baseline_loss, bench_train, synthetic_batch

V, C, P = 40, 16, 6


pytestmark = pytest.mark.usefixtures("one_thread")


def small(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return Decoder(V, C, embed_dim=12, attention_dim=10, hidden_dim=14, dropout=dropout)


def batch(B=3, K=4, T=9, seed=1):
    return synthetic_batch(B, K, T, P, C, V, "cpu", seed=seed)


def test_shapes_and_attention_sums_to_one():
    dec = small()
    features, tokens, lengths = batch()
    logits, alphas = padded_forward(dec, features, tokens, lengths)
    assert logits.shape == (3, 4, 8, V) and alphas.shape == (3, 4, 8, P)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(3, 4, 8))
    assert (alphas >= 0).all()


def test_captions_of_an_image_share_its_features_but_not_their_state():
    dec = small().eval()
    features, tokens, _ = batch()
    logits, alphas = padded_forward(dec, features, tokens)
    for k in range(tokens.shape[1]):
        one, a = padded_forward(dec, features, tokens[:, k : k + 1])
        torch.testing.assert_close(one[:, 0], logits[:, k])
        torch.testing.assert_close(a[:, 0], alphas[:, k])


def test_step_api_matches_teacher_forcing():
    dec = small().eval()
    features, tokens, _ = batch()
    logits, _ = padded_forward(dec, features, tokens)
    ctx = dec.prepare(features)
    h, c = ctx.h[:, None].expand(3, 4, -1), ctx.c[:, None].expand(3, 4, -1)
    for t in range(tokens.shape[2] - 1):
        logp, alpha, h, c = dec.step(ctx, tokens[:, :, t], h, c)
        torch.testing.assert_close(logp, logits[:, :, t].log_softmax(-1))
        assert alpha.shape == (3, 4, P)


def test_feature_standardisation():
    dec = small().eval()
    features, tokens, _ = batch()
    mean, std = torch.rand(C) * 3, torch.rand(C) + 0.5
    expected, _ = padded_forward(dec, ((features - mean) / std), tokens)
    dec.set_feature_stats(mean, std)
    got, _ = padded_forward(dec, features, tokens)
    torch.testing.assert_close(got, expected)
    assert set(dec.state_dict()) >= {"feature_mean", "feature_std"}


def test_loss_counts_only_valid_steps():
    dec = small()
    features, tokens, lengths = batch()
    logits, alphas = padded_forward(dec, features, tokens)
    total, stats = caption_loss(logits, alphas, tokens, lengths, alpha_c=0.7)
    ce, n, att = 0.0, 0, 0.0
    for b in range(3):
        for k in range(4):
            steps = int(lengths[b, k]) - 1  # words + <end>
            ce = ce + F.cross_entropy(logits[b, k, :steps], tokens[b, k, 1 : steps + 1], reduction="sum")
            n += steps
            att = att + ((1 - alphas[b, k, :steps].sum(0)) ** 2).sum()
    torch.testing.assert_close(stats["ce"], ce.detach() / n)
    torch.testing.assert_close(stats["att"], 0.7 * att.detach() / (3 * 4 * P))
    assert int(stats["tokens"]) == n and torch.isclose(total, stats["ce"] + stats["att"])
    # Whatever lies past a caption's <end> changes nothing.
    m = caption_mask(lengths, 8)
    assert m.sum() == n and tokens[:, :, 1:][m].ne(PAD).all() and tokens[:, :, 1:][~m].eq(PAD).all()
    noisy = torch.where(torch.arange(9) >= lengths[..., None], torch.randint(4, V, tokens.shape), tokens)
    torch.testing.assert_close(caption_loss(logits, alphas, noisy, lengths, 0.7)[0], total)


def test_decode_steps_round_up_to_a_few_lengths():
    # lengths count <start> and <end>: a caption of n tokens needs n-1 predictions
    assert [decode_steps(n, 21) for n in (2, 5, 6, 9, 10, 19, 21, 22)] == [4, 4, 8, 8, 12, 20, 20, 21]
    assert decode_steps(13, 21, multiple=1) == 12 and decode_steps(9, 6) == 6


def test_trimmed_steps_give_the_padded_loss_and_every_gradient():
    """A batch cut to the steps its longest caption needs trains exactly as the fully padded one."""
    dec = small().double().eval()
    features, tokens, lengths = batch(B=4, K=3, T=22, seed=2)
    features = features.double()
    trimmed = trim_steps(tokens, lengths.max())
    assert trimmed.shape[2] - 1 == decode_steps(int(lengths.max()), 21) < 21
    assert (tokens[:, :, trimmed.shape[2] :] == PAD).all()

    def loss_and_grads(toks):
        dec.zero_grad()
        loss, stats = caption_loss(*padded_forward(dec, features, toks), toks, lengths, alpha_c=0.7)
        loss.backward()
        return loss.detach(), stats, {n: p.grad.clone() for n, p in dec.named_parameters()}

    full_loss, full_stats, full_grads = loss_and_grads(tokens)
    loss, stats, grads = loss_and_grads(trimmed)
    torch.testing.assert_close(loss, full_loss, rtol=1e-12, atol=1e-12)
    assert int(stats["tokens"]) == int(full_stats["tokens"])
    assert list(grads) == list(full_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_train_plan_sorts_images_and_shrinks_in_multiples():
    # 10 images x 2 captions; image i's longest caption has lengths[i].max() tokens
    lengths = torch.tensor([[4, 3], [9, 2], [2, 2], [6, 7], [3, 5], [4, 4], [8, 2], [5, 5], [3, 3], [2, 3]])
    plan = train_plan(lengths, multiple=4)
    assert plan.order.tolist() == [1, 6, 3, 4, 7, 0, 5, 8, 9, 2]  # longest first, ties in batch order
    assert plan.captions.tolist() == [[0, 1], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [0, 1], [1, 0], [0, 1]]
    # images still needing step t: 10, 9, 7, 5, 3, 3, 2, 1 -> rounded up to 4 (at most 10);
    # captions: both of some image up to step 4 (image 3: 6 and 7 tokens), then one
    assert plan.widths == ((10, 2), (10, 2), (8, 2), (8, 2), (4, 2), (4, 1), (4, 1), (4, 1))
    need = (lengths[plan.order] - 1).gather(1, plan.captions)
    assert len(plan.rows) == int(need.sum()) and plan.step.tolist() == sorted(plan.step.tolist())
    assert all(t < need.view(-1)[d] for t, d in zip(plan.step.tolist(), plan.dest.tolist()))
    sizes = [n * g for n, g in plan.widths]
    assert len(set(plan.rows.tolist())) == len(plan.rows) and int(plan.rows.max()) < sum(sizes)
    assert [n for n, _ in train_plan(lengths, multiple=1).widths] == [10, 9, 7, 5, 3, 3, 2, 1]


def padded_and_shrunk(dec, features, tokens, lengths, alpha_c=0.7):
    """(loss, stats, grads) of the fully padded forward + caption_loss, and of train_loss."""
    out = []
    for fn in (
        lambda: caption_loss(*padded_forward(dec, features, tokens), tokens, lengths, alpha_c),
        lambda: dec.train_loss(features, tokens, train_plan(lengths, multiple=2), alpha_c),
    ):
        dec.zero_grad()
        loss, stats = fn()
        loss.backward()
        out.append((loss.detach(), stats, {n: p.grad.clone() for n, p in dec.named_parameters()}))
    return out


@pytest.mark.parametrize("case", ["mixed", "one_image_short", "all_full"])
def test_shrinking_batch_gives_the_padded_loss_and_every_gradient(case):
    """train_loss (images sorted, each step only the images still captioning, the output layer only
    on valid predictions) trains exactly as the fully padded forward + caption_loss."""
    dec = small().double().eval()
    features, tokens, lengths = batch(B=5, K=3, T=14, seed=3)
    if case == "one_image_short":  # every caption of image 2 is <start> word <end>
        lengths[2] = 3
    if case == "all_full":
        lengths[:] = 14
    pos = torch.arange(14)
    tokens = torch.where(pos == lengths[..., None] - 1, END, tokens)
    tokens = torch.where(pos >= lengths[..., None], PAD, torch.where(tokens == PAD, 5, tokens))
    features = features.double()
    widths = train_plan(lengths, multiple=2).widths
    assert len(widths) == int(lengths.max()) - 1 and (widths[-1] < (5, 3)) == (case != "all_full")
    (full_loss, full_stats, full_grads), (loss, stats, grads) = padded_and_shrunk(dec, features, tokens, lengths)
    torch.testing.assert_close(loss, full_loss, rtol=1e-12, atol=1e-12)
    for key in ("ce", "att"):
        torch.testing.assert_close(stats[key], full_stats[key], rtol=1e-12, atol=1e-12)
    assert int(stats["tokens"]) == int(full_stats["tokens"]) == int((lengths - 1).sum())
    logits, _ = padded_forward(dec, features, tokens)
    top5 = top5_accuracy(logits, tokens[:, :, 1:], caption_mask(lengths, 13))
    torch.testing.assert_close(stats["top5"], top5)
    assert list(grads) == list(full_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_a_tiny_model_learns_its_captions_by_heart():
    torch.manual_seed(0)
    features = torch.randn(4, P, C)
    words = [[5, 6, 7], [8, 9, 10, 11, 12], [5, 9, 13, 6], [14, 7, 7, 15, 16, 17]]
    T = 8
    tokens = torch.full((4, 1, T), PAD)
    for i, w in enumerate(words):
        tokens[i, 0, : len(w) + 2] = torch.tensor([START] + w + [END])
    lengths = (tokens != PAD).sum(-1)
    dec = small(seed=0)
    opt = torch.optim.Adam(dec.parameters(), lr=0.02)
    for _ in range(150):
        loss, _ = caption_loss(*padded_forward(dec, features, tokens), tokens, lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out, _ = greedy(dec, features, max_len=T - 2)
    assert [row[: row.index(END)] for row in out.tolist()] == words


def test_baseline_port_computes_the_same_loss_and_gradients():
    dec = small().eval()
    features, tokens, lengths = batch(B=3, K=5, T=12)
    B, K, T = tokens.shape
    ours, _ = caption_loss(*padded_forward(dec, features, tokens), tokens, lengths)
    g_ours = torch.autograd.grad(ours, [dec.fc.weight, dec.attention.feature_att.weight])
    base = baseline_loss(dec, features.repeat_interleave(K, 0), tokens.view(B * K, T), lengths.view(B * K, 1))
    g_base = torch.autograd.grad(base, [dec.fc.weight, dec.attention.feature_att.weight])
    torch.testing.assert_close(base, ours)
    for a, b in zip(g_base, g_ours):
        torch.testing.assert_close(a, b)


def test_bench_quick_reports_both_sides():
    r = bench_train(quick=True, device="cpu")
    assert r["device"].startswith("cpu") and r["amp"] == "fp32"
    (s,) = r["step"]
    assert s["ours_captions_per_s"] > 0 and s["baseline_captions_per_s"] > 0
    assert math.isclose(s["ratio"], s["ours_captions_per_s"] / s["baseline_captions_per_s"])
    assert r["beam"]["same_best_caption"] == 1.0 and r["beam"]["ratio"] > 0
