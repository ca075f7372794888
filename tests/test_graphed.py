"""The SAC update as one CUDA graph: when a run can use it, and (on a GPU) that replaying it trains
exactly as the eager update does, PaCo's maskout and w-reset, PCGrad and the triplet loss included, for
one seed and for a group of seeds trained as one."""
from __future__ import annotations

import copy

import pytest
import torch

import graphnet
from graphnet.runtime.graphed import GraphedUpdate, graph_blocker
from graphnet.runtime.replay import TaskReplay
from graphnet.runtime.sac import SAC
from graphnet.runtime.seeds import SeedGroup
from graphnet.runtime.train import train
from graphnet.train_config import TAPER, GroupSampling, TrainConfig
from helpers import PointMass
from test_runtime import final_success, point_mass_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_graph_blocker_says_why():
    assert "CUDA device" in graph_blocker(torch.device("cpu"), TrainConfig())
    assert graph_blocker(torch.device("cuda"), TrainConfig()) is None
    for changing in (TrainConfig(replay=TAPER(kind="taper")),
                     TrainConfig(sampling=GroupSampling(kind="groups", groups="0 1 | 2"))):
        assert "task layout changes" in graph_blocker(torch.device("cuda"), changing)


@cuda
@pytest.mark.parametrize("seeds", [1, 2])   # 2: a group of seeds as one agent, [S, B] batches
@pytest.mark.parametrize("name, overrides, train_updates", [
    ("mtsac", {"H": 32}, {}),
    ("paco", {"H": 32}, {"loss_maskout": 0.5}),   # a low threshold, so that tasks get masked and reset
    ("shared_unique", {"H": 32}, {}),           # the triplet loss's own optimizer
    ("mhsac", {"H": 32}, {"pcgrad": True}),
])
def test_graphed_update_trains_as_eager(name, overrides, train_updates, seeds):
    T, per_task, obs_dim, act_dim = 3, 16, 6, 2
    spec = graphnet.load(name, graphnet.Sizes(obs=obs_dim, act=act_dim, tasks=T), **overrides)
    cfg = TrainConfig(**(spec.train.model_dump() | {"batch_per_task": per_task} | train_updates))
    torch.manual_seed(0)
    group = SeedGroup(spec, obs_dim, act_dim, T, list(range(seeds)), torch.device("cuda"))
    eager, graphed = SAC(group.nets, cfg, act_dim), SAC(copy.deepcopy(group.nets), cfg, act_dim)
    update = GraphedUpdate(graphed, per_task, obs_dim, act_dim)
    rows = seeds * T
    replay = TaskReplay(rows, 64, obs_dim, act_dim, torch.device("cuda"))
    for _ in range(64):
        replay.add(torch.randn(rows, obs_dim), torch.rand(rows, act_dim) * 2 - 1, torch.randn(rows) * 10,
                   torch.randn(rows, obs_dim), (torch.rand(rows) < 0.1).float())
    for step in range(5):
        b = group.batch(replay.sample(per_task))
        torch.cuda.manual_seed(step)
        want = eager.update(b)
        torch.cuda.manual_seed(step)
        got = update(b)
        for k in want:
            torch.testing.assert_close(got[k], want[k], msg=f"{k} at step {step}")
    for (k, a), b in zip(eager.nets.state_dict().items(), graphed.nets.state_dict().values()):
        torch.testing.assert_close(b, a, msg=k)
    for name_ in eager.optimizers():
        for a, b in zip(eager.optimizers()[name_].state.values(), graphed.optimizers()[name_].state.values()):
            torch.testing.assert_close(b["exp_avg_sq"], a["exp_avg_sq"])


@cuda
def test_sac_learns_point_mass_with_a_cuda_graph(tmp_path):
    cfg = point_mass_config(tmp_path / "run", steps=2400, device="cuda", cuda_graph=True)
    assert final_success(train(cfg, quiet=True, make_env=PointMass)) >= 0.9
