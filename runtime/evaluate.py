"""Success rate per task with the deterministic policy; success = success at any step of an episode."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .envs import MultiTaskEnv


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env: MultiTaskEnv, episodes: int, seed: int) -> np.ndarray:
    """`episodes` episodes per task; each reseeds the evaluation envs, so results depend on the policy only."""
    successes = np.zeros(env.num_tasks)
    for episode in range(episodes):
        obs = env.reset(seed=seed + episode)
        hit = np.zeros(env.num_tasks, dtype=bool)
        for _ in range(env.episode_steps):
            obs, _, _, done, success = env.step(policy(obs))
            hit |= success
            if done:
                break
        successes += hit
    return successes / episodes
