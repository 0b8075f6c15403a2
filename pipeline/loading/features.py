"""The HDF5 feature store: frozen-encoder spatial features, written once, read in chunks.

Layout: `features` [N, P, C] float16 chunked (CHUNK, P, C); `image_ids` [N] int64; both
carry HDF5's fletcher32 checksum per chunk (a cache written before checksums has none and
still reads; a damaged chunk reads as an OSError, named here as a checksum mismatch);
`channel_mean` / `channel_std` [C] float32 over all N*P positions (the decoder
standardises with them); optional group `encoder_state` (the encoder's tensors,
so a random-init encoder can be rebuilt exactly for raw images); attrs: format,
encoder, weights, stop, image_size, resize_mode, mean, std, grid, shard_set.
"""

import os

import h5py
import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import CapgenError, first_line

FORMAT = "capgen-features-1"
CHUNK = 64
CHECKSUM_MISMATCH = "checksum mismatch"


def damage_cause(err: BaseException) -> str:
    """Why h5py could not read a block: a failed fletcher32 check is a checksum mismatch."""
    text = first_line(err)
    return CHECKSUM_MISMATCH if "filter returned failure" in text else text


def describe_damage(ranges: list[tuple[int, int, str]], most: int = 3) -> str:
    """Damaged [start, stop) row ranges and their causes as one short text:
    'rows 64-127, 192-255: checksum mismatch; rows 5-5: non-finite values' (the first `most`)."""
    by_cause = {}
    for start, stop, cause in ranges[:most]:
        by_cause.setdefault(cause, []).append(f"{start}-{stop - 1}")
    text = "; ".join(f"rows {', '.join(spans)}: {cause}" for cause, spans in by_cause.items())
    return text + (f"; {len(ranges) - most} more ranges" if len(ranges) > most else "")


def corrupt_input(path: str, where: str = "", then: str = "") -> CapgenError:
    """The error for non-finite features reaching the model: the source is corrupt, not the
    learning rate. where: when (' by epoch E, step S'); then: what was kept ('; ...')."""
    return CapgenError(
        f"{path}: corrupt input: non-finite features reached the model{where} "
        f"(`capgen features verify {path}` names the damaged rows){then}"
    )


