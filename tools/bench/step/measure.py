"""`capgen bench train`'s GPU-step figures, measured on the CPU (tools/bench/step/kinds.py's steps).

Per step kind: host syncs per steady-state step (tools/bench/step/placement.py's model of a
GPU's placement) with where they occur, and those of the log interval (the step's `take()`,
the divergence guard's `all_finite()`: once per --log-every steps and at the epoch's end);
aten ops on device tensors per step (the eager step's kernel launches at most; view ops
apart); the overhead floor: the step's best time at tiny sizes on this CPU, eager and
compiled; the budget: ms per step of an epoch of COCO train (82,783 images x 5 captions) in
30 s at the GPU batch size. Shapes: the plan's distinct decoder step shapes (images n_t x
captions g_t, what the compiled `Decoder.advance` and CUDA graphs must cover) over an epoch
of COCO-like caption lengths, and the compiles an epoch of a compiled step makes.
"""

import time

import torch

from model.nets.decoder import train_plan
from tools.bench.step.kinds import KINDS, build, loader_batch
from tools.bench.step.placement import DevicePlacement

COCO_TRAIN_IMAGES = 82_783
EPOCH_SECONDS = 30.0  # the GPU goal: an epoch of COCO train in 30 s on an H200
GPU_BATCH = 128  # the batch a GPU step would use (images, 5 captions each)
COMPILE_BATCHES = 16  # batches of a compiled step whose compiles are counted


def budget_ms(batch=GPU_BATCH):
    """Milliseconds per step left by the goal at `batch` images per step."""
    return 1000.0 * EPOCH_SECONDS * batch / COCO_TRAIN_IMAGES


def count_syncs(kind, batch=GPU_BATCH, steps=2):
    """{"syncs": per steady-state step, "sites", "log_syncs", "log_sites", "ops", "views"} of one kind."""
    step, model, optimizer = build(kind)
    batches = [loader_batch(kind, batch, seed=s) for s in range(steps + 1)]
    step(batches[0])  # the first step makes the optimizer's state
    step.take()
    placement = DevicePlacement(model, optimizer)
    placement.mark([v for v in vars(step).values() if isinstance(v, torch.Tensor)])  # the step's device sums
    per_step = []
    with placement:
        for b in batches[1:]:
            step(b)
            per_step.append(placement.take())
        if hasattr(step, "all_finite"):
            step.all_finite()
        step.take()
        log = placement.take()
    last = per_step[-1]
    return {
        "syncs": last.total_syncs(),
        "sites": dict(last.syncs),
        "log_syncs": log.total_syncs(),
        "log_sites": dict(log.syncs),
        "ops": last.ops,
        "views": last.views,
    }


def floor_ms(kind, batch=GPU_BATCH, compiled=None, repeats=3):
    """(best ms of a step at tiny sizes, seconds spent before it: warm-up and compiles);
    compiled: the torch.compile backend, None for eager."""
    t0 = time.perf_counter()
    step, _, _ = build(kind, compiled=compiled)
    batches = [loader_batch(kind, batch, seed=s) for s in range(2)]
    for b in batches:  # warm-up (compiles)
        step(b)
    warm = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        step(batches[0])
        best = min(best, time.perf_counter() - t)
    step.take()
    return 1000.0 * best, warm


def epoch_shapes(batch=GPU_BATCH, images=COCO_TRAIN_IMAGES, seed=0):
    """{"batches", "step_shapes", "plans"}: an epoch of COCO-like lengths in batches of `batch`:
    the distinct decoder step shapes (n_t, g_t) and the distinct plans (sequences of them)."""
    shapes, plans, n = set(), set(), 0
    for start in range(0, images, batch):
        lengths = loader_batch("features", min(batch, images - start), seed=seed + n)["lengths"]
        widths = train_plan(lengths).widths
        shapes.update(widths)
        plans.add(widths)
        n += 1
    return {"batches": n, "step_shapes": len(shapes), "plans": len(plans)}


def compiles_over_epoch(kind, batches, batch, backend="inductor"):
    """(compiled frames, distinct step shapes) over `batches` batches of a compiled step: the
    frames Dynamo compiled (first compiles and recompiles, whatever the backend)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    step, _, _ = build(kind, compiled=backend)
    shapes = set()
    for s in range(batches):
        b = loader_batch(kind, batch, seed=s)
        shapes.update(train_plan(b["lengths"]).widths)
        step(b)
    return int(counters["frames"]["ok"]), len(shapes)


def measure(compiled=False, batch=GPU_BATCH, epoch_images=COCO_TRAIN_IMAGES, compile_batches=COMPILE_BATCHES):
    """Every figure as a dict: {"batch", "budget_ms", "kinds": {kind: {...}}, "shapes": {...}};
    compiled adds each kind's compiled floor (inductor) and the compiles over `compile_batches`
    batches of the compiled features step (Dynamo's count: its eager backend compiles as often)."""
    out = {"batch": batch, "budget_ms": budget_ms(batch), "kinds": {}}
    for kind in KINDS:
        r = count_syncs(kind, batch)
        r["floor_ms"], _ = floor_ms(kind, batch)
        if compiled and kind != "scst":  # the trainer refuses --compile with --scst
            r["compiled_floor_ms"], r["compile_s"] = floor_ms(kind, batch, compiled="inductor")
        out["kinds"][kind] = r
    out["shapes"] = epoch_shapes(batch, epoch_images)
    if compiled:
        frames, shapes = compiles_over_epoch("features", compile_batches, batch, backend="eager")
        out["shapes"].update(compile_batches=compile_batches, compile_batch_shapes=shapes, compiles=frames)
    return out


def format_report(r):
    lines = [f"GPU step on the CPU at batch {r['batch']} x 5 captions, tiny sizes: budget {r['budget_ms']:.1f} ms/step"]
    for kind, k in r["kinds"].items():
        compiled = f", compiled {k['compiled_floor_ms']:.1f} ms" if "compiled_floor_ms" in k else ""
        lines.append(
            f"  {kind:9s} syncs/step {k['syncs']} {sorted(k['sites'])}, at log interval {k['log_syncs']}; "
            f"ops/step {k['ops']} ({k['views']} views); floor {k['floor_ms']:.1f} ms{compiled}"
        )
    s = r["shapes"]
    lines.append(f"  epoch of {s['batches']} batches: {s['step_shapes']} distinct step shapes, {s['plans']} plans")
    if "compiles" in s:
        lines.append(
            f"  compiled step: {s['compiles']} compiles over {s['compile_batches']} batches "
            f"({s['compile_batch_shapes']} distinct step shapes in them)"
        )
    return "\n".join(lines)
