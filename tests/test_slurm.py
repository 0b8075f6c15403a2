"""Slurm arrays: job index and count from the environment, and tools/slurm_shards.sbatch end to end."""

import os
import subprocess
import sys

import pytest
from test_caption_table import write_images

from pipeline.cluster.jobs import array_job
from pipeline.errors import CapgenError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "slurm_shards.sbatch")


def test_array_job_from_the_environment():
    assert array_job(None, None, {}) == (1, 0)
    assert array_job(3, 2, {}) == (3, 2)
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert array_job(None, None, env) == (4, 1)
    assert array_job(6, None, env) == (6, 1) and array_job(None, 3, env) == (4, 3)
    assert array_job(
        None, None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "5"}
    ) == (3, 2)
    assert array_job(
        None,
        None,
        {
            "SLURM_ARRAY_TASK_ID": "14",
            "SLURM_ARRAY_TASK_COUNT": "3",
            "SLURM_ARRAY_TASK_MIN": "10",
            "SLURM_ARRAY_TASK_STEP": "2",
        },
    ) == (3, 2)
    with pytest.raises(CapgenError, match="SLURM_ARRAY_TASK_COUNT is not: pass --num-jobs"):
        array_job(None, None, {"SLURM_ARRAY_TASK_ID": "0"})
    with pytest.raises(CapgenError, match="SLURM_ARRAY_TASK_ID='x': not an integer"):
        array_job(None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"})
    with pytest.raises(CapgenError, match=r"SLURM_ARRAY_TASK_ID=9: not task 0..1 of an evenly spaced array"):
        array_job(None, None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "2"})


def _tree(folder):
    """name -> bytes of a shard set's files (not its .parts/ bookkeeping or lock)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_sbatch_array_build_and_merge_equal_the_single_build(tmp_path):
    images = tmp_path / "images"
    names = [f"im{i}.jpg" for i in range(7)]
    write_images(images, names[:6])  # im6.jpg is missing: skipped and counted in both builds
    captions = tmp_path / "captions.csv"
    captions.write_text(
        "file_name,caption\n" + "".join(f"{n},a picture number {i}\n{n},picture {i}\n" for i, n in enumerate(names))
    )
    shim = tmp_path / "bin" / "capgen"  # `capgen` as installed, running this checkout
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "from tools.cli.main import main; main()" "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{shim.parent}{os.pathsep}{env['PATH']}", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    build = ["--captions", str(captions), "--images", str(images), "--shard-size", "2", "--min-freq", "1"]

    def run(cmd, extra=None):
        p = subprocess.run(cmd, cwd=tmp_path, env={**env, **(extra or {})}, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr
        return p.stdout

    single = tmp_path / "single"
    run(["capgen", "shards", "build", "--out", str(single), "--workers", "1", "--quiet"] + build)
    out = tmp_path / "shards" / "set"
    for task in (3, 4):  # sbatch --array=3-4: two tasks, the first numbered 3
        slurm = {
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_TASK_COUNT": "2",
            "SLURM_ARRAY_TASK_MIN": "3",
            "SLURM_CPUS_PER_TASK": "1",
        }
        stdout = run(["bash", SCRIPT, str(out)] + build, slurm)
        assert f"job {task - 3} of 2: " in stdout
    assert sorted(p.name for p in (tmp_path / "shards" / "set-jobs").iterdir()) == ["3", "4"]
    assert not (out / "manifest.json").exists()
    assert "4 shards, 6 images, 12 captions; skipped: missing 1: verified" in run(["bash", SCRIPT, "--merge", str(out)])
    merged, alone = _tree(out), _tree(single)
    shard_files = [f"captions-train-{k:06d}.{ext}" for k in range(4) for ext in ("idx", "tar")]
    assert sorted(alone) == sorted(shard_files + ["manifest.json", "skipped.txt", "tokens.npz", "vocab.json"])
    assert merged == alone
