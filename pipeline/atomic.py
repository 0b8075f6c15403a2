"""Atomic file writes: a temp file beside the target, fsync, rename (and whole folders)."""

import contextlib
import os
import shutil
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp alone gives 0600


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temp file for writing; on success it replaces `path` in one step."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_path(path):
    """For writers that need a file name (h5py): yields a temp path, renamed on success."""
    return _AtomicPath(os.fspath(path))


class _AtomicPath:
    def __init__(self, path):
        self.path = path
        self.tmp = path + ".tmp"

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            return False
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
        return False


def link_or_copy(src, dst):
    """Place src at dst in one step: a hard link where the file system allows, else a copy."""
    tmp = dst + ".tmp"
    discard([tmp])
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def discard(paths):
    """Delete these files where they exist (temp files of a killed writer, stale outputs)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def fsync_dir(path):
    """Make a rename inside the folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path):
    """Yields an empty folder PATH.tmp to fill; on success it replaces the folder `path` whole.

    The swap is two renames (path -> PATH.old, PATH.tmp -> path); a crash between them
    leaves PATH.old, the previous folder, for readers to fall back on."""
    final = os.path.abspath(os.fspath(path))
    tmp, old = final + ".tmp", final + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(tmp)
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(os.path.dirname(final))
    shutil.rmtree(old, ignore_errors=True)
