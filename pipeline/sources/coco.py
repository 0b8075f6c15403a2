"""COCO captions json and Karpathy's dataset_coco.json -> image records.

Both readers return every image of the asked split, sorted by image id, with
its raw captions exactly as the file has them (trailing spaces, newlines,
upper case, non-ASCII included): cleaning is the text module's job. Images
without captions are kept (the shard builder counts them as skipped);
captions whose image is not listed are counted, not lost silently.

Every field read is type-checked where it is read. Malformed entries are either left
out and counted, or a one-line error:
- an image whose id is not an integer (missing, null, a string "5", 3.5, a list,
  a bool), one without a file name (missing, null or empty), one whose file name
  (or Karpathy filepath) is not a string, one whose width or height is given but
  is not a positive integer, and every image of an id listed more than once (its
  captions could belong to any of them), go to Source.skipped with reason
  bad_id / missing_file_name / bad_file_name / bad_size / duplicate_id (a COCO
  image skipped as bad_id has no id its annotations can name: theirs are counted
  as orphans, or as bad captions when their own image id is not an integer; a
  Karpathy one takes its captions with it, its malformed ones counted as bad);
- a caption that is not a non-empty string (null, a number, missing), or an
  annotation whose image id is not an integer (a string "5" included) or whose
  own id is given but is not an integer, is counted in bad_captions;
- a file whose image list is not a list of objects, or a Karpathy entry without
  a split, is refused (CapgenError).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from pipeline.errors import CapgenError

COCO_SPLITS = ("train2014", "val2014")
KARPATHY_SPLITS = ("train", "val", "test")
BAD_ID = "bad_id"  # the skip reason of an image entry without an integer id


@dataclass
class ImageRecord:
    """One image of a source: its id, file name, path on disk, split and raw captions."""

    image_id: int
    file_name: str
    path: str
    split: str
    captions: list[str] = field(default_factory=list)
    width: int | None = None
    height: int | None = None


@dataclass
class Source:
    """What a reader returns: the records of one split (sorted by image id; a URL list's in its rows'
    order: the order their shards hold them), the file they came from,
    and what was left out: captions of unlisted images, bad captions, skipped entries."""

    records: list[ImageRecord]
    annotation_path: str
    orphan_captions: int = 0
    # Keyword-only, so that subclasses' positional fields come first (pipeline/sources/caption_table.py's).
    bad_captions: int = field(default=0, kw_only=True)
    skipped: list = field(default_factory=list, kw_only=True)  # [image id, path, reason] of entries left out


def _load_json(path):
    if not os.path.isfile(path):
        raise CapgenError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CapgenError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise CapgenError(f"{path}: cannot read ({err.strerror or err})") from None


def _as_id(value):
    """An id as an int: an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _entry_id(path, k, entry, *keys):
    """The id of images[k] under the first of keys it has, None when that is not an integer (or
    absent); CapgenError when the entry is not an object."""
    if not isinstance(entry, dict):
        raise CapgenError(f"{path}: images[{k}] is not an object")
    return _as_id(next((entry[key] for key in keys if key in entry), None))


def _row_id(image_id, k):
    """The id column of images[k]'s skipped row: its image id, or for an entry without an integer
    one (bad_id) the string "images[k]". Not the id as written: "5" and 5 would then read alike in
    skipped.txt, two entries could share one, and a list or object can be of any size; the
    locator is unique, short, never an integer (so no duplicate_id count or lookup by image id
    ever matches it), and names the entry to mend. Integer ids' rows stay as they were."""
    return f"images[{k}]" if image_id is None else image_id


def skip_order(row: list) -> tuple:
    """Sort key of a skipped row [image id, path, reason]: integer ids first, in numeric order, then
    the bad_id rows ("images[k]") in the order given -- sorted() is stable, and every reader lists
    them in entry order -- so sets whose ids are all integers keep their skipped.txt byte for byte."""
    return (0, row[0]) if isinstance(row[0], int) else (1, 0)


def _good_caption(caption):
    return isinstance(caption, str) and caption.strip() != ""


def _name_problem(name, folder=""):
    """The skip reason of an image's file name (and Karpathy folder), None when usable."""
    if not isinstance(name, (str, type(None))) or not isinstance(folder, (str, type(None))):
        return "bad_file_name"
    return None if name is not None and name.strip() and folder is not None else "missing_file_name"


def _size_problem(entry):
    """bad_size when the entry gives a width or height that is not a positive integer."""
    sizes = [entry.get(k) for k in ("width", "height")]
    return "bad_size" if any(v is not None and not (_as_id(v) is not None and v > 0) for v in sizes) else None


def _without_duplicates(records, skipped):
    """Records and skips of image entries, less every entry whose id is listed more than once:
    those are all skipped as duplicate_id (each entry once)."""
    counts = Counter([r.image_id for r in records] + [s[0] for s in skipped])
    kept = [r for r in records if counts[r.image_id] == 1]
    skipped = [s if counts[s[0]] == 1 else [s[0], s[1], "duplicate_id"] for s in skipped]
    skipped += [[r.image_id, r.path, "duplicate_id"] for r in records if counts[r.image_id] > 1]
    return kept, sorted(skipped, key=skip_order)


