"""Show, Attend and Tell decoder: additive soft attention, gate beta, LSTMCell.

Shapes carry a group axis G beside the image axis B: the K captions of an image
in training, the k beams in search. Features stay [B, P, C] and their attention
projection [B, P, A] is computed once per batch (`prepare`); each step attends
from h [B, G, H] with a batched matmul, so features are never copied per caption
or per beam. Training runs `train_loss`: images sorted by their longest
caption, the captions of each by length, step t runs [n_t, g_t]: the images
still captioning (n_t rounded up to a multiple of IMAGE_MULTIPLE, so that
torch.compile and CUDA graphs see a few shapes) and their most captions still
going; the output layer and the loss run on the valid predictions only. Same
loss and gradients as the fully padded batch (every step for every caption, the
loss masking the padding: the reference in tools/bench/padded_decoder.py).
Search runs `prepare` once, then `step`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_MULTIPLE = 8  # train_loss rounds a step's active images up to a multiple of this (or the batch)


class Context(NamedTuple):
    features: torch.Tensor  # [B, P, C] standardised
    proj: torch.Tensor  # [B, P, A] attention projection of the features
    h: torch.Tensor  # [B, H] initial state from the mean feature
    c: torch.Tensor  # [B, H]


class Plan(NamedTuple):
    """How a training batch shrinks step by step (`train_plan`, from its lengths on the host)."""

    order: torch.Tensor  # [B] the images, longest caption first (stable)
    captions: torch.Tensor  # [B, K] each (sorted) image's captions, longest first (stable)
    widths: tuple  # (images n_t, captions g_t) run at step t: both non-increasing
    rows: torch.Tensor  # [N] each valid prediction's row in the steps' concatenated [sum n_t*g_t] outputs
    dest: torch.Tensor  # [N] its caption b*K+k in the sorted order
    step: torch.Tensor  # [N] its step t (it predicts token t+1)

    def to(self, device):
        return Plan(*(x if isinstance(x, tuple) else x.to(device, non_blocking=True) for x in self))


class Attention(nn.Module):
    def __init__(self, feature_dim, hidden_dim, attention_dim):
        super().__init__()
        self.feature_att = nn.Linear(feature_dim, attention_dim)
        self.hidden_att = nn.Linear(hidden_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, features, proj, h):
        """features [B,P,C], proj [B,P,A], h [B,G,H] -> context [B,G,C], alpha [B,G,P]."""
        # relu in place on the [B, G, P, A] sum: one such tensor made per step, not two (the largest)
        e = self.full_att(torch.relu_(proj[:, None] + self.hidden_att(h)[:, :, None])).squeeze(3)
        alpha = e.softmax(dim=2)
        return torch.bmm(alpha.to(features.dtype), features), alpha


class Decoder(nn.Module):
    def __init__(self, vocab_size, feature_dim, embed_dim=512, attention_dim=512, hidden_dim=512, dropout=0.5):
        super().__init__()
        self.vocab_size, self.feature_dim, self.embed_dim = vocab_size, feature_dim, embed_dim
        self.attention_dim, self.hidden_dim, self.dropout_p = attention_dim, hidden_dim, dropout
        self.attention = Attention(feature_dim, hidden_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, feature_dim)
        self.lstm = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.fc.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc.bias)

    def config(self):
        return {
            "vocab_size": self.vocab_size,
            "feature_dim": self.feature_dim,
            "embed_dim": self.embed_dim,
            "attention_dim": self.attention_dim,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout_p,
        }

    @torch.no_grad()
    def set_feature_stats(self, mean, std, eps=1e-6):
        """Per-channel standardisation of the features (e.g. the feature cache's channel_mean/std)."""
        self.feature_mean.copy_(torch.as_tensor(mean))
        self.feature_std.copy_(torch.as_tensor(std).clamp_min(eps))

    def prepare(self, features):
        """features [B, P, C] -> Context: standardised, projected once, initial state."""
        x = (features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        device = x.device.type
        if torch.is_autocast_enabled(device):  # cast once here, not in every step's matmul
            x = x.to(torch.get_autocast_dtype(device))
        mean = x.mean(dim=1)
        return Context(x, self.attention.feature_att(x), self.init_h(mean), self.init_c(mean))

    def advance(self, ctx, emb, h, c):
        """One LSTM step for every group: emb [B,G,E], h/c [B,G,H] -> h, c, alpha [B,G,P]."""
        B, G, H = h.shape
        context, alpha = self.attention(ctx.features, ctx.proj, h)
        gate = torch.sigmoid(self.f_beta(h))
        x = torch.cat([emb.to(context.dtype), gate * context], dim=2)
        h, c = self.lstm(x.reshape(B * G, -1), (h.reshape(B * G, H), c.reshape(B * G, H)))
        return h.view(B, G, H), c.view(B, G, H), alpha

    def train_loss(self, features, tokens, plan, alpha_c=1.0):
        """Teacher forcing over a shrinking batch: features [B,P,C], tokens [B,K,T], plan (`train_plan`
        of the lengths) -> (loss, stats): the masked loss of the fully padded batch (same value and
        gradients), its stats plus "top5" (top-5 accuracy), computed on the valid predictions only."""
        B, K = tokens.shape[:2]
        ctx = self.prepare(features[plan.order])
        tokens = tokens[plan.order].gather(1, plan.captions[..., None].expand(-1, -1, tokens.shape[2]))
        embs = self.embedding(tokens[:, :, : len(plan.widths)]).unbind(dim=2)
        h = ctx.h[:, None].expand(B, K, -1)
        c = ctx.c[:, None].expand(B, K, -1)
        prefix = {}  # one slice of the features per width: one slice backward each, not one per step
        hs, alphas = [], []
        for emb, (n, g) in zip(embs, plan.widths):
            if n not in prefix:
                prefix[n] = ctx._replace(features=ctx.features[:n], proj=ctx.proj[:n])
            # contiguous: the compiled step sees one memory layout (its reshape would copy anyway)
            h, c, alpha = self.advance(prefix[n], emb[:n, :g], h[:n, :g].contiguous(), c[:n, :g].contiguous())
            hs.append(h.flatten(0, 1))
            alphas.append(alpha.flatten(0, 1))
        logits = self.fc(self.dropout(torch.cat(hs)[plan.rows]))
        targets = tokens[:, :, 1:].flatten(0, 1)[plan.dest, plan.step]
        return packed_loss(logits, torch.cat(alphas)[plan.rows], targets, plan.dest, B * K, alpha_c)

    def step(self, ctx, prev, h, c):
        """Search step. prev [B,G] token ids, h/c [B,G,H] -> log_probs [B,G,V] (float32), alpha [B,G,P], h, c."""
        h, c, alpha = self.advance(ctx, self.embedding(prev), h, c)
        return F.log_softmax(self.fc(self.dropout(h)).float(), dim=-1), alpha, h, c


def train_plan(lengths, multiple=IMAGE_MULTIPLE):
    """[B, K] caption lengths (with <start>/<end>; on the host, else one copy) -> Plan: the images
    sorted by their longest caption and the captions of each by length, step t running the first
    g_t captions of the first n_t images: n_t the images still needing step t rounded up to
    `multiple` (at most B), g_t their most captions still needing it; the valid predictions step-major."""
    lengths = lengths.cpu().long()
    B, K = lengths.shape
    order = lengths.max(dim=1).values.argsort(descending=True, stable=True)
    need, captions = (lengths[order] - 1).sort(dim=1, descending=True, stable=True)  # predictions: words, <end>
    valid = torch.arange(int(need.max()))[:, None, None] < need  # [steps, B, K]
    images = (valid[:, :, 0].sum(dim=1) + multiple - 1) // multiple * multiple
    groups = valid.sum(dim=2).max(dim=1).values
    widths = tuple((min(int(n), B), int(g)) for n, g in zip(images, groups))
    t, b, k = valid.nonzero(as_tuple=True)
    sizes = torch.tensor([n * g for n, g in widths])
    offsets = sizes.cumsum(0) - sizes
    return Plan(order, captions, widths, offsets[t] + b * groups[t] + k, b * K + k, t)


def packed_loss(logits, alphas, targets, dest, captions, alpha_c=1.0):
    """The masked caption loss on the valid predictions only: logits [N,V], alphas [N,P], targets [N],
    dest [N] their caption among `captions`. Cross-entropy over the predicted words and <end>, plus the
    doubly stochastic attention term alpha_c * mean((1 - sum_t alpha)^2) over every caption. Returns
    (loss, stats): "loss", "ce", "att", "tokens" (detached tensors, no device sync) and "top5"."""
    n = targets.numel()
    ce = F.cross_entropy(wide(logits), targets.long(), reduction="sum") / max(n, 1)
    att_sums = alphas.new_zeros(captions, alphas.shape[1]).index_add(0, dest, alphas)
    att = alpha_c * ((1.0 - wide(att_sums)) ** 2).mean()
    total = ce + att
    with torch.no_grad():
        top5 = top5_accuracy(logits, targets, torch.ones_like(targets, dtype=torch.bool))
    return total, {
        "loss": total.detach(),
        "ce": ce.detach(),
        "att": att.detach(),
        "tokens": torch.full((), n, device=logits.device),
        "top5": top5,
    }


def wide(x):
    """x in float32 at least: the loss of a bf16 forward in float32, of a float64 one in float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def top5_accuracy(logits, targets, mask):
    """Fraction of the masked positions whose target is among the 5 highest logits.

    logits [..., V], targets [...], mask [...] bool. Returns a 0-dim tensor (no device sync).
    """
    top = logits.topk(5, dim=-1).indices
    hit = (top == targets[..., None]).any(dim=-1) & mask
    return hit.sum() / mask.sum().clamp_min(1)
