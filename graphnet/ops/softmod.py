"""Soft Modularization (Yang et al., 2020): a routing network and the modular base network it mixes."""
from __future__ import annotations

from ..errors import OpArgError
from ..registry import OpDef, Param, register
from . import ensemble
from ._torch import F, Tensor, torch
from .ensemble import lin
from .widths import dense


# ------------------------------------------------------------------------------------------------ router
def _router_width(w: list[int], a: dict) -> int:
    return (a["layers"] - 1) * a["modules"] ** 2 + a["modules"]


def _router_params(w: list[int], a: dict) -> dict[str, Param]:
    L, M, hid = a["layers"], a["modules"], a["hidden"]
    shapes = dense(w[0], hid, prefix="gate_")                       # the gating embedding
    if L == 1:
        return {**shapes, **dense(hid, M, prefix="head1_")}
    shapes.update(dense(hid, M * M, prefix="head1_"))              # the first routing layer
    for l in range(2, L + 1):                                      # later layers condition on the earlier routings
        shapes.update(dense((l - 1) * M * M, hid, prefix=f"cond{l}_"))
        shapes.update(dense(hid, M * M if l < L else M, prefix=f"head{l}_"))
    return shapes


def _router(p: dict[str, Tensor], e: Tensor, layers: int, modules: int, **_) -> Tensor:
    """p^1 = softmax(lin(relu(g))), later p^l from the earlier routings times the gating embedding g = lin(e);
    the last layer gives the M-way output weights."""
    L, M = layers, modules
    g = lin(p, e, "gate_")
    if L == 1:
        return ensemble.softmax(lin(p, F.relu(g), "head1_"))
    probs = [_softmax_rows(lin(p, F.relu(g), "head1_"), M)]
    for l in range(2, L + 1):
        c = lin(p, torch.cat(probs, -1), f"cond{l}_")
        logits = lin(p, F.relu(c * g), f"head{l}_")
        probs.append(_softmax_rows(logits, M) if l < L else ensemble.softmax(logits))
    return torch.cat(probs, -1)


def _softmax_rows(logits: Tensor, M: int) -> Tensor:
    """An M x M routing matrix per sample, each row (target module) a softmax over source modules."""
    return ensemble.softmax(logits.view(*logits.shape[:-1], M, M)).flatten(-2)


def _router_reference(p: dict[str, Tensor], e: Tensor, layers: int, modules: int, **_) -> Tensor:
    L, M = layers, modules

    def dense_(x: Tensor, prefix: str) -> Tensor:
        return x @ p[f"{prefix}weight"] + p[f"{prefix}bias"]
    g = dense_(e, "gate_")
    if L == 1:
        return torch.softmax(dense_(torch.relu(g), "head1_"), 0)
    routings: list[Tensor] = []
    for l in range(1, L + 1):
        if l == 1:
            logits = dense_(torch.relu(g), "head1_")
        else:
            c = dense_(torch.cat(routings), f"cond{l}_")
            logits = dense_(torch.relu(c * g), f"head{l}_")
        if l < L:
            routings.append(torch.cat([torch.softmax(logits[j * M:(j + 1) * M], 0) for j in range(M)]))
        else:
            routings.append(torch.softmax(logits, 0))
    return torch.cat(routings)


register(OpDef(
    "router", "Soft Modularization's routing network: per-sample routing matrices between L layers of M modules",
    _router_width, _router, _router_reference, input_names=("e",), params=_router_params,
    kwargs={"layers": 2, "modules": 2, "hidden": 256},
    examples=("router(x, layers = 1, modules = 3, hidden = W)", "router(x, layers = 3, modules = 2, hidden = W)"),
    label=lambda a: f"router {a['layers']}\u00d7{a['modules']}"))


# ----------------------------------------------------------------------------------------------- modular
def _modular_params(w: list[int], a: dict) -> dict[str, Param]:
    L, M, W = a["layers"], a["modules"], a["width"]
    shapes = {"weight1": Param((M, w[0], W), "uniform", w[0]), "bias1": Param((M, W), "uniform", w[0])}
    for l in range(2, L + 1):
        shapes.update({f"weight{l}": Param((M, W, W), "uniform", W), f"bias{l}": Param((M, W), "uniform", W)})
    return shapes


def _modular(p: dict[str, Tensor], f: Tensor, r: Tensor, layers: int, modules: int, **_) -> Tensor:
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


def _modular_reference(p: dict[str, Tensor], f: Tensor, r: Tensor, layers: int, modules: int, **_) -> Tensor:
    L, M = layers, modules
    outs = [f @ p["weight1"][i] + p["bias1"][i] for i in range(M)]
    for l in range(2, L + 1):
        route = r[(l - 2) * M * M:(l - 1) * M * M]
        inputs = [torch.relu(torch.stack([route[j * M + i] * outs[i] for i in range(M)]).sum(0)) for j in range(M)]
        outs = [inputs[j] @ p[f"weight{l}"][j] + p[f"bias{l}"][j] for j in range(M)]
    final = r[(L - 1) * M * M:]
    return torch.relu(torch.stack([final[j] * outs[j] for j in range(M)]).sum(0))


def _from_router(inputs: list[tuple[str, dict]], attrs: dict) -> dict:
    """modular takes its layers and modules from the router that feeds it."""
    op, router = inputs[1]
    if op != "router":
        raise OpArgError("modular's second input must be a router(...)")
    return {**attrs, "layers": router["layers"], "modules": router["modules"]}


register(OpDef(
    "modular", "L layers of M modules of width W, mixed by the routing; M (f W + W) + (L - 1) M (W² + W) parameters",
    lambda w, a: a["width"], _modular, _modular_reference, inputs=(2, 2), input_names=("f", "router(...)"),
    params=_modular_params, kwargs={"width": 128}, derive=_from_router,
    examples=("modular(x, router(y, layers = 3, modules = 2, hidden = W), width = W)",
              "modular(x, router(y, layers = 1, modules = 3, hidden = Z), width = Z)"),
    label=lambda a: f"modular {a['layers']}\u00d7{a['modules']}"))
