"""`capgen eval --html`: one self-contained page of val images with their generated and
reference captions and per-image scores (thumbnails inlined as base64 JPEG).

Per-image scores are pycocoevalcap's own per-image values from the run that gave the
corpus scores: BLEU-4 of the one sentence, CIDEr-D with the corpus's IDF.
"""

import base64
import html
import io
import os

from PIL import Image

from model.eval.evaluate import METRICS
from pipeline.atomic import atomic_write
from pipeline.shards.shardset import read_jpegs, shard_paths

THUMB = 192  # px, longer side
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
h1{font-size:1.3rem}.scores{font-family:monospace;margin-bottom:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.7rem}
.card img{width:100%;height:auto;image-rendering:auto;border-radius:4px}
.caption{font-weight:600;margin:.4rem 0}.meta{color:#666;font-size:.85rem}
.refs{margin:.3rem 0 0 1rem;padding:0;font-size:.9rem;color:#444}
"""


def thumbnail_uri(jpeg, side=THUMB):
    """A data: URI of the JPEG shrunk to `side` px on its longer side."""
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    img.thumbnail((side, side), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_folder(source):
    """The shard set holding a source's JPEGs (a cache's: the one named in its attributes), or None."""
    folder = source.path if source.kind == "images" else source.shard_set
    return folder if os.path.isdir(folder) and shard_paths(folder) else None


def _card(image_id, caption, refs, scores, uri):
    img = f'<img src="{uri}" alt="image {image_id}">' if uri else '<div class="meta">(no image)</div>'
    score = "  ".join(f"{k} {scores[k]:.3f}" for k in ("Bleu_4", "CIDEr") if k in scores)
    items = "".join(f"<li>{html.escape(r)}</li>" for r in refs)
    return (
        f'<div class="card" data-image-id="{image_id}">{img}<div class="caption">{html.escape(caption)}</div>'
        f'<div class="meta">image {image_id} · <span class="score">{score}</span></div>'
        f'<ol class="refs">{items}</ol></div>'
    )


def report_page(title, scores, cards):
    corpus = "  ".join(f"{k} {scores[k]:.4f}" for k in METRICS if k in scores)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<div class="scores">{corpus}</div><div class="meta">Per image: BLEU-4 and CIDEr-D '
        f"(pycocoevalcap), generated caption in bold, references below.</div>"
        f'<div class="grid">{"".join(cards)}</div></body></html>\n'
    )


def write_report(path, ev, title=None, limit=100):
    """Write the page for `evaluate()`'s result `ev` (its first `limit` images by id);
    returns (cards, thumbnails) written."""
    ids = sorted(ev["captions"])[:limit]
    folder = image_folder(ev["source"])
    jpegs = read_jpegs(folder, ids) if folder else {}
    cards = [
        _card(
            i,
            ev["captions"][i],
            ev["refs"].get(i, []),
            ev["per_image"].get(i, {}),
            thumbnail_uri(jpegs[i]) if i in jpegs else None,
        )
        for i in ids
    ]
    title = title or f"{ev['source'].path}: {ev['images']} images, beam {ev['beam']}"
    with atomic_write(path, "wb") as f:
        f.write(report_page(title, ev["scores"], cards).encode("utf-8"))
    return len(cards), len(jpegs)
