"""The reference interpreter: a spec's executable meaning, one sample and one ensemble member at a time.

Slow and plain on purpose: per-sample vectors, each op's own reference implementation (its registry
definition's, written apart from its ensemble one), and bank parameters composed as theta_t = sum_k w[t, k]
Phi_k by a Python sum. The compiled networks are tested equal to it, outputs and gradients.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from .. import registry
from .build import AgentNets
from ..ir import info


def reference_trunk(nets: AgentNets, role: str, obs: Tensor, task: Tensor, act: Tensor | None = None) -> Tensor:
    """`role`'s trunk output, `[E, B, out]`, computed sample by sample from the same parameters."""
    g = nets.graph
    ensemble = 2 if role == "critic" else 1
    rows = []
    for e in range(ensemble):
        rows.append(torch.stack([_sample(nets, info(g).trunk(role), e, obs[b], int(task[b]),
                                         act[b] if act is not None else None) for b in range(obs.shape[0])]))
    return torch.stack(rows)


def _sample(nets: AgentNets, order, e: int, obs: Tensor, t: int, act: Tensor | None) -> Tensor:
    v: dict[str, Any] = {}   # tensors; None for what the trunk does not read as a tensor (the task id, act)
    for n in order:
        xs = [v[i] for i in n.inputs]
        if n.op == "input":
            v[n.id] = {"obs": obs, "act": act, "task": None}[n.attrs["name"]]
            continue
        if n.op == "output":
            return xs[0]
        op = registry.get(n.op)
        params = [_params(nets, n.module, e, t)] if n.module is not None else []
        if op.reads_task:
            table = {"metadata": _task_metadata(nets)} if op.reads_metadata else {}
            v[n.id] = op.reference(*params, task=t, **n.attrs, **table).to(obs.device)
        else:
            v[n.id] = op.reference(*params, *xs, **n.attrs)
    raise AssertionError("trunk without output")


def _task_metadata(nets: AgentNets) -> Tensor:
    """meta(task)'s table, [T, M], held by the trunk that reads it."""
    actor, critic = nets.actor.trunk.graph_module, nets.critic.trunk.graph_module
    return cast(Tensor, (actor if hasattr(actor, "task_metadata") else critic).task_metadata)


def _params(nets: AgentNets, module: str, e: int, t: int) -> dict[str, Tensor]:
    """One sample's parameters: its ensemble member's copy for its task, composed for a bank."""
    op = nets.op_modules[module]
    out = {}
    for name, p in op.params.items():
        p = p[e] if p.shape[0] > 1 else p[0]
        if op.sharing == "shared":
            out[name] = p[0]
        elif op.sharing == "task":
            out[name] = p[t]
        else:
            w = op.table
            assert w is not None, "a bank module is built with its composition table"
            out[name] = sum(w[t, k] * p[k] for k in range(p.shape[0]))
    return out
