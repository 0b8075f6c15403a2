"""Your own captions: a Hugging Face imagefolder metadata.jsonl, or a CSV / TSV -> image records.

The same records and Source as pipeline/sources/coco.py's readers (sorted by image id, raw
captions as the file has them), so the shard builder takes them unchanged. A row
names one image file (relative to the images folder) and one caption, or a list of
them in jsonl; rows of the same file are gathered. Which set an image belongs to
comes from a split column (train / val / test; validation, valid, dev mean val), or
from val_fraction (a hash of the file name), or else every image is train.

An image's id is a 53-bit hash of its file name: stable across runs, splits and
added rows, and exact as a JSON number in any reader (JavaScript's 2^53). Rows that
cannot be used are set aside and counted by reason (Source.dropped), never fatal;
missing image files and images left without captions are the builder's to count,
as for COCO. Only a missing file or column is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass, field

from pipeline.errors import CapgenError, read_bytes
from pipeline.sources.coco import ImageRecord, Source

FILE_COLUMN = "file_name"  # Hugging Face imagefolder's name
CAPTION_COLUMNS = ("caption", "text")  # the first present is used, unless one is chosen
SPLIT_COLUMN = "split"
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val", "test": "test"}
ID_BITS = 53


@dataclass
class TableSource(Source):
    """A Source with the rows read and those set aside by reason."""

    dropped: dict = field(default_factory=dict)  # reason -> rows (or captions) set aside
    rows: int = 0


def read_caption_table(
    path: str | os.PathLike,
    split: str = "train",
    images: str | os.PathLike | None = None,
    file_column: str | None = None,
    caption_column: str | None = None,
    split_column: str | None = None,
    val_fraction: float | None = None,
) -> TableSource:
    """The images of one split of a captions file (metadata.jsonl, .csv or .tsv).

    split: "train", "val" or "test". images: the image folder (default: the file's).
    file_column, caption_column, split_column: the columns to read (default: file_name; caption,
    else text; split, if present). val_fraction: split by a hash of the file name instead, this
    share val. Returns a TableSource, records sorted by image id, with the rows read and those set
    aside by reason. CapgenError for a missing file or column, or no images in the split."""
    path = os.fspath(path)
    if split not in SPLITS:
        raise CapgenError(f"{path}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise CapgenError(f"{path}: val fraction must be in [0, 1), got {val_fraction}")
    if val_fraction is not None and split_column:
        raise CapgenError(f"{path}: choose a split column or a val fraction, not both")
    dropped = {}
    rows, columns = _read_rows(path, dropped)
    file_col = column(path, columns, [file_column or FILE_COLUMN], "--file-column")
    cap_col = column(path, columns, [caption_column] if caption_column else CAPTION_COLUMNS, "--caption-column")
    if split_column:
        split_col = column(path, columns, [split_column], "--split-column")
    else:
        split_col = SPLIT_COLUMN if val_fraction is None and SPLIT_COLUMN in columns else None
    images_of = _gather(rows, file_col, cap_col, split_col, dropped)
    ids = image_ids(images_of)
    root = os.fspath(images) if images is not None else os.path.dirname(os.path.abspath(path))
    records = []
    for name, (row_split, captions) in images_of.items():
        if val_fraction is not None:
            row_split = "val" if _unit_hash(name) < val_fraction else "train"
        if row_split == split:
            records.append(
                ImageRecord(
                    image_id=ids[name], file_name=name, path=os.path.join(root, name), split=split, captions=captions
                )
            )
    if not records:
        found = {}
        for row_split, _ in images_of.values():
            found[row_split] = found.get(row_split, 0) + 1
        have = ", ".join(f"{k} {v}" for k, v in sorted(found.items())) or "no usable rows"
        raise CapgenError(f"{path}: no images in split {split!r} ({have})")
    records.sort(key=lambda r: r.image_id)
    return TableSource(records, path, 0, dict(sorted(dropped.items())), len(rows))


def count(dropped, reason, n=1):
    dropped[reason] = dropped.get(reason, 0) + n


# ---------------------------------------------------------------- reading rows


def _read_rows(path, dropped):
    """(rows as dicts, column names) from a .jsonl / .csv / .tsv file."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv", ".tsv"):
        raise CapgenError(f"{path}: unknown captions file type {ext or '(none)'!r} (expected .jsonl, .csv or .tsv)")
    text = read_text(path)
    if ext == ".jsonl":
        return jsonl_rows(text, dropped)
    return delimited_rows(path, text, "\t" if ext == ".tsv" else ",")


