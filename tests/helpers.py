"""Shared by the tests: a small multi-task problem of our own, and a time limit for fuzzed inputs."""
from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np

from graphnet.runtime.envs import InProcess

CORNERS = [[0.6, 0.6], [-0.6, 0.6], [-0.6, -0.6], [0.6, -0.6]]


class PointMass(InProcess):
    """One goal per task, unseen in the observation: only the task id tells the agent where to go.
    Success: within 0.1 of the goal at any step of a 30-step episode. A TaskEnv stepped in this process."""

    def __init__(self, seed: int, goals=CORNERS, names=("ne", "nw", "sw", "se")):
        self.goals, self.names = np.asarray(goals, np.float32), list(names)
        self.num_tasks, self.obs_dim, self.act_dim, self.episode_steps = len(self.names), 2, 2, 30
        self.rng = np.random.default_rng(seed)
        self.pos, self.t = np.zeros((self.num_tasks, 2), np.float32), 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.pos, self.t = self.rng.uniform(-0.1, 0.1, (self.num_tasks, 2)).astype(np.float32), 0
        return self.pos.copy()

    def step(self, action: np.ndarray):
        self.pos = np.clip(self.pos + 0.15 * np.clip(action, -1, 1), -1, 1).astype(np.float32)
        self.t += 1
        dist = np.linalg.norm(self.pos - self.goals, axis=1)
        return (self.pos.copy(), -dist.astype(np.float32), np.zeros(self.num_tasks, bool),
                self.t >= self.episode_steps, dist < 0.1)

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1, 1, (self.num_tasks, 2)).astype(np.float32)

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def close(self) -> None:
        pass


class StepCounter(PointMass):
    """PointMass counting its vector steps: what a run did, whatever it reports (a resume that started over
    reports the right final step too)."""

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed, **kwargs)
        self.steps = 0

    def step(self, action: np.ndarray):
        self.steps += 1
        return super().step(action)


@contextmanager
def time_limit(seconds: int):
    def fail(*_):
        raise TimeoutError(f"took longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
