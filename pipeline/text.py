"""Caption cleaning, the vocabulary, and the fixed-length token table.

Two presets. `seed`: lower-case, strip punctuation, drop one-letter words,
cut/pad to 20 words, add <start>/<end>. `coco`: the same but one-letter words
("a") are kept, as published COCO scores assume.
"""

import json
import os
import re
import unicodedata
import zipfile
from collections import Counter

import numpy as np

from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError

PRESETS = ("seed", "coco")
MAX_LEN = 20
PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]

_NOT_WORD = re.compile(r"[^\w\s]|_")


def clean(caption, preset="seed"):
    """Raw caption -> list of words under the preset (no length cut)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown text preset {preset!r} (expected one of {', '.join(PRESETS)})")
    text = unicodedata.normalize("NFKC", caption).lower()
    words = _NOT_WORD.sub(" ", text).split()
    if preset == "seed":
        words = [w for w in words if len(w) > 1]
    return words


class Vocabulary:
    def __init__(self, itos, preset="seed", max_len=MAX_LEN, min_freq=5):
        if list(itos[:4]) != SPECIALS:
            raise ValueError("vocabulary must start with " + " ".join(SPECIALS))
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.preset = preset
        self.max_len = max_len
        self.min_freq = min_freq

    @classmethod
    def build(cls, captions, preset="seed", min_freq=5, max_len=MAX_LEN):
        counts = Counter(w for c in captions for w in clean(c, preset)[:max_len])
        # Most frequent first, ties alphabetical: the same captions give the same ids.
        words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + words, preset, max_len, min_freq)

    def __len__(self):
        return len(self.itos)

    @property
    def length(self):
        """Encoded length T: <start> + max_len words + <end>."""
        return self.max_len + 2

    def encode(self, caption):
        words = clean(caption, self.preset)[: self.max_len]
        ids = [START] + [self.stoi.get(w, UNK) for w in words] + [END]
        return ids + [PAD] * (self.length - len(ids))

    def words(self, ids):
        out = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (START, PAD):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else "<unk>")
        return out

    def decode(self, ids):
        return " ".join(self.words(ids))

    def to_dict(self):
        return {"preset": self.preset, "max_len": self.max_len, "min_freq": self.min_freq, "itos": self.itos}

    @classmethod
    def from_dict(cls, d):
        return cls(d["itos"], d["preset"], d["max_len"], d["min_freq"])

    def save(self, path):
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=0)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise CapgenError(f"{path}: vocabulary file not found") from None
        except (OSError, ValueError, RecursionError) as err:  # ValueError: JSON or UTF-8
            raise CapgenError(f"{path}: not a capgen vocabulary ({err})") from None
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("itos"), list)
            or not all(isinstance(w, str) for w in d["itos"])
            or len(set(d["itos"])) != len(d["itos"])
            or d.get("preset") not in PRESETS
            or not isinstance(d.get("max_len"), int)
            or d["max_len"] < 1
            or not isinstance(d.get("min_freq"), int)
        ):
            raise CapgenError(
                f"{path}: not a capgen vocabulary (needs itos: distinct words, preset, max_len, min_freq)"
            )
        try:
            return cls.from_dict(d)
        except ValueError as err:
            raise CapgenError(f"{path}: not a capgen vocabulary ({err})") from None


class TokenTable:
    """Captions encoded to fixed length, K per image, keyed by image id."""

    def __init__(self, image_ids, tokens, lengths):
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.tokens = np.asarray(tokens, dtype=np.int32)
        self.lengths = np.asarray(lengths, dtype=np.int32)
        self._row = {int(i): r for r, i in enumerate(self.image_ids)}

    @classmethod
    def build(cls, captions_by_id, vocab, per_image=5):
        ids = sorted(i for i, caps in captions_by_id.items() if caps)
        tokens = np.zeros((len(ids), per_image, vocab.length), dtype=np.int32)
        for r, image_id in enumerate(ids):
            caps = captions_by_id[image_id]
            for k in range(per_image):  # fewer than K captions repeat cyclically
                tokens[r, k] = vocab.encode(caps[k % len(caps)])
        lengths = (tokens != PAD).sum(axis=2).astype(np.int32)
        return cls(ids, tokens, lengths)

    def __len__(self):
        return len(self.image_ids)

    @property
    def per_image(self):
        return self.tokens.shape[1]

    def rows(self, image_ids):
        try:
            idx = [self._row[int(i)] for i in image_ids]
        except KeyError as err:
            raise CapgenError(f"token table: no captions for image id {err.args[0]}") from None
        return self.tokens[idx], self.lengths[idx]

    def save(self, path):
        with atomic_write(path, "wb") as f:
            np.savez(f, image_ids=self.image_ids, tokens=self.tokens, lengths=self.lengths)

    @classmethod
    def load(cls, path):
        if not os.path.isfile(path):
            raise CapgenError(f"{path}: token table not found")
        try:
            with np.load(path, allow_pickle=False) as z:  # TypeError: an .npy, not an archive
                table = cls(z["image_ids"], z["tokens"], z["lengths"])
        except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise CapgenError(f"{path}: not a capgen token table ({err})") from None
        return table
