"""The `capgen` command line: parse options, then call into pipeline/ and model/."""
import os
import sys
from dataclasses import MISSING, fields

import click

from model.train_args import TrainArgs
from pipeline.errors import CapgenError
from tools.batcher import MAX_BATCH, WINDOW_S


@click.group()
def cli():
    """capgen: image captions, from COCO to a web page."""


@cli.group()
def bench():
    """Throughput benchmarks, each against a baseline measured in the same run."""


@cli.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--images", type=int, required=True, help="Total images (train2014 + val2014).")
@click.option("--seed", type=click.IntRange(min=0), required=True, help="Same seed, same bytes.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of images in val2014.")
@click.option("--width", type=int, default=640, show_default=True)
@click.option("--height", type=int, default=480, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default: cores, for 200+ images).")
def synth(out, images, seed, val_fraction, width, height, workers):
    """Write a synthetic COCO 2014 captions dataset of shapes to OUT."""
    import time
    from pipeline.synth import synthesize
    start = time.perf_counter()
    counts = synthesize(out, images, seed, val_fraction, width, height, workers)
    k = counts["karpathy"]
    click.echo(f"{out}: {counts['images']} images (train2014 {counts['train2014']}, "
               f"val2014 {counts['val2014']}: Karpathy val {k['val']} test {k['test']} "
               f"restval {k['restval']}), {counts['captions']} captions "
               f"in {time.perf_counter() - start:.1f} s")


def _finite(param, value):
    """click's FloatRange lets nan through (every comparison with nan is false)."""
    if value is not None and value != value:
        raise click.BadParameter(f"{value} is not a number", param=param)
    return value


