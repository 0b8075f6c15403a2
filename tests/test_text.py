"""Text presets, vocabulary and the fixed-length token table."""

import numpy as np
import pytest

from pipeline.errors import CapgenError
from pipeline.text import END, PAD, START, UNK, TokenTable, Vocabulary, clean


def test_presets():
    raw = "A  Red circle, left of a small blue-square.\n"
    assert clean(raw, "seed") == ["red", "circle", "left", "of", "small", "blue", "square"]
    assert clean(raw, "coco") == ["a", "red", "circle", "left", "of", "a", "small", "blue", "square"]
    assert clean("Un café à Paris ", "coco") == ["un", "café", "à", "paris"]
    assert clean("Un café à Paris ", "seed") == ["un", "café", "paris"]
    with pytest.raises(ValueError):
        clean("x", "nope")


def test_vocabulary_min_freq_order_and_round_trip(tmp_path):
    caps = ["a red circle"] * 5 + ["a blue circle"] * 3 + ["a green zebra"]
    v = Vocabulary.build(caps, preset="coco", min_freq=3)
    assert v.itos == ["<pad>", "<start>", "<end>", "<unk>", "a", "circle", "red", "blue"]
    ids = v.encode("A red zebra!")
    assert ids[:5] == [START, v.stoi["a"], v.stoi["red"], UNK, END]
    assert len(ids) == 22 and ids[5:] == [PAD] * 17
    assert v.decode(ids) == "a red <unk>"
    v.save(tmp_path / "vocab.json")
    w = Vocabulary.load(tmp_path / "vocab.json")
    assert w.itos == v.itos and w.preset == "coco" and w.min_freq == 3 and w.encode("a red") == v.encode("a red")


def test_encode_cuts_to_max_len():
    v = Vocabulary.build(["w"] * 5 + ["ww"] * 5, preset="coco", min_freq=1, max_len=3)
    assert v.encode("w ww w ww w") == [START, v.stoi["w"], v.stoi["ww"], v.stoi["w"], END]


def test_token_table(tmp_path):
    v = Vocabulary.build(["red circle", "blue square"] * 5, preset="seed", min_freq=1)
    table = TokenTable.build(
        {7: ["red circle"], 2: ["blue square", "red square", "x", "a", "b", "c"], 9: []}, v, per_image=5
    )
    assert table.image_ids.tolist() == [2, 7]
    tokens, lengths = table.rows([7, 2])
    assert tokens.shape == (2, 5, 22)
    assert (tokens[0] == tokens[0, 0]).all()  # one caption repeated
    assert lengths.tolist() == [[4] * 5, [4, 4, 2, 2, 2]]
    table.save(tmp_path / "tokens.npz")
    again = TokenTable.load(tmp_path / "tokens.npz")
    assert np.array_equal(again.tokens, table.tokens) and again.rows([2])[1].tolist() == [[4, 4, 2, 2, 2]]
    with pytest.raises(CapgenError, match="image id 5"):
        table.rows([5])
