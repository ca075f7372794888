"""TaCo transfer (`graphnet transfer`): a tiny PaCo run on point-mass goals is transferred to a new goal.
Fine-tuned (the default), Phi and the shared actor layers learn with w once exploration is over; with
freeze_phi they stay bit for bit the run's and only w is learned; the critic starts fresh, exploration
draws several sub-space policies and trains only the value function; the sub-space's vertices are
exactly the run's task policies; a goal none of the run's tasks had is learned fine-tuned and not
frozen; bad input fails before anything starts; a real Meta-World MT1 transfer runs end to end through
the CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

import graphnet
from graphnet.cli import main
from graphnet.compiler import build
from graphnet.runtime.config import RunConfig
from graphnet.errors import RunError
from graphnet.runtime.train import load_run_config, train
from graphnet.runtime.transfer import Source, load_transferred, transfer, transfer_nets
from graphnet.train_config import TrainConfig
from helpers import PointMass

FIRST = "actor.trunk.graph_module.mlp_i0_linear.params.weight"   # PaCo's first actor layer: reads the one-hot


def east(seed: int) -> PointMass:
    """A fifth goal, none of the source corners."""
    return PointMass(seed, [[0.6, 0.0]], ["east"])


def source_run(out: Path, spec: str = "paco", steps: int = 120, warmup: int | None = None, **overrides) -> Path:
    train_cfg = graphnet.load(spec).train.model_copy(update={"lr": 1e-3, "batch_per_task": 32})
    cfg = RunConfig(spec=spec, overrides={"H": 32, "N": 2, **overrides}, out=out, steps=steps, eval_every=steps,
                    eval_episodes=1, warmup=steps // 2 if warmup is None else warmup, device="cpu", threads=1,
                    train=TrainConfig(**train_cfg.model_dump()))
    return train(cfg, quiet=True, make_env=PointMass)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The runs here use one torch thread (tiny networks; transfer keeps the run's setting): restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paco_run(tmp_path_factory) -> Path:
    return source_run(tmp_path_factory.mktemp("source") / "paco")


@pytest.fixture(scope="module")
def transferred(paco_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("transfer") / "east"
    return transfer(paco_run, "east", steps=210, explore_steps=150, out=out, eval_every=105, eval_episodes=1,
                    device="cpu", quiet=True, make_env=east)


@pytest.fixture(scope="module")
def frozen(paco_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("transfer") / "east-frozen"
    return transfer(paco_run, "east", steps=210, explore_steps=150, out=out, eval_every=105, eval_episodes=1,
                    device="cpu", quiet=True, make_env=east, freeze_phi=True)


def ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=False)


def test_frozen_phi_and_shared_actor_layers_stay_the_runs(paco_run, frozen):
    src, new = ckpt(paco_run)["nets"], ckpt(frozen)["nets"]
    actor = [k for k in src if k.startswith("actor.") and ".params." in k]
    assert actor and FIRST in actor
    for key in actor:
        if key == FIRST:  # [E, K, obs + T, H] in the run, [E, K, obs + 1, H] here
            assert torch.equal(new[key][:, :, :2], src[key][:, :, :2])
            beta = torch.tensor(json.loads((frozen / "transfer.json").read_text())["beta_start"])
            assert torch.allclose(new[key][:, :, 2], torch.einsum("t,ekto->eko", beta, src[key][:, :, 2:]))
        else:
            assert torch.equal(new[key], src[key]), key


def assert_w_moved_from_the_best_explored_point(paco_run: Path, run: Path) -> None:
    meta = json.loads((run / "transfer.json").read_text())
    source_w = ckpt(paco_run)["nets"]["bank_table"]
    assert torch.allclose(torch.tensor(meta["w_init"]), source_w.mean(0))     # the centroid of W, while exploring
    with (run / "exploration.csv").open() as f:                              # then the best explored point
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: float(r["return"]) / int(r["steps"]))
    assert meta["beta_start"] == pytest.approx([float(best[f"beta_{t}"]) for t in ("ne", "nw", "sw", "se")], abs=1e-5)
    w_start = torch.tensor(meta["w_start"])
    assert torch.allclose(w_start, torch.tensor(meta["beta_start"]) @ source_w, atol=1e-5)
    w = ckpt(run)["nets"]["bank_table"]
    assert w.shape == (1, source_w.shape[1]) and not torch.allclose(w[0], w_start)


def test_frozen_learns_only_w_and_it_moved(paco_run, frozen):
    assert_w_moved_from_the_best_explored_point(paco_run, frozen)
    saved = ckpt(frozen)
    assert json.loads((frozen / "transfer.json").read_text())["phi"] == "frozen"
    assert len(saved["optimizers"]["actor"]["param_groups"]) == 1
    assert len(saved["optimizers"]["actor"]["param_groups"][0]["params"]) == 1   # w, nothing else
    assert int(saved["optimizers"]["actor"]["state"][0]["step"]) == 210 - 150   # not trained while exploring
    assert int(saved["optimizers"]["critic"]["state"][0]["step"]) == 210


def test_fine_tuning_releases_phi_and_shared_layers_after_exploring(paco_run, transferred):
    """Algorithm 2: w, then every other actor parameter the run's (Phi, shared layers, the one-hot input rows)
    learn once exploration is over, 60 steps each; the critic's optimizer holds none of them."""
    assert_w_moved_from_the_best_explored_point(paco_run, transferred)
    saved, src = ckpt(transferred), ckpt(paco_run)["nets"]
    assert json.loads((transferred / "transfer.json").read_text())["phi"] == "fine-tuned"
    groups, state = saved["optimizers"]["actor"]["param_groups"], saved["optimizers"]["actor"]["state"]
    actor = [k for k in src if k.startswith("actor.") and ".params." in k]
    assert [len(g["params"]) for g in groups] == [1, len(actor)]
    assert {int(s["step"]) for s in state.values()} == {210 - 150} and len(state) == 1 + len(actor)
    new = saved["nets"]
    assert all(not torch.equal(new[k][:, :, :2], src[k][:, :, :2]) if k == FIRST else not torch.equal(new[k], src[k])
               for k in actor)
    critic_ids = {i for g in saved["optimizers"]["critic"]["param_groups"] for i in g["params"]}
    assert len(critic_ids) == len([k for k in new if k.startswith("critic.") and ".params." in k]) + 1   # + its w


