"""The GPU training step measured on the CPU (tools/bench/step/): a model of which tensors live on
the device and which reads of them make the host wait, no such read in any step kind's steady
state, and a compiled epoch compiling no more often than it has step shapes."""

import collections
import re

import pytest
import torch

from model.nets.decoder import Decoder
from model.nets.search import greedy, sample
from pipeline.text import END, PAD
from tools.bench.step.kinds import KINDS
from tools.bench.step.measure import compiles_over_epoch, count_syncs, epoch_shapes
from tools.bench.step.placement import DevicePlacement

pytestmark = pytest.mark.usefixtures("one_thread")


def where(sites):
    """{'op at path:line (function)': n} -> {'op in path (function)': n}: sites without line numbers."""
    out = collections.Counter()
    for k, v in sites.items():
        out[re.sub(r"^(\w+) at ([^:]+):\d+ ", r"\1 in \2 ", k)] += v
    return dict(out)


def test_reads_of_device_tensors_are_syncs_reads_of_host_tensors_are_not():
    linear = torch.nn.Linear(4, 3)
    placement = DevicePlacement(linear)
    host = torch.arange(8.0).view(2, 4)
    with placement:
        n = int(host.sum()) + len(host.tolist()) + host.nonzero().shape[0]  # host reads: free
        x = host.to(torch.device("cpu"), non_blocking=True)  # the batch's copy to the device
        made = torch.zeros(3, device="cpu")  # a factory naming the device
        y = linear(x)
        assert (placement.is_device(host), placement.is_device(x), placement.is_device(made)) == (False, True, True)
        assert placement.take().total_syncs() == 0
        assert placement.is_device(y) and not placement.is_device(y.detach().cpu())  # a copy to the host: a sync
        y.sum().item()
        bool(made.sum() > 0)
        made.nonzero()
        x[x > 3]
        y.tolist()
        counts = placement.take()
    assert n == 37
    here = "in tests/test_gpu_step.py (test_reads_of_device_tensors_are_syncs_reads_of_host_tensors_are_not)"
    ops = {"_local_scalar_dense": 2, "cpu": 1, "nonzero": 1, "index": 1, "tolist": 1}  # item and bool; x[x > 3]
    assert where(counts.syncs) == {f"{op} {here}": n for op, n in ops.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_no_step_kind_syncs_in_its_steady_state(kind):
    r = count_syncs(kind, batch=16)
    if kind == "scst":  # the reward is CIDEr-D on the host: the sampled captions go there, once
        assert (r["syncs"], where(r["sites"])) == (1, {"cpu in model/train/scst.py (_to_host)": 1})
        assert where(r["log_sites"]) == {"_local_scalar_dense in model/train/scst.py (take)": 1}
    else:
        assert (r["syncs"], r["sites"]) == (0, {})
        assert where(r["log_sites"]) == {
            "_local_scalar_dense in model/train/step.py (all_finite)": 1,
            "tolist in model/train/step.py (take)": 1,
        }
    assert r["log_syncs"] == sum(r["log_sites"].values())
    assert 0 < r["views"] < r["ops"]


def test_sampling_without_the_early_stop_draws_the_same_captions():
    """On a GPU, SCST's sampling and greedy baseline run every step (no per-word sync): the same
    captions, padded to max_len + 1."""
    torch.manual_seed(0)
    decoder = Decoder(12, 8, 8, 8, 8, dropout=0.0).eval()
    with torch.no_grad():
        decoder.fc.bias[END] = 2.0  # captions end early, long before max_len
    features = torch.randn(3, 4, 8)
    drawn = [sample(decoder, features, 5, 12, torch.Generator().manual_seed(7), stop_early=s) for s in (True, False)]
    (short, logp), (full, full_logp) = drawn
    L = short.shape[2]
    assert L < 13 and full.shape[2] == 13
    assert torch.equal(full[..., :L], short) and full[..., L:].eq(PAD).all()
    assert torch.equal(full_logp[..., :L], logp) and full_logp[..., L:].eq(0).all()
    (g_short, _), (g_full, _) = [greedy(decoder, features, 12, stop_early=s) for s in (True, False)]
    assert torch.equal(g_full[:, : g_short.shape[1]], g_short) and g_full[:, g_short.shape[1] :].eq(PAD).all()


def test_an_epoch_has_few_step_shapes():
    r = epoch_shapes(batch=16, images=160)
    assert r["batches"] == 10 and 0 < r["step_shapes"] <= r["batches"] * 21 and r["plans"] <= r["batches"]


def test_a_compiled_epoch_compiles_at_most_once_per_step_shape():
    """Dynamo's compiles (the backend does not change them) saturate: sizes turn dynamic after the
    first change, the step's state is contiguous; under the limit past which Dynamo runs eager."""
    frames, shapes = compiles_over_epoch("features", batches=4, batch=16, backend="eager")
    assert (shapes, frames) == (6, 5) and frames < torch._dynamo.config.recompile_limit
