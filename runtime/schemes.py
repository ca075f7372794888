"""Multi-task training schemes a spec's train section switches on, as plain torch functions.

- ``pcgrad``: D-Grad (O) / PCGrad (Yu et al. 2020), projecting conflicting per-task gradients.
- ``per_task_mean``, ``maskout``, ``w_reset_``: PaCo's loss maskout and w-reset (Sun et al. 2022, 4.2).
- ``TaskSampler``: uniform, fixed-group and TaCo-online (DBSCAN) task shares of an update batch.
- ``triplet_loss``: the shared-unique paper's triplet loss on unique features (its Eq. 1).

Everything is vectorized over samples and tasks and stays on the device of its inputs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..train_config import GroupSampling, TacoSampling, UniformSampling

__all__ = ["pcgrad", "per_task_mean", "maskout", "w_reset_", "TaskSampler", "triplet_indices",
           "triplet_loss"]


# ----------------------------------------------------------------------------------- PCGrad
def pcgrad(grads: list[Tensor], generator: torch.Generator | None = None) -> Tensor:
    """Sum of per-task gradients after PCGrad's projections (D-Grad (O)).

    For each task i, the other tasks j are visited in a random order (a fresh one per i, as in
    Yu et al.'s code); whenever g_i . g_j < 0, g_i <- g_i - (g_i . g_j / |g_j|^2) g_j, with g_j the
    ORIGINAL gradient of j and g_i the one projected so far. This removes the component of g_i that
    opposes g_j. (D-Grad's Algorithm 1 prints the step as g_j/|g_j| * g_i.g_j/|g_i|, which is not a
    projection unless |g_i| = |g_j|; its text says "projection onto the normal plane", which is
    PCGrad's formula, used here.)

    Every projected g_i stays a combination sum_k A[i, k] g_k of the originals, so the whole
    procedure runs on T x T matrices: the Gram matrix g g^T (one matmul, in float64 so that no
    reduced-precision matmul flips the sign of a dot product) gives every g_i . g_j, all tasks take
    their s-th projection together (T - 1 steps), and the P-long vectors are touched once more at
    the end, for sum_i g_i = (1^T A) g. Each gradient may have any shape (all the same); the sum has
    that shape and dtype. ``generator`` must live on the gradients' device.
    """
    if not grads:
        raise ValueError("pcgrad needs at least one gradient")
    shape = grads[0].shape
    g = torch.stack([x.reshape(-1) for x in grads])                        # [T, P], originals
    t = g.shape[0]
    if t == 1:
        return g[0].reshape(shape).clone()
    g64 = g.double()
    gram = g64 @ g64.T                                                     # g_i . g_j
    # order[i] = a random permutation of the tasks other than i: sort random keys, i's own last.
    keys = torch.rand(t, t, generator=generator, device=g.device)
    keys.fill_diagonal_(2.0)
    order = torch.argsort(keys, dim=1)[:, : t - 1]                         # [T, T-1]
    rows = torch.arange(t, device=g.device)
    a = torch.eye(t, dtype=torch.float64, device=g.device)                # projected g_i = a[i] @ g
    sq = gram.diagonal()                                                   # |g_j|^2
    for step in range(t - 1):
        j = order[:, step]
        dot = (a * gram[j]).sum(1)                                         # projected g_i . g_j
        coef = torch.where(dot < 0, dot / sq[j].clamp_min(torch.finfo(torch.float64).tiny),
                           torch.zeros_like(dot))
        a[rows, j] -= coef
    return (a.sum(0).to(g.dtype) @ g).reshape(shape)


# ------------------------------------------------------------------ PaCo: maskout, w-reset
def per_task_mean(values: Tensor, task: Tensor, num_tasks: int) -> Tensor:
    """Mean of ``values[b]`` over the samples b of each task, ``[T]``; a task with no sample gets 0.

    A one-hot matmul rather than a scatter-add: deterministic on CUDA (atomic adds are not), and
    differentiable, so the per-task losses it yields can be masked and summed into the update.
    Extra trailing dims of ``values`` are kept: ``[B, ...]`` gives ``[T, ...]``.
    """
    task = task.to(values.device).long()
    onehot = (task[None, :] == torch.arange(num_tasks, device=values.device)[:, None]).to(values.dtype)
    flat = values.reshape(values.shape[0], -1)
    mean = (onehot @ flat) / onehot.sum(1, keepdim=True).clamp_min(1)
    return mean.reshape((num_tasks,) + values.shape[1:])


def maskout(task_losses: Tensor, threshold: float) -> Tensor:
    """PaCo's loss maskout: which tasks are healthy (loss <= threshold), ``BoolTensor[T]``.

    A task whose loss exploded past the threshold, or is NaN or inf, is unhealthy: its loss is to be
    left out of the total so that it cannot drag the shared parameters (Phi) with it. A task with
    no sample in the batch (per_task_mean's 0) counts as healthy.
    """
    return torch.isfinite(task_losses) & (task_losses <= threshold)


def w_reset_(table: Tensor, healthy: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PaCo's w-reset, in place: each unhealthy row eta <- sum_j beta_j w_j over the healthy rows j.

    beta is drawn uniformly on the simplex (Dirichlet(1): normalised Exp(1) draws over the healthy
    rows), one draw per reset row, so the new w_eta is a random point in the hull of the healthy
    tasks' w (Eq. 3): a fresh start among compositions known to work, leaving Phi and every other
    task untouched (their rows are written back bit for bit). Nothing changes if every task is
    healthy or none is (nothing to draw from). Runs under no_grad and never waits for the device
    (no data-dependent shapes), so it can sit inside a captured CUDA graph. Returns which rows were
    reset, ``BoolTensor[T]``, e.g. to clear those rows' optimiser state.
    """
    healthy = healthy.to(table.device).bool().reshape(-1)
    if healthy.shape[0] != table.shape[0]:
        raise ValueError(f"healthy has {healthy.shape[0]} entries, the table {table.shape[0]} rows")
    with torch.no_grad():
        reset = ~healthy & healthy.any()
        u = torch.rand(healthy.shape[0], healthy.shape[0], generator=generator, device=table.device,
                       dtype=table.dtype)
        e = -torch.log1p(-u) * healthy                     # Exp(1) over the donors, 0 elsewhere
        beta = e / e.sum(1, keepdim=True).clamp_min(torch.finfo(table.dtype).tiny)
        donors = torch.where(healthy[:, None], table, 0)   # an exploded (NaN) row must not leak in
        table.copy_(torch.where(reset[:, None], beta @ donors, table))
    return reset


# ---------------------------------------------------------------------------- task sampling
class TaskSampler:
    """How many samples of each task an update batch takes (TrainConfig.sampling).

    TaCo samples task tau with p_tau = 1 / (|G| |g_i|) for tau in group g_i: every group gets the
    same share, split evenly inside it. In TaCo this distribution also picks which task to roll out;
    in graphnet these weights set each task's share of the update batch (``batch_counts``).

    - uniform: p_tau = 1 / T.
    - groups: the spec's fixed groups (GroupSampling.task_groups()); the tasks not listed there
      together form one more group.
    - taco: TaCo-online. Uniform (every task its own group) until the first ``regroup``, which runs
      DBSCAN(eps, min_samples) over the tasks' parameter vectors; noise points become singleton
      groups. The runtime calls it every ``sampling.every`` steps (``self.every``).
    """

    def __init__(self, num_tasks: int,
                 sampling: UniformSampling | GroupSampling | TacoSampling | None = None,
                 device: torch.device | str | None = None) -> None:
        if num_tasks < 1:
            raise ValueError(f"need num_tasks >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.kind = "uniform" if sampling is None else sampling.kind
        self.sampling = sampling
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.every: int | None = sampling.every if isinstance(sampling, TacoSampling) else None
        if isinstance(sampling, GroupSampling):
            listed = sampling.task_groups()
            flat = [t for g in listed for t in g]
            if max(flat) >= num_tasks:
                raise ValueError(f"groups name task {max(flat)}, but there are {num_tasks} tasks")
            rest = [t for t in range(num_tasks) if t not in set(flat)]
            self.groups: list[list[int]] = listed + ([rest] if rest else [])
        else:
            self.groups = [[t] for t in range(num_tasks)]

    def state_dict(self) -> dict:
        """The current groups (TaCo's change as it regroups; fixed and uniform ones never do)."""
        return {"groups": [list(g) for g in self.groups]}

    def load_state_dict(self, state: dict) -> None:
        tasks = sorted(t for g in state["groups"] for t in g)
        if tasks != list(range(self.num_tasks)):
            raise ValueError(f"task groups {state['groups']} do not cover tasks 0..{self.num_tasks - 1} once each")
        self.groups = [list(g) for g in state["groups"]]

    def weights(self) -> Tensor:
        """p_tau = 1 / (|G| |g_i|), ``[T]`` in float64 (sums to 1)."""
        w = torch.zeros(self.num_tasks, dtype=torch.float64)
        for g in self.groups:
            w[g] = 1.0 / (len(self.groups) * len(g))
        return w.to(self.device)

    def batch_counts(self, total: int) -> Tensor:
        """Per-task sample counts of an update batch of ``total``, summing exactly to ``total``.

        Largest-remainder rounding of total * p_tau: every task gets floor(total p_tau), and the
        samples left over go one each to the largest fractional parts (ties to the lower task).
        """
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        raw = total * self.weights()
        base = torch.floor(raw)
        left = total - base.sum()                                   # in [0, T)
        order = torch.argsort(base - raw, stable=True)              # largest fraction first
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(self.num_tasks, device=order.device))
        return (base + (rank < left).to(base.dtype)).long()

    def regroup(self, task_params: Tensor) -> list[list[int]]:
        """TaCo-online: cluster the tasks' parameters (e.g. PaCo's w rows) with DBSCAN; new groups.

        ``task_params`` is ``[T, P]``; rows are compared by Euclidean distance. DBSCAN's noise
        points (label -1, possible when min_samples > 1) become singleton groups. Groups are listed
        by their first task. Runs on the CPU (scikit-learn); T is small.
        """
        if not isinstance(self.sampling, TacoSampling):
            raise ValueError(f"regroup is for sampling = taco(...), not {self.kind}")
        from sklearn.cluster import DBSCAN

        x = task_params.detach().reshape(self.num_tasks, -1).to("cpu", torch.float64).numpy()
        labels = DBSCAN(eps=self.sampling.eps, min_samples=self.sampling.min_samples).fit_predict(x)
        groups: dict[object, list[int]] = {}
        for t, label in enumerate(labels.tolist()):
            groups.setdefault(("noise", t) if label < 0 else label, []).append(t)
        self.groups = list(groups.values())
        return self.groups


# ---------------------------------------------------------------------------- triplet loss
def triplet_indices(task: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One random (positive, negative) per anchor b: returns ``(pos, neg, valid)``, each ``[B]``.

    pos[b] is uniform among the other samples of b's task, neg[b] uniform among the samples of
    all other tasks; valid[b] is False where b's task has one sample or is the only task present
    (there pos[b] = neg[b] = b). Done in task-sorted order, where task t fills one run of
    positions, so both draws are one uniform integer each, shifted past the excluded run.
    """
    task = task.reshape(-1).long()
    b = task.shape[0]
    dev = task.device
    order = torch.argsort(task, stable=True)
    st = task[order]
    first = torch.ones(b, dtype=torch.bool, device=dev)
    first[1:] = st[1:] != st[:-1]
    arange = torch.arange(b, device=dev)
    run = torch.cumsum(first.long(), 0) - 1
    run_start = torch.cummax(torch.where(first, arange, 0), 0).values
    count = torch.zeros(b, dtype=torch.long, device=dev).scatter_add_(0, run, torch.ones_like(run))
    c = count[run]                                                 # samples of the anchor's task
    rank = arange - run_start                                      # anchor's place inside its task
    valid = (c >= 2) & (c < b)
    r = torch.rand(2, b, generator=generator, device=dev)
    n_pos = (c - 1).clamp_min(1)                                   # the task's other samples
    o = torch.minimum((r[0] * n_pos).long(), n_pos - 1)
    pos = run_start + o + (o >= rank).long()
    n_neg = (b - c).clamp_min(1)                                   # samples outside the run
    o = torch.minimum((r[1] * n_neg).long(), n_neg - 1)
    neg = torch.where(o < run_start, o, o + c)
    pos = torch.where(valid, pos, arange).clamp_max(b - 1)
    neg = torch.where(valid, neg, arange).clamp_max(b - 1)
    # Back to the caller's order: sorted position i is sample order[i].
    out_pos = torch.empty_like(order)
    out_neg = torch.empty_like(order)
    out_valid = torch.empty_like(valid)
    out_pos[order] = order[pos]
    out_neg[order] = order[neg]
    out_valid[order] = valid
    return out_pos, out_neg, out_valid


def triplet_loss(features: Tensor, task: Tensor, margin: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """mean over anchors a of max(0, m + d(a, p) - d(a, n)), d Euclidean (shared-unique Eq. 1).

    Pulls one task's unique features together and pushes other tasks' away. Every sample is an
    anchor, with a positive and a negative drawn at random by ``triplet_indices``. Anchors whose
    task has a single sample (no positive) or is the only task present (no negative) are left out;
    with none left, the loss is 0 (still connected to ``features`` for backward). ``generator``
    must live on the features' device.
    """
    task = task.to(features.device)
    if features.shape[0] == 0:
        return features.sum() * 0.0
    pos, neg, valid = triplet_indices(task, generator)
    f = features.reshape(features.shape[0], -1)
    # d = 0 (an invalid anchor paired with itself, or equal features) has gradient 0 in torch's
    # vector_norm, so masked anchors add nothing, not NaN, to the backward pass.
    d_pos = torch.linalg.vector_norm(f - f[pos], dim=-1)
    d_neg = torch.linalg.vector_norm(f - f[neg], dim=-1)
    loss = torch.relu(margin + d_pos - d_neg)
    mask = valid.to(loss.dtype)
    return (loss * mask).sum() / mask.sum().clamp_min(1)
