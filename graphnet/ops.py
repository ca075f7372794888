"""The op library as the language sees it: arguments, output width and parameter count of each op.

This table is the single source of truth for shape inference and parameter accounting; the compiler
implements the same ops in torch and is tested against these counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable

from .errors import OpArgError


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    inputs: tuple[int, int | None]                 # min and max number of feature inputs
    width: Callable[[list[int], dict], int]        # output width from input widths and attrs
    params: Callable[[list[int], dict], int] = lambda w, a: 0   # parameters in one copy
    kwargs: dict = field(default_factory=dict)     # keyword arguments and their defaults
    choices: dict = field(default_factory=dict)    # symbolic kwargs: allowed values
    arrow: bool = False                            # takes `-> width`
    task_input: bool = False                       # reads the task id, not features

    @property
    def parametric(self) -> bool:
        return self.name in PARAMETRIC


def _same(widths: list[int], what: str) -> int:
    if len(set(widths)) > 1:
        raise OpArgError(f"{what} needs inputs of equal width, got " + " and ".join(map(str, widths)), width=True)
    return widths[0]


def _linear_params(w, a):
    return w[0] * a["out"] + (a["out"] if a["bias"] else 0)


def _combine_width(w, a):
    if a["kind"] == "concat":
        return sum(w)
    return _same(w, f"combine(kind = {a['kind']})")


def _combine_params(w, a):
    n = w[0]
    return {"none": 0, "add": 0, "concat": 0, "sum": 2, "proj": 2 * n * n, "gate": 2 * n * n + n}[a["kind"]]


def _router_width(w, a):
    return (a["layers"] - 1) * a["modules"] ** 2 + a["modules"]


def _router_params(w, a):
    L, M, hid = a["layers"], a["modules"], a["hidden"]
    total = w[0] * hid + hid                              # gating embedding
    total += hid * M * M + M * M if L > 1 else 0          # first routing layer
    for l in range(2, L + 1):                             # later layers and the final module weights
        outs = M * M if l < L else M
        total += (l - 1) * M * M * hid + hid              # condition on the earlier routings
        total += hid * outs + outs
    if L == 1:
        total += hid * M + M
    return total


def _modular_params(w, a):
    W, L, M = a["width"], a["layers"], a["modules"]
    return M * (w[0] * W + W) + (L - 1) * M * (W * W + W)


def _mixture_params(w, a):
    W, k, depth = a["width"], a["experts"], a["layers"]
    return k * (w[0] * W + W + (depth - 1) * (W * W + W))


def _mixture_width(w, a):
    if w[1] != a["experts"]:
        raise OpArgError(f"mixture weights have width {w[1]} but there are {a['experts']} experts", width=True,
                         hint="give one weight per expert, e.g. softmax(linear(z -> experts))")
    return a["width"]


def _elementwise(name, doc):
    return OpDef(name, doc, (1, 1), lambda w, a: w[0])


_OPS = [
    OpDef("linear", "y = W x + b", (1, 1), lambda w, a: a["out"], _linear_params,
          kwargs={"bias": True, "init": "default"}, choices={"init": ("default", "zero")}, arrow=True),
    OpDef("layernorm", "layer normalisation with a learned scale and shift", (1, 1), lambda w, a: w[0],
          lambda w, a: 2 * w[0]),
    _elementwise("relu", "max(x, 0)"),
    _elementwise("tanh", "tanh(x)"),
    _elementwise("sigmoid", "1 / (1 + exp(-x))"),
    _elementwise("gelu", "Gaussian error linear unit"),
    _elementwise("elu", "exponential linear unit"),
    _elementwise("softmax", "softmax over the features"),
    _elementwise("detach", "the same values, no gradient flows back (features trained by another loss)"),
    OpDef("concat", "features side by side", (1, None), lambda w, a: sum(w)),
    OpDef("onehot", "the task id as a one-hot vector of width T", (0, 0), lambda w, a: a["T"], task_input=True),
    OpDef("meta", "the task's fixed metadata embedding (width META), e.g. a sentence embedding of its description",
          (0, 0), lambda w, a: a["META"], task_input=True),
    OpDef("embed", "a learned embedding of the task id (one row per task)", (0, 0), lambda w, a: a["out"],
          lambda w, a: a["out"], arrow=True, task_input=True),
    OpDef("combine", "a residual combiner g(a, b): none, add, sum, proj, concat, gate", (2, 2), _combine_width,
          _combine_params, kwargs={"kind": "add"},
          choices={"kind": ("none", "add", "sum", "proj", "concat", "gate")}),
    OpDef("film", "FiLM: gamma(z) * h + beta(z), gamma and beta linear in z", (2, 2), lambda w, a: w[0],
          lambda w, a: 2 * (w[1] * w[0] + w[0])),
    OpDef("affine", "task affine M(z) h + beta(z) (D-Grad A), M and beta linear in z", (2, 2), lambda w, a: w[0],
          lambda w, a: (w[1] + 1) * (w[0] * w[0] + w[0])),
    OpDef("router", "Soft Modularization routing network: per-sample routing between module layers", (1, 1),
          _router_width, _router_params, kwargs={"layers": 2, "modules": 2, "hidden": 256}),
    OpDef("modular", "Soft Modularization base network: layers of modules mixed by a router's output", (2, 2),
          lambda w, a: a["width"], _modular_params, kwargs={"width": 128}),
    OpDef("mixture", "CARE mixture of encoders: k expert MLPs weighted by attention weights", (2, 2),
          _mixture_width, _mixture_params, kwargs={"experts": 4, "width": 50, "layers": 2}),
]
OPS: dict[str, OpDef] = {op.name: op for op in _OPS}
PARAMETRIC = {"linear", "layernorm", "embed", "combine", "film", "affine", "router", "modular", "mixture"}
# ops built from `+ - *` in expressions
OPS["add"] = OpDef("add", "a + b", (2, 2), lambda w, a: _same(w, "'+'"))
OPS["sub"] = OpDef("sub", "a - b", (2, 2), lambda w, a: _same(w, "'-'"))
OPS["mul"] = OpDef("mul", "a * b, element-wise", (2, 2), lambda w, a: _same(w, "'*'"))
OPS["scale"] = OpDef("scale", "x times a constant", (1, 1), lambda w, a: w[0], kwargs={"factor": 1.0})
OPS["input"] = OpDef("input", "an input given by the environment", (0, 0), lambda w, a: a["width"])
USER_OPS = sorted(n for n, op in OPS.items() if n not in ("add", "sub", "mul", "scale", "input"))
