"""The op library in torch, each op written once for an ensemble of parameter sets.

Every parametric op is a function `f(p, *xs)` where each parameter in `p` has a leading ensemble
dimension E and each input is `[E, B, features]` with the same E (the caller broadcasts). One form serves
every sharing mode: twin critics are E = 2; a task-major batch folds the T tasks into the ensemble (`[E*T, B/T, ...]`,
so a per-task linear is one batched matmul); bank(K) either composes per-task parameters first or
folds the K copies into the ensemble and mixes their outputs.

`param_shapes` gives each op's parameters (shape of one copy, init); `graphnet.ops` counts the same
parameters without torch, and the tests hold the two equal.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# (shape of one copy, init, fan_in): init is "uniform" (PyTorch's Linear default, bound 1/sqrt(fan_in)),
# "zeros", "ones", "normal" or "eye"
Shape = tuple[tuple[int, ...], str, int]


def _linear_shapes(fan_in: int, out: int, bias: bool = True, prefix: str = "") -> dict[str, Shape]:
    shapes: dict[str, Shape] = {f"{prefix}weight": ((fan_in, out), "uniform", fan_in)}
    if bias:
        shapes[f"{prefix}bias"] = ((out,), "uniform", fan_in)
    return shapes


def param_shapes(op: str, attrs: dict, widths: list[int]) -> dict[str, Shape]:
    """Parameters of one copy of an op, given its attributes and input widths."""
    if op == "linear":
        shapes = _linear_shapes(widths[0], attrs["out"], attrs["bias"])
        if attrs["init"] == "zero":
            shapes = {k: (s, "zeros", f) for k, (s, _, f) in shapes.items()}
        return shapes
    if op == "layernorm":
        return {"scale": ((widths[0],), "ones", 1), "shift": ((widths[0],), "zeros", 1)}
    if op == "embed":
        return {"table": ((attrs["out"],), "normal", 1)}
    if op == "combine":
        n = widths[0]
        kinds: dict[str, dict[str, Shape]] = {"sum": {"alpha": ((), "ones", 1), "beta": ((), "ones", 1)},
                "proj": _linear_shapes(2 * n, n, bias=False),
                                              "gate": _linear_shapes(2 * n, n)}
        return kinds.get(attrs["kind"], {})
    if op == "film":
        h, z = widths
        return {**_linear_shapes(z, h, prefix="gamma_"), **_linear_shapes(z, h, prefix="beta_")}
    if op == "affine":
        h, z = widths
        return {"matrix_weight": ((z, h * h), "zeros", z), "matrix_bias": ((h * h,), "eye", h),
                **_linear_shapes(z, h, prefix="shift_")}
    if op == "router":
        L, M, hid = attrs["layers"], attrs["modules"], attrs["hidden"]
        shapes = _linear_shapes(widths[0], hid, prefix="gate_")
        if L == 1:
            return {**shapes, **_linear_shapes(hid, M, prefix="head1_")}
        shapes.update(_linear_shapes(hid, M * M, prefix="head1_"))
        for l in range(2, L + 1):
            shapes.update(_linear_shapes((l - 1) * M * M, hid, prefix=f"cond{l}_"))
            shapes.update(_linear_shapes(hid, M * M if l < L else M, prefix=f"head{l}_"))
        return shapes
    if op == "modular":
        L, M, W = attrs["layers"], attrs["modules"], attrs["width"]
        shapes = {"weight1": ((M, widths[0], W), "uniform", widths[0]), "bias1": ((M, W), "uniform", widths[0])}
        for l in range(2, L + 1):
            shapes.update({f"weight{l}": ((M, W, W), "uniform", W), f"bias{l}": ((M, W), "uniform", W)})
        return shapes
    if op == "mixture":
        k, W = attrs["experts"], attrs["width"]
        shapes = {"weight1": ((k, widths[0], W), "uniform", widths[0]), "bias1": ((k, W), "uniform", widths[0])}
        for l in range(2, attrs["layers"] + 1):
            shapes.update({f"weight{l}": ((k, W, W), "uniform", W), f"bias{l}": ((k, W), "uniform", W)})
        return shapes
    raise KeyError(op)


def init_(t: Tensor, init: str, fan_in: int) -> None:
    """Fill one copy of a parameter in place."""
    with torch.no_grad():
        if init == "uniform":
            bound = 1 / math.sqrt(fan_in)
            t.uniform_(-bound, bound)
        elif init == "zeros":
            t.zero_()
        elif init == "ones":
            t.fill_(1.0)
        elif init == "normal":
            t.normal_()
        elif init == "eye":
            t.copy_(torch.eye(fan_in, dtype=t.dtype).flatten())
        else:
            raise KeyError(init)


# --------------------------------------------------------------------------------------------- ops
def _lin(p: dict[str, Tensor], x: Tensor, prefix: str = "") -> Tensor:
    """[E, B, in] @ [E, in, out] (+ [E, out])."""
    w, b = p[f"{prefix}weight"], p.get(f"{prefix}bias")
    return torch.baddbmm(b.unsqueeze(1), x, w) if b is not None else torch.bmm(x, w)


def linear(p, x, accumulate: Tensor | None = None, **_):
    """x W + b; with `accumulate`, added into that tensor in place: a residual sum without a pass of its own."""
    if accumulate is None:
        return _lin(p, x)
    out = accumulate.baddbmm_(x, p["weight"])
    return out.add_(p["bias"].unsqueeze(1)) if "bias" in p else out


def layernorm(p, x, **_):
    return F.layer_norm(x, x.shape[-1:]) * p["scale"].unsqueeze(1) + p["shift"].unsqueeze(1)


def combine(p, a, b, kind: str, **_):
    if kind == "none":
        return a
    if kind == "add":
        return a + b
    if kind == "concat":
        return cat([a, b])
    if kind == "sum":
        return p["alpha"].view(-1, 1, 1) * a + p["beta"].view(-1, 1, 1) * b
    if kind == "proj":
        return _lin(p, cat([a, b]))
    s = torch.sigmoid(_lin(p, cat([a, b])))  # gate
    return s * a + (1 - s) * b


def film(p, h, z, **_):
    return _lin(p, z, "gamma_") * h + _lin(p, z, "beta_")


def film_coefficients(p, z, **_):
    """FiLM's gamma(z) and beta(z), side by side: the part of film that reads z alone."""
    return torch.cat([_lin(p, z, "gamma_"), _lin(p, z, "beta_")], -1)


