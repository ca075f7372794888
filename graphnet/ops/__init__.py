"""graphnet's own ops, each one registry definition (graphnet.registry), written as a user's op would be.

Loaded on the registry's first use; importing them does not import torch (see _torch). The order here is
the README op table's."""
from . import basic, task, conditioning, softmod, care, stacks  # noqa: F401  (each module registers its ops)
