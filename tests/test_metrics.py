"""BLEU (nltk), COCO caption metrics (pycocoevalcap scorers), top-5 accuracy."""

import json
import shutil

import pytest
import torch
from nltk.translate.bleu_score import corpus_bleu

from model.eval import metrics
from model.eval.metrics import bleu, coco_scores, score_results_file
from model.nets.decoder import top5_accuracy
from pipeline.errors import CapgenError

REFS = {
    7: [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave in the ocean!",
        "a man on a surfboard riding a wave",
        "Surfer in the ocean, riding a wave.",
        "a person surfing",
    ],
    42: [
        "Two dogs play with a frisbee in the grass.",
        "two dogs playing in a grassy field",
        "Dogs chasing a red frisbee on the lawn.",
    ],
    3: [
        "A plate of food with broccoli and rice.",
        "a white plate topped with rice and broccoli",
        "Broccoli, rice and chicken on a plate.",
    ],
    9: ["A red bus parked on the street.", "a double decker bus on a city street"],
}
RESULTS = {
    7: "a man riding a wave on a surfboard",
    42: "two dogs playing with a frisbee in the grass",
    3: "a plate of rice and broccoli",
}
java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need java")


@pytest.mark.filterwarnings(r"ignore:\s*The hypothesis contains 0 counts")
def test_bleu_matches_nltk_and_hand_values():
    assert bleu([["a", "b", "c", "d"]], [[["a", "b", "c", "e"]]])["Bleu_1"] == pytest.approx(0.75)
    assert bleu([["a", "b", "c", "d"]], [[["a", "b", "c", "e"]]])["Bleu_2"] == pytest.approx(0.5**0.5)
    hyps = [RESULTS[i].split() for i in RESULTS]
    refs = [[r.lower().replace(".", "").replace("!", "").split() for r in REFS[i]] for i in RESULTS]
    got = bleu(hyps, refs)
    for n in range(1, 5):
        assert got[f"Bleu_{n}"] == corpus_bleu(refs, hyps, weights=[1 / n] * n)


def expected_coco(results, refs, meteor):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs[i]] for i in results})
    res = tok.tokenize({i: [{"caption": results[i]}] for i in results})
    out = dict(zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], Bleu(4).compute_score(gts, res, verbose=0)[0]))
    out["METEOR"] = meteor.compute_score(gts, res)[0]
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


@java
def test_coco_scores_match_pycocoevalcap(monkeypatch):
    from pycocoevalcap.meteor import meteor

    one = meteor.Meteor()  # one METEOR process for both sides: each takes seconds to start
    expected = expected_coco(RESULTS, REFS, one)
    monkeypatch.setattr(meteor, "Meteor", lambda: one)
    got = coco_scores(RESULTS, REFS)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    assert 0 < got["METEOR"] < 1 and got["CIDEr"] > 0


def test_results_file_scored_like_the_official_toolkit(tmp_path, monkeypatch):
    ann = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in REFS],
        "annotations": [
            {"id": n, "image_id": i, "caption": c} for n, (i, c) in enumerate((i, c) for i in REFS for c in REFS[i])
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    (tmp_path / "results.json").write_text(json.dumps([{"image_id": i, "caption": c} for i, c in RESULTS.items()]))
    seen = []
    monkeypatch.setattr(metrics, "coco_scores", lambda res, refs: seen.append((res, refs)) or {"CIDEr": 1.0})
    assert score_results_file(str(tmp_path / "results.json"), str(tmp_path / "captions.json")) == {"CIDEr": 1.0}
    assert seen == [(RESULTS, {i: REFS[i] for i in RESULTS})]  # image 9 has no result: not scored
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 5, "caption": "a bus"}]))
    with pytest.raises(CapgenError, match=r"captions\.json: image id 5 of .*bad\.json"):
        score_results_file(str(tmp_path / "bad.json"), str(tmp_path / "captions.json"))
    (tmp_path / "dup.json").write_text(json.dumps([{"image_id": 7, "caption": "a"}, {"image_id": 7, "caption": "b"}]))
    with pytest.raises(CapgenError, match=r"dup\.json: image id 7 has more than one caption"):
        score_results_file(str(tmp_path / "dup.json"), str(tmp_path / "captions.json"))
    with pytest.raises(CapgenError, match=r"nope\.json: file not found"):
        score_results_file(str(tmp_path / "nope.json"), str(tmp_path / "captions.json"))
    (tmp_path / "list.json").write_text(json.dumps({"annotations": "x"}))
    with pytest.raises(CapgenError, match=r"list\.json: not a COCO results file"):
        score_results_file(str(tmp_path / "list.json"), str(tmp_path / "captions.json"))


def test_without_java_a_simple_tokenizer_and_no_meteor(monkeypatch):
    plain = {i: [r.lower().replace(".", "").replace("!", "").replace(",", "") for r in REFS[i]] for i in RESULTS}
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="java not found"):
        got = coco_scores(RESULTS, REFS)
    assert set(got) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    with pytest.warns(UserWarning):
        assert coco_scores(RESULTS, plain) == got  # punctuation and case make no difference


def test_top5_accuracy():
    logits = torch.tensor(
        [[[9.0, 8, 7, 6, 5, 4, 3], [0, 1, 2, 3, 4, 5, 6]], [[1, 1.5, 0, 0, 0, 0, 2], [6, 5, 4, 3, 2, 1, 0]]]
    )
    targets = torch.tensor([[4, 0], [1, 3]])
    mask = torch.tensor([[True, True], [True, False]])
    # hits: 4 in top5 of row 0 (yes), 0 in top5 of row 1 (no), 1 in row 2 (yes); row 3 masked
    assert top5_accuracy(logits, targets, mask).item() == pytest.approx(2 / 3)
