"""The `capgen` command line: parse options, then call into pipeline/ and model/.

The commands live beside this file by kind (data, train, caption, bench);
this file gathers them into one group and turns a CapgenError into one line.
"""

import os
import sys
import warnings

import click

from pipeline.errors import CapgenError, end_bars, error, warn
from tools.cli import bench as cli_bench
from tools.cli import caption as cli_caption
from tools.cli import data as cli_data
from tools.cli import export as cli_export
from tools.cli import train as cli_train


@click.group()
def cli():
    """capgen: image captions, from COCO to a web page."""


for command in (
    cli_data.synth,
    cli_data.shards,
    cli_data.vocab_cmd,
    cli_train.train,
    cli_train.runs,
    cli_train.features,
    cli_caption.eval_,
    cli_caption.search,
    cli_caption.score,
    cli_caption.caption,
    cli_caption.serve,
    cli_caption.demo,
    cli_export.export,
    cli_bench.bench,
):
    cli.add_command(command)


def main():
    # Idle OpenMP threads sleep rather than spin (must precede importing torch): on a
    # small machine with anything else running, spinning slows CPU work 2-10x. Not for the
    # demo, which runs alone: its convnet's many small kernels pay for every wake-up (a
    # training step on 2 idle cores: 35 ms spinning, 50 ms sleeping).
    if sys.argv[1:2] != ["demo"]:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # a library's warning: one line, above any progress bar
            cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        end_bars()
        sys.exit(130)
    except click.ClickException as err:
        end_bars()
        err.show()
        sys.exit(err.exit_code)
    except CapgenError as err:
        error(str(err))
        sys.exit(1)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    warn(str(message))


if __name__ == "__main__":
    main()
