"""Stacks of k features and per-sample reductions: the primitives of experts' architectures (MOORE, MMoE)
and hypernetworks. A stack of k members of width W is carried as k * W features, member after member
(`stack(k) f(x)` makes one); these ops read it (attrs["k"])."""
from __future__ import annotations

from ..errors import OpArgError
from ..registry import OpDef, register
from ._torch import Tensor, torch
from . import ensemble

EPS = 1e-12      # inside the square root of a norm: a zero vector gives zeros, not NaN


def _members(x: Tensor, k: int) -> Tensor:
    """`[E, B, k * W]` as `[E, B, k, W]`."""
    return x.reshape(*x.shape[:-1], k, x.shape[-1] // k)


def _member_width(w: list[int], a: dict) -> int:
    return w[0] // a["k"]


# ----------------------------------------------------------------------------- making and reducing stacks
def stack(*xs: Tensor, k: int) -> Tensor:
    return ensemble.cat(list(xs))


def mean(s: Tensor, k: int) -> Tensor:
    return _members(s, k).mean(-2)


def member(s: Tensor, k: int, i: int) -> Tensor:
    return _members(s, k)[..., i, :]


def dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1, keepdim=True)


def norm(x: Tensor) -> Tensor:
    return torch.sqrt((x * x).sum(-1, keepdim=True) + EPS)


def total(x: Tensor) -> Tensor:
    return x.sum(-1, keepdim=True)


register(OpDef("stack", "k values of one width side by side as a stack (what stack(k) f(x) makes)",
               lambda w, a: sum(w) if len(set(w)) == 1 else _unequal(w), stack,
               lambda *xs, k: torch.cat(xs), inputs=(1, None), stack_out=lambda w, a: a["k"], side_by_side=True,
               kwargs={"k": 1}, label=lambda a: f"stack of {a['k']}", in_language=False,
               examples=("stack(3) linear(x -> 5)", "stack(2) tanh(x)")))


def _unequal(w: list[int]) -> int:
    raise OpArgError("the members of a stack need one width, got " + ", ".join(map(str, w)), width=True)


def gram_schmidt(x: Tensor, k: int) -> Tensor:
    """Member i minus its projections on the members before it, then scaled to unit length, per sample.
    Members come by `unbind` (its gradient is one stack, where indexing's is a zero-filled copy per member) and
    each projection comes off in one `addcmul`: fewer passes over the members, forward and backward."""
    basis: list[Tensor] = []
    for v in _members(x, k).unbind(-2):
        for e in basis:
            v = torch.addcmul(v, dot(v, e), e, value=-1)
        basis.append(v / norm(v))
    return torch.cat(basis, -1)


def as_stack(x: Tensor, k: int) -> Tensor:
    return x


def _as_stack_width(w: list[int], a: dict) -> int:
    if w[0] % a["k"]:
        raise OpArgError(f"as_stack(x, k = {a['k']}) of {w[0]} features: {w[0]} is not a multiple of {a['k']}",
                         width=True)
    return w[0]


register(OpDef("as_stack", "features of width k * W read as a stack of k members of width W (in order)",
               _as_stack_width, as_stack, lambda x, k: x, kwargs={"k": 2}, stack_out=lambda w, a: a["k"],
               examples=("as_stack(linear(x -> 6), k = 3)",)))


def _gram_schmidt_reference(x: Tensor, k: int) -> Tensor:
    vectors = list(x.reshape(k, -1))
    out: list[Tensor] = []
    for v in vectors:
        u = v - sum((torch.dot(v, e) * e for e in out), torch.zeros_like(v))
        out.append(u / torch.sqrt(torch.dot(u, u) + EPS))
    return torch.cat(out)


def _gram_schmidt_width(w: list[int], a: dict) -> int:
    """k members of width W can be orthonormal only where k <= W: past W, a member's residual is rounding noise,
    which the scaling to unit length blows up (compiled and reference then disagree by 0.05 and more)."""
    k, width = a["k"], w[0] // a["k"]
    if k > width:
        raise OpArgError(f"gram_schmidt of {k} members of width {width}: more members than dimensions cannot be "
                         "orthonormal", width=True, hint=f"make each member at least {k} wide, or the stack at most "
                                                         f"{width} member{'s' * (width > 1)}")
    return w[0]


register(OpDef("gram_schmidt",
               "a stack's members made orthonormal per sample (Gram-Schmidt, in member order; k at most their width)",
               _gram_schmidt_width, gram_schmidt, _gram_schmidt_reference, stacks="read",
               stack_out=lambda w, a: a["k"], examples=("gram_schmidt(stack(3) linear(x -> W))",
                                                     "gram_schmidt(stack(2) linear(z -> 5))")))


