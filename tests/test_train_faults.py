"""Faults in training: divergence, kills at every checkpoint rename, mismatched inputs, a held lock,
a partial log line, checkpoint forms and hashes."""

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.infer.captioner import Captioner
from model.runs import checkpoint
from model.runs.log import read_log
from model.train.args import TrainArgs
from model.train.loop import train
from pipeline.errors import CapgenError
from pipeline.folder_lock import folder_lock

TINY = dict(batch_size=4, embed_dim=16, attention_dim=16, hidden_dim=16, workers=0, log_every=2, progress=False, seed=3)


@pytest.fixture(scope="module")
def data(train_val, tmp_path_factory):
    """Shard sets and resnet18/layer3 feature caches of 24 train / 6 val images, and a val
    cache from layer4."""
    from model.infer.extract import extract

    out = {**train_val, "val4_h5": str(tmp_path_factory.mktemp("faults") / "val4.h5")}
    with pytest.warns(UserWarning, match="random init"):
        extract(out["val"], out["val4_h5"], "resnet18", "layer4", "none", batch_size=8, workers=0, progress=False)
    return out


def args(data, out, **kw):
    return TrainArgs(train=data["train_h5"], val=data["val_h5"], out=str(out), **{**TINY, **kw})


def weights(folder):
    return load_file(os.path.join(checkpoint.resolve(folder), "model.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("whole") / "run"
    train(args(data, run, epochs=2))
    return str(run)


# ---------------------------------------------------------------- divergence


def test_inf_features_stop_the_run_as_corrupt_input_and_keep_the_last_good_checkpoints(data, tmp_path):
    run = tmp_path / "run"
    train(args(data, run, epochs=1))
    before = {n: weights(run / n) for n in ("best", "last")}
    bad = str(tmp_path / "inf.h5")
    shutil.copy(data["train_h5"], bad)
    with h5py.File(bad, "r+") as f:
        f["features"][0:24] = np.inf
    with pytest.raises(CapgenError) as err:
        train(TrainArgs(**{**vars(args(data, run, epochs=2, resume=True)), "train": bad}))
    assert str(err.value) == (  # the input is named, not the learning rate
        f"{bad}: corrupt input: non-finite features reached the model by epoch 2, step 8 "
        f"(`capgen features verify {bad}` names the damaged rows); the last good checkpoints are kept"
    )
    for name, state in before.items():
        assert same(weights(run / name), state)
    best = torch.load(run / "best" / "trainer.pt", weights_only=True)["best"]
    assert np.isfinite(best) and best >= 0


def test_huge_learning_rate_saves_no_best(data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CapgenError, match=r"training diverged: non-finite loss by epoch 1, step 2 "):
        train(args(data, run, epochs=1, decoder_lr=1e30, grad_clip=1e30))
    assert not os.path.exists(run / "best") and not os.path.exists(run / "last")


# ---------------------------------------------------------------- kills


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def kill_at(monkeypatch, k):
    """os.rename / os.replace raise Killed at their k-th call (1-based) from now on."""
    calls = {"n": 0}
    real = {"rename": os.rename, "replace": os.replace}

    def wrap(name):
        def fake(*a, **kw):
            calls["n"] += 1
            if calls["n"] == k:
                raise Killed(name)
            return real[name](*a, **kw)

        return fake

    for name in real:
        monkeypatch.setattr(os, name, wrap(name))
    return calls


def kill_at_every_rename(first, whole, tmp_path, monkeypatch, make_args):
    """Copy run `first` (one epoch done), resume it to make_args(run)'s end killed at each
    os.rename / os.replace in turn, then resume again: each run ends with the weights of
    `whole` (the run never stopped). Returns the number of renames."""
    counted = tmp_path / "count"
    shutil.copytree(first, counted)
    with monkeypatch.context() as m:
        calls = kill_at(m, 0)
        train(make_args(counted))
    renames = calls["n"]
    for k in range(1, renames + 1):
        run = tmp_path / f"k{k}"
        shutil.copytree(first, run)
        with monkeypatch.context() as m, pytest.raises(Killed):
            kill_at(m, k)
            train(make_args(run))
        # After the kill: a best exists and holds at least the best score last records.
        recorded = checkpoint.trainer_best(checkpoint.resolve(run / "last"))
        assert checkpoint.trainer_best(checkpoint.resolve(run / "best")) >= recorded
        assert Captioner.load(run).vocab is not None  # a run folder loads (its best)
        train(make_args(run))
        assert sorted(n for n in os.listdir(run) if n.startswith(("best", "last"))) == ["best", "last"], k
        assert same(weights(run / "last"), weights(os.path.join(whole, "last"))), k
        assert same(weights(run / "best"), weights(os.path.join(whole, "best"))), k
        assert logged(run) == logged(whole), k
    return renames


def logged(run):
    """The run log's records without their wall-clock measurements."""
    clock = {"samples_per_s", "seconds"}
    return [{k: v for k, v in r.items() if k not in clock} for r in read_log(os.path.join(run, "log.jsonl"))]


def test_kill_at_every_rename_of_the_second_epoch_then_resume(data, whole, tmp_path, monkeypatch):
    first = tmp_path / "first"
    train(args(data, first, epochs=1))
    renames = kill_at_every_rename(
        first, whole, tmp_path, monkeypatch, lambda run: args(data, run, epochs=2, resume=True)
    )
    assert renames == 13  # args.json, log, best (3 files + 2 swaps), last (the same), curve


def test_scst_kill_at_every_rename_of_the_second_epoch_then_resume(data, whole, tmp_path, monkeypatch):
    """SCST from the cross-entropy run's best, two epochs of 6 steps: killed at each rename of
    the second epoch's saves and resumed, it ends as the run never stopped (weights, log)."""
    scst = dict(scst=True, init=os.path.join(whole, "best"), scst_samples=2)
    uninterrupted, first = tmp_path / "whole", tmp_path / "first"
    train(args(data, uninterrupted, epochs=2, **scst))
    train(args(data, first, epochs=1, **scst))
    renames = kill_at_every_rename(
        first, uninterrupted, tmp_path, monkeypatch, lambda run: args(data, run, epochs=2, resume=True, **scst)
    )
    improved = checkpoint.trainer_best(uninterrupted / "best") > checkpoint.trainer_best(first / "best")
    assert renames == (13 if improved else 8)  # as above; without a better epoch, no best


def test_reconcile_restores_best_from_old_and_from_last(data, whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    os.rename(run / "best", run / "best.old")  # killed between the two renames of best
    checkpoint.reconcile(run)
    assert sorted(os.listdir(run)).count("best") == 1 and not os.path.exists(run / "best.old")
    # best lost (or older than recorded) while last is the best epoch: copied from last.
    state = torch.load(run / "last" / "trainer.pt", weights_only=True)
    if state["scores"]["Bleu_4"] == state["best"]:
        shutil.rmtree(run / "best")
        checkpoint.reconcile(run)
        assert same(weights(run / "best"), weights(run / "last"))


def test_resume_restores_a_lost_best_of_an_scst_run_from_last(data, whole, tmp_path):
    """The SCST twin of the above: best selected by CIDEr, which last/'s trainer state names."""
    run = tmp_path / "scst"
    init = os.path.join(whole, "best")
    train(args(data, run, epochs=1, scst=True, init=init, scst_samples=2))
    state = torch.load(run / "last" / "trainer.pt", weights_only=True)
    assert state["metric"] == "CIDEr" and state["scores"]["CIDEr"] == state["best"] >= 0
    assert state["scores"]["Bleu_4"] != state["best"]  # what reconcile compared before
    shutil.rmtree(run / "best")  # lost after last/ recorded the better score
    result = train(args(data, run, epochs=1, scst=True, init=init, scst_samples=2, resume=True))
    assert result["metric"] == "CIDEr" and result["best"] == state["best"] and result["epochs"] == 1
    assert same(weights(run / "best"), weights(run / "last"))
    assert checkpoint.trainer_best(run / "best") == checkpoint.trainer_best(run / "last") == state["best"]
    assert checkpoint.load(run / "best")[3].metric == "CIDEr"


# ---------------------------------------------------------------- checkpoint forms and hashes


def test_every_checkpoint_form_resolves(whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    assert checkpoint.resolve(run) == str(run / "best")
    assert checkpoint.resolve(run / "last") == str(run / "last")
    os.rename(run / "last", run / "last.old")
    assert checkpoint.resolve(run / "last") == str(run / "last.old")
    assert checkpoint.resolve(run / "last.old") == str(run / "last.old")
    shutil.rmtree(run / "best")
    assert checkpoint.resolve(run) == str(run / "last.old")
    for form in (run, run / "last", run / "last.old"):
        assert Captioner.load(form).grid == [2, 2]


def test_weights_hash_is_checked(whole, tmp_path):
    ckpt = tmp_path / "best"
    shutil.copytree(os.path.join(whole, "best"), ckpt)
    with open(ckpt / "config.json") as f:
        assert len(json.load(f)["weights_sha256"]) == 64
    state = weights(ckpt)
    state["decoder.fc.bias"] = state["decoder.fc.bias"] + 1
    from safetensors.torch import save_file

    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CapgenError) as err:
        checkpoint.load(ckpt)
    assert (
        str(err.value)
        == f"{ckpt}/model.safetensors: sha256 does not match the one in config.json (corrupt or replaced)"
    )


def test_vocabulary_cut_short_is_refused(whole, tmp_path):
    ckpt = tmp_path / "best"
    shutil.copytree(os.path.join(whole, "best"), ckpt)
    with open(ckpt / "config.json") as f:
        meta = json.load(f)
    n = len(meta["vocab"]["itos"])
    meta["vocab"]["itos"] = meta["vocab"]["itos"][:-2]
    with open(ckpt / "config.json", "w") as f:
        json.dump(meta, f)
    with pytest.raises(CapgenError) as err:
        Captioner.load(ckpt)
    assert str(err.value) == f"{ckpt}/config.json: vocabulary of {n - 2} words, the decoder predicts {n}"


# ---------------------------------------------------------------- inputs, lock, log


def test_val_features_from_another_encoder_are_refused(data, tmp_path):
    with pytest.raises(CapgenError) as err:
        train(TrainArgs(**{**vars(args(data, tmp_path / "run", epochs=1)), "val": data["val4_h5"]}))
    assert str(err.value) == f"{data['val4_h5']}: made with stop 'layer4', but {data['train_h5']} with 'layer3'"


def test_val_set_with_another_vocabulary_is_refused(data, tiny_shards, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(data["val"], val)
    with open(val / "vocab.json") as f:
        vocab = json.load(f)
    vocab["itos"] = vocab["itos"][:-1]
    with open(val / "vocab.json", "w") as f:
        json.dump(vocab, f)
    with pytest.raises(CapgenError) as err:
        train(
            TrainArgs(
                train=data["train"],
                val=str(val),
                out=str(tmp_path / "run"),
                epochs=1,
                encoder="resnet18",
                encoder_stop="layer3",
                encoder_weights="none",
                **TINY,
            )
        )
    assert str(err.value) == (
        f"{val}/vocab.json: not the vocabulary of {data['train']}/vocab.json "
        "(build the val set with --vocab TRAIN/vocab.json)"
    )


def test_a_run_folder_in_use_is_refused(data, tmp_path):
    run = tmp_path / "run"
    with folder_lock(run):
        with pytest.raises(CapgenError) as err:
            train(args(data, run, epochs=1))
    assert str(err.value) == f"{run}: in use by pid {os.getpid()}"


def test_partial_last_log_line_does_not_break_resume(data, whole, tmp_path):
    run = tmp_path / "run"
    train(args(data, run, epochs=1))
    with open(run / "log.jsonl", "a") as f:
        f.write('{"type": "train", "epoch": 1, "st')  # killed mid-write
    assert [r["type"] for r in read_log(run / "log.jsonl")][-1] == "val"
    train(args(data, run, epochs=2, resume=True))

    def losses(folder):
        return [r["loss"] for r in read_log(os.path.join(folder, "log.jsonl")) if r["type"] == "train"]

    assert losses(run) == losses(whole)
    with open(run / "log.jsonl", "a") as f:
        f.write('not json\n{"type": "val"}\n')
    with pytest.raises(CapgenError, match=r"log\.jsonl: line \d+ is not a JSON object"):
        read_log(run / "log.jsonl")