def affine(p, h, z, **_):
    """M(z) h + beta(z) with M(z) = reshape(z W + b): as sum_j z'_j (A_j h), z' = [1, z], A_0 = reshape(b),
    A_j = reshape(W_j): one matmul of h against every A_j, never a per-sample n x n matrix."""
    E, B, n = h.shape
    a = torch.cat([p["matrix_bias"].unsqueeze(1), p["matrix_weight"]], 1).view(E, -1, n, n)   # [E, Z+1, n, n]
    u = torch.bmm(h, a.permute(0, 3, 1, 2).reshape(E, n, -1)).view(E, B, -1, n)              # [E, B, Z+1, n]
    z1 = torch.cat([torch.ones_like(z[..., :1]), z], -1).unsqueeze(-2)                        # [E, B, 1, Z+1]
    return (z1 @ u).squeeze(-2) + _lin(p, z, "shift_")


def affine_coefficients(p, z, **_):
    """D-Grad's M(z) (flattened row-major, n x n) and beta(z), side by side: the part of affine that reads z alone."""
    return torch.cat([_lin(p, z, "matrix_"), _lin(p, z, "shift_")], -1)


def router(p, e, layers: int, modules: int, **_):
    """Soft Modularization's routing: p^1 = softmax(lin(relu(g))), later p^l from the earlier routings
    times the gating embedding g = lin(e); the last layer gives the M-way output weights."""
    L, M = layers, modules
    g = _lin(p, e, "gate_")
    if L == 1:
        return softmax(_lin(p, F.relu(g), "head1_"))
    probs = [_softmax_rows(_lin(p, F.relu(g), "head1_"), M)]
    for l in range(2, L + 1):
        c = _lin(p, torch.cat(probs, -1), f"cond{l}_")
        logits = _lin(p, F.relu(c * g), f"head{l}_")
        probs.append(_softmax_rows(logits, M) if l < L else softmax(logits))
    return torch.cat(probs, -1)


def _softmax_rows(logits: Tensor, M: int) -> Tensor:
    """An M x M routing matrix per sample, each row (target module) a softmax over source modules."""
    return softmax(logits.view(*logits.shape[:-1], M, M)).flatten(-2)


