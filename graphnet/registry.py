"""The op registry: every op, graphnet's own and a user's, is one `OpDef` registered here.

An op definition says everything each part of graphnet needs, so that none of them special-cases an op by
name: its arguments, its width rule, its parameter shapes (the counts follow from them), its ensemble torch
implementation, its per-sample reference implementation (written independently: the tests hold the two
equal), the compiler's flags, its drawing label and its doc. Nothing here imports torch: an op's torch
functions are only called once a spec is compiled.

Calling conventions (the same for built-in and user ops):

- `width(widths, attrs) -> int`: the output width from the input widths and the op's attributes (its
  keyword arguments, `out` for an op written `op(x -> W)`, `T` and `META` for an op that reads the task).
  Raise `OpArgError` for inputs that do not fit; graphnet reports it at the spec position of the call.
- `params(widths, attrs) -> {name: Param}`: one copy's parameters; an op without is parameter-free.
- `forward(p, *xs, **attrs)` (parametric) or `forward(*xs, **attrs)`: every parameter in `p` has a leading
  ensemble dimension E and every input is `[E, B, width]`; returns `[E, B, width]`.
- `reference(p, *xs, **attrs)` or `reference(*xs, **attrs)`: one sample of one ensemble member, parameters
  and inputs without their leading dimensions.
- an op that reads the task (`reads_task`) takes no features: forward gets `layout` (the batch's
  `TaskLayout`: `.task`, `.num_tasks`) in place of inputs and reference gets the sample's `task` (an int).
- stacks: a stack of k features of width W (`stack(k) f(x)`: k independent copies of f) is a value of width
  k * W, members side by side, and the width rule sees that width. A `plain` op refuses stacks; an
  `elementwise` one applies to every member alike (a stack and a width-1 value broadcast); a `read` op takes
  stacks: its attrs get `k`, the first input's stack size, and `stack_out(widths, attrs)` gives its output's.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .errors import GraphnetError

Init = Literal["uniform", "zeros", "ones", "normal", "eye"]


@dataclass(frozen=True)
class Param:
    """One copy of a parameter: its shape and initialisation. `uniform` is PyTorch's Linear default,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); `eye` fills a flattened fan_in x fan_in identity."""

    shape: tuple[int, ...]
    init: Init = "uniform"
    fan_in: int = 1

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class OpDef:
    """One op. Only `name`, `doc`, `width` and `forward`/`reference` are needed for a parameter-free op."""

    name: str
    doc: str                                         # one line: what it computes (the README's op table)
    width: Callable[[list[int], dict], int]
    forward: Callable[..., Any]
    reference: Callable[..., Any]
    inputs: tuple[int, int | None] = (1, 1)          # least and most feature inputs (None: any number)
    input_names: tuple[str, ...] = ()                # for its signature and messages, e.g. ("h", "z")
    params: Callable[[list[int], dict], dict[str, Param]] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)         # keyword arguments and their defaults
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)   # symbolic kwargs: allowed words
    arrow: bool = False                              # written `op(x -> W)`: W is attrs["out"]
    reads_task: bool = False                         # reads the task id, not features (onehot, embed)
    reads_metadata: bool = False                     # forward gets `metadata`, the [T, META] table, reference its row
    sharing: Literal["task"] | None = None           # a sharing the op always has (embed: one row per task)
    linear_in_params: bool = False                   # output linear in the parameters: a bank may mix K outputs
    zero_preserving: bool = False                    # elementwise, f(0) = 0: zero-padded widths stay zero
    dense_layer: bool = False                        # y = x weight + bias: the compiler may fuse, pad, accumulate it
    side_by_side: bool = False                       # its output is its inputs' features side by side (concat)
    in_place: Callable[..., Any] | None = None       # forward overwriting its input, where nothing else reads it
    stacks: Literal["plain", "elementwise", "read"] = "plain"   # on stacks of k features (see below)
    stack_out: Callable[[list[int], dict], int] | None = None   # the output's stack size (default: plain)
    label: Callable[[dict], str] | None = None       # its text in a drawing (default: the name)
    parts: dict[str, Callable[..., Any]] = field(default_factory=dict)   # pieces the compiler may run apart
    task_rows: Callable[..., Any] | None = None      # applies parts["coefficients"] computed on one row per task
    derive: Callable[[list[tuple[str, dict]], dict], dict] | None = None  # attrs read from its inputs' ops
    examples: tuple[str, ...] = ()                   # calls check_op verifies it with (default: from its signature)
    in_language: bool = True                         # callable by name in a spec (not `+`, `-`, `*`, scaling)
    source: str = "graphnet"                         # where it was defined: graphnet, or a user's file

    @property
    def parametric(self) -> bool:
        return self.params is not None

    def shapes(self, widths: list[int], attrs: dict) -> dict[str, Param]:
        return self.params(widths, attrs) if self.params is not None else {}

    def count(self, widths: list[int], attrs: dict) -> int:
        """Parameters in one copy: the sum of its shapes' sizes (never written a second time)."""
        return sum(p.size for p in self.shapes(widths, attrs).values())

    def text(self, attrs: dict) -> str:
        return self.label(attrs) if self.label is not None else self.name

    @property
    def calls(self) -> tuple[str, ...]:
        """Spec expressions that exercise the op, over features `x`, `y` (width W), `z` (width Z) and `task`:
        its `examples`, or one call from its signature."""
        if self.examples:
            return self.examples
        lo, hi = self.inputs
        ins = "task" if self.reads_task else "x, y, z" if hi is None else ", ".join("xyz"[:max(lo, 1)])
        return (f"{self.name}({ins}{' -> 5' if self.arrow else ''})",)

    @property
    def signature(self) -> str:
        """How a spec calls it, e.g. `linear(x -> W, bias = true, init = default|zero)`."""
        lo, hi = self.inputs
        names = list(self.input_names) or (["task"] if self.reads_task else ["x"] if (lo, hi) == (1, 1) else
                                           ["a", "b", "..."] if hi is None else [chr(ord("a") + i) for i in range(hi)])
        args = [", ".join(names) + (" -> W" if self.arrow else "")]
        for key, default in self.kwargs.items():
            words = [default, *(c for c in self.choices.get(key, ()) if c != default)]
            args.append(f"{key} = " + "|".join(str(w).lower() if isinstance(w, bool) else str(w) for w in words))
        return f"{self.name}({', '.join(args)})"


