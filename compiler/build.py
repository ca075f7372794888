"""A spec -> the agent's torch networks: actor, twin critics (one stacked module), target, temperatures."""
from __future__ import annotations

import copy
import math
from typing import cast

import networkx as nx
import torch
from torch import Tensor, nn

from .._spec import Spec
from ..errors import DeviceError, GraphnetError
from ..ir import info, modules, nodes, reads_metadata
from .host_memory import keep_freed_memory
from .lower import lower
from .modules import ParamOp, TaskLayout

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class Trunk(nn.Module):
    """One compiled trunk: picks the task layout once per call, then runs the fx GraphModule."""

    def __init__(self, graph_module: nn.Module, num_tasks: int, reads_act: bool):
        super().__init__()
        self.graph_module, self.num_tasks, self.reads_act = graph_module, num_tasks, reads_act

    def forward(self, obs: Tensor, task: Tensor, act: Tensor | None = None, task_major: bool | None = None) -> Tensor:
        """`[E, B, out]`. task_major=None checks the ids; the runtime, which knows, passes True."""
        major = TaskLayout.is_major(task, self.num_tasks) if task_major is None else task_major
        layout = TaskLayout(task, self.num_tasks, major)
        return self.graph_module(obs, act, layout) if self.reads_act else self.graph_module(obs, layout)


class Actor(nn.Module):
    """obs, task -> (mean, log_std) of a tanh-squashed Gaussian; log_std squashed into [-20, 2].

    obs `[B, obs]` gives `[B, act]` each; a group of seeds (build's `seeds`) takes `[S, B, obs]`, one batch per
    seed, and gives `[S, B, act]`."""

    def __init__(self, trunk: Trunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, obs: Tensor, task: Tensor, task_major: bool | None = None) -> tuple[Tensor, Tensor]:
        out = self.trunk(obs, task, task_major=task_major)
        mean, raw = (out if obs.dim() == 3 else out[0]).chunk(2, -1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1)
        return mean, log_std


class Critic(nn.Module):
    """obs, act, task -> (q1, q2): both twins in one stacked module (ensemble dimension 2; a group of S seeds,
    2S, seed-major). `[B, ...]` inputs give `[B, 1]` each, `[S, B, ...]` give `[S, B, 1]`."""

    def __init__(self, trunk: Trunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, obs: Tensor, act: Tensor, task: Tensor, task_major: bool | None = None) -> tuple[Tensor, Tensor]:
        q = self.trunk(obs, task, act, task_major)
        if obs.dim() == 3:
            q = q.unflatten(0, (-1, 2))
            return q[:, 0], q[:, 1]
        return q[0], q[1]


class AgentNets(nn.Module):
    """Everything the agent learns. `parameters()` counts each shared tensor once, as `graphnet params` does."""

    def __init__(self, actor: Actor, critic: Critic, critic_target: Critic, log_alpha: nn.Parameter,
                 bank_table: nn.Parameter | None, graph: nx.DiGraph, op_modules: dict[str, ParamOp],
                 features: nn.ModuleDict, seeds: int = 1):
        super().__init__()
        self.seeds = seeds                  # independent agents in the ensemble dimension (build's `seeds`)
        self.actor, self.critic, self.critic_target = actor, critic, critic_target
        self.log_alpha, self.bank_table = log_alpha, bank_table
        self.graph = graph                  # the IR the networks were built from
        self.op_modules = op_modules        # IR module id -> its torch parameters (plain dict: not re-registered)
        self.features = features            # agent-level named features (e.g. shared-unique's u)

    def feature(self, name: str, obs: Tensor, task: Tensor, task_major: bool | None = None) -> Tensor:
        """A named agent-level feature of a batch, `[B, width]` (`[S, B, width]` for a group's; what the triplet
        loss trains)."""
        out = self.features[name](obs, task, task_major=task_major)
        return out if obs.dim() == 3 else out[0]

    def feature_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.features[name].parameters())


