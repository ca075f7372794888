"""Meta-World 3 benchmarks as one vector environment with one environment per task.

Episodes last 500 steps in every task, so all environments end an episode together; autoreset is off
and the loop resets them at episode ends. That is where checkpoints save every environment's random
state, so a resumed run replays exactly the episodes the uninterrupted run would have seen.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Protocol, cast

import gymnasium as gym
import numpy as np
from gymnasium.spaces.utils import flatdim
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

from ..errors import EnvError

EPISODE_STEPS = 500


def task_names(env: str) -> list[str]:
    """The benchmark's tasks in Meta-World's order, without building the benchmark (that samples goals)."""
    from metaworld import env_dict
    if env.startswith("MT1:"):
        name = env[4:]
        known = sorted(env_dict.ALL_V3_ENVIRONMENTS)
        if name not in known:
            from ..errors import did_you_mean
            raise EnvError(f"unknown Meta-World task '{name}'; {did_you_mean(name, known) or 'e.g. reach-v3'}")
        return [name]
    return list((env_dict.MT10_V3 if env == "MT10" else env_dict.MT50_V3).keys())


Step = tuple[np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray]
"""A vector step: next obs, reward, terminated, the episode over (all tasks), success; one row per task."""


def vector_step(obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                success: np.ndarray) -> Step:
    """The tasks' environments' step as a run takes it, wherever they stepped: float32 observations and rewards,
    and whether every task's episode is over."""
    return (obs.astype(np.float32), reward.astype(np.float32), terminated, bool(np.all(terminated | truncated)),
            success.astype(bool))


class TaskEnv(Protocol):
    """What a run steps: one environment per task, task i environment i (MultiTaskEnv, WorkerEnvs, a test's
    own problem). `step_async` starts a step and `step_wait` returns it, so the update can run between."""
    names: list[str]
    num_tasks: int
    episode_steps: int
    obs_dim: int
    act_dim: int

    def reset(self, seed: int | None = None) -> np.ndarray: ...
    def step_async(self, action: np.ndarray) -> None: ...
    def step_wait(self) -> Step: ...
    def random_actions(self, rng: np.random.Generator) -> np.ndarray: ...
    def get_state(self) -> Any: ...
    def set_state(self, state: Any) -> None: ...
    def close(self) -> None: ...


class InProcess:
    """`step_async`/`step_wait` of an environment stepped in this process: the step happens in step_wait."""
    _action: np.ndarray

    def step(self, action: np.ndarray) -> Step:
        raise NotImplementedError

    def step_async(self, action: np.ndarray) -> None:
        self._action = action

    def step_wait(self) -> Step:
        return self.step(self._action)


class MultiTaskEnv(InProcess):
    """`num_tasks` environments stepped together; task i is environment i. `strategy` "async" steps them in
    gymnasium's async vector env (a process and shared memory per environment) instead of one after another;
    `bench --train --env-workers` measures it against graphnet's own workers (runtime/workers.py)."""

    def __init__(self, env: str, seed: int, strategy: str = "sync"):
        self.names = task_names(env)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one: dict[str, Any] = {"env_name": self.names[0]} if env.startswith("MT1:") else {}
            vec = gym.make_vec(f"Meta-World/{'MT1' if one else env}", seed=seed, vector_strategy=strategy,
                               autoreset_mode=gym.vector.AutoresetMode.DISABLED, **one)
        self.vec = cast(SyncVectorEnv | AsyncVectorEnv, vec)   # what the vector strategies make
        self.num_tasks = len(self.names)
        self.episode_steps = EPISODE_STEPS
        self.obs_dim = flatdim(self.vec.single_observation_space)
        self.act_dim = flatdim(self.vec.single_action_space)
        self.seed = seed

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.vec.reset(seed=seed)
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> Step:
        obs, reward, terminated, truncated, info = self.vec.step(action)
        return vector_step(obs, reward, terminated, truncated, info["success"])

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1, 1, (self.num_tasks, self.act_dim)).astype(np.float32)

    def get_state(self) -> list:
        """Every environment's random state (task selection, goals), taken at an episode end."""
        return list(self.vec.call("get_checkpoint"))

    def set_state(self, state: list) -> None:
        self.vec.call("load_checkpoint", state)

    def close(self) -> None:
        self.vec.close()


def default_workers(tasks: int, cores: int | None = None, cuda: bool = False) -> int:
    """Worker processes for `tasks` environments by default, on `cores` (None: this machine's; a sweep's run: its
    share), one per task at most. An update on the CPU needs the cores: then none on 4 cores or fewer, where the
    update takes nearly all the time (96 % on 2 cores) and workers only compete with it, else half the cores,
    the other half left to the update. An update on a GPU (`cuda`) needs one core to drive it and to act: every
    other core steps environments."""
    cores = machine_cores() if cores is None else cores
    if cuda:
        return min(tasks, cores - 1)
    return 0 if cores <= 4 else min(tasks, cores // 2)


def machine_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seed_workers(workers: int, seeds: int) -> int:
    """Worker processes for each seed of a group that has `workers` in all: rounded up, so that no seed steps in
    process while the others have workers."""
    return -(-workers // seeds)


def make_envs(env: str, seed: int, workers: int) -> TaskEnv:
    """The tasks' environments: in this process (`workers` 0), or stepped by that many worker processes."""
    if workers == 0:
        return MultiTaskEnv(env, seed)
    from .workers import WorkerEnvs
    return WorkerEnvs(env, seed, workers)


class SeedEnvs:
    """A group's environments, one MultiTaskEnv per seed, stepped as one: rows i*T..(i+1)*T-1 of every array are
    seed i's tasks. Episodes end together (every task's lasts `episode_steps`)."""

    def __init__(self, envs: list[TaskEnv]):
        self.envs = envs
        first = envs[0]
        self.names, self.num_tasks, self.episode_steps = first.names, first.num_tasks, first.episode_steps
        self.obs_dim, self.act_dim = first.obs_dim, first.act_dim

    def reset(self, seed: list[int] | None = None) -> np.ndarray:
        """Reset every seed's environments; `seed`: one reset seed per seed of the group."""
        return np.concatenate([e.reset(seed=None if seed is None else seed[i]) for i, e in enumerate(self.envs)])

    def step(self, action: np.ndarray) -> Step:
        """A vector step over all rows (every seed's tasks)."""
        self.step_async(action)
        return self.step_wait()

    def step_async(self, action: np.ndarray) -> None:
        """Start a step: worker environments (WorkerEnvs) step from now on; in-process ones in step_wait."""
        for e, a in zip(self.envs, np.split(action, len(self.envs))):
            e.step_async(a)

    def step_wait(self) -> Step:
        """The step step_async started, as `step` returns it."""
        obs, reward, terminated, over, success = zip(*(e.step_wait() for e in self.envs))
        return (np.concatenate(obs), np.concatenate(reward), np.concatenate(terminated), all(over),
                np.concatenate(success))

    def random_actions(self, rngs: list[np.random.Generator]) -> np.ndarray:
        return np.concatenate([e.random_actions(rng) for e, rng in zip(self.envs, rngs)])

    def get_state(self) -> list:
        """Each seed's environments' state (MultiTaskEnv.get_state), taken at an episode end."""
        return [e.get_state() for e in self.envs]

    def set_state(self, states: list) -> None:
        for e, state in zip(self.envs, states):
            e.set_state(state)

    def close(self) -> None:
        for e in self.envs:
            e.close()

