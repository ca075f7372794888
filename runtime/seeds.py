"""Several seeds of one spec trained in one process as one agent: the compiler's ensemble dimension.

`build(..., seeds=S)` stacks S independent agents seed-major in every tensor; SAC then runs one update
for all of them, on one batch per seed. This module makes such a group from the seeds' own starts (seed s
begins with the weights `graphnet train --seed s` begins with) and splits its state back into the seeds'
own, so that each seed's checkpoint is an ordinary single run's: a group resumes from its seeds' files,
and one seed's directory is a run directory like any other.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._spec import Spec
from ..compiler import build
from .replay import Batch
from .sac import SAC


class SeedGroup:
    """The group's networks (`nets`; for one seed, that seed's own) and the conversions of states between the
    group's layout and the seeds' (a seed's rows of every tensor are its parameters)."""

    def __init__(self, spec: Spec, obs_dim: int, act_dim: int, num_tasks: int, seeds: list[int],
                 device: torch.device):
        self.seeds, self.num_tasks = list(seeds), num_tasks
        singles = []
        for seed in self.seeds:
            torch.manual_seed(seed)   # as a single run seeds torch before it builds
            singles.append(build(spec, obs_dim, act_dim, num_tasks, device=device))
        if len(singles) == 1:         # a single run: its networks, and the random stream a run has always had
            self.nets = singles[0]
        else:
            self.nets = build(spec, obs_dim, act_dim, num_tasks, device=device, seeds=len(singles))
        self._single = {k: v.shape for k, v in singles[0].state_dict().items()}
        self._group = {k: v.shape for k, v in self.nets.state_dict().items()}
        if len(singles) > 1:
            self.nets.load_state_dict(self.stack_states([n.state_dict() for n in singles]))

    @property
    def size(self) -> int:
        return len(self.seeds)

    def _row(self, x: Tensor, i: int, shape: torch.Size) -> Tensor:
        """Seed i's part of a seed-major tensor, as a tensor of its own (a view would save the whole group)."""
        return x.reshape(self.size, -1)[i].reshape(shape).clone()

    def seed_state(self, state: dict[str, Tensor], i: int) -> dict[str, Tensor]:
        """Seed i's networks' state_dict, from the group's."""
        return {k: v if self._group[k] == self._single[k] else self._row(v, i, self._single[k])
                for k, v in state.items()}

    def stack_states(self, states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The group's networks' state_dict, from the seeds' (in `seeds` order)."""
        return {k: states[0][k] if shape == self._single[k] else torch.stack([s[k] for s in states]).reshape(shape)
                for k, shape in self._group.items()}

    def _param_shapes(self, opt: torch.optim.Optimizer) -> list[tuple[torch.Size, torch.Size]]:
        """(single, group) shape of each parameter an optimizer holds, in its state_dict's order."""
        names = {id(p): n for n, p in self.nets.named_parameters()}
        return [(self._single[names[id(p)]], p.shape) for g in opt.param_groups for p in g["params"]]

    def seed_optimizers(self, states: dict[str, dict], sac: SAC, i: int) -> dict[str, dict]:
        """Seed i's optimizer state_dicts, from the group's (Adam's step counts are the group's, one for all)."""
        if self.size == 1:   # a single run's are its own: no copy of every Adam state at each checkpoint
            return states
        out = {}
        for key, opt in sac.optimizers().items():
            shapes = self._param_shapes(opt)
            out[key] = {"param_groups": states[key]["param_groups"],
                        "state": {j: {k: v if v.dim() == 0 else self._row(v, i, shapes[j][0]) for k, v in s.items()}
                                  for j, s in states[key]["state"].items()}}
        return out

    def stack_optimizers(self, states: list[dict[str, dict]], sac: SAC) -> dict[str, dict]:
        """The group's optimizer state_dicts, from the seeds'."""
        if self.size == 1:
            return states[0]
        out = {}
        for key, opt in sac.optimizers().items():
            shapes, seeds = self._param_shapes(opt), [s[key] for s in states]
            out[key] = {"param_groups": seeds[0]["param_groups"],
                        "state": {j: {k: v if v.dim() == 0 else torch.stack([s["state"][j][k] for s in seeds])
                                      .reshape(shapes[j][1]) for k, v in st.items()}
                                  for j, st in seeds[0]["state"].items()}}
        return out

    def seed_replay(self, state: dict, i: int) -> dict:
        """Seed i's replay state (a group's replay holds seed i's tasks at rows i*T..(i+1)*T-1)."""
        if self.size == 1:   # a single run's replay as it is: no second copy of it while checkpointing
            return state
        T = self.num_tasks
        return {k: v[i * T:(i + 1) * T].clone() if isinstance(v, Tensor) else v for k, v in state.items()}

    def stack_replays(self, states: list[dict]) -> dict:
        if self.size == 1:
            return states[0]
        return {k: torch.cat([s[k] for s in states]) if isinstance(v, Tensor) else v for k, v in states[0].items()}

    def batch(self, flat: Batch) -> Batch:
        """A batch drawn from the group's replay (`[S * B]`, seed-major) as one batch per seed, `[S, B, ...]`:
        every seed's draw has the same task layout, so its task ids are the first seed's."""
        S = self.size
        B = flat.task.shape[0] // S

        def per_seed(x: Tensor) -> Tensor:
            return x.view(S, B, *x.shape[1:])
        return Batch(per_seed(flat.obs), per_seed(flat.act), per_seed(flat.reward), per_seed(flat.next_obs),
                     per_seed(flat.done), flat.task[:B], per_seed(flat.index), None, flat.task_major)
