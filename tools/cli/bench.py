"""`capgen bench ...`: every benchmark command (the benchmarks live in tools/bench/)."""

import click

from pipeline.errors import CapgenError, say
from tools.cli.caption import CHECKPOINT


@click.group()
def bench():
    """Throughput benchmarks, each against a baseline measured in the same run."""


@bench.command("serve")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(), help="Checkpoint folder (a run).")
@click.option("--requests", type=click.IntRange(min=1), default=None, help="[default: 500; with --soak 3000]")
@click.option(
    "--concurrency",
    "--clients",
    "concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="[default: 8; --soak 16]",
)
@click.option(
    "--images",
    "n_images",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Distinct synthetic JPEGs the requests cycle through.",
)
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch threads, here and in the server (default: torch's).",
)
@click.option("--url", default=None, help="Load this running server (of --checkpoint) instead of starting one.")
@click.option("--quick", is_flag=True, help="Smoke test: 24 requests, 4 at a time, 12 baseline captions.")
@click.option(
    "--soak",
    is_flag=True,
    help="Good, bad and oversized uploads mixed: each answer checked, the server's RSS after vs after warm-up.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Last stdout line: baseline_rps, rps, ratio, p50_ms, p95_ms, errors (with --soak its figures) as JSON.",
)
def bench_serve(checkpoint, requests, concurrency, n_images, beam, threads, url, quick, soak, as_json):
    """HTTP load on a local `capgen serve` vs. the same images captioned in process; --soak: a soak."""
    import json

    from tools.bench.serve import run, run_soak, soak_failures

    if soak:
        if url or quick:
            raise click.UsageError("--soak starts its own server (it reads its memory): no --url or --quick.")
        r = run_soak(checkpoint, requests or 3000, concurrency or 16, threads, echo=click.echo)
        if as_json:
            click.echo(json.dumps(r))
        if soak_failures(r):
            raise CapgenError(f"bench serve --soak: {soak_failures(r)}")
        return
    requests, concurrency = requests or 500, concurrency or 8
    if quick:
        requests, concurrency, n_images = 24, 4, 4
    r = run(
        checkpoint,
        requests,
        concurrency,
        n_images,
        baseline_calls=12 if quick else None,
        beam=beam,
        threads=threads,
        url=url,
        echo=click.echo,
    )
    if as_json:
        click.echo(json.dumps({k: r[k] for k in ("baseline_rps", "rps", "ratio", "p50_ms", "p95_ms", "errors")}))
    if r["errors"]:
        raise CapgenError(f"bench serve: {r['errors']} of {r['requests']} requests failed")


@bench.command("caption")
@CHECKPOINT
@click.option(
    "--onnx",
    "onnx_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Its `capgen export` folder [default: exported here, into a temp folder].",
)
@click.option("--images", "n_images", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="For torch and onnxruntime.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Passes over the images.")
@click.option("--quick", is_flag=True, help="Smoke test: 16 images, 1 round; not figures.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: the figures as one JSON object.")
def bench_caption_cmd(ckpt, onnx_dir, n_images, beam, threads, rounds, quick, as_json):
    """Captions/s and latency of torch vs onnxruntime at batch 1 and 16, the same images and beam."""
    import json

    from tools.bench.caption import run

    if quick:
        n_images, rounds = 16, 1
    r = run(ckpt, n_images, beam, threads, rounds, onnx_dir=onnx_dir, echo=click.echo)
    if as_json:
        click.echo(json.dumps(r))


@bench.command("search")
@click.option(
    "--images", type=click.IntRange(min=1), default=5000, show_default=True, help="Rows of the synthetic cache."
)
@click.option(
    "--queries", type=click.IntRange(min=1), default=8, show_default=True, help="Queries of the batched pass."
)
@click.option(
    "--baseline-images",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Images the per-image baseline loop scores.",
)
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch CPU threads (default: torch's).")
@click.option("--quick", is_flag=True, help="Smoke test: 300 images, 2 queries, 20 baseline images, 1 round.")
@click.option("--json", "json_out", is_flag=True, help="Also print the figures as one JSON object, the last line.")
def bench_search_cmd(images, queries, baseline_images, device, threads, quick, json_out):
    """Text-to-image scoring: one query over N images vs. a per-image loop; Q queries in one pass vs. one by one."""
    import json

    from tools.bench.search import report, run

    if quick:
        images, queries, baseline_images = 300, 2, 20
    r = run(images, queries, baseline_images, rounds=1 if quick else 3, device=device, threads=threads)
    click.echo(report(r))
    if json_out:
        click.echo(json.dumps(r))


@bench.command("train")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present).")
@click.option("--quick", is_flag=True, help="Smoke test: tiny shapes, one timed step each.")
@click.option(
    "--compile",
    "compiled",
    is_flag=True,
    help="Also time our step under torch.compile (CUDA graphs on a GPU; minutes to compile), "
    "and the GPU step's compiled floor and compiles.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch CPU threads (default: torch's; 1 measures steadier on a shared machine).",
)
@click.option("--json", "json_out", is_flag=True, help="Also print the figures as one JSON object, the last line.")
def bench_train_cmd(device, quick, compiled, threads, json_out):
    """Decoder training step and batched beam search vs. the common implementation (sgrvinod's);
    the GPU step's host syncs, ops, overhead floor and shapes, measured on the CPU."""
    import json

    from tools.bench.train import run, summary

    r = run(quick=quick, device=device, compiled=compiled, threads=threads)
    if json_out:
        click.echo(json.dumps(summary(r)))