@cli.command()
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(), help="Checkpoint folder (a run).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes the page.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True, max=1e6), default=10.0,
              show_default=True, callback=lambda ctx, param, value: _finite(param, value),
              help="Larger uploads get 413.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=50_000_000, show_default=True,
              help="Larger images (width x height, read from the header) get 413 before decoding.")
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--topk", type=click.IntRange(min=1), default=3, show_default=True, help="Captions per image.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads for the model (default: torch's, one per core).")
@click.option("--log-level", type=click.Choice(["info", "warning", "error"]), default="info", show_default=True)
@click.option("--batch-window-ms", type=click.FloatRange(min=0), default=WINDOW_S * 1000, show_default=True,
              help="Requests arriving within this window of the oldest waiting one share a batch.")
@click.option("--max-batch", type=click.IntRange(min=1), default=MAX_BATCH, show_default=True,
              help="Images per batched beam search (1: no batching).")
@click.option("--index", default=None,
              help="Feature cache .h5 or shard set: adds a search box over its images (text to image).")
def serve(checkpoint, host, port, max_upload_mb, max_pixels, beam, topk, threads, log_level, batch_window_ms,
          max_batch, index):
    """Web page and JSON API: upload an image, get captions and each word's attention."""
    from tools.serve import serve as run_server
    run_server(checkpoint, host=host, port=port, beam=beam, topk=min(topk, beam), max_upload_mb=max_upload_mb,
               max_pixels=max_pixels, threads=threads, log_level=log_level, batch_window_ms=batch_window_ms,
               max_batch=max_batch, index=index)


@bench.command("serve")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(), help="Checkpoint folder (a run).")
@click.option("--requests", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--images", "n_images", type=click.IntRange(min=1), default=8, show_default=True,
              help="Distinct synthetic JPEGs the requests cycle through.")
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads, here and in the server (default: torch's).")
@click.option("--url", default=None, help="Load this running server (of --checkpoint) instead of starting one.")
@click.option("--quick", is_flag=True, help="Smoke test: 24 requests, 4 at a time, 12 baseline captions.")
@click.option("--json", "as_json", is_flag=True,
              help="Last stdout line: baseline_rps, rps, ratio, p50_ms, p95_ms, errors as one JSON object.")
def bench_serve(checkpoint, requests, concurrency, n_images, beam, threads, url, quick, as_json):
    """HTTP load on a local `capgen serve` vs. the same images captioned in process."""
    import json
    from tools.bench.serve import run
    if quick:
        requests, concurrency, n_images = 24, 4, 4
    r = run(checkpoint, requests, concurrency, n_images, baseline_calls=12 if quick else None, beam=beam,
            threads=threads, url=url, echo=click.echo)
    if as_json:
        click.echo(json.dumps({k: r[k] for k in ("baseline_rps", "rps", "ratio", "p50_ms", "p95_ms", "errors")}))
    if r["errors"]:
        raise CapgenError(f"bench serve: {r['errors']} of {r['requests']} requests failed")


@bench.command("search")
@click.option("--images", type=click.IntRange(min=1), default=5000, show_default=True, help="Rows of the synthetic cache.")
@click.option("--queries", type=click.IntRange(min=1), default=8, show_default=True, help="Queries of the batched pass.")
@click.option("--baseline-images", type=click.IntRange(min=1), default=200, show_default=True,
              help="Images the per-image baseline loop scores.")
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
@click.option("--compile", "compiled", is_flag=True,
              help="Also time our step under torch.compile (CUDA graphs on a GPU; minutes to compile).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads (default: torch's; 1 measures steadier on a shared machine).")
@click.option("--json", "json_out", is_flag=True, help="Also print the figures as one JSON object, the last line.")
def bench_train_cmd(device, quick, compiled, threads, json_out):
    """Decoder training step and batched beam search vs. the common implementation (sgrvinod's)."""
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
@click.option("--shards", "shard_dir", type=click.Path(exists=True, file_okay=False),
              help="Shard set (256 px for COCO-like figures) [default: a synthetic one, made in a temp folder].")
@click.option("--features", type=click.Path(exists=True, dir_okay=False),
              help="Feature cache .h5 of the shards [default: extracted into a temp folder].")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Images per step.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Timed steps per run.")
@click.option("--warmup", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Feature loader processes [default: min(cores, 8)].")
@click.option("--vocab-size", type=click.IntRange(min=1), default=None,
              help="Decoder output size [default: 10000, COCO-like; --quick: the set's].")
@click.option("--device", default=None, help="cuda or cuda:N (default: cuda when present).")
@click.option("--quick", is_flag=True,
              help="Smoke test (runs on a CPU too): batch 4, 2 steps, tiny shapes; not figures.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), is_flag=False, flag_value="-",
              help="All figures as one JSON object: printed as the last line, or written to the file given.")
def bench_gpu_cmd(shard_dir, features, batch_size, steps, warmup, workers, vocab_size, device, quick, json_out):
    """Loaders and training (features / end to end frozen / fine-tuned) on one GPU: images/s, busy %, epoch."""
    import json
    from pipeline.atomic import atomic_write
    from tools.bench.gpu import report, run
    r = run(shard_dir, features, batch_size, steps, warmup, device=device, quick=quick, workers=workers,
            vocab_size=vocab_size, echo=lambda msg: click.echo(msg, err=True))
    click.echo(report(r))
    if json_out == "-":
        click.echo(json.dumps(r))
    elif json_out:
        with atomic_write(json_out, "w") as f:
            json.dump(r, f, indent=1)
        click.echo(f"{json_out}: written")


def _train_option_type(f, meta):
    if meta["choices"]:
        return click.Choice(meta["choices"])
    if meta["folder"]:
        return click.Path(file_okay=False)
    return {int: int, float: float, int | None: int}.get(f.type)  # None: click's text (or a flag)


def train_options(command):
    """`capgen train`'s options: one per TrainArgs option() field, in field order, with its default and help."""
    for f in reversed(fields(TrainArgs)):
        meta = f.metadata.get("cli")
        if meta is None:
            continue
        name = f"--{f.name.replace('_', '-')}"
        if f.default is MISSING:  # required, unless --config gives it (checked in `train`)
            given = {"default": None, "help": f"{meta['help']} [required unless --config]"}
        else:
            given = {"default": f.default, "show_default": f.type is not bool and f.default is not None,
                     "help": meta["help"]}
            if f.type is bool:  # --no-NAME turns off a flag that --config turned on
                name = f"{name}/--no-{f.name.replace('_', '-')}"
        command = click.option(name, f.name, type=_train_option_type(f, meta), **given)(command)
    return command


def _train_args(config, opts):
    """TrainArgs from --config's args.json (if given) with every option given on the command line on top."""
    ctx = click.get_current_context()
    values = dict(opts)
    if config:
        from model.run_config import read_run_args
        values = read_run_args(config)
        values.update({k: v for k, v in opts.items()
                       if ctx.get_parameter_source(k) in (click.core.ParameterSource.COMMANDLINE,
                                                          click.core.ParameterSource.ENVIRONMENT)})
    for f in fields(TrainArgs):
        if f.default is MISSING and values.get(f.name) is None:
            raise click.UsageError(f"Missing option '--{f.name.replace('_', '-')}' (or --config RUN/args.json).")
    return TrainArgs(**values)


@cli.command()
@train_options
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="A run's args.json: its options, then those given here on top.")
def train(config, **opts):
    """Train the captioner (multi-process: torchrun --nproc_per_node N -m tools.cli train ...)."""
    from model.train import train as run
    args = _train_args(config, opts)
    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        metric = {"Bleu_4": "BLEU-4"}.get(result["metric"], result["metric"])
        click.echo(f"{args.out}: {result['epochs']} epochs, {result['step']} steps, best val {metric} "
                   f"{result['best']:.4f}{' (early stop)' if result['early_stopped'] else ''}; "
                   f"best checkpoint {result['best_dir']}")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run per line instead of the table.")
def runs(runs, as_json):
    """Runs side by side: best val BLEU-4 and its epoch, epochs, time, key options (log.jsonl, args.json)."""
    import json
    from model.run_summary import run_summary, runs_table
    summaries = [run_summary(r) for r in runs]
    if as_json:
        for s in summaries:
            click.echo(json.dumps(s))
    else:
        click.echo(runs_table(summaries))


@cli.group()
def features():
    """The HDF5 feature cache of a frozen encoder."""


@features.command("extract")
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False), help="Shard set folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Feature cache .h5 to write.")
@click.option("--encoder", type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101"]), default="resnet50",
              show_default=True)
