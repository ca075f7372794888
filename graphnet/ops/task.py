"""The ops that read the task id: forward gets the batch's layout (`.task`, `.num_tasks`), reference the
sample's task. Their values depend on the task alone, so the compiler computes them (and what is computed
from them alone) on one row per task (see compiler/task_rows)."""
from __future__ import annotations

from typing import Any

from ..registry import OpDef, Param, register
from ._torch import F, Tensor, torch


def onehot(layout: Any, **_) -> Tensor:
    """`[1, B, T]`."""
    return F.one_hot(layout.task, layout.num_tasks).to(torch.get_default_dtype()).unsqueeze(0)


def _onehot_reference(task: int, T: int, **_) -> Tensor:
    return torch.tensor([1.0 if i == task else 0.0 for i in range(T)])


def meta(layout: Any, metadata: Tensor, **_) -> Tensor:
    """Rows of the fixed per-task table, `[1, B, META]`."""
    return metadata[layout.task].unsqueeze(0)


def _meta_reference(task: int, metadata: Tensor, **_) -> Tensor:
    return metadata[task]


def _embed(p: dict[str, Tensor], layout: Any, **_) -> Tensor:
    """p["table"] is `[E, T, out]`, every task's row: each sample's own."""
    return p["table"][:, layout.task]


def _embed_reference(p: dict[str, Tensor], task: int, **_) -> Tensor:
    return p["table"]      # the sample's task's copy


register(OpDef("onehot", "the task id as a one-hot vector of width T", lambda w, a: a["T"], onehot,
               _onehot_reference, inputs=(0, 0), reads_task=True))
register(OpDef("meta", "the task's fixed metadata embedding (width META), e.g. a sentence embedding of its "
               "description", lambda w, a: a["META"], meta, _meta_reference, inputs=(0, 0), reads_task=True,
               reads_metadata=True))
register(OpDef("embed", "a learned embedding of the task id (one row per task)", lambda w, a: a["out"], _embed,
               _embed_reference, inputs=(0, 0), params=lambda w, a: {"table": Param((a["out"],), "normal")},
               arrow=True, reads_task=True, sharing="task"))
