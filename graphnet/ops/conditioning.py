"""Ops that combine two inputs: PTSL's residual combiners, FiLM, D-Grad's task affine.

FiLM and the affine of a value z that depends on the task alone run in two parts: their coefficients
(`parts["coefficients"]`, reading z only) on one row per task, then `task_rows`, which applies each
task's coefficients to its samples (see compiler/task_rows)."""
from __future__ import annotations

from typing import Any

from ..registry import OpDef, Param, register
from . import ensemble
from ._torch import Tensor, torch
from .ensemble import lin
from .widths import dense, same

# ------------------------------------------------------------------------------------------------ combine
KINDS = ("none", "add", "sum", "proj", "concat", "gate")


def _combine_width(w: list[int], a: dict) -> int:
    return sum(w) if a["kind"] == "concat" else same(w, f"combine(kind = {a['kind']})")


def _combine_params(w: list[int], a: dict) -> dict[str, Param]:
    n = w[0]
    return {"sum": {"alpha": Param((), "ones"), "beta": Param((), "ones")}, "proj": dense(2 * n, n, bias=False),
            "gate": dense(2 * n, n)}.get(a["kind"], {})


def _combine(p: dict[str, Tensor], a: Tensor, b: Tensor, kind: str, **_) -> Tensor:
    if kind == "none":
        return a
    if kind == "add":
        return a + b
    if kind == "concat":
        return ensemble.cat([a, b])
    if kind == "sum":
        return p["alpha"].view(-1, 1, 1) * a + p["beta"].view(-1, 1, 1) * b
    if kind == "proj":
        return lin(p, ensemble.cat([a, b]))
    s = torch.sigmoid(lin(p, ensemble.cat([a, b])))  # gate
    return s * a + (1 - s) * b


def _combine_reference(p: dict[str, Tensor], x: Tensor, y: Tensor, kind: str, **_) -> Tensor:
    both = torch.cat([x, y])
    results = {
        "none": lambda: x, "add": lambda: x + y, "concat": lambda: both,
        "sum": lambda: p["alpha"] * x + p["beta"] * y, "proj": lambda: both @ p["weight"],
        "gate": lambda: _mix(torch.sigmoid(both @ p["weight"] + p["bias"]), x, y)}
    return results[kind]()


