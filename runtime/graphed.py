"""The whole SAC update as one CUDA graph, captured once and replayed every step.

At MT10's batch a GPU update is a few hundred small kernels (forward, backward and three fused Adam
steps for actor, critic and temperatures), so eager mode is bound by launching them, not by the
GPU (LeanRL's lesson). Captured, one replay launches them all. The batch is copied into fixed input
tensors before each replay, and the metrics come back in fixed output tensors, overwritten by the
next replay. Capture needs a fixed batch layout (uniform, task-major sampling) and an update that
never waits for the device; SAC.update and its schemes are written that way.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..train_config import TrainConfig
from .replay import Batch
from .sac import SAC


def graph_blocker(device: torch.device, train: TrainConfig) -> str | None:
    """Why this run's update cannot be captured, or None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device}"
    if train.sampling.kind != "uniform" or train.replay.kind != "uniform":
        return "the batch's task layout changes every update (task sampling or TA-PER)"
    return None


class GraphedUpdate:
    """`sac.update` as a replayed CUDA graph; call it like `sac.update(batch)` with a batch of one per seed,
    `[S, B, ...]` (Batch.with_seed_dim for a single agent's).

    Capturing runs a few real updates first (CUDA graphs need warmed-up allocators and optimizer
    state); afterwards the networks, targets and optimizer states are put back exactly as they were,
    so capturing changes nothing the run trains.
    """

    def __init__(self, sac: SAC, per_task: int, obs_dim: int, act_dim: int, warmup: int = 3):
        nets = sac.nets
        device = nets.log_alpha.device
        T, S = sac.num_tasks, sac.seeds
        task = torch.arange(T, device=device).repeat_interleave(per_task)
        n = task.shape[0]
        self.batch = Batch(obs=torch.randn(S, n, obs_dim, device=device),
                           act=torch.rand(S, n, act_dim, device=device) * 2 - 1,
                           reward=torch.randn(S, n, device=device), next_obs=torch.randn(S, n, obs_dim, device=device),
                           done=torch.zeros(S, n, device=device), task=task,
                           index=torch.zeros(S, n, dtype=torch.long, device=device))
        saved = _state(sac)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                sac.update(self.batch)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.metrics = sac.update(self.batch)
        _restore(sac, saved)

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        if batch.obs.shape != self.batch.obs.shape or not batch.task_major or batch.weight is not None:
            raise ValueError("a graphed update takes the task-major batch it was captured for "
                             f"({tuple(self.batch.obs.shape)}), got {tuple(batch.obs.shape)}")
        for name in ("obs", "act", "reward", "next_obs", "done"):
            getattr(self.batch, name).copy_(getattr(batch, name))
        self.graph.replay()
        return self.metrics


def _state(sac: SAC) -> dict:
    """Copies of everything an update writes: parameters, targets and optimizer states."""
    return {"nets": {k: v.detach().clone() for k, v in sac.nets.state_dict().items()},
            "optimizers": {name: {p: {k: v.clone() for k, v in s.items() if isinstance(v, Tensor)}
                                  for p, s in opt.state.items()}
                           for name, opt in sac.optimizers().items()}}


def _restore(sac: SAC, saved: dict) -> None:
    """Write `saved` back into the same tensors the graph reads (new optimizer state, made by the
    warm-up, goes back to zero: Adam's state before its first step)."""
    with torch.no_grad():
        for k, v in sac.nets.state_dict().items():
            v.copy_(saved["nets"][k])
        for name, opt in sac.optimizers().items():
            before = saved["optimizers"][name]
            for p, s in opt.state.items():
                for k, v in s.items():
                    if isinstance(v, Tensor):
                        v.copy_(before[p][k]) if p in before else v.zero_()
