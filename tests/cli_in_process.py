"""Run `capgen ARGS` in this process, through tools.cli.main (the console script's entry)."""

import sys

import pytest

from tools.cli.main import main


def capgen(args, capsys, monkeypatch):
    """(exit status, stdout, stderr) of `capgen ARGS`; an exception escaping main() fails the test."""
    monkeypatch.setattr(sys, "argv", ["capgen", *map(str, args)])
    try:
        main()
        status = 0
    except SystemExit as stop:
        status = stop.code
    except BaseException as err:  # what a user would see as a traceback
        pytest.fail(f"traceback: {type(err).__name__}: {err}")
    out, err = capsys.readouterr()
    return status, out, err
