"""A training run's configuration: one pydantic model, from the CLI and the spec's train section."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from ..train_config import TrainConfig


class RunConfig(BaseModel):
    """Everything a run needs besides the spec. `--steps` counts environment steps per task."""

    model_config = ConfigDict(extra="forbid")
    spec: str
    overrides: dict[str, int | float | bool | str] = {}
    env: str = "MT10"
    steps: PositiveInt = 200_000
    seed: int = 0
    seeds: list[int] | None = None        # a group: these seeds trained as one agent, each in OUT/seed_<s>
    out: Path
    eval_every: PositiveInt = 10_000
    eval_episodes: PositiveInt = 10
    eval_protocol: Literal["graphnet", "metaworld"] = "graphnet"   # metaworld: metaworld.evaluation's
    checkpoint_every: PositiveInt = 50_000
    save_replay: bool = False
    warmup: int = Field(1_500, ge=0)      # steps per task of uniform random actions before learning
    buffer_size: PositiveInt = 100_000    # transitions kept per task (MT10: 1M in all)
    env_workers: int | None = Field(None, ge=0)   # processes stepping the environments; 0: in this one;
                                                  # None: from the cores (envs.default_workers)
    overlap: bool | None = None           # update while the environments step; None: with env workers
    device: str | None = None             # None: CUDA when present
    threads: PositiveInt | None = None    # torch CPU threads
    cuda_graph: bool | None = None        # the update as one CUDA graph; None: whenever it can be
    train: TrainConfig = TrainConfig()

    @field_validator("env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if v in ("MT10", "MT50") or (v.startswith("MT1:") and len(v) > 4):
            return v
        raise ValueError(f"unknown env '{v}': use MT10, MT50 or MT1:<task>, e.g. MT1:reach-v3")

    @field_validator("seeds")
    @classmethod
    def _group(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError(f"seeds {v}: a group needs two or more different seeds (one seed: --seed)")
        return v
