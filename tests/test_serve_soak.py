"""`capgen bench serve --soak` on the tiny checkpoint: 2000 uploads from 16 clients over loopback,
good images mixed with every kind of bad upload and oversized ones (tools/serve/soak.py)."""

import json

from cli_in_process import capgen
from serve_checkpoint import make_checkpoint

from tools.serve.soak import EXPECTED, MAX_RSS_GROWTH_PCT

REASONS = {
    "decompression_bomb": "image too large: 7500x7500 = 56250000 pixels; the limit is 50000000",
    "empty": "empty upload",
    "huge_dimensions": "image too large: over 178956970 pixels; the limit is 50000000",
    "not_image": "not an image (expected JPEG, PNG, WebP, GIF, BMP or TIFF)",
    "not_multipart": "expected a multipart/form-data upload with the image in field 'image'",
    "oversized": "upload larger than the limit of 262144 bytes",
    "truncated_jpeg": "corrupt JPEG image: image file is truncated (23 bytes not processed)",
    "wrong_field": "no file in form field 'image'",
    "zero_pixels": "corrupt image: the header cannot be read",
}


def test_soak_good_images_all_answered_refusals_4xx_json_memory_flat(tmp_path, capsys, monkeypatch):
    checkpoint = make_checkpoint(tmp_path / "run")
    args = ["bench", "serve", "--soak", "--checkpoint", checkpoint, "--requests", 2000, "--clients", 16]
    status, out, err = capgen([*args, "--threads", 1, "--json"], capsys, monkeypatch)
    assert (status, err) == (0, "") and "Traceback" not in out
    r = json.loads(out.strip().splitlines()[-1])
    assert (r["requests"], r["clients"], r["warmup"]) == (2000, 16, 500)
    assert set(r["kinds"]) == set(EXPECTED) and sum(r["kinds"].values()) == 2000
    assert (r["good_errors"], r["refusal_errors"], r["errors"]) == (0, 0, [])
    # Every answer its kind's status; every refusal the one JSON line of its kind, every time.
    statuses = {}
    for kind, n in r["kinds"].items():
        statuses[str(EXPECTED[kind])] = statuses.get(str(EXPECTED[kind]), 0) + n
    assert r["statuses"] == dict(sorted(statuses.items()))
    assert r["reasons"] == {kind: {line: r["kinds"][kind]} for kind, line in REASONS.items()}
    assert 0 < r["rss_warm_mb"] and r["rss_growth_pct"] <= MAX_RSS_GROWTH_PCT
    assert r["rss_growth_pct"] == round((r["rss_end_mb"] - r["rss_warm_mb"]) / r["rss_warm_mb"] * 100, 2)
    assert 0 < r["p50_ms"] <= r["p95_ms"]
    assert "errors: 0 on good images, 0 refusals not their 4xx JSON\n" in out


def test_soak_refuses_url_and_quick(tmp_path, capsys, monkeypatch):
    args = ["bench", "serve", "--soak", "--checkpoint", tmp_path, "--url", "http://127.0.0.1:1"]
    status, out, err = capgen(args, capsys, monkeypatch)
    assert status == 2 and "Error: --soak starts its own server (it reads its memory): no --url or --quick." in err
