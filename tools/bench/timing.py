"""How the benchmarks time: device sync, best-of rounds, steady-state steps over endless
batch streams, and the GPU's busy % while they run."""

import shutil
import subprocess
import threading
import time

import numpy as np
import torch


def sync(device):
    """Wait for the work queued on the device, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device):
    """Seconds of one call of fn, the device's work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def best_of(fns, rounds, warmup, device):
    """Best seconds of one call of each fn over `rounds`, after `warmup` calls each (a number,
    or one per fn). Calls are interleaved (fn1, fn2, ..., fn1, ...) so a busy machine slows
    all of them alike."""
    warmup = [warmup] * len(fns) if isinstance(warmup, int) else warmup
    for fn, n in zip(fns, warmup):
        for _ in range(n):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], seconds(fn, device))
    return best


def endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def repeat(batch):
    """One batch forever: the step alone, without its loader."""
    while True:
        yield batch


def timed(step, batches, steps, warmup, device):
    """step(batch) -> images, over `steps` batches after `warmup`, the GPU's busy % sampled meanwhile:
    {images_per_s, seconds, images, gpu_busy, gpu_busy_source}."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    sync(device)
    images = 0
    with GpuBusy(device) as busy:
        start = time.perf_counter()
        for _ in range(steps):
            images += step(next(it))
        sync(device)
        elapsed = time.perf_counter() - start
    return {
        "images_per_s": images / elapsed,
        "seconds": elapsed,
        "images": images,
        "gpu_busy": busy.mean,
        "gpu_busy_source": busy.source,
    }


def loader_only(loader, batches, warmup, device):
    """timed() of the loader alone: its batches counted, nothing done with them."""
    return timed(lambda batch: len(batch["image_ids"]), endless(loader), batches, warmup, device)


class GpuBusy:
    """Context manager: mean NVML GPU utilisation (%) while inside, sampled every `period` s in a
    thread (pynvml, else `nvidia-smi -lms`); `.mean` is None without a GPU."""

    def __init__(self, device, period=0.1):
        self.device, self.period = device, period
        self.samples, self.source, self.mean = [], None, None
        self._stop = threading.Event()
        self._thread = self._proc = None

    def __enter__(self):
        if self.device.type != "cuda":
            return self
        read = self._nvml()
        if read is not None:
            self.source = "nvml"
            self._thread = threading.Thread(target=self._poll, args=(read,), daemon=True)
        elif shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--id={self._index()}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    f"-lms={int(self.period * 1000)}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read_lines, daemon=True)
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._proc is not None:
            self._proc.wait(timeout=2)
        if self.samples:
            self.mean = float(np.mean(self.samples))
        return False

    def _index(self):
        try:  # CUDA_VISIBLE_DEVICES-aware
            return torch.cuda._get_nvml_device_index(self.device)
        except Exception:  # noqa: BLE001 -- private helper: fall back to the torch index
            return self.device.index or 0

    def _nvml(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self._index())
            return lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except Exception:  # noqa: BLE001 -- no pynvml or no NVML: try nvidia-smi
            return None

    def _poll(self, read):
        while not self._stop.wait(self.period):
            self.samples.append(read())

    def _read_lines(self):
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            if line.strip().isdigit():
                self.samples.append(int(line))
