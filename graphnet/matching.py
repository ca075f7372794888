"""Width matching and ablation grids on graphnet's own accounting (no torch).

Comparisons between methods are only fair at equal parameter counts, so `solve` finds whole-number
values of some params whose count is nearest a budget, `write_resolved` writes the spec with those
values in it (a file anyone can load and count again), and `ablate` does both over a grid of variants.

Several solved params follow one rule: the first named is searched, each other one is scaled to keep
its ratio to the first as in the spec's current values, rounded half up and at least 1.
"""
from __future__ import annotations

import csv
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

from . import _ast as A
from ._spec import MT10, Sizes, Spec, find_spec, load, settings, spec_value
from .errors import MatchError, SpecErrors, did_you_mean

COUNTS = ("total", "trainable", "actor", "critic")
MAX_WIDTH = 1 << 24          # the exponential search gives up beyond this value
MAX_SCAN = 1 << 16           # the fallback scan's widest bracket


@dataclass(frozen=True)
class Match:
    """The solved params, the count they give, and the budget it was matched to."""

    values: dict[str, int]
    count: int
    budget: int
    warnings: tuple[str, ...] = ()

    @property
    def mismatch(self) -> int:
        return self.count - self.budget

    @property
    def mismatch_pct(self) -> float:
        return 100.0 * self.mismatch / self.budget

    def as_json(self) -> dict[str, Any]:
        return {"values": self.values, "count": self.count, "budget": self.budget, "mismatch": self.mismatch}


def count_of(spec: Spec, sizes: Sizes, what: str = "total") -> int:
    """One field of a spec's ParamReport at these sizes."""
    if what not in COUNTS:
        raise MatchError(f"cannot count '{what}': choose one of " + ", ".join(COUNTS))
    return getattr(spec.params(sizes.obs, sizes.act, sizes.tasks, sizes.meta), what)


def budget_like(ref: str | Path, sizes: Sizes = MT10, what: str = "total") -> int:
    """The budget `--like OTHER` means: the other spec's count at its own defaults and the same sizes."""
    return count_of(load(ref, sizes), sizes, what)


# ----------------------------------------------------------------------------- solving
def solve(ref: str | Path, names: Sequence[str], budget: int, what: str = "total",
          overrides: dict[str, Any] | None = None, sizes: Sizes = MT10) -> Match:
    """Whole-number values of `names` whose count is nearest `budget` (ties: the smaller values)."""
    overrides = dict(overrides or {})
    base = load(ref, sizes, **overrides)
    _check_solvable(base, names)
    if budget < 1:
        raise MatchError(f"the budget must be a positive number of parameters, got {budget}")
    warnings = [f"{n} is not declared free in {Path(base.decls[n][1]).name}; solving it anyway"
                for n in names if n not in base.free]
    point = _ratio_rule(base, names)

    def count(x: int) -> int:
        values = point(x)
        try:
            return count_of(load(ref, sizes, **{**overrides, **values}), sizes, what)
        except SpecErrors as e:
            at = settings(values)
            raise MatchError(f"at {at} the spec does not check: {e.errors[0].message}") from None

    x, found, note = nearest(count, budget, names[0], what)
    if note:
        warnings.append(note)
    return Match(point(x), found, budget, tuple(warnings))


def _check_solvable(spec: Spec, names: Sequence[str]) -> None:
    if not names:
        raise MatchError("name a param to solve: --solve NAME")
    if len(set(names)) != len(names):
        raise MatchError("each param can be solved once; --solve names one twice")
    whole = [n for n, v in spec.values.items() if isinstance(v, int) and not isinstance(v, bool)]
    for n in names:
        if n not in spec.decls:
            hint = did_you_mean(n, spec.decls) or "its whole-number params: " + ", ".join(whole)
            raise MatchError(f"{Path(spec.path).name} has no param '{n}' to solve ({hint})")
        if n not in whole:
            raise MatchError(f"param {n} of {Path(spec.path).name} is {spec.values[n]!r}, not a whole number; "
                             "only whole-number params can be solved (" + ", ".join(whole) + ")")
        if spec.values[n] < 1:
            raise MatchError(f"param {n} is {spec.values[n]}; a solved param must start at 1 or more")


