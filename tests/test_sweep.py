"""`graphnet sweep`: real (tiny) Meta-World MT1 runs through the local pool and through a local Ray instance;
re-running resumes unfinished runs and skips finished ones; a failing run is reported without stopping the
others; bad input fails before anything starts; the results table's numbers by hand."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from graphnet import _spec
from graphnet.cli import main
from graphnet.runtime import train as train_module
from graphnet.runtime.config import RunConfig
from graphnet.runtime.sweep import checkpoint_step, plan, results, run_one
from graphnet.runtime.train import train

# tiny but real: reach-v3, 30 steps per run, one evaluation episode, a 1 x 16 MLP
TINY = ["--env", "MT1:reach-v3", "--steps", "30", "--eval-every", "30", "--eval-episodes", "1", "--warmup", "10",
        "--batch-per-task", "16", "--set", "N=1"]
HEADER = ["spec", "H", "seeds", "final_mean", "final_stderr", "best_mean", "best_stderr", "steps_per_s_mean",
          "steps_per_s_stderr", "variant"]


def table(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def header(out: Path) -> list[str]:
    return (out / "results.csv").read_text().splitlines()[0].split(",")


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_pool_sweep_resumes_skips_and_reports_a_failure(tmp_path, capsys):
    out = tmp_path / "sweep"
    # a run of the grid that stopped at step 20 (an interrupted earlier sweep): the sweep resumes it
    [early] = plan(["mtsac"], {"H": [24]}, 1, out, {"N": 1}, {"batch_per_task": 16}, env="MT1:reach-v3", steps=20,
                   eval_every=30, eval_episodes=1, warmup=10)
    train(early.cfg, quiet=True)

    assert main(["sweep", "mtsac", "--vary", "H=16,24", "--seeds", "2", *TINY, "--workers", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "= 4 runs" in printed and "(3 to start, 1 to resume, 0 finished: skipped)" in printed
    assert "resume  mtsac__H-24__s0  (checkpoint at step 20 of 30)" in printed
    assert "a local pool of 2 workers" in printed and printed.count(" done    ") == 4
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["mtsac__H-16__s0", "mtsac__H-16__s1", "mtsac__H-24__s0", "mtsac__H-24__s1"]
    for name in runs:
        assert checkpoint_step(out / "runs" / name) == 30
        assert (out / "logs" / f"{name}.log").is_file()
    steps = [r.split(",")[0] for r in (out / "runs" / "mtsac__H-24__s0" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["20", "30"]                               # resumed, not started over
    rows = table(out)
    assert header(out) == HEADER
    assert [(r["spec"], r["H"], r["seeds"], r["variant"]) for r in rows] == [
        ("mtsac", "16", "2", "mtsac__H-16"), ("mtsac", "24", "2", "mtsac__H-24")]
    for r in rows:
        assert 0 <= float(r["final_mean"]) <= float(r["best_mean"]) <= 1 and r["final_stderr"] != ""
        assert float(r["steps_per_s_mean"]) > 0 and r["steps_per_s_stderr"] != ""
    md = (out / "results.md").read_text()
    assert md.startswith("| spec | H | seeds | final success | best success | steps/s |") and len(md.splitlines()) == 4
    assert md in printed and is_png(out / "curves.png")
    # a normal run directory: graphnet plot reads it
    assert main(["plot", str(out / "runs" / "mtsac__H-16__s0"), "-o", str(tmp_path / "one.png")]) == 0

    # the same command again: everything finished, nothing runs
    assert main(["sweep", "mtsac", "--vary", "H=16,24", "--seeds", "2", *TINY, "--workers", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(0 to start, 0 to resume, 4 finished: skipped)" in printed and "running" not in printed
    assert "skip    mtsac__H-16__s0  (finished: step 30 of 30)" in printed
    assert table(out) == rows

    # a run whose checkpoint is unreadable fails; it is reported, the others are kept, the exit code is 1
    broken = out / "runs" / "mtsac__H-16__s1"
    for f in (broken / "checkpoints").iterdir():
        f.unlink()
    (broken / "checkpoints" / "step_000000010.pt").write_bytes(b"not a checkpoint")
    os.symlink("step_000000010.pt", broken / "checkpoints" / "latest.pt")
    assert main(["sweep", "mtsac", "--vary", "H=16,24", "--seeds", "2", *TINY, "--workers", "2", "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "(0 to start, 1 to resume, 3 finished: skipped)" in captured.out
    assert (f"[1/1] FAILED  mtsac__H-16__s1: no checkpoint in {broken / 'checkpoints'} can be read: "
            "step_000000010.pt (UnpicklingError" in captured.out)
    assert f"run dir: {broken}" in captured.out and "mtsac__H-16__s1.log" in captured.out
    assert "1 of 1 runs failed" in captured.err
    assert "Traceback" in (out / "logs" / "mtsac__H-16__s1.log").read_text()
    assert [r["seeds"] for r in table(out)] == ["1", "2"]
    assert "| mtsac | 16 | 1 of 2 |" in (out / "results.md").read_text()


def test_ctrl_c_stops_runs_at_a_checkpoint(tmp_path):
    """SIGINT: the running runs write a checkpoint and stop, the queued one never starts; exit 130."""
    out = tmp_path / "sweep"
    long = [*TINY, "--steps", "100000", "--eval-every", "100000"]
    proc = subprocess.Popen([sys.executable, "-m", "graphnet.cli", "sweep", "mtsac", "--seeds", "3", *long,
                             "--workers", "2", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while len(list(out.glob("runs/*/config.json"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout and stdout.count("(checkpoint written)") == 2
    assert "not run mtsac__s2 (interrupted; no checkpoint)" in stdout
    assert all(0 < checkpoint_step(out / "runs" / f"mtsac__s{i}") < 100_000 for i in (0, 1))
    assert not (out / "runs" / "mtsac__s2").exists() and not (out / ".sweep-stop").exists()
    assert "run the same command again to resume them" in stderr


@pytest.mark.parametrize("args, message", [
    (["--vary", "H=16,abc"], "mtsac__H-abc:"),
    (["--vary", "H=16,abc"], "takes a whole number"),
    (["--vary", "HH=16,24"], "the spec has no param 'HH'"),
    (["--vary", "H=16", "--set", "H=3"], "both set (--set) and varied (--vary)"),
    (["--vary", "H=16,16"], "lists a value twice"),
    (["--env", "MT1:reachh-v3"], "did you mean 'reach-v3'"),
    (["--steps", "0"], "--steps"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--seeds", "1", "--pack-seeds"], "with --seeds 1 there is nothing to pack"),
    (["--ray", "local", "--workers", "2"], "--workers sizes the local pool"),
])
def test_bad_input_fails_before_anything_starts(tmp_path, capsys, args, message):
    out = tmp_path / "sweep"
    assert main(["sweep", "mtsac", "--seeds", "2", *TINY, *args, "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert not out.exists()


def test_every_bad_variant_is_named_at_once(tmp_path, capsys):
    assert main(["sweep", "mtsac", "ptsl", "--vary", "g=add,sum", "--seeds", "1", *TINY, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad points in the sweep; nothing was started" in err
    assert "mtsac__g-add" in err and "mtsac__g-sum" in err and "ptsl__" not in err
    assert not (tmp_path / "runs").exists()


def test_run_directories_of_other_options_are_not_touched(tmp_path, capsys):
    out = tmp_path / "sweep"
    [point] = plan(["mtsac"], {}, 1, out, {"N": 1}, env="MT1:reach-v3", steps=30, eval_every=10, eval_episodes=1,
                   warmup=10)
    point.cfg.out.mkdir(parents=True)
    (point.cfg.out / "config.json").write_text(point.cfg.model_dump_json())
    assert main(["sweep", "mtsac", "--seeds", "1", *TINY, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "started with other options: eval_every 10 (now 30), train.batch_per_task 128 (now 16); run the " \
        "sweep with the same options (only --steps may change)" in err and "nothing was started" in err
    assert sorted(p.name for p in point.cfg.out.iterdir()) == ["config.json"]
    (point.cfg.out / "config.json").rename(point.cfg.out / "notes.json")
    assert main(["sweep", "mtsac", "--seeds", "1", *TINY, "-o", str(out)]) == 2
    assert "not a graphnet run directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["runs"]


def fake_run(run_dir: Path, cfg, successes: list[float], step: int, paces: list[float] = ()) -> None:
    """A run directory as train() leaves it, with chosen evaluations and logged paces (no training)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    with SummaryWriter(str(run_dir / "tb")) as tb:
        for i, pace in enumerate(paces):
            tb.add_scalar("train/steps_per_s", pace, 10 * (i + 1))
    (run_dir / "config.json").write_text(cfg.model_dump_json())
    rows = [f"{10 * (i + 1)},{s:.4f},{s:.4f}" for i, s in enumerate(successes)]
    (run_dir / "metrics.csv").write_text("\n".join(["step,success_mean,success_reach-v3", *rows]) + "\n")
    (run_dir / "checkpoints" / f"step_{step:09d}.pt").write_bytes(b"")
    os.symlink(f"step_{step:09d}.pt", run_dir / "checkpoints" / "latest.pt")


