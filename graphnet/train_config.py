"""The spec's train section: method-specific training options, validated here, consumed by the runtime."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator, \
    model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class UniformReplay(_Strict):
    kind: Literal["uniform"] = "uniform"


class TAPER(_Strict):
    """Task-aware prioritized replay: one sum tree per task, k_i = clip(K p_i / sum p, kmin, kmax)."""

    kind: Literal["taper"]
    alpha: float = Field(0.6, ge=0)        # priority exponent
    beta: float = Field(0.4, ge=0, le=1)   # importance-weight exponent
    eps: PositiveFloat = 1e-6              # added to |TD error|
    kmin: PositiveInt = 32                 # fewest samples of a task per batch
    kmax: PositiveInt = 256                # most samples of a task per batch

    @model_validator(mode="after")
    def _bounds(self):
        if self.kmin > self.kmax:
            raise ValueError(f"kmin ({self.kmin}) must not exceed kmax ({self.kmax})")
        return self


class UniformSampling(_Strict):
    kind: Literal["uniform"] = "uniform"


class GroupSampling(_Strict):
    """Tasks in groups, each group sampled equally (TaCo): groups = "0 1 2 | 3 4 | 5 6 7 8 9"."""

    kind: Literal["groups"]
    groups: str

    @model_validator(mode="after")
    def _parse(self):
        try:
            parsed = [[int(t) for t in g.split()] for g in self.groups.split("|")]
        except ValueError:
            raise ValueError('groups are task indices separated by "|", e.g. "0 1 2 | 3 4"') from None
        flat = [t for g in parsed for t in g]
        if any(not g for g in parsed) or len(flat) != len(set(flat)) or min(flat, default=0) < 0:
            raise ValueError("every group needs at least one task, and each task is in one group")
        return self

    def task_groups(self) -> list[list[int]]:
        return [[int(t) for t in g.split()] for g in self.groups.split("|")]


class TacoSampling(_Strict):
    """TaCo-online: every `every` steps, DBSCAN over the tasks' parameters forms the groups."""

    kind: Literal["taco"]
    eps: PositiveFloat = 0.5
    min_samples: PositiveInt = 1
    every: PositiveInt = 10_000


class Triplet(_Strict):
    """Triplet loss max(0, m + d(a, p) - d(a, n)) on an agent-level feature (shared-unique)."""

    kind: Literal["triplet"] = "triplet"
    feature: str
    margin: PositiveFloat = 1.0
    weight: PositiveFloat = 1.0
    lr: PositiveFloat = 3e-4


class TrainConfig(_Strict):
    """Every option a spec's train section may set; SAC defaults follow the published MT10 setups."""

    loss_maskout: PositiveFloat | None = None   # PaCo: drop a task whose loss exceeds this
    w_reset: bool = False                        # PaCo: re-draw that task's w from the healthy ones
    pcgrad: bool = False                         # D-Grad (O) / PCGrad on actor and critic
    replay: Annotated[UniformReplay | TAPER, Field(discriminator="kind")] = UniformReplay()
    sampling: Annotated[UniformSampling | GroupSampling | TacoSampling,
                        Field(discriminator="kind")] = UniformSampling()
    triplet: Triplet | None = None
    lr: PositiveFloat = 3e-4
    gamma: float = Field(0.99, gt=0, le=1)
    tau: float = Field(0.005, gt=0, le=1)
    batch_per_task: PositiveInt = 128
    init_alpha: PositiveFloat = 1.0

    @field_validator("w_reset")
    @classmethod
    def _reset_needs_maskout(cls, w_reset: bool, info: ValidationInfo) -> bool:
        """A field's check, not the model's: its error names w_reset and does not hide the others' (a
        loss_maskout that failed its own check is not in `info.data`, and is not reported twice)."""
        if w_reset and "loss_maskout" in info.data and info.data["loss_maskout"] is None:
            raise ValueError("it re-draws the w of tasks masked out by loss_maskout: set loss_maskout too")
        return w_reset


_KINDS = {"replay": (UniformReplay, TAPER), "sampling": (UniformSampling, GroupSampling, TacoSampling),
          "triplet": (Triplet,)}


def option_fields(loc: tuple) -> list[str]:
    """The settings allowed where a validation error points: top-level options, or one kind's settings."""
    if not loc:
        return list(TrainConfig.model_fields)
    models = _KINDS.get(str(loc[0]), ())
    kind = str(loc[1]) if len(loc) > 1 else None
    model = next((m for m in models if m.model_fields["kind"].default == kind or
                  kind in getattr(m.model_fields["kind"].annotation, "__args__", ())), models[0] if models else None)
    return [f for f in model.model_fields if f != "kind"] if model else []
