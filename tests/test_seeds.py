"""A group of seeds trained as one agent (build's `seeds`, SAC on `[S, B, ...]` batches) against the same
seeds trained one by one: with identical batches and random draws (the noise, w-reset's and the triplets'
fixed by the test), every parameter and every optimizer state of
each seed after several updates equals its single run's, for plain SAC, PaCo's maskout and w-reset, PCGrad,
the triplet loss and per-task temperatures. A group run (`train --seeds`) learns, keeps each seed in a run
directory of its own (plotted as its seeds), and resumes exactly from them."""
from __future__ import annotations

import pytest
import torch

import graphnet
from graphnet.compiler import build
from graphnet.runtime import sac as sac_module
from graphnet.runtime import schemes
from graphnet.runtime.replay import Batch
from graphnet.runtime.sac import SAC
from graphnet.cli import main
from graphnet.errors import RunError
from graphnet.runtime.config import RunConfig
from graphnet.runtime.plot import plot
from graphnet.runtime.seeds import SeedGroup
from graphnet.runtime.train import load_run_config, read_checkpoints, seed_configs, train
from graphnet.train_config import TAPER, TrainConfig
from helpers import PointMass
from test_runtime import assert_equal_states, final_success, logged_steps, point_mass_config

OBS, ACT, T, PER_TASK, SEEDS = 3, 2, 2, 8, (0, 5)


