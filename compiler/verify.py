"""`check_op`: the verification every op gets, graphnet's own and a user's (`graphnet check-op FILE.py`).

Each of the op's calls (OpDef.calls) is put in a small probe agent, once per sharing it can have (shared, task,
bank(2)) and at two widths, and the built networks are held to the accounting and to the reference
interpreter: the built tensors' sizes equal the counts; actor (an ensemble of one) and twin critics (two)
give the reference's outputs and every parameter's gradient, in float64, on a task-major batch and on a
shuffled one with a task missing; and after `build`, before any parameter is re-drawn."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .. import registry
from .._spec import Sizes, load
from ..errors import GraphnetError
from .build import AgentNets, build, built_counts
from .reference import reference_trunk

SIZES = Sizes(obs=5, act=2, tasks=3, meta=4)
WIDTHS = ((6, 4), (8, 3))            # (W, Z): the widths of the probe's features x, y and z
BATCHES = {"task-major": torch.arange(3).repeat_interleave(4), "shuffled": torch.tensor([2, 0, 2, 2, 0, 2, 0])}
RTOL, ATOL = 1e-7, 1e-9                # float64: far below any real difference, far above rounding


class OpCheckError(GraphnetError):
    """An op whose compiled form, reference and counts disagree: every failing case, one per line."""


@dataclass
class OpReport:
    op: str
    cases: int = 0
    failures: list[str] = field(default_factory=list)


def probe(call: str, sharing: str, W: int, Z: int, op_file: str | None) -> str:
    """A spec whose actor and critic both apply `sharing call` to features of the observation."""
    head = f'import "{op_file}"\n' if op_file else ""
    return head + f"""param W = {W}, Z = {Z}
block probe(s) -> OUT {{
  x = tanh(linear(s -> W));  y = tanh(linear(s -> W));  z = tanh(linear(s -> Z))
  h = {sharing}{call}
  out = linear(concat(h, s) -> OUT)
}}
agent {{
  actor = probe(concat(obs, onehot(task)))
  critic = probe(concat(obs, act, onehot(task)))
}}
"""


def sharings(op: registry.OpDef) -> tuple[str, ...]:
    return ("", "task ", "bank(2) ") if op.parametric and op.sharing is None else ("",)


def check_op(name: str | registry.OpDef) -> OpReport:
    """Run every check on one op; raises OpCheckError listing each failure (a pytest test may just call it)."""
    op = registry.get(name) if isinstance(name, str) else name
    report = OpReport(op.name)
    op_file = op.source if op.source != "graphnet" else None
    with float64(), tempfile.TemporaryDirectory() as tmp:
        for call in op.calls:
            for sharing in sharings(op):
                for W, Z in WIDTHS:
                    case = f"{sharing}{call} at W = {W}, Z = {Z}"
                    path = Path(tmp, f"probe{report.cases}.gn")
                    path.write_text(probe(call, sharing, W, Z, op_file))
                    report.cases += 1
                    try:
                        report.failures += [f"{case}: {f}" for f in _check_build(path)]
                    except GraphnetError as e:
                        report.failures.append(f"{case}: {e}")
    if report.failures:
        raise OpCheckError(f"op '{op.name}' fails {len(report.failures)} of {report.cases} cases:\n  " +
                           "\n  ".join(report.failures))
    return report


def _check_build(path: Path) -> list[str]:
    spec = load(str(path), SIZES)
    metadata = torch.randn(SIZES.tasks, SIZES.meta)
    nets = build(spec, SIZES.obs, SIZES.act, SIZES.tasks, device="cpu", task_metadata=metadata)
    failures = []
    counts, built = spec.params(SIZES.obs, SIZES.act, SIZES.tasks, SIZES.meta), built_counts(nets)
    for key, size in built.items():
        if getattr(counts, key) != size:
            failures.append(f"built {key} holds {size:,} parameters, the accounting counts {getattr(counts, key):,}")
    for state in ("as built", "re-drawn"):
        if state == "re-drawn":
            _redraw(nets)
        for batch, task in BATCHES.items():
            failures += [f"{state}, {batch} batch: {f}" for f in _compare(nets, task)]
    return failures


def _compare(nets: AgentNets, task: Tensor) -> list[str]:
    """Outputs and gradients of actor and critic, compiled vs reference."""
    obs, act = torch.randn(len(task), SIZES.obs), torch.randn(len(task), SIZES.act)
    failures = []
    for role in ("actor", "critic"):
        trunk = getattr(nets, role).trunk
        ours = trunk(obs, task, act) if role == "critic" else trunk(obs, task)
        theirs = reference_trunk(nets, role, obs, task, act if role == "critic" else None)
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=RTOL, atol=ATOL):
            failures.append(f"{role} outputs differ from the reference (largest difference "
                            f"{_largest(ours, theirs)})")
            continue
        weights = torch.randn_like(ours)
        for (key, a), (_, b) in zip(_gradients(nets, ours, weights), _gradients(nets, theirs, weights)):
            if not torch.allclose(a, b, rtol=RTOL, atol=ATOL):
                failures.append(f"{role}: the gradient of {key} differs from the reference's (largest difference "
                                f"{_largest(a, b)})")
    return failures


def _gradients(nets: AgentNets, out: Tensor, weights: Tensor) -> list[tuple[str, Tensor]]:
    params = {k: p for k, p in nets.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad((out * weights).sum(), list(params.values()), retain_graph=True, allow_unused=True)
    return [(k, g if g is not None else torch.zeros_like(p)) for (k, p), g in zip(params.items(), grads)]


def _largest(a: Tensor, b: Tensor) -> str:
    return f"{(a - b).abs().max().item():.3g}" if a.shape == b.shape else f"shapes {list(a.shape)}, {list(b.shape)}"


def _redraw(nets: AgentNets) -> None:
    """Every parameter re-drawn, so that none is trivially equal (zero-initialised layers, identical copies)."""
    with torch.no_grad():
        for p in nets.parameters():
            p.copy_(0.5 * torch.randn_like(p))


@contextmanager
def float64() -> Iterator[None]:
    """float64 from a fixed seed; the default dtype and the global RNG restored after."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            yield
    finally:
        torch.set_default_dtype(dtype)
