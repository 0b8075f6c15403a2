"""What DALI's reader is given of a shard set: the samples it can read, and the count of
those it cannot, per shard, as the CPU loaders count them (pipeline/loading/batches.py's
"Lost samples").

DALI's reader and decoder stop the whole pipeline at the first damaged member, so the
damage is found before the pipeline is built, from each shard's index (written when
missing or stale): a shard whose tar cannot be read loses every sample the manifest
gives it, an index shorter than the manifest's count loses the rest ("samples missing"),
and a sample is dropped when its key is not an image id, it has no JPEG, its JPEG lacks
the start or end marker (cut short, or not JPEG data), or the token table has no captions
for it. A shard that lost samples is read through a filtered copy of its index (in a
temporary folder) that lists only its readable ones. Reading two bytes at each end of
every JPEG keeps this cheap; damage inside a JPEG that keeps both markers is the
decoder's to find.
"""

import os
import shutil
import tempfile
import weakref

from pipeline.errors import CapgenError, first_line
from pipeline.shards.wds_index import VERSION, group_samples, index_path, is_current, read_members, write_index

SOI, EOI = b"\xff\xd8", b"\xff\xd9"  # a JPEG's first and last two bytes


def read_index(idx_path):
    """[[(ext, data_offset, size, name), ...] per sample] of an index file (wds_index's format)."""
    samples = []
    with open(idx_path, encoding="utf-8") as f:
        f.readline()
        for line in f:
            fields = line.split()
            samples.append([(e, int(o), int(s), n) for e, o, s, n in zip(*[iter(fields)] * 4, strict=True)])
    return samples


def _problem(sample, table, tar):
    """Why DALI could not read `sample` (a cause as the CPU loader words it), or None."""
    key = os.path.basename(sample[0][3]).split(".", 1)[0]
    jpg = next(((o, s) for e, o, s, _ in sample if e == "jpg"), None)
    if not key.isdigit():
        return f"sample {key!r}: invalid literal for int() with base 10: {key!r}"
    if jpg is None:
        return f"sample {key!r}: jpg"
    offset, size = jpg
    tar.seek(offset)
    head = tar.read(2)
    tar.seek(offset + max(size - 2, 0))
    if size < 4 or head != SOI or tar.read(2) != EOI:
        return f"sample {key!r}: JPEG data cut short or damaged (no start or end marker)"
    try:
        table.rows([int(key)])
    except CapgenError as err:
        return f"sample {key!r}: {err}"
    return None


def ensure_index(tar_path, members=None):
    """The shard's index path, written when missing or stale (members: the tar's, where
    read already): CapgenError '<tar>: not a readable tar (...)', or '<idx>: cannot write
    DALI index (...)' in a read-only folder."""
    idx = index_path(tar_path)
    if not is_current(tar_path, idx):
        try:
            write_index(tar_path, idx, members)
        except OSError as err:
            raise CapgenError(
                f"{idx}: cannot write DALI index ({err.strerror}); "
                "run `capgen shards index` where the folder is writable"
            ) from None
    return idx


def scan_shard(tar_path, table, expected=None):
    """(readable samples, lost, expected, cause) of one shard: its index's samples that DALI
    can read; expected: the manifest's count (the index's when None)."""
    lost_all = expected or 0
    idx = index_path(tar_path)
    try:
        members = None if is_current(tar_path, idx) else read_members(tar_path)
        if members is not None:
            group_samples(tar_path, members)  # an empty shard, a name DALI cannot take
    except CapgenError as err:  # the whole shard is lost
        return [], lost_all, lost_all, first_line(err)
    samples = read_index(ensure_index(tar_path, members))
    try:
        with open(tar_path, "rb") as tar:
            problems = [_problem(s, table, tar) for s in samples]
    except OSError as err:
        return [], lost_all, lost_all, first_line(err)
    good = [s for s, p in zip(samples, problems, strict=True) if p is None]
    expected = len(samples) if expected is None else expected
    cause = next((p for p in problems if p), "samples missing")
    return good, max(expected - len(good), 0), expected, cause


class ShardScan:
    """A shard set's tars and the index paths DALI reads them by (filtered where samples
    are lost), and the lost samples {tar: [lost, expected, cause]}. The filtered indexes
    are removed when it is garbage collected."""

    def __init__(self, tars, table, expected=None):
        """tars: the set's shards; table: its TokenTable; expected: {shard file name: samples}
        (the manifest's), or None (each index's count)."""
        self.tars, self.idxs, self.lost, self.read = [], [], {}, 0
        self._tmp = None
        for tar in tars:
            n = None if expected is None else expected.get(os.path.basename(tar), 0)
            good, lost, n, cause = scan_shard(tar, table, n)
            self.read += len(good)
            if lost:
                self.lost[tar] = [lost, n, cause]
            if good:
                self.tars.append(tar)
                self.idxs.append(self._filtered(tar, good) if lost else index_path(tar))

    def _filtered(self, tar, samples):
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="capgen-dali-")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
        path = os.path.join(self._tmp, f"{len(self.idxs)}.idx")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{VERSION} {len(samples)}\n")
            f.writelines(" ".join(f"{e} {o} {s} {n}" for e, o, s, n in sample) + "\n" for sample in samples)
        return path

    def total_lost(self):
        return sum(lost for lost, _, _ in self.lost.values())
