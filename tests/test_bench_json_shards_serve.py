"""`capgen bench shards --json` and `capgen bench serve --json`: the last stdout line is one JSON object."""

import json
import os
import subprocess
import sys

from serve_checkpoint import make_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPGEN = [sys.executable, "-c", "import sys; sys.argv[0] = 'capgen'; from tools.cli.main import main; main()"]


def last_json(args):
    run = subprocess.run(
        CAPGEN + args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT, OMP_WAIT_POLICY="PASSIVE"),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_bench_shards_json():
    r = last_json(["bench", "shards", "--quick", "--workers", "1", "--workers", "2", "--json"])
    assert set(r) >= {"naive", "build", "ratio_per_core"} and set(r["build"]) == {"1", "2"}
    assert r["naive"] > 0 and all(v > 0 for v in r["build"].values())
    assert r["ratio_per_core"] == r["build"]["2"] / 2 / r["naive"]


def test_bench_serve_json(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run")
    r = last_json(["bench", "serve", "--checkpoint", str(ckpt), "--quick", "--threads", "1", "--json"])
    assert set(r) == {"baseline_rps", "rps", "ratio", "p50_ms", "p95_ms", "errors"}
    assert r["errors"] == 0 and r["rps"] > 0 and r["ratio"] == r["rps"] / r["baseline_rps"]
    assert 0 < r["p50_ms"] <= r["p95_ms"]
