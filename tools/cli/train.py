"""`capgen train` (its options made from TrainArgs' fields), `capgen runs`, `capgen features extract` and `verify`."""

import os
from dataclasses import MISSING, fields

import click

from model.train.args import TrainArgs


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
            given = {
                "default": f.default,
                "show_default": f.type is not bool and f.default is not None,
                "help": meta["help"],
            }
            if f.type is bool:  # --no-NAME turns off a flag that --config turned on
                name = f"{name}/--no-{f.name.replace('_', '-')}"
        command = click.option(name, f.name, type=_train_option_type(f, meta), **given)(command)
    return command


def _train_args(config, opts):
    """TrainArgs from --config's args.json (if given) with every option given on the command line on top."""
    ctx = click.get_current_context()
    values = dict(opts)
    if config:
        from model.train.run_args import read_run_args

        values = read_run_args(config)
        values.update(
            {
                k: v
                for k, v in opts.items()
                if ctx.get_parameter_source(k)
                in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
            }
        )
    for f in fields(TrainArgs):
        if f.default is MISSING and values.get(f.name) is None:
            raise click.UsageError(f"Missing option '--{f.name.replace('_', '-')}' (or --config RUN/args.json).")
    return TrainArgs(**values)


@click.command()
@train_options
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="A run's args.json: its options, then those given here on top.",
)
def train(config, **opts):
    """Train the captioner (multi-process: torchrun --nproc_per_node N -m tools.cli train ...)."""
    from model.runs.selection import label
    from model.train.loop import train as run

    args = _train_args(config, opts)
    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(
            f"{args.out}: {result['epochs']} epochs, {result['step']} steps, best val {label(result['metric'])} "
            f"{result['best']:.4f}{' (early stop)' if result['early_stopped'] else ''}; "
            f"best checkpoint {result['best_dir']}"
        )


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run per line instead of the table.")
def runs(runs, as_json):
    """Runs side by side: best val BLEU-4 and its epoch, epochs, time, key options (log.jsonl, args.json)."""
    import json

    from model.runs.summary import run_summary, runs_table

    summaries = [run_summary(r) for r in runs]
    if as_json:
        for s in summaries:
            click.echo(json.dumps(s))
    else:
        click.echo(runs_table(summaries))


@click.group()
def features():
    """The HDF5 feature cache of a frozen encoder."""


@features.command("extract")
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False), help="Shard set folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Feature cache .h5 to write.")
@click.option(
    "--encoder",
    type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101"]),
    default="resnet50",
    show_default=True,
)
@click.option("--encoder-stop", type=click.Choice(["layer2", "layer3", "layer4"]), default="layer4", show_default=True)
@click.option("--encoder-weights", default="imagenet", show_default=True, help="imagenet, none, or a weights file.")
@click.option(
    "--download",
    is_flag=True,
    help="Allow fetching torchvision's ImageNet weights when they are not in the local cache.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option(
    "--max-lost",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Fail when more than this share of the samples cannot be read; fewer are left out.",
)
@click.option("--device", default=None)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def features_extract(
    shards, out, encoder, encoder_stop, encoder_weights, download, batch_size, workers, max_lost, device, quiet
):
    """Run the frozen encoder over a shard set into OUT (written atomically)."""
    import time

    from model.infer.extract import extract

    start = time.perf_counter()
    n = extract(
        shards,
        out,
        encoder,
        encoder_stop,
        encoder_weights,
        batch_size,
        workers,
        device,
        download,
        max_lost=max_lost,
        progress=not quiet,
    )
    click.echo(f"{out}: {n} images in {time.perf_counter() - start:.1f} s")


@features.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def features_verify(files, quiet):
    """Read every block of each cache FILE: checksums (fletcher32) and finite values; exit 1 when any is damaged."""
    from pipeline.errors import CapgenError
    from pipeline.loading.feature_verify import damage_line, verify_cache, verify_line

    problems = []
    for path in files:
        try:
            result = verify_cache(path, progress=not quiet)
        except CapgenError as err:
            problems.append(str(err))
            continue
        click.echo(verify_line(result))
        if result["damaged"]:
            problems.append(damage_line(result))
    for line in problems:
        click.echo(f"capgen: error: {line}", err=True)
    if problems:
        raise SystemExit(1)
