"""CARE (Sodhani et al., 2021): a mixture of encoders weighted by a task-conditioned attention."""
from __future__ import annotations

from ..errors import OpArgError
from ..registry import OpDef, Param, register
from ._torch import F, Tensor, torch


def _mixture_width(w: list[int], a: dict) -> int:
    if w[1] != a["experts"]:
        raise OpArgError(f"mixture weights have width {w[1]} but there are {a['experts']} experts", width=True,
                         hint="give one weight per expert, e.g. softmax(linear(z -> experts))")
    return a["width"]


def _mixture_params(w: list[int], a: dict) -> dict[str, Param]:
    k, W = a["experts"], a["width"]
    shapes = {"weight1": Param((k, w[0], W), "uniform", w[0]), "bias1": Param((k, W), "uniform", w[0])}
    for l in range(2, a["layers"] + 1):
        shapes.update({f"weight{l}": Param((k, W, W), "uniform", W), f"bias{l}": Param((k, W), "uniform", W)})
    return shapes


def _mixture(p: dict[str, Tensor], x: Tensor, a: Tensor, layers: int, **_) -> Tensor:
    """k expert MLPs of x, weighted by the attention a (one weight per expert)."""
    h = torch.einsum("ebi,ekiw->ekbw", x, p["weight1"]) + p["bias1"].unsqueeze(2)
    for l in range(2, layers + 1):
        h = torch.einsum("ekbw,ekwv->ekbv", F.relu(h), p[f"weight{l}"]) + p[f"bias{l}"].unsqueeze(2)
    # elementwise, not einsum's B products [1, K] @ [K, W]: at CARE's K = 4, W = 50 those took 3.4 ms of a
    # fwd+bwd step vs 2.0 (one thread); at Soft Modularization's W = 128 (modular) einsum was the faster
    return (a.transpose(1, 2).unsqueeze(-1) * h).sum(1)


def _mixture_reference(p: dict[str, Tensor], x: Tensor, attention: Tensor, experts: int, layers: int,
                       **_) -> Tensor:
    encodings = []
    for i in range(experts):
        h = x @ p["weight1"][i] + p["bias1"][i]
        for l in range(2, layers + 1):
            h = torch.relu(h) @ p[f"weight{l}"][i] + p[f"bias{l}"][i]
        encodings.append(h)
    return torch.stack([attention[i] * encodings[i] for i in range(experts)]).sum(0)


register(OpDef(
    "mixture", "CARE: k expert MLPs of x, weighted by `weights` (width k); k (x W + W + (layers - 1)(W² + W)) "
    "parameters; the same as mix(stack(k) expert(x -> W), weights), the form care.gn is written in",
    _mixture_width, _mixture, _mixture_reference, inputs=(2, 2), input_names=("x", "weights"),
    params=_mixture_params, kwargs={"experts": 4, "width": 50, "layers": 2},
    examples=("mixture(x, softmax(z), experts = Z, width = W)", "mixture(x, z, experts = Z, width = 5, layers = 3)"),
    label=lambda a: f"mixture of {a['experts']}"))
