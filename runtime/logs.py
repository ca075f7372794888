"""A run's records: metrics.csv (one row per evaluation), TensorBoard scalars, and the run directory files."""
from __future__ import annotations

import csv
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name, dist in {"graphnet": "graphnet-rl", **{d: d for d in ("torch", "metaworld", "mujoco", "gymnasium",
                                                                     "numpy")}}.items():
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class RunLog:
    """metrics.csv: `step, success_mean, success_<task>...`; TensorBoard event files beside it in tb/."""

    def __init__(self, run_dir: Path, task_names: list[str], resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter
        self.path = run_dir / "metrics.csv"
        self.header = ["step", "success_mean", *(f"success_{t}" for t in task_names)]
        self.task_names = task_names
        if resume_step is None or not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.header)
        else:  # drop evaluations made after the checkpoint: the resumed run makes them again
            with self.path.open() as f:
                rows = [r for r in csv.reader(f)][1:]
            with self.path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.header)
                writer.writerows(r for r in rows if int(r[0]) <= resume_step)
        # TensorBoard drops the events at purge_step and after; the checkpoint's own step was logged before it
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def evaluation(self, step: int, success: np.ndarray) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step, f"{success.mean():.4f}", *(f"{s:.4f}" for s in success)])
        self.tb.add_scalar("eval/success_mean", float(success.mean()), step)
        for name, s in zip(self.task_names, success):
            self.tb.add_scalar(f"eval/success/{name}", float(s), step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.tb.close()


def read_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """A run's TensorBoard scalar `tag` as TensorBoard reads it (purges applied): (step, value) in step order;
    empty where the run logged none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    if not (run_dir / "tb").is_dir():
        return []
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
