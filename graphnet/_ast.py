"""The spec's syntax tree: plain dataclasses, each carrying its source position."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Pos


@dataclass(frozen=True)
class Node:
    pos: Pos


# --- expressions -------------------------------------------------------------------------

@dataclass(frozen=True)
class Num(Node):
    value: int | float


@dataclass(frozen=True)
class Str(Node):
    value: str


@dataclass(frozen=True)
class Bool(Node):
    value: bool


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class Unary(Node):
    op: str  # "-" or "not"
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str  # + - * / == != < <= > >= and or
    left: Node
    right: Node


@dataclass(frozen=True)
class Kwarg(Node):
    name: str
    value: Node


@dataclass(frozen=True)
class Arrow(Node):
    """`src -> width` inside a call: the input (optional) and the output width."""

    src: Node | None
    width: Node


@dataclass(frozen=True)
class Sharing(Node):
    kind: str  # shared | task | bank | stack
    args: tuple = ()


@dataclass(frozen=True)
class Call(Node):
    callee: tuple[str, ...]
    args: tuple = ()
    sharing: Sharing | None = None


# --- statements --------------------------------------------------------------------------

@dataclass(frozen=True)
class Assign(Node):
    name: str
    value: Node


@dataclass(frozen=True)
class Repeat(Node):
    var: str
    count: Node
    body: tuple


@dataclass(frozen=True)
class If(Node):
    cond: Node
    then: tuple
    orelse: tuple = ()


# --- top level ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Import(Node):
    target: str
    is_path: bool
    alias: str


@dataclass(frozen=True)
class Param(Node):
    name: str
    default: Node
    choices: tuple | None = None
    free: bool = False


@dataclass(frozen=True)
class Block(Node):
    name: str
    inputs: tuple[str, ...]
    out: str
    out_default: Node | None
    body: tuple
    settings: tuple[tuple[str, Node], ...] = ()     # keyword settings and their defaults: block f(x, k = 2)


@dataclass(frozen=True)
class Agent(Node):
    body: tuple
    options: tuple = ()     # keyword arguments of the section: agent(target = copy) { ... }


@dataclass(frozen=True)
class TrainItem(Node):
    name: str
    value: Node


@dataclass(frozen=True)
class SpecFile:
    path: str
    imports: list[Import] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    blocks: dict[str, Block] = field(default_factory=dict)
    agent: Agent | None = None
    train: list[TrainItem] = field(default_factory=list)
