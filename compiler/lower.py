"""Graph -> torch.fx: one GraphModule per trunk, built node by node (not traced), readable code.

Values that depend on the task alone are computed once per task, on T rows (see task_rows)."""
from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from typing import cast

import networkx as nx
from torch import Tensor, fx, nn

from .. import registry
from ..errors import UserOpError
from ..ir import STRUCTURE, info, trunk_nodes
from ..ops.basic import ADD
from ..ops.ensemble import aligned
from .modules import ParamOp, shared_input_linears
from .task_rows import per_task, to_samples


def features(x: Tensor) -> Tensor:
    """An input batch `[B, n]` as an ensemble of one, `[1, B, n]`; a group of seeds' `[S, B, n]` as it is."""
    return x if x.dim() == 3 else x.unsqueeze(0)


def attr_name(module_id: str) -> str:
    """A module id such as `actor/trunk/i=0/linear#2` as a Python attribute: `trunk_i0_linear_2`."""
    parts = module_id.split("/")[1:] or module_id.split("/")
    return re.sub(r"\W+", "_", "_".join(parts).replace("=", "")).strip("_") or "module"


def lower(g: nx.DiGraph, role: str, op_modules: dict[str, ParamOp], meta: Tensor | None,
          out: str | None = None, seeds: int = 1) -> fx.GraphModule:
    """Build the fx graph of `role`'s trunk (or of node `out`): `forward(obs, [act,] layout) -> [E, B, out]`.
    `seeds`: the modules hold a group of that many seeds (build's `seeds`)."""
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

    def at_samples(node_id: str) -> fx.Node:
        if node_id not in task_only:
            return values[node_id]
        if node_id not in sampled:
            sampled[node_id] = graph.create_node("call_function", to_samples, (values[node_id], layout), {},
                                                 name=f"{values[node_id].name}_per_sample")
        return sampled[node_id]

    nodes = trunk_nodes(g, out) if out else info(g).trunk(role)
    reads_task = any(n.op not in STRUCTURE and registry.get(n.op).reads_task for n in nodes)
    rows = graph.create_node("call_function", per_task, (layout,), {}, name="tasks") if reads_task else None
    for n in nodes:
        name = re.sub(r"\W", "_", n.label or n.op)

        def emit(kind: str, target, arguments: tuple, kwargs: dict | None = None, name: str = name) -> fx.Node:
            return graph.create_node(kind, target, arguments, kwargs or {}, name=name)

        if n.op == "output":
            graph.output(at_samples(n.inputs[0]))
            break
        if n.op == "input":
            source = n.attrs["name"]
            values[n.id] = layout if source == "task" else emit("call_function", features, (placeholders[source],))
            continue
        op = registry.get(n.op)
        of_task = op.task_rows is not None and n.inputs[1] in task_only and n.inputs[0] not in task_only
        if op.reads_task or (n.inputs and all(i in task_only for i in n.inputs)):
            task_only.add(n.id)
            args, this_layout = [values[i] for i in n.inputs], rows
        else:   # FiLM or affine of a task-only z reads z's rows itself (its task_rows)
            args, this_layout = [at_samples(i) for i in n.inputs[:1 if of_task else None]], layout
        if n.module is not None and n.module not in names:
            names[n.module] = _unique(attr_name(n.module), root)
            root.add_module(names[n.module], op_modules[n.module])
        if of_task:
            assert n.module is not None, "FiLM and affine have parameters"
            coefficients = graph.create_node("call_module", names[n.module], (values[n.inputs[1]],),
                                             {"layout": rows, "part": "coefficients"}, name=f"{name}_coefficients")
            values[n.id] = emit("call_function", op.task_rows, (args[0], coefficients, layout))
        elif n.module is not None and op.source != "graphnet":
            module = graph.create_node("get_attr", names[n.module], (), {})
            ins = tuple(args) if not op.reads_task else ()
            values[n.id] = emit("call_function", guarded_module, (module, *ins),
                                {"layout": this_layout, "op": n.op, "at": str(n.pos), "width": n.width})
        elif n.module is not None:
            ins = tuple(args) if not op.reads_task else ()
            values[n.id] = emit("call_module", names[n.module], ins, {"layout": this_layout})
        elif op.reads_task:
            table = {"metadata": graph.create_node("get_attr", "task_metadata", (), {})} if op.reads_metadata else {}
            values[n.id] = emit("call_function", op.forward, (this_layout,), {**n.attrs, **table})
        else:   # a user's op is called checked (guarded)
            checks = {} if op.source == "graphnet" else {"op": n.op, "at": str(n.pos), "width": n.width}
            values[n.id] = emit("call_function", guarded(op.forward) if checks else op.forward, tuple(args),
                                {**n.attrs, **checks})
            values[n.id].meta["op"] = n.op
        values[n.id].meta["width"] = n.width
    if nodes[-1].op != "output":  # a feature: its own node is the result
        graph.output(at_samples(nodes[-1].id))
    in_place(graph, root)
    pad_widths(graph, root)
    shared_inputs(graph, root)
    if seeds > 1:
        align_seeds(graph)
    graph.lint()
    return fx.GraphModule(root, graph, class_name=f"{role.capitalize()}Trunk")


