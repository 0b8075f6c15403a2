"""A tiny random-init checkpoint for the server tests: real model code, real files, no training."""

import warnings

import torch

from model.nets.decoder import Decoder
from model.nets.encoder import Encoder
from model.runs import checkpoint
from model.runs.checkpoint_config import model_config, model_state
from pipeline.synth.scenes import COLOURS, SHAPES
from pipeline.text import SPECIALS, Vocabulary

IMAGE_SIZE = 128  # resnet18 to layer3 at 128 px: an 8x8 grid, as ResNet-50 gives at 256 px
GRID = [8, 8]


def make_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random init is the point here
        encoder = Encoder("resnet18", "none", "layer3")
    words = ["a", "the", "on", "left", "right", "of", "small", "large", *COLOURS, *SHAPES]
    vocab = Vocabulary(SPECIALS + words, preset="coco", max_len=8)  # short captions: fast search
    decoder = Decoder(len(vocab), encoder.channels, embed_dim=32, attention_dim=32, hidden_dim=32, dropout=0.0)
    with torch.no_grad():  # sharper attention than random init gives, so maps differ visibly per word
        decoder.attention.full_att.weight.mul_(30.0)
    config = model_config(encoder, decoder, IMAGE_SIZE)
    checkpoint.save(path, model_state(encoder, decoder), config, vocab)
    return path
