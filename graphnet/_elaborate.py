"""Syntax tree + param values + environment sizes -> the checked, width-inferred graph.

Blocks are instantiated at each call, repeats unrolled, names resolved, widths inferred and every
problem collected (an expression that fails yields `POISON`, which silences the errors that would
follow from it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, cast

import networkx as nx

from . import _ast as A
from .errors import (CycleError, OpArgError, OpError, ParamError, Pos, SpecError, UnknownName, Warning_, WidthError,
                     did_you_mean)
from .ir import Edge, Module, OpNode, Role, info, new_graph
from . import registry

MAX_REPEAT = 10_000
ENV_SYMBOLS = {"OBS": "observation size", "ACT": "action size", "T": "number of tasks",
               "META": "width of the task metadata embedding"}
INPUTS = ("obs", "act", "task")
AGENT_OPTIONS = {"target": ("shared", "copy")}   # agent(NAME = VALUE) { ... }: the first value is the default


class _Poison:
    def __repr__(self):
        return "POISON"


POISON = _Poison()


@dataclass(frozen=True)
class Symbol:
    """A bare word that names nothing in scope: a choice value such as `none` or `onehot`."""

    name: str
    pos: Pos


@dataclass(frozen=True)
class Tensor:
    node: str
    width: int                  # all of it: a stack of k members of width W is k * W
    kind: str = "features"
    stack: int = 1


@dataclass(frozen=True)
class Template:
    """A parametric op defined without input: a named module, shared by every call site."""

    module: str
    op: str
    attrs: dict
    in_width: int | None
    pos: Pos


@dataclass
class Env:
    obs: int = 39
    act: int = 4
    tasks: int = 10
    meta: int = 768


@dataclass
class FileScope:
    """What one spec file makes visible: its blocks and its imports (alias -> FileScope)."""

    spec: A.SpecFile
    imports: dict[str, FileScope] = field(default_factory=dict)


@dataclass
class Scope:
    vars: dict[str, Any]
    file: FileScope
    path: tuple[str, ...]
    sharing: A.Sharing | None = None
    target: str | None = None   # actor / critic while elaborating the agent's outputs


class Elaborator:
    def __init__(self, root: FileScope, params: dict[str, Any], param_choices: dict[str, tuple], env: Env,
                 op_sources: set[str] | None = None):
        self.root, self.params, self.choices, self.env = root, params, param_choices, env
        self.op_sources = op_sources or {"graphnet"}     # where the ops it may call come from (op files imported)
        self.g = new_graph(vars(env), params)
        self.errors: list[SpecError] = []
        self.warnings: list[SpecError] = []
        self.assigned: list[tuple[str, str, Pos]] = []   # (name, node id, position) of created nodes
        self.stack: list[tuple[str, str]] = []
        self.calls: list[tuple[str, Pos]] = []             # the block calls being elaborated: (block, call site)
        self.sites: dict[int, list[tuple[str, Pos]]] = {}  # id(error) -> the block calls it was met in
        self.inputs: dict[str, Tensor] = {}
        self.features: dict[str, str] = {}                 # agent-level named features -> node id
        self.output_pos: dict[str, Pos] = {}

    # ----------------------------------------------------------------------------- entry point
    def run(self) -> nx.DiGraph:
        agent = self.root.spec.agent
        if agent is None:
            self.errors.append(SpecError("the spec has no agent section",
                                         Pos(self.root.spec.path, 1, 1),
                                         "add: agent { actor = ...  critic = ... }"))
            return self.g
        self._agent_options(agent)
        scope = Scope({}, self.root, ())
        self.exec_body(agent.body, scope, agent=True)
        for role in ("actor", "critic"):
            if role not in info(self.g).outputs and not self.errors:
                self.errors.append(SpecError(f"the agent section does not define the {role}", agent.pos,
                                             f"add a line: {role} = <trunk>(...)"))
        if "critic" in info(self.g).outputs:    # whatever else is wrong: every agent error at once
            self._check_critic_reads_action(self.output_pos["critic"])
        if not self.errors:
            self._assign_roles_and_prune()
        self.errors = self._merged(self.errors)
        return self.g

    def _merged(self, errors: list[SpecError]) -> list[SpecError]:
        """One report per place and message; a mistake inside a block met at several of its calls names them."""
        groups: dict[tuple, list[SpecError]] = {}
        for err in errors:
            groups.setdefault((type(err), str(err.pos), err.message), []).append(err)
        out = []
        for same in groups.values():
            first = same[0]
            sites = list(dict.fromkeys(site for err in same for site in self.sites.get(id(err), [])))
            if len(sites) > 1:
                file = first.pos.file if first.pos else None
                where = ", ".join(str(pos.line) if pos.file == file else str(pos) for _, pos in sites)
                note = f"in block '{sites[0][0]}', called at lines {where}"
                first.hint = f"{first.hint}; {note}" if first.hint else note
            out.append(first)
        return out

    def _agent_options(self, agent: A.Agent) -> None:
        """`agent(target = shared|copy)`: whether the critic's target reads the live common features (shared,
        the default) or a Polyak-averaged copy of them (copy, as CARE's reference implementation keeps)."""
        for opt in agent.options:
            if not isinstance(opt, A.Kwarg) or opt.name not in AGENT_OPTIONS:
                name = opt.name if isinstance(opt, A.Kwarg) else None
                self.errors.append(OpError(f"the agent section has no option '{name}'" if name else
                                           "the agent section takes named options: agent(target = copy)", opt.pos,
                                           did_you_mean(name, AGENT_OPTIONS) if name else None))
            elif not isinstance(opt.value, A.Name) or opt.value.id not in AGENT_OPTIONS[opt.name]:
                self.errors.append(OpError(f"agent option {opt.name} is one of: " +
                                           ", ".join(AGENT_OPTIONS[opt.name]), opt.value.pos))
            else:
                setattr(info(self.g), opt.name, opt.value.id)

    # ----------------------------------------------------------------------------- statements
    def exec_body(self, body, scope: Scope, agent: bool = False) -> None:
        for stmt in body:
            if isinstance(stmt, A.Assign):
                self.exec_assign(stmt, scope, agent)
            elif isinstance(stmt, A.Repeat):
                count = self.number(stmt.count, scope, "a repeat count", whole=True, minimum=0)
                if count is POISON:
                    continue
                if count > MAX_REPEAT:
                    self.errors.append(ParamError(f"repeat count {count} is too large (at most {MAX_REPEAT})",
                                                  stmt.count.pos))
                    continue
                for i in range(count):
                    scope.vars[stmt.var] = i
                    inner = replace(scope, path=scope.path + (f"{stmt.var}={i}",))
                    self.exec_body(stmt.body, inner, agent)
            elif isinstance(stmt, A.If):
                cond = self.ev(stmt.cond, scope)
                if cond is POISON:
                    continue
                if not isinstance(cond, bool):
                    self.errors.append(OpError("a condition must be true or false", stmt.cond.pos,
                                               "compare with ==, !=, <, ... e.g. if g == add { ... }"))
                    continue
                self.exec_body(stmt.then if cond else stmt.orelse, scope, agent)

    def exec_assign(self, stmt: A.Assign, scope: Scope, agent: bool) -> None:
        if stmt.name in INPUTS or stmt.name in ENV_SYMBOLS or stmt.name in self.params:
            what = "a param" if stmt.name in self.params else "given by the environment"
            self.errors.append(SpecError(f"'{stmt.name}' is {what} and cannot be assigned", stmt.pos,
                                         "choose another name"))
            return
        target = stmt.name if agent and stmt.name in ("actor", "critic") else None
        if agent:
            scope = replace(scope, path=(stmt.name,), target=target)
        if target:
            want = 2 * self.env.act if target == "actor" else 1
            value = self.ev(stmt.value, scope, out_hint=want)
            if isinstance(value, Tensor):
                if value.stack > 1:
                    self.errors.append(OpError(f"the {target} outputs a stack of {value.stack}; reduce it first "
                                               "(mix, mean, member, concat)", stmt.value.pos))
                    return
                if value.width != want:
                    what = "2 x ACT (mean and log-std)" if target == "actor" else "1 (the Q-value)"
                    self.errors.append(WidthError(f"the {target} must output {what} = {want} features, this "
                                                  f"outputs {value.width}", stmt.value.pos))
                    return
                out = self.add_node("output", [value], {"role": target}, want, scope, stmt.pos, label=target)
                info(self.g).outputs[target] = out.node
                self.output_pos[target] = stmt.pos
            elif value is not POISON:
                self.errors.append(OpError(f"the {target} must be a network output, not {_kind(value)}",
                                           stmt.value.pos))
            return
        value = self.ev(stmt.value, scope)
        scope.vars[stmt.name] = value
        if isinstance(value, Tensor):
            data: OpNode = self.g.nodes[value.node]["data"]
            if data.label is None and data.op != "input":
                data.label = stmt.name
                self.assigned.append((stmt.name, value.node, stmt.pos))
            if agent:
                self.features[stmt.name] = value.node

    # ----------------------------------------------------------------------------- expressions
    def ev(self, e: A.Node, scope: Scope, out_hint: int | None = None) -> Any:
        if isinstance(e, A.Num):
            return e.value
        if isinstance(e, A.Bool):
            return e.value
        if isinstance(e, A.Str):
            return e.value
        if isinstance(e, A.Name):
            return self.lookup(e, scope)
        if isinstance(e, A.Unary):
            v = self.ev(e.operand, scope)
            if v is POISON:
                return POISON
            if e.op == "not":
                b = self._bool(v, e.operand)
                return POISON if b is POISON else not b
            if isinstance(v, Tensor):
                return self.op_node("scale", [v], {"factor": -1.0}, scope, e.pos)
            return -v if self._is_number(v) else self._not_a(v, "a number", e.operand)
        if isinstance(e, A.Binary):
            return self.binary(e, scope)
        if isinstance(e, A.Call):
            return self.call(e, scope, out_hint)
        raise AssertionError(e)

    def lookup(self, e: A.Name, scope: Scope) -> Any:
        n = e.id
        if n in scope.vars:
            return scope.vars[n]
        if n in self.params:
            return self.params[n]
        if n in ENV_SYMBOLS:
            return {"OBS": self.env.obs, "ACT": self.env.act, "T": self.env.tasks, "META": self.env.meta}[n]
        if n in INPUTS:
            if n == "act" and scope.target == "actor":
                self.errors.append(SpecError("the actor cannot read act: the action is what it outputs", e.pos,
                                             "only the critic reads act"))
                return POISON
            return self.input(n)
        return Symbol(n, e.pos)

    def input(self, name: str) -> Tensor:
        if name not in self.inputs:
            width = {"obs": self.env.obs, "act": self.env.act, "task": 1}[name]
            kind = "task_id" if name == "task" else "features"
            self.g.add_node(name, data=OpNode(id=name, op="input", attrs={"name": name}, width=width, kind=kind,
                                              role="common", label=name))
            self.inputs[name] = Tensor(name, width, kind)
        return self.inputs[name]

    def visible(self, scope: Scope) -> list[str]:
        return [*scope.vars, *self.params, *ENV_SYMBOLS, *INPUTS]

    def _unknown(self, sym: Symbol, scope: Scope | None = None) -> _Poison:
        at = (sym.pos.file, sym.pos.line, sym.pos.col)
        known = next((err for err in self.errors if isinstance(err, UnknownName) and err.pos is not None
                      and (err.pos.file, err.pos.line, err.pos.col) == at), None)
        if known is not None and self.calls and id(known) in self.sites:
            self.sites[id(known)].append(self.calls[-1])
        if known is None:
            names = self.visible(scope) if scope else [*self.params, *INPUTS]
            self.errors.append(UnknownName(f"unknown name '{sym.name}'", _span(sym.pos, sym.name),
                                           did_you_mean(sym.name, names)))
        return POISON

    def _not_a(self, v: Any, what: str, e: A.Node, scope: Scope | None = None) -> _Poison:
        if isinstance(v, Symbol):
            return self._unknown(v, scope)
        if v is not POISON:
            self.errors.append(OpError(f"expected {what}, got {_kind(v)}", e.pos))
        return POISON

    @staticmethod
    def _is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def _bool(self, v: Any, e: A.Node) -> Any:
        return v if isinstance(v, bool) else self._not_a(v, "true or false", e)

    def number(self, e: A.Node, scope: Scope, what: str, whole: bool = True, minimum: int = 1) -> Any:
        v = self.ev(e, scope)
        if v is POISON:
            return POISON
        if not self._is_number(v):
            return self._not_a(v, what, e, scope)
        if not math.isfinite(v):
            self.errors.append(ParamError(f"{what} must be a finite number, got {v}", e.pos, _param_hint(e)))
            return POISON
        if whole and (v != int(v)):
            self.errors.append(ParamError(f"{what} must be a whole number, got {v}", e.pos))
            return POISON
        if v < minimum:
            self.errors.append(ParamError(f"{what} must be at least {minimum}, got {v}", e.pos,
                                          _param_hint(e)))
            return POISON
        return int(v) if whole else v

    def binary(self, e: A.Binary, scope: Scope) -> Any:
        if e.op in ("==", "!="):
            a, b = self._choice_word(e.left, e.right, scope), self._choice_word(e.right, e.left, scope)
        else:
            a, b = self.ev(e.left, scope), self.ev(e.right, scope)
        if a is POISON or b is POISON:
            return POISON
        if e.op in ("and", "or"):
            a, b = self._bool(a, e.left), self._bool(b, e.right)
            if POISON in (a, b):
                return POISON
            return (a and b) if e.op == "and" else (a or b)
        if e.op in ("==", "!="):
            return self.equality(e, a, b)
        if e.op in ("<", "<=", ">", ">="):
            if not (self._is_number(a) and self._is_number(b)):
                return self._not_a(b if self._is_number(a) else a, "a number",
                                   e.right if self._is_number(a) else e.left, scope)
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[e.op]
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            return self.tensor_arith(e, a, b, scope)
        if not self._is_number(a):
            return self._not_a(a, "a number or features", e.left, scope)
        if not self._is_number(b):
            return self._not_a(b, "a number or features", e.right, scope)
        if e.op == "/" and b == 0:
            self.errors.append(ParamError("division by zero", e.pos))
            return POISON
        return arithmetic(e.op, a, b)

    def _choice_word(self, side: A.Node, other: A.Node, scope: Scope) -> Any:
        """Beside a param with choices, a bare name that is one of them is that word (`first == down`),
        even where a variable of that name exists."""
        if isinstance(side, A.Name) and isinstance(other, A.Name) and other.id in self.choices \
                and other.id not in scope.vars and side.id in map(str, self.choices[other.id]):
            return side.id
        return self.ev(side, scope)

    def equality(self, e: A.Binary, a: Any, b: Any) -> Any:
        for side, other in ((e.left, b), (e.right, a)):
            if isinstance(side, A.Name) and side.id in self.choices and isinstance(other, (Symbol, str)):
                word = other.name if isinstance(other, Symbol) else other
                if word not in self.choices[side.id]:
                    pos = (e.right if side is e.left else e.left).pos
                    self.errors.append(ParamError(f"'{word}' is not a value of param {side.id}", pos,
                                                  "its values are: " + ", ".join(map(str, self.choices[side.id]))))
                    return POISON
        a, b = (x.name if isinstance(x, Symbol) else x for x in (a, b))
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            self.errors.append(OpError("features cannot be compared; conditions are on params", e.pos))
            return POISON
        return (a == b) if e.op == "==" else (a != b)

    def tensor_arith(self, e: A.Binary, a: Any, b: Any, scope: Scope) -> Any:
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            op = {"+": "add", "-": "sub", "*": "mul", "/": "div"}[e.op]
            return self.op_node(op, [a, b], {}, scope, e.pos, sides=(e.left, e.right))
        t, k, k_expr = (a, b, e.right) if isinstance(a, Tensor) else (b, a, e.left)
        if not self._is_number(k):
            return self._not_a(k, "a number or features", k_expr, scope)
        if e.op == "*" or (e.op == "/" and t is a):
            if e.op == "/" and k == 0:
                self.errors.append(ParamError("division by zero", e.pos))
                return POISON
            return self.op_node("scale", [t], {"factor": float(k if e.op == "*" else 1 / k)}, scope, e.pos)
        self.errors.append(OpError(f"cannot apply '{e.op}' to features and a number", e.pos,
                                   "features can be scaled by a number: 0.5 * h"))
        return POISON

    # ----------------------------------------------------------------------------- calls
    def call(self, c: A.Call, scope: Scope, out_hint: int | None) -> Any:
        if c.sharing is not None and c.sharing.kind == "stack":
            return self.stack_call(c, scope, out_hint)
        if len(c.callee) == 2:
            alias, name = c.callee
            imported = scope.file.imports.get(alias)
            if imported is None:
                self.errors.append(UnknownName(f"no import named '{alias}'", _span(c.pos, alias),
                                               did_you_mean(alias, scope.file.imports)))
                return POISON
            if name not in imported.spec.blocks:
                self.errors.append(UnknownName(f"{imported.spec.path} has no block '{name}'", c.pos,
                                               did_you_mean(name, imported.spec.blocks)))
                return POISON
            return self.block_call(c, imported, imported.spec.blocks[name], scope, out_hint)
        name = c.callee[0]
        local = scope.vars.get(name)
        if isinstance(local, Template):
            return self.apply_template(c, local, scope)
        if name in scope.file.spec.blocks:
            return self.block_call(c, scope.file, scope.file.spec.blocks[name], scope, out_hint)
        op = registry.lookup(name)
        if op is not None and op.in_language and op.source in self.op_sources:
            return self.op_call(c, op, scope)
        ops = [n for n in registry.language_names() if registry.get(n).source in self.op_sources]
        if op is not None and op.in_language:
            self.errors.append(UnknownName(f"op '{name}' is defined in {op.source}, which this spec does not import",
                                           _span(c.pos, name), f'add: import "{op.source}"'))
            return POISON
        candidates = [*ops, *scope.file.spec.blocks, *(k for k, v in scope.vars.items() if isinstance(v, Template))]
        self.errors.append(UnknownName(f"unknown op or block '{name}'", _span(c.pos, name),
                                       did_you_mean(name, candidates) or "ops: " + ", ".join(ops)))
        return POISON

    def stack_call(self, c: A.Call, scope: Scope, out_hint: int | None) -> Any:
        """`stack(k) f(...)`: k independent copies of op or block f (each its own parameters) applied to the
        same inputs, evaluated once (an input that is a stack of k: member j to copy j); their outputs side by
        side as a stack of k."""
        s = c.sharing
        assert s is not None
        if len(s.args) != 1 or isinstance(s.args[0], (A.Kwarg, A.Arrow)):
            self.errors.append(OpError("stack takes the number of members: stack(k) f(x)", s.pos))
            return POISON
        k = self.number(s.args[0], scope, "a stack size")
        if k is POISON:
            return POISON
        if k > MAX_REPEAT:
            self.errors.append(ParamError(f"stack size {k} is too large (at most {MAX_REPEAT})", s.args[0].pos))
            return POISON
        inputs, args = dict(scope.vars), []
        for i, arg in enumerate(c.args):          # each input evaluated once, read by every member
            expr = arg.src if isinstance(arg, A.Arrow) else None if isinstance(arg, A.Kwarg) else arg
            if expr is None:
                args.append(arg)
                continue
            value = self.ev(expr, scope)
            if value is POISON:
                return POISON
            inputs[f"#input{i}"] = value
            name = A.Name(expr.pos, f"#input{i}")
            args.append(replace(arg, src=name) if isinstance(arg, A.Arrow) else name)
        member_call = replace(c, args=tuple(args), sharing=None)
        stacked = {name: v for name, v in inputs.items() if name.startswith("#") and isinstance(v, Tensor)
                   and v.stack > 1}
        for v in stacked.values():
            if v.stack != k:
                self.errors.append(WidthError(f"stack({k}) of a stack of {v.stack}: each copy reads its own member, "
                                              "so the sizes must agree", c.pos))
                return POISON
        members = []
        for j in range(k):
            own = {name: self.op_node("member", [v], {"i": j}, scope, c.pos) for name, v in stacked.items()}
            member = self.call(member_call, replace(scope, vars={**inputs, **own},
                                                    path=scope.path + (f"member={j}",)), out_hint)
            if member is POISON:
                return POISON
            if not isinstance(member, Tensor) or member.stack != 1:
                what = "a stack" if isinstance(member, Tensor) else _kind(member)
                self.errors.append(OpError(f"stack(k) makes a stack of features; '{c.callee[-1]}' gives {what}",
                                           c.pos))
                return POISON
            members.append(member)
        return self.op_node("stack", members, {"k": k}, scope, c.pos)

    def split_args(self, c: A.Call, scope: Scope):
        """Evaluate a call's arguments: (positional values, keyword values, arrow (src, width) or None)."""
        pos, kw, arrow = [], {}, None
        for arg in c.args:
            if isinstance(arg, A.Kwarg):
                if arg.name in kw:
                    self.errors.append(OpError(f"argument '{arg.name}' given twice", arg.pos))
                kw[arg.name] = (self.ev(arg.value, scope), arg)
            elif isinstance(arg, A.Arrow):
                if arrow is not None:
                    self.errors.append(OpError("only one '->' per call", arg.pos))
                src = self.ev(arg.src, scope) if arg.src is not None else None
                arrow = (src, arg.src, self.number(arg.width, scope, "an output width"), arg.width)
                if src is not None:
                    pos.append((src, arg.src))
            else:
                pos.append((self.ev(arg, scope), arg))
        return pos, kw, arrow

    def op_call(self, c: A.Call, op: registry.OpDef, scope: Scope) -> Any:
        name = op.name
        positional, kw, arrow = self.split_args(c, scope)
        if any(v is POISON for v, _ in positional) or (arrow and arrow[2] is POISON):
            return POISON
        attrs = self.op_attrs(op, kw, c, scope)
        if attrs is POISON:
            return POISON
        if op.arrow:
            if arrow is None:
                self.errors.append(OpError(f"{name} needs an output width", c.pos, f"write {name}(x -> 400)"))
                return POISON
            attrs["out"] = arrow[2]
        elif arrow is not None:
            self.errors.append(OpError(f"{name} takes no '->' width", c.pos))
            return POISON
        sharing = self.sharing_of(c, scope, op)
        if sharing is POISON:
            return POISON
        if op.reads_task:
            if len(positional) != 1 or not (isinstance(positional[0][0], Tensor)
                                              and positional[0][0].kind == "task_id"):
                self.errors.append(OpError(f"{name} reads the task id: write {name}(task"
                                           + (" -> W)" if op.arrow else ")"), c.pos))
                return POISON
            attrs.update(T=self.env.tasks, META=self.env.meta)
            return self.op_node(name, [positional[0][0]], attrs, scope, c.pos, sharing=sharing)
        tensors = [(v, e) for v, e in positional if isinstance(v, Tensor)]
        widths = [(v, e) for v, e in positional if not isinstance(v, Tensor)]
        if op.parametric and not tensors and all(self._is_number(v) for v, _ in widths) and len(widths) <= 1:
            in_width = None
            if widths:
                in_width = widths[0][0]
                if not math.isfinite(in_width) or in_width != int(in_width) or in_width < 1:
                    self.errors.append(ParamError(f"an input width must be a positive whole number, got "
                                                  f"{in_width}", widths[0][1].pos))
                    return POISON
                in_width = int(in_width)
            return self.template(op.name, attrs, in_width, sharing, scope, c.pos)
        for v, e in widths:
            return self._not_a(v, "features", e, scope)
        return self.op_node(name, [v for v, _ in tensors], attrs, scope, c.pos, sharing=sharing,
                            sides=tuple(e for _, e in tensors))

    def op_attrs(self, op, kw: dict, c: A.Call, scope: Scope) -> Any:
        attrs = dict(op.kwargs)
        ok = True
        for key, (value, arg) in kw.items():
            expr = arg.value
            if key not in op.kwargs:
                self.errors.append(OpError(f"{op.name} has no argument '{key}'", _span(arg.pos, key),
                                           did_you_mean(key, op.kwargs) or
                                           (f"its arguments: {', '.join(op.kwargs)}" if op.kwargs else None)))
                ok = False
                continue
            if value is POISON:
                ok = False
                continue
            default = op.kwargs[key]
            if key in op.choices:
                word = value.name if isinstance(value, Symbol) else value
                if word not in op.choices[key]:
                    self.errors.append(ParamError(f"{op.name}({key} = ...) cannot be {word!r}", expr.pos,
                                                  "choose one of: " + ", ".join(op.choices[key])))
                    ok = False
                    continue
                value = word
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    self._not_a(value, "true or false", expr, scope)
                    ok = False
                    continue
            elif isinstance(default, int):
                if not self._is_number(value) or not math.isfinite(value) or value != int(value) \
                        or value < min(default, 1) \
                        or (key in ("layers", "modules", "experts") and value > MAX_REPEAT):
                    if isinstance(value, Symbol):
                        self._unknown(value, scope)
                    else:
                        limit = f" at most {MAX_REPEAT}" if key in ("layers", "modules", "experts") else ""
                        kind = "a positive" if default else "a non-negative"
                        self.errors.append(ParamError(f"{op.name}({key} = ...) must be {kind} whole "
                                                      f"number{limit}, got {_show(value)}", expr.pos,
                                                      _param_hint(expr)))
                    ok = False
                    continue
                value = int(value)
            elif isinstance(default, float):
                if not self._is_number(value) or not math.isfinite(value):
                    self._not_a(value, "a number", expr, scope)
                    ok = False
                    continue
                value = float(value)
            attrs[key] = value
        return attrs if ok else POISON

    def sharing_of(self, c: A.Call, scope: Scope, op=None) -> Any:
        """The sharing mode of a parametric op: its own attribute, else the enclosing block call's."""
        if c.sharing is not None and op is not None and not op.parametric:
            self.errors.append(OpError(f"{op.name} has no parameters, so '{c.sharing.kind}' means nothing here",
                                       c.sharing.pos, "sharing applies to linear, embed, film, ... and blocks"))
            return POISON
        sharing = c.sharing or scope.sharing
        if sharing is not None and sharing.kind == "bank" and self.bank_of(sharing, scope) is POISON:
            return POISON
        return sharing

    def bank_of(self, s: A.Sharing, scope: Scope) -> Any:
        """Validate bank(K, init = identical|random, w = normal|onehot); one setting per agent."""
        setting = {"K": None, "init": "identical", "w": "normal"}
        positional = [a for a in s.args if not isinstance(a, (A.Kwarg, A.Arrow))]
        if len(positional) != 1:
            self.errors.append(OpError("bank takes the set size: bank(K)", s.pos))
            return POISON
        k = self.number(positional[0], scope, "bank size K")
        if k is POISON:
            return POISON
        setting["K"] = k
        for a in s.args:
            if isinstance(a, A.Arrow):
                self.errors.append(OpError("bank takes no '->' width", a.pos))
                return POISON
            if isinstance(a, A.Kwarg):
                allowed = {"init": ("identical", "random"), "w": ("normal", "onehot")}
                v = self.ev(a.value, scope)
                word = v.name if isinstance(v, Symbol) else v
                if a.name not in allowed:
                    self.errors.append(OpError(f"bank has no argument '{a.name}'", a.pos,
                                               "bank(K, init = identical|random, w = normal|onehot)"))
                    return POISON
                if word not in allowed[a.name]:
                    self.errors.append(ParamError(f"bank({a.name} = ...) cannot be {_show(word)}", a.value.pos,
                                                  "choose one of: " + ", ".join(allowed[a.name])))
                    return POISON
                setting[a.name] = word
        if setting["w"] == "onehot" and k != self.env.tasks:
            self.errors.append(ParamError(f"bank(K, w = onehot) needs K equal to the number of tasks "
                                          f"({self.env.tasks}), got {k}", s.pos))
            return POISON
        current = info(self.g).bank
        if current is None:
            info(self.g).bank = {**setting, "pos": s.pos}
        elif {k2: current[k2] for k2 in setting} != setting:
            self.errors.append(ParamError("every bank of an agent shares one composition table w, so they must "
                                          f"agree on K, init and w (first set at line {current['pos'].line})",
                                          s.pos))
            return POISON
        return setting

    def template(self, op: str, attrs: dict, in_width: int | None, sharing, scope: Scope, pos: Pos) -> Template:
        mid = self.new_id("module", scope.path + (op,))
        info(self.g).modules[mid] = Module(id=mid, op=op, attrs=attrs, sharing="shared", copies=1,
                                           per_copy=0, role="common", pos=pos)
        self._set_sharing(mid, sharing)
        return Template(mid, op, attrs, in_width, pos)

    def apply_template(self, c: A.Call, t: Template, scope: Scope) -> Any:
        positional, kw, arrow = self.split_args(c, scope)
        if kw or arrow or c.sharing:
            self.errors.append(OpError(f"'{c.callee[0]}' is a module defined at line {t.pos.line}; call it with "
                                       "inputs only", c.pos, f"write {c.callee[0]}(x)"))
            return POISON
        if any(v is POISON for v, _ in positional):
            return POISON
        for v, e in positional:
            if not isinstance(v, Tensor):
                return self._not_a(v, "features", e, scope)
        tensors = [v for v, _ in positional]
        if t.in_width is not None and tensors and tensors[0].width != t.in_width:
            self.errors.append(WidthError(f"'{c.callee[0]}' takes {t.in_width} features (line {t.pos.line}) but "
                                          f"gets {tensors[0].width}", c.pos))
            return POISON
        module = info(self.g).modules[t.module]
        if module.in_widths is not None and [x.width for x in tensors] != module.in_widths:
            self.errors.append(WidthError(f"'{c.callee[0]}' was first called with widths {module.in_widths}, "
                                          f"here with {[x.width for x in tensors]}", c.pos,
                                          "a named module has one input width at every call site"))
            return POISON
        return self.op_node(t.op, tensors, dict(t.attrs), scope, c.pos, module=t.module,
                            sides=tuple(e for _, e in positional))

    def block_call(self, c: A.Call, file: FileScope, block: A.Block, scope: Scope, out_hint: int | None) -> Any:
        key = (file.spec.path, block.name)
        if key in self.stack:
            chain = " -> ".join(b for _, b in self.stack[self.stack.index(key):]) + f" -> {block.name}"
            self.errors.append(CycleError(f"block '{block.name}' calls itself ({chain})", c.pos,
                                          "blocks cannot be recursive; use repeat for depth"))
            return POISON
        positional, kw, arrow = self.split_args(c, scope)
        if any(v is POISON for v, _ in positional) or (arrow and arrow[2] is POISON):
            return POISON
        if len(positional) != len(block.inputs):
            self.errors.append(OpError(f"block '{block.name}' takes {len(block.inputs)} input(s) "
                                       f"({', '.join(block.inputs)}), got {len(positional)}", c.pos))
            return POISON
        local: dict[str, Any] = {}
        for name, (v, e) in zip(block.inputs, positional):
            if not isinstance(v, Tensor):
                return self._not_a(v, "features", e, scope)
            local[name] = v
        settings = dict(block.settings)
        for name, (v, arg) in kw.items():
            if v is POISON:
                return POISON
            if name not in self.params and name not in settings:
                known = [*settings, *self.params]
                self.errors.append(OpError(f"block '{block.name}' has no setting '{name}': keyword arguments of a "
                                           "block set its settings or override params", _span(arg.pos, name),
                                           did_you_mean(name, known) or "settings and params: " + ", ".join(known)))
                return POISON
            local[name] = v
        for name, default in block.settings:      # in order: a default may read the settings before it
            if name not in kw:
                local[name] = self.ev(default, Scope(dict(local), file, scope.path))
                if local[name] is POISON:
                    return POISON
        out = arrow[2] if arrow else out_hint
        if out is None and block.out_default is not None:
            out = self.number(block.out_default, Scope({}, file, scope.path), f"{block.out} of block {block.name}")
            if out is POISON:
                return POISON
        if out is None:
            self.errors.append(OpError(f"block '{block.name}' needs its output width {block.out}", c.pos,
                                       f"write {block.name}(... -> 50), or give a default: "
                                       f"block {block.name}(...) -> {block.out} = 50"))
            return POISON
        local[block.out] = out
        sharing = self.sharing_of(c, scope)
        if sharing is POISON:
            return POISON
        inner = Scope(local, file, scope.path + (block.name,), sharing, scope.target)
        self.stack.append(key)
        self.calls.append((block.name, c.pos))
        try:
            errors_before = len(self.errors)
            self.exec_body(block.body, inner)
            for err in self.errors[errors_before:]:
                self.sites.setdefault(id(err), [self.calls[-1]])   # its innermost block call
        finally:
            self.stack.pop()
            self.calls.pop()
        result = local.get("out")
        if len(self.errors) > errors_before or result is POISON:
            return POISON
        if not isinstance(result, Tensor):
            self.errors.append(OpError(f"block '{block.name}' never assigns out", block.pos,
                                       "end the block with: out = ..."))
            return POISON
        if result.stack > 1:
            self.errors.append(OpError(f"block '{block.name}' gives out a stack of {result.stack}; a block's out is "
                                       "features", block.pos, "reduce it (mix, mean, member, concat), or stack the "
                                       "block's call: stack(k) name(x)"))
            return POISON
        if result.width != out:
            self.errors.append(WidthError(f"block '{block.name}' must output {block.out} = {out} features, "
                                          f"its out has {result.width}", block.pos))
            return POISON
        return result

    # ----------------------------------------------------------------------------- graph building
    def op_node(self, op: str, inputs: list[Tensor], attrs: dict, scope: Scope, pos: Pos, sharing=None,
                module: str | None = None, sides: tuple = ()) -> Any:
        opdef = registry.get(op)
        for t, side in zip(inputs, sides or [None] * len(inputs)):
            if t.kind == "task_id" and not opdef.reads_task:
                self.errors.append(OpError("task is a task id, not features", side.pos if side else pos,
                                           "use onehot(task), embed(task -> W) or meta(task)"))
                return POISON
        lo, hi = opdef.inputs
        if not opdef.reads_task and not (lo <= len(inputs) and (hi is None or len(inputs) <= hi)):
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            self.errors.append(OpError(f"{op} takes {want} input(s), got {len(inputs)}", pos))
            return POISON
        widths = [t.width for t in inputs] if not opdef.reads_task else []
        stacks = [t.stack for t in inputs]
        if max(stacks, default=1) > 1:
            if opdef.stacks == "plain":
                k = max(stacks)
                self.errors.append(OpError(f"{op} takes features, not a stack of {k}", pos,
                                           "reduce the stack first: mix(s, weights), mean(s), member(s, i = 0) or "
                                           "concat(s); or apply the op to every member inside stack(k)"))
                return POISON
            if opdef.stacks == "elementwise" and len({k for k, w in zip(stacks, widths) if w > 1 or k > 1}) > 1:
                self.errors.append(WidthError(f"{op} of stacks of " + " and ".join(map(str, stacks)) +
                                              " members", pos, "both sides need one stack size, or width 1"))
                return POISON
        if opdef.stacks == "read":
            attrs = {**attrs, "k": stacks[0] if stacks else 1}
        try:
            if opdef.derive is not None:
                producers = [self.g.nodes[t.node]["data"] for t in inputs]
                attrs = opdef.derive([(n.op, n.attrs) for n in producers], attrs)
            width = opdef.width(widths, attrs)
            per_copy = opdef.count(widths, attrs)
        except OpArgError as err:
            cls = WidthError if err.width else OpError
            detail = ""
            if sides and err.width:
                detail = " (" + ", ".join(f"{_src(s)}: {t.width}" for t, s in zip(inputs, sides)) + ")"
            self.errors.append(cls(str(err) + detail, pos, err.hint))
            return POISON
        except Exception as err:
            if opdef.source == "graphnet":
                raise
            file, line = registry.user_frame(err, opdef.source)
            self.errors.append(OpError(f"op '{op}' raised {type(err).__name__}: {err} (at {file}:{line})", pos,
                                       "fix the op's width rule or parameter shapes, or raise graphnet.OpArgError "
                                       "for inputs it does not take"))
            return POISON
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            self.errors.append(OpError(f"op '{op}' gives a width of {width!r}; a width rule returns a positive whole "
                                       f"number (op defined in {opdef.source})", pos))
            return POISON
        if opdef.parametric:
            if module is None:
                module = self.new_id("module", scope.path + (op,))
                info(self.g).modules[module] = Module(id=module, op=op, attrs=attrs, sharing="shared",
                                                         copies=1, per_copy=0, role="common", pos=pos)
                self._set_sharing(module, A.Sharing(pos, opdef.sharing) if opdef.sharing else sharing)
            m = info(self.g).modules[module]
            if m.in_widths is None:
                m.in_widths, m.per_copy = widths, per_copy
        stack = opdef.stack_out(widths, attrs) if opdef.stack_out else max(stacks, default=1) \
            if opdef.stacks == "elementwise" else 1
        return self.add_node(op, inputs, attrs, width, scope, pos, module=module, stack=stack)

    def _set_sharing(self, module: str, sharing: A.Sharing | None) -> None:
        m = info(self.g).modules[module]
        if sharing is None or sharing.kind == "shared":
            m.sharing, m.copies = "shared", 1
        elif sharing.kind == "task":
            m.sharing, m.copies = "task", self.env.tasks
        else:
            bank = info(self.g).bank
            assert bank is not None, "bank_of sets the bank before any bank(K) module"
            m.sharing, m.copies = "bank", bank["K"]

    def add_node(self, op: str, inputs: list[Tensor], attrs: dict, width: int, scope: Scope, pos: Pos,
                 module: str | None = None, label: str | None = None, stack: int = 1) -> Tensor:
        nid = self.new_id("node", scope.path + (label or op,))
        self.g.add_node(nid, data=OpNode(id=nid, op=op, attrs=attrs, inputs=[t.node for t in inputs], width=width,
                                         stack=stack, module=module, role=scope.target or "common",
                                         scope=scope.path, label=label, pos=pos))
        for port, t in enumerate(inputs):
            if self.g.has_edge(t.node, nid):
                self.g.edges[t.node, nid]["data"].ports.append(port)
            else:
                self.g.add_edge(t.node, nid, data=Edge(width=t.width, ports=[port]))
        return Tensor(nid, width, stack=stack)

    def new_id(self, kind: str, path: tuple[str, ...]) -> str:
        base = "/".join(path)
        taken = info(self.g).modules if kind == "module" else self.g
        nid, n = base, 1
        while nid in taken:
            n += 1
            nid = f"{base}#{n}"
        return nid

    # ----------------------------------------------------------------------------- whole-graph checks
    def _check_critic_reads_action(self, pos: Pos) -> None:
        critic = info(self.g).outputs["critic"]
        if "act" not in self.g or not nx.has_path(self.g, "act", critic):
            self.errors.append(SpecError("the critic never reads act: Q(s, a) needs the action", pos,
                                         "include act in the critic's input, e.g. concat(obs, act, onehot(task))"))

    def _assign_roles_and_prune(self) -> None:
        """Role of a node = the outputs it feeds (actor, critic, or both: common). Unused nodes are dropped."""
        outputs = info(self.g).outputs
        reach: dict[str, set[Role]] = {n: set() for n in self.g}
        for role, out in outputs.items():
            for n in nx.ancestors(self.g, out) | {out}:
                reach[n].add(cast(Role, role))
        for name, nid, pos in self.assigned:
            if not reach[nid]:
                self.warnings.append(Warning_(f"'{name}' is computed but never used; its parameters are not "
                                              "counted", pos, "remove it, or use it"))
        self.g.remove_nodes_from([n for n, roles in reach.items() if not roles])
        used: dict[str, set[Role]] = {}
        for n in self.g:
            data: OpNode = self.g.nodes[n]["data"]
            roles = reach[n]
            data.role = roles.pop() if len(roles) == 1 else "common"
            if data.module:
                used.setdefault(data.module, set()).add(data.role)
        modules = info(self.g).modules
        for mid in list(modules):
            if mid not in used:
                del modules[mid]
            else:
                roles = used[mid]
                modules[mid].role = roles.pop() if len(roles) == 1 else "common"
        if not any(m.sharing == "bank" for m in modules.values()):
            info(self.g).bank = None
        if info(self.g).target == "copy" and not any(m.role == "common" for m in modules.values()) and \
                not any(m.role == "critic" and m.sharing == "bank" for m in modules.values()):
            agent = self.root.spec.agent
            self.warnings.append(Warning_("agent(target = copy): actor and critic share no parameters, so the "
                                          "target has nothing more to copy", agent.options[0].pos if agent else None,
                                          "name a feature both read in the agent section, or drop the option"))


def arithmetic(op: str, a: int | float, b: int | float) -> int | float:
    """Numbers under + - * /; a division stays a whole number when exact (`H / 2` is a width)."""
    if op == "/":
        return a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 else a / b
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _kind(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"features (width {v.width})"
    if isinstance(v, Template):
        return f"a module (defined at line {v.pos.line})"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, Symbol):
        return f"'{v.name}'"
    return repr(v)


def _show(v: Any) -> str:
    return _kind(v) if not isinstance(v, str) else repr(v)


def _span(pos: Pos, text: str) -> Pos:
    return Pos(pos.file, pos.line, pos.col, pos.col + len(text))


def _src(e: A.Node | None) -> str:
    if isinstance(e, A.Name):
        return e.id
    if isinstance(e, A.Call):
        return ".".join(e.callee) + "(...)"
    return f"line {e.pos.line} col {e.pos.col}" if e is not None else "?"


def _param_hint(e: A.Node) -> str | None:
    return f"check the value of param {e.id}" if isinstance(e, A.Name) else None
