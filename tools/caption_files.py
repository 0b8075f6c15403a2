"""`capgen caption`: caption image files in order, reporting the unreadable ones."""

import json

from PIL import Image
from tqdm import tqdm

from pipeline.errors import first_line


def read_image(path):
    """PIL image fully decoded, or a one-line reason it cannot be."""
    try:
        img = Image.open(path)
        img.load()
        return img, None
    except FileNotFoundError:
        return None, "file not found"
    except IsADirectoryError:
        return None, "is a directory"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, f"cannot read image ({first_line(err)})"


def caption_files(
    captioner,
    paths,
    beam=3,
    topk=3,
    as_json=False,
    out=print,
    err=print,
    chunk=16,
    on_result=None,
    progress=False,
):
    """Caption image files in order with `captioner` (a Captioner, or model/export/runtime.py's
    OnnxCaptioner); unreadable ones are reported via err. Returns the failures.

    on_result(path, image, result), if given, sees each Captioner result (e.g. to draw attention).
    progress: a tqdm bar on stderr for more than one chunk of files, when stderr is a terminal."""
    bar = tqdm(
        total=len(paths),
        unit="img",
        desc="captions",
        dynamic_ncols=True,
        leave=False,
        disable=None if progress and len(paths) > chunk else True,
    )
    out, err = _above(bar, out), _above(bar, err)
    failed = 0
    for start in range(0, len(paths), chunk):
        readable = []
        for path in paths[start : start + chunk]:
            img, why = read_image(path)
            if img is None:
                err(f"{path}: {why}")
                failed += 1
            else:
                readable.append((path, img))
        if not readable:
            continue
        results = captioner.caption([img for _, img in readable], beam=beam, topk=min(topk, beam))
        for (path, image), r in zip(readable, results):
            if on_result is not None:
                on_result(path, image, r)
            write_result(path, r, as_json, out)
        bar.update(len(paths[start : start + chunk]))
    bar.close()
    return failed


def write_result(path, r, as_json, out):
    """One image's Captioner result through out: a JSON line (captions, words, attention, grid), or
    its path then one line per caption, score first."""
    caps = [{"text": c["text"], "score": round(float(c["score"]), 4)} for c in r["captions"]]
    if as_json:
        attention = [[round(float(a), 5) for a in row] for row in r["attention"]]
        line = {"image": path, "captions": caps, "words": r["words"], "attention": attention, "grid": r["grid"]}
        out(json.dumps(line))
    else:
        out(path)
        for c in caps:
            out(f"  {c['score']:9.4f}  {c['text']}")


def _above(bar, write):
    """`write`, printing its line above the progress bar rather than through it."""
    if bar.disable:
        return write

    def above(line):
        with tqdm.external_write_mode():
            write(line)

    return above
