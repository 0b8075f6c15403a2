"""`capgen bench shards --urls`: capgen's URL-list build head to head with img2dataset.

The same photographic 640x480 JPEGs as `capgen bench shards` (tools/bench/shards.py) are
served by the loopback image server (tools/loopback_images.py) on 127.0.0.1, and one URL
list (CSV: url, caption) is built into WebDataset tars by `capgen shards build --urls` and
by img2dataset: 256x256 center crops at JPEG quality 90, on one core each. Each tool runs
as a child process pinned to one core with os.sched_setaffinity (its threads and processes
inherit it; capgen with --workers 1, img2dataset with processes_count 1), while the server
runs in this process on the other cores. Runs are whole CLI runs, start-up included,
interleaved (capgen, img2dataset, capgen, ...) and the median of each is reported; once
with instant answers and once with the server sleeping `latency` seconds per image.

img2dataset is found as: the path given (--img2dataset, or $CAPGEN_IMG2DATASET), else
.i2d-venv/bin/img2dataset in the project folder (`make i2d-venv` makes it), else on PATH.
It runs with its defaults except: webdataset output, no EXIF extraction and no per-image
hash (work capgen does not do), and as many threads as capgen has requests in flight.
Three figures per tool: images/s of whole runs (wall clock, start-up included), images per
CPU second of whole runs (rusage: what a shared machine's other work does not move), and
images/s by the tool's own clock, start-up excluded ("own": capgen's build summary line,
img2dataset's shards' durations); a ratio for each.
"""

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time

from pipeline.download.options import DownloadOptions
from pipeline.errors import CapgenError
from pipeline.shards.build import available_cores
from tools.bench.shards import make_dataset
from tools.loopback_images import LoopbackImages, write_url_list
from tools.serve.process import capgen_command

ENV_TOOL = "CAPGEN_IMG2DATASET"
LOCAL_VENV = ".i2d-venv"
SIZE, QUALITY = 256, 90
# Offline: albumentations (an img2dataset dependency) asks PyPI for updates unless told not to.
RATES = ("images_per_s", "images_per_cpu_s", "own_images_per_s")  # wall clock, CPU time, the tool's own clock
RATIOS = ("ratio", "ratio_cpu", "ratio_own")
OWN_CLOCK = re.compile(r"; ([0-9.]+) s \([0-9]+ images/s\)$", re.M)
QUIET_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "OMP_WAIT_POLICY": "PASSIVE"}


def find_img2dataset(path: str | None = None) -> dict:
    """Where img2dataset is and which version: {"path": str or None, "version": str or None,
    "note": one line}. path (or $CAPGEN_IMG2DATASET) wins; else the project's .i2d-venv; else PATH."""
    given = path or os.environ.get(ENV_TOOL)
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    local = os.path.join(project, LOCAL_VENV, "bin", "img2dataset")
    exe = given if given else (local if os.path.exists(local) else shutil.which("img2dataset"))
    if not exe or not os.access(exe, os.X_OK):
        where = f"{given} is not an executable" if given else f"not in {LOCAL_VENV}/ (make i2d-venv) nor on PATH"
        return {"path": None, "version": None, "note": f"img2dataset not found ({where}): capgen alone"}
    version = _version(exe)
    return {"path": exe, "version": version, "note": f"img2dataset {version} ({exe})"}


def _version(exe):
    """The version of the img2dataset package beside exe (its environment's python), else 'unknown'."""
    python = os.path.join(os.path.dirname(exe), "python")
    code = "import importlib.metadata as m; print(m.version('img2dataset'))"
    for interpreter in (python, shutil.which("python3")):
        if interpreter and os.path.exists(interpreter):
            r = subprocess.run([interpreter, "-c", code], capture_output=True, text=True, timeout=60)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.strip()
    return "unknown"


def pinned(core):
    """preexec_fn for a child: run on `core` only (threads and subprocesses inherit it)."""
    return lambda: os.sched_setaffinity(0, {core})


