"""Which tensors would live on a GPU, and which reads of them would make the host wait.

`DevicePlacement` runs CPU code as a model of `--device cuda`: a tensor is a device tensor when
it is marked (the model's parameters and buffers, the optimizer's state), when it is a copy
made by `Tensor.to(device)` (the step's batch and plan), when a factory call names a device
(`torch.zeros(..., device=d)`), or when an op reads a device tensor. Everything else is a host
tensor: the loader's batch before its copy, the lengths the plan reads, numpy arrays.

A host sync is a read of a device tensor's values by the host: `.item()` and every Python
scalar conversion (`aten._local_scalar_dense`), `.cpu()`, `.tolist()`, `.numpy()`, and the
ops whose output size depends on values (`nonzero`, `masked_select`, `unique`, boolean-mask
indexing, `repeat_interleave` without `output_size`, `equal`, `is_nonzero`). Each is counted
with the line of project code that made it. Reads of host tensors are free and not counted.
Ops are counted too: every aten op that reads or makes a device tensor, the eager GPU step's
kernel launches at most (view ops, counted apart, launch none).
"""

import collections
import os
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
OWN = os.path.dirname(os.path.abspath(__file__))
# Installed packages are not project code, even where the environment lives in the project (.venv/).
LIBRARIES = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
    "is_nonzero",
    "nonzero_static",
}
HOST_READS = {torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy}
TO_DEVICE = {torch.Tensor.to, torch.Tensor.cuda}


def _tensors(tree):
    return [x for x in torch.utils._pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _site():
    """The innermost frame of project code (not torch's): 'path:line (function)'."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(ROOT) and not path.startswith(OWN) and not any(lib in path for lib in LIBRARIES):
            return f"{os.path.relpath(path, ROOT)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "?"


class Counts:
    """What one stretch of code did: host syncs by site, ops and view ops on device tensors."""

    def __init__(self):
        self.syncs = collections.Counter()
        self.ops = 0
        self.views = 0

    def total_syncs(self):
        return sum(self.syncs.values())


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        owner = self.owner
        inputs = _tensors((args, kwargs))
        on_device = any(owner.is_device(x) for x in inputs)
        if on_device:
            owner.mark(out)
            owner.counts.ops += 1
            if func.is_view:
                owner.counts.views += 1
            if _syncs(func, args, kwargs):
                owner.counts.syncs[f"{func.overloadpacket.__name__} at {_site()}"] += 1
        return out


def _syncs(func, args, kwargs):
    name = func.overloadpacket.__name__
    if name in SYNC_OPS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return any(x is not None and x.dtype == torch.bool for x in args[1])
    return (
        name == "repeat_interleave"
        and kwargs.get("output_size") is None
        and len(args) > 1
        or (name == "repeat_interleave" and isinstance(args[0], torch.Tensor) and len(args) == 1)
    )


class _Function(TorchFunctionMode):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        if func in HOST_READS and owner.is_device(args[0]):
            owner.counts.syncs[f"{func.__name__} at {_site()}"] += 1
            out = func(*args, **kwargs)
            if func is torch.Tensor.cpu and out is args[0]:  # the same memory here; a host copy there
                out = out.clone()
            for x in _tensors(out):
                owner.device.pop(x, None)
            return out
        out = func(*args, **kwargs)
        if func in TO_DEVICE and _names_device(args[1:], kwargs):
            if out is args[0]:  # the same device here; a copy there
                out = out.clone()
            owner.mark(out)
        elif "device" in kwargs and kwargs["device"] is not None:
            owner.mark(out)
        return out


def _names_device(args, kwargs):
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)


class DevicePlacement:
    """`with DevicePlacement(model, optimizer) as p:` ... `p.take()` -> the Counts since the last take."""

    def __init__(self, *roots):
        self.device = WeakIdKeyDictionary()
        self.counts = Counts()
        for root in roots:
            self.mark_module_or_optimizer(root)

    def mark_module_or_optimizer(self, root):
        if isinstance(root, torch.nn.Module):
            self.mark(list(root.parameters()) + list(root.buffers()))
        elif isinstance(root, torch.optim.Optimizer):
            self.mark([v for s in root.state.values() for v in s.values() if isinstance(v, torch.Tensor)])
        else:
            self.mark(root)

    def mark(self, tree):
        for x in _tensors(tree):
            self.device[x] = True

    def is_device(self, x):
        return x in self.device

    def take(self):
        counts, self.counts = self.counts, Counts()
        return counts

    def __enter__(self):
        self._modes = [_Function(self), _Dispatch(self)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)
