"""Loading a spec: find the file, parse it and its imports, resolve params, check the graph."""
from __future__ import annotations

import hashlib
import json
import math
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import ValidationError

from . import _ast as A
from . import registry
from .ir import info
from ._elaborate import ENV_SYMBOLS, INPUTS, Elaborator, Env, FileScope, arithmetic
from ._parser import parse
from .errors import (CycleError, OpError, ParamError, Pos, SpecError, SpecErrors, TrainConfigError, UnknownName,
                     did_you_mean)
from .train_config import GroupSampling, TacoSampling, TrainConfig, option_fields

Sizes = Env  # the environment sizes a spec is checked and counted at
MT10 = Env(obs=39, act=4, tasks=10)


def library_dir() -> Path:
    return Path(str(resources.files("graphnet.specs")))


def library_names() -> list[str]:
    return sorted(p.stem for p in library_dir().glob("*.gn"))


def find_spec(ref: str | Path, base: Path | None = None) -> Path | None:
    """A path (relative to `base` when given), or the name of a library spec."""
    ref = str(ref)
    candidates = [Path(base, ref)] if base is not None else []
    candidates.append(Path(ref))
    if "/" not in ref:
        candidates.append(library_dir() / (ref if ref.endswith(".gn") else f"{ref}.gn"))
    return next((c for c in candidates if c.is_file()), None)


