"""One validator for the files a run leaves: each field declared once (its type, range, shape)
and checked where the file is read. A value that does not fit is one line,
CapgenError('FILE: FIELD: cause'), FIELD its path in the file (config.image.size,
optimizer.param_groups[0].lr, rng.numpy.keys). The schemas themselves live beside what
they describe: config.json's in checkpoint_config.py, trainer.pt's in checkpoint.py,
args.json's in model/train/run_args.py.

Example::

    IMAGE = Obj({"size": Int(low=8), "mean": List(Num(), length=3)})
    check("ckpt/config.json", {"size": "224", "mean": [0, 0, 0]}, IMAGE)
    # CapgenError: ckpt/config.json: size: expected an integer >= 8, got '224'
"""

import json
import math
import sys

from pipeline.errors import CapgenError, first_line, read_bytes


def _got(value):
    """A short picture of a value for an error line."""
    if _is_tensor(value):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{_article(dtype)} {dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, dict):
        return f"an object of {len(value)} fields" if len(repr(value)) > 40 else repr(value)
    if isinstance(value, (list, tuple)) and len(repr(value)) > 40:
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _article(dtype):
    return "an" if dtype.startswith("int") else "a"  # an int64, a uint8, a float32


def _is_tensor(value):
    """A torch tensor (without importing torch: nothing is one before torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _join(field, name):
    if isinstance(name, int):
        return f"{field}[{name}]"
    return f"{field}.{name}" if field else str(name)


class Spec:
    """What a value must be. Subclasses say what (`describe`, `fits`) and which parts to check
    next (`parts`); `rule(value)` may add a cause (a string) for a value of the right type."""

    noun = "values"  # what a list of these is a list of

    def __init__(self, rule=None):
        self.rule = rule

    def describe(self) -> str:
        raise NotImplementedError

    def fits(self, value) -> bool:
        raise NotImplementedError

    def parts(self, value):
        """(name, value, spec) of the parts of a value that fits."""
        return ()

    def problem(self, value, field=""):
        """(field, cause) of the first thing in `value` that does not fit, else None."""
        if not self.fits(value):
            return field, f"expected {self.describe()}, got {_got(value)}"
        for name, part, spec in self.parts(value):
            found = spec.problem(part, _join(field, name)) if part is not _MISSING else (_join(field, name), "missing")
            if found:
                return found
        cause = self.rule(value) if self.rule else None
        return (field, cause) if cause else None


_MISSING = object()


def _range(low, high, low_open=False, high_open=False):
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def _within(value, low, high, low_open, high_open):
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


class Int(Spec):
    noun = "integers"

    def __init__(self, low=None, high=None, rule=None):
        super().__init__(rule)
        self.low, self.high = low, high

    def describe(self):
        return "an integer" + _range(self.low, self.high)

    def fits(self, value):
        return (
            isinstance(value, int) and not isinstance(value, bool) and _within(value, self.low, self.high, False, False)
        )


class Num(Spec):
    """A finite number (an int or a float; not a bool), optionally within a range."""

    noun = "numbers"

    def __init__(self, low=None, high=None, low_open=False, high_open=False, finite=True, rule=None):
        super().__init__(rule)
        self.low, self.high, self.low_open, self.high_open, self.finite = low, high, low_open, high_open, finite

    def describe(self):
        return ("a finite number" if self.finite else "a number") + _range(
            self.low, self.high, self.low_open, self.high_open
        )

    def fits(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return False
        if self.finite and not math.isfinite(value):
            return False
        return _within(value, self.low, self.high, self.low_open, self.high_open)


class Str(Spec):
    noun = "strings"

    def __init__(self, choices=None, rule=None):
        super().__init__(rule)
        self.choices = tuple(choices) if choices is not None else None

    def describe(self):
        return f"one of {', '.join(map(str, self.choices))}" if self.choices else "a string"

    def fits(self, value):
        return isinstance(value, str) and (self.choices is None or value in self.choices)


class Bool(Spec):
    noun = "booleans"

    def describe(self):
        return "true or false"

    def fits(self, value):
        return isinstance(value, bool)


class Anything(Spec):
    def describe(self):
        return "anything"

    def fits(self, value):
        return True


class Opt(Spec):
    """None, or what `spec` says."""

    def __init__(self, spec):
        super().__init__()
        self.spec, self.noun = spec, spec.noun

    def describe(self):
        return f"{self.spec.describe()} or null"

    def fits(self, value):
        return True

    def problem(self, value, field=""):
        return None if value is None else self.spec.problem(value, field)


class AnyOf(Spec):
    """What one of `specs` says (the first that has no problem)."""

    def __init__(self, *specs):
        super().__init__()
        self.specs = specs

    def describe(self):
        return " or ".join(s.describe() for s in self.specs)

    def fits(self, value):
        return any(s.problem(value) is None for s in self.specs)


class List(Spec):
    """A list (or tuple) of items that `item` describes; `length`: exactly so many."""

    noun = "lists"

    def __init__(self, item, length=None, min_length=0, rule=None):
        super().__init__(rule)
        self.item, self.length, self.min_length = item, length, min_length

    def describe(self):
        count = f"{self.length} " if self.length is not None else f"at least {self.min_length} " * (self.min_length > 0)
        return f"a list of {count}{self.item.noun}"

    def fits(self, value):
        if not isinstance(value, (list, tuple)):
            return False
        return len(value) == self.length if self.length is not None else len(value) >= self.min_length

    def parts(self, value):
        return ((i, v, self.item) for i, v in enumerate(value))


class Tuple(Spec):
    """A list (or tuple) whose k-th item is what items[k] says; `what` describes it in errors."""

    def __init__(self, *items, what=None, rule=None):
        super().__init__(rule)
        self.items, self.what = items, what

    def describe(self):
        return self.what or f"a list of {len(self.items)} items"

    def fits(self, value):
        return isinstance(value, (list, tuple)) and len(value) == len(self.items)

    def parts(self, value):
        return ((i, v, s) for i, (v, s) in enumerate(zip(value, self.items)))


class Obj(Spec):
    """An object with `fields` {name: spec}; each is required unless named in `optional`;
    other keys are allowed unless `closed`, the cause an unknown key is given (True: a list of the known)."""

    noun = "objects"

    def __init__(self, fields, optional=(), closed=None, rule=None):
        super().__init__(rule)
        self.fields, self.optional = fields, set(optional)
        self.closed = f"unknown field (expected {', '.join(fields)})" if closed is True else closed

    def describe(self):
        return "an object"

    def fits(self, value):
        return isinstance(value, dict)

    def problem(self, value, field=""):
        if self.closed and self.fits(value):
            for name in value:
                if name not in self.fields:
                    return _join(field, str(name)), self.closed
        return super().problem(value, field)

    def parts(self, value):
        for name, spec in self.fields.items():
            if name in value:
                yield name, value[name], spec
            elif name not in self.optional:
                yield name, _MISSING, spec


class Map(Spec):
    """An object whose every key is what `key` says and every value what `value` says."""

    noun = "objects"

    def __init__(self, key, value, rule=None):
        super().__init__(rule)
        self.key, self.value = key, value

    def describe(self):
        return "an object"

    def fits(self, value):
        return isinstance(value, dict)

    def problem(self, value, field=""):
        if self.fits(value):
            for k in value:
                if self.key.problem(k) is not None:
                    return _join(field, k if isinstance(k, int) else repr(k)), f"key: expected {self.key.describe()}"
        return super().problem(value, field)

    def parts(self, value):
        return ((k, v, self.value) for k, v in value.items())


class Tensor(Spec):
    """A torch tensor of `dtype` (its name, "int64"; None: any), of `shape` (a tuple, None for
    any size on an axis; None: any shape)."""

    noun = "tensors"

    def __init__(self, dtype=None, shape=None, rule=None):
        super().__init__(rule)
        self.dtype, self.shape = dtype, shape

    def describe(self):
        shape = (
            f" of shape [{', '.join('*' if n is None else str(n) for n in self.shape)}]"
            if self.shape is not None
            else ""
        )
        if self.dtype is None:
            return f"a tensor{shape}"
        return f"{_article(self.dtype)} {self.dtype} tensor{shape}"

    def fits(self, value):
        if not _is_tensor(value) or (self.dtype is not None and str(value.dtype) != f"torch.{self.dtype}"):
            return False
        if self.shape is None:
            return True
        return len(value.shape) == len(self.shape) and all(w in (None, n) for w, n in zip(self.shape, value.shape))


def check(path, value, spec):
    """Raise CapgenError('PATH: FIELD: cause') for the first part of `value` that `spec` refuses."""
    found = spec.problem(value)
    if found:
        field, cause = found
        raise CapgenError(f"{path}: {field}: {cause}" if field else f"{path}: {cause}")
    return value


def read_json(path, what):
    """The JSON object in the file `path`: CapgenError 'PATH: file not found' (or cannot read),
    'PATH: not WHAT (cause)' for bad JSON, bad UTF-8, nesting too deep or a non-object."""
    try:
        value = json.loads(read_bytes(path))
    except UnicodeDecodeError as err:  # its first argument is only the encoding's name
        raise CapgenError(f"{path}: not {what} ({err})") from None
    except (ValueError, RecursionError) as err:  # bad JSON, nesting too deep
        raise CapgenError(f"{path}: not {what} ({first_line(err)})") from None
    if not isinstance(value, dict):
        raise CapgenError(f"{path}: not {what} (not a JSON object)")
    return value