def _ratio_rule(spec: Spec, names: Sequence[str]) -> Callable[[int], dict[str, int]]:
    """The values of all solved params when the first is x: the others keep their current ratio to it."""
    first = spec.values[names[0]]
    ratios = {n: spec.values[n] for n in names[1:]}

    def point(x: int) -> dict[str, int]:
        return {names[0]: x, **{n: max(1, (2 * x * v + first) // (2 * first)) for n, v in ratios.items()}}
    return point


def nearest(count: Callable[[int], int], budget: int, name: str,
            what: str = "total") -> tuple[int, int, str | None]:
    """The x >= 1 whose count(x) is nearest budget, for a count non-decreasing in x.

    Exponential search brackets the budget, binary search narrows it, the neighbours of the crossing
    are counted too; if any counted points contradict monotonicity, every x of the bracket is counted.
    Returns x, its count, and a note when the fallback scan was needed."""
    seen: dict[int, int] = {}

    def f(x: int) -> int:
        if x not in seen:
            seen[x] = count(x)
        return seen[x]

    if f(1) > budget:
        raise MatchError(f"the budget {budget:,} is below the {what} count at {name} = 1 ({f(1):,}); "
                         "no value can meet it")
    lo, hi = 1, 2
    while f(hi) < budget:
        if hi >= MAX_WIDTH or (hi >= 64 and f(hi) == f(1)):
            raise MatchError(f"no value of {name} up to {hi:,} reaches the budget {budget:,} "
                             f"(the {what} count is {f(hi):,} there)")
        lo, hi = hi, 2 * hi
    bracket = (lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if f(mid) < budget else (lo, mid)
    for x in (lo - 1, hi + 1):
        if x >= 1:
            f(x)
    note = None
    if not _monotone(seen):
        if bracket[1] - bracket[0] > MAX_SCAN:
            raise MatchError(f"the {what} count is not monotone in {name} and the bracket "
                             f"{bracket[0]:,}..{bracket[1]:,} is too wide to scan")
        for x in range(bracket[0], bracket[1] + 1):
            f(x)
        note = f"the {what} count is not monotone in {name}; scanned {name} = {bracket[0]}..{bracket[1]}"
    best = min(seen, key=lambda x: (abs(seen[x] - budget), x))
    return best, seen[best], note


def _monotone(seen: dict[int, int]) -> bool:
    counts = [seen[x] for x in sorted(seen)]
    return all(a <= b for a, b in zip(counts, counts[1:]))


# ----------------------------------------------------------------------------- writing resolved specs
def write_resolved(ref: str | Path, values: dict[str, Any], dest: str | Path, sizes: Sizes = MT10,
                   what: str = "total", header: str = "") -> int:
    """Write the spec with `values` as its params' defaults to `dest`; return its count, re-read from the file.

    Declarations in the spec's own file get the new value in place (comments and layout kept); a param
    declared only in an imported file gets a declaration of its own, which wins over the import's.
    Imports are rewritten where they would no longer find the same file from `dest`'s folder."""
    spec = load(ref, sizes, **values)
    dest = Path(dest)
    text = resolved_text(spec, values, dest, header)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    expected = count_of(spec, sizes, what)
    written = count_of(load(dest, sizes), sizes, what)
    if written != expected:
        raise MatchError(f"{dest} counts {written:,} but the spec it resolves counts {expected:,}")
    return written


def resolved_text(spec: Spec, values: dict[str, Any], dest: Path, header: str = "") -> str:
    """The root file's text with `values` written into it, its imports valid from `dest`."""
    root = spec.root.spec
    lines = spec.sources[spec.path].splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []           # (line, start col, end col, text), 1-based
    declared = {p.name: p for p in root.params}
    for name, value in values.items():
        if name in declared:
            edits.append((*_span(declared[name].default, f"the value of param {name}"),
                          _literal(value, declared[name], spec)))
    for imp in root.imports:
        new = _moved_import(imp, Path(spec.path).parent, dest.parent)
        if new is not None:
            edits.append((*_span(imp, "an import"), new))
    for line, start, end, new in sorted(edits, reverse=True):
        s = lines[line - 1]
        lines[line - 1] = s[:start - 1] + new + s[end - 1:]
    extra = [_redeclared(spec, n, v) for n, v in values.items() if n not in declared]
    if extra:
        at = max((imp.pos.line for imp in root.imports), default=0)
        lines[at:at] = extra
    head = [f"# {line}\n" for line in header.splitlines()]
    return "".join(head + lines)


def _redeclared(spec: Spec, name: str, value: Any) -> str:
    """A declaration for a param only an import declares: the import's own (choices, free) with the new value."""
    decl, path = spec.decls[name]
    line, start, end = _span(decl, f"the declaration of {name}")
    _, vstart, vend = _span(decl.default, f"the value of param {name}")
    item = spec.sources[path].splitlines()[line - 1][start - 1:end - 1]
    item = item[:vstart - start] + _literal(value, decl, spec) + item[vend - start:]
    return f"param {item}   # declared in {Path(path).name}\n"


def _span(node: A.Node, what: str) -> tuple[int, int, int]:
    pos = node.pos
    if pos.end_col is None:
        raise MatchError(f"{pos}: cannot rewrite {what}: it spans several lines")
    return pos.line, pos.col, pos.end_col


def _literal(value: Any, decl: A.Param, spec: Spec) -> str:
    """A param value as spec text. A word is written bare where it reads as that word: among the
    declaration's choices, or when it names no param; otherwise quoted."""
    if isinstance(value, bool):
        return spec_value(value)
    if isinstance(value, str):
        bare = value.isidentifier() and (decl.choices is not None or value not in spec.decls)
        return value if bare else f'"{value}"'
    return repr(value)


def _moved_import(imp: A.Import, src_dir: Path, dest_dir: Path) -> str | None:
    """The import statement to write in dest_dir, or None when the original finds the same file there."""
    ref = imp.target if imp.is_path else f"{imp.target}.gn"
    old = find_spec(ref, src_dir)
    new = find_spec(ref, dest_dir)
    if old is None or (new is not None and new.resolve() == old.resolve()):
        return None
    rel = Path(os.path.relpath(old.resolve(), dest_dir.resolve())).as_posix()
    return f'import "{rel}" as {imp.alias}'


# ----------------------------------------------------------------------------- ablation grids
@dataclass(frozen=True)
class Variant:
    """One grid point of an ablation: the varied values, the solved ones, the written file and its count."""

    file: str
    varied: dict[str, Any]
    solved: dict[str, int]
    count: int
    budget: int | None
    warnings: tuple[str, ...] = ()

    @property
    def mismatch(self) -> int | None:
        return None if self.budget is None else self.count - self.budget

    @property
    def mismatch_pct(self) -> float | None:
        return None if self.budget is None else 100.0 * (self.count - self.budget) / self.budget


def ablate(ref: str | Path, vary: dict[str, list[Any]], out_dir: str | Path, solve_names: Sequence[str] = (),
           budget: int | None = None, what: str = "total", overrides: dict[str, Any] | None = None,
           sizes: Sizes = MT10) -> list[Variant]:
    """Write one resolved spec per point of the grid (the cartesian product of `vary`), each solved to
    `budget` when given, and the tables ablation.md and ablation.csv; return the rows."""
    overrides = dict(overrides or {})
    base = load(ref, sizes, **overrides)
    _check_grid(base, vary, solve_names, budget)
    stem = Path(base.path).stem
    out_dir = Path(out_dir)
    rows = []
    for combo in itertools.product(*vary.values()):
        varied = dict(zip(vary, combo))
        name = "__".join([stem] + [f"{k}-{_safe(v)}" for k, v in varied.items()]) + ".gn"
        try:
            rows.append(_variant(ref, out_dir / name, varied, overrides, solve_names, budget, what, sizes))
        except SpecErrors as e:
            problems = (err.message + (f" ({err.hint})" if err.hint else "") for err in e.errors)
            raise MatchError(f"variant {name}: " + "; ".join(problems)) from None
    write_tables(rows, out_dir, f"{stem}.gn", what)
    return rows


def _variant(ref: str | Path, dest: Path, varied: dict[str, Any], overrides: dict[str, Any],
             solve_names: Sequence[str], budget: int | None, what: str, sizes: Sizes) -> Variant:
    point = {**overrides, **varied}
    match = solve(ref, solve_names, budget, what, point, sizes) if budget is not None else None
    values = {**point, **(match.values if match else {})}
    count = write_resolved(ref, values, dest, sizes, what, header=provenance(str(ref), values, what, match))
    return Variant(dest.name, varied, match.values if match else {}, count, budget, match.warnings if match else ())


def _check_grid(spec: Spec, vary: dict[str, list[Any]], solve_names: Sequence[str], budget: int | None) -> None:
    if not vary:
        raise MatchError("name the params to vary: --vary NAME=v1,v2,...")
    for name, values in vary.items():
        if name not in spec.decls:
            raise MatchError(f"--vary {name}: {Path(spec.path).name} has no param '{name}'"
                             + (f" ({hint})" if (hint := did_you_mean(name, spec.decls)) else ""))
        if not values:
            raise MatchError(f"--vary {name}= lists no values")
        if name in solve_names:
            raise MatchError(f"{name} is both varied and solved; solve another param")
    if (budget is None) != (not solve_names):
        raise MatchError("--solve and a budget (--budget or --like) go together")


def _safe(value: Any) -> str:
    """A value as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._]+", "_", spec_value(value))


def provenance(source: str, values: dict[str, Any], what: str, match: Match | None) -> str:
    """The header comment of a written spec: where it came from and what was solved."""
    text = f"Written by graphnet from {Path(source).name}: {settings(values)}"
    if match:
        text += (f"\n{settings(match.values)} solved: {what} count {match.count:,}, budget {match.budget:,}, "
                 f"mismatch {match.mismatch:+,} ({match.mismatch_pct:+.3f} %)")
    return text


def write_tables(rows: list[Variant], out_dir: Path, spec_name: str, what: str) -> None:
    """ablation.csv (one row per variant) and ablation.md (the same as a markdown table)."""
    varied = list(rows[0].varied)
    solved = list(rows[0].solved)
    head = ["variant", *varied, *solved, what, "budget", "mismatch", "mismatch %"]
    table = [[r.file, *(spec_value(r.varied[k]) for k in varied), *(r.solved[k] for k in solved), r.count,
              "" if r.budget is None else r.budget, "" if r.mismatch is None else r.mismatch,
              "" if r.mismatch_pct is None else f"{r.mismatch_pct:.3f}"] for r in rows]
    with open(out_dir / "ablation.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(head)
        writer.writerows(table)
    budget = rows[0].budget
    title = f"# Ablation of {spec_name}\n\n{len(rows)} variants; {what} parameter count" + \
        (f" solved for {', '.join(solved)} to a budget of {budget:,}.\n\n" if budget is not None else ".\n\n")
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(_cell(c, signed=(i == len(head) - 2)) for i, c in enumerate(row)) + " |"
           for row in table]
    (out_dir / "ablation.md").write_text(title + "\n".join(md) + "\n")


def _cell(value: Any, signed: bool = False) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:+,}" if signed else f"{value:,}"
    return str(value)
