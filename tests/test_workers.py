"""Environments in worker processes (`--env-workers`): the same transitions as in one process, states that
restore across the two, a dead worker as one error with a checkpoint, and no orphans when the run is killed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from graphnet.errors import RunError
from graphnet.runtime.envs import MultiTaskEnv
from graphnet.runtime.train import train
from graphnet.runtime.workers import WorkerEnvs
from test_runtime import point_mass_config


def same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_workers_step_exactly_the_in_process_environments_and_share_their_states():
    """MT10 in 3 workers (3-4 environments each) against MultiTaskEnv, one seed: equal resets, equal steps over
    an episode end; an in-process state loaded into the workers gives the episode the in-process env gives."""
    here, there = MultiTaskEnv("MT10", 3), WorkerEnvs("MT10", 3, workers=3)
    try:
        assert (there.num_tasks, there.obs_dim, there.act_dim, there.names) == (10, 39, 4, here.names)
        assert [len(s) for s in there.slices] == [4, 3, 3]
        rng = np.random.default_rng(0)
        assert np.array_equal(here.reset(seed=3), there.reset(seed=3))
        for step in range(here.episode_steps + 5):
            action = rng.uniform(-1, 1, (10, 4)).astype(np.float32)
            a, b = here.step(action), there.step(action)
            assert same(a, b), f"step {step}"
            if a[3]:
                assert step == here.episode_steps - 1
                there.set_state(here.get_state())
                assert np.array_equal(here.reset(), there.reset())
    finally:
        here.close()
        there.close()
    assert there.procs == []


class DiesAt(WorkerEnvs):
    """MT1 in one worker, killed (SIGKILL) at its `at`-th step: what an out-of-memory kill does."""

    at = 70

    def __init__(self, seed: int):
        super().__init__("MT1:reach-v3", seed, workers=1)
        self.steps, self.pids = 0, [p.pid for p in self.procs]

    def step_async(self, action):
        self.steps += 1
        if self.steps == self.at:
            os.kill(self.pids[0], signal.SIGKILL)
        super().step_async(action)


def test_a_worker_that_dies_is_one_error_with_a_checkpoint_and_leaves_no_process(tmp_path):
    envs: list[DiesAt] = []

    def make(seed: int) -> DiesAt:
        envs.append(DiesAt(seed))
        return envs[-1]
    cfg = point_mass_config(tmp_path / "run", steps=500, env="MT1:reach-v3", warmup=50, eval_every=500,
                            eval_episodes=1, overrides={"H": 16, "N": 1})
    with pytest.raises(RunError, match=r"environment worker 0 \(reach-v3\) failed: exit code -9\n"
                                       r"checkpoint written at step 69; continue with: graphnet train --resume"):
        train(cfg, quiet=True, make_env=make)
    saved = torch.load(cfg.out / "checkpoints" / "latest.pt", weights_only=False)
    assert saved["step"] == 69 and saved["env_state"] is None
    assert all(e.procs == [] for e in envs)
    for pid in (p for e in envs for p in e.pids):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


KILLED_PARENT = """
import time
from graphnet.runtime.workers import WorkerEnvs
env = WorkerEnvs("MT1:reach-v3", 0, workers=1)
print(env.procs[0].pid, flush=True)
time.sleep(600)
"""


def test_workers_exit_when_the_run_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its run by 20 s")
