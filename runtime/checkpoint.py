"""Checkpoints: written atomically, so an interrupted save never leaves a broken latest checkpoint."""
from __future__ import annotations

import os
from pathlib import Path

import torch

LATEST = "latest.pt"


def save(run_dir: Path, state: dict) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    path = folder / f"step_{state['step']:09d}.pt"
    tmp = folder / ".partial.pt"
    torch.save(state, tmp)
    os.replace(tmp, path)
    latest = folder / LATEST
    tmp_link = folder / ".latest"
    if tmp_link.exists() or tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(path.name)
    os.replace(tmp_link, latest)
    return path


def load(run_dir: Path) -> dict | None:
    latest = run_dir / "checkpoints" / LATEST
    if not latest.exists():
        return None
    return torch.load(latest, map_location="cpu", weights_only=False)
