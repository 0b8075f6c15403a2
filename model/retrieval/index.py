"""Sentence -> ranked images: the caption model run in reverse, log p(sentence | image).

A query is cleaned and encoded with the checkpoint's vocabulary (unknown words
become <unk> and are reported), then scored against every image of an index by
teacher forcing: the mean log-probability of each predicted token, <end>
included (length-normalised, so short and long queries rank alike).

The index prepares the decoder's context once for its whole image set
(standardised features, their attention projection, the initial state) and
scores in blocks of images x queries: the decoder's group axis carries the
queries, so one pass scores every query against a block of images, and the
block's row count bounds the memory. No Python loop runs per image.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.device import default_device
from model.nets.decoder import Context
from pipeline.errors import CapgenError
from pipeline.text import END, START, UNK, clean

# Elements of one block's largest intermediate, the attention energies [b, Q, P, A]: on a CPU
# 2^20 floats (4 MB, so that a step's passes over it stay in cache: measured 3-10x faster than
# 64 MB blocks), on a GPU 2^26 (256 MB: fewer, larger kernels).
BLOCK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


class Query(NamedTuple):
    text: str
    tokens: list  # <start> w1 .. wn <end>, unpadded
    unknown: list  # the words the vocabulary does not know, in order, once each


def encode_query(text, vocab):
    """A query under the checkpoint's text preset. CapgenError: no words left after cleaning,
    or no word the vocabulary knows."""
    words = clean(text, vocab.preset)[: vocab.max_len]
    if not words:
        raise CapgenError(f"query {text!r}: no words after cleaning (text preset {vocab.preset})")
    ids = [vocab.stoi.get(w, UNK) for w in words]
    unknown = list(dict.fromkeys(w for w, i in zip(words, ids) if i == UNK and w != "<unk>"))
    if all(i == UNK for i in ids):
        raise CapgenError(
            f"query {text!r}: every word is unknown to the checkpoint's vocabulary ({', '.join(unknown)})"
        )
    return Query(text, [START, *ids, END], unknown)


def token_batch(queries, device):
    """Queries -> tokens [Q, T] (padded with <pad> = 0 to the longest) and lengths [Q] on the device."""
    longest = max(len(q.tokens) for q in queries)
    tokens = torch.zeros(len(queries), longest, dtype=torch.long)
    for row, q in enumerate(queries):
        tokens[row, : len(q.tokens)] = torch.tensor(q.tokens)
    lengths = torch.tensor([len(q.tokens) for q in queries])
    return tokens.to(device), lengths.to(device)


class Weights(NamedTuple):
    """The decoder's LSTM weights regrouped for scoring (Decoder.advance's arithmetic, split)."""

    word: torch.Tensor  # [4H, E]: weight_ih's columns for the word embedding
    bias: torch.Tensor  # [4H]: bias_ih + bias_hh
    state: torch.Tensor  # [4H, C + H]: weight_ih's context columns beside weight_hh, one matmul
    energy: torch.Tensor  # [A]: full_att's weight as a vector


def split_weights(decoder):
    lstm, e = decoder.lstm, decoder.embed_dim
    return Weights(
        lstm.weight_ih[:, :e].contiguous(),
        lstm.bias_ih + lstm.bias_hh,
        torch.cat([lstm.weight_ih[:, e:], lstm.weight_hh], dim=1).contiguous(),
        decoder.attention.full_att.weight[0].contiguous(),
    )


def advance(decoder, weights, ctx, word_gates, h, c):
    """Decoder.advance for every image x query, with the word gates given: h/c [b,Q,H] -> h, c.

    The same arithmetic, regrouped: the attention energies [b, Q, P, A] are made in one buffer
    and rectified in place, the context and the state go through the LSTM in one matmul."""
    att = decoder.attention
    energies = torch.add(ctx.proj[:, None], att.hidden_att(h)[:, :, None]).relu_()
    alpha = (torch.matmul(energies, weights.energy) + att.full_att.bias).softmax(dim=2)
    context = torch.bmm(alpha, ctx.features) * torch.sigmoid(decoder.f_beta(h))
    gates = torch.cat([context, h], dim=2) @ weights.state.T + word_gates
    i, f, g, o = gates.chunk(4, dim=2)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def score_block(decoder, weights, ctx, tokens, lengths):
    """Teacher-forced mean log-prob of each query given each image.

    ctx: a Context of b images; tokens [Q, T], lengths [Q] -> [b, Q] float32."""
    b, Q = ctx.h.shape[0], tokens.shape[0]
    # The word half of the LSTM input depends on the query alone: once, for every image.
    words = F.linear(decoder.embedding(tokens[:, :-1]), weights.word, weights.bias)  # [Q, T-1, 4H]
    h = ctx.h[:, None].expand(b, Q, -1)
    c = ctx.c[:, None].expand(b, Q, -1)
    predicted = lengths - 1  # words + <end>
    total = torch.zeros(b, Q, device=tokens.device)
    for t in range(tokens.shape[1] - 1):
        h, c = advance(decoder, weights, ctx, words[None, :, t], h, c)
        log_probs = F.log_softmax(decoder.fc(decoder.dropout(h)).float(), dim=-1)
        picked = log_probs.gather(2, tokens[None, :, t + 1, None].expand(b, Q, 1)).squeeze(2)
        total += picked * (t < predicted)
    return total / predicted


class ImageIndex:
    """Features of an image set, prepared once for the decoder; scores queries against all of them.

    features: [N, P, C] (numpy or torch, any float dtype); image_ids [N]; file_names: {id: name}."""

    def __init__(
        self, decoder, features, image_ids, file_names=None, device=None, name="features", block_elements=None
    ):
        self.device = default_device(device)
        self.decoder = decoder.to(self.device).eval()
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.file_names = dict(file_names or {})
        self.block_elements = block_elements or BLOCK_ELEMENTS.get(self.device.type, BLOCK_ELEMENTS["cpu"])
        n, positions, channels = features.shape
        if channels != decoder.feature_dim:
            raise CapgenError(
                f"{name}: features of {channels} channels, the checkpoint's decoder takes {decoder.feature_dim}"
            )
        if n == 0 or n != len(self.image_ids):
            raise CapgenError(f"{name}: {n} feature rows for {len(self.image_ids)} image ids")
        self.ctx = self._prepare(features)
        with torch.no_grad():
            self.weights = split_weights(self.decoder)

    def __len__(self):
        return len(self.image_ids)

    def keep(self, n):
        """Only the first n images from now on (the COCO 1K protocol: the first 1000)."""
        if n < 1:
            raise CapgenError(f"--retrieval-images: must be at least 1 (got {n})")
        self.image_ids = self.image_ids[:n]
        self.ctx = Context(*(t[:n] for t in self.ctx))

    @torch.inference_mode()
    def _prepare(self, features):
        """Context of all N images, built in blocks (bounded temporaries)."""
        n, p, c = features.shape
        d = self.decoder
        out = Context(
            torch.empty(n, p, c, device=self.device),
            torch.empty(n, p, d.attention_dim, device=self.device),
            torch.empty(n, d.hidden_dim, device=self.device),
            torch.empty(n, d.hidden_dim, device=self.device),
        )
        step = max(1, self.block_elements // (p * max(c, d.attention_dim)))
        for i in range(0, n, step):
            block = torch.as_tensor(np.asarray(features[i : i + step])).to(self.device, torch.float32)
            for whole, part in zip(out, d.prepare(block)):
                whole[i : i + len(block)] = part
        return out

    def block_rows(self, queries):
        """Images per block for this many queries."""
        p, a = self.ctx.proj.shape[1:]
        return max(1, self.block_elements // (queries * p * a))

    @torch.inference_mode()
    def score(self, queries, progress=False):
        """[N, Q] mean log-prob of every query (Query tuples) given every image, on the CPU."""
        tokens, lengths = token_batch(queries, self.device)
        rows = self.block_rows(len(queries))
        out = torch.empty(len(self), len(queries))
        starts = range(0, len(self), rows)
        for i in tqdm(
            starts, unit="block", desc="scoring", disable=not progress or len(starts) < 2, dynamic_ncols=True
        ):
            ctx = Context(*(t[i : i + rows] for t in self.ctx))
            out[i : i + rows] = score_block(self.decoder, self.weights, ctx, tokens, lengths).cpu()
        return out

    def search(self, queries, top=10, progress=False):
        """The top images of each query: [{"query", "unknown_words", "results": [{image_id, file_name, score}]}]."""
        if top < 1:
            raise CapgenError(f"--top: must be at least 1 (got {top})")
        scores = self.score(queries, progress)
        best = scores.topk(min(top, len(self)), dim=0)
        out = []
        for q, (values, rows) in enumerate(zip(best.values.T.tolist(), best.indices.T.tolist())):
            results = [
                {
                    "image_id": int(self.image_ids[r]),
                    "file_name": self.file_names.get(int(self.image_ids[r])),
                    "score": round(v, 4),
                }
                for v, r in zip(values, rows)
            ]
            out.append({"query": queries[q].text, "unknown_words": queries[q].unknown, "results": results})
        return out
