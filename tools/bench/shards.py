"""`capgen bench shards`: the shard builder against a naive PIL loop, same images, same run.

The images are COCO-like: 640x480 crops of the photographs that ship inside
scikit-image's wheel, re-encoded as JPEG quality 90. The baseline is the loop
everyone writes first: PIL open, convert("RGB"), bicubic resize to 256x256,
JPEG encode, one process. The builder is timed as whole `capgen shards build`
runs in a child process (start-up, annotation hash, decode, resize, encode,
tar, fsync, sha256, vocabulary) with 1 worker and with every core; the figures
are the best of a few interleaved rounds. --resize adds the per-image resize
table (tools/bench/resize.py).
"""

import contextlib
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import torch
from PIL import Image

from pipeline.cluster.ray_tasks import LOOPBACK_ENV
from pipeline.download.options import DownloadOptions
from pipeline.imaging import convert as imaging
from pipeline.imaging import decode as imaging_decode
from pipeline.shards.build import available_cores
from tools.bench.timing import best_of
from tools.loopback_images import LoopbackImages, write_url_list
from tools.serve.process import capgen_command, free_port

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
    "stereo_motorcycle",
)


def photos():
    """The colour photographs bundled with scikit-image (no downloads)."""
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            a = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 -- a photo missing from this wheel is skipped
            continue
        a = a[0] if isinstance(a, tuple) else a
        if a.ndim == 3 and a.shape[2] >= 3:
            out.append(Image.fromarray(np.ascontiguousarray(a[..., :3]).astype(np.uint8)))
    if len(out) < 3:
        raise RuntimeError("scikit-image ships fewer than 3 colour photographs here")
    return out