def test_the_critic_starts_fresh_with_its_own_w(paco_run, transferred):
    src, new = ckpt(paco_run)["nets"], ckpt(transferred)["nets"]
    critic = [k for k in new if k.startswith("critic.") and ".params." in k and new[k].shape == src[k].shape]
    assert critic
    for key in critic:
        assert not torch.equal(new[key], src[key]), key
    table = next(k for k in new if k.startswith("critic.") and k.endswith(".table"))
    assert not torch.equal(new[table], new["bank_table"])            # value learning never moves the policy's w
    assert new["log_alpha"].shape == (1,)


def test_load_transferred_keeps_the_two_w_rows(transferred):
    nets, saved = load_transferred(transferred, 2, 2), ckpt(transferred)["nets"]
    params = dict(nets.named_parameters(remove_duplicate=False))
    table = next(k for k in saved if k.startswith("critic.") and k.endswith(".table"))
    assert torch.equal(nets.bank_table, saved["bank_table"]) and torch.equal(params[table], saved[table])
    assert not torch.equal(params[table], nets.bank_table)


def test_exploration_draws_several_subspace_policies(paco_run, transferred):
    """Five episodes: the four corners (each source task's own w), then a uniform draw on the simplex."""
    with (transferred / "exploration.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and [int(r["steps"]) for r in rows] == [30] * 5
    w = np.array([[float(r[f"w_{k}"]) for k in range(5)] for r in rows])
    beta = np.array([[float(r[f"beta_{t}"]) for t in ("ne", "nw", "sw", "se")] for r in rows])
    assert len({tuple(x) for x in w.round(5)}) == 5
    assert np.allclose(beta[:4], np.eye(4)) and (beta[4] > 0).all() and np.isclose(beta[4].sum(), 1, atol=1e-5)
    W = ckpt(paco_run)["nets"]["bank_table"].numpy()
    assert np.allclose(beta @ W, w, atol=1e-4)                       # w~ = beta W


def test_the_run_directory_is_a_normal_run(transferred, tmp_path):
    rows = (transferred / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,success_mean,success_east"
    assert [r.split(",")[0] for r in rows[1:]] == ["105", "210"]
    assert ckpt(transferred)["step"] == 210
    assert json.loads((transferred / "config.json").read_text())["env"] == "MT1:east"
    assert main(["plot", str(transferred), "-o", str(tmp_path / "c.png")]) == 0


def assert_vertices_are_task_policies(run: Path) -> None:
    """The sub-space point beta = e_t (w = W[t], one-hot input e_t) is exactly the run's policy for task t."""
    source = Source(run)
    nets, space, _ = transfer_nets(source, 2, 2, torch.device("cpu"))
    old = build(source.spec, 2, 2, 4, device="cpu")
    old.load_state_dict(source.saved["nets"])
    obs = torch.randn(16, 2)
    for t in range(4):
        beta = torch.zeros(4)
        beta[t] = 1
        with torch.no_grad():
            mean, log_std = functional_call(nets.actor, space.point(beta), (obs, torch.zeros(16, dtype=torch.long)))
            ref_mean, ref_log_std = old.actor(obs, torch.full((16,), t))
        assert torch.allclose(mean, ref_mean, atol=1e-5) and torch.allclose(log_std, ref_log_std, atol=1e-5)


def test_subspace_vertices_are_the_runs_task_policies(paco_run):
    assert_vertices_are_task_policies(paco_run)


@pytest.mark.parametrize("spec, overrides, start, freeze_phi", [
    ("shared_unique", {}, "best", False), ("shared_unique", {}, "best", True), ("taco", {}, "best", False),
    ("paco", {"variant": "output_only"}, "centroid", True), ("paco", {"variant": "actor_only"}, "best", False)])
def test_every_bank_library_spec_transfers(tmp_path, spec, overrides, start, freeze_phi):
    """Common features (shared_unique's u), TA-PER, TaCo sampling, shared layers around the bank; frozen, every
    actor parameter the run's stays so; fine-tuned, each one the actor's loss reaches moves."""
    run = source_run(tmp_path / "src", spec=spec, steps=40, **overrides)
    out = transfer(run, "east", steps=40, explore_steps=30, out=tmp_path / "t", eval_every=40, eval_episodes=1,
                   device="cpu", quiet=True, make_env=east, start=start, freeze_phi=freeze_phi)
    meta = json.loads((out / "transfer.json").read_text())
    assert meta["beta_start"] == pytest.approx([1.0, 0, 0, 0] if start == "best" else [0.25] * 4)
    src, new = ckpt(run)["nets"], ckpt(out)["nets"]
    kept = [k for k in src if (k.startswith("actor.") and ".params." in k or k.startswith("features."))
            and src[k].shape == new[k].shape]
    moved = {k for k in kept if not torch.equal(src[k], new[k])}
    # shared_unique's u is read detached and learns by the triplet loss alone, off in transfer: it stays
    assert kept and moved == (set() if freeze_phi else {k for k in kept if "unique" not in k})
    groups = ckpt(out)["optimizers"]["actor"]["param_groups"]
    assert [len(g["params"]) for g in groups][0] == 1 and len(groups) == (1 if freeze_phi else 2)
    assert_vertices_are_task_policies(run)


def test_train_resume_refuses_a_transfer_run(transferred):
    """`graphnet train --resume` would train Phi and share w with the critic: transfer checkpoints say no."""
    cfg = load_run_config(transferred).model_copy(update={"steps": 200, "out": transferred})
    with pytest.raises(RunError, match="is a transfer run"):
        train(cfg, resume=True, quiet=True, make_env=east)


@pytest.fixture(scope="module")
def mtsac_run(tmp_path_factory) -> Path:
    return source_run(tmp_path_factory.mktemp("source") / "mtsac", spec="mtsac", steps=30)


def test_cli_needs_a_bank(mtsac_run, capsys, tmp_path):
    assert main(["transfer", str(mtsac_run), "--task", "reach-v3", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "transfer reuses the policy parameter set Phi: the spec needs bank(K) layers" in err
    assert "Traceback" not in err and not (tmp_path / "t").exists()


@pytest.mark.parametrize("args, message", [
    (["--task", "reachh-v3"], "did you mean 'reach-v3'"),
    (["--task", "reach-v3", "--explore-steps", "500", "--steps", "500"], "--explore-steps (500) must be below"),
    (["--task", "reach-v3", "--eval-every", "0"], "--eval-every"),
])
def test_cli_bad_input_fails_before_starting(paco_run, capsys, tmp_path, args, message):
    assert main(["transfer", str(paco_run), "--out", str(tmp_path / "t"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_cli_refuses_missing_and_foreign_directories(tmp_path, capsys):
    assert main(["transfer", str(tmp_path / "nope"), "--task", "reach-v3"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["transfer", str(tmp_path), "--task", "reach-v3"]) == 2
    assert "not a graphnet run directory" in capsys.readouterr().err


def test_cli_refuses_task_specific_actor_layers(tmp_path, capsys):
    spec = tmp_path / "heads.gn"
    spec.write_text("param K = 3\n"
                    "agent {\n"
                    "  actor = task linear(relu(bank(K) linear(obs -> 16)) -> 2 * ACT)\n"
                    "  critic = linear(relu(bank(K) linear(concat(obs, act, onehot(task)) -> 16)) -> 1)\n"
                    "}\n")
    train_cfg = TrainConfig(batch_per_task=8)
    run = train(RunConfig(spec=str(spec), out=tmp_path / "run", steps=30, eval_every=30, eval_episodes=1, warmup=30,
                          device="cpu", threads=1, train=train_cfg), quiet=True, make_env=PointMass)
    assert main(["transfer", str(run), "--task", "reach-v3"]) == 2
    assert "task-specific layers" in capsys.readouterr().err


def test_metaworld_mt1_transfer_end_to_end(tmp_path, capsys):
    """A tiny PaCo run on MT1 reach, transferred to push through the CLI."""
    cfg = RunConfig(spec="paco", overrides={"H": 32, "N": 1}, env="MT1:reach-v3", steps=10, warmup=5, eval_every=10,
                    eval_episodes=1, buffer_size=100, out=tmp_path / "src", device="cpu", threads=1,
                    train=graphnet.load("paco").train.model_copy(update={"batch_per_task": 16}))
    source = train(cfg, quiet=True)
    out = tmp_path / "push"
    assert main(["transfer", str(source), "--task", "push-v3", "--steps", "20", "--explore-steps", "10",
                 "--eval-episodes", "1", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    assert f"run directory: {out}" in capsys.readouterr().out
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,success_mean,success_push-v3" and rows[1].startswith("20,")
    assert ckpt(out)["step"] == 20
    assert len((out / "exploration.csv").read_text().splitlines()) == 2    # one episode, cut at 10 steps


def test_fine_tuning_learns_a_goal_the_frozen_sub_space_does_not(tmp_path):
    """A PaCo run that learned the four corners, transferred to east (0.6, 0): no source task's goal, and no
    policy of the run's sub-space holds it once SAC moves w. Measured over seeds 0-2 (success at steps 450,
    900, 1,350, 1,800): frozen 0 at the end of every seed; fine-tuned 1.0, 1.0 and 0.4 there. Seed 1 here."""
    run = source_run(tmp_path / "src", steps=2400, warmup=300)

    def success(freeze_phi: bool) -> list[float]:
        out = transfer(run, "east", steps=1800, explore_steps=300, out=tmp_path / f"t{freeze_phi}", seed=1,
                       eval_every=450, eval_episodes=5, device="cpu", quiet=True, make_env=east,
                       freeze_phi=freeze_phi)
        return [float(r.split(",")[1]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    frozen, tuned = success(True), success(False)
    assert max(frozen) <= 0.2 and min(tuned[-2:]) >= 0.8, (frozen, tuned)
