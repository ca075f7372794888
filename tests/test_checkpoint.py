"""Checkpoints lose nothing: a save killed midway, a broken newest file and a full disk all leave the previous
checkpoint usable, and a resume says which one it took."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from graphnet.cli import FIXED_AT_START, RESUMABLE, build_parser, main
from graphnet.runtime import checkpoint
from graphnet.runtime import train as train_module
from graphnet.runtime.checkpoint import CheckpointError
from graphnet.runtime.train import train
from helpers import PointMass
from test_runtime import point_mass_config

WRITER = """
import sys, torch
from pathlib import Path
from graphnet.runtime import checkpoint
big = torch.ones(64 * 2 ** 20 // 4)          # 64 MiB: a save takes long enough to be killed in it
step = 2
while True:
    checkpoint.save(Path(sys.argv[1]), {"step": step, "big": big})
    step += 1
"""


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    checkpoint.save(tmp_path, {"step": 1, "big": torch.zeros(3)})
    partial = tmp_path / "checkpoints" / ".partial.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    try:
        deadline = time.time() + 60
        while not (partial.exists() and partial.stat().st_size > 0) and time.time() < deadline:
            time.sleep(0.001)
        assert partial.exists(), "the writer never started a save"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    found = checkpoint.read_latest(tmp_path)
    assert found is not None and found.skipped == []
    assert found.path.name == f"step_{found.state['step']:09d}.pt"
    assert torch.equal(found.state["big"], torch.zeros(3) if found.state["step"] == 1 else torch.ones(2 ** 24))


def test_a_broken_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    checkpoint.save(tmp_path, {"step": 1, "x": torch.zeros(2)})
    newest = checkpoint.save(tmp_path, {"step": 2, "x": torch.ones(2)})
    newest.write_bytes(newest.read_bytes()[:100])    # truncated, as by a crash of the machine
    found = checkpoint.read_latest(tmp_path)
    assert found.state["step"] == 1 and found.path.name == "step_000000001.pt"
    assert len(found.skipped) == 1 and found.skipped[0].startswith("step_000000002.pt")


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    checkpoint.save(tmp_path, {"step": 1}).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be read"):
        checkpoint.read_latest(tmp_path)


def test_a_full_disk_is_one_clear_error_and_keeps_the_previous(tmp_path):
    checkpoint.save(tmp_path, {"step": 1})
    (tmp_path / "checkpoints" / ".partial.pt").symlink_to("/dev/full")   # every write there: ENOSPC
    with pytest.raises(CheckpointError, match=r"step 2 .*\(the disk is full\).*still the previous one"):
        checkpoint.save(tmp_path, {"step": 2, "x": torch.ones(1000)})
    assert not (tmp_path / "checkpoints" / ".partial.pt").is_symlink()
    assert checkpoint.load(tmp_path)["step"] == 1


def test_resume_names_its_checkpoint_and_refuses_a_run_already_there(tmp_path, capsys):
    run = train(point_mass_config(tmp_path / "run", steps=60, warmup=30, checkpoint_every=30), quiet=True,
                make_env=PointMass)
    latest = run / "checkpoints" / "latest.pt"
    before = latest.read_bytes()
    assert main(["train", "--resume", str(run), "--steps", "40"]) == 2
    err = capsys.readouterr().err
    assert "at step 60 already, not short of --steps 40" in err and "Traceback" not in err
    assert latest.read_bytes() == before and sorted(os.listdir(run / "checkpoints"))[-1] == "step_000000060.pt"
    Path(os.path.realpath(latest)).write_bytes(b"broken")
    train(point_mass_config(run, steps=90, warmup=30, checkpoint_every=30), resume=True, quiet=True,
          make_env=PointMass)
    out = capsys.readouterr().out
    assert f"resuming {run} at step 30 of 90 from checkpoints/step_000000030.pt" in out
    assert "step_000000060.pt (" in out and "passed over" in out


def test_a_resume_takes_what_it_may_change_and_refuses_what_the_run_learns(tmp_path, capsys, monkeypatch):
    """--resume continues a run as it started: flags that set what it learns are one usage error naming them (they
    were ignored), while its length, pace, evaluations and checkpoints may change."""
    run = train(point_mass_config(tmp_path / "run", steps=60, warmup=30, checkpoint_every=30), quiet=True,
                make_env=PointMass)
    config, latest = (run / "config.json").read_text(), (run / "checkpoints" / "latest.pt").read_bytes()
    assert main(["train", "--resume", str(run), "--steps", "90", "--env", "MT50", "--seed", "0", "--lr", "0.1"]) == 2
    assert "--env, --seed, --lr: --resume continues" in capsys.readouterr().err
    assert (run / "config.json").read_text() == config
    assert (run / "checkpoints" / "latest.pt").read_bytes() == latest
    given = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, resume, quiet: given.update(cfg=cfg, resume=resume) or run)
    assert main(["train", "--resume", str(run), "--steps", "90", "--eval-every", "15", "--checkpoint-every", "45",
                 "--env-workers", "1"]) == 0
    changed = {"steps": 90, "eval_every": 15, "checkpoint_every": 45, "env_workers": 1}
    assert given["resume"] and given["cfg"].model_dump() == train_module.load_run_config(run).model_dump() | changed


def test_every_train_flag_is_either_resumable_or_fixed_at_start():
    """A flag added to train without a side here would be ignored by --resume again."""
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest for a in train_parser._actions} - {"help", "spec", "resume", "quiet"}
    assert flags == set(RESUMABLE) | set(FIXED_AT_START) and not set(RESUMABLE) & set(FIXED_AT_START)
