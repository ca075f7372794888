"""Graph -> torch.fx: one GraphModule per trunk, built node by node (not traced), readable code.

Values that depend on the task alone (`onehot(task)`, `meta(task)`, `embed(task)` and whatever is computed
from them only, such as Soft Modularization's task embedding or CARE's context encoder) are computed once
per task, on T rows, and broadcast to the batch where a per-sample value first meets them."""
from __future__ import annotations

import re

import networkx as nx
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..ir import OpNode
from . import ops
from .modules import ParamOp, TaskLayout


def onehot(layout: TaskLayout) -> Tensor:
    """The task ids as one-hot features, `[1, B, T]`."""
    return F.one_hot(layout.task, layout.num_tasks).to(torch.get_default_dtype()).unsqueeze(0)


def lookup(table: Tensor, layout: TaskLayout) -> Tensor:
    """Rows of a fixed per-task table (metadata embeddings), `[1, B, width]`."""
    return table[layout.task].unsqueeze(0)


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
    gamma, beta = coefficients.chunk(2, -1)
    if not layout.major:
        return gamma[:, layout.task] * h + beta[:, layout.task]
    E, B, H = max(h.shape[0], coefficients.shape[0]), h.shape[1], h.shape[2]
    per_task = h.reshape(h.shape[0], layout.num_tasks, B // layout.num_tasks, H)
    return (per_task * gamma.unsqueeze(2) + beta.unsqueeze(2)).reshape(E, B, H)


def affine_rows(h: Tensor, coefficients: Tensor, layout: TaskLayout) -> Tensor:
    """D-Grad's affine whose z depends on the task alone: M_t h + beta_t with one n x n matrix per task
    (`coefficients` `[E, T, n*n + n]`), so each sample costs n^2 multiply-adds, not (Z + 1) n^2."""
    E, B, n, T = max(h.shape[0], coefficients.shape[0]), h.shape[1], h.shape[2], layout.num_tasks
    coefficients, h = coefficients.expand(E, -1, -1), h.expand(E, -1, -1)
    matrices = coefficients[..., :n * n].reshape(E, T, n, n).transpose(-1, -2)    # h @ M^T, row vectors
    beta = coefficients[..., n * n:]
    if layout.major:
        out = torch.bmm(h.reshape(E * T, B // T, n), matrices.reshape(E * T, n, n)) + beta.reshape(E * T, 1, n)
        return out.reshape(E, B, n)
    perm, counts, inverse = layout.order
    chunks = h[:, perm].split(counts, 1)
    outs = [chunks[t] @ matrices[:, t] + beta[:, t:t + 1] for t in range(T) if counts[t]]
    return torch.cat(outs, 1)[:, inverse]


# ops whose second input may depend on the task alone: the op's part that reads it runs on one row per
# task (ops.PARTS) and these apply the result to the samples
TASK_CONDITIONED = {"film": film_rows, "affine": affine_rows}


TASK_ONLY_SOURCES = {"onehot", "meta", "embed"}


def features(x: Tensor) -> Tensor:
    """An input batch `[B, n]` as an ensemble of one, `[1, B, n]`."""
    return x.unsqueeze(0)


def trunk_nodes(g: nx.DiGraph, out: str) -> list[OpNode]:
    """The nodes that compute node `out` (an output, or a named feature), in topological order."""
    keep = nx.ancestors(g, out) | {out}
    return [g.nodes[n]["data"] for n in nx.topological_sort(g) if n in keep]


def attr_name(module_id: str) -> str:
    """A module id such as `actor/trunk/i=0/linear#2` as a Python attribute: `trunk_i0_linear_2`."""
    parts = module_id.split("/")[1:] or module_id.split("/")
    return re.sub(r"\W+", "_", "_".join(parts).replace("=", "")).strip("_") or "module"


def lower(g: nx.DiGraph, role: str, op_modules: dict[str, ParamOp], meta: Tensor | None,
          out: str | None = None) -> fx.GraphModule:
    """Build the fx graph of `role`'s trunk (or of node `out`): `forward(obs, [act,] layout) -> [E, B, out]`."""
    root = nn.Module()
    graph = fx.Graph()
    names: dict[str, str] = {}
    placeholders = {"obs": graph.placeholder("obs")}
    if role == "critic":
        placeholders["act"] = graph.placeholder("act")
    layout = graph.placeholder("layout")
    if meta is not None:
        root.register_buffer("task_metadata", meta)
    values: dict[str, fx.Node] = {}
    task_only: set[str] = set()            # nodes whose value is [E, T, w], one row per task
    sampled: dict[str, fx.Node] = {}       # their broadcasts to the batch, made once where first needed
    rows: list[fx.Node] = []               # the per-task layout, made on first use

    def at_samples(node_id: str) -> fx.Node:
        if node_id not in task_only:
            return values[node_id]
        if node_id not in sampled:
            sampled[node_id] = graph.create_node("call_function", to_samples, (values[node_id], layout), {},
                                                 name=f"{values[node_id].name}_per_sample")
        return sampled[node_id]

    nodes = trunk_nodes(g, out or g.graph["outputs"][role])
    for n in nodes:
        name = re.sub(r"\W", "_", n.label or n.op)
        if n.op == "output":
            graph.output(at_samples(n.inputs[0]))
            break
        of_task = n.op in TASK_CONDITIONED and n.inputs[1] in task_only and n.inputs[0] not in task_only
        if n.op in TASK_ONLY_SOURCES or (n.op != "input" and n.inputs and all(i in task_only for i in n.inputs)):
            task_only.add(n.id)
            if not rows:
                rows.append(graph.create_node("call_function", per_task, (layout,), {}, name="tasks"))
            args, this_layout = [values[i] for i in n.inputs], rows[0]
        else:   # FiLM or affine of a task-only z reads z's rows itself (TASK_CONDITIONED)
            args, this_layout = [at_samples(i) for i in n.inputs[:1 if of_task else None]], layout

        def emit(kind: str, target, arguments: tuple, kwargs: dict | None = None) -> fx.Node:
            return graph.create_node(kind, target, arguments, kwargs or {}, name=name)

        if n.op == "input":
            source = n.attrs["name"]
            values[n.id] = layout if source == "task" else emit("call_function", features, (placeholders[source],))
            continue
        if n.module is not None and n.module not in names:
            names[n.module] = _unique(attr_name(n.module), root)
            root.add_module(names[n.module], op_modules[n.module])
        if of_task:
            coefficients = graph.create_node("call_module", names[n.module], (values[n.inputs[1]],),
                                             {"layout": rows[0], "part": "coefficients"}, name=f"{name}_coefficients")
            values[n.id] = emit("call_function", TASK_CONDITIONED[n.op], (args[0], coefficients, layout))
        elif n.module is not None:
            ins = tuple(args) if n.op != "embed" else ()
            values[n.id] = emit("call_module", names[n.module], ins, {"layout": this_layout})
        elif n.op == "onehot":
            values[n.id] = emit("call_function", onehot, (this_layout,))
        elif n.op == "meta":
            table = graph.create_node("get_attr", "task_metadata", (), {})
            values[n.id] = emit("call_function", lookup, (table, this_layout))
        elif n.op == "concat":
            values[n.id] = emit("call_function", ops.cat, (args,))
        elif n.op == "scale":
            values[n.id] = emit("call_function", ops.scale, (args[0], n.attrs["factor"]))
        else:
            values[n.id] = emit("call_function", ops.STATELESS[n.op], tuple(args))
    if nodes[-1].op != "output":  # a feature: its own node is the result
        graph.output(at_samples(nodes[-1].id))
    graph.lint()
    return fx.GraphModule(root, graph, class_name=f"{role.capitalize()}Trunk")


def _unique(name: str, root: nn.Module) -> str:
    candidate, i = name, 1
    while hasattr(root, candidate):
        i += 1
        candidate = f"{name}_{i}"
    return candidate
