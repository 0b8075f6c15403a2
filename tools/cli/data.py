"""`capgen synth`, `capgen shards ...` and `capgen vocab`: data before the model."""

import click

from pipeline.cluster.ray_tasks import DEFAULT_ADDRESS as RAY_AUTO  # no Ray import: only a name
from pipeline.download.options import DownloadOptions as _Download

# The download options of --urls: flag -> (DownloadOptions field, type, help); defaults are DownloadOptions'.
DOWNLOAD_FLAGS = {
    "--concurrency": ("concurrency", click.IntRange(min=1), "Downloads in flight per process"),
    "--per-host": ("per_host", click.IntRange(min=1), "At most this many of them to one host"),
    "--timeout": ("timeout", click.FloatRange(min=0, min_open=True), "Seconds per attempt, body included"),
    "--retries": ("retries", click.IntRange(min=0), "Retries after a timeout, connection error or 5xx"),
    "--max-bytes": ("max_bytes", click.IntRange(min=1), "Larger images are skipped (too_many_bytes)"),
}


def _download_options(f):
    for flag, (field, kind, text) in reversed(DOWNLOAD_FLAGS.items()):
        f = click.option(flag, field, type=kind, help=f"{text} (--urls) [default: {getattr(_Download, field)}].")(f)
    return f


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--images", type=int, required=True, help="Total images (train2014 + val2014).")
@click.option("--seed", type=click.IntRange(min=0), required=True, help="Same seed, same bytes.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of images in val2014.")
@click.option("--width", type=int, default=640, show_default=True)
@click.option("--height", type=int, default=480, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Processes (default: cores, for 200+ images)."
)
@click.option(
    "--style",
    type=click.Choice(["shapes", "other"]),
    default="shapes",
    show_default=True,
    help="shapes: the demo's; other: other shapes, colours, sizes, counts, backgrounds and words.",
)
def synth(out, images, seed, val_fraction, width, height, workers, style):
    """Write a synthetic COCO 2014 captions dataset of shapes to OUT."""
    import time

    from pipeline.synth.generator import synthesize

    start = time.perf_counter()
    counts = synthesize(out, images, seed, val_fraction, width, height, workers, style)
    k = counts["karpathy"]
    click.echo(
        f"{out}: {counts['images']} images (train2014 {counts['train2014']}, "
        f"val2014 {counts['val2014']}: Karpathy val {k['val']} test {k['test']} "
        f"restval {k['restval']}), {counts['captions']} captions "
        f"in {time.perf_counter() - start:.1f} s"
    )


@click.group()
def shards():
    """Build, verify and merge WebDataset shard sets."""


