"""graphnet.compiler: spec graphs to torch networks (torch.fx), checked against a reference interpreter."""
from .build import Actor, AgentNets, Critic, Trunk, build, built_counts
from .reference import reference_trunk

__all__ = ["Actor", "AgentNets", "Critic", "Trunk", "build", "built_counts", "reference_trunk"]