def _mix(s: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return s * x + (1 - s) * y


register(OpDef(
    "combine", "PTSL's residual g: `none` (a), `add` (a + b), `sum` (alpha a + beta b), `proj` (P [a; b], no bias), "
    "`concat`, `gate` (s a + (1 - s) b, s = sigmoid(linear([a; b]))); parameters 0, 0, 2, 2n², 0, 2n² + n",
    _combine_width, _combine, _combine_reference, inputs=(2, 2), input_names=("a", "b"), params=_combine_params,
    kwargs={"kind": "add"}, choices={"kind": KINDS}, examples=tuple(f"combine(x, y, kind = {k})" for k in KINDS),
    label=lambda a: f"combine {a['kind']}"))


# --------------------------------------------------------------------------------------------------- FiLM
def _film(p: dict[str, Tensor], h: Tensor, z: Tensor, **_) -> Tensor:
    return lin(p, z, "gamma_") * h + lin(p, z, "beta_")


def _film_coefficients(p: dict[str, Tensor], z: Tensor, **_) -> Tensor:
    """FiLM's gamma(z) and beta(z), side by side: the part of film that reads z alone."""
    return torch.cat([lin(p, z, "gamma_"), lin(p, z, "beta_")], -1)


def film_rows(h: Tensor, coefficients: Tensor, layout: Any) -> Tensor:
    """FiLM whose z depends on the task alone: gamma_t * h + beta_t from per-task coefficients `[E, T, 2H]`,
    on a task-major batch without a per-sample copy of them (the linears ran on T rows, not B)."""
    if h.shape[0] != coefficients.shape[0] and 1 not in (h.shape[0], coefficients.shape[0]):
        h, coefficients = ensemble.aligned(h, coefficients)   # a seed's value with its twin critics'
    if not layout.major:
        gamma, beta = coefficients[:, layout.task].chunk(2, -1)
        return gamma * h + beta
    gamma, beta = coefficients.chunk(2, -1)
    E, B, H = max(h.shape[0], coefficients.shape[0]), h.shape[1], h.shape[2]
    per_task = h.reshape(h.shape[0], layout.num_tasks, B // layout.num_tasks, H)
    return (per_task * gamma.unsqueeze(2) + beta.unsqueeze(2)).reshape(E, B, H)


def _film_reference(p: dict[str, Tensor], h: Tensor, z: Tensor, **_) -> Tensor:
    gamma = z @ p["gamma_weight"] + p["gamma_bias"]
    return gamma * h + (z @ p["beta_weight"] + p["beta_bias"])


register(OpDef(
    "film", "FiLM: gamma(z) * h + beta(z), gamma and beta linear in z; 2 (z h + h) parameters", lambda w, a: w[0],
    _film, _film_reference, inputs=(2, 2), input_names=("h", "z"),
    params=lambda w, a: {**dense(w[1], w[0], prefix="gamma_"), **dense(w[1], w[0], prefix="beta_")},
    linear_in_params=True, parts={"coefficients": _film_coefficients}, task_rows=film_rows,
    examples=("film(x, z)", "film(x, embed(task -> Z))")))


# ------------------------------------------------------------------------------------------------- affine
def _affine_params(w: list[int], a: dict) -> dict[str, Param]:
    h, z = w
    return {"matrix_weight": Param((z, h * h), "zeros", z), "matrix_bias": Param((h * h,), "eye", h),
            **dense(z, h, prefix="shift_")}


def _affine(p: dict[str, Tensor], h: Tensor, z: Tensor, **_) -> Tensor:
    """M(z) h + beta(z) with M(z) = reshape(z W + b): as sum_j z'_j (A_j h), z' = [1, z], A_0 = reshape(b),
    A_j = reshape(W_j): one matmul of h against every A_j, never a per-sample n x n matrix."""
    E, B, n = h.shape
    a = torch.cat([p["matrix_bias"].unsqueeze(1), p["matrix_weight"]], 1).view(E, -1, n, n)   # [E, Z+1, n, n]
    u = torch.bmm(h, a.permute(0, 3, 1, 2).reshape(E, n, -1)).view(E, B, -1, n)              # [E, B, Z+1, n]
    z1 = torch.cat([torch.ones_like(z[..., :1]), z], -1).unsqueeze(-2)                        # [E, B, 1, Z+1]
    return (z1 @ u).squeeze(-2) + lin(p, z, "shift_")


def _affine_coefficients(p: dict[str, Tensor], z: Tensor, **_) -> Tensor:
    """D-Grad's M(z) (flattened row-major, n x n) and beta(z), side by side: the part of affine that reads z alone."""
    return torch.cat([lin(p, z, "matrix_"), lin(p, z, "shift_")], -1)


def affine_rows(h: Tensor, coefficients: Tensor, layout: Any) -> Tensor:
    """D-Grad's affine whose z depends on the task alone: M_t h + beta_t with one n x n matrix per task
    (`coefficients` `[E, T, n*n + n]`), so each sample costs n^2 multiply-adds, not (Z + 1) n^2."""
    E, B, n, T = max(h.shape[0], coefficients.shape[0]), h.shape[1], h.shape[2], layout.num_tasks
    coefficients, h = ensemble.to_ensemble(coefficients, E), ensemble.to_ensemble(h, E)
    matrices = coefficients[..., :n * n].reshape(E, T, n, n).transpose(-1, -2)    # h @ M^T, row vectors
    beta = coefficients[..., n * n:]
    if layout.major:
        out = torch.bmm(h.reshape(E * T, B // T, n), matrices.reshape(E * T, n, n)) + beta.reshape(E * T, 1, n)
        return out.reshape(E, B, n)
    return layout.by_task(lambda t, samples: samples @ matrices[:, t] + beta[:, t:t + 1], h)


def _affine_reference(p: dict[str, Tensor], h: Tensor, z: Tensor, **_) -> Tensor:
    n = h.shape[0]
    matrix = (z @ p["matrix_weight"] + p["matrix_bias"]).reshape(n, n)
    return matrix @ h + z @ p["shift_weight"] + p["shift_bias"]


register(OpDef(
    "affine", "D-Grad (A): M(z) h + beta(z), M and beta linear in z; (z + 1)(h² + h) parameters", lambda w, a: w[0],
    _affine, _affine_reference, inputs=(2, 2), input_names=("h", "z"), params=_affine_params, linear_in_params=True,
    parts={"coefficients": _affine_coefficients}, task_rows=affine_rows,
    examples=("affine(x, z)", "affine(x, onehot(task))")))
