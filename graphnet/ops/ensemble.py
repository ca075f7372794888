"""Helpers for ops written for an ensemble of parameter sets: tensors `[E, B, width]`, parameters `[E, ...]`.

Public for users' ops: an op's forward may meet inputs of different ensemble sizes (the actor's value, one
member, beside the twin critics', two; a group of seeds' value beside its critics') and `aligned` puts them
on one."""
from __future__ import annotations

import math

from ._torch import Tensor, torch


def to_ensemble(x: Tensor, E: int) -> Tensor:
    """x `[1, n or E, ...]` as `[E, ...]`. Already E: x itself, not an expand view (each one is an autograd node
    whose backward runs, too: 99 a CARE + PTSL step, nearly all of them no-ops). n members (seeds, see
    build's `seeds`) broadcast to E = n * m seed-major: member i's value for its m twins."""
    n = x.shape[0]
    if n == E:
        return x
    if n == 1:
        return x.expand(E, *x.shape[1:])
    return x.unsqueeze(1).expand(n, E // n, *x.shape[1:]).flatten(0, 1)


def aligned(*xs: Tensor) -> tuple[Tensor, ...]:
    """The tensors on one ensemble size, the largest (to_ensemble)."""
    E = max(x.shape[0] for x in xs)
    return tuple(to_ensemble(x, E) for x in xs)


def lin(p: dict[str, Tensor], x: Tensor, prefix: str = "") -> Tensor:
    """A linear layer of `p`'s parameters `{prefix}weight` and (if there is one) `{prefix}bias`."""
    return dense_map(x, p[f"{prefix}weight"], p.get(f"{prefix}bias"))


def dense_map(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`[E, B, in] @ [E, in, out] (+ [E, out])`."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight) if bias is not None else torch.bmm(x, weight)


def cat(xs: list[Tensor]) -> Tensor:
    """Concatenate features, broadcasting the ensemble dimension."""
    return torch.cat(aligned(*xs), -1)


def softmax(x: Tensor) -> Tensor:
    """Over the last dim. Below 16 entries torch's CPU kernel is slow and these elementwise ops are not
    (81,920 rows of 4, one thread: 6.2 vs 1.2 ms forward, 8.3 vs 3.4 forward and backward; Soft
    Modularization's 4-way routing). The max is a constant shift, so it carries no gradient."""
    if x.is_cuda or x.shape[-1] >= 16:
        return torch.softmax(x, -1)
    e = (x - x.detach().amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def init_(t: Tensor, init: str, fan_in: int) -> None:
    """Fill one copy of a parameter in place (registry.Param's `init`)."""
    with torch.no_grad():
        if init == "uniform":
            bound = 1 / math.sqrt(fan_in)
            t.uniform_(-bound, bound)
        elif init == "zeros":
            t.zero_()
        elif init == "ones":
            t.fill_(1.0)
        elif init == "normal":
            t.normal_()
        elif init == "eye":
            t.copy_(torch.eye(fan_in, dtype=t.dtype).flatten())
        else:
            raise KeyError(init)
