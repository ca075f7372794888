"""Values that depend on the task alone, computed on one row per task instead of one per sample.

`onehot(task)`, `meta(task)`, `embed(task)` and whatever is computed from them only (Soft Modularization's
task embedding, CARE's context encoder) are `[E, T, w]`: the lowering broadcasts them to the batch where a
per-sample value first meets them. FiLM and D-Grad's affine of such a value go further: their
coefficients (gamma and beta; the matrix M and beta) are built per task and applied per task."""
from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .modules import TaskLayout

TASK_ONLY_SOURCES = {"onehot", "meta", "embed"}


def per_task(layout: TaskLayout) -> TaskLayout:
    """One row per task, task 0 first: the layout task-only values are computed on."""
    return TaskLayout(torch.arange(layout.num_tasks, device=layout.task.device), layout.num_tasks, True)


def to_samples(rows: Tensor, layout: TaskLayout) -> Tensor:
    """A task-only value `[E, T, w]` at each sample's row, `[E, B, w]` (on a task-major batch a broadcast,
    whose backward is a plain sum; otherwise a gather)."""
    if not layout.major:
        return rows[:, layout.task]
    E, T, w = rows.shape
    n = layout.task.shape[0] // T
    return rows.unsqueeze(2).expand(E, T, n, w).reshape(E, T * n, w)


def film_rows(h: Tensor, coefficients: Tensor, layout: TaskLayout) -> Tensor:
    """FiLM whose z depends on the task alone: gamma_t * h + beta_t from per-task coefficients `[E, T, 2H]`,
    on a task-major batch without a per-sample copy of them (the linears ran on T rows, not B)."""
    if h.shape[0] != coefficients.shape[0] and 1 not in (h.shape[0], coefficients.shape[0]):
        h, coefficients = ops.aligned(h, coefficients)   # a seed's value with its twin critics'
    if not layout.major:
        gamma, beta = to_samples(coefficients, layout).chunk(2, -1)
        return gamma * h + beta
    gamma, beta = coefficients.chunk(2, -1)
    E, B, H = max(h.shape[0], coefficients.shape[0]), h.shape[1], h.shape[2]
    per_task = h.reshape(h.shape[0], layout.num_tasks, B // layout.num_tasks, H)
    return (per_task * gamma.unsqueeze(2) + beta.unsqueeze(2)).reshape(E, B, H)


def affine_rows(h: Tensor, coefficients: Tensor, layout: TaskLayout) -> Tensor:
    """D-Grad's affine whose z depends on the task alone: M_t h + beta_t with one n x n matrix per task
    (`coefficients` `[E, T, n*n + n]`), so each sample costs n^2 multiply-adds, not (Z + 1) n^2."""
    E, B, n, T = max(h.shape[0], coefficients.shape[0]), h.shape[1], h.shape[2], layout.num_tasks
    coefficients, h = ops.to_ensemble(coefficients, E), ops.to_ensemble(h, E)
    matrices = coefficients[..., :n * n].reshape(E, T, n, n).transpose(-1, -2)    # h @ M^T, row vectors
    beta = coefficients[..., n * n:]
    if layout.major:
        out = torch.bmm(h.reshape(E * T, B // T, n), matrices.reshape(E * T, n, n)) + beta.reshape(E * T, 1, n)
        return out.reshape(E, B, n)
    return layout.by_task(lambda t, samples: samples @ matrices[:, t] + beta[:, t:t + 1], h)


# ops whose second input may depend on the task alone: the op's part that reads it runs on one row per
# task (ops.PARTS) and these apply the result to the samples
TASK_CONDITIONED = {"film": film_rows, "affine": affine_rows}
