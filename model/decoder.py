"""Show, Attend and Tell decoder: additive soft attention, gate beta, LSTMCell.

Shapes carry a group axis G beside the image axis B: the K captions of an image
in training, the k beams in search. Features stay [B, P, C] and their attention
projection [B, P, A] is computed once per batch (`prepare`); each step attends
from h [B, G, H] with a batched matmul, so features are never copied per caption
or per beam. Every caption of a batch runs the same number of steps (static
shapes); the loss masks the padding. Training trims a batch's tokens first
(`trim_steps`), so a batch runs only as many steps as its longest caption needs,
rounded up to a multiple of STEP_MULTIPLE: a few shapes for torch.compile and
CUDA graphs, and the same loss and gradients as the fully padded batch.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

STEP_MULTIPLE = 4  # decoder steps are rounded up to a multiple of this (or the table's full length)


class Context(NamedTuple):
    features: torch.Tensor  # [B, P, C] standardised
    proj: torch.Tensor      # [B, P, A] attention projection of the features
    h: torch.Tensor         # [B, H] initial state from the mean feature
    c: torch.Tensor         # [B, H]


class Attention(nn.Module):
    def __init__(self, feature_dim, hidden_dim, attention_dim):
        super().__init__()
        self.feature_att = nn.Linear(feature_dim, attention_dim)
        self.hidden_att = nn.Linear(hidden_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, features, proj, h):
        """features [B,P,C], proj [B,P,A], h [B,G,H] -> context [B,G,C], alpha [B,G,P]."""
        e = self.full_att(torch.relu(proj[:, None] + self.hidden_att(h)[:, :, None])).squeeze(3)
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
        return {"vocab_size": self.vocab_size, "feature_dim": self.feature_dim, "embed_dim": self.embed_dim,
                "attention_dim": self.attention_dim, "hidden_dim": self.hidden_dim, "dropout": self.dropout_p}

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

    def forward(self, features, tokens, lengths=None):
        """Teacher forcing. features [B,P,C], tokens [B,K,T] -> logits [B,K,T-1,V], alphas [B,K,T-1,P].

        `lengths` is not needed here (every step runs; `loss` masks); it is accepted
        so callers can pass the batch as it comes.
        """
        B, K = tokens.shape[:2]
        ctx = self.prepare(features)
        # unbind: its backward is one stack, where per-step slicing would zero-fill [B,K,T,E] each step.
        embs = self.embedding(tokens[:, :, :-1]).unbind(dim=2)
        h = ctx.h[:, None].expand(B, K, -1)
        c = ctx.c[:, None].expand(B, K, -1)
        hs, alphas = [], []
        for emb in embs:
            h, c, alpha = self.advance(ctx, emb, h, c)
            hs.append(h)
            alphas.append(alpha)
        logits = self.fc(self.dropout(torch.stack(hs, dim=2)))
        return logits, torch.stack(alphas, dim=2)

    @staticmethod
    def loss(logits, alphas, tokens, lengths, alpha_c=1.0):
        """See `caption_loss`."""
        return caption_loss(logits, alphas, tokens, lengths, alpha_c)

    def step(self, ctx, prev, h, c):
        """Search step. prev [B,G] token ids, h/c [B,G,H] -> log_probs [B,G,V] (float32), alpha [B,G,P], h, c."""
        h, c, alpha = self.advance(ctx, self.embedding(prev), h, c)
        return F.log_softmax(self.fc(self.dropout(h)).float(), dim=-1), alpha, h, c


def decode_steps(longest, full, multiple=STEP_MULTIPLE):
    """Decoder steps for a batch whose longest caption has `longest` tokens (<start>/<end> included):
    its longest-1 predictions rounded up to a multiple of `multiple`, at most `full` (T-1)."""
    return min(-(-(longest - 1) // multiple) * multiple, full)


def trim_steps(tokens, longest, multiple=STEP_MULTIPLE):
    """tokens [B,K,T] -> [B,K,steps+1]: only the columns the batch's `longest` caption needs
    (`decode_steps`); a view. Everything cut is <pad>, which the loss masks anyway."""
    return tokens[:, :, :decode_steps(int(longest), tokens.shape[2] - 1, multiple) + 1]


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
    ce = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten(), reduction="none").view_as(mask)
    n = mask.sum()
    ce = (ce * mask).sum() / n.clamp_min(1)
    att = alpha_c * ((1.0 - (alphas.float() * mask[..., None]).sum(dim=2)) ** 2).mean()
    total = ce + att
    return total, {"loss": total.detach(), "ce": ce.detach(), "att": att.detach(), "tokens": n}
