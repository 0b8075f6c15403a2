"""OS errors (missing file, disk full, file too large, read-only folder) as the one-line CapgenError."""
import contextlib

from pipeline.errors import CapgenError


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