class FeatureWriter:
    """Write [B, P, C] batches in order; the file appears at `path` only when complete.

    Restartable: a killed run leaves only `path`.tmp behind, which the next run overwrites.
    """

    def __init__(self, path, num_images, positions, channels, attrs, encoder_state=None, checksums=True):
        """checksums: a fletcher32 checksum per chunk of features and image_ids (False: a cache
        as written before checksums, for comparison and tests)."""
        self.path = os.fspath(path)
        self.n = int(num_images)
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            # A chunk cache that holds a few chunks: writes that straddle chunks stay in memory.
            chunk_bytes = max(1, min(CHUNK, self.n)) * positions * channels * 2
            self.file = h5py.File(tmp, "w", rdcc_nbytes=max(4 * chunk_bytes, 1 << 20), rdcc_nslots=10007)
            chunk = (max(1, min(CHUNK, self.n)), positions, channels)
            # Resizable: close(allow_fewer=True) cuts the file to the rows written (lost samples).
            self.features = self.file.create_dataset(
                "features",
                (self.n, positions, channels),
                dtype="f2",
                chunks=chunk,
                maxshape=(None, positions, channels),
                fletcher32=checksums,
            )
            self.image_ids = self.file.create_dataset(
                "image_ids", (self.n,), dtype="i8", maxshape=(None,), fletcher32=checksums
            )
            for k, v in attrs.items():
                self.file.attrs[k] = v
            self.file.attrs["format"] = FORMAT
            if encoder_state:
                group = self.file.create_group("encoder_state")
                for k, v in encoder_state.items():
                    group.create_dataset(k, data=np.asarray(v))
        except BaseException:
            self.abort()
            raise
        self.rows = 0
        self._sum = np.zeros(channels, np.float64)
        self._sumsq = np.zeros(channels, np.float64)
        self._count = 0

    def write(self, image_ids, features):
        """features: float array [B, P, C] (any float dtype); stored as float16."""
        features = np.asarray(features)
        b = len(image_ids)
        if self.rows + b > self.n:
            raise CapgenError(f"{self.path}: more images than the {self.n} announced")
        half = features.astype(np.float16)
        try:
            self.features[self.rows : self.rows + b] = half
        except BaseException:
            self.abort()
            raise
        self.image_ids[self.rows : self.rows + b] = np.asarray(image_ids, np.int64)
        flat = half.astype(np.float64).reshape(-1, half.shape[-1])  # stats of what is stored
        self._sum += flat.sum(0)
        self._sumsq += (flat * flat).sum(0)
        self._count += flat.shape[0]
        self.rows += b

    def close(self, allow_fewer=False):
        """Finish the file; allow_fewer: the rows written may be fewer than announced."""
        if self.rows != self.n and not (allow_fewer and 0 < self.rows < self.n):
            self.abort()
            raise CapgenError(f"{self.path}: wrote {self.rows} images, expected {self.n}")
        try:
            if self.rows < self.n:
                self.features.resize(self.rows, axis=0)
                self.image_ids.resize(self.rows, axis=0)
            mean = self._sum / max(self._count, 1)
            var = np.maximum(self._sumsq / max(self._count, 1) - mean * mean, 0.0)
            self.file.create_dataset("channel_mean", data=mean.astype(np.float32))
            self.file.create_dataset("channel_std", data=np.sqrt(var).astype(np.float32))
            self.file.close()
            self._atomic.__exit__(None, None, None)
        except BaseException:
            self.abort()
            raise

    def abort(self):
        """Close and delete the temp file (also after a failed write: disk full, ...)."""
        f = getattr(self, "file", None)
        if f is not None and f.id.valid:
            try:
                f.close()
            except (OSError, RuntimeError, ValueError):  # a file h5py could not flush: it goes anyway
                pass
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class FeatureFile:
    """Read side: metadata, ids and stats eagerly; features lazily (one h5py handle per process)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise CapgenError(f"{self.path}: feature cache not found")
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise CapgenError(f"{self.path}: not a capgen feature cache (format {f.attrs.get('format')!r})")
                self.attrs = {k: _attr(v) for k, v in f.attrs.items()}
                features = f["features"]
                self.shape = tuple(features.shape)
                self.chunk = (features.chunks or features.shape)[0]
                self.checksums = bool(features.fletcher32)
                self.image_ids, self.channel_mean, self.channel_std = (
                    _whole(self.path, f, name) for name in ("image_ids", "channel_mean", "channel_std")
                )
        except OSError as err:
            raise CapgenError(f"{self.path}: cannot read HDF5 ({damage_cause(err)})") from None
        except KeyError as err:
            raise CapgenError(f"{self.path}: missing dataset {err}") from None
        self._check_shapes()

    def _check_shapes(self):
        """features [N, P, C] with N image ids and C-long channel stats, or a one-line error."""
        if len(self.shape) != 3 or not all(self.shape[1:]):
            raise CapgenError(f"{self.path}: features have shape {list(self.shape)}, not [N, P, C]")
        for name, have, want in (
            ("image_ids", self.image_ids.shape, (self.shape[0],)),
            ("channel_mean", self.channel_mean.shape, (self.shape[2],)),
            ("channel_std", self.channel_std.shape, (self.shape[2],)),
        ):
            if have != want:
                raise CapgenError(f"{self.path}: {name} has shape {list(have)}, features want {list(want)}")
        for name, values in (("channel_mean", self.channel_mean), ("channel_std", self.channel_std)):
            if not np.isfinite(values).all():
                raise CapgenError(f"{self.path}: {name} holds non-finite values")

    def __len__(self):
        return self.shape[0]

    @property
    def positions(self):
        return self.shape[1]

    @property
    def channels(self):
        return self.shape[2]

    def encoder_state(self, keys=None):
        """The encoder tensors stored beside the features (only `keys` if given), as numpy arrays ({} if none)."""
        with h5py.File(self.path, "r") as f:
            if "encoder_state" not in f:
                return {}
            group = f["encoder_state"]
            return {k: np.asarray(group[k][()]) for k in (keys if keys is not None else group) if k in group}

    def shard_set(self, tokens=None):
        """The shard set folder the features came from (vocab.json, tokens.npz, json references)."""
        if tokens is not None:
            return os.path.dirname(os.path.abspath(tokens))
        folder = self.attrs.get("shard_set", "")
        if not folder:
            raise CapgenError(f"{self.path}: no shard_set attribute; pass the token table path")
        if not os.path.isabs(folder):  # stored relative to the cache file
            folder = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.path)), folder))
        return folder

    def read(self, start, stop):
        """A contiguous slice of features [stop-start, P, C] float16 (opens its own handle);
        a damaged chunk is a one-line error naming its rows."""
        with h5py.File(self.path, "r") as f:
            features, parts = f["features"], []
            for s in range(start, stop, self.chunk):
                parts.append(read_block(self.path, features, s, min(s + self.chunk, stop)))
            return np.concatenate(parts) if parts else features[start:stop]


def _whole(path, f, name):
    """Dataset `name` of the open file, read whole; damage is a one-line error naming it."""
    try:
        return f[name][:]
    except (OSError, ValueError) as err:
        raise CapgenError(f"{path}: {name}: cannot read ({damage_cause(err)})") from None


def read_block(path: str, dataset, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of an open h5py dataset; a block that cannot be read (a checksum
    mismatch, a broken chunk) is DamagedBlock naming the file, the rows and the cause."""
    try:
        return dataset[start:stop]
    except (OSError, ValueError) as err:
        raise DamagedBlock(path, start, stop, damage_cause(err)) from None


class DamagedBlock(CapgenError):
    """Rows [start, stop) of a cache could not be read; .range is (start, stop, cause)."""

    def __init__(self, path, start, stop, cause):
        self.range = (start, stop, cause)
        super().__init__(f"{path}: {describe_damage([self.range])}")