def modular(p, f, r, layers: int, modules: int, **_):
    """Module j of layer l+1 reads relu(sum_i p^l[j, i] out_i^l); the output is relu(sum_j p[j] out_j^L)."""
    L, M = layers, modules
    E, B = r.shape[0], r.shape[1]
    out = torch.einsum("ebf,emfw->embw", f, p["weight1"]) + p["bias1"].unsqueeze(2)
    for l in range(2, L + 1):
        route = r[..., (l - 2) * M * M:(l - 1) * M * M].view(E, B, M, M)
        mixed = F.relu(torch.einsum("ebji,eibw->ejbw", route, out))
        out = torch.einsum("ejbw,ejwv->ejbv", mixed, p[f"weight{l}"]) + p[f"bias{l}"].unsqueeze(2)
    final = r[..., (L - 1) * M * M:]
    return F.relu(torch.einsum("ebj,ejbw->ebw", final, out))


def mixture(p, x, a, layers: int, **_):
    """CARE: k expert MLPs of x, weighted by the attention a (one weight per expert)."""
    h = torch.einsum("ebi,ekiw->ekbw", x, p["weight1"]) + p["bias1"].unsqueeze(2)
    for l in range(2, layers + 1):
        h = torch.einsum("ekbw,ekwv->ekbv", F.relu(h), p[f"weight{l}"]) + p[f"bias{l}"].unsqueeze(2)
    # elementwise, not einsum's B products [1, K] @ [K, W]: at CARE's K = 4, W = 50 those took 3.4 ms of a
    # fwd+bwd step vs 2.0 (one thread); at Soft Modularization's W = 128 (modular) einsum was the faster
    return (a.transpose(1, 2).unsqueeze(-1) * h).sum(1)


# ops whose output is linear in their parameters: for these, mixing the outputs of a bank's K copies
# equals composing the parameters first, so bank(K) may take whichever is cheaper
LINEAR_IN_PARAMS = {"linear", "layernorm", "film", "affine"}


# pieces of ops the lowering may compute apart, on one row per task (see task_rows.TASK_CONDITIONED)
PARTS: dict[str, dict[str, Callable]] = {"film": {"coefficients": film_coefficients},
                                         "affine": {"coefficients": affine_coefficients}}

PARAMETRIC: dict[str, Callable] = {"linear": linear, "layernorm": layernorm, "combine": combine, "film": film,
                                   "affine": affine, "router": router, "modular": modular, "mixture": mixture}


def to_ensemble(x: Tensor, E: int) -> Tensor:
    """x `[1, n or E, ...]` as `[E, ...]`. Already E: x itself, not an expand view (each one is an autograd node
    whose backward runs, too: 99 a CARE + PTSL step, nearly all of them no-ops). n members (seeds, see
    build's `seeds`) broadcast to E = n * m seed-major: member i's value for its m twins."""
    n = x.shape[0]
    if n == E:
        return x
    if n == 1:
        return x.expand(E, *x.shape[1:])
    return x.unsqueeze(1).expand(n, E // n, *x.shape[1:]).flatten(0, 1)


def aligned(*xs: Tensor) -> tuple[Tensor, ...]:
    """The tensors on one ensemble size, the largest (to_ensemble)."""
    E = max(x.shape[0] for x in xs)
    return tuple(to_ensemble(x, E) for x in xs)


def add(a: Tensor, b: Tensor) -> Tensor:
    return torch.add(*aligned(a, b))


def sub(a: Tensor, b: Tensor) -> Tensor:
    return torch.sub(*aligned(a, b))


def mul(a: Tensor, b: Tensor) -> Tensor:
    return torch.mul(*aligned(a, b))


# a group of seeds' trunks (build's seeds > 1) call these for torch's, whose broadcasting cannot pair a seed's
# value with its twin critics' ([S, ...] with [2S, ...]); see lower.align_seeds
SEED_ALIGNED: dict[Callable, Callable] = {torch.add: add, torch.sub: sub, torch.mul: mul}


def cat(xs: list[Tensor]) -> Tensor:
    """Concatenate features, broadcasting the ensemble dimension."""
    return torch.cat(aligned(*xs), -1)


def scale(x: Tensor, factor: float) -> Tensor:
    return x * factor


def softmax(x: Tensor) -> Tensor:
    """Over the last dim. Below 16 entries torch's CPU kernel is slow and these elementwise ops are not
    (81,920 rows of 4, one thread: 6.2 vs 1.2 ms forward, 8.3 vs 3.4 forward and backward; Soft
    Modularization's 4-way routing). The max is a constant shift, so it carries no gradient."""
    if x.is_cuda or x.shape[-1] >= 16:
        return torch.softmax(x, -1)
    e = (x - x.detach().amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def detach(x: Tensor) -> Tensor:
    return x.detach()


STATELESS: dict[str, Callable] = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu, "elu": F.elu,
    "softmax": softmax, "detach": detach,
    "add": torch.add, "sub": torch.sub, "mul": torch.mul,
}
