"""The reference interpreter: a spec's executable meaning, one sample and one ensemble member at a time.

Slow and plain on purpose: per-sample vectors, explicit loops over tasks, modules and experts, and
bank parameters composed as theta_t = sum_k w[t, k] Phi_k by a Python sum. The compiled networks are
tested equal to it, outputs and gradients.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .build import AgentNets
from .lower import trunk_nodes


def reference_trunk(nets: AgentNets, role: str, obs: Tensor, task: Tensor, act: Tensor | None = None) -> Tensor:
    """`role`'s trunk output, `[E, B, out]`, computed sample by sample from the same parameters."""
    g = nets.graph
    ensemble = 2 if role == "critic" else 1
    rows = []
    for e in range(ensemble):
        rows.append(torch.stack([_sample(nets, trunk_nodes(g, g.graph["outputs"][role]), e, obs[b], int(task[b]),
                                         act[b] if act is not None else None) for b in range(obs.shape[0])]))
    return torch.stack(rows)


def _sample(nets: AgentNets, order, e: int, obs: Tensor, t: int, act: Tensor | None) -> Tensor:
    T = nets.graph.graph["env"]["tasks"]
    v: dict[str, Any] = {}   # tensors; None for what the trunk does not read as a tensor (the task id, act)
    for n in order:
        xs = [v[i] for i in n.inputs]
        if n.op == "input":
            v[n.id] = {"obs": obs, "act": act, "task": None}[n.attrs["name"]]
        elif n.op == "output":
            return xs[0]
        elif n.module is not None:
            v[n.id] = _apply(n.op, n.attrs, _params(nets, n.module, e, t), xs)
        elif n.op == "onehot":
            v[n.id] = torch.eye(T, device=obs.device)[t]
        elif n.op == "meta":
            v[n.id] = _task_metadata(nets)[t]
        elif n.op == "concat":
            v[n.id] = torch.cat(xs)
        elif n.op == "scale":
            v[n.id] = xs[0] * n.attrs["factor"]
        else:
            v[n.id] = ELEMENTWISE[n.op](*xs)
    raise AssertionError("trunk without output")


ELEMENTWISE: dict[str, Callable[..., Tensor]] = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu, "elu": F.elu,
    "softmax": lambda x: torch.softmax(x, 0), "detach": Tensor.detach,
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b}


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


def _lin(p, x, prefix=""):
    y = x @ p[f"{prefix}weight"]
    return y + p[f"{prefix}bias"] if f"{prefix}bias" in p else y


def _apply(op: str, a: dict, p: dict[str, Tensor], xs: list[Tensor]) -> Tensor:
    if op == "linear":
        return _lin(p, xs[0])
    if op == "layernorm":
        x = xs[0]
        return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5) * p["scale"] + p["shift"]
    if op == "embed":
        return p["table"]
    if op == "combine":
        x, y = xs
        kind = a["kind"]
        if kind == "none":
            return x
        if kind == "add":
            return x + y
        if kind == "concat":
            return torch.cat([x, y])
        if kind == "sum":
            return p["alpha"] * x + p["beta"] * y
        if kind == "proj":
            return torch.cat([x, y]) @ p["weight"]
        s = torch.sigmoid(_lin(p, torch.cat([x, y])))
        return s * x + (1 - s) * y
    if op == "film":
        h, z = xs
        return _lin(p, z, "gamma_") * h + _lin(p, z, "beta_")
    if op == "affine":
        h, z = xs
        n = h.shape[0]
        return _lin(p, z, "matrix_").reshape(n, n) @ h + _lin(p, z, "shift_")
    if op == "router":
        return _router(p, xs[0], a["layers"], a["modules"])
    if op == "modular":
        return _modular(p, xs[0], xs[1], a["layers"], a["modules"])
    if op == "mixture":
        return _mixture(p, xs[0], xs[1], a["experts"], a["layers"])
    raise KeyError(op)


def _router(p, e, L, M):
    g = _lin(p, e, "gate_")
    if L == 1:
        return torch.softmax(_lin(p, torch.relu(g), "head1_"), 0)
    routings = []
    for l in range(1, L + 1):
        if l == 1:
            logits = _lin(p, torch.relu(g), "head1_")
        else:
            c = _lin(p, torch.cat(routings), f"cond{l}_")
            logits = _lin(p, torch.relu(c * g), f"head{l}_")
        if l < L:
            rows = [torch.softmax(logits[j * M:(j + 1) * M], 0) for j in range(M)]
            routings.append(torch.cat(rows))
        else:
            routings.append(torch.softmax(logits, 0))
    return torch.cat(routings)


def _modular(p, f, r, L, M):
    outs = [f @ p["weight1"][i] + p["bias1"][i] for i in range(M)]
    for l in range(2, L + 1):
        route = r[(l - 2) * M * M:(l - 1) * M * M]
        inputs = [torch.relu(sum(route[j * M + i] * outs[i] for i in range(M))) for j in range(M)]
        outs = [inputs[j] @ p[f"weight{l}"][j] + p[f"bias{l}"][j] for j in range(M)]
    final = r[(L - 1) * M * M:]
    return torch.relu(sum(final[j] * outs[j] for j in range(M)))


def _mixture(p, x, attention, k, layers):
    encodings = []
    for i in range(k):
        h = x @ p["weight1"][i] + p["bias1"][i]
        for l in range(2, layers + 1):
            h = torch.relu(h) @ p[f"weight{l}"][i] + p[f"bias{l}"][i]
        encodings.append(h)
    return sum(attention[i] * encodings[i] for i in range(k))
