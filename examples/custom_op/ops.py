"""Two ops graphnet does not ship, written as a user would: a spec that says `import "ops.py"` can call them.

`rmsnorm(x)`: root-mean-square normalisation with a learned gain (Zhang & Sennrich, 2019), one gain per
feature. `l2norm(x)`: each sample's features scaled to unit length, no parameters.

Each op is one `OpDef`: its width rule, its parameter shapes (graphnet counts them), an ensemble torch
implementation (inputs `[E, B, width]`, each parameter `[E, ...]`), and a per-sample reference written
apart from it (`graphnet check-op ops.py` holds the two equal)."""
import torch

from graphnet.registry import OpDef, Param, register

EPS = 1e-6


def rmsnorm(p, x):
    """`[E, B, n]`: x / rms(x) * gain, the gain `[E, n]` broadcast over the batch."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * p["gain"].unsqueeze(1)


def rmsnorm_reference(p, x):
    """One sample's vector `[n]`."""
    rms = torch.sqrt(sum(v * v for v in x) / len(x) + EPS)
    return x / rms * p["gain"]


def l2norm(x):
    return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + EPS)


def l2norm_reference(x):
    return x / torch.sqrt(torch.dot(x, x) + EPS)


register(OpDef(
    "rmsnorm", "x / rms(x) times a learned gain per feature", width=lambda widths, attrs: widths[0],
    forward=rmsnorm, reference=rmsnorm_reference,
    params=lambda widths, attrs: {"gain": Param((widths[0],), "ones")},
    linear_in_params=True))          # the output is linear in the gain: a bank(K) may mix K outputs

register(OpDef(
    "l2norm", "each sample's features scaled to unit length", width=lambda widths, attrs: widths[0],
    forward=l2norm, reference=l2norm_reference))
