"""capgen's CIDEr-D on token ids: equal to pycocoevalcap's scorer, and a case checked by hand."""

import math

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider as CocoCider

from model.train.cider import Cider, words_of
from pipeline.text import END, PAD, START


def row(ids, length=16):
    return [START, *ids, END] + [PAD] * (length - len(ids))


def text(ids):
    return " ".join(f"w{i}" for i in ids)


def test_equals_pycocoevalcap_on_random_captions():
    rng = np.random.default_rng(5)
    images = 60

    def sentence():  # a small vocabulary, so that n-grams repeat within and across captions
        return [int(t) for t in rng.integers(4, 14, rng.integers(0, 13))]

    refs = [[sentence() for _ in range(rng.integers(1, 6))] for _ in range(images)]
    cands = [sentence() for _ in range(images)]
    cands[0], cands[1] = [], refs[1][0]  # an empty caption and one equal to a reference
    mean, each = CocoCider().compute_score(
        {i: [text(r) for r in refs[i]] for i in range(images)}, {i: [text(cands[i])] for i in range(images)}
    )
    ref_rows = np.array([row(r) for rs in refs for r in rs])
    group = np.repeat(np.arange(images), [len(rs) for rs in refs])
    mine = Cider.from_refs(ref_rows, group).score(np.array([row(c) for c in cands]), np.arange(images), ref_rows, group)
    assert np.abs(mine - each).max() < 1e-6
    assert abs(mine.mean() - mean) < 1e-6
    assert each[1] > 0 and mine[0] == 0.0


def test_cider_d_by_hand():
    """Two images, one reference each; document frequencies from both.

    Image 0: reference "5 6 7", candidate "5 6". ref_len = log 2. Each n-gram of image 0's
    reference appears in image 0 only (df 1, idf log 2), except "5", which image 1 has too
    (df 2, idf 0). Candidate unigrams: 5 (idf 0), 6 (idf log 2); the reference's: 5, 6, 7.
      n=1: min(c,r)*r summed = (log 2)^2 over |c| = log 2, |r| = sqrt 2 log 2 -> 1/sqrt 2
      n=2: "5 6" shared, candidate's only bigram; reference has two -> 1/sqrt 2
      n=3, 4: no candidate n-grams -> 0
    Length penalty: bigram counts 1 vs 2, exp(-1/72). Score = 10 * (2/sqrt 2) / 4 * exp(-1/72).
    """
    refs = np.array([row([5, 6, 7]), row([5, 8])])
    scorer = Cider.from_refs(refs, [0, 1])
    got = scorer.score(np.array([row([5, 6])]), [0], refs[:1], [0])
    assert got[0] == pytest.approx(10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72), abs=1e-12)
    # Clipping: repeating a word does not raise the unigram term past the reference's weight.
    once, twice = scorer.score(np.array([row([6, 7]), row([6, 6, 7])]), [0, 0], refs[:1], [0])
    assert twice < once


def test_corpus_document_frequencies_are_fixed():
    """With training-corpus df, a candidate's score does not depend on the other images scored."""
    corpus = np.array([row([5, 6, 7]), row([5, 8]), row([9, 10, 11])])
    scorer = Cider.from_refs(corpus, [0, 1, 2])
    alone = scorer.score(np.array([row([5, 6])]), [0], corpus[:1], [0])
    batch = scorer.score(np.array([row([5, 6]), row([9, 10])]), [0, 1], corpus[[0, 2]], [0, 1])
    assert alone[0] == batch[0] and batch[1] > 0


def test_words_of_strips_specials_and_ends_at_end():
    words, lengths = words_of(np.array([[START, 5, 6, END, 7, PAD], [5, PAD, 6, 7, 8, 9]]))
    assert lengths.tolist() == [2, 5]
    assert words[0, :2].tolist() == [5, 6] and words[1, :5].tolist() == [5, 6, 7, 8, 9]


def test_large_ids_need_the_vocabulary_size():
    refs = np.array([row([70000, 5, 6, 7]), row([6, 5])])
    with pytest.raises(ValueError, match="vocabulary size"):
        Cider(*_empty(), 0.0).score(refs[:1], [0], refs, [0, 1])
    scorer = Cider.from_refs(refs, [0, 1])  # sees the id: hashed keys
    assert scorer.wide and scorer.score(refs[:1], [0], refs[:1], [0])[0] == pytest.approx(10.0)


def _empty():
    return [np.zeros(0, np.uint64)] * 4, [np.zeros(0, np.int64)] * 4