def test_results_table_by_hand(tmp_path):
    """final = last evaluation, best = max over evaluations, pace = median logged steps/s, each mean ± stderr over
    seeds; unfinished runs are left out, and a run that logged no pace is left out of the pace."""
    out = tmp_path / "sweep"
    grid = plan(["mtsac"], {"H": [16, 24]}, 2, out, env="MT1:reach-v3", steps=30, eval_every=10)
    curves = {"mtsac__H-16__s0": ([0.1, 0.5, 0.2], 30, [90.0, 10.0, 20.0]),
              "mtsac__H-16__s1": ([0.8, 0.3, 0.6], 30, [40.0, 30.0, 35.0]),
              "mtsac__H-24__s0": ([0.0, 0.4, 0.4], 30), "mtsac__H-24__s1": ([0.9, 0.9], 20, [50.0, 50.0])}
    for p in grid:
        fake_run(p.cfg.out, p.cfg, *curves[p.name])
    grid = plan(["mtsac"], {"H": [16, 24]}, 2, out, env="MT1:reach-v3", steps=30, eval_every=10)
    assert [p.status for p in grid] == ["skip", "skip", "skip", "resume"]
    rows = results(grid, out)
    assert [(r.seeds, r.planned) for r in rows] == [(2, 2), (1, 2)]
    h16, h24 = table(out)
    # H=16: final 0.2, 0.6 -> 0.4 ± 0.2; best 0.5, 0.8 -> 0.65 ± 0.15
    assert (h16["final_mean"], h16["final_stderr"], h16["best_mean"], h16["best_stderr"]) == \
        ("0.4000", "0.2000", "0.6500", "0.1500")
    # medians 20 and 35 -> 27.5 ± 7.5; H=24's finished run logged no pace
    assert (h16["steps_per_s_mean"], h16["steps_per_s_stderr"]) == ("27.5", "7.5")
    assert (h24["seeds"], h24["final_mean"], h24["final_stderr"], h24["best_mean"]) == ("1", "0.4000", "", "0.4000")
    assert (h24["steps_per_s_mean"], h24["steps_per_s_stderr"]) == ("", "")
    md = (out / "results.md").read_text().splitlines()
    assert md[2] == "| mtsac | 16 | 2 | 0.400 ± 0.200 | 0.650 ± 0.150 | 27.5 ± 7.5 |"
    assert md[3] == "| mtsac | 24 | 1 of 2 | 0.400 | 0.400 | – |"
    assert is_png(out / "curves.png")


