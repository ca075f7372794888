"""Spec text -> syntax tree, with Lark's LALR parser; syntax errors in a researcher's words."""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any
from collections.abc import Callable

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.lexer import PatternStr

from . import _ast as A
from .errors import Pos, SpecError, SpecErrors, SyntaxProblem, did_you_mean

_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a quoted string",
          "COMPARE": "a comparison (==, !=, <, ...)", "$END": "the end of the file"}
_EXPR_START = {"NAME", "NUMBER", "STRING", "LPAR", "MINUS"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AND", "OR", "COMPARE", "DOT", "LPAR", "EQUAL", "ARROW"}


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files("graphnet").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse(text: str, path: str) -> A.SpecFile:
    """Parse one spec file; raises SpecErrors (syntax, duplicate definitions)."""
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise SpecErrors([_syntax_error(e, text, path)], {path: text}) from None
    try:
        items = _ToAst(path).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, SpecError):
            raise SpecErrors([e.orig_exc], {path: text}) from None
        raise
    return _assemble(items, path, text)


def _assemble(items: list, path: str, text: str) -> A.SpecFile:
    spec = A.SpecFile(path)
    errors: list[SpecError] = []
    seen: dict[str, int] = {}  # param name -> line of its declaration
    for item in items:
        if isinstance(item, A.Import):
            spec.imports.append(item)
        elif isinstance(item, tuple):  # one param statement
            for param in item:
                if param.name in seen:
                    errors.append(SyntaxProblem(f"param '{param.name}' is declared twice (first at line "
                                                f"{seen[param.name]})", param.pos, "keep one declaration"))
                seen[param.name] = param.pos.line
                spec.params.append(param)
        elif isinstance(item, A.Block):
            if item.name in spec.blocks:
                errors.append(SyntaxProblem(f"block '{item.name}' is defined twice", item.pos,
                                            "rename one of them"))
            spec.blocks[item.name] = item
        elif isinstance(item, A.Agent):
            if spec.agent is not None:
                errors.append(SyntaxProblem("a spec has one agent section", item.pos, "merge the two sections"))
            object.__setattr__(spec, "agent", item)
        elif isinstance(item, list):  # train section items
            spec.train.extend(item)
    if errors:
        raise SpecErrors(errors, {path: text})
    return spec


def _syntax_error(e: UnexpectedInput, text: str, path: str) -> SyntaxProblem:
    line, col = getattr(e, "line", 1), getattr(e, "column", 1)
    if isinstance(e, UnexpectedCharacters):
        at = e.pos_in_stream
        char = text[at] if at is not None and at < len(text) else "?"
        if char == '"':
            return SyntaxProblem("a string is not closed", Pos(path, line, col),
                                 'strings open and close with " on one line: "path/to/file.gn"')
        return SyntaxProblem(f"unexpected character {char!r}", Pos(path, line, col),
                             "names use letters, digits and '_'; comments start with '#'")
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        lines = text.rstrip().split("\n")  # just after the last thing written
        pos = Pos(path, len(lines), len(lines[-1]) + 1)
        return SyntaxProblem(f"the file ends too early: expected {_expected(e)}", pos,
                             "check for an unclosed '{', '(' or '['")
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    pos = Pos(path, tok.line, tok.column, tok.end_column)
    before = text.split("\n")[tok.line - 1][:tok.column - 1]
    if (sharing := _sharing_problem(before, tok)) is not None:
        message, start, hint = sharing
        return SyntaxProblem(message, Pos(path, tok.line, start + 1, tok.end_column), hint)
    hint = None
    if tok.type == "NAME" and "NAME" not in e.expected:
        hint = f"'{tok}' may be a reserved word or a missing operator before it"
    return SyntaxProblem(f"unexpected {_describe(tok)}: expected {_expected(e)}", pos, hint)


SHARINGS = ("shared", "task", "bank")
_PREFIXES = "a call may start with one sharing prefix: shared, task or bank(K)"


