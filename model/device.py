"""The device a run uses when none is named, and the precision its training steps compute in.

bf16 autocast (TrainArgs.bf16): on a GPU; with "auto" also on a CPU that has bf16 arithmetic
(AVX512-BF16 or AMX, read from torch's CPU capability and /proc/cpuinfo), since elsewhere bf16
is emulated and slower than fp32. CAPGEN_BF16=0 turns it off everywhere (fp32), =1 forces it on.
"""

import contextlib
import functools
import os

import torch

BF16_ENV = "CAPGEN_BF16"  # 0: fp32 everywhere; 1: bf16 autocast on any device
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic


def default_device(name=None):
    """torch.device(name), or the GPU when there is one, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively: torch's AMX capability, or an avx512_bf16 /
    amx_bf16 flag in /proc/cpuinfo (absent off Linux: False)."""
    if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def use_bf16(device: torch.device, mode: str = "gpu") -> bool:
    """Whether steps on `device` run under bf16 autocast. mode (TrainArgs.bf16): "gpu": on a GPU
    only; "auto": also on a CPU where cpu_has_bf16(); "off": never. CAPGEN_BF16=0 / 1 decides
    instead where set (1: on any device)."""
    forced = os.environ.get(BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if mode == "off":
        return False
    return device.type == "cuda" or (mode == "auto" and device.type == "cpu" and cpu_has_bf16())


def autocast_for(device: torch.device, mode: str = "gpu"):
    """(context, image dtype) of a training step on `device`: bf16 autocast and bf16 images where
    use_bf16(device, mode), else no autocast and float32 images."""
    if use_bf16(device, mode):
        return torch.autocast(device.type, dtype=torch.bfloat16), torch.bfloat16
    return contextlib.nullcontext(), torch.float32