def make_dataset(root, n, seed=0, width=640, height=480):
    """root/train2014/*.jpg and root/annotations/captions_train2014.json, n images."""
    rng = np.random.default_rng(seed)
    sources = photos()
    os.makedirs(os.path.join(root, "train2014"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations, paths = [], [], []
    for i in range(n):
        im = sources[i % len(sources)]
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(im.width * s), int(im.height * s)
        x, y = int(rng.integers(0, im.width - cw + 1)), int(rng.integers(0, im.height - ch + 1))
        view = im.crop((x, y, x + cw, y + ch)).resize((width, height), Image.BICUBIC)
        if rng.random() < 0.5:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        image_id = i + 1
        name = f"COCO_train2014_{image_id:012d}.jpg"
        path = os.path.join(root, "train2014", name)
        view.save(path, "JPEG", quality=90)
        paths.append(path)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for k in range(5):
            annotations.append(
                {"id": 5 * i + k + 1, "image_id": image_id, "caption": f"a photograph number {i} seen in view {k}"}
            )
    with open(os.path.join(root, "annotations", "captions_train2014.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    return paths


def naive(paths, size=256, quality=90):
    """The baseline loop."""
    for path in paths:
        im = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)


def convert_only(paths, size=256):
    """pipeline.imaging_decode.decode alone, in process (no tar, no pool)."""
    for path in paths:
        imaging.convert(imaging_decode.read(path), size)


def build_cli(root, out, workers, shard_size, ray=None, source=None):
    """One whole `capgen shards build` run of root's train2014 (or of `source`, other source
    options) into out (a new folder): with `workers` processes, or on the Ray cluster at `ray`."""
    cmd = capgen_command() + [
        "shards",
        "build",
        *(source or ["--coco-root", root, "--split", "train2014"]),
        "--out",
        out,
        "--name",
        "bench",
        "--shard-size",
        str(shard_size),
        *(["--ray", ray] if ray else ["--workers", str(workers)]),
        "--min-freq",
        "1",
        "--quiet",
    ]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **(LOOPBACK_ENV if ray else {}))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)


def bench_shards(images=None, rounds=3, workers=None, tmp=None, resize=False):
    """Default: 200 images, or 50 per worker on bigger machines; two shards per worker."""
    cores = available_cores()
    counts = sorted(set(workers or [1, cores]))
    images = images or max(200, 50 * max(counts))
    root = tempfile.mkdtemp(prefix="capgen-bench-shards-", dir=tmp)
    try:
        paths = make_dataset(os.path.join(root, "coco"), images)
        shard_size = max(1, images // (2 * max(counts)))
        for p in paths:  # page cache warm for everyone
            with open(p, "rb") as f:
                f.read()
        coco, builds = os.path.join(root, "coco"), itertools.count()

        def build_with(w):  # a new folder per build: no deletion on the clock
            return lambda: build_cli(coco, os.path.join(root, f"out-{next(builds)}"), w, shard_size)

        fns = {
            "naive": lambda: naive(paths),
            "convert": lambda: convert_only(paths),
            **{w: build_with(w) for w in counts},
        }
        best = dict(zip(fns, best_of(list(fns.values()), rounds, 0, torch.device("cpu"))))
        table = None
        if resize:
            from tools.bench.resize import bench_resize

            jpegs = []
            for p in paths[:64]:
                with open(p, "rb") as f:
                    jpegs.append(f.read())
            table = bench_resize(jpegs, rounds=rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rate = {k: images / v for k, v in best.items()}
    return {
        "images": images,
        "rounds": rounds,
        "cores": cores,
        "shard_size": shard_size,
        "naive_images_per_s": rate["naive"],
        "convert_images_per_s": rate["convert"],
        "build": [
            {
                "workers": w,
                "images_per_s": rate[w],
                "vs_naive": rate[w] / rate["naive"],
                "per_worker_vs_naive": rate[w] / w / rate["naive"],
                "scaling": rate[w] / rate[counts[0]] * counts[0] / w,
            }
            for w in counts
        ],
        "resize": table,
        "resize_images": min(64, images) if resize else None,
    }


def bench_ray(images=None, rounds=3, workers=None, tmp=None, latency=None, concurrency=None):
    """`capgen shards build --ray` on local Ray clusters (127.0.0.1) of 1 and 2 CPUs (or each
    of `workers`), and the same builds with --workers (local processes) as the machine's own
    scaling, in interleaved rounds; the same photographic JPEGs (default 800), four shards per
    worker. Each timed run is a whole CLI build: start-up, connecting, Ray's worker processes.
    latency: build a URL list of the images instead, served by the loopback image server
    (tools/loopback_images.py) with this many seconds per image, `concurrency` downloads in
    flight per worker (default DownloadOptions')."""
    from pipeline.cluster.ray_tasks import local_cluster, require_ray

    ray = require_ray()
    counts = sorted(set(workers or [1, 2]))
    images = images or 800
    root = tempfile.mkdtemp(prefix="capgen-bench-ray-", dir=tmp)
    try:
        coco, builds = os.path.join(root, "coco"), itertools.count()
        paths = make_dataset(coco, images)
        shard_size = max(1, images // (4 * max(counts)))
        source = None

        def build_with(w, address):  # a new folder per build: no deletion on the clock
            return lambda: build_cli(coco, os.path.join(root, f"out-{next(builds)}"), w, shard_size, address, source)

        with contextlib.ExitStack() as stack:
            if latency is not None:
                source = _served_list(stack, root, paths, latency, concurrency or DownloadOptions.concurrency)
            clusters = [stack.enter_context(local_cluster(w, free_port(), free_port())) for w in counts]
            fns = [build_with(w, a) for w, a in zip(counts, clusters)] + [build_with(w, None) for w in counts]
            best = best_of(fns, rounds, 0, torch.device("cpu"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rate = [images / b for b in best]
    ray_rate, local_rate = rate[: len(counts)], rate[len(counts) :]
    return {
        "images": images,
        "rounds": rounds,
        "cores": available_cores(),
        "source": "local files"
        if latency is None
        else f"a URL list, {latency:g} s per image, {concurrency or DownloadOptions.concurrency} in flight per worker",
        "shard_size": shard_size,
        "ray_version": ray.__version__,
        "ray": [{"workers": w, "images_per_s": r, "speedup": r / ray_rate[0]} for w, r in zip(counts, ray_rate)],
        "local": [{"workers": w, "images_per_s": r, "speedup": r / local_rate[0]} for w, r in zip(counts, local_rate)],
    }


def _served_list(stack, root, paths, latency, concurrency):
    """Source options of a URL list of `paths`, served on loopback (until stack closes) with
    `latency` seconds per image, `concurrency` downloads in flight per worker; one host stands
    for many, so the per-host cap is lifted to it."""
    server = stack.enter_context(LoopbackImages(os.path.dirname(paths[0]), latency=latency, lifetime=3600))
    url_list = os.path.join(root, "urls.csv")
    write_url_list(url_list, server, [os.path.basename(p) for p in paths])
    return ["--urls", url_list, "--concurrency", str(concurrency), "--per-host", str(concurrency)]


def format_ray(r):
    lines = [
        f"{r['images']} photographic 640x480 JPEGs (q90) -> 256x256, {r['source']}, Ray {r['ray_version']} on "
        f"127.0.0.1, {r['cores']} cores, best of {r['rounds']} rounds, shards of {r['shard_size']}"
    ]
    for how, flag in (("ray", "--ray,     "), ("local", "--workers, ")):
        first = r[how][0]["workers"]
        for b in r[how]:
            lines.append(
                f"capgen shards build {flag}{b['workers']:2d} worker(s) {b['images_per_s']:7.1f} images/s   "
                f"{b['speedup']:.2f}x {first} worker(s)"
            )
    return "\n".join(lines)


def summary(r):
    """The --json object: images/s of the naive loop and of each whole CLI build, and the
    largest worker count's images/s per worker over the naive loop's."""
    last = r["build"][-1]
    out = {
        "naive": r["naive_images_per_s"],
        "build": {str(b["workers"]): b["images_per_s"] for b in r["build"]},
        "ratio_per_core": last["per_worker_vs_naive"],
        "ratio": r["build"][0]["vs_naive"],
        "convert": r["convert_images_per_s"],
        "images": r["images"],
        "cores": r["cores"],
    }
    if r["resize"] is not None:
        out["resize"] = r["resize"]
    return out


def format_report(r):
    lines = [
        f"{r['images']} photographic 640x480 JPEGs (q90) -> 256x256, {r['cores']} cores, "
        f"best of {r['rounds']} rounds, shards of {r['shard_size']}",
        f"naive PIL loop (1 process)      {r['naive_images_per_s']:8.1f} images/s",
        f"pipeline.imaging (1 process)    {r['convert_images_per_s']:8.1f} images/s   "
        f"{r['convert_images_per_s'] / r['naive_images_per_s']:.2f}x naive",
    ]
    for b in r["build"]:
        lines.append(
            f"capgen shards build, {b['workers']:2d} worker(s) {b['images_per_s']:7.1f} images/s   "
            f"{b['vs_naive']:.2f}x naive, {b['per_worker_vs_naive']:.2f}x per worker, "
            f"scaling efficiency {b['scaling']:.0%}"
        )
    return "\n".join(lines)


def run(images=None, rounds=3, workers=None, resize=False, echo=print):
    r = bench_shards(images, rounds, workers, resize=resize)
    echo(format_report(r))
    if r["resize"] is not None:
        from tools.bench.resize import format_resize

        echo(format_resize(r["resize"], r["resize_images"]))
    return r