def _mix_width(w: list[int], a: dict) -> int:
    if w[1] % a["k"]:
        raise OpArgError(f"mix of a stack of {a['k']} needs one weight per member, got width {w[1]}", width=True,
                         hint="e.g. mix(s, softmax(linear(x -> k)))")
    return w[0] // a["k"] * (w[1] // a["k"])


def mix(s: Tensor, weights: Tensor, k: int) -> Tensor:
    """`[E, B, k * W]` by `[E, B, k]` (one weight per member) or `[E, B, n * k]` (n rows of weights, a new
    stack of n)."""
    members = _members(s, k)
    if weights.shape[-1] == k:
        return (members * weights.unsqueeze(-1)).sum(-2)
    rows = _members(weights, weights.shape[-1] // k)                      # [E, B, n, k]
    return (rows @ members).flatten(-2)


def _mix_reference(s: Tensor, weights: Tensor, k: int) -> Tensor:
    members = s.reshape(k, -1)
    rows = weights.reshape(-1, k)
    return torch.cat([torch.stack([row[i] * members[i] for i in range(k)]).sum(0) for row in rows])


register(OpDef("mix", "the weighted sum of a stack's k members, one weight per member (width k); with a stack of n "
               "rows of k weights, n such sums: a stack of n", _mix_width, mix, _mix_reference, inputs=(2, 2),
               input_names=("s", "weights"), stacks="read",
               stack_out=lambda w, a: w[1] // a["k"] if w[1] > a["k"] else 1,
               examples=(
                   "mix(stack(3) linear(x -> W), softmax(linear(z -> 3)))",
                   "mix(stack(2) tanh(linear(x -> 5)), linear(z -> 2))",
                   "mix(stack(3) linear(x -> 5), softmax(as_stack(linear(z -> 6), k = 2)))")))
register(OpDef("mean", "the mean of a stack's members", _member_width, mean,
               lambda s, k: s.reshape(k, -1).sum(0) / k, input_names=("s",), stacks="read",
               examples=("mean(stack(3) linear(x -> 5))",)))


def _member_index(w: list[int], a: dict) -> int:
    if not a["i"] < a["k"]:
        raise OpArgError(f"member(s, i = {a['i']}) of a stack of {a['k']}: i counts from 0 to {a['k'] - 1}")
    return w[0] // a["k"]


register(OpDef("member", "member i of a stack (from 0)", _member_index, member,
               lambda s, k, i: s.reshape(k, -1)[i], input_names=("s",), kwargs={"i": 0}, stacks="read",
               examples=("member(stack(3) linear(x -> 5), i = 2)",)))


# ------------------------------------------------------------------------------------ per-sample numbers
register(OpDef("dot", "the dot product of two features of one width, per sample (width 1)",
               lambda w, a: _one(w), dot,
               lambda a, b: torch.dot(a, b).reshape(1), inputs=(2, 2), examples=("dot(x, y)",)))
register(OpDef("norm", "the Euclidean length of the features, per sample (width 1)", lambda w, a: 1,
               norm,
               lambda x: torch.sqrt(torch.dot(x, x) + EPS).reshape(1)))
register(OpDef("total", "the sum of the features, per sample (width 1)", lambda w, a: 1,
               total, lambda x: x.sum().reshape(1)))


def _one(w: list[int]) -> int:
    if w[0] != w[1]:
        raise OpArgError(f"dot needs inputs of equal width, got {w[0]} and {w[1]}", width=True)
    return 1


# -------------------------------------------------------------------------------------- computed weights
def _apply_width(w: list[int], a: dict) -> int:
    n, out = w[0], a["out"]
    if w[1] != n * out + out:
        raise OpArgError(f"apply(x -> {out}) of {n} features needs weights of width {n} x {out} + {out} = "
                         f"{n * out + out} (a matrix and a bias), got {w[1]}", width=True,
                         hint=f"make them with e.g. linear(z -> {n * out + out})")
    return out


def apply(x: Tensor, weights: Tensor, out: int) -> Tensor:
    """y = x W + b with W and b each sample's own, read from `weights` (W row-major, then b)."""
    n = x.shape[-1]
    matrix = weights[..., :n * out].reshape(*weights.shape[:-1], n, out)
    return (x.unsqueeze(-2) @ matrix).squeeze(-2) + weights[..., n * out:]


def _apply_reference(x: Tensor, weights: Tensor, out: int) -> Tensor:
    n = x.shape[0]
    return x @ weights[:n * out].reshape(n, out) + weights[n * out:]


register(OpDef("apply", "a linear layer whose weights are computed features (a hypernetwork's output): "
               "x W + b, weights = [W row-major, b] of width x * W + W", _apply_width, apply, _apply_reference,
               inputs=(2, 2), input_names=("x", "weights"), arrow=True,
               examples=("apply(x, linear(z -> W * 5 + 5) -> 5)",
                         "apply(z, linear(embed(task -> 4) -> Z * 3 + 3) -> 3)")))
