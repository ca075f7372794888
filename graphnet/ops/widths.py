"""Width rules and parameter shapes several ops share (no torch)."""
from __future__ import annotations

from ..errors import OpArgError
from ..registry import Param


def same(widths: list[int], what: str) -> int:
    """The common width of inputs that must agree."""
    if len(set(widths)) > 1:
        raise OpArgError(f"{what} needs inputs of equal width, got " + " and ".join(map(str, widths)), width=True)
    return widths[0]


def first(widths: list[int], attrs: dict) -> int:
    """The first input's width: elementwise ops, and ops that modulate their first input."""
    return widths[0]


def dense(fan_in: int, out: int, bias: bool = True, prefix: str = "") -> dict[str, Param]:
    """A linear layer's parameters, `{prefix}weight` `[in, out]` and `{prefix}bias` `[out]`, PyTorch's init."""
    shapes = {f"{prefix}weight": Param((fan_in, out), "uniform", fan_in)}
    if bias:
        shapes[f"{prefix}bias"] = Param((out,), "uniform", fan_in)
    return shapes
