"""graphnet: a declarative modular-graph model compiler for multi-task RL.

The core (language, graph, accounting) never imports torch; `graphnet.compiler` and
`graphnet.runtime` do.
"""
from ._spec import Sizes, Spec, library_names, load
from .accounting import ParamReport
from .errors import GraphnetError, SpecError, SpecErrors
from .train_config import TrainConfig

__all__ = ["GraphnetError", "ParamReport", "Sizes", "Spec", "SpecError", "SpecErrors", "TrainConfig", "library_names",
           "load"]