def loop_seconds(folder):
    """img2dataset's own time for its shards (sum of their stats' durations; one process)."""
    total = 0.0
    for name in os.listdir(folder):
        if name.endswith("_stats.json"):
            with open(os.path.join(folder, name)) as f:
                total += json.load(f)["duration"]
    return total


def tar_images(folder):
    """Images (.jpg members) in the tars directly under folder."""
    n = 0
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(folder, name)) as t:
                n += sum(1 for m in t if m.name.endswith(".jpg"))
    return n


def _cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd, core, env):
    """(wall seconds, CPU seconds) of one child run on `core`; CPU time counts what the run
    itself computed, whatever else the shared core ran meanwhile."""
    cpu, start = _cpu_children(), time.perf_counter()
    r = subprocess.run(cmd, preexec_fn=pinned(core), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or ["no output"]
        raise CapgenError(f"{cmd[0]} exited {r.returncode}: {tail[0]}")
    return seconds, _cpu_children() - cpu, r.stdout


def run_capgen(url_list, out, core, shard_size, concurrency):
    """One whole `capgen shards build --urls` run, 1 worker on `core`: (wall, CPU, own) seconds."""
    cmd = capgen_command() + ["shards", "build", "--urls", url_list, "--out", out, "--name", "bench"]
    cmd += ["--image-size", str(SIZE), "--resize-mode", "center-crop", "--quality", str(QUALITY)]
    cmd += ["--shard-size", str(shard_size), "--workers", "1", "--min-freq", "1", "--quiet"]
    # One loopback host stands for a list's thousands: the per-host cap is lifted to the concurrency.
    cmd += ["--concurrency", str(concurrency), "--per-host", str(concurrency)]
    wall, cpu, stdout = _timed(cmd, core, dict(os.environ, **QUIET_ENV))
    own = OWN_CLOCK.search(stdout)  # the summary line's "; 3.2 s (312 images/s)": build(), start-up excluded
    if own is None:
        raise CapgenError(f"capgen shards build printed no summary line: {stdout.strip()[-200:]}")
    return wall, cpu, float(own.group(1))


def run_img2dataset(exe, url_list, out, core, shard_size, threads):
    """One whole img2dataset run, processes_count 1 on `core`: (wall, CPU, own) seconds."""
    cmd = [exe, "--url_list", url_list, "--input_format", "csv", "--url_col", "url", "--caption_col", "caption"]
    cmd += ["--output_format", "webdataset", "--output_folder", out, "--image_size", str(SIZE)]
    cmd += ["--resize_mode", "center_crop", "--encode_quality", str(QUALITY), "--processes_count", "1"]
    cmd += ["--thread_count", str(threads), "--number_sample_per_shard", str(shard_size)]
    cmd += ["--extract_exif", "False", "--compute_hash", "None"]
    wall, cpu, _ = _timed(cmd, core, dict(os.environ, **QUIET_ENV))
    return wall, cpu, loop_seconds(out)


def head_to_head(images_dir, names, tool, latency, rounds, work, concurrency, threads):
    """Interleaved rounds of both tools on one URL list served with `latency`: per tool the
    median images/s (wall clock, per CPU second, own clock), the images its tars hold, each
    round's (wall, CPU, own) seconds."""
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1]  # the tools' core; the server keeps the others (all of them on a 1-core host)
    shard_size = max(1, len(names) // 2)
    runs = {"capgen": []}
    if tool["path"]:
        runs["img2dataset"] = []
    counts = {}
    mine = set(cores[:-1]) or set(cores)
    os.sched_setaffinity(0, mine)
    try:
        with LoopbackImages(images_dir, latency=latency, lifetime=3600) as server:
            url_list = os.path.join(work, f"urls-{latency}.csv")
            write_url_list(url_list, server, names)
            for k in range(rounds):
                for name in runs:
                    out = os.path.join(work, f"{name}-{latency}-{k}")
                    if name == "capgen":
                        runs[name].append(run_capgen(url_list, out, core, shard_size, concurrency))
                    else:
                        runs[name].append(run_img2dataset(tool["path"], url_list, out, core, shard_size, threads))
                    counts[name] = tar_images(out)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        os.sched_setaffinity(0, set(cores))
    out = {}
    for name, seconds in runs.items():
        n, medians = counts[name], [statistics.median(x) for x in zip(*seconds)]
        out[name] = {k: n / t for k, t in zip(RATES, medians)}
        out[name].update({"images": n, "seconds": seconds})
    if "img2dataset" in out:
        for rate, ratio in zip(RATES, RATIOS):
            out[ratio] = out["capgen"][rate] / out["img2dataset"][rate]
    return out


def bench_urls(images=600, rounds=3, latency=0.2, img2dataset=None, concurrency=None, tmp=None):
    """Both tools on the same URL list, instant and with `latency` seconds per image: {"images",
    "rounds", "latency_s", "img2dataset" (the locator's answer), "instant" and "latency": each
    {"capgen": {...}, "img2dataset": {...}, "ratio"}}; images/s are per core (one core each)."""
    tool = find_img2dataset(img2dataset)
    concurrency = concurrency or DownloadOptions.concurrency
    work = tempfile.mkdtemp(prefix="capgen-bench-urls-", dir=tmp)
    try:
        paths = make_dataset(os.path.join(work, "coco"), images)
        folder, names = os.path.dirname(paths[0]), [os.path.basename(p) for p in paths]
        settings = {}
        for key, delay in (("instant", 0.0), ("latency", latency)):
            settings[key] = head_to_head(folder, names, tool, delay, rounds, work, concurrency, concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "images": images,
        "rounds": rounds,
        "latency_s": latency,
        "host_cores": available_cores(),
        "capgen_concurrency": concurrency,
        "img2dataset": tool,
        **settings,
    }


def summary(r: dict) -> dict:
    """The --json object, per latency setting: each tool's images/s per core (wall clock), per
    CPU second (_cpu), by its own clock (_own) and images built (_images), and the ratios
    capgen / img2dataset of each (None without img2dataset)."""
    out = {"images": r["images"], "img2dataset_version": r["img2dataset"]["version"], "latency_s": r["latency_s"]}
    for key in ("instant", "latency"):
        s, out[key] = r[key], {}
        for name in ("capgen", "img2dataset"):
            if name in s:
                out[key].update({name + suffix: s[name][rate] for suffix, rate in zip(("", "_cpu", "_own"), RATES)})
                out[key][f"{name}_images"] = s[name]["images"]
        out[key].update({k: s.get(k) for k in RATIOS})
    return out


def format_report(r: dict) -> str:
    """The human table: per latency setting, each tool's images/s per core and the ratios."""
    lines = [
        f"{r['images']} photographic 640x480 JPEGs (q90) over loopback HTTP -> 256x256 center crop, q90, "
        f"1 core each, median of {r['rounds']} interleaved runs; images/s per core of whole runs (wall), "
        "per CPU second of whole runs (cpu), by the tool's own clock without start-up (own)",
        r["img2dataset"]["note"],
    ]
    for key, label in (("instant", "instant answers"), ("latency", f"{r['latency_s'] * 1000:.0f} ms per image")):
        s = r[key]
        for name in ("capgen", "img2dataset"):
            if name in s:
                wall, cpu, own = (s[name][k] for k in RATES)
                lines.append(f"{label:18s} {name:12s} wall {wall:7.1f}   cpu {cpu:7.1f}   own {own:7.1f}")
        if "img2dataset" in s:
            wall, cpu, own = (s[k] for k in RATIOS)
            lines.append(f"{label:18s} {'capgen / i2d':12s} wall {wall:6.2f}x   cpu {cpu:6.2f}x   own {own:6.2f}x")
    return "\n".join(lines)


def run(images=600, rounds=3, latency=0.2, img2dataset=None, echo=print) -> dict:
    """Measure, print the table, return the figures."""
    r = bench_urls(images, rounds, latency, img2dataset)
    echo(format_report(r))
    return r
