"""Environments in worker processes (`--env-workers`): the same transitions as in one process, states that
restore across the two, a dead worker as one error with a checkpoint, and no orphans when the run is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from graphnet.cli import main
from graphnet.errors import RunError
from graphnet.runtime.envs import MultiTaskEnv, default_workers, seed_workers
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


def test_default_workers_leave_the_update_its_cores_one_per_task_at_most_and_split_over_seeds():
    """An update on the CPU: none up to 4 cores, else half the cores; on a GPU every core but one; no more
    workers than tasks; a group's workers split over its seeds, rounded up."""
    cores = (1, 2, 4, 5, 8, 16, 64)
    assert [default_workers(10, c) for c in cores] == [0, 0, 0, 2, 4, 8, 10]
    assert [default_workers(10, c, cuda=True) for c in cores] == [0, 1, 3, 4, 7, 10, 10]
    assert default_workers(1, 16) == 1 and default_workers(100, 16) == 8     # MT1; MT10 x 10 seeds
    assert default_workers(50, 16, cuda=True) == 15
    assert [seed_workers(8, seeds) for seeds in (1, 2, 3, 10)] == [8, 4, 3, 1]


def test_bench_train_sets_the_sides_side_by_side(capsys):
    """`graphnet bench --train --env-workers N --seeds S`: in-process, workers, overlap, stepping alone (graphnet's
    workers and gymnasium's async vector env) and S seeds (in workers with overlap, as is the one seed it is
    compared with), from one command; each ratio is the quotient of the figures it compares, and each run's time
    splits into env, acting and update."""
    args = ["bench", "mtsac", "--train", "--env", "MT1:reach-v3", "--env-workers", "2", "--seeds", "2",
            "--train-steps", "3", "--set", "H=16", "--device", "cpu"]
    assert main([*args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    runs = [r, r["workers"], r["workers_overlap"], r["group"]]
    assert [(x["env_workers"], x["overlap"], x["seeds"]) for x in runs] == [(0, False, 1), (2, False, 1),
                                                                          (2, True, 1), (2, True, 2)]
    for x in runs:
        assert x["env_share"] + x["act_share"] + x["update_share"] == pytest.approx(1)
        assert min(x["env_share"], x["act_share"], x["update_share"]) > 0
    assert r["workers_vs_in_process_steps"] == pytest.approx(r["workers"]["steps_per_s"] / r["steps_per_s"])
    assert r["overlap_vs_workers_steps"] == pytest.approx(r["workers_overlap"]["steps_per_s"] /
                                                          r["workers"]["steps_per_s"])
    assert r["group_vs_one_seed_steps"] == pytest.approx(r["group"]["seed_steps_per_s"] /   # like with like
                                                         r["workers_overlap"]["seed_steps_per_s"])
    st = r["stepping"]
    assert st["workers_vs_in_process"] == pytest.approx(st["workers"] / st["in_process"])
    assert st["workers_vs_gym_async"] == pytest.approx(st["workers"] / st["gym_async"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "overlapping the update" in out and "stepping alone" in out and "2 seeds in one process" in out


def test_a_set_up_that_fails_once_the_workers_run_closes_them(tmp_path):
    """An error found after the environments are up (here --cuda-graph on a CPU) closes them: no worker is left,
    training's nor evaluation's."""
    envs: list[WorkerEnvs] = []

    def make(seed: int) -> WorkerEnvs:
        envs.append(WorkerEnvs("MT1:reach-v3", seed, workers=1))
        return envs[-1]
    cfg = point_mass_config(tmp_path / "run", steps=50, env="MT1:reach-v3", cuda_graph=True,
                            overrides={"H": 16, "N": 1})
    with pytest.raises(RunError, match="--cuda-graph"):
        train(cfg, quiet=True, make_env=make)
    assert len(envs) == 2 and all(e.procs == [] for e in envs)