@click.option("--encoder-stop", type=click.Choice(["layer2", "layer3", "layer4"]), default="layer4", show_default=True)
@click.option("--encoder-weights", default="imagenet", show_default=True, help="imagenet, none, or a weights file.")
@click.option("--download", is_flag=True, help="Allow fetching torchvision's ImageNet weights when they are not in the local cache.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--max-lost", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Fail when more than this share of the samples cannot be read; fewer are left out.")
@click.option("--device", default=None)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def features_extract(shards, out, encoder, encoder_stop, encoder_weights, download, batch_size, workers, max_lost,
                     device, quiet):
    """Run the frozen encoder over a shard set into OUT (written atomically)."""
    import time
    from model.extract import extract
    start = time.perf_counter()
    n = extract(shards, out, encoder, encoder_stop, encoder_weights, batch_size, workers, device, download,
                max_lost=max_lost, progress=not quiet)
    click.echo(f"{out}: {n} images in {time.perf_counter() - start:.1f} s")


@cli.command("eval")
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(file_okay=False),
              help="Checkpoint folder, or a run folder (its best).")
@click.option("--data", required=True, help="Shard set folder or feature cache .h5.")
@click.option("--out", type=click.Path(dir_okay=False), help="COCO results json to write [required but with --retrieval].")
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True, help="Beam width (1: greedy).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Caption the first N images only.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: the scores as one JSON object.")
@click.option("--device", default=None)
@click.option("--html", "html_out", type=click.Path(dir_okay=False), default=None,
              help="Also write a page of the images with generated and reference captions and per-image scores.")
@click.option("--html-images", type=click.IntRange(min=1), default=100, show_default=True,
              help="Images on the --html page (the first by id).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--retrieval", is_flag=True,
              help="Score text-to-image retrieval instead: R@1/5/10, every caption a query against the images.")
@click.option("--retrieval-images", type=int, default=None, help="With --retrieval: the first N images only.")
@click.option("--scenes", type=click.Path(dir_okay=False), default=None,
              help="Scene truth (scenes_val2014.json) [default: annotations/ of the data the shards came from].")
