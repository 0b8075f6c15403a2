"""Image URL lists -> image records: Conceptual Captions TSV, CSV, JSONL or parquet.

A row names one image URL and one caption (a list of them in JSONL or parquet); rows of
the same URL are gathered into one image with all its captions. Columns: img2dataset's
names `url` and `caption` (else `text`), or those chosen. A .tsv file whose first line
holds no url column is read as headerless, as Conceptual Captions ships it: the cell that
starts with http:// or https:// is the URL, the other the caption (CC3M: caption, URL;
CC12M: URL, caption).

An image's id is a 53-bit hash of its URL (pipeline/sources/caption_table.py image_ids,
as --captions does from the file name); a record's file_name and path are the URL. Rows
that cannot be used are set aside and counted by reason (TableSource.dropped), never
fatal; only a missing or unreadable file, or a missing column, is an error.
"""

from __future__ import annotations

import os

from pipeline.errors import CapgenError, first_line
from pipeline.sources.caption_table import (
    CAPTION_COLUMNS,
    TableSource,
    captions_of,
    column,
    count,
    delimited_rows,
    has_undecodable,
    image_ids,
    jsonl_rows,
    read_text,
)
from pipeline.sources.coco import ImageRecord

URL_COLUMN = "url"  # img2dataset's name
URL_LIST_TYPES = (".tsv", ".csv", ".jsonl", ".parquet")
SCHEMES = ("http://", "https://")


def read_url_list(
    path: str | os.PathLike, url_column: str | None = None, caption_column: str | None = None
) -> TableSource:
    """The images of a URL list (.tsv, .csv, .jsonl or .parquet), split "train".

    url_column: default url; caption_column: default caption, else text. Returns a
    TableSource, records in the list's order (a URL's first row), with the rows read and those set aside by
    reason. CapgenError (one line) for a missing, unreadable or unknown file, a missing
    column, or no usable URL."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in URL_LIST_TYPES:
        raise CapgenError(f"{path}: unknown URL list type {ext or '(none)'!r} (expected {', '.join(URL_LIST_TYPES)})")
    dropped = {}
    wanted_url = url_column or URL_COLUMN
    if ext == ".parquet":
        rows, columns = _parquet_rows(path)
    elif ext == ".tsv":
        rows, columns = _tsv_rows(read_text(path), wanted_url, caption_column, dropped)
    elif ext == ".jsonl":
        rows, columns = jsonl_rows(read_text(path), dropped)
    else:
        rows, columns = delimited_rows(path, read_text(path), ",")
    url_col = column(path, columns, [wanted_url], "--url-column")
    cap_col = column(path, columns, [caption_column] if caption_column else CAPTION_COLUMNS, "--caption-column")
    captions = _gather(rows, url_col, cap_col, dropped)
    if not captions:
        set_aside = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "no rows"
        raise CapgenError(f"{path}: no usable URLs ({set_aside})")
    ids = image_ids(captions)
    records = [ImageRecord(ids[u], u, u, "train", caps) for u, caps in captions.items()]
    return TableSource(records, path, 0, dict(sorted(dropped.items())), len(rows))


def _tsv_rows(text, url_column, caption_column, dropped):
    """(rows, columns) of a TSV: with a header line when it names the url column, else
    headerless (the URL cell found in the first line, the other cell the caption)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return [], []
    first = [c.strip() for c in lines[0].split("\t")]
    if url_column in first:
        columns, lines = first, lines[1:]
    else:
        at = [k for k, c in enumerate(first) if c.startswith(SCHEMES)]
        if len(first) != 2 or len(at) != 1:
            return [], first  # the caller names the missing url column
        columns = [caption_column or CAPTION_COLUMNS[0]] * 2
        columns[at[0]] = url_column
    rows = []
    for line in lines:
        cells = line.split("\t")
        if len(cells) != len(columns):
            count(dropped, "bad_row")
        else:
            rows.append(dict(zip(columns, cells)))
    return rows, columns


def _parquet_rows(path):
    """(rows, columns) of a parquet file; pyarrow is the `urls` extra."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CapgenError(f"{path}: reading parquet needs pyarrow (pip install 'capgen[urls]')") from None
    if not os.path.isfile(path):
        raise CapgenError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 -- pyarrow raises ArrowInvalid, OSError, ... on a bad file
        raise CapgenError(f"{path}: not a readable parquet file ({first_line(err)})") from None
    return table.to_pylist(), table.column_names


def _gather(rows, url_col, cap_col, dropped):
    """URL -> captions in first-seen order; bad rows and captions counted."""
    captions, seen = {}, set()
    for row in rows:
        url, cell = row.get(url_col), row.get(cap_col)
        values = [url] + (cell if isinstance(cell, list) else [cell])
        if any(isinstance(v, str) and has_undecodable(v) for v in values):
            count(dropped, "undecodable")
            continue
        if not isinstance(url, str) or not url.strip():
            count(dropped, "no_url")
            continue
        url = url.strip()
        if not url.lower().startswith(SCHEMES) or any(ch.isspace() for ch in url):
            count(dropped, "bad_url")
            continue
        entry = captions.setdefault(url, [])
        for caption in captions_of(cell, dropped):
            if (url, caption) in seen:
                count(dropped, "duplicate_caption")
            else:
                seen.add((url, caption))
                entry.append(caption)
    return captions