@shards.command("build")
@click.option(
    "--coco-root", type=click.Path(file_okay=False), help="COCO 2014 folder (annotations/, train2014/, val2014/)."
)
@click.option("--split", type=click.Choice(["train2014", "val2014"]), help="COCO split (with --coco-root).")
@click.option(
    "--karpathy",
    type=click.Path(dir_okay=False),
    help="Karpathy's dataset_coco.json (instead of --split); images under --coco-root if given, else beside the file.",
)
@click.option("--karpathy-split", type=click.Choice(["train", "val", "test"]), help="train takes restval too.")
@click.option(
    "--captions",
    type=click.Path(dir_okay=False),
    help="Your own captions: metadata.jsonl (Hugging Face imagefolder), .csv or .tsv.",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(file_okay=False),
    help="Image folder of --captions (or --karpathy) [default: beside the file].",
)
@click.option(
    "--captions-split",
    type=click.Choice(["train", "val", "test"]),
    default="train",
    show_default=True,
    help="Which images of --captions to build.",
)
@click.option(
    "--urls",
    type=click.Path(dir_okay=False),
    help="An image URL list: .tsv (Conceptual Captions, headerless), .csv, .jsonl or .parquet; downloaded.",
)
@click.option("--url-column", help="URL column of --urls [default: url].")
@_download_options
@click.option("--file-column", help="Image file column of --captions [default: file_name].")
@click.option("--caption-column", help="Caption column of --captions or --urls [default: caption, else text].")
@click.option("--split-column", help="Split column of --captions (train/val/test) [default: split, if present].")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Split --captions by a hash of the file name instead: this share is val.",
)
@click.option("--out", type=click.Path(file_okay=False), help="Shard set folder [default: shards/NAME].")
@click.option("--name", help="Shard file prefix [default: coco-SPLIT, karpathy-SPLIT, captions-SPLIT or urls].")
@click.option("--image-size", type=click.IntRange(min=8), default=256, show_default=True)
@click.option(
    "--resize-mode", type=click.Choice(["stretch", "center-crop", "pad"]), default="stretch", show_default=True
)
@click.option(
    "--quality", type=click.IntRange(1, 100), default=90, show_default=True, help="JPEG quality of the samples."
)
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True, help="Images per shard.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes [default: cores].")
@click.option(
    "--num-jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs sharing the build [default: $SLURM_ARRAY_TASK_COUNT, else 1].",
)
@click.option(
    "--job-index",
    type=click.IntRange(min=0),
    default=None,
    help="This job: builds shards k with k mod NUM_JOBS == JOB_INDEX [default: the Slurm array task's index, else 0].",
)
@click.option(
    "--ray",
    is_flag=False,
    flag_value=RAY_AUTO,
    default=None,
    metavar="[ADDRESS]",
    help="Run one task per shard on a Ray cluster: ADDRESS host:port or ray://host:port [default: auto, "
    "the cluster started on this machine]; OUT on a file system every node sees.",
)
@click.option(
    "--vocab", "vocab_path", type=click.Path(dir_okay=False), help="Training vocab.json to reuse (val/test sets)."
)
@click.option(
    "--preset", type=click.Choice(["seed", "coco"]), default="seed", show_default=True, help="Caption cleaning."
)
@click.option("--min-freq", type=click.IntRange(min=1), default=5, show_default=True, help="Rarer words become <unk>.")
@click.option("--captions-per-image", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--index/--no-index", default=True, show_default=True, help="Write DALI index files (NAME-000000.idx).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def shards_build(images_dir, vocab_path, quiet, **options):
    """Decode COCO 2014, a Karpathy split, your own captions file or an image URL list once into verified
    WebDataset shards."""
    from pipeline.errors import UsageError, say
    from pipeline.shards.make import build_shards

    try:
        given = {field: options.pop(field) for field, _, _ in DOWNLOAD_FLAGS.values()}
        given = {k: v for k, v in given.items() if v is not None}
        options["download"] = _Download(**given) if given else None
        r = build_shards(images=images_dir, vocab=vocab_path, progress=not quiet, note=say, **options)
    except UsageError as err:
        raise click.UsageError(str(err)) from None
    _echo_build(r)


def _echo_build(r):
    """The build's one summary line (and, for a job of several, what to do next)."""
    job, out, num_jobs = r["job"], r["out"], r["num_jobs"]
    images = sum(s["samples"] for s in job["shards"])
    reasons = {}
    for s in job["skipped"]:
        reasons[s[2]] = reasons.get(s[2], 0) + 1
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
    if job["bad_captions"]:
        skipped += f"; bad captions {job['bad_captions']}"
    size = sum(s["bytes"] for s in job["shards"])
    where = f"job {r['job_index']} of {num_jobs}: " if num_jobs > 1 else ""
    click.echo(
        f"{out}: {where}{images} images, {sum(s['captions'] for s in job['shards'])} captions in "
        f"{len(job['shards'])} shards ({r['built']} built, {r['reused']} kept), {size / 1e6:.1f} MB, "
        f"skipped: {skipped}; {r['elapsed']:.1f} s ({images / max(r['elapsed'], 1e-9):.0f} images/s)"
    )
    if num_jobs > 1:
        click.echo(f"{out}: when all {num_jobs} jobs are done: capgen shards merge JOB_FOLDER... [--out SET]")


@shards.command("verify")
@click.argument("shard_dir", type=click.Path(file_okay=False))
def shards_verify(shard_dir):
    """Re-hash every shard against manifest.json and count its samples."""
    from pipeline.errors import error
    from pipeline.shards.shardset import read_manifest, verify

    problems = verify(shard_dir)
    for line in problems:
        error(line)
    if problems:
        raise SystemExit(1)
    m = read_manifest(shard_dir)
    click.echo(f"{shard_dir}: {len(m['shards'])} shards, {m['counts']['images']} samples: ok")


@shards.command("index")
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Rewrite current index files too.")
def shards_index(shard_dir, force):
    """Write DALI index files (NAME-000000.idx) for every shard of a set."""
    from pipeline.shards.wds_index import index_shards

    done = index_shards(shard_dir, force=force)
    written = sum(w for _, _, w in done)
    click.echo(f"{shard_dir}: {len(done)} shards, {written} index files written, {len(done) - written} current")


@shards.command("merge")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Merged set folder [default: the one DIR].")
def shards_merge(dirs, out):
    """Join the jobs of a --num-jobs build (one folder or several) into one shard set."""
    from pipeline.shards.merge import merge

    m = merge(dirs, out)
    c = m["counts"]
    click.echo(
        f"{out or dirs[0]}: {len(m['shards'])} shards, {c['images']} images, {c['captions']} captions; "
        f"skipped: {', '.join(f'{k} {v}' for k, v in c['skipped'].items()) or 'none'}: verified"
    )


@click.command("vocab")
@click.argument("shard_dir", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(["seed", "coco"]), default=None, help="[default: the set's]")
@click.option("--min-freq", type=click.IntRange(min=1), default=None, help="[default: the set's]")
@click.option("--vocab", "vocab_path", type=click.Path(dir_okay=False), help="Reuse this training vocab.json.")
@click.option("--captions-per-image", type=click.IntRange(min=1), default=None, help="[default: the set's]")
def vocab_cmd(shard_dir, preset, min_freq, vocab_path, captions_per_image):
    """Rebuild vocab.json and tokens.npz from the captions inside the shards (images untouched)."""
    from pipeline.shards.text_files import rebuild_text

    t = rebuild_text(shard_dir, preset, min_freq, vocab_path, captions_per_image)["text"]
    click.echo(
        f"{shard_dir}: vocabulary of {t['vocab_size']} words (preset {t['preset']}, min freq "
        f"{t['min_freq']}{', from ' + vocab_path if vocab_path else ''}), tokens.npz rewritten"
    )
