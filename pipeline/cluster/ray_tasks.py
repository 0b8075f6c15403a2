"""Tasks on a Ray cluster: one Ray task per item, any function, the results back on the driver.

`capgen shards build --ray` runs one task per shard here (pipeline/shards/build.py passes its
one-shard function and tasks; this module knows nothing of shards, so any source the build
reads runs the same way). A task lost with its worker or node is run again by Ray (max_retries);
an error the function raises is not retried and comes back as one CapgenError line.
Ray is imported on first use: a plain install runs without it.

local_cluster() starts a one-machine cluster bound to 127.0.0.1 (tests, `capgen bench shards
--ray`), and stops it by its own process group, never another cluster of the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from pipeline.errors import CapgenError, first_line

DEFAULT_ADDRESS = "auto"  # the cluster `ray start --head` runs on this machine
MAX_RETRIES = 3  # a task whose worker or node dies is run again up to this many times
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # with --node-ip-address 127.0.0.1: every listener on it
NEEDS_RAY = "--ray needs Ray: pip install 'capgen[ray]' (or pip install ray)"


def require_ray():
    """The ray module, or CapgenError naming what to install."""
    try:
        import ray
    except ImportError:
        raise CapgenError(NEEDS_RAY) from None
    return ray


@contextmanager
def connected(address: str = DEFAULT_ADDRESS) -> Iterator[object]:
    """Connect this process to the Ray cluster at address ("auto", "host:port" or
    "ray://host:port") for the block; yields the ray module. A process already connected
    (ray.init by the caller) stays connected, to its own cluster."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    _probe(address)
    try:
        ray.init(address=address, logging_level="ERROR", configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, OSError) as err:
        raise CapgenError(f"--ray {address}: cannot connect to a Ray cluster ({first_line(err)})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(address, timeout=5.0):
    """A host:port (or ray://host:port) where nothing listens: one line now, not Ray's minutes of retries."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": Ray finds the cluster (or says at once that there is none)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise CapgenError(f"--ray {address}: no Ray cluster listens there ({err.strerror or err})") from None


def _call(fn, item):
    return fn(item)


def run_tasks(
    fn: Callable,
    items: Sequence,
    address: str = DEFAULT_ADDRESS,
    done: Callable | None = None,
    label: Callable = str,
    max_retries: int = MAX_RETRIES,
) -> list:
    """[fn(item) for item in items], each call a Ray task (1 CPU) on the cluster at address;
    done(item, result) on the driver as each one finishes. fn must be importable by name on
    every node (a module's function; capgen installed there). CapgenError when fn raises
    (its line, else label(item) and the error) or when a task's worker died max_retries + 1
    times; tasks still running are cancelled."""
    with connected(address) as ray:
        remote = ray.remote(max_retries=max_retries, num_cpus=1)(_call)
        refs = {remote.remote(fn, item): i for i, item in enumerate(items)}
        results, pending = [None] * len(items), list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.25)
                for ref in ready:
                    i = refs[ref]
                    results[i] = _result(ray, ref, label(items[i]), max_retries)
                    if done is not None:
                        done(items[i], results[i])
        except BaseException:  # an error, Ctrl-C: stop the rest now
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    return results


def _result(ray, ref, where, max_retries):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # fn raised: not retried
        cause = err.cause
        if isinstance(cause, CapgenError):
            raise CapgenError(first_line(cause)) from None
        raise CapgenError(f"{where}: {type(cause).__name__}: {first_line(cause)}") from None
    except ray.exceptions.RayError as err:  # the worker or node died, every try
        raise CapgenError(
            f"{where}: a Ray worker died {max_retries + 1} times ({type(err).__name__}); "
            "the same command resumes the build"
        ) from None


# ---------------------------------------------------------------- a cluster on this machine


def _ray_cli(args, env, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", "from ray.scripts.scripts import main; main()", *args], env=env, **kw
    )


@contextmanager
def local_cluster(num_cpus: int, port: int, client_port: int, timeout: float = 120) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with num_cpus CPUs, listening on port (and client_port for
    ray://), its workers importing this capgen; yields its address "127.0.0.1:PORT".
    Drivers connecting to it should run with LOOPBACK_ENV too. On exit its processes are
    stopped by process group and its temp folder removed."""
    require_ray()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, **LOOPBACK_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    temp = tempfile.mkdtemp(prefix="capgen-ray-")  # short: Ray's socket paths must fit 107 bytes
    args = ["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(num_cpus)]
    args += ["--ray-client-server-port", str(client_port), "--include-dashboard", "false", "--disable-usage-stats"]
    args += ["--object-store-memory", str(100 << 20), "--temp-dir", temp]
    log = os.path.join(temp, "ray-start.log")  # a file, not a pipe: the cluster's processes keep it open
    with open(log, "w") as f:
        head = _ray_cli(args, env, start_new_session=True, stdout=f, stderr=subprocess.STDOUT)
    try:
        if head.wait(timeout=timeout):
            with open(log) as f:
                last = (f.read().strip().splitlines() or ["no output"])[-1]
            raise CapgenError(f"ray start: exit status {head.returncode} ({last[:200]})")
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(head)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_group(head, grace=3.0):
    """SIGTERM to the cluster's process group (ray start's session), then SIGKILL to what is left."""
    if head.poll() is None:
        head.kill()
        head.wait()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(head.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
