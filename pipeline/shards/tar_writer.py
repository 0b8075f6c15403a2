"""A streaming USTAR tar writer for shard members, hashing as it writes.

It writes exactly what `tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT)`
with `addfile` and `close` writes for regular files of mode 0644, owner 0:0, no user
or group names and one fixed mtime, without tarfile's generic header code; and it
keeps the sha256, the length and the member offsets of what it wrote, so the shard
is neither read back to hash it nor re-parsed to index it.
"""

import hashlib
import re

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile.RECORDSIZE: the archive ends on a record
_NAME = re.compile(r"[!-~]{1,100}")  # printable ASCII, no white space: fits the 100-byte name field
_IDS = b"0000644\0" + b"0000000\0" * 2  # mode, uid, gid
_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(247)  # type, linkname, magic+version, the rest empty
_CHKSUM_REST = 8 * ord(" ") + sum(_TAIL)  # the checksum is summed with its own field as spaces


def _octal(n, digits):
    """tarfile's itn: digits-1 octal digits and a NUL."""
    if not 0 <= n < 8 ** (digits - 1):
        raise ValueError(f"{n} does not fit a {digits}-byte tar number field")
    return b"%0*o\0" % (digits - 1, n)


class TarWriter:
    """Write members to the binary file f (empty, at offset 0); close() ends the archive.

    After it: sha256 (a hashlib object) and bytes cover every byte written, and
    members lists (name, data_offset, size) in tar order, data_offset as tarfile's
    TarInfo.offset_data reads it."""

    def __init__(self, f, mtime):
        self.f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.members = []
        self._mtime = _octal(mtime, 12)

    def _write(self, data):
        self.f.write(data)
        self.sha256.update(data)
        self.bytes += len(data)

    def add(self, name, data):
        """Add a regular file `name` (printable ASCII without spaces, at most 100 bytes)."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"tar member name {name!r}: need 1-100 printable ASCII characters, no white space")
        head = name.encode("ascii").ljust(100, b"\0") + _IDS + _octal(len(data), 12) + self._mtime
        chksum = sum(head) + _CHKSUM_REST
        self._write(head + b"%06o\0 " % chksum + _TAIL)
        self.members.append((name, self.bytes, len(data)))
        self._write(data)
        if len(data) % BLOCK:
            self._write(bytes(BLOCK - len(data) % BLOCK))

    def close(self):
        """Two zero blocks, then zeros up to a whole record, as tarfile ends an archive."""
        end = self.bytes + 2 * BLOCK
        self._write(bytes(2 * BLOCK + (-end) % RECORD))
