"""`capgen eval`, `search`, `score`, `caption`, `serve` and `demo`: a trained model at work."""

import sys

import click

from tools.serve.batcher import MAX_BATCH, WINDOW_S

CHECKPOINT = click.option(
    "--checkpoint",
    "ckpt",
    required=True,
    type=click.Path(file_okay=False),
    help="Checkpoint folder, or a run folder (its best).",
)


def _finite(param, value):
    """click's FloatRange lets nan through (every comparison with nan is false)."""
    if value is not None and value != value:
        raise click.BadParameter(f"{value} is not a number", param=param)
    return value


ONNX = click.option(
    "--onnx",
    "onnx_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="A `capgen export` folder: run it with onnxruntime instead [this or --checkpoint].",
)


@click.command()
@click.option("--checkpoint", "checkpoint", type=click.Path(), default=None, help="Checkpoint folder (a run).")
@ONNX
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes the page.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True, max=1e6),
    default=10.0,
    show_default=True,
    callback=lambda ctx, param, value: _finite(param, value),
    help="Larger uploads get 413.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=50_000_000,
    show_default=True,
    help="Larger images (width x height, read from the header) get 413 before decoding.",
)
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--topk", type=click.IntRange(min=1), default=3, show_default=True, help="Captions per image.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads for the model, torch's or onnxruntime's (default: one per core); with --checkpoint also "
    "the uploads encoded at once.",
)
@click.option("--log-level", type=click.Choice(["info", "warning", "error"]), default="info", show_default=True)
@click.option(
    "--batch-window-ms",
    type=click.FloatRange(min=0),
    default=WINDOW_S * 1000,
    show_default=True,
    help="Requests arriving within this window of the oldest waiting one share a batch.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=MAX_BATCH,
    show_default=True,
    help="Images per batched beam search (1: no batching).",
)
@click.option(
    "--index", default=None, help="Feature cache .h5 or shard set: adds a search box over its images (text to image)."
)
def serve(
    checkpoint,
    onnx_dir,
    host,
    port,
    max_upload_mb,
    max_pixels,
    beam,
    topk,
    threads,
    log_level,
    batch_window_ms,
    max_batch,
    index,
):
    """Web page and JSON API: upload an image, get captions and each word's attention."""
    from tools.serve.app import serve as run_server

    if (checkpoint is None) == (onnx_dir is None):
        raise click.UsageError("Give one of --checkpoint (torch) or --onnx (an exported folder).")
    if index and onnx_dir:
        raise click.UsageError("--index scores with the torch decoder: give --checkpoint.")
    run_server(
        checkpoint,
        onnx_dir=onnx_dir,
        host=host,
        port=port,
        beam=beam,
        topk=min(topk, beam),
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        threads=threads,
        log_level=log_level,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        index=index,
    )


@click.command("eval")
@CHECKPOINT
@click.option("--data", required=True, help="Shard set folder or feature cache .h5.")
@click.option(
    "--out", type=click.Path(dir_okay=False), help="COCO results json to write [required but with --retrieval]."
)
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True, help="Beam width (1: greedy).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Caption the first N images only.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: the scores as one JSON object.")
@click.option("--device", default=None)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a page of the images with generated and reference captions and per-image scores.",
)
@click.option(
    "--html-images",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Images on the --html page (the first by id).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--max-lost",
    type=click.FloatRange(0, 1),
    default=None,
    callback=lambda ctx, param, value: _finite(param, value),
    help="Fail when more than this share of the images cannot be read (warned about and left out) [default: train's].",
)
@click.option(
    "--retrieval",
    is_flag=True,
    help="Score text-to-image retrieval instead: R@1/5/10, every caption a query against the images.",
)
@click.option("--retrieval-images", type=int, default=None, help="With --retrieval: the first N images only.")
@click.option(
    "--scenes",
    type=click.Path(dir_okay=False),
    default=None,
    help="Scene truth (scenes_val2014.json) [default: annotations/ of the data the shards came from].",
)
def eval_(
    ckpt,
    data,
    out,
    beam,
    batch_size,
    limit,
    as_json,
    device,
    html_out,
    html_images,
    quiet,
    max_lost,
    retrieval,
    retrieval_images,
    scenes,
):
    """Caption DATA with a checkpoint, write COCO results, score against all raw references."""
    import json

    if retrieval:
        return _eval_retrieval(ckpt, data, retrieval_images, scenes, device, as_json, quiet)
    if not out:
        raise click.UsageError("Missing option '--out' (or --retrieval).")
    from model.eval.evaluate import evaluate, format_scores

    lost = {} if max_lost is None else {"max_lost": max_lost}  # evaluate's default when not given
    r = evaluate(
        ckpt, data, out, beam, batch_size, limit=limit, device=device, progress=not quiet, scenes=scenes, **lost
    )
    click.echo(
        f"{out}: {r['images']} images, beam {r['beam']}, text preset {r['text_preset']}"
        + (f", scenes {r['scenes']}" if r["scenes"] else "")
    )
    click.echo(format_scores(r["scores"], r["attributes"]))
    if html_out:
        from tools.report_html import write_report

        cards, thumbs = write_report(html_out, r, limit=html_images)
        click.echo(f"{html_out}: {cards} images, {thumbs} thumbnails")
    if as_json:
        attributes = {"attributes": r["attributes"]} if r["attributes"] else {}
        click.echo(
            json.dumps(
                {
                    **r["scores"],
                    "images": r["images"],
                    "beam": r["beam"],
                    "text_preset": r["text_preset"],
                    "results": r["results"],
                    **attributes,
                }
            )
        )


