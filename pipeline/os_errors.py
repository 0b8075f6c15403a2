"""OS errors (disk full, file too large, read-only folder) as the one-line CapgenError."""
import contextlib

from pipeline.errors import CapgenError


@contextlib.contextmanager
def writing(path):
    """Run the block; an OSError in it becomes 'PATH: cannot write (cause)'."""
    try:
        yield
    except OSError as err:
        raise CapgenError(f"{path}: cannot write ({err.strerror or err})") from None
