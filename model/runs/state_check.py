"""What the torch side of a checkpoint must hold, checked where it is read (model/runs/schema.py's
one-line 'FILE: FIELD: cause'): trainer.pt against TRAINER (TrainState's fields: types, ranges,
the RNG states' shapes), the weights against config.json (each tensor of the model its config
describes, of that shape), and on a resume the optimizer and scheduler states against those
the run's options build (their parameter groups, each state tensor shaped as its parameter).
"""

import math
import os
import random
import warnings

import torch

from model.nets.decoder import Decoder
from model.nets.encoder import build_encoder
from model.runs.schema import AnyOf, Anything, Bool, Int, List, Map, Num, Obj, Opt, Str, Tensor, Tuple, check
from pipeline.errors import CapgenError

_VERSION, _INTERNAL, _ = random.getstate()
_MT_WORDS = len(_INTERNAL) - 1  # Mersenne Twister: 624 words, then the position


def _mt_position(internal):
    return None if internal[-1] <= _MT_WORDS else f"its last item (the position) must be <= {_MT_WORDS}"


RNG = Obj(
    {
        "python": Tuple(
            Int(low=_VERSION, high=_VERSION),
            List(Int(0, 2**32 - 1), length=_MT_WORDS + 1, rule=_mt_position),
            Opt(Num()),
        ),
        "numpy": Obj(
            {
                "kind": Str(("MT19937",)),
                "keys": Tensor(
                    "int64",
                    (_MT_WORDS,),
                    rule=lambda t: None if t.min() >= 0 and t.max() < 2**32 else "holds values outside [0, 2**32)",
                ),
                "pos": Int(0, _MT_WORDS),
                "has_gauss": Int(0, 1),
                "gauss": Num(),
            }
        ),
        "torch": Tensor("uint8", tuple(torch.get_rng_state().shape)),
        "cuda": List(Tensor("uint8", (None,))),
    }
)
SCORE = Num(finite=False)  # a score may be -inf or inf, never NaN
TRAINER = Obj(
    {
        "seed": Int(),
        "epoch": Int(low=0),
        "step": Int(low=0),
        "best": SCORE,
        "metric": Str(),
        "bad_epochs": Int(low=0),
        "scores": Opt(Map(Str(), SCORE)),
        "optimizer": Opt(
            Obj(
                {
                    "state": Map(Int(low=0), Map(Str(), AnyOf(Tensor(), Num()))),
                    "param_groups": List(Obj({"params": List(Int(low=0)), "lr": Num(low=0)}), min_length=1),
                }
            )
        ),
        "scheduler": Opt(Map(Str(), Anything())),
        "rng": Opt(RNG),
    },
    optional=("metric",),  # TrainState fields an older trainer.pt may lack (they take their defaults)
)


def check_trainer(path, d):
    """trainer.pt's dict `d` checked against TRAINER: CapgenError 'PATH: FIELD: cause'."""
    return check(path, d, TRAINER)


# ---------------------------------------------------------------- weights against config.json


def _skeleton(config_path, config):
    """(decoder, encoder) of the config, on the meta device (shapes only, no memory)."""
    enc = config["encoder"]
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random init
        decoder = Decoder(**config["decoder"])
        try:
            encoder = build_encoder(enc["name"], "none", enc["stop"])
        except CapgenError as err:  # unknown name or stop
            raise CapgenError(f"{config_path}: config.{err}") from None
    if encoder.channels != decoder.feature_dim:
        raise CapgenError(
            f"{config_path}: config.decoder.feature_dim: {decoder.feature_dim}, but the {enc['name']} encoder "
            f"to {enc['stop']} gives {encoder.channels} channels"
        )
    return decoder, encoder


def check_weights(path, config_path, state, config):
    """The weights `state` (from `path`) are those of the model config.json (`config_path`,
    already checked against its schema) describes: each of its tensors, of its shape and kind,
    finite; the encoder's only when the checkpoint holds it. One line naming the tensor."""
    decoder, encoder = _skeleton(config_path, config)
    config_name = os.path.basename(config_path)
    expected = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    if any(k.startswith("encoder.") for k in state):
        expected.update({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
    for name, want in expected.items():
        if name not in state:
            raise CapgenError(f"{path}: {name}: missing (the model its {config_name} describes has it)")
        got = state[name]
        if list(got.shape) != list(want.shape):
            raise CapgenError(f"{path}: {name}: shape {list(got.shape)}, its {config_name} gives {list(want.shape)}")
        if got.is_floating_point() != want.is_floating_point():
            raise CapgenError(f"{path}: {name}: {got.dtype}, its {config_name} gives {want.dtype}")
        # One pass, no copy: a float64 sum is finite iff every value is (float32 cannot overflow it).
        if got.is_floating_point() and not math.isfinite(got.sum(dtype=torch.float64)):
            raise CapgenError(f"{path}: {name}: holds non-finite values (NaN or inf)")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CapgenError(f"{path}: {extra[0]}: not a weight of the model its {config_name} describes")


# ---------------------------------------------------------------- a resume's optimizer and scheduler


def like(example):
    """The spec a value of the same make as `example` fits: a number for a number, a list of as
    many items like its items, an object with its keys, a tensor of its dtype and shape; None
    (an unset option) takes anything."""
    if isinstance(example, bool):
        return Bool()
    if isinstance(example, (int, float)):
        return Num(finite=False)
    if isinstance(example, str):
        return Str()
    if isinstance(example, (list, tuple)):
        return Tuple(*map(like, example))
    if isinstance(example, dict):
        return Obj({k: like(v) for k, v in example.items()})
    if isinstance(example, torch.Tensor):
        return Tensor(str(example.dtype).removeprefix("torch."), tuple(example.shape))
    return Anything()


def check_resume(path, state, optimizer, scheduler):
    """trainer.pt's (`path`) TrainState `state` can resume a run whose options built `optimizer`
    and `scheduler`: it holds their states and the RNG's; as many parameter groups of as many
    parameters, each group's settings of the same kinds, each per-parameter state tensor of its
    parameter's shape; the scheduler's fields those of the same scheduler. One line naming the field."""
    for name in ("optimizer", "scheduler", "rng"):
        if getattr(state, name) is None:
            raise CapgenError(f"{path}: {name}: missing (cannot resume)")
    saved_optimizer, saved_scheduler = state.optimizer, state.scheduler
    live = optimizer.state_dict()["param_groups"]
    groups = Tuple(
        *(
            Obj({**{k: like(v) for k, v in g.items() if k != "params"}, "params": List(Int(low=0), len(g["params"]))})
            for g in live
        ),
        what=f"{len(live)} parameter group{'s' * (len(live) > 1)} (as these options build)",
    )
    check(path, {"optimizer": saved_optimizer}, Obj({"optimizer": Obj({"param_groups": groups})}))
    shapes = {}
    for saved, group in zip(saved_optimizer["param_groups"], optimizer.param_groups):
        shapes.update({i: tuple(p.shape) for i, p in zip(saved["params"], group["params"])})
    for i, entry in saved_optimizer["state"].items():
        if i not in shapes:
            raise CapgenError(f"{path}: optimizer.state[{i}]: no parameter of param_groups has this id")
        per_param = Map(Str(), AnyOf(Num(), Tensor(shape=()), Tensor(shape=shapes[i])))
        check(path, {"optimizer": {"state": {i: entry}}}, Obj({"optimizer": Obj({"state": Obj({i: per_param})})}))
    check(path, {"scheduler": saved_scheduler}, Obj({"scheduler": like(scheduler.state_dict())}))
