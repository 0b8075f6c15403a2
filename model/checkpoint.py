"""Checkpoint folder: model.safetensors, config.json (config + vocabulary), trainer.pt.

What the config and the weights hold is model/checkpoint_config.py's. trainer.pt is a
TrainState as plain containers (tensors, dicts, lists, numbers, strings), read with
torch.load(weights_only=True): loading never unpickles objects. The folder is replaced
as a whole (pipeline/atomic.py's atomic_dir); a crash mid-swap leaves NAME.old, which
`load` uses.
"""
import json
import os
import random
from dataclasses import dataclass, fields

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from pipeline.atomic import atomic_dir, atomic_write
from pipeline.errors import CapgenError
from pipeline.text import Vocabulary

FORMAT = "capgen-checkpoint/1"
WEIGHTS, CONFIG, TRAINER = "model.safetensors", "config.json", "trainer.pt"


@dataclass
class TrainState:
    """Where a training run stands after an epoch: trainer.pt holds exactly its fields."""
    seed: int
    epoch: int = 0             # epochs done
    step: int = 0              # optimizer steps done
    best: float = -1.0         # best validation BLEU-4 so far
    bad_epochs: int = 0        # epochs since `best` last improved
    scores: dict | None = None     # the last validation's
    optimizer: dict | None = None  # optimizer.state_dict()
    scheduler: dict | None = None  # scheduler.state_dict()
    rng: dict | None = None        # rng_state()

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d, path):
        missing = [f.name for f in fields(cls) if f.name not in d] if isinstance(d, dict) else ["a dict"]
        if missing:
            raise CapgenError(f"{path}: not a capgen trainer state (no {missing[0]})")
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def save(path, model_state, config, vocab, train_state=None):
    """Write the checkpoint folder `path` atomically (train_state: a TrainState); returns path."""
    with atomic_dir(path) as tmp:
        _write(tmp, model_state, config, vocab, train_state)
    return path


def _write(folder, model_state, config, vocab, train_state):
    # Copies: safetensors refuses tensors that share memory (views of one buffer).
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model_state.items()}
    with atomic_write(os.path.join(folder, WEIGHTS)) as f:
        f.write(safetensors_bytes(tensors))
    with atomic_write(os.path.join(folder, CONFIG), "w") as f:
        json.dump({"format": FORMAT, "config": config, "vocab": vocab.to_dict()}, f, ensure_ascii=False)
    if train_state is not None:
        with atomic_write(os.path.join(folder, TRAINER)) as f:
            torch.save(train_state.to_dict(), f)


def resolve(path):
    """The folder to read: `path`, or the NAME.old a save interrupted mid-swap left."""
    path = os.path.normpath(os.fspath(path))
    if not os.path.isdir(path) and os.path.isdir(path + ".old"):
        return path + ".old"
    return path


def load(path, trainer=True):
    """-> (state_dict, config, vocab, TrainState or None). trainer=False skips trainer.pt."""
    path = resolve(path)
    config, vocab = read_config(path)
    weights = os.path.join(path, WEIGHTS)
    try:
        state = load_file(weights)
    except FileNotFoundError:
        raise CapgenError(f"{weights}: file not found") from None
    except (SafetensorError, OSError) as err:
        raise CapgenError(f"{weights}: not a safetensors file ({err})") from None
    train_state = None
    trainer_path = os.path.join(path, TRAINER)
    if trainer and os.path.isfile(trainer_path):
        train_state = TrainState.from_dict(load_trainer_state(trainer_path), trainer_path)
    return state, config, vocab, train_state


def read_config(path):
    """-> (config, vocab) from the checkpoint folder's config.json, without the weights."""
    path = resolve(path)
    if not os.path.isdir(path):
        raise CapgenError(f"{path}: checkpoint folder not found")
    cfg_path = os.path.join(path, CONFIG)
    try:
        with open(cfg_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        return meta["config"], Vocabulary.from_dict(meta["vocab"])
    except FileNotFoundError:
        raise CapgenError(f"{cfg_path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise CapgenError(f"{cfg_path}: not a capgen checkpoint config ({err})") from None


def load_trainer_state(path):
    """trainer.pt's plain containers, refusing anything else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError for objects, others for corrupt files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CapgenError(f"{path}: refused: not plain tensors and containers ({first})") from None


def rng_state():
    """Python, numpy and torch (CPU and CUDA) RNG states as plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
