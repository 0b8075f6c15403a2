"""Checkpoint folder: model.safetensors, config.json (config + vocabulary), trainer.pt.

What the config and the weights hold is model/runs/checkpoint_config.py's. trainer.pt is a
TrainState as plain containers (tensors, dicts, lists, numbers, strings), read with
torch.load(weights_only=True): loading never unpickles objects. config.json records the
sha256 of model.safetensors, checked on load. The folder is replaced as a whole
(pipeline/atomic.py's atomic_dir); a crash mid-swap leaves NAME.old, which `resolve` finds.

A run folder holds best/ and last/. The trainer writes best first, then last (whose
trainer.pt records the best score), so a kill at any moment leaves a best/ (or best.old/)
holding the weights of the best score that last/ records; `reconcile` finishes an
interrupted swap before a resume. Every command taking a checkpoint goes through
`resolve`: a checkpoint folder, its NAME.old, or a run folder (its best, else its last).
"""

import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, fields

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from model.runs.checkpoint_config import check_config_file
from model.runs.schema import read_json
from model.runs.selection import UNRECORDED
from model.runs.state_check import check_trainer, check_weights
from pipeline.atomic import atomic_dir, atomic_write
from pipeline.errors import CapgenError, first_line, read_bytes, warn
from pipeline.text import Vocabulary

FORMAT = "capgen-checkpoint/1"
WEIGHTS, CONFIG, TRAINER = "model.safetensors", "config.json", "trainer.pt"


