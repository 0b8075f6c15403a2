"""Bad input to the data and server commands (synth, shards build/verify/merge, vocab, score, serve):
each ends in one line and exit status 1 (`capgen: error: ...`), or click's usage error and status 2;
never a traceback. The commands run in this process (through tools.cli.main) to keep the matrix fast."""

import json
import shutil
import socket

import pytest
from cli_in_process import capgen

CAPGEN_ERROR, USAGE = 1, 2


@pytest.fixture(scope="module")
def shard_set(tiny_shards):
    return tiny_shards(images=12, seed=4, width=48, height=40, image_size=32, shard_size=5, preset="coco")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


def coco_root(tmp, data):
    """A COCO layout whose train2014 annotation file holds data."""
    write(tmp / "coco" / "annotations" / "captions_train2014.json", data)
    return tmp / "coco"


def build_coco(data):
    def args(tmp, _):
        return ["shards", "build", "--coco-root", coco_root(tmp, data), "--split", "train2014", "--out", tmp / "out"]

    return args


def build_karpathy(data):
    def args(tmp, _):
        return [
            "shards",
            "build",
            "--karpathy",
            write(tmp / "dataset_coco.json", data),
            "--karpathy-split",
            "test",
            "--out",
            tmp / "out",
        ]

    return args


def broken_set(change):
    """`capgen shards verify` of a copy of the shard set, changed by change(folder)."""

    def args(tmp, shards):
        folder = tmp / "set"
        shutil.copytree(shards, folder)
        change(folder)
        return ["shards", "verify", folder]

    return args


def manifest_with(**fields):
    def change(folder):
        m = json.loads((folder / "manifest.json").read_text())
        m.update(fields)
        (folder / "manifest.json").write_text(json.dumps(m))

    return change


def score(results, annotations):
    def args(tmp, _):
        return [
            "score",
            write(tmp / "results.json", results),
            "--annotations",
            write(tmp / "captions.json", annotations),
        ]

    return args


IMAGE = {"id": 1, "file_name": "a.jpg"}
RESULTS = [{"image_id": 1, "caption": "a dog"}]
GOOD_ANNOTATIONS = {"images": [IMAGE], "annotations": [{"image_id": 1, "caption": "a dog", "id": 1}]}

