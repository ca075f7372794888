"""Per-task replay on the training device: `[T, capacity, ...]` ring buffers, one slot per task per step.

Uniform sampling draws the same number of transitions from every task and returns them task-major
(equal contiguous chunks), the layout the compiler's fast path wants.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    obs: Tensor
    act: Tensor
    reward: Tensor
    next_obs: Tensor
    done: Tensor
    task: Tensor
    index: Tensor                 # slot in the task's buffer (for priority updates)
    weight: Tensor | None = None  # importance weights (prioritized replay)
    task_major: bool = True       # equal contiguous chunks per task

    def with_seed_dim(self) -> Batch:
        """A single agent's batch as a group of one seed's: `[1, B, ...]` (the task ids stay `[B]`)."""
        return replace(self, obs=self.obs[None], act=self.act[None], reward=self.reward[None],
                       next_obs=self.next_obs[None], done=self.done[None], index=self.index[None],
                       weight=None if self.weight is None else self.weight[None])


class TaskReplay:
    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        T, C = num_tasks, capacity
        self.num_tasks, self.capacity, self.device = T, C, device
        self.obs = torch.zeros(T, C, obs_dim, device=device)
        self.next_obs = torch.zeros(T, C, obs_dim, device=device)
        self.act = torch.zeros(T, C, act_dim, device=device)
        self.reward = torch.zeros(T, C, device=device)
        self.done = torch.zeros(T, C, device=device)
        self.pos, self.size = 0, 0
        self._tasks = torch.arange(T, device=device)

    def add(self, obs: Tensor, act: Tensor, reward: Tensor, next_obs: Tensor, done: Tensor) -> int:
        """One transition per task; returns the slot written."""
        p = self.pos
        self.obs[:, p], self.act[:, p], self.reward[:, p] = obs, act, reward
        self.next_obs[:, p], self.done[:, p] = next_obs, done
        self.pos = (p + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        return p

    def sample(self, counts: Tensor | int, generator: torch.Generator | None = None) -> Batch:
        """`counts` transitions per task (an int: the same for all, task-major), uniformly."""
        if isinstance(counts, int):
            idx = torch.randint(0, self.size, (self.num_tasks, counts), device=self.device, generator=generator)
            task = self._tasks.repeat_interleave(counts)
            return self.gather(task, idx.flatten(), task_major=True)
        task = self._tasks.repeat_interleave(counts)
        idx = torch.randint(0, self.size, task.shape, device=self.device, generator=generator)
        return self.gather(task, idx, task_major=False)

    def gather(self, task: Tensor, index: Tensor, task_major: bool, weight: Tensor | None = None) -> Batch:
        return Batch(self.obs[task, index], self.act[task, index], self.reward[task, index],
                     self.next_obs[task, index], self.done[task, index], task, index, weight, task_major)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("obs", "next_obs", "act", "reward", "done", "pos", "size")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(self.device) if isinstance(v, Tensor) else v)
