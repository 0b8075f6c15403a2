"""The one error type for bad input (its message names the file and the cause), the
ways an OS error or any exception becomes such a line, and the one way a warning or an
error reaches stderr: on a line of its own, never glued to a progress bar's."""

import contextlib
import re
import sys

from tqdm import tqdm

WARNING, ERROR = "capgen: warning: ", "capgen: error: "  # the prefixes of stderr's warning and error lines


class CapgenError(Exception):
    """Bad input or a broken contract; str(err) is one line: '<file>: <cause>'."""


class UsageError(CapgenError):
    """Arguments that do not go together (the command line shows it as a usage error, exit 2)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message as one line, at most `limit` characters; its type's name when
    it has no message.

    The message is its first argument when that is a string (webdataset appends the url to
    an exception's arguments), else an OSError's strerror, else str(err); its first non-blank
    line. h5py's OSError text runs over several lines: its "error message = '...'" is the cause."""
    text = str(err)
    found = re.search(r"error message = '([^']*)'", text)
    if found:
        text = found.group(1)
    else:
        arg = err.args[0] if getattr(err, "args", None) else None
        text = arg if isinstance(arg, str) else getattr(err, "strerror", None) or text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]


@contextlib.contextmanager
def writing(path):
    """Run the block; an OSError in it becomes 'PATH: cannot write (cause)'."""
    try:
        yield
    except OSError as err:
        raise CapgenError(f"{path}: cannot write ({err.strerror or err})") from None


def read_bytes(path):
    """The file's bytes; 'PATH: file not found' or 'PATH: cannot read (cause)' otherwise."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CapgenError(f"{path}: file not found") from None
    except OSError as err:
        raise CapgenError(f"{path}: cannot read ({err.strerror or err})") from None


def say(line: str) -> None:
    """Print `line` on stderr as a line of its own: the open progress bars (tqdm's) are
    cleared first and drawn again below it, so it never continues a bar's line."""
    tqdm.write(line, file=sys.stderr)


def warn(message: str) -> None:
    """'capgen: warning: MESSAGE' on stderr, on a line of its own (see say)."""
    say(WARNING + message)


def end_bars() -> None:
    """Close every open progress bar (a bar that leaves its last state ends its line), so
    that what is printed next starts a line: the end of a command stopped by an error."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def error(message: str) -> None:
    """'capgen: error: MESSAGE' on stderr, on a line of its own, every progress bar closed first."""
    end_bars()
    say(ERROR + message)