CASES = {  # name -> (argv from (tmp folder, shard set), exit status, words in the message)
    "synth_images_0": (
        lambda t, s: ["synth", t / "d", "--images", "0", "--seed", "1"],
        CAPGEN_ERROR,
        "--images must be at least 1, got 0",
    ),
    "synth_val_fraction_2": (
        lambda t, s: ["synth", t / "d", "--images", "4", "--seed", "1", "--val-fraction", "2"],
        CAPGEN_ERROR,
        "--val-fraction must be in [0, 1), got 2.0",
    ),
    "synth_val_fraction_nan": (
        lambda t, s: ["synth", t / "d", "--images", "4", "--seed", "1", "--val-fraction", "nan"],
        CAPGEN_ERROR,
        "--val-fraction must be in [0, 1), got nan",
    ),
    "synth_tiny_images": (
        lambda t, s: ["synth", t / "d", "--images", "4", "--seed", "1", "--width", "8"],
        CAPGEN_ERROR,
        "image size must be at least 32x32, got 8x480",
    ),
    "synth_seed_negative": (
        lambda t, s: ["synth", t / "d", "--images", "4", "--seed", "-1"],
        USAGE,
        "Invalid value for '--seed'",
    ),
    "synth_workers_0": (
        lambda t, s: ["synth", t / "d", "--images", "4", "--seed", "1", "--workers", "0"],
        USAGE,
        "Invalid value for '--workers'",
    ),
    "synth_out_is_a_file": (
        lambda t, s: ["synth", write(t / "file", "x"), "--images", "4", "--seed", "1"],
        USAGE,
        "is a file",
    ),
    "build_no_source": (lambda t, s: ["shards", "build"], USAGE, "give --coco-root with --split"),
    "build_no_annotations": (
        lambda t, s: ["shards", "build", "--coco-root", t, "--split", "train2014"],
        CAPGEN_ERROR,
        "captions_train2014.json: file not found",
    ),
    "build_not_json": (build_coco("{not json"), CAPGEN_ERROR, "captions_train2014.json: not valid JSON"),
    "build_images_not_a_list": (
        build_coco({"images": {}, "annotations": []}),
        CAPGEN_ERROR,
        "needs lists 'images' and 'annotations'",
    ),
    "build_annotations_not_a_list": (
        build_coco({"images": [], "annotations": 3}),
        CAPGEN_ERROR,
        "needs lists 'images' and 'annotations'",
    ),
    "build_image_not_an_object": (
        build_coco({"images": [IMAGE, [1]], "annotations": []}),
        CAPGEN_ERROR,
        "images[1] is not an object",
    ),
    "build_only_image_ids_not_integers": (  # each skipped as bad_id: none left
        build_coco(
            {
                "images": [{"id": "1", "file_name": "a.jpg"}, {"file_name": "b.jpg"}],
                "annotations": [{"image_id": 1, "caption": "a dog"}],
            }
        ),
        CAPGEN_ERROR,
        "no images with captions to build (0 images listed, 2 left out, 0 bad captions)",
    ),
    "build_no_usable_caption": (
        build_coco(
            {
                "images": [IMAGE],
                "annotations": [
                    {"image_id": 1, "caption": None},
                    {"image_id": 1, "caption": 3},
                    {"image_id": 1},
                    {"caption": "x"},
                ],
            }
        ),
        CAPGEN_ERROR,
        "no images with captions to build (1 images listed, 0 left out, 4 bad captions)",
    ),
    "build_only_duplicates": (
        build_coco(
            {"images": [IMAGE, dict(IMAGE, file_name="b.jpg")], "annotations": [{"image_id": 1, "caption": "a dog"}]}
        ),
        CAPGEN_ERROR,
        "no images with captions to build (0 images listed, 2 left out, 0 bad captions)",
    ),
    "build_empty": (build_coco({"images": [], "annotations": []}), CAPGEN_ERROR, "no images with captions to build"),
    "build_karpathy_null_raws": (
        build_karpathy({"images": [{"cocoid": 1, "filename": "a.jpg", "split": "test", "sentences": [{"raw": None}]}]}),
        CAPGEN_ERROR,
        "no images with captions to build (1 images listed, 0 left out, 1 bad captions)",
    ),
    "build_karpathy_no_split": (
        build_karpathy({"images": [{"cocoid": 1, "filename": "a.jpg"}]}),
        CAPGEN_ERROR,
        "images[0] is not an object with a 'split'",
    ),
    "build_karpathy_not_a_listing": (build_karpathy([1, 2]), CAPGEN_ERROR, "not a Karpathy split file"),
    "build_shard_size_0": (
        lambda t, s: build_coco(GOOD_ANNOTATIONS)(t, s) + ["--shard-size", "0"],
        USAGE,
        "Invalid value for '--shard-size'",
    ),
    "build_quality_101": (
        lambda t, s: build_coco(GOOD_ANNOTATIONS)(t, s) + ["--quality", "101"],
        USAGE,
        "Invalid value for '--quality'",
    ),
    "build_job_index_past_the_jobs": (
        lambda t, s: build_coco(GOOD_ANNOTATIONS)(t, s) + ["--num-jobs", "2", "--job-index", "2"],
        CAPGEN_ERROR,
        "--job-index must be in [0, 2), got 2",
    ),
    "build_bad_name": (
        lambda t, s: build_coco(GOOD_ANNOTATIONS)(t, s) + ["--name", "a b"],
        CAPGEN_ERROR,
        "shard set name 'a b' must be letters",
    ),
    "build_vocab_not_a_vocabulary": (
        lambda t, s: build_coco(GOOD_ANNOTATIONS)(t, s) + ["--vocab", write(t / "v.json", {"itos": "abc"})],
        CAPGEN_ERROR,
        "v.json: not a capgen vocabulary",
    ),
    "build_out_is_a_file": (
        lambda t, s: build_coco(GOOD_ANNOTATIONS)(t, s)[:-1] + [write(t / "f", "x")],
        USAGE,
        "is a file",
    ),
    "verify_no_set": (lambda t, s: ["shards", "verify", t], CAPGEN_ERROR, "manifest.json: not found"),
    "verify_manifest_not_json": (
        broken_set(lambda f: write(f / "manifest.json", "{")),
        CAPGEN_ERROR,
        "manifest.json: not readable JSON",
    ),
    "verify_manifest_of_another_format": (
        broken_set(manifest_with(format="other")),
        CAPGEN_ERROR,
        "not a capgen-shards/1 manifest",
    ),
    "verify_shards_not_a_list": (
        broken_set(manifest_with(shards={"a": 1})),
        CAPGEN_ERROR,
        "not a capgen-shards/1 manifest",
    ),
    "verify_shard_entry_garbage": (
        broken_set(manifest_with(shards=[{"name": "x.tar", "samples": "3"}])),
        CAPGEN_ERROR,
        "manifest.json: shards[0] is not a shard entry",
    ),
    "verify_shard_entry_outside": (
        broken_set(manifest_with(shards=[{"name": "../x.tar", "samples": 1, "bytes": 1, "sha256": ""}])),
        CAPGEN_ERROR,
        "manifest.json: shards[0] is not a shard entry",
    ),
    "verify_counts_not_an_object": (
        broken_set(manifest_with(counts=[])),
        CAPGEN_ERROR,
        "shards hold 12 samples, counts.images says None",
    ),
    "verify_tokens_missing": (
        broken_set(lambda f: (f / "tokens.npz").unlink()),
        CAPGEN_ERROR,
        "tokens.npz: token table not found",
    ),
    "verify_tokens_garbage": (
        broken_set(lambda f: write(f / "tokens.npz", "not a zip")),
        CAPGEN_ERROR,
        "tokens.npz: not a capgen token table",
    ),
    "verify_vocab_a_list": (
        broken_set(lambda f: write(f / "vocab.json", [])),
        CAPGEN_ERROR,
        "vocab.json: not a capgen vocabulary",
    ),
    "verify_vocab_without_specials": (
        broken_set(
            lambda f: write(
                f / "vocab.json", {"itos": ["a", "b", "c", "d"], "preset": "coco", "max_len": 20, "min_freq": 1}
            )
        ),
        CAPGEN_ERROR,
        "vocab.json: not a capgen vocabulary (vocabulary must start with <pad> <start> <end> <unk>)",
    ),
    "merge_no_jobs": (lambda t, s: ["shards", "merge", t], CAPGEN_ERROR, "no job manifests in .parts/"),
    "merge_job_manifest_garbage": (
        lambda t, s: ["shards", "merge", write(t / "j" / ".parts" / "job-0000-of-0001.json", "[").parent.parent],
        CAPGEN_ERROR,
        "job-0000-of-0001.json: not a readable job manifest",
    ),
    "merge_two_folders_without_out": (
        lambda t, s: ["shards", "merge", t / "a", t / "b"],
        CAPGEN_ERROR,
        "merging several folders needs --out",
    ),
    "vocab_no_set": (lambda t, s: ["vocab", t], CAPGEN_ERROR, "manifest.json: not found"),
    "vocab_min_freq_0": (lambda t, s: ["vocab", s, "--min-freq", "0"], USAGE, "Invalid value for '--min-freq'"),
    "vocab_bad_vocabulary": (
        lambda t, s: ["vocab", s, "--vocab", write(t / "v.json", "[]")],
        CAPGEN_ERROR,
        "v.json: not a capgen vocabulary",
    ),
    "score_no_results": (
        lambda t, s: ["score", t / "r.json", "--annotations", t / "a.json"],
        CAPGEN_ERROR,
        "r.json: file not found",
    ),
    "score_results_not_json": (score("[", GOOD_ANNOTATIONS), CAPGEN_ERROR, "results.json: not JSON"),
    "score_results_an_object": (
        score({"image_id": 1}, GOOD_ANNOTATIONS),
        CAPGEN_ERROR,
        "results.json: not a COCO results file",
    ),
    "score_result_id_a_list": (
        score([{"image_id": [1], "caption": "x"}], GOOD_ANNOTATIONS),
        CAPGEN_ERROR,
        "results.json: not a COCO results file",
    ),
    "score_no_result": (score([], GOOD_ANNOTATIONS), CAPGEN_ERROR, "results.json: no results"),
    "score_annotation_without_image_id": (
        score(RESULTS, {"annotations": [{"caption": "a dog"}]}),
        CAPGEN_ERROR,
        "captions.json: annotations[0] is not an object with an integer image_id",
    ),
    "score_annotation_null_caption": (
        score(RESULTS, {"annotations": [{"image_id": 1, "caption": None}]}),
        CAPGEN_ERROR,
        "captions.json: annotations[0] is not an object",
    ),
    "score_annotations_not_a_list": (
        score(RESULTS, {"annotations": {}}),
        CAPGEN_ERROR,
        "captions.json: not a COCO captions annotation file",
    ),
    "score_image_not_annotated": (
        score([{"image_id": 2, "caption": "x"}], GOOD_ANNOTATIONS),
        CAPGEN_ERROR,
        "image id 2 of",
    ),
    "serve_port_70000": (
        lambda t, s: ["serve", "--checkpoint", t, "--port", "70000"],
        USAGE,
        "Invalid value for '--port'",
    ),
    "serve_max_upload_0": (
        lambda t, s: ["serve", "--checkpoint", t, "--max-upload-mb", "0"],
        USAGE,
        "Invalid value for '--max-upload-mb'",
    ),
    "serve_max_upload_negative": (
        lambda t, s: ["serve", "--checkpoint", t, "--max-upload-mb", "-1"],
        USAGE,
        "Invalid value for '--max-upload-mb'",
    ),
    "serve_max_upload_nan": (
        lambda t, s: ["serve", "--checkpoint", t, "--max-upload-mb", "nan"],
        USAGE,
        "nan is not a number",
    ),
    "serve_max_upload_inf": (
        lambda t, s: ["serve", "--checkpoint", t, "--max-upload-mb", "inf"],
        USAGE,
        "Invalid value for '--max-upload-mb'",
    ),
    "serve_max_pixels_0": (
        lambda t, s: ["serve", "--checkpoint", t, "--max-pixels", "0"],
        USAGE,
        "Invalid value for '--max-pixels'",
    ),
    "serve_beam_0": (lambda t, s: ["serve", "--checkpoint", t, "--beam", "0"], USAGE, "Invalid value for '--beam'"),
    "serve_no_checkpoint": (
        lambda t, s: ["serve", "--checkpoint", t / "none", "--port", "0"],
        CAPGEN_ERROR,
        "none: checkpoint folder not found",
    ),
    "serve_empty_host": (lambda t, s: ["serve", "--checkpoint", t, "--host", ""], CAPGEN_ERROR, "--host: empty"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(name, tmp_path, shard_set, capsys, monkeypatch):
    make_args, status, words = CASES[name]
    got, out, err = capgen(make_args(tmp_path, shard_set), capsys, monkeypatch)
    assert got == status, err
    assert "Traceback" not in err and words in err, err
    if status == CAPGEN_ERROR:  # warnings may come first (an evaluation split building its own vocabulary)
        lines = [line for line in err.splitlines() if not line.startswith("capgen: warning: ")]
        assert len(lines) == 1 and lines[0].startswith("capgen: error: ")
    else:
        assert err.strip().splitlines()[-1].startswith("Error: ")


def test_serve_on_a_port_in_use_is_one_line(tmp_path, capsys, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        got, _, err = capgen(["serve", "--checkpoint", tmp_path, "--port", port], capsys, monkeypatch)
    assert (got, err) == (CAPGEN_ERROR, f"capgen: error: 127.0.0.1:{port}: cannot listen (port in use)\n")
