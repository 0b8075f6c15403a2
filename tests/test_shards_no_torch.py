"""`capgen shards build` never imports torch (its start-up is the build's to spend)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shard_build_imports_no_torch(tmp_path):
    root = tmp_path / "coco"
    subprocess.run(
        [sys.executable, "-m", "tools.cli", "synth", str(root), "--images", "12", "--seed", "1"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    code = (
        "import json, sys; from tools.cli.main import cli\n"
        f"cli.main(['shards', 'build', '--coco-root', {str(root)!r}, '--split', 'train2014', '--out', "
        f"{str(tmp_path / 'out')!r}, '--workers', '2', '--shard-size', '4', '--min-freq', '1', '--quiet'], "
        "standalone_mode=False)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT)
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "images" in run.stdout and json.loads(run.stdout.strip().splitlines()[-1]) == []
