"""Success rate per task with the deterministic policy; success = success at any step of an episode."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import cast

import numpy as np
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorEnv

from .envs import SeedEnvs, task_names


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env: SeedEnvs, episodes: int, seeds: list[int]) -> np.ndarray:
    """`episodes` episodes per task; each reseeds the evaluation envs (`seeds`: one per seed of the group), so
    results depend on the policy only. Success rates are the rows' (seed-major)."""
    successes = None
    for episode in range(episodes):
        obs = env.reset(seed=[s + episode for s in seeds])
        hit = np.zeros(len(obs), dtype=bool)
        for _ in range(env.episode_steps):
            obs, _, _, done, success = env.step(policy(obs))
            hit |= success
            if done:
                break
        successes = hit.astype(float) if successes is None else successes + hit
    assert successes is not None, "episodes >= 1 (RunConfig)"
    return successes / episodes


class MetaWorldEvaluation:
    """Meta-World's own protocol (`metaworld.evaluation.evaluation`): its vector env, autoreset, episodes ended
    at success, run until every task has `episodes` of them (the benchmark's 50 by default). Built once and
    reseeded before each evaluation, so results depend on the policy only; in worker processes (gymnasium's
    async vector env, one per task) when `workers`, forked and set up as graphnet's own workers are (they ignore
    Ctrl-C, which the run handles; spawned ones, the default in a sweep's pool process, would also miss this
    process's warning filters)."""

    def __init__(self, env: str, seed: int, workers: bool = False):
        import gymnasium as gym
        self.names, self.seed = task_names(env), seed
        same_step = gym.vector.AutoresetMode.SAME_STEP   # the protocol's autoreset
        self.vec: VectorEnv
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if workers:   # the environments Meta-World's vector env builds, each in its worker
                from .workers import built_as_worker, env_makers
                self.vec = AsyncVectorEnv([partial(built_as_worker, make) for make in env_makers(env, seed)],
                                          autoreset_mode=same_step, context="fork")
            elif env.startswith("MT1:"):   # one environment, vectorized by gymnasium
                self.vec = gym.make_vec("Meta-World/MT1", env_name=env[4:], seed=seed, vectorization_mode="sync",
                                        vector_kwargs={"autoreset_mode": same_step})
            else:
                self.vec = gym.make_vec(f"Meta-World/{env}", seed=seed, vector_strategy="sync")

    def __call__(self, policy: Callable[[np.ndarray], np.ndarray], episodes: int) -> np.ndarray:
        """Success rate per task, in the benchmark's task order."""
        from metaworld.evaluation import evaluation

        class Agent:
            def eval_action(self, obs: np.ndarray) -> np.ndarray:
                return policy(obs.astype(np.float32))

            def reset(self, env_mask: np.ndarray) -> None:
                pass
        self.vec.reset(seed=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_task = evaluation(Agent(), cast(SyncVectorEnv | AsyncVectorEnv, self.vec), num_episodes=episodes)[2]
        return np.array([per_task[n] for n in self.names])

    def close(self) -> None:
        """Close the environments; a step still pending (an evaluation cut short) gets 5 s, then its workers end,
        as do all of them where one is gone."""
        if not isinstance(self.vec, AsyncVectorEnv):
            self.vec.close()
            return
        try:
            self.vec.close(timeout=5)
        except (EOFError, OSError):
            for process in self.vec.processes:
                process.kill()
                process.join()
