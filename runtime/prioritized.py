"""TA-PER's replay priorities: one sum tree per task (Shared-Unique Features and TA-PER, section 3.3).

A single PER sum tree over all tasks lets high-priority tasks crowd the others out of a batch; TA-PER
keeps one sum tree per task, draws k_i = clip(K p_i / sum p, kmin, kmax) samples of task i, and
samples inside task i in proportion to its priorities. Here all T trees live in one tensor
``[T, 2 * leaves]`` so that writes, parent repairs and the sampling descent of every tree run as a
few batched torch ops per tree level (log2(leaves) levels), on the device the trees were made on.

Layout: node 1 is a tree's root, node n has children 2n and 2n + 1, slot j of the replay buffer is
leaf ``leaves + j``; node 0 is unused. Leaves hold p ** alpha, inner nodes the sums of their children.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from graphnet.train_config import TAPER

__all__ = ["TaskSumTrees"]


class TaskSumTrees:
    """T sum trees of priorities ** alpha, one per task, in one ``[T, 2 * leaves]`` tensor.

    ``capacity`` is the number of replay slots per task; it is rounded up to a power of two
    (``leaves``) so that every tree is complete and all trees descend in lock-step. Slots at or past
    a task's stored size hold 0 and so are never sampled. Sums are kept in float64 by default: one
    tree sums up to millions of priorities spanning orders of magnitude, and float32 prefix sums
    would misplace samples. Inner nodes are always recomputed from their children (never updated by
    deltas), so no rounding drift builds up over training.
    """

    def __init__(self, num_tasks: int, capacity: int, alpha: float = 0.6, beta: float = 0.4,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> None:
        if num_tasks < 1 or capacity < 1:
            raise ValueError(f"need num_tasks >= 1 and capacity >= 1, got {num_tasks}, {capacity}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
        self.num_tasks = num_tasks
        self.capacity = capacity
        self.leaves = 1 << (capacity - 1).bit_length()       # capacity rounded up to a power of two
        self.depth = self.leaves.bit_length() - 1            # levels between a leaf and the root
        self.alpha = float(alpha)                            # fixed: stored leaves are p ** alpha
        self.beta = float(beta)                              # read at each sample(): may be annealed
        self.tree = torch.zeros(num_tasks, 2 * self.leaves, dtype=dtype, device=device)
        # PER: a new transition enters at the largest priority seen so far, so that it is sampled
        # at least once soon. Kept in leaf space (p ** alpha, monotone in p), on the device, global
        # over all tasks ("maximum priority in buffer", TA-PER 3.3), and never decreasing, as in PER.
        self.max_leaf = torch.ones((), dtype=dtype, device=device)

    @classmethod
    def from_config(cls, replay: TAPER, num_tasks: int, capacity: int,
                    device: torch.device | str | None = None) -> TaskSumTrees:
        """Trees with a spec's ``replay = taper(...)`` alpha and beta."""
        return cls(num_tasks, capacity, alpha=replay.alpha, beta=replay.beta, device=device)

    @property
    def device(self) -> torch.device:
        return self.tree.device

    # ------------------------------------------------------------------------------- writes
    def state_dict(self) -> dict[str, Tensor]:
        """The trees and the largest leaf so far (what new transitions get): all a resume needs."""
        return {"tree": self.tree, "max_leaf": self.max_leaf}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["tree"].shape != self.tree.shape:
            raise ValueError(f"sum trees of shape {tuple(state['tree'].shape)} do not fit {tuple(self.tree.shape)}")
        self.tree = state["tree"].to(self.device, self.tree.dtype)
        self.max_leaf = state["max_leaf"].to(self.device, self.max_leaf.dtype)

    def update(self, task: Tensor, index: Tensor, priority: Tensor) -> None:
        """Set slot ``index`` of tree ``task`` to ``priority ** alpha`` and repair its ancestors.

        ``priority`` is PER's p = |delta| + eps, computed by the caller (TrainConfig.replay.eps).
        A priority that is not finite (or negative, with fractional alpha) is stored as the largest
        one seen so far. Duplicated (task, index) pairs keep the last one in the batch, on every
        device: torch's scatter with duplicate indices leaves the winner unspecified (on CUDA), so
        every duplicate is made to write the last one's value.
        """
        leaf = priority.detach().to(device=self.device, dtype=self.tree.dtype).reshape(-1) ** self.alpha
        if leaf.numel() == 0:
            return
        # A NaN/inf TD error (a task whose loss exploded, which PaCo's maskout expects) would poison
        # its tree's sums and the global max: such a slot gets the largest priority seen instead.
        leaf = torch.where(torch.isfinite(leaf), leaf, self.max_leaf)
        self.max_leaf = torch.maximum(self.max_leaf, leaf.max())
        self._write(task, index, leaf)

    def add(self, task: Tensor, index: Tensor) -> None:
        """Give newly stored transitions the largest priority seen so far (global over tasks, as PER).

        Before any ``update`` that is 1, PER's initial value. Call it for the slots a transition was
        just written to (overwriting an old one in a full ring buffer is the same call).
        """
        task = task.reshape(-1)
        if task.numel() == 0:
            return
        self._write(task, index, self.max_leaf.expand(task.shape[0]))

    def _write(self, task: Tensor, index: Tensor, leaf: Tensor) -> None:
        """Write leaf values (last duplicate wins) and recompute every ancestor, level by level."""
        task = task.to(self.device).reshape(-1).long()
        index = index.to(self.device).reshape(-1).long()
        width = 2 * self.leaves
        flat = task * width + self.leaves + index                    # position in tree.view(-1)
        n = flat.shape[0]
        # Sort stably so duplicates sit together in batch order; each duplicate then takes the value
        # of its run's last member, and the scatter below writes one value per position.
        sorted_flat, order = torch.sort(flat, stable=True)
        starts = torch.ones(n, dtype=torch.bool, device=self.device)
        starts[1:] = sorted_flat[1:] != sorted_flat[:-1]
        run = torch.cumsum(starts.long(), 0) - 1
        last = torch.zeros(n, dtype=torch.long, device=self.device).scatter_reduce_(
            0, run, order, reduce="amax", include_self=False)
        self.tree.view(-1)[sorted_flat] = leaf[last[run]]
        # Parents: duplicates among them write identical sums, so the result does not depend on order.
        t = sorted_flat // width
        node = sorted_flat % width
        for _ in range(self.depth):
            node = node // 2
            self.tree[t, node] = self.tree[t, 2 * node] + self.tree[t, 2 * node + 1]

    # ------------------------------------------------------------------------------- reads
    def get(self, task: Tensor, index: Tensor) -> Tensor:
        """Stored leaf values p ** alpha of the given slots."""
        return self.tree[task.to(self.device).long(), self.leaves + index.to(self.device).long()]

    def totals(self) -> Tensor:
        """Sum of p ** alpha in each tree, ``[T]``: the roots."""
        return self.tree[:, 1]

    def counts(self, batch_size: int, kmin: int, kmax: int) -> Tensor:
        """TA-PER's Eq. (5): k_i = clip(round(K p_i / sum_l p_l), kmin, kmax), K = batch_size.

        p_i is tree i's total. Rounding is half up (floor(x + 0.5)). A task with nothing stored
        (total 0) gets 0, not kmin. As in the paper, the clip means sum k_i need not equal K.
        """
        if kmin > kmax:
            raise ValueError(f"kmin ({kmin}) must not exceed kmax ({kmax})")
        tot = self.totals()
        share = tot / tot.sum().clamp_min(torch.finfo(tot.dtype).tiny)
        k = torch.floor(batch_size * share + 0.5).clamp(kmin, kmax).long()
        return torch.where(tot > 0, k, torch.zeros_like(k))

    def sample(self, k: Tensor, sizes: Tensor,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draw k_i slots from tree i by stratified prefix-sum descent; returns (task, index, weight).

        All sum(k) samples of all trees descend together, one batched step per tree level. Tree i's
        mass is cut into k_i equal strata and one point is drawn uniformly in each (PER's stratified
        sampling), so a slot is drawn with probability P(j) = p_j ** alpha / total_i per draw.
        Only filled slots are reached: empty ones hold 0, the descent never enters a subtree of
        mass 0, and the index is clamped below sizes[i] as a guard against rounding.

        ``sizes[i]`` is the number of transitions stored for task i (N_i). Importance weights are
        w = (N_i P(j)) ** -self.beta (TA-PER Eq. 4 within task i's tree), divided by the largest weight
        of the whole batch, across tasks, as PER does: weights stay comparable between tasks (a
        per-task max would inflate the tasks whose priorities are flat). Weights are in the default
        float dtype. Output is sorted by task: task 0's k_0 samples, then task 1's, and so on.
        ``generator`` must live on the trees' device.
        """
        k = k.to(self.device).long().reshape(-1)
        sizes = sizes.to(self.device).long().reshape(-1)
        if k.shape[0] != self.num_tasks or sizes.shape[0] != self.num_tasks:
            raise ValueError(f"k and sizes need {self.num_tasks} entries, got {k.shape[0]}, {sizes.shape[0]}")
        tot = self.totals()
        bad = ((k < 0) | ((k > 0) & ((tot <= 0) | (sizes <= 0)))).any()
        m, bad = torch.stack([k.sum(), bad.long()]).tolist()          # the one host sync
        if bad:
            raise ValueError("k must be >= 0, and a task sampled (k > 0) needs stored transitions")
        out_dtype = torch.get_default_dtype()
        task = torch.repeat_interleave(torch.arange(self.num_tasks, device=self.device), k, output_size=m)
        if m == 0:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return task, empty, torch.zeros(0, dtype=out_dtype, device=self.device)
        start = torch.cumsum(k, 0) - k
        rank = torch.arange(m, device=self.device) - start[task]       # stratum within its task
        r = torch.rand(m, generator=generator, device=self.device, dtype=self.tree.dtype)
        total = tot[task]
        u = (rank.to(self.tree.dtype) + r) / k[task].to(self.tree.dtype) * total
        node = torch.ones(m, dtype=torch.long, device=self.device)
        for _ in range(self.depth):
            left = self.tree[task, 2 * node]
            right = self.tree[task, 2 * node + 1]
            # PER's rule (u <= left goes left), never into an empty subtree: rounding can leave u a
            # hair above a subtree's true mass, and a right sibling of mass 0 holds no transitions.
            go_right = (((u > left) & (right > 0)) | (left <= 0))
            u = torch.where(go_right, u - left, u)
            node = 2 * node + go_right.long()
        index = torch.minimum(node - self.leaves, sizes[task] - 1)
        prob = self.tree[task, self.leaves + index] / total
        w = (sizes[task].to(self.tree.dtype) * prob) ** (-self.beta)
        w = w / w.max()
        return task, index, w.to(out_dtype)
