"""COCO captions json and Karpathy's dataset_coco.json -> image records.

Both readers return every image of the asked split, sorted by image id, with
its raw captions exactly as the file has them (trailing spaces, newlines,
upper case, non-ASCII included): cleaning is the text module's job. Images
without captions are kept (the shard builder counts them as skipped);
captions whose image is not listed are counted, not lost silently.
"""
import contextlib
import io
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field

from pipeline.errors import CapgenError

COCO_SPLITS = ("train2014", "val2014")
KARPATHY_SPLITS = ("train", "val", "test")


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    path: str
    split: str
    captions: list = field(default_factory=list)
    width: int | None = None
    height: int | None = None


@dataclass
class Source:
    records: list
    annotation_path: str
    orphan_captions: int = 0


def _load_json(path):
    if not os.path.isfile(path):
        raise CapgenError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CapgenError(f"{path}: not valid JSON ({err})") from None


def read_coco(root, split):
    """root/annotations/captions_{split}.json with images in root/{split}/."""
    if split not in COCO_SPLITS:
        raise CapgenError(f"{root}: unknown COCO split {split!r} (expected one of {', '.join(COCO_SPLITS)})")
    path = os.path.join(root, "annotations", f"captions_{split}.json")
    coco = _load_coco_api(path)
    captions = defaultdict(list)
    orphans = 0
    for ann in sorted(coco.dataset["annotations"], key=lambda a: a.get("id", 0)):
        if ann["image_id"] in coco.imgs:
            captions[ann["image_id"]].append(ann["caption"])
        else:
            orphans += 1
    records = [
        ImageRecord(
            image_id=int(img["id"]),
            file_name=img["file_name"],
            path=os.path.join(root, split, img["file_name"]),
            split=split,
            captions=captions.get(img["id"], []),
            width=img.get("width"),
            height=img.get("height"),
        )
        for img in coco.imgs.values()
    ]
    records.sort(key=lambda r: r.image_id)
    return Source(records, path, orphans)


def _load_coco_api(path):
    """pycocotools' COCO, quiet, with a one-line error for a broken file."""
    from pycocotools.coco import COCO

    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise CapgenError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as err:
            raise CapgenError(f"{path}: malformed COCO entry (missing {err})") from None
    return coco


def read_karpathy(path, split, image_root=None, train_includes_restval=True):
    """Karpathy's dataset_coco.json; image paths are image_root/filepath/filename.

    The 'train' split takes 'restval' too, as the common recipe does (113K images).
    """
    if split not in KARPATHY_SPLITS:
        raise CapgenError(f"{path}: unknown Karpathy split {split!r} (expected one of {', '.join(KARPATHY_SPLITS)})")
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise CapgenError(f"{path}: not a Karpathy split file (needs 'images')")
    image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    wanted = {split, "restval"} if split == "train" and train_includes_restval else {split}
    records = []
    for img in data["images"]:
        try:
            if img["split"] not in wanted:
                continue
            image_id = int(img.get("cocoid", img.get("imgid")))
            records.append(ImageRecord(
                image_id=image_id,
                file_name=img["filename"],
                path=os.path.join(image_root, img.get("filepath", ""), img["filename"]),
                split=img["split"],
                captions=[s["raw"] for s in img.get("sentences", [])],
            ))
        except (KeyError, TypeError, ValueError) as err:
            raise CapgenError(f"{path}: malformed image entry ({err!r})") from None
    records.sort(key=lambda r: r.image_id)
    return Source(records, path, 0)


def caption_references(source):
    """image id -> raw captions, the references scores are computed against."""
    return {r.image_id: list(r.captions) for r in source.records if r.captions}