def parse_value(text: str) -> Any:
    """A `--set` value: a whole number, a number, true/false, or a word."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def spec_value(value: Any) -> str:
    """A param value as a user writes it (`true`, not Python's `True`): the inverse of `parse_value`."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def settings(values: dict[str, Any]) -> str:
    """Param values as they read in a spec: `H = 400, proj = shared, first = true`."""
    return ", ".join(f"{k} = {spec_value(v)}" for k, v in values.items())


class Spec:
    """A loaded, checked spec. `graph` is the agent graph at MT10 sizes; `graph_for` at any sizes."""

    def __init__(self, path: Path, overrides: dict[str, Any], sizes: Env = MT10):
        self.path = str(path)
        self.overrides = dict(overrides)
        self.sources: dict[str, str] = {}
        self.op_files: list[str] = []           # Python files of ops it imports (resolved paths)
        self.errors: list[SpecError] = []
        self.warnings: list[SpecError] = []
        root = self._load_file(path, [])
        self.decls: dict[str, tuple[A.Param, str]] = {}
        self.values: dict[str, Any] = {}
        self.free: list[str] = []
        self.train = TrainConfig()
        self._graphs: dict[tuple, nx.DiGraph] = {}
        self.errors.extend(_check_sizes(sizes))
        if root is None or self.errors:   # a file that cannot be read or parsed has reported why
            raise SpecErrors(_unique(self.errors), self.sources)
        self.root: FileScope = root
        self._resolve_params()
        if not self.errors:
            self._elaborate(sizes, keep_warnings=True)
        self._train_config(self._graphs.get(_key(sizes)))
        if self.errors:
            raise SpecErrors(_unique(self.errors), self.sources)

    # ----------------------------------------------------------------------------- files
    def _load_file(self, path: Path, chain: list[str]) -> FileScope | None:
        key = str(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            self.errors.append(SpecError(f"cannot read {path}: {e}"))
            return None
        self.sources[key] = text
        try:
            spec = parse(text, key)
        except SpecErrors as e:
            self.errors.extend(e.errors)
            return None
        scope = FileScope(spec)
        for imp in spec.imports:
            if imp.is_path and imp.target.endswith(".py"):
                self._load_ops(imp, path.parent)
                continue
            target = find_spec(imp.target if imp.is_path else f"{imp.target}.gn", path.parent)
            if target is None:
                hint = did_you_mean(imp.target, library_names()) or "library specs: " + ", ".join(library_names())
                self.errors.append(UnknownName(f"cannot find spec '{imp.target}' to import", imp.pos, hint))
                continue
            if str(target.resolve()) in chain + [str(path.resolve())]:
                self.errors.append(CycleError(f"{path.name} and {target.name} import each other", imp.pos,
                                              "move the shared blocks into a third file"))
                continue
            if imp.alias in scope.imports:
                self.errors.append(SpecError(f"two imports are named '{imp.alias}'", imp.pos,
                                             "name one differently: import x as other"))
                continue
            sub = self._load_file(target, chain + [str(path.resolve())])
            if sub is not None:
                scope.imports[imp.alias] = sub
        return scope

    def _load_ops(self, imp: A.Import, base: Path) -> None:
        """`import "my_ops.py"`: the file's ops join the language for this spec (graphnet.registry)."""
        target = find_spec(imp.target, base)
        if target is None:
            self.errors.append(UnknownName(f"cannot find the op file '{imp.target}'", imp.pos,
                                           f"a path relative to {base}"))
            return
        key = str(target.resolve())
        try:
            self.sources[key] = target.read_text()
            registry.load_file(target)
        except (OSError, UnicodeDecodeError) as e:
            self.errors.append(SpecError(f"cannot read {target}: {e}", imp.pos))
        except registry.OpFileError as e:
            where = Pos(e.file, e.line, 1) if e.line else imp.pos
            self.errors.append(OpError(f"the op file {imp.target} fails: {e.message}", where,
                                       f"imported at {imp.pos}"))
        else:
            if key not in self.op_files:
                self.op_files.append(key)

    def _files(self, scope: FileScope) -> list[FileScope]:
        """This file, then its imports depth-first (the order in which param declarations win)."""
        out = [scope]
        for sub in scope.imports.values():
            out += [f for f in self._files(sub) if f not in out]
        return out

    # ----------------------------------------------------------------------------- params
    def _resolve_params(self) -> None:
        for i, f in enumerate(self._files(self.root)):
            for p in f.spec.params:
                if p.name in ENV_SYMBOLS or p.name in INPUTS:
                    self.errors.append(ParamError(f"'{p.name}' is given by the environment "
                                                  f"({ENV_SYMBOLS.get(p.name, 'an input')}); it cannot be a param",
                                                  p.pos, "choose another name"))
                elif p.name not in self.decls:
                    self.decls[p.name] = (p, f.spec.path)
                elif i > 0 and self.decls[p.name][1] != self.root.spec.path and \
                        _literal(p.default) != _literal(self.decls[p.name][0].default):
                    first = self.decls[p.name][0]
                    self.errors.append(ParamError(f"imported files disagree on param {p.name} "
                                                  f"({first.pos} and here)", p.pos,
                                                  f"declare {p.name} in {Path(self.root.spec.path).name} to choose"))
        for name, value in self.overrides.items():
            if name not in self.decls:
                self.errors.append(ParamError(f"--set {name}={value}: the spec has no param '{name}'", None,
                                              did_you_mean(name, self.decls) or
                                              "its params: " + ", ".join(self.decls)))
        evaluating: list[str] = []
        for name in self.decls:
            self._param_value(name, evaluating)
        self.free = [n for n, (p, _) in self.decls.items() if p.free]

    def _param_value(self, name: str, evaluating: list[str]) -> Any:
        if name in self.values:
            return self.values[name]
        decl, _ = self.decls[name]
        if name in evaluating:
            self.errors.append(CycleError(f"param {name} is defined in terms of itself ("
                                          + " -> ".join(evaluating + [name]) + ")", decl.pos))
            return None
        choices = self._choices(decl)
        evaluating.append(name)
        default = self._const(decl.default, evaluating, words=choices or ())
        evaluating.pop()
        value = default
        if name in self.overrides:
            value = self._check_override(decl, default, self.overrides[name])
        if choices and value is not None and value not in choices:
            source = f"--set {name}={value}" if name in self.overrides else f"the default of {name}"
            self.errors.append(ParamError(f"{source}: {value!r} is not one of its values", decl.pos,
                                          "its values are: " + ", ".join(map(str, choices))))
        self.values[name] = value
        return value

    def _check_override(self, decl: A.Param, default: Any, value: Any) -> Any:
        if isinstance(value, str):
            value = parse_value(value) if not isinstance(default, str) else value
        if isinstance(value, float) and not math.isfinite(value):
            self.errors.append(ParamError(f"--set {decl.name}={value}: a param value must be finite", decl.pos))
            return default
        ok = (isinstance(default, bool) and isinstance(value, bool)) or \
             (isinstance(default, int) and not isinstance(default, bool) and isinstance(value, (int, float))
              and not isinstance(value, bool) and value == int(value)) or \
             (isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool)) or \
             (isinstance(default, str) and isinstance(value, str)) or default is None
        if not ok:
            kind = {bool: "true or false", int: "a whole number", float: "a number", str: "a word"}[type(default)]
            self.errors.append(ParamError(f"--set {decl.name}={value}: param {decl.name} takes {kind}", decl.pos))
            return default
        return int(value) if isinstance(default, int) and not isinstance(default, bool) else value

    def _choices(self, decl: A.Param) -> tuple | None:
        """A param's allowed values, read literally: `in [none, proj]` means the words, not params."""
        if not decl.choices:
            return None
        return tuple(c.id if isinstance(c, A.Name) else self._const(c, []) for c in decl.choices)

    def _const(self, e: A.Node, evaluating: list[str], words: tuple = ()) -> Any:
        """Evaluate a param default: numbers, words, true/false, other params, arithmetic. A name among
        `words` (the param's own choices) is that word."""
        if isinstance(e, (A.Num, A.Str, A.Bool)):
            return e.value
        if isinstance(e, A.Name):
            if e.id in self.decls and e.id not in words:
                return self._param_value(e.id, evaluating)
            return e.id
        if isinstance(e, A.Unary) and e.op == "-":
            v = self._const(e.operand, evaluating)
            if v is None:  # already reported
                return None
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v
        if isinstance(e, A.Binary) and e.op in "+-*/":
            a, b = self._const(e.left, evaluating), self._const(e.right, evaluating)
            if a is None or b is None:
                return None
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
                if e.op == "/" and b == 0:
                    self.errors.append(ParamError("division by zero", e.pos))
                    return None
                return arithmetic(e.op, a, b)
        self.errors.append(ParamError("a param value is a number, a word, true/false, or arithmetic on params",
                                      e.pos))
        return None

    # ----------------------------------------------------------------------------- graph
    def _elaborate(self, env: Env, keep_warnings: bool = False) -> nx.DiGraph:
        for file in self.op_files:      # its own op files' definitions, whatever another spec loaded since
            registry.load_file(file)
        choices = {n: c for n, (p, _) in self.decls.items() if (c := self._choices(p)) is not None}
        elab = Elaborator(self.root, self.values, choices, env, {"graphnet", *self.op_files})
        g = elab.run()
        if keep_warnings:
            self.warnings = elab.warnings
        if elab.errors:
            self.errors.extend(elab.errors)
            return g
        info(g).features = {k: v for k, v in elab.features.items() if v in g}
        self._graphs[_key(env)] = g
        return g

    def graph_for(self, obs: int = 39, act: int = 4, tasks: int = 10, meta: int = 768) -> nx.DiGraph:
        """The agent graph for these environment sizes (checked; raises SpecErrors)."""
        key = (obs, act, tasks, meta)
        if key not in self._graphs:
            self.errors = _check_sizes(Env(obs, act, tasks, meta))
            if not self.errors:
                self._elaborate(Env(obs, act, tasks, meta))
            if self.errors:
                raise SpecErrors(_unique(self.errors), self.sources)
        return self._graphs[key]

    @property
    def graph(self) -> nx.DiGraph:
        return self.graph_for()

    def params(self, obs: int = 39, act: int = 4, tasks: int = 10, meta: int = 768):
        """Parameter accounting of the whole agent (see graphnet.accounting.ParamReport)."""
        from .accounting import count
        return count(self.graph_for(obs, act, tasks, meta))

    # ----------------------------------------------------------------------------- train section
    def _train_config(self, g: nx.DiGraph | None) -> None:
        """Validate the train section; the checks that need the graph run when it was built."""
        raw: dict[str, Any] = {}
        where: dict[str, Pos] = {}
        for item in self.root.spec.train:
            value = self._train_value(item.value)
            if item.name in raw:
                self.errors.append(TrainConfigError(f"train option '{item.name}' is set twice", item.pos))
            raw[item.name], where[item.name] = value, item.pos
        self.train = self._valid_train_options(raw, where)
        t = self.train
        if g is None:
            return
        if isinstance(t.sampling, GroupSampling) and max(sum(t.sampling.task_groups(), [])) >= info(g).sizes["tasks"]:
            self.errors.append(TrainConfigError(f"sampling groups name task {max(sum(t.sampling.task_groups(), []))}"
                                                f", but there are {info(g).sizes['tasks']} tasks (0 to "
                                                f"{info(g).sizes['tasks'] - 1})", where.get("sampling")))
        if t.w_reset and info(g).bank is None:
            self.errors.append(TrainConfigError("w_reset re-draws a task's composition weights w, but no layer of "
                                                "this agent is bank(K)", where.get("w_reset")))
        if isinstance(t.sampling, TacoSampling) and info(g).bank is None:
            self.errors.append(TrainConfigError("sampling = taco(...) groups tasks by their composition weights w, "
                                                "but no layer of this agent is bank(K)", where.get("sampling")))
        if t.triplet is not None and t.triplet.feature not in info(g).features:
            self.errors.append(TrainConfigError(f"triplet feature '{t.triplet.feature}' is not a feature named in "
                                                "the agent section", where.get("triplet"),
                                                did_you_mean(t.triplet.feature, info(g).features)))

    def _valid_train_options(self, raw: dict[str, Any], where: dict[str, Pos]) -> TrainConfig:
        """Report every invalid option at its position, then keep the valid ones, so that the checks
        against the graph still run on them (one bad option hides nothing else)."""
        valid, reported = dict(raw), False
        while True:
            try:
                return TrainConfig(**valid)
            except ValidationError as e:
                names = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
                if not reported:
                    self.errors.extend(self._train_option_error(err, where) for err in e.errors())
                    reported = True
                if not names & valid.keys():
                    return TrainConfig()
                for name in names:
                    valid.pop(name, None)

    def _train_option_error(self, err: Any, where: dict[str, Pos]) -> TrainConfigError:
        loc = err["loc"]
        name = str(loc[0]) if loc else ""
        pos = where.get(name, self.root.spec.agent.pos if self.root.spec.agent else None)
        if err["type"] == "extra_forbidden":
            key, fields = str(loc[-1]), option_fields(loc[:-1])
            what = "train option" if len(loc) == 1 else f"setting of {name}"
            return TrainConfigError(f"unknown {what} '{key}'", pos,
                                    did_you_mean(key, fields) or "choose from: " + ", ".join(fields))
        detail = ".".join(str(x) for x in loc[1:] if not isinstance(x, int))
        msg = err["msg"].removeprefix("Value error, ")
        return TrainConfigError(f"train option {name}{'.' + detail if detail else ''}: {msg}", pos)

    def _train_value(self, e: A.Node) -> Any:
        if isinstance(e, A.Call) and len(e.callee) == 1 and e.sharing is None:
            out: dict[str, Any] = {"kind": e.callee[0]}
            for arg in e.args:
                if not isinstance(arg, A.Kwarg):
                    self.errors.append(TrainConfigError("train options take named settings: name(key = value)",
                                                        arg.pos))
                    continue
                out[arg.name] = self._train_value(arg.value)
            return out
        return self._const(e, [])

    # ----------------------------------------------------------------------------- identity
    @cached_property
    def hash(self) -> str:
        """Identifies the resolved spec: every source file and the param values."""
        h = hashlib.sha256()
        for path in sorted(self.sources):
            h.update(self.sources[path].encode())
        h.update(json.dumps(self.values, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]


def _check_sizes(env: Env) -> list[SpecError]:
    return [SpecError(f"--{name} must be a positive whole number, got {v}")
            for name, v in vars(env).items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]


def _unique(errors: list[SpecError]) -> list[SpecError]:
    """One report per place and message (an error inside a block called twice is one error)."""
    seen, out = set(), []
    for e in errors:
        key = (str(e.pos), e.message)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _key(env: Env) -> tuple[int, int, int, int]:
    return (env.obs, env.act, env.tasks, env.meta)


def _literal(e: A.Node) -> Any:
    return getattr(e, "value", getattr(e, "id", None))


def load(ref: str | Path, sizes: Env = MT10, **overrides: Any) -> Spec:
    """Load and check a spec by path or library name; keyword arguments override its params.

    The spec is checked at `sizes` (observation, action, task counts; MT10's by default)."""
    path = find_spec(ref)
    if path is None:
        hint = did_you_mean(str(ref), library_names()) or "library specs: " + ", ".join(library_names())
        raise SpecErrors([UnknownName(f"no spec file or library spec named '{ref}'", None, hint)])
    return Spec(path, overrides, sizes)


__all__ = ["Spec", "load", "library_names", "find_spec", "parse_value", "Pos"]