class RegistryError(GraphnetError):
    """An op that cannot be registered (a name taken by another op, a definition missing a part)."""


_OPS: dict[str, OpDef] = {}
_loading: list[str] = []          # the user op file being executed (load_file), which its ops are stamped with
_loaded: dict[str, tuple[str, list[str]]] = {}   # user op file -> digest of its text, the ops it defined


def register(op: OpDef) -> OpDef:
    """Add an op to the language; returns the definition as registered. graphnet's own names are taken; a
    user's op replaces one of the same name from another file (the file a spec loads last is the one it
    uses: specs reload their op files before they elaborate, and built networks keep their definitions)."""
    if _loading:
        op = replace(op, source=_loading[-1])
    if not op.name.isidentifier():
        raise RegistryError(f"op name {op.name!r} is not a name a spec can call (letters, digits, _)")
    old = _OPS.get(op.name)
    if old is not None and old.source == "graphnet" and old != op:
        raise RegistryError(f"op '{op.name}' is already defined (by graphnet); give yours another name")
    if op.task_rows is not None and "coefficients" not in op.parts:
        raise RegistryError(f"op '{op.name}': task_rows applies parts['coefficients'], which it does not define")
    _OPS[op.name] = op
    return op


def get(name: str) -> OpDef:
    _load_builtins()
    return _OPS[name]


def lookup(name: str) -> OpDef | None:
    _load_builtins()
    return _OPS.get(name)


def all_ops() -> list[OpDef]:
    """Every registered op, built-ins first, in the order they were registered."""
    _load_builtins()
    return list(_OPS.values())


def language_names() -> list[str]:
    """The ops a spec can call by name, sorted."""
    return sorted(op.name for op in all_ops() if op.in_language)


def markdown_table() -> str:
    """The README's op table: every op of graphnet's a spec calls by name, from its definition."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")
    rows = [f"| `{cell(op.signature)}` | {cell(op.doc)} |" for op in all_ops()
            if op.in_language and op.source == "graphnet"]
    return "\n".join(["| op | what it computes |", "| --- | --- |", *rows])


def load_file(path: str | Path) -> list[OpDef]:
    """Execute a Python file of ops (what a spec's `import "ops.py"` does); returns the ops it defines. A file
    already loaded from the same text is not executed again. A file that fails is an OpFileError naming the
    line that raised."""
    _load_builtins()
    path = Path(path).resolve()
    key = str(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise OpFileError(f"cannot read {path}: {e.strerror or e}", key) from None
    digest = hashlib.sha256(text).hexdigest()
    last = _loaded.get(key)
    displaced = last is not None and any((op := _OPS.get(n)) is None or op.source != key for n in last[1])
    if last is None or last[0] != digest or displaced:
        for old in [n for n, op in _OPS.items() if op.source == key]:   # an edited file defines its ops anew
            del _OPS[old]
        name = "graphnet_user_ops_" + hashlib.sha256(key.encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, "a .py path always has a source loader"
        module = importlib.util.module_from_spec(spec)
        _loading.append(key)
        try:
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise OpFileError(f"{type(e).__name__}: {e}", *user_frame(e, key)) from None
        finally:
            _loading.pop()
        _loaded[key] = (digest, [n for n, op in _OPS.items() if op.source == key])
    return [op for op in _OPS.values() if op.source == key]


class OpFileError(GraphnetError):
    """A user's op file that cannot be loaded, or a user's op that raised: the file and line where it did."""

    def __init__(self, message: str, file: str, line: int | None = None):
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.message, self.file, self.line = message, file, line


def user_frame(error: BaseException, file: str | None = None) -> tuple[str, int | None]:
    """The innermost place in a user's op file (or in `file`) that `error` passed through."""
    files = {file} if file else {op.source for op in _OPS.values() if op.source != "graphnet"}
    if isinstance(error, SyntaxError) and error.filename in files:
        return error.filename, error.lineno
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename in files]
    return (frames[-1].filename, frames[-1].lineno) if frames else (file or "?", None)


def _load_builtins() -> None:
    from . import ops  # noqa: F401  (registers graphnet's own ops on first use)
