"""Values that depend on the task alone, computed on one row per task instead of one per sample.

The ops that read the task (`onehot`, `meta`, `embed`) and whatever is computed from them only (Soft
Modularization's task embedding, CARE's context encoder) are `[E, T, w]`: the lowering broadcasts them to the
batch where a per-sample value first meets them. An op with a `task_rows` rule (FiLM, D-Grad's affine) of such
a value goes further: its coefficients are built per task and applied per task."""
from __future__ import annotations

import torch
from torch import Tensor

from .modules import TaskLayout


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