def fixed_noise(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """squashed_sample with the same noise for every seed: a fixed function of the sample's place."""
    B, A = mean.shape[-2:]
    eps = torch.sin(torch.arange(B * A, dtype=mean.dtype).view(B, A) * 0.37 + 0.1)
    std = log_std.exp()
    u = mean + std * eps
    logp = (-0.5 * eps ** 2 - log_std).sum(-1) - (2 * (0.6931471805599453 - u - torch.nn.functional.softplus(-2 * u))
                                                  ).sum(-1)
    return torch.tanh(u), logp


def fixed_w_reset(table: torch.Tensor, healthy: torch.Tensor) -> torch.Tensor:
    return schemes.w_reset_(table, healthy, generator=torch.Generator().manual_seed(3))


def fixed_triplets(features: torch.Tensor, task: torch.Tensor, margin: float) -> torch.Tensor:
    return schemes.triplet_loss(features, task, margin, generator=torch.Generator().manual_seed(4))


def batch(seed: int, step: int) -> Batch:
    g = torch.Generator().manual_seed(1000 * seed + step)
    n = T * PER_TASK
    task = torch.arange(T).repeat_interleave(PER_TASK)
    return Batch(obs=torch.randn(n, OBS, generator=g), act=torch.rand(n, ACT, generator=g) * 2 - 1,
                 reward=torch.randn(n, generator=g) * (1 + 30 * (step % 2)),   # big rewards: maskout triggers
                 next_obs=torch.randn(n, OBS, generator=g), done=(torch.rand(n, generator=g) < 0.1).float(),
                 task=task, index=torch.zeros_like(task))


def stacked(batches: list[Batch]) -> Batch:
    return Batch(*(torch.stack([getattr(b, k) for b in batches]) for k in ("obs", "act", "reward", "next_obs", "done")),
                 task=batches[0].task, index=torch.stack([b.index for b in batches]))


CASES = {"mtsac": ("mtsac", {}),
         "paco maskout + w-reset": ("paco", {"loss_maskout": 2.0, "w_reset": True}),
         "pcgrad": ("mhsac", {"pcgrad": True}),
         "triplet": ("shared_unique", {})}


@pytest.mark.parametrize("case", CASES)
def test_a_group_update_is_each_seeds_own(case, monkeypatch):
    name, train = CASES[case]
    monkeypatch.setattr(sac_module, "squashed_sample", fixed_noise)
    monkeypatch.setattr(sac_module, "w_reset_", fixed_w_reset)
    monkeypatch.setattr(sac_module, "triplet_loss", fixed_triplets)
    spec = graphnet.load(name, graphnet.Sizes(obs=OBS, act=ACT, tasks=T), H=8,
                         **({"K": 2} if name == "paco" else {}))
    cfg = spec.train.model_copy(update=train)
    group = SeedGroup(spec, OBS, ACT, T, list(SEEDS), torch.device("cpu"))
    singles = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        singles.append(build(spec, OBS, ACT, T, device="cpu"))
    group_sac = SAC(group.nets, cfg, ACT)
    single_sacs = [SAC(n, cfg, ACT) for n in singles]
    healthy = []
    for step in range(5):
        batches = [batch(s, step) for s in SEEDS]
        metrics = group_sac.update(stacked(batches))
        for i, (sac, b) in enumerate(zip(single_sacs, batches)):
            alone = sac.update(b)
            for k, v in alone.items():
                torch.testing.assert_close(metrics[k][i], v, msg=f"{k}, seed {SEEDS[i]}, update {step}")
        healthy.append(metrics["healthy_tasks"].tolist())
    if train.get("w_reset"):
        assert any(h < T for hs in healthy for h in hs), "maskout never left a task out: the test tests no reset"
    for i, single in enumerate(singles):
        state = group.seed_state(group.nets.state_dict(), i)
        for k, v in single.state_dict().items():
            torch.testing.assert_close(state[k], v, msg=f"{k} of seed {SEEDS[i]}")
        opts = group.seed_optimizers({k: o.state_dict() for k, o in group_sac.optimizers().items()}, group_sac, i)
        for k, o in single_sacs[i].optimizers().items():
            mine = o.state_dict()["state"]
            assert mine.keys() == opts[k]["state"].keys()
            for p, st in mine.items():
                for key, v in st.items():
                    torch.testing.assert_close(opts[k]["state"][p][key], v, msg=f"{k} {p} {key}")


def test_a_group_starts_as_each_seed_alone_and_loads_their_states():
    """Seed s of a group starts with the weights `graphnet train --seed s` starts with, and the group built
    from the seeds' states holds exactly them."""
    spec = graphnet.load("paco", graphnet.Sizes(obs=OBS, act=ACT, tasks=T), H=8, K=2)
    group = SeedGroup(spec, OBS, ACT, T, [2, 7], torch.device("cpu"))
    for i, seed in enumerate((2, 7)):
        torch.manual_seed(seed)
        alone = build(spec, OBS, ACT, T, device="cpu").state_dict()
        state = group.seed_state(group.nets.state_dict(), i)
        assert state.keys() == alone.keys()
        assert all(torch.equal(state[k], v) for k, v in alone.items())
    other = SeedGroup(spec, OBS, ACT, T, [2, 7], torch.device("cpu"))
    with torch.no_grad():
        for p in other.nets.parameters():
            p.add_(1.0)
    other.nets.load_state_dict(group.stack_states([group.seed_state(group.nets.state_dict(), i) for i in (0, 1)]))
    assert all(torch.equal(a, b) for a, b in zip(other.nets.state_dict().values(), group.nets.state_dict().values()))


def group_config(out, steps: int, **kw):
    return point_mass_config(out, steps, seeds=[0, 1], **kw)


def test_a_group_run_learns_keeps_each_seed_in_a_run_directory_of_its_own_and_plots_as_its_seeds(tmp_path):
    out = train(group_config(tmp_path / "group", steps=2400), quiet=True, make_env=PointMass)
    assert RunConfig.model_validate_json((out / "config.json").read_text()).seeds == [0, 1]
    for seed in (0, 1):
        run = out / f"seed_{seed}"
        cfg = RunConfig.model_validate_json((run / "config.json").read_text())
        assert (cfg.seed, cfg.seeds, cfg.out) == (seed, None, run)
        assert final_success(run) >= 0.9, f"seed {seed}"
        saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
        torch.manual_seed(seed)
        alone = build(graphnet.load("mtsac", graphnet.Sizes(obs=2, act=2, tasks=4), H=64, N=2), 2, 2, 4, device="cpu")
        assert {k: v.shape for k, v in saved["nets"].items()} == {k: v.shape for k, v in alone.state_dict().items()}
        assert saved["step"] == 2400 and saved["group"]["seeds"] == [0, 1]
    # graphnet plot reads the group's directory as its seeds' runs: one curve of two
    assert list(plot([out], tmp_path / "curves.png").values()) == [2]


def test_a_group_resumes_exactly_from_its_seeds_checkpoints_and_a_seed_resumes_alone(tmp_path, capsys):
    straight = train(group_config(tmp_path / "a", steps=900, save_replay=True), quiet=True, make_env=PointMass)
    first = train(group_config(tmp_path / "b", steps=600, save_replay=True), quiet=True, make_env=PointMass)
    resumed = train(group_config(first, steps=900, save_replay=True), resume=True, quiet=True, make_env=PointMass)
    assert "resuming" in capsys.readouterr().out
    for seed in (0, 1):
        a = torch.load(straight / f"seed_{seed}" / "checkpoints" / "latest.pt", weights_only=False)
        b = torch.load(resumed / f"seed_{seed}" / "checkpoints" / "latest.pt", weights_only=False)
        assert a["step"] == b["step"] == 900
        assert_equal_states(a, b)
        assert logged_steps(resumed / f"seed_{seed}") == ([600, 900], [600, 900])
    # killed between two seeds' saves: seed 1's newest is missing, so the group goes back to the step both have
    (resumed / "seed_1" / "checkpoints" / "step_000000900.pt").unlink()
    runs = seed_configs(group_config(resumed, steps=1200))
    assert [f.state["step"] for f in read_checkpoints(runs)] == [600, 600]
    # one seed's directory is an ordinary run directory
    alone = train(point_mass_config(resumed / "seed_0", steps=1200, save_replay=True), resume=True, quiet=True,
                  make_env=PointMass)
    assert torch.load(alone / "checkpoints" / "latest.pt", weights_only=False)["step"] == 1200


def test_a_resumed_group_keeps_what_it_resumed_with_so_a_plain_resume_goes_on(tmp_path):
    """Extended with --steps (or evaluating more often), a run's config.json, the group's and every seed's, says
    so: the 'continue with: graphnet train --resume DIR' that a stop prints goes on to the new end, not the old."""
    out = train(group_config(tmp_path / "group", steps=60, warmup=30, checkpoint_every=30), quiet=True,
                make_env=PointMass)
    resumed = load_run_config(out).model_copy(update={"steps": 90, "eval_every": 45})
    train(resumed, resume=True, quiet=True, make_env=PointMass)
    for run in (out, out / "seed_0", out / "seed_1"):
        assert (load_run_config(run).steps, load_run_config(run).eval_every) == (90, 45)
    assert load_run_config(out / "seed_1").seed == 1 and load_run_config(out).seeds == [0, 1]
    with pytest.raises(RunError, match="at step 90 already, not short of --steps 90"):
        train(load_run_config(out), resume=True, quiet=True, make_env=PointMass)


def test_a_group_refuses_a_per_seed_task_layout(tmp_path):
    cfg = group_config(tmp_path / "run", steps=100, train=TrainConfig(replay=TAPER(kind="taper")))
    with pytest.raises(RunError, match="--seeds trains the seeds' updates as one.*replay = taper"):
        train(cfg, quiet=True, make_env=PointMass)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seeds, message", [("1", "a group needs two or more different seeds"),
                                            ("0,0", "a group needs two or more different seeds"),
                                            ("two", "neither a count"),
                                            ("0,1 --seed 5", "not allowed with argument --seed")])
def test_a_bad_seed_list_is_a_usage_error(tmp_path, capsys, seeds, message):
    with pytest.raises(SystemExit) as e:
        main(["train", "mtsac", "--seeds", *seeds.split(), "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
