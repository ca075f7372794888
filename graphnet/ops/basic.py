"""The basic ops: linear layers, normalisation, elementwise functions, concatenation and arithmetic."""
from __future__ import annotations

from dataclasses import replace

from ..registry import OpDef, Param, register
from . import ensemble
from ._torch import F, Tensor, torch
from .widths import dense, first, same


# ------------------------------------------------------------------------------------------------ linear
def _linear_params(widths: list[int], a: dict) -> dict[str, Param]:
    shapes = dense(widths[0], a["out"], a["bias"])
    return {k: replace(p, init="zeros") for k, p in shapes.items()} if a["init"] == "zero" else shapes


def _linear(p: dict[str, Tensor], x: Tensor, accumulate: Tensor | None = None, **_) -> Tensor:
    """x W + b; with `accumulate`, added into that tensor in place: a residual sum without a pass of its own."""
    if accumulate is None:
        return ensemble.lin(p, x)
    out = accumulate.baddbmm_(x, p["weight"])
    return out.add_(p["bias"].unsqueeze(1)) if "bias" in p else out


def _linear_reference(p: dict[str, Tensor], x: Tensor, **_) -> Tensor:
    y = x @ p["weight"]
    return y + p["bias"] if "bias" in p else y


LINEAR = register(OpDef(
    "linear", "y = W x + b", lambda w, a: a["out"], _linear, _linear_reference, params=_linear_params,
    kwargs={"bias": True, "init": "default"}, choices={"init": ("default", "zero")}, arrow=True,
    linear_in_params=True, dense_layer=True,
    examples=("linear(x -> 5)", "linear(x -> 5, bias = false)", "linear(x -> W, init = zero) + x")))


# --------------------------------------------------------------------------------------------- layernorm
def _layernorm(p: dict[str, Tensor], x: Tensor, **_) -> Tensor:
    return F.layer_norm(x, x.shape[-1:]) * p["scale"].unsqueeze(1) + p["shift"].unsqueeze(1)


def _layernorm_reference(p: dict[str, Tensor], x: Tensor, **_) -> Tensor:
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5) * p["scale"] + p["shift"]


register(OpDef(
    "layernorm", "layer normalisation with a learned scale and shift", first, _layernorm, _layernorm_reference,
    params=lambda w, a: {"scale": Param((w[0],), "ones"), "shift": Param((w[0],), "zeros")},
    linear_in_params=True))


# ------------------------------------------------------------------------------------------- elementwise
def relu(x: Tensor) -> Tensor:
    return torch.relu(x)


def relu_(x: Tensor) -> Tensor:
    return torch.relu_(x)


def tanh(x: Tensor) -> Tensor:
    return torch.tanh(x)


def sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def gelu(x: Tensor) -> Tensor:
    return F.gelu(x)


def elu(x: Tensor) -> Tensor:
    return F.elu(x)


def detach(x: Tensor) -> Tensor:
    return x.detach()


def _gelu_reference(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / 2 ** 0.5))


def _elu_reference(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.expm1(x))


def _elementwise(name: str, doc: str, forward, reference, zero_preserving: bool, **extra) -> OpDef:
    return register(OpDef(name, doc, first, forward, reference, zero_preserving=zero_preserving,
                          stacks=extra.pop("stacks", "elementwise"), **extra))


_elementwise("relu", "max(x, 0)", relu, lambda x: torch.clamp(x, min=0), True, in_place=relu_)
_elementwise("tanh", "tanh(x)", tanh, lambda x: torch.tanh(x), True)
_elementwise("sigmoid", "1 / (1 + exp(-x))", sigmoid, lambda x: 1 / (1 + torch.exp(-x)), False)
_elementwise("gelu", "Gaussian error linear unit", gelu, _gelu_reference, True)
_elementwise("elu", "exponential linear unit", elu, _elu_reference, True)


def softmax(x: Tensor, k: int) -> Tensor:
    """Over the features; of a stack, over each member's."""
    if k == 1:
        return ensemble.softmax(x)
    return ensemble.softmax(x.reshape(*x.shape[:-1], k, -1)).flatten(-2)


def _softmax_reference(x: Tensor, k: int) -> Tensor:
    return torch.cat([torch.exp(m) / torch.exp(m).sum() for m in x.reshape(k, -1)])


register(OpDef("softmax", "softmax over the features (of a stack: over each member's)", first, softmax,
               _softmax_reference, stacks="read", stack_out=lambda w, a: a["k"],
               examples=("softmax(x)", "softmax(as_stack(x, k = 2))")))
_elementwise("detach", "the same values, no gradient flows back (features trained by another loss)", detach,
             lambda x: x.detach(), True)


# ------------------------------------------------------------------------------------ concat, arithmetic
def concat(*xs: Tensor, **_) -> Tensor:
    return ensemble.cat(list(xs))


register(OpDef("concat", "features side by side (a stack's members too: concat(s) is its k * W features)",
               lambda w, a: sum(w), concat, lambda *xs, **_: torch.cat(xs), inputs=(1, None), stacks="read",
               side_by_side=True))


def add(a: Tensor, b: Tensor) -> Tensor:
    return torch.add(a, b)


def sub(a: Tensor, b: Tensor) -> Tensor:
    return torch.sub(a, b)


def mul(a: Tensor, b: Tensor) -> Tensor:
    return torch.mul(a, b)


def div(a: Tensor, b: Tensor) -> Tensor:
    return torch.div(a, b)


def scale(x: Tensor, factor: float) -> Tensor:
    return x * factor


def _broadcast(symbol: str):
    """Equal widths, or one side of width 1 (a per-sample number, e.g. norm(x)) against any width."""
    def width(w: list[int], a: dict) -> int:
        return max(w) if 1 in w else same(w, f"'{symbol}'")
    return width


def _arithmetic(name: str, doc: str, symbol: str, drawn: str, forward, reference, zero_preserving=True,
                examples: tuple[str, ...] = ()) -> OpDef:
    return register(OpDef(name, doc, _broadcast(symbol), forward, reference, inputs=(2, 2),
                          zero_preserving=zero_preserving, label=lambda a: drawn, stacks="elementwise",
                          examples=examples or (f"x {symbol} y", f"x {symbol} norm(z)"), in_language=False))


ADD = _arithmetic("add", "a + b", "+", "+", add, lambda a, b: a + b)
_arithmetic("sub", "a - b", "-", "\u2212", sub, lambda a, b: a - b)
_arithmetic("mul", "a * b, element-wise", "*", "\u00d7", mul, lambda a, b: a * b)
_arithmetic("div", "a / b, element-wise", "/", "\u00f7", div, lambda a, b: a / b, zero_preserving=False,
            examples=("x / norm(z)", "norm(x) / norm(z)"))
register(OpDef("scale", "x times a constant", first, scale, lambda x, factor: factor * x, kwargs={"factor": 1.0},
               zero_preserving=True, label=lambda a: f"\u00d7 {a['factor']:g}", examples=("0.5 * x", "-x"),
               stacks="elementwise", in_language=False))
