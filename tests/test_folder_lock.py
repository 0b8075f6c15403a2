import os
import subprocess
import sys

import pytest

from pipeline.errors import CapgenError
from pipeline.folder_lock import folder_lock

HOLD = (
    "import sys, time; from pipeline.folder_lock import folder_lock\n"
    "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"
)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CapgenError, match=f"^{tmp_path}: in use by pid {holder.pid}$"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path):  # a killed holder's lock does not block
        assert open(tmp_path / ".lock").read() == f"{os.getpid()}\n"


def test_the_lock_is_released_when_the_block_ends(tmp_path):
    with folder_lock(tmp_path / "new"):
        pass
    with folder_lock(tmp_path / "new"):
        pass