def in_place(graph: fx.Graph, root: nn.Module) -> None:
    """Two rewrites that each save a fresh [E, B, width] tensor and a pass over it:

    - `linear_a(x) + linear_b(y)`, each output read by that sum alone, becomes `linear_b(y, accumulate=
      linear_a(x))`: b's product is added into a's output in place (one baddbmm_). PTSL's every layer.
    - a relu of a linear's output that nothing else reads runs in place (a linear's backward never reads
      its own output), as nn.ReLU(inplace=True) would.

    Measured side by side, fwd+bwd: the first makes PTSL 4-5 % faster at one thread, 6-8 % at two; the
    second MT-SAC, multi-head SAC and FiLM 4-5 %, PaCo 1 % (bench's dense MLP relus in place too)."""
    def linear_output(node: object) -> bool:
        return isinstance(node, fx.Node) and len(node.users) == 1 and _linear(node, root) is not None

    for add in [n for n in graph.nodes if n.target is ADD.forward]:
        a, b = add.args
        if a is b or not all(linear_output(x) and "accumulate" not in x.kwargs for x in (a, b)):
            continue
        if "bias" in _param_op(b, root).params and "bias" not in _param_op(a, root).params:
            a, b = b, a     # the bias-free product is the one added in place
        with graph.inserting_before(add):   # after a and after b's own inputs; named as the sum was
            fused = graph.create_node("call_module", b.target, b.args, {**b.kwargs, "accumulate": a}, name=add.name)
        fused.meta = dict(add.meta)
        add.replace_all_uses_with(fused)
        graph.erase_node(add)
        graph.erase_node(b)
    for node in list(graph.nodes):
        op = _stateless_op(node)
        if op is not None and op.in_place is not None and linear_output(node.args[0]):
            node.target = op.in_place


def _stateless_op(node: fx.Node) -> registry.OpDef | None:
    """The parameter-free op a node applies (its forward, or its in-place form), or None."""
    return registry.get(node.meta["op"]) if "op" in node.meta else None


def _zero_preserving(node: fx.Node) -> bool:
    """An elementwise op that maps zeros to zeros, of inputs of its own width (not a width-1 value broadcast):
    a zero-padded width stays zero through it."""
    op = _stateless_op(node)
    return op is not None and op.zero_preserving and all(
        a.meta.get("width") == node.meta["width"] for a in node.args if isinstance(a, fx.Node))


def pad_widths(graph: fx.Graph, root: nn.Module, multiple: int = 8, least: int = 100) -> None:
    """Hidden widths of at least `least` that are not a multiple of `multiple` compute at the next multiple.

    MKL's GEMMs run 15-20 % slower per multiply-add at such widths (367 -> 368: 148 -> 176 GMAC/s, one layer's
    fwd, 2 threads), and published and `graphnet match`-ed widths often are such (PTSL's 367). A width is
    padded only where every tensor of it is made by a linear or a zero-preserving elementwise op and read by
    linears or such ops: the linears compute with zero rows and columns appended to their weights (`pad =
    (rows, columns)` in the printed code), so the extra features are exactly zero, get zero gradients, and
    the parameters keep their shapes."""
    def is_linear(node: fx.Node) -> bool:
        return _linear(node, root) is not None

    group: dict[fx.Node, fx.Node] = {}      # union-find: tensors that must share one padding

    def find(node: fx.Node) -> fx.Node:
        while group.setdefault(node, node) is not node:
            node = group[node]
        return node

    tensors = [n for n in graph.nodes if "width" in n.meta]
    for n in tensors:
        tied = [a for a in n.args if isinstance(a, fx.Node) and a.meta.get("width") == n.meta["width"]]
        if _zero_preserving(n) or (is_linear(n) and "accumulate" in n.kwargs):
            for a in tied + ([n.kwargs["accumulate"]] if "accumulate" in n.kwargs else []):
                group[find(a)] = find(n)

    def reads_safely(user: fx.Node, n: fx.Node) -> bool:
        return _zero_preserving(user) or (
            is_linear(user) and (user.args[0] is n or user.kwargs.get("accumulate") is n))

    blocked = {find(n) for n in tensors
               if not (is_linear(n) or _zero_preserving(n)) or not all(reads_safely(u, n) for u in n.users)}
    extra = {n: -n.meta["width"] % multiple for n in tensors
             if find(n) not in blocked and n.meta["width"] >= least}
    for n in [n for n in tensors if is_linear(n)]:
        rows = extra.get(n.args[0], 0) if isinstance(n.args[0], fx.Node) else 0
        if rows or extra.get(n, 0):
            n.kwargs = {**n.kwargs, "pad": (rows, extra.get(n, 0))}


