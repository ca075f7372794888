"""Graph -> torch.fx: one GraphModule per trunk, built node by node (not traced), readable code."""
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
    nodes = trunk_nodes(g, out or g.graph["outputs"][role])
    for n in nodes:
        args = [values[i] for i in n.inputs]
        name = re.sub(r"\W", "_", n.label or n.op)

        def emit(kind: str, target, arguments: tuple, kwargs: dict | None = None) -> fx.Node:
            return graph.create_node(kind, target, arguments, kwargs or {}, name=name)

        if n.op == "input":
            source = n.attrs["name"]
            values[n.id] = layout if source == "task" else emit("call_function", features, (placeholders[source],))
            continue
        if n.op == "output":
            graph.output(args[0])
            break
        if n.module is not None:
            if n.module not in names:
                names[n.module] = _unique(attr_name(n.module), root)
                root.add_module(names[n.module], op_modules[n.module])
            ins = tuple(args) if n.op != "embed" else ()
            values[n.id] = emit("call_module", names[n.module], ins, {"layout": layout})
        elif n.op == "onehot":
            values[n.id] = emit("call_function", onehot, (layout,))
        elif n.op == "meta":
            table = graph.create_node("get_attr", "task_metadata", (), {})
            values[n.id] = emit("call_function", lookup, (table, layout))
        elif n.op == "concat":
            values[n.id] = emit("call_function", ops.cat, (args,))
        elif n.op == "scale":
            values[n.id] = emit("call_function", ops.scale, (args[0], n.attrs["factor"]))
        else:
            values[n.id] = emit("call_function", ops.STATELESS[n.op], tuple(args))
    if nodes[-1].op != "output":  # a feature: its own node is the result
        graph.output(values[nodes[-1].id])
    graph.lint()
    return fx.GraphModule(root, graph, class_name=f"{role.capitalize()}Trunk")


def _unique(name: str, root: nn.Module) -> str:
    candidate, i = name, 1
    while hasattr(root, candidate):
        i += 1
        candidate = f"{name}_{i}"
    return candidate