def eval_(ckpt, data, out, beam, batch_size, limit, as_json, device, html_out, html_images, quiet, retrieval,
          retrieval_images, scenes):
    """Caption DATA with a checkpoint, write COCO results, score against all raw references."""
    import json
    if retrieval:
        return _eval_retrieval(ckpt, data, retrieval_images, scenes, device, as_json, quiet)
    if not out:
        raise click.UsageError("Missing option '--out' (or --retrieval).")
    from model.evaluate import evaluate, format_scores
    r = evaluate(ckpt, data, out, beam, batch_size, limit=limit, device=device, progress=not quiet, scenes=scenes)
    click.echo(f"{out}: {r['images']} images, beam {r['beam']}, text preset {r['text_preset']}"
               + (f", scenes {r['scenes']}" if r["scenes"] else ""))
    click.echo(format_scores(r["scores"], r["attributes"]))
    if html_out:
        from tools.report_html import write_report
        cards, thumbs = write_report(html_out, r, limit=html_images)
        click.echo(f"{html_out}: {cards} images, {thumbs} thumbnails")
    if as_json:
        attributes = {"attributes": r["attributes"]} if r["attributes"] else {}
        click.echo(json.dumps({**r["scores"], "images": r["images"], "beam": r["beam"],
                               "text_preset": r["text_preset"], "results": r["results"], **attributes}))


@cli.command()
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(file_okay=False),
              help="Checkpoint folder, or a run folder (its best).")
@click.option("--data", required=True, help="Feature cache .h5 of the checkpoint's encoder, or a shard set folder.")
@click.option("--top", type=int, default=10, show_default=True, help="Images per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query per line.")
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="With a shard set: also write its features to this .h5, for next time.")
@click.option("--device", default=None)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.argument("queries", nargs=-1, required=True)
def search(ckpt, data, top, as_json, cache, device, quiet, queries):
    """Rank the images of DATA for each QUERY by log p(query | image) (mean per token)."""
    import json
    from model.captioner import Captioner
    from model.device import default_device
    from model.retrieval import encode_query
    from model.retrieval_source import load_index
    if top < 1:
        raise CapgenError(f"--top: must be at least 1 (got {top})")
    captioner = Captioner.load(ckpt, default_device(device))
    encoded = [encode_query(q, captioner.vocab) for q in queries]  # bad queries fail before any work
    index, _, _ = load_index(ckpt, data, device, cache, progress=not quiet, captioner=captioner)
    for r in index.search(encoded, top, progress=not quiet):
        if as_json:
            click.echo(json.dumps(r))
            continue
        unknown = f"; unknown words: {', '.join(r['unknown_words'])}" if r["unknown_words"] else ""
        click.echo(f"{r['query']}  ({len(index)} images{unknown})")
        for rank, hit in enumerate(r["results"], 1):
            click.echo(f"{rank:4d}. {hit['image_id']:>12}  {hit['file_name'] or '-'}  {hit['score']:.4f}")


def _eval_retrieval(ckpt, data, images, scenes, device, as_json, quiet):
    import json
    from model.retrieval_eval import evaluate_retrieval, format_retrieval
    r = evaluate_retrieval(ckpt, data, images, scenes, device, progress=not quiet)
    click.echo(f"{data}: text-to-image retrieval over {r['images']} images, {r['queries']} caption queries "
               f"({r['skipped_queries']} skipped: no known word), text preset {r['text_preset']}; "
               f"{r['queries_per_s']:.1f} queries/s")
    click.echo(format_retrieval(r))
    if as_json:
        click.echo(json.dumps(r))


@cli.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--annotations", required=True, type=click.Path(dir_okay=False), help="COCO captions json.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: the scores as one JSON object.")
def score(results, annotations, as_json):
    """Score a COCO results file against a COCO captions annotation file."""
    import json
    from model.evaluate import format_scores
    from model.metrics import score_results_file
    scores = score_results_file(results, annotations)
    click.echo(format_scores(scores))
    if as_json:
        click.echo(json.dumps(scores))


@cli.command()
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(file_okay=False),
              help="Checkpoint folder, or a run folder (its best).")
@click.argument("images", nargs=-1, required=True)
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--topk", type=click.IntRange(min=1), default=3, show_default=True,
              help="Captions per image (at most --beam).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per image per line: captions, scores, words, attention, grid.")
@click.option("--attention", "attention_out", type=click.Path(dir_okay=False), default=None,
              help="Write the attention figure to this PNG; for several images OUT-<stem>.png each.")