def test_ray_sweep_gives_the_same_table(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "mtsac", "--vary", "H=16", "--seeds", "2", *TINY, "--ray", "local", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on Ray at local (2 CPUs), 1 CPU each" in printed and printed.count(" done    ") == 2
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["mtsac__H-16__s0", "mtsac__H-16__s1"]
    assert all(checkpoint_step(d) == 30 for d in (out / "runs").iterdir())
    assert header(out) == HEADER
    assert [(r["spec"], r["H"], r["seeds"]) for r in table(out)] == [("mtsac", "16", "2")]
    assert len((out / "results.md").read_text().splitlines()) == 3 and is_png(out / "curves.png")
    packed = tmp_path / "packed"   # the seeds as one Ray task, the same table
    assert main(["sweep", "mtsac", "--vary", "H=16", "--seeds", "2", *TINY, "--ray", "local", "--pack-seeds",
                 "-o", str(packed)]) == 0
    assert "running 2 runs in 1 process (seeds packed) on Ray" in capsys.readouterr().out
    assert all(checkpoint_step(packed / "runs" / "mtsac__H-16__seeds" / f"seed_{s}") == 30 for s in (0, 1))
    assert [(r["spec"], r["H"], r["seeds"]) for r in table(packed)] == [("mtsac", "16", "2")]


def test_ray_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` fails as if not installed
    out = tmp_path / "sweep"
    assert main(["sweep", "mtsac", "--seeds", "1", *TINY, "--ray", "auto", "-o", str(out)]) == 2
    assert "pip install graphnet-rl[ray]" in capsys.readouterr().err
    assert not out.exists()


def test_packed_seeds_train_as_one_group_per_variant_and_resume(tmp_path, capsys):
    """--pack-seeds: one process per variant trains its seeds as a group (graphnet train --seeds); every seed
    still gets its own run directory, its row in the table, and is skipped once finished."""
    out = tmp_path / "sweep"
    args = ["sweep", "mtsac", "--vary", "H=16,24", "--seeds", "2", *TINY, "--pack-seeds", "--workers", "2",
            "--env-workers", "2", "--no-overlap", "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "running 4 runs in 2 processes (seeds packed): a local pool of 2 workers" in printed
    assert printed.count(" done    ") == 4
    groups = sorted(p.name for p in (out / "runs").iterdir())
    assert groups == ["mtsac__H-16__seeds", "mtsac__H-24__seeds"]
    for group in groups:
        assert sorted(p.name for p in (out / "runs" / group).iterdir() if p.is_dir()) == ["seed_0", "seed_1"]
        for seed in (0, 1):
            run = out / "runs" / group / f"seed_{seed}"
            assert checkpoint_step(run) == 30
            assert torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["group"]["seeds"] == [0, 1]
            config = RunConfig.model_validate_json((run / "config.json").read_text())
            assert (config.env_workers, config.overlap) == (2, False)     # the group's 2 workers, 1 a seed
    assert [(r["spec"], r["H"], r["seeds"]) for r in table(out)] == [("mtsac", "16", "2"), ("mtsac", "24", "2")]
    assert main(args) == 0
    assert "(0 to start, 0 to resume, 4 finished: skipped)" in capsys.readouterr().out


def test_a_run_of_a_sweep_sizes_its_env_workers_by_its_share_of_the_cores(tmp_path, monkeypatch):
    """A pool of N on C cores gives each run C // N torch threads, and the same C // N cores set its default
    env workers (default_workers), not the whole machine's C: a 16-core box with 4 runs is 4 x 8 processes."""
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, resume, quiet, cores: seen.setdefault("cores", cores))
    [point] = plan(["mtsac"], {}, 1, tmp_path / "sweep", env="MT1:reach-v3", steps=30)
    assert run_one(point.cfg.model_dump_json(), False, str(tmp_path / "log"), threads=3)["ok"]
    assert seen == {"cores": 3}


def test_packed_seeds_refuse_a_per_seed_task_layout(tmp_path, capsys):
    spec = tmp_path / "taper.gn"
    spec.write_text((_spec.library_dir() / "mtsac.gn").read_text() + "\ntrain {\n  replay = taper()\n}\n")
    assert main(["sweep", str(spec), "--seeds", "2", *TINY, "--pack-seeds", "-o", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--seeds trains the seeds' updates as one" in err and "(--pack-seeds)" in err
    assert not (tmp_path / "s").exists()