def _sharing_problem(before: str, tok: Token) -> tuple[str, int, str | None] | None:
    """A misspelt or misused sharing prefix before a call (`per_task linear(...)`, `bank linear(...)`,
    `shared(2) linear(...)`, `task bank(2) linear(...)`): message, column where it starts (0-based), hint."""
    if tok.type == "NAME" and (m := re.search(r"\bbank\s*$", before)):
        return "bank needs its set size K", m.start(), f"write bank(K) {tok}(...), e.g. bank(4) {tok}(...)"
    if tok.type != "LPAR":
        return None
    if m := re.search(r"\b(shared|task)\s+bank\s*\([^()]*\)\s+\w+\s*$", before):
        return "a call has one sharing prefix, not two", m.start(), f"keep {m.group(1)} or bank(K): {_PREFIXES}"
    if m := re.search(r"\bshared\s*$", before):
        return "shared takes no size: it is one copy for all tasks", m.start(), "bank(K) is the prefix with a size"
    if (m := re.search(r"\b([A-Za-z_]\w*)\s+([A-Za-z_]\w*)\s*$", before)) and m.group(1) not in SHARINGS:
        close = did_you_mean(m.group(1), SHARINGS)
        return (f"'{m.group(1)}' before {m.group(2)}(...) is not a sharing prefix", m.start(),
                f"{close} {_PREFIXES}" if close else _PREFIXES)
    return None


def _describe(tok: Token) -> str:
    if tok.type in ("NAME", "NUMBER", "STRING"):
        return f"{_WORDS[tok.type].split(' ', 1)[1]} '{tok}'"
    return f"'{tok}'"


def _expected(e: UnexpectedInput) -> str:
    expected = set(getattr(e, "expected", ()) or ())
    words = []
    if _EXPR_START <= expected:
        words.append("an expression")
        expected -= _EXPR_START | {"TRUE", "FALSE", "TASK", "SHARED", "BANK", "NOT"}
    if len(expected & _OPERATORS) > 3:
        words.append("an operator")
        expected -= _OPERATORS
    terminals = {t.name: t for t in _lark().terminals}
    for name in sorted(expected):
        if name in _WORDS:
            words.append(_WORDS[name])
        elif name in terminals and isinstance(terminals[name].pattern, PatternStr):
            words.append(f"'{terminals[name].pattern.value}'")
    if not words:
        return "something else"
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]


def _pos(path: str, meta) -> Pos:
    end = meta.end_column if getattr(meta, "end_line", None) == meta.line else None
    return Pos(path, meta.line, meta.column, end)


def _binary(op: str) -> Callable:
    """The transformer rule of a binary operator."""
    def rule(self: _ToAst, meta: Any, ch: list) -> A.Binary:
        return A.Binary(self.p(meta), op, ch[0], ch[-1])
    return rule


