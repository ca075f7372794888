"""torch for the op definitions, imported when an op first runs, not when the language loads them: the core
(`graphnet check`, `params`, `viz`) never imports torch (see graphnet/__init__)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


class _OnFirstUse:
    """A module imported at its first attribute access. Its attributes are then copied in, so that later
    accesses are plain lookups (ops read torch attributes thousands of times a step)."""

    def __init__(self, name: str):
        self.__module = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__module)
        self.__dict__.update(vars(module))
        return getattr(module, attr)


if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import Tensor
else:
    torch = _OnFirstUse("torch")
    F = _OnFirstUse("torch.nn.functional")
    Tensor = Any

__all__ = ["F", "Tensor", "torch"]
