"""One writer per output folder: an advisory lock (flock) on FOLDER/.lock.

The kernel drops a flock when its process dies, so a lock left by a killed writer
never blocks the next one; the pid in the file is only there for the message.
"""

import contextlib
import fcntl
import os

from pipeline.errors import CapgenError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder):
    """Hold FOLDER's lock while the block runs; a second writer gets
    'FOLDER: in use by pid N' at once instead of waiting."""
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CapgenError(f"{folder}: cannot lock ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise CapgenError(f"{folder}: in use by pid {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