def _with_sharing(kind: str) -> Callable:
    """The transformer rule of a call with a sharing prefix (shared, task, bank(K))."""
    def rule(self: _ToAst, meta: Any, ch: list) -> A.Call:
        call, args = ch[-1], (ch[0] if len(ch) > 1 else ())
        return A.Call(call.pos, call.callee, call.args, A.Sharing(self.p(meta), kind, args))
    return rule


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark tree -> _ast nodes."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def p(self, meta) -> Pos:
        return _pos(self.path, meta)

    # top level
    def start(self, meta, items):
        return [i for i in items if not isinstance(i, Token)]

    def import_stmt(self, meta, ch):
        target, alias = ch[0], (str(ch[1]) if len(ch) > 1 else None)
        is_path = target.type == "STRING"
        name = str(target)[1:-1] if is_path else str(target)
        if alias is None:
            stem = name.rsplit("/", 1)[-1].removesuffix(".gn").removesuffix(".py")
            if not stem.isidentifier():
                raise SyntaxProblem(f"cannot name the import of {name!r} after its file", self.p(meta),
                                    'give it a name: import "path.gn" as name')
            alias = stem
        return A.Import(self.p(meta), name, is_path, alias)

    def param_stmt(self, meta, ch):
        return tuple(ch)

    def param_item(self, meta, ch):
        name, default, rest = str(ch[0]), ch[1], ch[2:]
        choices = next((r for r in rest if isinstance(r, tuple)), None)
        free = any(isinstance(r, Token) and r.type == "FREE" for r in rest)
        return A.Param(self.p(meta), name, default, choices, free)

    def choices(self, meta, ch):
        return tuple(ch)

    def block_def(self, meta, ch):
        name = str(ch[0])
        rest = list(ch[1:])
        args = rest.pop(0) if rest and isinstance(rest[0], list) else []
        out = str(rest.pop(0))
        out_default = rest.pop(0) if len(rest) > 1 else None
        inputs = tuple(n for n, default, _ in args if default is None)
        settings = tuple((n, default) for n, default, _ in args if default is not None)
        first_setting = next((i for i, (_, default, _) in enumerate(args) if default is not None), len(args))
        late = next((pos for _, default, pos in args[first_setting:] if default is None), None)
        if late is not None:
            raise SyntaxProblem(f"block '{name}': its inputs come before its settings with defaults", late,
                                f"write block {name}({', '.join(inputs)}, {', '.join(n for n, _ in settings)} = ...)")
        return A.Block(self.p(meta), name, inputs, out, out_default, rest[-1], settings)

    def block_args(self, meta, ch):
        return list(ch)

    def block_arg(self, meta, ch):
        return str(ch[0]), (ch[1] if len(ch) > 1 else None), self.p(meta)

    def agent_def(self, meta, ch):
        return A.Agent(self.p(meta), ch[-1], ch[0] if len(ch) == 2 else ())

    def train_def(self, meta, ch):
        return [c for c in ch if isinstance(c, A.TrainItem)]

    def train_item(self, meta, ch):
        return A.TrainItem(self.p(meta), str(ch[0]), ch[1])

    # statements
    def body(self, meta, ch):
        return tuple(c for c in ch if isinstance(c, A.Node))

    def assign(self, meta, ch):
        return A.Assign(self.p(meta), str(ch[0]), ch[1])

    def repeat(self, meta, ch):
        var, op, count, body = ch
        if str(op) != "<":
            raise SyntaxProblem(f"repeat counts with '<', not '{op}'", _pos(self.path, op),
                                f"write: repeat {var} < N {{ ... }}")
        return A.Repeat(self.p(meta), str(var), count, body)

    def if_stmt(self, meta, ch):
        orelse = ch[2] if len(ch) > 2 else ()
        if isinstance(orelse, A.If):
            orelse = (orelse,)
        return A.If(self.p(meta), ch[0], ch[1], orelse)

    # expressions
    def number(self, meta, ch):
        s = str(ch[0])
        return A.Num(self.p(meta), float(s) if any(c in s for c in ".eE") else int(s))

    def string(self, meta, ch):
        return A.Str(self.p(meta), str(ch[0])[1:-1])

    def true(self, meta, ch):
        return A.Bool(self.p(meta), True)

    def false(self, meta, ch):
        return A.Bool(self.p(meta), False)

    def name(self, meta, ch):
        return A.Name(self.p(meta), str(ch[0]))

    def task_ref(self, meta, ch):
        return A.Name(self.p(meta), "task")

    def shared_word(self, meta, ch):
        return A.Name(self.p(meta), "shared")

    def neg(self, meta, ch):
        return A.Unary(self.p(meta), "-", ch[0])

    def not_(self, meta, ch):
        return A.Unary(self.p(meta), "not", ch[0])

    add, sub, mul, div = _binary("+"), _binary("-"), _binary("*"), _binary("/")
    and_, or_ = _binary("and"), _binary("or")

    def compare(self, meta, ch):
        return A.Binary(self.p(meta), str(ch[1]), ch[0], ch[2])

    def callee(self, meta, ch):
        return tuple(str(c) for c in ch)

    def args(self, meta, ch):
        return tuple(ch)

    def kwarg(self, meta, ch):
        return A.Kwarg(self.p(meta), str(ch[0]), ch[1])

    def arrow(self, meta, ch):
        src = ch[0] if len(ch) == 3 else None
        return A.Arrow(self.p(meta), src, ch[-1])

    def call(self, meta, ch):
        args = ch[1] if len(ch) > 1 else ()
        return A.Call(self.p(meta), ch[0], args)

    shared_call, task_call, bank_call = _with_sharing("shared"), _with_sharing("task"), _with_sharing("bank")
    stack_call = _with_sharing("stack")
