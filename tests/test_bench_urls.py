"""`capgen bench shards --urls`: capgen's URL-list build head to head with img2dataset, over the
loopback image server; without img2dataset the bench says so in one line and capgen's figures
still print."""

import json
import os
import subprocess
import sys

import pytest

from tools.bench.urls import find_img2dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPGEN = [sys.executable, "-c", "import sys; sys.argv[0] = 'capgen'; from tools.cli.main import main; main()"]


def bench(*args):
    """(stdout lines, the --json object) of `capgen bench shards --urls --quick --json ARGS`."""
    run = subprocess.run(
        CAPGEN + ["bench", "shards", "--urls", "--quick", "--latency", "0.05", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT, OMP_WAIT_POLICY="PASSIVE"),
    )
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_without_img2dataset_capgen_alone(tmp_path):
    missing = str(tmp_path / "no-such-venv" / "img2dataset")
    lines, r = bench("--img2dataset", missing)
    assert f"img2dataset not found ({missing} is not an executable): capgen alone" in lines
    assert r["images"] == 40 and r["img2dataset_version"] is None and r["latency_s"] == 0.05
    for key in ("instant", "latency"):
        s = r[key]
        assert set(s) == {"capgen", "capgen_cpu", "capgen_own", "capgen_images", "ratio", "ratio_cpu", "ratio_own"}
        assert s["capgen_images"] == 40 and s["capgen"] > 0 and s["capgen_cpu"] > 0 and s["capgen_own"] > 0
        assert s["ratio"] is None and s["ratio_cpu"] is None and s["ratio_own"] is None


def test_head_to_head_with_img2dataset():
    tool = find_img2dataset()
    if tool["path"] is None:
        pytest.skip(tool["note"] + " (make i2d-venv installs it)")
    lines, r = bench()
    assert f"img2dataset {tool['version']} ({tool['path']})" in lines
    assert r["img2dataset_version"] == tool["version"]
    for key in ("instant", "latency"):
        s = r[key]
        assert s["capgen_images"] == s["img2dataset_images"] == 40
        for suffix in ("", "_cpu", "_own"):
            assert s["capgen" + suffix] > 0 and s["img2dataset" + suffix] > 0
        assert s["ratio"] == s["capgen"] / s["img2dataset"]
        assert s["ratio_cpu"] == s["capgen_cpu"] / s["img2dataset_cpu"]
        assert s["ratio_own"] == s["capgen_own"] / s["img2dataset_own"]


def test_urls_takes_no_workers():
    run = subprocess.run(
        CAPGEN + ["bench", "shards", "--urls", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "Error: --urls builds on one core per tool: --workers and --resize do not apply"
    )