@dataclass
class TrainState:
    """Where a training run stands after an epoch: trainer.pt holds exactly its fields, as
    plain values (str, float, int and containers of them, tensors in the optimizer's and the
    RNG's states). `metric` names the validation score that selects `best`
    (model/runs/selection.py); trainer.pt files written before it was recorded read as
    selection.UNRECORDED."""

    seed: int
    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    best: float = -1.0  # best validation `metric` so far
    metric: str = UNRECORDED  # the key of `scores` that selects `best`: "Bleu_4", "CIDEr" for SCST
    bad_epochs: int = 0  # epochs since `best` last improved
    scores: dict | None = None  # the last validation's
    optimizer: dict | None = None  # optimizer.state_dict()
    scheduler: dict | None = None  # scheduler.state_dict()
    rng: dict | None = None  # rng_state()

    def to_dict(self) -> dict:
        """The fields as the plain dict trainer.pt holds."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict, path: str | os.PathLike) -> "TrainState":
        """The state trainer.pt's dict `d` holds (`path` names it in errors), checked against
        model/runs/state_check.py's TRAINER; a field added since it was written (TRAINER's
        optional ones) takes its default."""
        check_trainer(path, d)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def save(
    path: str | os.PathLike,
    model_state: dict[str, torch.Tensor],
    config: dict,
    vocab: Vocabulary,
    train_state: TrainState | None = None,
) -> str | os.PathLike:
    """Write the checkpoint folder `path` atomically: the weights, config.json (config, the
    vocabulary and the weights' sha256) and, given a TrainState, trainer.pt; returns path.
    An OS error (disk full, ...) is a one-line CapgenError; the previous folder survives."""
    try:
        with atomic_dir(path) as tmp:
            _write(tmp, model_state, config, vocab, train_state)
    except OSError as err:
        shutil.rmtree(os.path.abspath(os.fspath(path)) + ".tmp", ignore_errors=True)
        raise CapgenError(f"{err.filename or path}: cannot write checkpoint ({err.strerror or err})") from None
    return path


def _write(folder, model_state, config, vocab, train_state):
    # Copies: safetensors refuses tensors that share memory (views of one buffer).
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model_state.items()}
    data = safetensors_bytes(tensors)
    with atomic_write(os.path.join(folder, WEIGHTS)) as f:
        f.write(data)
    with atomic_write(os.path.join(folder, CONFIG), "w") as f:
        json.dump(
            {
                "format": FORMAT,
                "config": config,
                "vocab": vocab.to_dict(),
                "weights_sha256": hashlib.sha256(data).hexdigest(),
            },
            f,
            ensure_ascii=False,
        )
    if train_state is not None:
        with atomic_write(os.path.join(folder, TRAINER)) as f:
            torch.save(train_state.to_dict(), f)


def resolve(path: str | os.PathLike) -> str:
    """The checkpoint folder `path` names: itself, the NAME.old a save interrupted mid-swap
    left, or for a run folder its best (else its last), each with the same fallback."""
    path = os.path.normpath(os.fspath(path))
    if _is_run(path):
        for name in ("best", "last"):
            found = _folder(os.path.join(path, name))
            if os.path.isdir(found):
                return found
    return _folder(path)


def _folder(path):
    return path + ".old" if not os.path.exists(path) and os.path.isdir(path + ".old") else path


def _is_run(path):
    """A folder without config.json but with best/ or last/ (or their .old)."""
    return (
        os.path.isdir(path)
        and not os.path.exists(os.path.join(path, CONFIG))
        and any(os.path.isdir(os.path.join(path, n)) for n in ("best", "last", "best.old", "last.old"))
    )


def load(
    path: str | os.PathLike, trainer: bool = True
) -> tuple[dict[str, torch.Tensor], dict, Vocabulary, TrainState | None]:
    """(weights, config, vocabulary, TrainState or None) of the checkpoint `path` resolves to;
    the weights' sha256 is checked against config.json's, and trainer.pt (skipped with
    trainer=False; None when absent) read as plain containers only. Each file is checked
    against its schema (config.json: checkpoint_config.py's CONFIG_FILE; trainer.pt and the
    weights against the config: state_check.py). A missing, corrupt, foreign or damaged file
    is a one-line CapgenError naming the file and the field."""
    path = resolve(path)
    meta = _read_meta(path)
    weights = os.path.join(path, WEIGHTS)
    data = read_bytes(weights)
    try:
        state = safetensors_load(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise CapgenError(f"{weights}: not a safetensors file ({err})") from None
    want = meta.get("weights_sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise CapgenError(f"{weights}: sha256 does not match the one in config.json (corrupt or replaced)")
    check_weights(weights, os.path.join(path, CONFIG), state, meta["config"])
    trainer_path = os.path.join(path, TRAINER)
    train_state = read_trainer_state(trainer_path) if trainer and os.path.isfile(trainer_path) else None
    return state, meta["config"], Vocabulary.from_dict(meta["vocab"]), train_state


def read_config(path: str | os.PathLike) -> tuple[dict, Vocabulary]:
    """(config, vocabulary) from the checkpoint folder's config.json, checked, without the weights."""
    meta = _read_meta(resolve(path))
    return meta["config"], Vocabulary.from_dict(meta["vocab"])


def _read_meta(path):
    """The checkpoint folder's config.json, checked against its schema."""
    if not os.path.isdir(path):
        raise CapgenError(f"{path}: checkpoint folder not found")
    cfg_path = os.path.join(path, CONFIG)
    meta = read_json(cfg_path, "a capgen checkpoint config")
    if meta.get("format") != FORMAT:
        raise CapgenError(
            f"{cfg_path}: not a capgen checkpoint config (format {meta.get('format')!r}, expected {FORMAT})"
        )
    return check_config_file(cfg_path, meta)


def read_trainer_state(path: str | os.PathLike) -> TrainState:
    """The TrainState of a trainer.pt file, checked (see TrainState.from_dict)."""
    return TrainState.from_dict(load_trainer_state(path), path)


def load_trainer_state(path):
    """trainer.pt's plain containers, refusing anything else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError for objects, others for corrupt files
        raise CapgenError(f"{path}: refused: not plain tensors and containers ({first_line(err)})") from None


def rng_state():
    """Python, numpy and torch (CPU and CUDA) RNG states as plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
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


# ---------------------------------------------------------------- a run's best and last


def trainer_best(folder: str | os.PathLike) -> float | None:
    """The best score the checkpoint folder's trainer.pt records, or None."""
    state = _trainer_state(folder)
    best = state.best if state is not None else -1.0
    return best if math.isfinite(best) and best >= 0 else None


def _trainer_state(folder):
    path = os.path.join(folder, TRAINER)
    return read_trainer_state(path) if os.path.isfile(path) else None


def reconcile(run: str | os.PathLike) -> None:
    """Before a resume: finish swaps a kill interrupted (NAME.old -> NAME, drop NAME.tmp),
    then make RUN/best hold the best score RUN/last records (copied from last when last
    is that epoch, its scores' value of the metric its state selects by; a run of older
    code could have saved them in the other order)."""
    for name in ("best", "last"):
        final = os.path.join(run, name)
        shutil.rmtree(final + ".tmp", ignore_errors=True)
        if not os.path.exists(final) and os.path.isdir(final + ".old"):
            os.rename(final + ".old", final)
        shutil.rmtree(final + ".old", ignore_errors=True)
    last, best = os.path.join(run, "last"), os.path.join(run, "best")
    recorded = trainer_best(last) if os.path.isdir(last) else None
    if recorded is None or (os.path.isdir(best) and (trainer_best(best) or -1.0) >= recorded):
        return
    state = _trainer_state(last)
    if (state.scores or {}).get(state.metric) == recorded:
        with atomic_dir(best) as tmp:
            for name in os.listdir(last):
                shutil.copy2(os.path.join(last, name), os.path.join(tmp, name))
    else:
        warn(
            f"{best}: does not hold the recorded best score {recorded:.4f} and last/ is "
            "another epoch; the next better epoch rewrites it"
        )
