"""`graphnet plot`: mean success curves from runs' metrics.csv; mean ± stderr over runs of one spec. A group's
directory (`train --seeds`) stands for its seeds' runs."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import GraphnetError


def seed_runs(run_dir: Path) -> list[Path]:
    """The run directories `run_dir` stands for: itself, or a group's seeds' (seed_<s>, as its config lists)."""
    config = run_dir / "config.json"
    if (run_dir / "metrics.csv").exists() or not config.is_file():
        return [run_dir]
    seeds = json.loads(config.read_text()).get("seeds") or []
    return [run_dir / f"seed_{s}" for s in seeds] or [run_dir]


def read_curve(run_dir: Path) -> tuple[str, np.ndarray, np.ndarray]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise GraphnetError(f"{run_dir} has no metrics.csv (not a graphnet run, or no evaluation yet)")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise GraphnetError(f"{path} has no evaluation rows yet")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    label = Path(config.get("spec", run_dir.name)).stem + (f" ({config['env']})" if "env" in config else "")
    return label, np.array([int(r["step"]) for r in rows]), np.array([float(r["success_mean"]) for r in rows])


def plot(run_dirs: list[Path], out: Path, labels: list[str] | None = None) -> dict[str, int]:
    """One curve per spec: the mean over its runs (a group's directory: its seeds'), shaded ± standard error where
    there are several. `labels` (one per run directory) groups the runs by those labels instead."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if labels is not None and len(labels) != len(run_dirs):
        raise GraphnetError(f"plot: {len(labels)} labels for {len(run_dirs)} run directories")
    groups: dict[str, list] = defaultdict(list)
    for i, d in enumerate(run_dirs):
        for run in seed_runs(d):
            label, steps, success = read_curve(run)
            groups[label if labels is None else labels[i]].append((steps, success))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curves in sorted(groups.items()):
        n = min(len(s) for s, _ in curves)
        steps = curves[0][0][:n]
        values = np.stack([c[:n] for _, c in curves])
        mean = values.mean(0)
        ax.plot(steps, mean, marker="o", markersize=3, label=f"{label}, n={len(curves)}")
        if len(curves) > 1:
            err = values.std(0, ddof=1) / np.sqrt(len(curves))
            ax.fill_between(steps, mean - err, mean + err, alpha=0.25)
    ax.set_xlabel("environment steps per task")
    ax.set_ylabel("mean success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {label: len(curves) for label, curves in groups.items()}
