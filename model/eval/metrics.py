"""Caption metrics: BLEU-1..4 (nltk), the COCO caption metrics (pycocoevalcap).

COCO metrics call the pycocoevalcap scorers directly rather than
COCOEvalCap.evaluate(), which also builds SPICE (it downloads Stanford models
and fails offline): SPICE is left out.
"""

import json
import re
import shutil
import warnings

from pipeline.errors import CapgenError

BLEU_WEIGHTS = {
    "Bleu_1": (1.0,),
    "Bleu_2": (0.5, 0.5),
    "Bleu_3": (1 / 3, 1 / 3, 1 / 3),
    "Bleu_4": (0.25, 0.25, 0.25, 0.25),
}
_PUNCT = re.compile(r"[^\w\s]")


def bleu(hyps, refs):
    """Corpus BLEU-1..4 of tokenised hypotheses against all their references.

    hyps: [N][words]; refs: [N][R][words]. nltk's corpus_bleu, uniform weights per n.
    """
    from nltk.translate.bleu_score import corpus_bleu

    return {name: float(corpus_bleu(refs, hyps, weights=w)) for name, w in BLEU_WEIGHTS.items()}


def _ptb_tokenize(captions):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({key: [{"caption": c} for c in caps] for key, caps in captions.items()})


def _simple_tokenize(captions):
    # Close to PTB on plain captions: lower-case, punctuation dropped.
    return {key: [" ".join(_PUNCT.sub(" ", c.lower()).split()) for c in caps] for key, caps in captions.items()}


def coco_scores(results, refs, per_image=None):
    """COCO caption metrics of {image_id: caption} against {image_id: [captions]}.

    per_image: a dict to fill with {image_id: {"Bleu_4", "CIDEr"}}, the scorers' own
    per-image values (BLEU-4 of the one sentence; CIDEr-D with the corpus's IDF).

    Scores the images in `results` (each must have references), as the official
    toolkit does: PTB tokenisation, then Bleu(4), METEOR, ROUGE_L, CIDEr. METEOR and
    the PTB tokenizer need Java; without it, a simple tokenizer is used, METEOR is
    left out, and a warning says so.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    missing = [i for i in results if not refs.get(i)]
    if missing:
        raise ValueError(f"no references for image id {missing[0]} ({len(missing)} such ids)")
    ids = list(results)
    # One tokenizer run for both sides: tokenisation is per line.
    both = {("ref", i): list(refs[i]) for i in ids}
    both.update({("res", i): [results[i]] for i in ids})
    java = shutil.which("java") is not None
    if not java:
        warnings.warn("java not found: COCO metrics use a simple tokenizer and leave out METEOR", stacklevel=2)
    tok = _ptb_tokenize(both) if java else _simple_tokenize(both)
    gts = {i: tok[("ref", i)] for i in ids}
    res = {i: tok[("res", i)] for i in ids}

    out = {}
    score, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{n + 1}": float(s) for n, s in enumerate(score)})
    if java:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        try:
            out["METEOR"] = float(meteor.compute_score(gts, res)[0])
        finally:
            del meteor  # its __del__ stops the java process
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"], cider_each = Cider().compute_score(gts, res)
    out["CIDEr"] = float(out["CIDEr"])
    if per_image is not None:
        per_image.update({i: {"Bleu_4": float(b), "CIDEr": float(c)} for i, b, c in zip(gts, bleu_each[3], cider_each)})
    return out


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CapgenError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CapgenError(f"{path}: not JSON ({err})") from None
    except OSError as err:  # a folder, no permission
        raise CapgenError(f"{path}: cannot read ({err.strerror or err})") from None


def _is_entry(r):
    """{"image_id": int, "caption": str, ...}: a result line or an annotation."""
    return (
        isinstance(r, dict)
        and isinstance(r.get("image_id"), int)
        and not isinstance(r["image_id"], bool)
        and isinstance(r.get("caption"), str)
    )


def score_results_file(results_json, annotations_json):
    """Score a COCO results file ([{"image_id", "caption"}]) against a COCO captions
    annotation file, like the official toolkit: only the images in the results,
    each against all its reference captions."""
    results = _read_json(results_json)
    if not isinstance(results, list) or not all(_is_entry(r) for r in results):
        raise CapgenError(f"{results_json}: not a COCO results file (expected a list of {{image_id, caption}})")
    res = {}
    for r in results:
        if r["image_id"] in res:
            raise CapgenError(f"{results_json}: image id {r['image_id']} has more than one caption")
        res[r["image_id"]] = r["caption"]
    if not res:
        raise CapgenError(f"{results_json}: no results")
    ann = _read_json(annotations_json)
    if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
        raise CapgenError(f"{annotations_json}: not a COCO captions annotation file")
    refs = {}
    for k, a in enumerate(ann["annotations"]):
        if not _is_entry(a):
            raise CapgenError(
                f"{annotations_json}: annotations[{k}] is not an object with an integer image_id and a string caption"
            )
        refs.setdefault(a["image_id"], []).append(a["caption"])
    missing = [i for i in res if i not in refs]
    if missing:
        raise CapgenError(
            f"{annotations_json}: image id {missing[0]} of {results_json} has no captions here "
            f"({len(missing)} such ids)"
        )
    return coco_scores(res, {i: refs[i] for i in res})
