"""Left/right token swap for mirrored images: a horizontal flip turns "left" into "right"."""

import numpy as np
import torch

PAIRS = (("left", "right"),)


def mirror_ids(vocab):
    """Permutation over the vocabulary ids that swaps each left/right pair present in it."""
    perm = np.arange(len(vocab), dtype=np.int64)
    for a, b in PAIRS:
        if a in vocab.stoi and b in vocab.stoi:
            i, j = vocab.stoi[a], vocab.stoi[b]
            perm[i], perm[j] = j, i
    return perm


def mirror_tokens(tokens, flipped, perm):
    """tokens [B,K,T] long, flipped [B] bool, perm [V] long (same device): the rows of
    flipped images with left/right swapped, the others unchanged. No host sync."""
    return torch.where(flipped.view(-1, 1, 1), perm[tokens], tokens)
