"""The runtime: SAC learns a small multi-task problem through the real training loop; resume equals an
uninterrupted run; interrupts checkpoint; bad input fails before anything starts; and every library
spec trains end to end on real Meta-World MT10 for a few steps."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pytest
import torch

import graphnet
from graphnet.cli import main
from graphnet.runtime.config import RunConfig
from graphnet.runtime import envs as envs_module
from graphnet.runtime import loop as loop_module
from graphnet.runtime import train as train_module
from graphnet.runtime.envs import MultiTaskEnv
from graphnet.runtime.logs import read_scalars
from graphnet.runtime.sac import SAC
from graphnet.runtime.train import bench_train, train
from graphnet.train_config import TrainConfig
from helpers import PointMass, StepCounter


def point_mass_config(out: Path, steps: int, **kw) -> RunConfig:
    train_cfg = TrainConfig(lr=1e-3, batch_per_task=64)
    defaults = dict(spec="mtsac", overrides={"H": 64, "N": 2}, out=out, steps=steps, eval_every=steps,
                    eval_episodes=5, checkpoint_every=300, warmup=300, seed=0, device="cpu", train=train_cfg)
    return RunConfig(**(defaults | kw))


def final_success(run_dir: Path) -> float:
    return float((run_dir / "metrics.csv").read_text().splitlines()[-1].split(",")[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_learns_point_mass(tmp_path, seed):
    """Every seed learns, not one lucky one (seeds 0-5 reach 1.0 by step 1,800)."""
    run = train(point_mass_config(tmp_path / "run", steps=2400, seed=seed), quiet=True, make_env=PointMass)
    assert final_success(run) >= 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_sac_learns_point_mass_with_the_update_overlapping_the_step(tmp_path, seed):
    """--overlap: each update runs while the environments step, on the replay without the newest step; it learns
    as well, and it is a different run, not the same one under another name."""
    run = train(point_mass_config(tmp_path / "run", steps=2400, seed=seed, overlap=True), quiet=True,
                make_env=PointMass)
    assert final_success(run) >= 0.9
    short = [train(point_mass_config(tmp_path / f"short-{o}", steps=330, seed=seed, overlap=o), quiet=True,
                   make_env=PointMass) for o in (False, True)]
    a, b = (torch.load(r / "checkpoints" / "latest.pt", weights_only=False)["nets"] for r in short)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_untrained_policy_fails_point_mass(tmp_path):
    """The threshold above means something: before learning, the policy does not reach the goals."""
    run = train(point_mass_config(tmp_path / "run", steps=300, eval_every=300), quiet=True, make_env=PointMass)
    assert final_success(run) <= 0.3


def assert_equal_states(a, b, where: str = "checkpoint") -> None:
    """Two checkpoint states equal bit for bit: tensors, RNG and environment states, nested dicts and lists."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_states(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_states(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def logged_steps(run_dir: Path) -> tuple[list[int], list[int]]:
    """The steps of the evaluations in metrics.csv, and in TensorBoard."""
    csv_steps = [int(row.split(",")[0]) for row in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    return csv_steps, [step for step, _ in read_scalars(run_dir, "eval/success_mean")]


@pytest.mark.parametrize("overlap, workers_then", [(False, 0), (True, 0), (None, 1)])
def test_resume_equals_uninterrupted_run(tmp_path, overlap, workers_then):
    """Interrupted at 600 and resumed to 900, a run ends in the state the uninterrupted run ends in, every bit of
    it, having stepped 300 more, not 900 again: what a resume that started over would also end in. With the
    update overlapping the step, too; and by default (overlap with workers) resumed with workers where it had
    none, it keeps the mode it ran in."""
    kw = dict(save_replay=True, overlap=overlap, env_workers=0)
    straight = train(point_mass_config(tmp_path / "a", steps=900, **kw), quiet=True, make_env=PointMass)
    first = train(point_mass_config(tmp_path / "b", steps=600, **kw), quiet=True, make_env=PointMass)
    envs: dict[int, StepCounter] = {}
    cfg = point_mass_config(first, steps=900, **kw | {"env_workers": workers_then})
    resumed = train(cfg, resume=True, quiet=True, make_env=lambda seed: envs.setdefault(seed, StepCounter(seed)))
    assert envs[cfg.seed].steps == 300
    assert logged_steps(straight) == ([900], [900]) and logged_steps(resumed) == ([600, 900], [600, 900])
    a = torch.load(straight / "checkpoints" / "latest.pt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "latest.pt", weights_only=False)
    assert a["step"] == b["step"] == 900
    updates = 900 - cfg.warmup + 1   # one a step, from the last warmup step on
    assert {int(s["step"]) for opt in a["optimizers"].values() for s in opt["state"].values()} == {updates}
    assert_equal_states(a, b)


class SlowPointMass(PointMass):
    """PointMass taking 5 ms a step: evaluations as long as the training between them."""

    def step(self, action: np.ndarray):
        time.sleep(0.005)
        return super().step(action)


def test_a_run_logs_its_pace_evaluations_apart(tmp_path, capsys):
    """Each evaluation logs the vector steps/s of training since the last one and its own seconds; the closing line
    gives the run's rate over the time outside evaluations, which take 0.75 s and more each here (5 episodes of
    30 steps at 5 ms): counted in, they would halve it."""
    cfg = point_mass_config(tmp_path / "run", steps=600, eval_every=300)
    train(cfg, quiet=True, make_env=lambda seed: SlowPointMass(seed) if seed >= 1_000_003 else PointMass(seed))
    rate = dict(read_scalars(cfg.out, "train/steps_per_s"))
    evaluating = dict(read_scalars(cfg.out, "train/evaluation_s"))
    assert rate.keys() == evaluating.keys() == {300, 600}
    assert all(s >= 5 * 30 * 0.005 for s in evaluating.values())
    line = capsys.readouterr().out.splitlines()[-1]
    steps, printed, in_evaluations = re.fullmatch(
        r"([\d,]+) steps in [\d,.]+ s: ([\d,.]+) vector steps/s \(([\d,.]+) s of it in evaluations\)", line).groups()
    assert int(steps.replace(",", "")) == 600
    training = 300 / rate[300] + 300 / rate[600]
    assert float(printed.replace(",", "")) == pytest.approx(600 / training, rel=0.2)
    assert float(in_evaluations.replace(",", "")) == pytest.approx(sum(evaluating.values()), abs=0.1)


def test_a_run_written_to_a_log_draws_its_bar_at_evaluations_not_ten_times_a_second(tmp_path, capsys):
    """stderr to a file (a scheduler's log, here pytest's capture): the bar is drawn as the run starts, at each
    evaluation (with its success) and at the end; drawn every 0.1 s, a 200,000-step run logged megabytes."""
    train(point_mass_config(tmp_path / "run", steps=600, eval_every=300), make_env=PointMass)
    err = capsys.readouterr().err
    assert 2 <= err.count("/600 [") <= 4 and "600/600 [" in err and "success=" in err


class EpisodeRecorder(PointMass):
    """PointMass keeping each of its episodes' mean return and success over its tasks, as it stepped them."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.episodes: list[tuple[float, float]] = []

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.returns, self.solved = np.zeros(self.num_tasks), np.zeros(self.num_tasks, bool)
        return super().reset(seed)

    def step(self, action: np.ndarray):
        obs, reward, terminated, over, success = super().step(action)
        self.returns += reward
        self.solved |= success
        if over:
            self.episodes.append((self.returns.mean(), self.solved.mean()))
        return obs, reward, terminated, over, success


def test_a_group_logs_each_seeds_training_episodes(tmp_path):
    """Every training episode of every seed of a group lands in that seed's TensorBoard log as it ends: its mean
    return and success over the tasks, as its environments gave them (20 episodes of 30 steps; the evaluation
    environments' episodes are not among them)."""
    envs: dict[int, EpisodeRecorder] = {}
    cfg = point_mass_config(tmp_path / "group", steps=600, seeds=[0, 1])
    train(cfg, quiet=True, make_env=lambda seed: envs.setdefault(seed, EpisodeRecorder(seed)))
    for seed in (0, 1):
        returns = read_scalars(cfg.out / f"seed_{seed}", "train/episode_return")
        success = read_scalars(cfg.out / f"seed_{seed}", "train/episode_success")
        assert [s for s, _ in returns] == [s for s, _ in success] == list(range(30, 601, 30))
        assert [v for _, v in returns] == pytest.approx([r for r, _ in envs[seed].episodes], rel=1e-5)
        assert [v for _, v in success] == [s for _, s in envs[seed].episodes]
    assert envs[0].episodes != envs[1].episodes and any(s > 0 for _, s in envs[0].episodes)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphnet.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--env", "MT11"], "unknown env 'MT11'"),
    (["--env", "MT1:reachh-v3"], "did you mean 'reach-v3'"),
    (["--set", "HH=3"], "the spec has no param 'HH'"),
    (["--set", "H=abc"], "takes a whole number"),
    (["--steps", "0"], "--steps"),
    (["--cuda-graph", "--device", "cpu"], "CUDA graphs need a CUDA device"),
])
def test_bad_input_fails_before_starting(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "mtsac", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_existing_run_directory_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "mtsac", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_of_a_foreign_directory_fails(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a graphnet run directory" in capsys.readouterr().err


# an evaluation by Meta-World's protocol that runs for minutes: from step 20 on, 200 episodes of up to 500 steps
LONG_EVALUATION = ["--eval-protocol", "metaworld", "--eval-every", "20", "--eval-episodes", "200", "--warmup", "20"]


@pytest.mark.parametrize("workers, sig, evaluating", [("0", signal.SIGINT, False), ("1", signal.SIGINT, False),
                                                      ("1", signal.SIGTERM, True)])
def test_a_signal_to_the_process_group_writes_a_checkpoint_and_resume_finishes(tmp_path, workers, sig, evaluating):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or a job scheduler's SIGTERM to all of
    the job's processes: the run checkpoints and stops, with its environments in this process or in workers
    (which ignore the signal and are stopped by the run); during an evaluation (in workers), at once."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "graphnet.cli", "train", "mtsac", "--env", "MT1:reach-v3",
                             "--steps", "100000", "--warmup", "50", "--batch-per-task", "32", "--set", "H=32",
                             "--eval-every", "100000", "--threads", "1", "--out", str(out), "--quiet",
                             "--env-workers", workers, *(LONG_EVALUATION if evaluating else [])],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "config.json").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(8)
    os.killpg(proc.pid, sig)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"{sig.name}: checkpoint written at step" in stdout
    assert ("the evaluation at step 20 was cut short" in stdout) == evaluating
    with pytest.raises(ProcessLookupError):   # no worker of the run is left
        os.killpg(proc.pid, 0)
    saved = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert 0 < saved["step"] < 100_000
    if evaluating:   # resumed, it would evaluate for minutes at its end (the other cases resume)
        return
    done = run_cli("train", "--resume", str(out), "--steps", str(saved["step"] + 20), "--threads", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"resuming {out} at step {saved['step']:,}" in done.stdout


class InterruptedEvaluation(PointMass):
    """Evaluation environments that get a SIGINT (as from Ctrl-C) as their first evaluation starts."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.seed, self.resets, self.steps = seed, 0, 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.resets += 1
        if self.resets == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return super().reset(seed)

    def step(self, action: np.ndarray):
        self.steps += 1
        return super().step(action)


def test_a_signal_cuts_an_evaluation_short_and_the_run_checkpoints_there(tmp_path, capsys):
    """An evaluation can take minutes (Meta-World's protocol: 50 episodes a task): SIGINT or SIGTERM ends it at
    once, unlogged, and the run checkpoints at its step as at any other; resumed, it goes on from there."""
    cfg = point_mass_config(tmp_path / "run", steps=600, eval_every=60, warmup=30)
    evaluation = InterruptedEvaluation(cfg.seed + 1_000_003)   # train's evaluation environments for the seed
    train(cfg, quiet=True, make_env=lambda seed: evaluation if seed == evaluation.seed else PointMass(seed))
    assert "SIGINT: checkpoint written at step 60 (the evaluation at step 60 was cut short: not logged)" in \
        capsys.readouterr().out
    assert evaluation.steps == 0    # none of its 5 episodes ran
    assert (cfg.out / "metrics.csv").read_text().splitlines()[1:] == []
    assert torch.load(cfg.out / "checkpoints" / "latest.pt", weights_only=False)["step"] == 60
    train(cfg.model_copy(update={"steps": 120}), resume=True, quiet=True, make_env=PointMass)
    assert logged_steps(cfg.out) == ([120], [120])


class KeptOpen(MultiTaskEnv):
    """Real Meta-World MT10 environments built once and shared by the runs below (building costs ~6 s)."""

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def mt10():
    envs = {}

    def make(seed: int) -> MultiTaskEnv:
        if seed not in envs:
            envs[seed] = KeptOpen("MT10", seed)
        return envs[seed]
    yield make
    for env in envs.values():
        env.vec.close()


@pytest.mark.parametrize("spec", graphnet.library_names())
def test_every_library_spec_trains_on_mt10(tmp_path, spec, mt10):
    cfg = RunConfig(spec=spec, env="MT10", steps=12, warmup=6, eval_every=100, eval_episodes=1, out=tmp_path / spec,
                    buffer_size=100, train=graphnet.load(spec).train.model_copy(update={"batch_per_task": 16}))
    run = train(cfg, quiet=True, make_env=mt10)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,success_mean,success_reach-v3") and rows[1].startswith("12,")
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["step"] == 12


def test_plot_draws_runs(tmp_path):
    runs = []
    for seed in (0, 1):
        cfg = point_mass_config(tmp_path / f"s{seed}", steps=60, eval_every=30, warmup=30, seed=seed)
        runs.append(str(train(cfg, quiet=True, make_env=PointMass)))
    png = tmp_path / "curves.png"
    assert main(["plot", *runs, "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Clock:
    """Stands in for train.py's `time`: a clock that only the calls it wraps advance, each by a set number of
    seconds, so that every rate bench_train reports is known exactly."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def ticking(self, fn: Callable, seconds: float) -> Callable:
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.now += seconds
            return out
        return call


def test_bench_train_measures_a_real_run(monkeypatch, mt10):
    """`graphnet bench --train`: where the time of a short real Meta-World run goes, eager on a CPU. An MT10 vector
    step taking 1 s, acting 2 s and an update 10 s, 20 steps of each: 10 env steps/s (one a task), 0.1 updates/s,
    1/13 vector steps/s."""
    clock, env = Clock(), mt10(0)
    policy = train_module.group_policy
    monkeypatch.setattr(train_module, "time", clock)
    monkeypatch.setattr(train_module, "group_policy", lambda *args: clock.ticking(policy(*args), 2.0))
    monkeypatch.setattr(envs_module, "MultiTaskEnv", lambda name, seed: env)
    monkeypatch.setattr(env, "step", clock.ticking(env.step, 1.0))
    monkeypatch.setattr(SAC, "update", clock.ticking(SAC.update, 10.0))
    cfg = RunConfig(spec="mtsac", overrides={"H": 32}, env="MT10", out=Path("."), device="cpu", threads=1,
                    train=TrainConfig(batch_per_task=16))
    r = bench_train(cfg, steps=20)
    assert r["cuda_graph"] is False and r["tasks"] == 10 and r["device"] == "cpu"
    assert clock.now == 20 * (1.0 + 2.0 + 10.0)
    expected = {"env_steps_per_s": 10.0, "updates_per_s": 0.1, "steps_per_s": 1 / 13, "env_share": 1 / 13,
                "act_share": 2 / 13, "update_share": 10 / 13}
    assert {key: r[key] for key in expected} == pytest.approx(expected)


class NanRewards(PointMass):
    """From its 150th step on, task 1's (nw's) reward is NaN: a broken environment."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.steps = 0

    def step(self, action):
        obs, reward, terminated, over, success = super().step(action)
        self.steps += 1
        if self.steps > 150:
            reward[1] = float("nan")
        return obs, reward, terminated, over, success


def test_nan_rewards_never_reach_the_weights_and_a_run_where_they_persist_stops(tmp_path, monkeypatch):
    """Task nw's rewards turn NaN at step 150: it is left out of every update (logged), and once 90 updates in
    a row have lost it the run stops, at the episode end of step 240, before that checkpoint: step 180's, whose
    every tensor is finite, stays the latest, and says so."""
    monkeypatch.setattr(loop_module, "NONFINITE_PATIENCE", 90)
    cfg = point_mass_config(tmp_path / "run", steps=600, warmup=60, checkpoint_every=60, eval_every=30)
    with pytest.raises(train_module.RunError, match=r"stopped at step 240: the last 9\d updates .* in nw \(") as e:
        train(cfg, quiet=True, make_env=NanRewards)
    assert "checkpoints/step_000000180.pt is kept as the last good one" in str(e.value)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=False)
    assert saved["step"] == 180
    assert all(torch.isfinite(t).all() for t in saved["nets"].values())
    left_out = dict(read_scalars(tmp_path / "run", "train/nonfinite_tasks"))
    assert left_out[120] == 0 and left_out[180] == left_out[210] == 1
