"""CIDEr-D on token ids, vectorised with numpy and scipy.sparse: no Java, no subprocess,
no Python loop per n-gram or per image.

The formula is pycocoevalcap's cider_scorer (which is CIDEr-D: clipped tf-idf, a
Gaussian length penalty, x10), and self-critical.pytorch's ciderD_scorer, which
differ only in where the document frequencies come from:
  - `Cider.from_refs(refs)`: from the references scored, with ref_len = log(number of
    reference sets), exactly as pycocoevalcap's `Cider().compute_score` does;
  - `Cider.from_refs(training_refs)` once, then `score` any batch: the fixed training
    corpus of the SCST reward (self-critical.pytorch's `df="coco-train"`).
For each n in 1..4, a candidate c against a reference r:
    g(x)[w] = tf(x, w) * (ref_len - log(max(1, df(w))))          (tf-idf of n-gram w)
    sim_n   = sum_w min(g(c)[w], g(r)[w]) * g(r)[w] / (|g(c)| |g(r)|)
              * exp(-(l(c) - l(r))^2 / (2 sigma^2)),   l = number of bigrams
and score(c) = 10 * mean_n(sum_r sim_n) / number of references.

Tokens: rows of token ids; <start> and <pad> are dropped and a row ends at its first
<end>, so decoder output and the token table can be passed as they are. N-grams are
keys in uint64: four 16-bit ids packed, exact for vocabularies of up to 65,536 words;
for larger ones (`vocab_size`) a multiplicative hash whose collisions are negligible.
"""

import numpy as np
from scipy import sparse

from pipeline.text import END, PAD, START

N = 4
SIGMA = 6.0
_HASH = np.uint64(0x9E3779B97F4A7C15)
_PACK = np.uint64(1 << 16)