@click.command()
@CHECKPOINT
@click.option("--data", required=True, help="Feature cache .h5 of the checkpoint's encoder, or a shard set folder.")
@click.option("--top", type=int, default=10, show_default=True, help="Images per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query per line.")
@click.option(
    "--cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="With a shard set: also write its features to this .h5, for next time.",
)
@click.option("--device", default=None)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.argument("queries", nargs=-1, required=True)
def search(ckpt, data, top, as_json, cache, device, quiet, queries):
    """Rank the images of DATA for each QUERY by log p(query | image) (mean per token)."""
    import json

    from model.retrieval.search import rank_images

    images, found = rank_images(ckpt, data, queries, top, device, cache, progress=not quiet)
    for r in found:
        if as_json:
            click.echo(json.dumps(r))
            continue
        unknown = f"; unknown words: {', '.join(r['unknown_words'])}" if r["unknown_words"] else ""
        click.echo(f"{r['query']}  ({images} images{unknown})")
        for rank, hit in enumerate(r["results"], 1):
            click.echo(f"{rank:4d}. {hit['image_id']:>12}  {hit['file_name'] or '-'}  {hit['score']:.4f}")


def _eval_retrieval(ckpt, data, images, scenes, device, as_json, quiet):
    import json

    from model.retrieval.evaluate import evaluate_retrieval, format_retrieval

    r = evaluate_retrieval(ckpt, data, images, scenes, device, progress=not quiet)
    click.echo(
        f"{data}: text-to-image retrieval over {r['images']} images, {r['queries']} caption queries "
        f"({r['skipped_queries']} skipped: no known word), text preset {r['text_preset']}; "
        f"{r['queries_per_s']:.1f} queries/s"
    )
    click.echo(format_retrieval(r))
    if as_json:
        click.echo(json.dumps(r))


@click.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--annotations", required=True, type=click.Path(dir_okay=False), help="COCO captions json.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: the scores as one JSON object.")
def score(results, annotations, as_json):
    """Score a COCO results file against a COCO captions annotation file."""
    import json

    from model.eval.evaluate import format_scores
    from model.eval.metrics import score_results_file

    scores = score_results_file(results, annotations)
    click.echo(format_scores(scores))
    if as_json:
        click.echo(json.dumps(scores))


@click.command()
@click.option(
    "--checkpoint",
    "ckpt",
    type=click.Path(file_okay=False),
    default=None,
    help="Checkpoint folder, or a run folder (its best) [this or --onnx].",
)
@ONNX
@click.argument("images", nargs=-1, required=True)
@click.option("--beam", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--topk", type=click.IntRange(min=1), default=3, show_default=True, help="Captions per image (at most --beam)."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per image per line: captions, scores, words, attention, grid.",
)
@click.option(
    "--attention",
    "attention_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the attention figure to this PNG; for several images OUT-<stem>.png each.",
)
@click.option("--device", default=None, help="With --checkpoint: cpu, cuda or cuda:N [default: cpu].")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="With --onnx: onnxruntime's threads [default: one per core].",
)
@click.option("--quiet", is_flag=True, help="No progress bar (shown for more than 16 files).")
def caption(ckpt, onnx_dir, images, beam, topk, as_json, attention_out, device, threads, quiet):
    """Caption image files (any size or mode); unreadable ones fail at the end."""
    from pipeline.errors import ERROR, say
    from tools.caption_files import caption_files

    captioner = _captioner(ckpt, onnx_dir, device, threads)
    on_result = None
    if attention_out:
        from model.infer.attention_figure import figure_writer

        # Figure notes go to stderr so that --json keeps stdout one object per line.
        on_result = figure_writer(captioner.image["resize_mode"], attention_out, images, say)
    failed = caption_files(
        captioner,
        images,
        beam,
        topk,
        as_json,
        click.echo,
        lambda msg: say(ERROR + msg),
        on_result=on_result,
        progress=not quiet,
    )
    if failed:
        sys.exit(1)


def _captioner(ckpt, onnx_dir, device, threads):
    """The torch Captioner of --checkpoint, or the onnxruntime one of --onnx (torch is then never imported)."""
    if (ckpt is None) == (onnx_dir is None):
        raise click.UsageError("Give one of --checkpoint (torch) or --onnx (an exported folder).")
    if onnx_dir is not None:
        if device is not None:
            raise click.UsageError("--device is for --checkpoint; --onnx runs onnxruntime on the CPU.")
        from model.export.runtime import OnnxCaptioner

        return OnnxCaptioner.load(onnx_dir, threads=threads)
    if threads is not None:
        raise click.UsageError("--threads is for --onnx.")
    from model.infer.captioner import Captioner

    return Captioner.load(ckpt, device or "cpu")


@click.command()
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: held-out scores as one JSON object.")
@click.option("--images", type=int, default=None, help="Synthetic images (train + val); default: the demo's.")
@click.option("--epochs", type=int, default=None, help="Training epochs; default: the demo's.")
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="A dataset in the COCO 2014 layout (annotations/captions_{train,val}2014.json, train2014/, "
    "val2014/) to run the recipe on instead of the synthetic one.",
)
def demo(out, as_json, images, epochs, data):
    """synth (or --data) -> shards -> train -> eval -> scst -> caption -> report, on this CPU."""
    import json

    from tools.demo import run_demo

    if data is not None and images is not None:
        raise click.UsageError("--images sizes the synthetic set; with --data the dataset is what it is")
    summary = run_demo(out, images=images, epochs=epochs, echo=click.echo, data=data)
    if as_json:
        click.echo(json.dumps(summary))
