"""`capgen bench shards --resize`: antialiased 640x480 -> 256x256 resizes, per image, one thread.

Each method goes from the JPEG bytes to uint8 [256, 256, 3] (decode included, so
that libvips' shrink-on-load competes fairly); "resize ms" is that minus
simplejpeg's full-size decode where the method decodes with simplejpeg.
Quality: PSNR against PIL's LANCZOS of the full-size decode, the same
reference for every method; PIL's bicubic is the bar (a method qualifies within
0.5 dB of it). Libraries that are not installed are reported as missing. The
methods are timed interleaved, round by round (tools/bench/timing.best_of), so
a machine that slows down mid-run slows them all alike.
"""

import functools
import os

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from tools.bench.timing import best_of

MARGIN_DB = 0.5


def _decode(data):
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def _pil(filter_, reducing_gap=None):
    def run(data, size):
        return np.asarray(Image.fromarray(_decode(data)).resize((size, size), filter_, reducing_gap=reducing_gap))

    return run


def _torch(data, size):
    x = torch.from_numpy(_decode(data)).permute(2, 0, 1).unsqueeze(0)
    y = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return np.dstack(y[0].numpy())


def _cv2_area(data, size):
    import cv2

    return cv2.resize(_decode(data), (size, size), interpolation=cv2.INTER_AREA)


def _vips_thumbnail(data, size):
    import pyvips

    im = pyvips.Image.thumbnail_buffer(data, size, height=size, size="force")
    return np.ndarray(buffer=im.write_to_memory(), dtype=np.uint8, shape=(im.height, im.width, im.bands))


def _vips_resize(data, size):
    import pyvips

    a = _decode(data)
    im = pyvips.Image.new_from_memory(a.data, a.shape[1], a.shape[0], 3, "uchar")
    im = im.resize(size / a.shape[1], vscale=size / a.shape[0], kernel="cubic")
    return np.ndarray(buffer=im.write_to_memory(), dtype=np.uint8, shape=(im.height, im.width, im.bands))


def _vips_reduce(data, size):
    import pyvips

    a = _decode(data)
    im = pyvips.Image.new_from_memory(a.data, a.shape[1], a.shape[0], 3, "uchar")
    im = im.reducev(a.shape[0] / size, kernel="cubic").reduceh(a.shape[1] / size, kernel="cubic")
    return np.ndarray(buffer=im.write_to_memory(), dtype=np.uint8, shape=(im.height, im.width, im.bands))


def _imaging(data, size):
    from pipeline.imaging import pixels

    return pixels.resize(_decode(data), size, size)


METHODS = {  # name -> (fn, decodes with simplejpeg, module it needs)
    "simplejpeg decode only": (lambda data, size: _decode(data), True, None),
    "PIL bicubic (the bar)": (_pil(Image.BICUBIC), True, None),
    "PIL reduce + bicubic (reducing_gap=2)": (_pil(Image.BICUBIC, 2.0), True, None),
    "PIL reduce + bicubic (reducing_gap=1)": (_pil(Image.BICUBIC, 1.0), True, None),
    "PIL bilinear": (_pil(Image.BILINEAR), True, None),
    "PIL box": (_pil(Image.BOX), True, None),
    "torch antialiased bicubic (before)": (_torch, True, "torch"),
    "OpenCV INTER_AREA": (_cv2_area, True, "cv2"),
    "libvips thumbnail (shrink-on-load)": (_vips_thumbnail, False, "pyvips"),
    "libvips resize (cubic)": (_vips_resize, True, "pyvips"),
    "libvips reducev + reduceh (cubic, before)": (_vips_reduce, True, "pyvips"),
    "pipeline.imaging.pixels.resize (PIL-exact C, now)": (_imaging, True, None),
}


def _available(module):
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _one_thread():
    os.environ.setdefault("VIPS_CONCURRENCY", "1")  # read when libvips starts
    for module, call in (
        ("torch", lambda m: m.set_num_threads(1)),
        ("cv2", lambda m: m.setNumThreads(1)),
        ("pyvips", lambda m: (m.concurrency_set(1), m.cache_set_max(0))),
    ):
        if _available(module):
            call(__import__(module))


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _each(fn, jpegs, size):
    for d in jpegs:
        fn(d, size)


def bench_resize(jpegs, size=256, rounds=3):
    """[{method, ms, resize_ms, psnr_db, qualifies}] over the JPEG bytes, fastest first."""
    _one_thread()
    refs = [np.asarray(Image.fromarray(_decode(d)).resize((size, size), Image.LANCZOS)) for d in jpegs]
    here = {name: m for name, m in METHODS.items() if _available(m[2])}
    for fn, _, _ in here.values():
        for d in jpegs[:3]:  # warm up (library start, kernels)
            fn(d, size)
    best = best_of(
        [functools.partial(_each, fn, jpegs, size) for fn, _, _ in here.values()], rounds, 0, torch.device("cpu")
    )
    rows = [{"method": name, "missing": module} for name, (_, _, module) in METHODS.items() if name not in here]
    for (name, (fn, decodes, _)), seconds in zip(here.items(), best):
        quality = None
        if name != "simplejpeg decode only":
            quality = float(np.mean([psnr(fn(d, size), r) for d, r in zip(jpegs, refs)]))
        rows.append({"method": name, "ms": seconds / len(jpegs) * 1000, "decodes": decodes, "psnr_db": quality})
    decode_ms = next(r["ms"] for r in rows if r["method"] == "simplejpeg decode only")
    bar = next(r["psnr_db"] for r in rows if r["method"].startswith("PIL bicubic"))
    for r in rows:
        if "ms" in r:
            r["resize_ms"] = r["ms"] - decode_ms if r.pop("decodes") else None
            r["qualifies"] = r["psnr_db"] is not None and r["psnr_db"] >= bar - MARGIN_DB
    return sorted(rows, key=lambda r: r.get("ms", float("inf")))


def format_resize(rows, n, size=256):
    lines = [
        f"resize {n} photographic 640x480 JPEGs -> {size}x{size}, one thread, per image; "
        f"PSNR vs PIL LANCZOS of the full decode",
        f"{'method':40s} {'total ms':>8s} {'resize ms':>9s} {'PSNR dB':>8s}  within {MARGIN_DB} dB of PIL bicubic",
    ]
    for r in rows:
        if "missing" in r:
            lines.append(f"{r['method']:40s} not installed ({r['missing']})")
            continue
        resize = f"{r['resize_ms']:9.3f}" if r["resize_ms"] is not None else f"{'(fused)':>9s}"
        quality = f"{r['psnr_db']:8.2f}" if r["psnr_db"] is not None else f"{'-':>8s}"
        ok = "" if r["psnr_db"] is None else ("yes" if r["qualifies"] else "no")
        lines.append(f"{r['method']:40s} {r['ms']:8.3f} {resize} {quality}  {ok}")
    return "\n".join(lines)
