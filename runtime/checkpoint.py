"""Checkpoints: an interrupted or failed save never costs the previous checkpoint.

A checkpoint is written to a temporary file, flushed to disk, renamed into place, and only then made
`latest.pt` (a symlink, swapped atomically): a process killed mid-save (kill -9) leaves the previous one
latest. Reading falls back from an unreadable newest checkpoint to the one before, and says so.
"""
from __future__ import annotations

import errno
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError

LATEST = "latest.pt"
_PARTIAL = ".partial.pt"


@dataclass
class Found:
    """The checkpoint a resume takes: its file, its state, and any newer ones that could not be read."""

    path: Path
    state: dict
    skipped: list[str] = field(default_factory=list)


def save(run_dir: Path, state: dict) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    path, tmp = folder / f"step_{state['step']:09d}.pt", folder / _PARTIAL
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        link = folder / ".latest"
        link.unlink(missing_ok=True)
        link.symlink_to(path.name)
        os.replace(link, folder / LATEST)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        kept = f"; {folder / LATEST} is still the previous one" if (folder / LATEST).exists() else ""
        raise CheckpointError(f"cannot write the checkpoint of step {state['step']:,} to {folder}{full}: "
                              f"{e.strerror or e}{kept}") from None
    return path


def read_latest(run_dir: Path, at_most: int | None = None) -> Found | None:
    """The newest readable checkpoint: `latest.pt`'s, or, where that file is broken, the newest one before it.
    `at_most`: the newest of that step or earlier (a group of seeds resumes at a step all its seeds have)."""
    folder = run_dir / "checkpoints"
    latest = folder / LATEST
    candidates = sorted(folder.glob("step_*.pt"), reverse=True)
    if at_most is not None:
        candidates = [c for c in candidates if c.name <= f"step_{at_most:09d}.pt"]
    elif latest.exists():
        newest = latest.resolve()
        candidates = [newest] + [c for c in candidates if c.name < newest.name]
    skipped: list[str] = []
    for path in candidates:
        try:
            return Found(path, torch.load(path, map_location="cpu", weights_only=False), skipped)
        except (EOFError, RuntimeError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            skipped.append(f"{path.name} ({type(e).__name__}: {e})")
    if skipped:
        raise CheckpointError(f"no checkpoint in {folder} can be read: " + "; ".join(skipped))
    return None


def load(run_dir: Path) -> dict | None:
    """The state of `read_latest`'s checkpoint, or None where the run has none yet."""
    found = read_latest(run_dir)
    return found.state if found else None