@click.option("--device", default=None)
@click.option("--quiet", is_flag=True, help="No progress bar (shown for more than 16 files).")
def caption(ckpt, images, beam, topk, as_json, attention_out, device, quiet):
    """Caption image files (any size or mode); unreadable ones fail at the end."""
    from tools.caption_files import caption_files
    on_result = None
    if attention_out:
        from model.attention_figure import figure_writer
        # Figure notes go to stderr so that --json keeps stdout one object per line.
        on_result = figure_writer(ckpt, attention_out, images, lambda msg: click.echo(msg, err=True))
    failed = caption_files(ckpt, images, beam, topk, as_json, device, click.echo,
                           lambda msg: click.echo(f"capgen: error: {msg}", err=True), on_result=on_result,
                           progress=not quiet)
    if failed:
        sys.exit(1)


@cli.command()
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: held-out scores as one JSON object.")
@click.option("--images", type=int, default=None, help="Synthetic images (train + val); default: the demo's.")
@click.option("--epochs", type=int, default=None, help="Training epochs; default: the demo's.")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="A dataset in the COCO 2014 layout (annotations/captions_{train,val}2014.json, train2014/, "
                   "val2014/) to run the recipe on instead of the synthetic one.")
def demo(out, as_json, images, epochs, data):
    """synth (or --data) -> shards -> features -> train -> eval -> caption, on this machine's CPU."""
    import json
    from tools.demo import run_demo
    if data is not None and images is not None:
        raise click.UsageError("--images sizes the synthetic set; with --data the dataset is what it is")
    summary = run_demo(out, images=images, epochs=epochs, echo=click.echo, data=data)
    if as_json:
        click.echo(json.dumps(summary))


# ---------------------------------------------------------------- shards (pipeline/shards.py, shardset.py, merge.py)

@cli.group()
def shards():
    """Build, verify and merge WebDataset shard sets."""


@shards.command("build")
@click.option("--coco-root", type=click.Path(file_okay=False),
              help="COCO 2014 folder (annotations/, train2014/, val2014/).")
@click.option("--split", type=click.Choice(["train2014", "val2014"]), help="COCO split (with --coco-root).")
@click.option("--karpathy", type=click.Path(dir_okay=False), help="Karpathy's dataset_coco.json (instead of --split); images under --coco-root if given, "
                   "else beside the file.")
@click.option("--karpathy-split", type=click.Choice(["train", "val", "test"]), help="train takes restval too.")
@click.option("--captions", type=click.Path(dir_okay=False),
              help="Your own captions: metadata.jsonl (Hugging Face imagefolder), .csv or .tsv.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Image folder of --captions (or --karpathy) [default: beside the file].")
@click.option("--captions-split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True,
              help="Which images of --captions to build.")
@click.option("--file-column", help="Image file column of --captions [default: file_name].")
@click.option("--caption-column", help="Caption column of --captions [default: caption, else text].")
@click.option("--split-column", help="Split column of --captions (train/val/test) [default: split, if present].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Split --captions by a hash of the file name instead: this share is val.")
@click.option("--out", type=click.Path(file_okay=False), help="Shard set folder [default: shards/NAME].")
@click.option("--name", help="Shard file prefix [default: coco-SPLIT, karpathy-SPLIT or captions-SPLIT].")
@click.option("--image-size", type=click.IntRange(min=8), default=256, show_default=True)
@click.option("--resize-mode", type=click.Choice(["stretch", "center-crop", "pad"]), default="stretch",
              show_default=True)
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="JPEG quality of the samples.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True, help="Images per shard.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes [default: cores].")
@click.option("--num-jobs", type=click.IntRange(min=1), default=None,
              help="Jobs sharing the build [default: $SLURM_ARRAY_TASK_COUNT, else 1].")
@click.option("--job-index", type=click.IntRange(min=0), default=None,
              help="This job: builds shards k with k mod NUM_JOBS == JOB_INDEX "
                   "[default: the Slurm array task's index, else 0].")
@click.option("--vocab", "vocab_path", type=click.Path(dir_okay=False),
              help="Training vocab.json to reuse (val/test sets).")
@click.option("--preset", type=click.Choice(["seed", "coco"]), default="seed", show_default=True,
              help="Caption cleaning.")