def shared_inputs(graph: fx.Graph, root: nn.Module) -> None:
    """Two shared linears reading one tensor become one `shared_input_linears` call: x's gradient is one
    product accumulated into the other in place, not two products and their sum. PTSL's SH_i(h) and P_down(h)
    at every layer: PTSL fwd+bwd 0.949 (2 threads) / 0.926 (1), CARE + PTSL 0.972 / 0.940, side by side."""
    def plain_shared_linear(user: fx.Node, x: fx.Node) -> bool:
        linear = _linear(user, root)
        return (linear is not None and linear.sharing == "shared" and user.args == (x,)
                and "accumulate" not in user.kwargs)

    place = {n: i for i, n in enumerate(graph.nodes)}
    for x in list(graph.nodes):
        readers = sorted((u for u in x.users if plain_shared_linear(u, x)), key=place.__getitem__)
        if len(readers) < 2:
            continue
        a, b = readers[:2]
        with graph.inserting_before(a):
            modules = (graph.get_attr(a.target), graph.get_attr(b.target))
            both = graph.call_function(shared_input_linears, (x, *modules, a.kwargs.get("pad", (0, 0)),
                                                              b.kwargs.get("pad", (0, 0))))
            outputs = [graph.create_node("call_function", operator.getitem, (both, i), {}, name=linear.name)
                       for i, linear in enumerate((a, b))]
        for linear, output in zip((a, b), outputs):
            linear.replace_all_uses_with(output)
            graph.erase_node(linear)


def guarded_module(module: nn.Module, *xs: Tensor, op: str, at: str, width: int, **kwargs) -> Tensor:
    """A user's parametric op: its output checked, its errors reported at the spec position that called it."""
    return _checked(lambda: module(*xs, **kwargs), op, at, width)


@functools.cache
def guarded(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A user's parameter-free op `fn`, checked as guarded_module checks a parametric one."""
    def call(*xs: Tensor, op: str, at: str, width: int, **attrs) -> Tensor:
        return _checked(lambda: fn(*xs, **attrs), op, at, width)
    call.__name__ = call.__qualname__ = f"{fn.__name__.strip('_')}_checked"
    return call


def _checked(run: Callable[[], Tensor], op: str, at: str, width: int) -> Tensor:
    try:
        out = run()
    except Exception as e:
        file, line = registry.user_frame(e)
        raise UserOpError(f"{at}: op '{op}' raised {type(e).__name__}: {e} (at {file}:{line})") from e
    if not isinstance(out, Tensor) or out.dim() != 3 or out.shape[-1] != width:
        got = f"shape {list(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise UserOpError(f"{at}: op '{op}' returned {got}; it must return [ensemble, batch, {width}] (its width "
                          "rule's width)")
    return out


def align_seeds(graph: fx.Graph) -> None:
    """In a group of seeds, a seed's value may meet its twin critics' (`[S, ...]` and `[2S, ...]`), which
    torch's broadcasting cannot pair: a parameter-free op of several inputs gets them aligned first. A single
    agent's broadcast as torch does (an aligned copy costs an autograd node)."""
    for node in graph.nodes:
        if _stateless_op(node) is not None and len(node.args) > 1:
            node.target = seed_aligned(cast(Callable, node.target))


@functools.cache
def seed_aligned(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`fn` of its inputs on one ensemble size (ensemble.aligned)."""
    def call(*xs: Tensor, **attrs) -> Tensor:
        return fn(*aligned(*xs), **attrs)
    call.__name__ = call.__qualname__ = f"{fn.__name__.strip('_')}_seed_aligned"
    return call


def _linear(node: fx.Node, root: nn.Module) -> ParamOp | None:
    """The linear a node calls (the whole op, not a part of one), or None: what the rewrites above match."""
    if node.op != "call_module" or "part" in node.kwargs:
        return None
    module = _param_op(node, root)
    return module if module.definition.dense_layer else None


def _param_op(node: fx.Node, root: nn.Module) -> ParamOp:
    """The ParamOp a call_module node of a lowered trunk calls (every module there is one)."""
    return cast(ParamOp, root.get_submodule(cast(str, node.target)))


def _unique(name: str, root: nn.Module) -> str:
    candidate, i = name, 1
    while hasattr(root, candidate):
        i += 1
        candidate = f"{name}_{i}"
    return candidate
