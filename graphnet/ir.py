"""The graph IR: a networkx.DiGraph whose node and edge attributes are pydantic models."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict

from . import registry
from .errors import Pos

Role = Literal["actor", "critic", "common"]
SharingMode = Literal["shared", "task", "bank"]


class Module(BaseModel):
    """A group of parameters; every node that applies it shares them (a named module, a layer)."""

    model_config = ConfigDict(frozen=False)
    id: str
    op: str
    attrs: dict[str, Any]
    sharing: SharingMode
    copies: int                # 1 (shared), T (task) or K (bank)
    in_widths: list[int] | None = None   # fixed by the first call site
    per_copy: int              # parameters in one copy
    role: Role
    pos: Pos

    @property
    def total(self) -> int:
        return self.copies * self.per_copy

    @property
    def widths(self) -> list[int]:
        """Its input widths, for building it: every module of an elaborated graph has been called."""
        if self.in_widths is None:
            raise ValueError(f"module {self.id} was never called: it has no input widths")
        return self.in_widths


class OpNode(BaseModel):
    """One op application: its inputs (in port order), output width, and parameters (module)."""

    id: str
    op: str
    attrs: dict[str, Any] = {}
    inputs: list[str] = []
    width: int
    stack: int = 1                # a stack of k features: k members of width // k, side by side
    kind: Literal["features", "task_id"] = "features"
    module: str | None = None
    role: Role
    scope: tuple[str, ...] = ()   # e.g. ("actor", "trunk", "i=1"): blocks and repeat iterations
    label: str | None = None      # the spec name it was assigned to
    pos: Pos | None = None


class Edge(BaseModel):
    width: int
    ports: list[int]


def node(g: nx.DiGraph, node_id: str) -> OpNode:
    return g.nodes[node_id]["data"]


def nodes(g: nx.DiGraph) -> list[OpNode]:
    """Nodes in topological order (inputs before users)."""
    return [g.nodes[n]["data"] for n in nx.topological_sort(g)]


STRUCTURE = ("input", "output")   # graph nodes that are not ops (no registry definition)


def reads_metadata(ops: list[OpNode]) -> bool:
    """Whether these nodes read the tasks' metadata table (`meta(task)`): a run must then provide it."""
    return any(n.op not in STRUCTURE and registry.get(n.op).reads_metadata for n in ops)


@dataclass
class AgentInfo:
    """What an agent graph holds beyond its nodes, typed (networkx keeps it in `g.graph["agent"]`; read it with
    `info(g)`)."""

    graph: nx.DiGraph = field(repr=False)
    sizes: dict[str, int]                                   # obs, act, tasks, meta
    params: dict[str, Any]                                  # the resolved param values
    modules: dict[str, Module] = field(default_factory=dict)   # parameter groups by id
    outputs: dict[str, str] = field(default_factory=dict)      # actor, critic -> their output node
    features: dict[str, str] = field(default_factory=dict)     # agent-level named features -> node
    bank: dict[str, Any] | None = None                      # K, init, w (and pos) of the agent's one bank table
    target: Literal["shared", "copy"] = "shared"            # agent(target = ...)

    def trunk(self, role: str) -> list[OpNode]:
        """The nodes that compute `role`'s output (actor, critic), inputs first."""
        return trunk_nodes(self.graph, self.outputs[role])


def trunk_nodes(g: nx.DiGraph, out: str) -> list[OpNode]:
    """The nodes that compute node `out` (an output, or a named feature), in topological order."""
    keep = nx.ancestors(g, out) | {out}
    return [g.nodes[n]["data"] for n in nx.topological_sort(g) if n in keep]


def info(g: nx.DiGraph) -> AgentInfo:
    return g.graph["agent"]


def new_graph(sizes: dict[str, int], params: dict[str, Any]) -> nx.DiGraph:
    """An empty agent graph with its AgentInfo."""
    g = nx.DiGraph()
    g.graph["agent"] = AgentInfo(g, dict(sizes), dict(params))
    return g


def modules(g: nx.DiGraph) -> dict[str, Module]:
    return info(g).modules
