"""The one error type for bad input: its message names the file and the cause."""


class CapgenError(Exception):
    """Bad input or a broken contract; str(err) is one line: '<file>: <cause>'."""
