"""Success rate per task with the deterministic policy; success = success at any step of an episode."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .envs import MultiTaskEnv, SeedEnvs


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env: MultiTaskEnv | SeedEnvs, episodes: int,
             seed: int | list[int]) -> np.ndarray:
    """`episodes` episodes per task; each reseeds the evaluation envs, so results depend on the policy only.
    For a group's SeedEnvs, `seed` is one per seed, and the success rates are the rows' (seed-major)."""
    successes = None
    for episode in range(episodes):
        obs = env.reset(seed=seed + episode if isinstance(seed, int) else [s + episode for s in seed])  # type: ignore[arg-type]
        hit = np.zeros(len(obs), dtype=bool)
        for _ in range(env.episode_steps):
            obs, _, _, done, success = env.step(policy(obs))
            hit |= success
            if done:
                break
        successes = hit.astype(float) if successes is None else successes + hit
    assert successes is not None, "episodes >= 1 (RunConfig)"
    return successes / episodes
