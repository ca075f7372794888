"""graphnet's evaluation against Meta-World's own protocol (metaworld.evaluation): on fixed policies, the
benchmark's scripted experts, clean and noisy, and one that never moves, they agree; and a run evaluates with
either."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import metaworld.policies as scripted
from graphnet.runtime.envs import MultiTaskEnv, SeedEnvs
from graphnet.runtime.evaluate import MetaWorldEvaluation, evaluate
from graphnet.runtime.train import train
from test_runtime import point_mass_config

EPISODES = 20


def expert(name: str, noise: float, seed: int = 0):
    policy, rng = getattr(scripted, name)(), np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = np.stack([policy.get_action(o) for o in obs])
        return np.clip(a + noise * rng.normal(size=a.shape), -1, 1).astype(np.float32)
    return act


@pytest.mark.parametrize("task, policy, noise", [
    ("reach-v3", "SawyerReachV3Policy", 0.0),       # the expert: every episode succeeds in both
    ("push-v3", None, 0.0),                         # never moves: no episode succeeds in either
    ("pick-place-v3", "SawyerPickPlaceV3Policy", 1.0),   # noisy: about half, other goals in each protocol
])
def test_graphnet_evaluation_agrees_with_metaworlds_protocol(task, policy, noise):
    act = expert(policy, noise) if policy else (lambda obs: np.zeros((len(obs), 4), np.float32))
    env = SeedEnvs([MultiTaskEnv(f"MT1:{task}", 7)])
    ours = evaluate(act, env, EPISODES, [7])
    env.close()
    protocol = MetaWorldEvaluation(f"MT1:{task}", 7)
    act = expert(policy, noise) if policy else act   # the same noise draws
    theirs = protocol(act, EPISODES)
    protocol.close()
    assert ours.shape == theirs.shape == (1,)
    p = (ours[0] + theirs[0]) / 2     # within 2.5 standard errors of a difference of two rates of EPISODES
    assert abs(float(ours[0]) - float(theirs[0])) <= 2.5 * np.sqrt(2 * p * (1 - p) / EPISODES), (ours, theirs)
    if policy and not noise:
        assert ours[0] == theirs[0] == 1.0
    if not policy:
        assert ours[0] == theirs[0] == 0.0


def test_metaworlds_protocol_in_workers_is_the_one_in_process():
    """In worker processes (a run with env workers) the protocol holds the same environments and, on a fixed
    policy with the same noise draws, gives the same success rates."""
    here, there = MetaWorldEvaluation("MT10", 3), MetaWorldEvaluation("MT10", 3, workers=True)
    assert np.array_equal(here.vec.reset(seed=3)[0], there.vec.reset(seed=3)[0])   # the same tasks and goals
    here.close(), there.close()
    rates = []
    for workers in (False, True):
        protocol = MetaWorldEvaluation("MT1:pick-place-v3", 7, workers)
        rates.append(protocol(expert("SawyerPickPlaceV3Policy", 1.0), 6))
        protocol.close()
    assert rates[0] == rates[1] and 0 < rates[0][0] < 1, rates


def test_a_run_evaluates_with_metaworlds_protocol(tmp_path):
    cfg = point_mass_config(tmp_path / "run", steps=40, env="MT1:reach-v3", warmup=20, eval_every=40,
                            eval_episodes=2, eval_protocol="metaworld", overrides={"H": 16, "N": 1})
    run = train(cfg, quiet=True)
    header, row = (run / "metrics.csv").read_text().splitlines()
    assert header == "step,success_mean,success_reach-v3" and row.startswith("40,")
    assert 0.0 <= float(row.split(",")[1]) <= 1.0