def read_text(path):
    """A text file as utf-8 (a byte-order mark dropped); undecodable bytes become lone
    surrogates, so a row holding one is counted and set aside instead of failing the file."""
    return read_bytes(path).removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")


def jsonl_rows(text, dropped):
    rows, columns = [], {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if has_undecodable(line):
            count(dropped, "undecodable")
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            count(dropped, "bad_json")
            continue
        rows.append(row)
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


def delimited_rows(path, text, delimiter):
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        if reader.fieldnames is None:
            raise CapgenError(f"{path}: empty file (needs a header line)")
        reader.fieldnames = [c.strip() for c in reader.fieldnames]
        rows = list(reader)
    except csv.Error as err:
        raise CapgenError(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file ({err})") from None
    return rows, reader.fieldnames


def column(path, columns, candidates, flag):
    for name in candidates:
        if name in columns:
            return name
    wanted = " or ".join(repr(c) for c in candidates)
    raise CapgenError(
        f"{path}: no column {wanted} (columns: {', '.join(map(str, columns)) or 'none'}; choose one with {flag})"
    )


def has_undecodable(text):
    return any("\udc80" <= ch <= "\udcff" for ch in text)


# ---------------------------------------------------------------- rows -> images


def _gather(rows, file_col, cap_col, split_col, dropped):
    """file name -> [split, captions] in first-seen order; bad rows and captions counted."""
    images_of, seen = {}, set()
    for row in rows:
        name, split = row.get(file_col), row.get(split_col, "train") if split_col else "train"
        cell = row.get(cap_col)
        values = [name, split] + (cell if isinstance(cell, list) else [cell])
        if any(isinstance(v, str) and has_undecodable(v) for v in values):
            count(dropped, "undecodable")
            continue
        if not isinstance(name, str) or not name.strip():
            count(dropped, "no_file_name")
            continue
        split = SPLIT_NAMES.get(str(split).strip().lower()) if split is not None else None
        if split is None:
            count(dropped, "unknown_split")
            continue
        name = posixpath.normpath(name.strip())
        entry = images_of.setdefault(name, [split, []])
        if entry[0] != split:
            count(dropped, "split_conflict")
            continue
        for caption in captions_of(cell, dropped):
            if (name, caption) in seen:
                count(dropped, "duplicate_caption")
            else:
                seen.add((name, caption))
                entry[1].append(caption)
    return images_of


def captions_of(value, dropped):
    """A row's caption cell (a string, a list of strings in jsonl) -> its non-empty captions."""
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if v is None or (isinstance(v, str) and not v.strip()):
            count(dropped, "empty_caption")
        elif not isinstance(v, str):
            count(dropped, "bad_caption")
        else:
            out.append(v)
    return out


def _hash(text, bits):
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> (64 - bits)


def _unit_hash(name):
    """A number in [0, 1) from the file name, for the val fraction."""
    return _hash("split:" + name, 53) / 2**53


def image_ids(names):
    """file name -> a stable 53-bit id. A collision (about one in 10^4 for a million
    names) gives the later name in sorted order a salted hash."""
    ids, taken = {}, set()
    for name in sorted(names):
        salt, image_id = 0, _hash(name, ID_BITS)
        while image_id in taken:
            salt += 1
            image_id = _hash(f"{name}#{salt}", ID_BITS)
        ids[name] = image_id
        taken.add(image_id)
    return ids
