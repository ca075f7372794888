"""Parameter accounting on the graph alone (no torch).

Conventions (documented in the README):
- every module is counted once however many call sites use it; a `task` module has T copies and a
  `bank(K)` module K copies, plus one composition table w (T x K) per agent, shared by actor and critic;
- the critic is counted twice (twin critics) and so is its target; modules used by both actor and
  critic (role `common`) are counted once and not copied into the target, unless the agent section says
  `agent(target = copy)`: the target then holds its own copy of the common parameters the critic reads;
- `per_task` is the size of the network one sample of one task is evaluated with: shared modules,
  its task's copy, and its composed bank parameters theta_t = Phi w_t (one copy's size) plus its row of w.
"""
from __future__ import annotations

import networkx as nx
from pydantic import BaseModel

from .ir import info, modules


class ModuleCount(BaseModel):
    module: str
    op: str
    role: str
    sharing: str
    copies: int
    per_copy: int
    total: int


class ParamReport(BaseModel):
    total: int                 # everything the agent holds: actor, critics, target critics, temperatures
    trainable: int             # total minus the target critics
    actor: int
    critic: int                # both twins
    critic_target: int         # both target twins
    common: int                # used by actor and critic alike (incl. the bank table w)
    alpha: int                 # one log-temperature per task
    by_sharing: dict[str, int]  # trainable network parameters by sharing mode: shared, task, bank
    per_task: dict[str, int]   # parameters one sample of one task touches: actor, critic (both twins)
    by_module: list[ModuleCount]


def count(g: nx.DiGraph) -> ParamReport:
    tasks = info(g).sizes["tasks"]
    bank = info(g).bank
    table = tasks * bank["K"] if bank else 0
    role_total = {"actor": 0, "critic": 0, "common": table}
    per_sample = {"actor": 0, "critic": 0, "common": 0}
    by_sharing = {"shared": 0, "task": 0, "bank": table}
    rows = []
    for m in modules(g).values():
        twins = 2 if m.role == "critic" else 1
        role_total[m.role] += m.total * twins
        per_sample[m.role] += m.per_copy * twins
        by_sharing[m.sharing] += m.total * twins
        rows.append(ModuleCount(module=m.id, op=m.op, role=m.role, sharing=m.sharing, copies=m.copies,
                                per_copy=m.per_copy, total=m.total * twins))
    w_row = bank["K"] if bank else 0
    per_task = {"actor": per_sample["actor"], "critic": per_sample["critic"]}
    for role in ("actor", "critic"):
        if _reads_common(g, role):
            per_task[role] += per_sample["common"]
        if bank and _uses_bank(g, role):
            per_task[role] += w_row
    trainable = role_total["actor"] + role_total["critic"] + role_total["common"] + tasks
    target = role_total["critic"]
    if info(g).target == "copy":
        target += role_total["common"] - table + (table if bank and _uses_bank(g, "critic") else 0)
    return ParamReport(total=trainable + target, trainable=trainable, actor=role_total["actor"],
                       critic=role_total["critic"], critic_target=target, common=role_total["common"],
                       alpha=tasks, by_sharing=by_sharing, per_task=per_task, by_module=rows)


def _reads_common(g: nx.DiGraph, role: str) -> bool:
    return any(n.role == "common" and n.module for n in info(g).trunk(role))


def _uses_bank(g: nx.DiGraph, role: str) -> bool:
    mods = modules(g)
    return any(n.module and mods[n.module].sharing == "bank" for n in info(g).trunk(role))
