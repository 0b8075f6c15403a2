"""The `capgen` command line: parse options, then call into pipeline/ and model/."""
import sys

import click

from pipeline.errors import CapgenError


@click.group()
def cli():
    """capgen: image captions, from COCO to a web page."""


@cli.group()
def bench():
    """Throughput benchmarks, each against a baseline measured in the same run."""


def main():
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