def words_of(tokens):
    """Token rows [S, L] -> (words [S, L] uint64, words first then 0, lengths [S])."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(len(tokens), -1)
    keep = (tokens != PAD) & (tokens != START) & (np.cumsum(tokens == END, axis=1) == 0)
    order = np.argsort(~keep, axis=1, kind="stable")  # kept words first, in order
    words = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(tokens, order, 1), 0)
    return words.astype(np.uint64), keep.sum(axis=1)


def ngrams(words, lengths, n, wide=False):
    """-> (rows, keys, counts): each distinct n-gram of each row, sorted by (row, key).
    wide: ids may reach 65,536 or more (hashed keys)."""
    S, L = words.shape
    if L < n:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
    if not wide and int(words.max(initial=0)) >= 1 << 16:
        raise ValueError("token ids of 65,536 or more: give Cider.from_refs the vocabulary size")
    mult = _HASH if wide else _PACK
    keys = np.zeros((S, L - n + 1), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            keys = keys * mult + words[:, j : L - n + 1 + j]
    valid = np.arange(L - n + 1) < (lengths - n + 1)[:, None]
    rows = np.broadcast_to(np.arange(S)[:, None], keys.shape)[valid]
    keys = keys[valid]
    order = np.lexsort((keys, rows))
    rows, keys = rows[order], keys[order]
    starts = np.flatnonzero(_run_starts(rows, keys))
    return rows[starts], keys[starts], np.diff(np.r_[starts, len(rows)])


def _run_starts(a, b):
    """For arrays sorted by (a, b): True where a new (a, b) value begins."""
    if not len(a):
        return np.zeros(0, bool)
    return np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])]


def _groups(group):
    group = np.asarray(group, dtype=np.int64)
    return group, int(group.max(initial=-1)) + 1


class Cider:
    """Document frequencies of a reference corpus; `score` rates candidates against references."""

    def __init__(self, df_keys, df_counts, ref_len, sigma=SIGMA, wide=False):
        self.df_keys, self.df_counts = df_keys, df_counts  # per n: sorted keys, documents holding each
        self.ref_len, self.sigma, self.wide = float(ref_len), sigma, wide

    @classmethod
    def from_refs(cls, refs, group, sigma=SIGMA, vocab_size=None):
        """refs: token rows [M, L]; group [M]: the image (document) of each row, 0..G-1."""
        group, documents = _groups(group)
        words, lengths = words_of(refs)
        wide = max(vocab_size or 0, int(words.max(initial=0)) + 1) > 1 << 16
        df_keys, df_counts = [], []
        for n in range(1, N + 1):
            rows, keys, _ = ngrams(words, lengths, n, wide)
            doc = group[rows]
            order = np.lexsort((doc, keys))
            keys, doc = keys[order], doc[order]
            uniq, counts = np.unique(keys[_run_starts(keys, doc)], return_counts=True)
            df_keys.append(uniq)
            df_counts.append(counts)
        return cls(df_keys, df_counts, np.log(float(documents)), sigma, wide)

    def _idf(self, n, keys):
        table, counts = self.df_keys[n - 1], self.df_counts[n - 1]
        if not len(table):
            return np.full(len(keys), self.ref_len)
        pos = np.searchsorted(table, keys).clip(max=len(table) - 1)
        df = np.where(table[pos] == keys, counts[pos], 0)
        return self.ref_len - np.log(np.maximum(1.0, df))

    def score(self, cands, cand_group, refs, ref_group):
        """CIDEr-D of each candidate row against every reference row of its group -> [S] float64."""
        cand_group, ref_group = np.asarray(cand_group, np.int64), np.asarray(ref_group, np.int64)
        cw, cl = words_of(cands)
        rw, rl = words_of(refs)
        pc, pr = _pairs(cand_group, ref_group)
        S, M = len(cw), len(rw)
        penalty = np.exp(-(_delta(cl, rl, pc, pr) ** 2) / (2 * self.sigma**2))
        total = np.zeros(S)
        for n in range(1, N + 1):
            idf = lambda keys, n=n: self._idf(n, keys)  # noqa: E731
            sim = _similarity(ngrams(cw, cl, n, self.wide), ngrams(rw, rl, n, self.wide), idf, S, M, pc, pr)
            total += np.bincount(pc, sim * penalty, minlength=S)
        refs_per = np.bincount(ref_group, minlength=int(cand_group.max(initial=-1)) + 1)[cand_group]
        return 10.0 * total / N / np.maximum(refs_per, 1)


def _delta(cl, rl, pc, pr):
    """Bigram-count difference of each (candidate, reference) pair, as pycocoevalcap counts length."""
    return (np.maximum(cl - 1, 0)[pc] - np.maximum(rl - 1, 0)[pr]).astype(np.float64)


def _pairs(cand_group, ref_group):
    """(candidate index, reference index) for every reference of every candidate's group."""
    order = np.argsort(ref_group, kind="stable")
    sorted_groups = ref_group[order]
    lo = np.searchsorted(sorted_groups, cand_group, "left")
    hi = np.searchsorted(sorted_groups, cand_group, "right")
    count = hi - lo
    pc = np.repeat(np.arange(len(cand_group)), count)
    offset = np.arange(len(pc)) - np.repeat(np.cumsum(count) - count, count)
    return pc, order[np.repeat(lo, count) + offset]


def _similarity(cand, ref, idf, S, M, pc, pr):
    """sim_n (before the length penalty) of each pair, from both sides' (rows, keys, counts)."""
    (c_rows, c_keys, c_tf), (r_rows, r_keys, r_tf) = cand, ref
    c_val, r_val = c_tf * idf(c_keys), r_tf * idf(r_keys)
    c_norm = np.sqrt(np.bincount(c_rows, c_val**2, minlength=S))
    r_norm = np.sqrt(np.bincount(r_rows, r_val**2, minlength=M))
    columns = np.unique(r_keys)
    r_col = np.searchsorted(columns, r_keys)
    c_pos = np.searchsorted(columns, c_keys).clip(max=max(len(columns) - 1, 0))
    hit = (columns[c_pos] == c_keys) if len(columns) else np.zeros(len(c_keys), bool)
    width = max(len(columns), 1)
    C = sparse.csr_matrix((c_val[hit], (c_rows[hit], c_pos[hit])), shape=(S, width))
    R = sparse.csr_matrix((r_val, (r_rows, r_col)), shape=(M, width))
    X, Y = C[pc], R[pr]
    dot = np.asarray(X.minimum(Y).multiply(Y).sum(axis=1)).ravel()
    denom = c_norm[pc] * r_norm[pr]
    return np.where(denom != 0, dot / np.where(denom != 0, denom, 1), dot)