@click.option("--min-freq", type=click.IntRange(min=1), default=5, show_default=True, help="Rarer words become <unk>.")
@click.option("--captions-per-image", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--index/--no-index", default=True, show_default=True, help="Write DALI index files (NAME-000000.idx).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def shards_build(coco_root, split, karpathy, karpathy_split, captions, images_dir, captions_split, file_column,
                 caption_column, split_column, val_fraction, out, name, image_size, resize_mode, quality,
                 shard_size, workers, num_jobs, job_index, vocab_path, preset, min_freq, captions_per_image,
                 index, quiet):
    """Decode COCO 2014, a Karpathy split or your own captions file once into verified WebDataset shards."""
    import os
    from pipeline import shards as sh
    from pipeline.coco import read_coco, read_karpathy
    from pipeline.slurm import array_job
    num_jobs, job_index = array_job(num_jobs, job_index)
    table = {}
    if captions:
        source, table = _captions_source(captions, images_dir, captions_split, file_column, caption_column,
                                         split_column, val_fraction)
        name = name or f"captions-{captions_split}"
        evaluation = captions_split != "train"
    elif any(v is not None for v in (file_column, caption_column, split_column, val_fraction)):
        raise click.UsageError("--file-column, --caption-column, --split-column and --val-fraction need --captions")
    elif karpathy and karpathy_split:
        source = read_karpathy(karpathy, karpathy_split, image_root=images_dir or coco_root)
        name = name or f"karpathy-{karpathy_split}"
        evaluation = karpathy_split != "train"
        table = {"images": images_dir} if images_dir else {}
    elif coco_root and split:
        source = read_coco(coco_root, split)
        name = name or f"coco-{split}"
        evaluation = split != "train2014"
    else:
        raise click.UsageError("give --coco-root with --split, --karpathy with --karpathy-split, or --captions")
    out = out or os.path.join("shards", name)
    if evaluation and not vocab_path and num_jobs == 1:
        click.echo(f"capgen: warning: {name} builds its own vocabulary; pass --vocab TRAIN/vocab.json "
                   "to share the training one", err=True)
    args = {"coco_root": coco_root, "split": split, "karpathy": karpathy, "karpathy_split": karpathy_split,
            "name": name, "image_size": image_size, "resize_mode": resize_mode, "quality": quality,
            "shard_size": shard_size, "vocab": vocab_path, "preset": preset, "min_freq": min_freq,
            "captions_per_image": captions_per_image, **table}
    opts = sh.Options(name=name, image_size=image_size, resize_mode=resize_mode, quality=quality,
                      shard_size=shard_size)
    r = sh.build(source, out, opts, args, workers=workers, num_jobs=num_jobs, job_index=job_index,
                 vocab=vocab_path, preset=preset, min_freq=min_freq, captions_per_image=captions_per_image,
                 index=index, progress=not quiet)
    job = r["job"]
    images = sum(s["samples"] for s in job["shards"])
    reasons = {}
    for s in job["skipped"]:
        reasons[s[2]] = reasons.get(s[2], 0) + 1
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
    if job["bad_captions"]:
        skipped += f"; bad captions {job['bad_captions']}"
    size = sum(s["bytes"] for s in job["shards"])
    where = f"job {job_index} of {num_jobs}: " if num_jobs > 1 else ""
    click.echo(f"{out}: {where}{images} images, {sum(s['captions'] for s in job['shards'])} captions in "
               f"{len(job['shards'])} shards ({r['built']} built, {r['reused']} kept), {size / 1e6:.1f} MB, "
               f"skipped: {skipped}; {r['elapsed']:.1f} s ({images / max(r['elapsed'], 1e-9):.0f} images/s)")
    if num_jobs > 1:
        click.echo(f"{out}: when all {num_jobs} jobs are done: capgen shards merge JOB_FOLDER... [--out SET]")


def _captions_source(captions, images_dir, captions_split, file_column, caption_column, split_column,
                     val_fraction):
    """Your own captions file's records, and what the manifest's build_args record of it."""
    from pipeline.caption_table import read_caption_table
    source = read_caption_table(captions, captions_split, images_dir, file_column, caption_column,
                                split_column, val_fraction)
    set_aside = ", ".join(f"{k} {v}" for k, v in source.dropped.items()) or "none"
    click.echo(f"{captions}: {source.rows} rows, {len(source.records)} {captions_split} images; "
               f"set aside: {set_aside}", err=True)
    return source, {"captions": captions, "images": images_dir, "captions_split": captions_split,
                    "file_column": file_column, "caption_column": caption_column, "split_column": split_column,
                    "val_fraction": val_fraction, "rows": source.rows, "rows_set_aside": source.dropped}


@shards.command("verify")
@click.argument("shard_dir", type=click.Path(file_okay=False))
def shards_verify(shard_dir):
    """Re-hash every shard against manifest.json and count its samples."""
    from pipeline.shardset import read_manifest, verify
    problems = verify(shard_dir)
    for line in problems:
        click.echo(f"capgen: error: {line}", err=True)
    if problems:
        raise SystemExit(1)
    m = read_manifest(shard_dir)
    click.echo(f"{shard_dir}: {len(m['shards'])} shards, {m['counts']['images']} samples: ok")


@shards.command("index")
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Rewrite current index files too.")
def shards_index(shard_dir, force):
    """Write DALI index files (NAME-000000.idx) for every shard of a set."""
    from pipeline.wds_index import index_shards
    done = index_shards(shard_dir, force=force)
    written = sum(w for _, _, w in done)
    click.echo(f"{shard_dir}: {len(done)} shards, {written} index files written, {len(done) - written} current")


@shards.command("merge")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Merged set folder [default: the one DIR].")
def shards_merge(dirs, out):
    """Join the jobs of a --num-jobs build (one folder or several) into one shard set."""
    from pipeline.merge import merge
    m = merge(dirs, out)
    c = m["counts"]
    click.echo(f"{out or dirs[0]}: {len(m['shards'])} shards, {c['images']} images, {c['captions']} captions; "
               f"skipped: {', '.join(f'{k} {v}' for k, v in c['skipped'].items()) or 'none'}: verified")


@cli.command("vocab")
@click.argument("shard_dir", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(["seed", "coco"]), default=None, help="[default: the set's]")
@click.option("--min-freq", type=click.IntRange(min=1), default=None, help="[default: the set's]")
@click.option("--vocab", "vocab_path", type=click.Path(dir_okay=False), help="Reuse this training vocab.json.")
@click.option("--captions-per-image", type=click.IntRange(min=1), default=None, help="[default: the set's]")
def vocab_cmd(shard_dir, preset, min_freq, vocab_path, captions_per_image):
    """Rebuild vocab.json and tokens.npz from the captions inside the shards (images untouched)."""
    from pipeline.text_files import rebuild_text
    t = rebuild_text(shard_dir, preset, min_freq, vocab_path, captions_per_image)["text"]
    click.echo(f"{shard_dir}: vocabulary of {t['vocab_size']} words (preset {t['preset']}, min freq "
               f"{t['min_freq']}{', from ' + vocab_path if vocab_path else ''}), tokens.npz rewritten")


@bench.command("shards")
@click.option("--images", type=click.IntRange(min=8), default=None, help="[default: 200, or 50 per worker]")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Best of this many.")
@click.option("--workers", type=click.IntRange(min=1), multiple=True, help="Worker counts [default: 1 and all cores].")
@click.option("--resize", is_flag=True, help="Also time the candidate resizes per image (libvips, PIL, OpenCV, torch).")
@click.option("--quick", is_flag=True, help="Smoke test: 24 images, 1 round; not figures.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: the figures as one JSON object.")
def bench_shards_cmd(images, rounds, workers, resize, quick, as_json):
    """Whole `capgen shards build` runs, images/s, vs. a naive PIL loop on the same photographic JPEGs."""
    import json
    from tools.bench.shards import run, summary
    if quick:
        images, rounds = images or 24, 1
    r = run(images, rounds, list(workers) or None, resize=resize, echo=click.echo)
    if as_json:
        click.echo(json.dumps(summary(r)))


def main():
    # Idle OpenMP threads sleep rather than spin (must precede importing torch): on a
    # small machine with anything else running, spinning slows CPU work 10x or more.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except CapgenError as err:
        click.echo(f"capgen: error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
