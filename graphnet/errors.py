"""Spec errors: every one points at file:line:col, shows the line with a caret, and says what to do."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pos:
    """A place in a spec file (1-based line and column)."""

    file: str
    line: int
    col: int
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class GraphnetError(Exception):
    """Base of every error graphnet reports to a user (never shown with a traceback)."""


class UsageError(GraphnetError):
    """Command-line arguments that do not fit together."""


class DeviceError(GraphnetError, ValueError):
    """A device this process cannot use (an unknown name, CUDA on a CPU-only torch)."""


class MatchError(GraphnetError):
    """A budget that cannot be met, or params that cannot be solved."""


class VizError(GraphnetError):
    """A drawing that cannot be made (unknown format, no `dot` program)."""


class EnvError(GraphnetError):
    """An unknown Meta-World benchmark or task."""


class RunError(GraphnetError):
    """A training run that cannot start or go on (a bad run directory, a spec that changed, non-finite values)."""


class TransferError(RunError):
    """A run that cannot be transferred to a new task."""


class CheckpointError(GraphnetError):
    """A checkpoint that cannot be written (a full disk) or read."""


class SweepError(GraphnetError):
    """Sweep points that cannot run; reported together before anything starts."""


class UserOpError(GraphnetError):
    """A user's op that raised, or returned the wrong shape, while the networks ran: at the spec position that
    called it, with the place in the op file."""


class OpArgError(Exception):
    """Raised by an op's width rule; the elaborator turns it into a positioned OpError or WidthError."""

    def __init__(self, message: str, hint: str | None = None, width: bool = False):
        super().__init__(message)
        self.hint, self.width = hint, width


class SpecError(GraphnetError):
    """One problem in a spec, at a position."""

    kind = "error"

    def __init__(self, message: str, pos: Pos | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.pos, self.hint = message, pos, hint

    def render(self, sources: dict[str, str] | None = None) -> str:
        where = f"{self.pos}: " if self.pos else ""
        lines = [f"{where}{self.kind}: {self.message}"]
        text = _source_line(self.pos, sources)
        if text is not None and self.pos is not None:
            width = max(1, (self.pos.end_col or self.pos.col + 1) - self.pos.col)
            lines += [f"    {text}", "    " + " " * (self.pos.col - 1) + "^" * width]
        if self.hint:
            lines.append(f"  {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class SyntaxProblem(SpecError):
    """The text does not follow the grammar."""


class UnknownName(SpecError):
    """A name, op, block, param or file that does not exist."""


class WidthError(SpecError):
    """Feature widths that do not fit together."""


class CycleError(SpecError):
    """A block that calls itself, or files that import each other."""


class ParamError(SpecError):
    """A param value that is missing, of the wrong kind, or outside its choices."""


class OpError(SpecError):
    """An op used with arguments it does not take."""


class TrainConfigError(SpecError):
    """A train-section entry the runtime cannot use."""


class Warning_(SpecError):
    """Something legal but probably unintended (an unused node)."""

    kind = "warning"


class SpecErrors(GraphnetError):
    """All the errors found in one spec, reported together."""

    def __init__(self, errors: list[SpecError], sources: dict[str, str] | None = None):
        self.errors, self.sources = errors, sources or {}
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(e.render(self.sources) for e in self.errors)


def did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def _source_line(pos: Pos | None, sources: dict[str, str] | None) -> str | None:
    if pos is None:
        return None
    text = (sources or {}).get(pos.file)
    if text is None:
        try:
            text = Path(pos.file).read_text()
        except OSError:
            return None
    lines = text.split("\n")  # as Lark counts lines: other line breaks are not line ends
    return lines[pos.line - 1].rstrip("\r").replace("\t", " ") if 0 < pos.line <= len(lines) else None