@bench.command("loaders")
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--image-size", type=click.IntRange(min=8), default=256, show_default=True)
@click.option("--batches", type=click.IntRange(min=1), default=50, show_default=True, help="Timed batches.")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present).")
@click.option("--quick", is_flag=True, help="Smoke test: batch 16, 4 timed batches.")
@click.option("--json", "json_out", is_flag=True, help="Also print the figures as one JSON object, the last line.")
def bench_loaders(shard_dir, batch_size, image_size, batches, device, quick, json_out):
    """Loader-only images/s: DALI vs torchvision decode_jpeg vs the CPU webdataset loader."""
    import json

    from tools.bench.loaders import report, run

    r = run(shard_dir, batch_size, image_size, batches, device=device, quick=quick)
    click.echo(report(r))
    if json_out:
        click.echo(json.dumps(r))


@bench.command("gpu")
@click.option(
    "--shards",
    "shard_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Shard set (256 px for COCO-like figures) [default: a synthetic one, made in a temp folder].",
)
@click.option(
    "--features",
    type=click.Path(exists=True, dir_okay=False),
    help="Feature cache .h5 of the shards [default: extracted into a temp folder].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Images per step.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Timed steps per run.")
@click.option("--warmup", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Feature loader processes [default: min(cores, 8)]."
)
@click.option(
    "--vocab-size",
    type=click.IntRange(min=1),
    default=None,
    help="Decoder output size [default: 10000, COCO-like; --quick: the set's].",
)
@click.option("--device", default=None, help="cuda or cuda:N (default: cuda when present).")
@click.option(
    "--quick", is_flag=True, help="Smoke test (runs on a CPU too): batch 4, 2 steps, tiny shapes; not figures."
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    is_flag=False,
    flag_value="-",
    help="All figures as one JSON object: printed as the last line, or written to the file given.",
)
def bench_gpu_cmd(shard_dir, features, batch_size, steps, warmup, workers, vocab_size, device, quick, json_out):
    """Loaders and training (features / end to end frozen / fine-tuned) on one GPU: images/s, busy %, epoch."""
    import json

    from pipeline.atomic import atomic_write
    from tools.bench.gpu.measure import report, run

    r = run(
        shard_dir,
        features,
        batch_size,
        steps,
        warmup,
        device=device,
        quick=quick,
        workers=workers,
        vocab_size=vocab_size,
        echo=say,
    )
    click.echo(report(r))
    if json_out == "-":
        click.echo(json.dumps(r))
    elif json_out:
        with atomic_write(json_out, "w") as f:
            json.dump(r, f, indent=1)
        click.echo(f"{json_out}: written")


@bench.command("shards")
@click.option("--images", type=click.IntRange(min=8), default=None, help="[default: 200, or 50 per worker]")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Best of this many.")
@click.option("--workers", type=click.IntRange(min=1), multiple=True, help="Worker counts [default: 1 and all cores].")
@click.option("--resize", is_flag=True, help="Also time the candidate resizes per image (libvips, PIL, OpenCV, torch).")
@click.option("--quick", is_flag=True, help="Smoke test: 24 images, 1 round; not figures.")
@click.option(
    "--ray",
    "on_ray",
    is_flag=True,
    help="Instead: builds on local Ray clusters of 1 and 2 workers (or --workers), and the same with "
    "--workers [default: 800 images]; with --urls: of a URL list served with --latency.",
)
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: the figures as one JSON object.")
@click.option(
    "--urls", is_flag=True, help="Instead: a URL list over loopback HTTP, capgen vs. img2dataset, 1 core each."
)
@click.option("--latency", type=click.FloatRange(min=0), default=0.2, show_default=True, help="--urls: seconds/image.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="--ray --urls: downloads in flight per worker."
)
@click.option("--img2dataset", "i2d", help="--urls: the img2dataset executable [default: .i2d-venv, then PATH].")
def bench_shards_cmd(images, rounds, workers, resize, quick, on_ray, as_json, urls, latency, concurrency, i2d):
    """Whole `capgen shards build` runs, images/s, vs. a naive PIL loop on the same photographic JPEGs
    (--urls: whole URL-list builds vs. img2dataset's)."""
    import json

    if urls and not on_ray:
        from tools.bench.urls import run, summary

        if workers or resize:
            raise click.UsageError("--urls builds on one core per tool: --workers and --resize do not apply")

        r = run(images or (40 if quick else 600), 1 if quick else rounds, latency, i2d, echo=click.echo)
        if as_json:
            click.echo(json.dumps(summary(r)))
        return
    from tools.bench.shards import bench_ray, format_ray, run, summary

    if quick:
        images, rounds = images or 24, 1
    if on_ray:
        r = bench_ray(images, rounds, list(workers) or None, latency=latency if urls else None, concurrency=concurrency)
        click.echo(format_ray(r))
        if as_json:
            click.echo(json.dumps(r))
        return
    r = run(images, rounds, list(workers) or None, resize=resize, echo=click.echo)
    if as_json:
        click.echo(json.dumps(summary(r)))
