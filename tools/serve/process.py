"""`capgen serve` in a child process on a free loopback port, for the tests and `capgen bench serve`."""

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from pipeline.errors import CapgenError


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def capgen_command():
    """argv prefix that runs the capgen CLI with this interpreter."""
    script = os.path.join(os.path.dirname(sys.executable), "capgen")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'capgen'; from tools.cli.main import main; main()"]


def _wait_healthy(proc, url, log_file, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log_file.seek(0)
            tail = log_file.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"capgen serve exited with code {proc.returncode}: " + " | ".join(tail))
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"capgen serve did not answer /healthz within {timeout}s")
        time.sleep(0.1)


@contextlib.contextmanager
def running_server(checkpoint, args=(), timeout=120, log_path=None):
    """Start `capgen serve` on a free loopback port; yield its base URL once /healthz answers."""
    with server_process(checkpoint, args, timeout, log_path) as (url, _):
        yield url


def resident_mb(pid):
    """Resident memory (RSS) of a process on this machine, in MiB (Linux's /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        raise CapgenError(f"process {pid}: cannot read its resident memory from /proc") from None
    return kb / 1024


@contextlib.contextmanager
def server_process(checkpoint, args=(), timeout=120, log_path=None):
    """running_server's server: yield (base URL, its subprocess.Popen) once /healthz answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = capgen_command() + ["serve", "--checkpoint", str(checkpoint), "--port", str(port), *args]
    log_file = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(proc, url, log_file, timeout)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