def built_counts(nets: AgentNets) -> dict[str, int]:
    """The built tensors' sizes in `graphnet params`' fields. A trunk's own count leaves out the common
    parameters: tensors both actor and critic read, and the composition table w (one per agent, counted
    apart by the accounting even where only the actor reads it)."""
    actor, critic, target = ({id(p): p.numel() for p in m.parameters()}
                             for m in (nets.actor, nets.critic, nets.critic_target))
    common = (actor.keys() & critic.keys()) | ({id(nets.bank_table)} if nets.bank_table is not None else set())
    def own(sizes: dict[int, int]) -> int:
        return sum(n for i, n in sizes.items() if i not in common)
    return {"actor": own(actor), "critic": own(critic), "critic_target": own(target),
            "common": sum((actor | critic)[i] for i in common), "alpha": nets.log_alpha.numel(),
            "total": sum(p.numel() for p in nets.parameters())}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when present and the CPU otherwise: what `build` and a run default to. A device this
    process cannot use is a DeviceError here, not a torch traceback in the middle of a build."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device '{device}': use cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device '{device}': graphnet runs on cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        build_kind = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        raise DeviceError(f"device '{device}': this torch ({torch.__version__}, {build_kind}) has no CUDA device; "
                          "use cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) are visible")
    return resolved


def compile_module(module: nn.Module, compile: bool | str) -> nn.Module:
    """torch.compile of `module`: `compile` is True (the default mode) or a torch.compile mode."""
    return cast(nn.Module, torch.compile(module, mode=compile if isinstance(compile, str) else None))


def build(spec: Spec, obs_dim: int, act_dim: int, num_tasks: int, device: str | torch.device | None = None,
          task_metadata: Tensor | None = None, compile: bool | str = False, seeds: int = 1) -> AgentNets:
    """Compile a spec to the agent's networks on `device` (CUDA when present by default).

    `task_metadata` ([T, META]) is required by specs that read `meta(task)`. `compile`: True, or a
    torch.compile mode ("reduce-overhead" also replays CUDA graphs), wraps each trunk in torch.compile.
    On the CPU, the process keeps freed memory for reuse from then on (see host_memory).

    `seeds` > 1 builds that many independent agents as one: every parameter gets a leading seed dimension,
    seed-major (a module's `[E, copies, ...]` becomes `[S * E, ...]`, w `[S, T, K]`, the temperatures
    `[S, T]`), and the networks take one batch per seed (`[S, B, ...]`; see Actor, Critic)."""
    meta_width = task_metadata.shape[1] if task_metadata is not None else 768
    g = spec.graph_for(obs_dim, act_dim, num_tasks, meta_width)
    if task_metadata is None and reads_metadata(nodes(g)):
        raise GraphnetError(f"{spec.path} reads meta(task): pass task_metadata, a [tasks, width] tensor")
    bank = info(g).bank
    table = None
    group = (seeds,) if seeds > 1 else ()
    if bank:
        table = nn.Parameter(torch.eye(num_tasks).repeat(*group, 1, 1) if bank["w"] == "onehot"
                             else torch.randn(*group, num_tasks, bank["K"]))
    op_modules = {mid: ParamOp(m, (2 if m.role == "critic" else 1) * seeds, table if m.sharing == "bank" else None,
                               identical=bank is not None and bank["init"] == "identical")
                  for mid, m in modules(g).items()}
    meta = task_metadata.to(torch.get_default_dtype()) if task_metadata is not None else None
    actor = Actor(Trunk(lower(g, "actor", op_modules, meta, seeds=seeds), num_tasks, reads_act=False))
    critic = Critic(Trunk(lower(g, "critic", op_modules, meta, seeds=seeds), num_tasks, reads_act=True))
    shared = [op_modules[mid] for mid, m in modules(g).items() if m.role == "common"]
    keep = [*shared, *([table] if table is not None else [])] if info(g).target == "shared" else []
    critic_target = copy.deepcopy(critic, memo={id(obj): obj for obj in keep})   # shares, never copies, these
    shared_params = {id(p) for m in shared for p in m.parameters()} | ({id(table)} if table is not None else set())
    for p in critic_target.parameters():
        if id(p) not in shared_params:
            p.requires_grad_(False)
    features = nn.ModuleDict({name: Trunk(lower(g, "feature", op_modules, meta, out=nid, seeds=seeds), num_tasks,
                                          False)
                              for name, nid in info(g).features.items()
                              if "act" not in g or not nx.has_path(g, "act", nid)})
    log_alpha = nn.Parameter(torch.full((*group, num_tasks), math.log(spec.train.init_alpha)))
    nets = AgentNets(actor, critic, critic_target, log_alpha, table, g, op_modules, features, seeds)
    if compile:
        for trunk in (actor.trunk, critic.trunk, critic_target.trunk):
            trunk.graph_module = compile_module(trunk.graph_module, compile)
    device = resolve_device(device)
    if device.type == "cpu":
        keep_freed_memory()
    return nets.to(device)