def _coco_captions(data, image_ids):
    """image id -> captions (in annotation id order), orphans, bad captions."""
    annotations = data["annotations"]
    good, bad = [], 0
    for ann in annotations:
        if (
            isinstance(ann, dict)
            and _as_id(ann.get("image_id")) is not None
            and _good_caption(ann.get("caption"))
            and (ann.get("id") is None or _as_id(ann["id"]) is not None)
        ):
            good.append(ann)
        else:
            bad += 1
    captions, orphans = defaultdict(list), 0
    for ann in sorted(good, key=lambda a: a.get("id") or 0):
        image_id = _as_id(ann["image_id"])
        if image_id in image_ids:
            captions[image_id].append(ann["caption"])
        else:
            orphans += 1
    return captions, orphans, bad


def read_coco(root: str, split: str) -> Source:
    """The images of one COCO 2014 split: root/annotations/captions_{split}.json, images in root/{split}/.

    split: "train2014" or "val2014". Returns a Source, records sorted by image id, each with its raw
    captions (images without any kept: the shard builder counts them). CapgenError for an unknown
    split, a missing or malformed file."""
    if split not in COCO_SPLITS:
        raise CapgenError(f"{root}: unknown COCO split {split!r} (expected one of {', '.join(COCO_SPLITS)})")
    path = os.path.join(root, "annotations", f"captions_{split}.json")
    data = _load_json(path)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise CapgenError(f"{path}: not a COCO captions file (needs lists 'images' and 'annotations')")
    records, skipped = [], []
    for k, img in enumerate(data["images"]):
        image_id = _entry_id(path, k, img, "id")
        name = img.get("file_name")
        reason = BAD_ID if image_id is None else (_name_problem(name) or _size_problem(img))
        if reason:
            where = os.path.join(root, split, name) if reason == "bad_size" else ""
            skipped.append([_row_id(image_id, k), where, reason])
            continue
        records.append(
            ImageRecord(
                image_id=image_id,
                file_name=name,
                path=os.path.join(root, split, name),
                split=split,
                width=img.get("width"),
                height=img.get("height"),
            )
        )
    records, skipped = _without_duplicates(records, skipped)
    listed = {r.image_id for r in records} | {s[0] for s in skipped}  # a skipped image's captions are no orphans
    captions, orphans, bad = _coco_captions(data, listed)
    for r in records:
        r.captions = captions.get(r.image_id, [])
    records.sort(key=lambda r: r.image_id)
    return Source(records, path, orphans, bad_captions=bad, skipped=skipped)


def _karpathy_record(path, k, img, image_root):
    """(image id, ImageRecord; or its skipped row's id, skip reason; and bad captions) of images[k]."""
    image_id = _entry_id(path, k, img, "cocoid", "imgid")
    sentences = img.get("sentences", [])
    if not isinstance(sentences, list):
        raise CapgenError(f"{path}: images[{k}]: 'sentences' is not a list")
    raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
    captions = [c for c in raws if _good_caption(c)]
    name, folder = img.get("filename"), img.get("filepath", "")
    reason = BAD_ID if image_id is None else _name_problem(name, folder)
    if reason:
        return _row_id(image_id, k), reason, len(raws) - len(captions)
    return (
        image_id,
        ImageRecord(
            image_id=image_id,
            file_name=name,
            path=os.path.join(image_root, folder, name),
            split=img["split"],
            captions=captions,
        ),
        len(raws) - len(captions),
    )


def read_karpathy(path: str, split: str, image_root: str | None = None, train_includes_restval: bool = True) -> Source:
    """The images of one split of Karpathy's dataset_coco.json; image paths are image_root/filepath/filename.

    split: "train", "val" or "test"; the 'train' split takes 'restval' too, as the common recipe does
    (113K images), unless train_includes_restval is False. image_root: default the file's folder.
    Returns a Source, records sorted by image id. CapgenError for an unknown split or a malformed file.
    """
    if split not in KARPATHY_SPLITS:
        raise CapgenError(f"{path}: unknown Karpathy split {split!r} (expected one of {', '.join(KARPATHY_SPLITS)})")
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CapgenError(f"{path}: not a Karpathy split file (needs a list 'images')")
    image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    wanted = {split, "restval"} if split == "train" and train_includes_restval else {split}
    records, skipped, bad = [], [], 0
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("split"), str):
            raise CapgenError(f"{path}: images[{k}] is not an object with a 'split'")
        if img["split"] not in wanted:
            continue
        image_id, record, bad_here = _karpathy_record(path, k, img, image_root)
        bad += bad_here
        if isinstance(record, str):
            skipped.append([image_id, "", record])
        else:
            records.append(record)
    records, skipped = _without_duplicates(records, skipped)
    records.sort(key=lambda r: r.image_id)
    return Source(records, path, 0, bad_captions=bad, skipped=skipped)


def caption_references(source):
    """image id -> raw captions, the references scores are computed against."""
    return {r.image_id: list(r.captions) for r in source.records if r.captions}
