"""TA-PER's sum trees and the multi-task schemes (graphnet.runtime.prioritized, .schemes), by hand.

Each expected value below is worked out by hand from the papers' formulas (or, for PCGrad's
order-dependent case, by a plain loop over every visiting order), never by calling the code under
test twice. Runs on the CPU, and on CUDA too where there is one.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from graphnet.runtime.prioritized import TaskSumTrees
from graphnet.runtime.schemes import (TaskSampler, maskout, pcgrad, per_task_mean, triplet_indices,
                                      triplet_loss, w_reset_)
from graphnet.train_config import GroupSampling, TacoSampling, TrainConfig, UniformSampling

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(device: str, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def lt(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


# ------------------------------------------------------------------------------ sum trees
def hand_trees(device: str, alpha: float = 1.0, beta: float = 0.5) -> TaskSumTrees:
    """Task 0 stores 3 transitions with priorities 1, 2, 5; task 1 stores 2 with 10, 2.

    capacity 3 rounds up to 4 leaves; alpha = 1 keeps leaves equal to priorities.
    """
    trees = TaskSumTrees(2, 3, alpha=alpha, beta=beta, device=device)
    trees.update(lt([0, 0, 0, 1, 1], device), lt([0, 1, 2, 0, 1], device),
                 torch.tensor([1.0, 2.0, 5.0, 10.0, 2.0], device=device))
    return trees


@pytest.mark.parametrize("device", DEVICES)
def test_tree_layout_and_totals(device):
    trees = hand_trees(device)
    assert trees.leaves == 4 and trees.depth == 2 and tuple(trees.tree.shape) == (2, 8)
    assert trees.tree.device.type == device
    # nodes: 1 root, 2 = leaves 4+5, 3 = leaves 6+7
    expect = torch.tensor([[0, 8, 3, 5, 1, 2, 5, 0], [0, 12, 12, 0, 10, 2, 0, 0]],
                          dtype=torch.float64, device=device)
    assert torch.equal(trees.tree, expect)
    assert trees.totals().tolist() == [8.0, 12.0]
    assert [TaskSumTrees(1, c).leaves for c in (1, 2, 5, 8, 1000)] == [1, 2, 8, 8, 1024]


@pytest.mark.parametrize("device", DEVICES)
def test_alpha_is_applied_to_leaves(device):
    trees = hand_trees(device, alpha=0.5)
    assert torch.allclose(trees.totals(), torch.tensor([1 + math.sqrt(2) + math.sqrt(5),
                                                        math.sqrt(10) + math.sqrt(2)],
                                                       dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_counts_with_clipping(device):
    trees = hand_trees(device)                       # totals 8 and 12: shares 0.4, 0.6
    assert trees.counts(10, 1, 100).tolist() == [4, 6]
    assert trees.counts(10, 5, 100).tolist() == [5, 6]      # kmin lifts task 0
    assert trees.counts(10, 1, 5).tolist() == [4, 5]        # kmax caps task 1
    assert trees.counts(3, 1, 100).tolist() == [1, 2]       # 1.2 -> 1, 1.8 -> 2
    assert trees.counts(5, 1, 100).tolist() == [2, 3]
    half = TaskSumTrees(2, 2, alpha=1.0, device=device)     # shares 0.5, 0.5 of K = 5: 2.5 -> 3
    half.update(lt([0, 1], device), lt([0, 0], device), torch.tensor([1.0, 1.0], device=device))
    assert half.counts(5, 1, 100).tolist() == [3, 3]
    # A task with nothing stored gets 0, not kmin.
    three = TaskSumTrees(3, 4, alpha=1.0, device=device)
    three.update(lt([0, 2], device), lt([0, 0], device), torch.tensor([1.0, 3.0], device=device))
    assert three.counts(8, 2, 100).tolist() == [2, 0, 6]
    assert TaskSumTrees(2, 4).counts(8, 2, 10).tolist() == [0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_update_repairs_parents(device):
    torch.manual_seed(0)
    trees = TaskSumTrees(3, 37, alpha=0.7, device=device)           # 64 leaves, 6 levels
    for _ in range(5):
        n = 50
        task = torch.randint(0, 3, (n,), device=device)
        index = torch.randint(0, 37, (n,), device=device)           # duplicates likely
        trees.update(task, index, torch.rand(n, device=device) * 10 + 1e-3)
    t = trees.tree.cpu()
    leaves = t[:, 64:]
    assert torch.allclose(t[:, 1], leaves.sum(1))                   # brute force: sum of leaves
    assert (leaves[:, 37:] == 0).all()
    for node in range(1, 64):                                       # every parent = sum of children
        assert torch.equal(t[:, node], t[:, 2 * node] + t[:, 2 * node + 1])


@pytest.mark.parametrize("device", DEVICES)
def test_duplicates_last_write_wins_and_add_uses_max(device):
    trees = TaskSumTrees(2, 4, alpha=1.0, device=device)
    trees.add(lt([0, 1], device), lt([0, 0], device))              # before any update: 1
    assert trees.totals().tolist() == [1.0, 1.0]
    trees.update(lt([0, 0, 1, 0], device), lt([1, 1, 0, 1], device),
                 torch.tensor([3.0, 7.0, 2.0, 5.0], device=device))
    assert trees.get(lt([0], device), lt([1], device)).item() == 5.0   # 3, 7 then 5: the last
    assert trees.totals().tolist() == [6.0, 2.0]
    # New transitions get the largest priority seen so far, over all tasks (7), not the current max.
    trees.add(lt([1, 1], device), lt([1, 2], device))
    assert trees.get(lt([1, 1], device), lt([1, 2], device)).tolist() == [7.0, 7.0]
    assert trees.totals().tolist() == [6.0, 16.0]
    # A non-finite priority (exploded TD error) is stored as that max too, never poisoning sums.
    trees.update(lt([0, 0], device), lt([2, 3], device), torch.tensor([math.nan, math.inf], device=device))
    assert trees.totals().tolist() == [20.0, 16.0]
    # Many writes to one slot in one call (where CUDA's scatter picks an arbitrary winner).
    values = torch.arange(4000, 0, -1, dtype=torch.float64, device=device)     # the last is 1
    trees.update(torch.zeros(4000, dtype=torch.long, device=device),
                 torch.zeros(4000, dtype=torch.long, device=device), values)
    assert trees.get(lt([0], device), lt([0], device)).item() == 1.0
    assert trees.totals().tolist() == [20.0, 16.0]


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_frequencies_match_priorities(device):
    trees = hand_trees(device)
    sizes = lt([3, 2], device)
    g = gen(device, 1)
    hits = torch.zeros(2, 4, dtype=torch.long)
    for _ in range(20):
        task, index, weight = trees.sample(lt([1000, 1500], device), sizes, generator=g)
        assert task.device.type == device and index.device.type == device
        assert task.tolist() == [0] * 1000 + [1] * 1500               # sorted by task
        hits.index_put_((task.cpu(), index.cpu()), torch.ones_like(task.cpu()), accumulate=True)
    assert hits[0, 3] == 0 and (hits[1, 2:] == 0).all()               # only filled slots
    for t, probs in ((0, [1 / 8, 2 / 8, 5 / 8]), (1, [10 / 12, 2 / 12])):
        n = hits[t].sum().item()
        expect = torch.tensor(probs, dtype=torch.float64) * n
        chi2 = (((hits[t, : len(probs)] - expect) ** 2) / expect).sum().item()
        assert chi2 < 13.8                                             # df <= 2, p = 0.001


@pytest.mark.parametrize("device", DEVICES)
def test_importance_weights_by_hand(device):
    """w = (N_i P(j)) ** -beta / max over the batch; beta = 0.5.

    task 0 (N = 3, P = 1/8, 2/8, 5/8): N P = 3/8, 6/8, 15/8 -> w = sqrt(8/3), sqrt(8/6), sqrt(8/15)
    task 1 (N = 2, P = 10/12, 2/12): N P = 20/12, 4/12   -> w = sqrt(12/20), sqrt(3)
    With 50 strata per task every slot is drawn, so the batch max is sqrt(3).
    """
    trees = hand_trees(device, beta=0.5)
    task, index, weight = trees.sample(lt([50, 50], device), lt([3, 2], device), generator=gen(device))
    raw = {(0, 0): math.sqrt(8 / 3), (0, 1): math.sqrt(8 / 6), (0, 2): math.sqrt(8 / 15),
           (1, 0): math.sqrt(12 / 20), (1, 1): math.sqrt(3)}
    assert set(zip(task.tolist(), index.tolist())) == set(raw)
    expect = torch.tensor([raw[k] / math.sqrt(3) for k in zip(task.tolist(), index.tolist())])
    assert weight.dtype == torch.get_default_dtype()
    assert torch.allclose(weight.cpu(), expect.to(weight.dtype), atol=1e-6)
    assert weight.max().item() == 1.0
    # Stratified: task 0's 50 strata of mass 8/50 put exactly 50/8 * p_j draws (+-1) on slot j.
    per_slot = torch.bincount(index[task == 0].cpu(), minlength=3)
    assert (per_slot - torch.tensor([6.25, 12.5, 31.25])).abs().max() <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_sample_edge_cases(device):
    trees = hand_trees(device)
    task, index, weight = trees.sample(lt([0, 0], device), lt([3, 2], device))
    assert task.numel() == index.numel() == weight.numel() == 0
    task, index, _ = trees.sample(lt([0, 4], device), lt([3, 2], device))
    assert task.tolist() == [1] * 4
    empty = TaskSumTrees(2, 4, device=device)
    with pytest.raises(ValueError):
        empty.sample(lt([1, 0], device), lt([0, 0], device))      # nothing stored for task 0
    # A tree of one slot (depth 0) samples its only slot.
    one = TaskSumTrees(1, 1, device=device)
    one.add(lt([0], device), lt([0], device))
    assert one.sample(lt([3], device), lt([1], device))[1].tolist() == [0, 0, 0]


def test_from_config():
    cfg = TrainConfig(replay={"kind": "taper", "alpha": 0.7, "beta": 0.5})
    trees = TaskSumTrees.from_config(cfg.replay, 10, 1000)
    assert (trees.alpha, trees.beta, trees.leaves) == (0.7, 0.5, 1024)


# ---------------------------------------------------------------------------------- PCGrad
@pytest.mark.parametrize("device", DEVICES)
def test_pcgrad_two_tasks_by_hand(device):
    g1 = torch.tensor([1.0, 0.0], device=device)
    g2 = torch.tensor([-1.0, 1.0], device=device)
    # g1.g2 = -1 < 0: g1' = g1 + 1/2 g2 = (0.5, 0.5); g2' = g2 + 1/1 g1 = (0, 1), with the ORIGINAL g1
    # (projecting onto g1' = (0.5, 0.5) would leave g2 as is, since g2.g1' = 0).
    out = pcgrad([g1, g2], generator=gen(device))
    assert out.device.type == device
    assert torch.allclose(out, torch.tensor([0.5, 1.5], device=device))
    # Not conflicting: the plain sum.
    out = pcgrad([g1, torch.tensor([1.0, 1.0], device=device)])
    assert torch.allclose(out, torch.tensor([2.0, 1.0], device=device))
    # Shape kept, one task is the identity, a zero gradient conflicts with nothing.
    m = torch.tensor([[1.0, -2.0], [3.0, 0.5]], device=device)
    assert torch.equal(pcgrad([m]), m)
    assert torch.allclose(pcgrad([g1, torch.zeros(2, device=device)]), g1)


def project(g: list[torch.Tensor], i: int, order: list[int]) -> torch.Tensor:
    """Yu et al.'s inner loop for task i: the others in ``order``, projecting onto the original g_j."""
    gi = g[i].clone()
    for j in order:
        dot = gi @ g[j]
        if dot < 0:
            gi = gi - dot / (g[j] @ g[j]) * g[j]
    return gi


def reference_pcgrad(g: list[torch.Tensor], orders: list[list[int]]) -> torch.Tensor:
    return sum(project(g, i, order) for i, order in enumerate(orders))


def test_pcgrad_three_tasks_random_order():
    """Three conflicting tasks, where the visiting order matters: every seed gives one of the sums
    over the per-task orders (2 orders per task, 8 sums), and the seeds reach several of them."""
    g = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64),
         torch.tensor([-1.0, -1.0], dtype=torch.float64)]
    # By hand, task 0: g3 first: (1,0) + 1/2 (-1,-1) = (0.5,-0.5), then g2 conflicts with that:
    # (0.5,-0.5) + 0.5 (0,1) = (0.5, 0). g2 first: no conflict (dot 0), then g3: (0.5, -0.5).
    assert project(g, 0, [2, 1]).tolist() == [0.5, 0.0]
    assert project(g, 0, [1, 2]).tolist() == [0.5, -0.5]
    others = [[j for j in range(3) if j != i] for i in range(3)]
    choices = {tuple(reference_pcgrad(g, [list(o) for o in orders]).tolist())
               for orders in itertools.product(*[list(itertools.permutations(o)) for o in others])}
    seen = set()
    for seed in range(40):
        out = tuple(pcgrad(g, generator=gen("cpu", seed)).tolist())
        match = [c for c in choices if all(abs(a - b) < 1e-12 for a, b in zip(out, c))]
        assert match, out
        seen.add(match[0])
    assert len(seen) > 1


def test_pcgrad_many_tasks_matches_reference_orders():
    """T = 12 random gradients: the batched projection equals the loop for some per-task orders;
    checked by giving both the same orders (the permutations drawn from the same generator)."""
    torch.manual_seed(3)
    t, p = 12, 40
    g = [torch.randn(p, dtype=torch.float64) for _ in range(t)]
    keys = torch.rand(t, t, generator=gen("cpu", 7))
    keys.fill_diagonal_(2.0)
    orders = torch.argsort(keys, dim=1)[:, : t - 1].tolist()
    assert torch.allclose(pcgrad(g, generator=gen("cpu", 7)), reference_pcgrad(g, orders))


# ------------------------------------------------------------------------ maskout, w-reset
@pytest.mark.parametrize("device", DEVICES)
def test_per_task_mean(device):
    values = torch.tensor([1.0, 2.0, 3.0, 5.0], device=device, requires_grad=True)
    out = per_task_mean(values, lt([0, 2, 0, 2], device), 4)
    assert out.device.type == device
    assert out.tolist() == [2.0, 0.0, 3.5, 0.0]
    out.sum().backward()
    assert values.grad.tolist() == [0.5, 0.5, 0.5, 0.5]
    assert per_task_mean(torch.ones(3, 2, device=device), lt([1, 1, 1], device), 2).tolist() == \
        [[0.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("device", DEVICES)
def test_maskout(device):
    losses = torch.tensor([1.0, math.nan, 5.0, math.inf, -math.inf, 3.0], device=device)
    healthy = maskout(losses, 3.0)
    assert healthy.dtype == torch.bool and healthy.device.type == device
    assert healthy.tolist() == [True, False, False, False, False, True]


@pytest.mark.parametrize("device", DEVICES)
def test_w_reset_convex_and_healthy_rows_untouched(device):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 3, device=device))
    with torch.no_grad():
        w[3] = float("nan")                                          # an exploded task's row
    before = w.detach().clone()
    healthy = torch.tensor([True, False, True, False, True, False], device=device)
    reset = w_reset_(w, healthy, generator=gen(device))
    assert reset.tolist() == [False, True, False, True, False, True]
    for r in (0, 2, 4):
        assert torch.equal(w[r], before[r])                         # bit-identical
    donors = before[[0, 2, 4]].double().cpu()                        # 3 points in R^3: unique betas
    a = torch.cat([donors.T, torch.ones(1, 3, dtype=torch.float64)])  # [w; 1] = [W_h^T; 1^T] beta
    for r in (1, 3, 5):
        assert not torch.equal(w[r], before[r])
        b = torch.cat([w[r].detach().double().cpu(), torch.ones(1, dtype=torch.float64)])
        beta = torch.linalg.solve(a[[0, 1, 2]], b[[0, 1, 2]])        # any 3 rows; check the 4th
        assert torch.allclose(a @ beta, b, atol=1e-5)
        assert (beta >= -1e-5).all() and abs(beta.sum().item() - 1) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_w_reset_no_change_cases_and_dirichlet(device):
    w = torch.randn(4, 2, device=device)
    before = w.clone()
    assert not w_reset_(w, torch.ones(4, dtype=torch.bool, device=device)).any()
    assert not w_reset_(w, torch.zeros(4, dtype=torch.bool, device=device)).any()
    assert torch.equal(w, before)
    # Healthy rows e1, e2, e3: a reset row IS its beta. Dirichlet(1, 1, 1) marginals are Beta(1, 2):
    # mean 1/3, variance 1/18.
    n = 4000
    table = torch.cat([torch.eye(3, device=device), torch.zeros(n, 3, device=device)])
    healthy = torch.arange(n + 3, device=device) < 3
    w_reset_(table, healthy, generator=gen(device, 5))
    beta = table[3:].cpu()
    assert torch.allclose(beta.sum(1), torch.ones(n), atol=1e-6) and (beta >= 0).all()
    assert torch.allclose(beta.mean(0), torch.full((3,), 1 / 3), atol=0.02)
    assert torch.allclose(beta.var(0), torch.full((3,), 1 / 18), atol=0.005)


# ---------------------------------------------------------------------------- task sampling
def test_uniform_sampler():
    s = TaskSampler(3, UniformSampling())
    assert torch.allclose(s.weights(), torch.full((3,), 1 / 3, dtype=torch.float64))
    assert s.batch_counts(10).tolist() == [4, 3, 3]                # tie: the lower task
    assert TaskSampler(4).batch_counts(12).tolist() == [3, 3, 3, 3]


def test_group_sampler_by_hand():
    # groups 0 1 2 | 3, and 4 5 unlisted form a third group: |G| = 3
    s = TaskSampler(6, GroupSampling(kind="groups", groups="0 1 2 | 3"))
    assert s.groups == [[0, 1, 2], [3], [4, 5]]
    expect = [1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6]
    assert torch.allclose(s.weights(), torch.tensor(expect, dtype=torch.float64))
    # 100 p = 11.1 x 3, 33.3, 16.7 x 2: floors sum to 98; the two .67 fractions get the 2 left.
    assert s.batch_counts(100).tolist() == [11, 11, 11, 33, 17, 17]
    assert s.batch_counts(0).tolist() == [0] * 6
    for total in range(0, 400, 7):
        counts = s.batch_counts(total)
        assert counts.sum().item() == total
        assert (counts - total * s.weights()).abs().max() < 1
    with pytest.raises(ValueError):
        TaskSampler(3, GroupSampling(kind="groups", groups="0 | 3"))
    with pytest.raises(ValueError):
        s.regroup(torch.zeros(6, 2))


def test_taco_regroup_dbscan():
    s = TaskSampler(6, TacoSampling(kind="taco", eps=0.5, min_samples=2, every=100))
    assert s.every == 100
    assert torch.allclose(s.weights(), torch.full((6,), 1 / 6, dtype=torch.float64))   # before
    # tasks 0, 2, 4 near (0, 0); 1, 3 near (10, 10); 5 alone far away: noise -> its own group
    params = torch.tensor([[0.0, 0.0], [10.0, 10.0], [0.1, 0.0], [10.0, 10.2], [0.0, 0.2], [50.0, 0.0]])
    assert s.regroup(params) == [[0, 2, 4], [1, 3], [5]]
    assert torch.allclose(s.weights(), torch.tensor([1 / 9, 1 / 6, 1 / 9, 1 / 6, 1 / 9, 1 / 3],
                                                    dtype=torch.float64))
    assert s.batch_counts(90).tolist() == [10, 15, 10, 15, 10, 30]
    # min_samples = 1 (the default): no noise, the far task is a cluster of one all the same.
    s1 = TaskSampler(6, TacoSampling(kind="taco"))
    assert s1.regroup(params) == [[0, 2, 4], [1, 3], [5]]


# ----------------------------------------------------------------------------- triplet loss
@pytest.mark.parametrize("device", DEVICES)
def test_triplet_loss_by_hand(device):
    """Task 0 at (-1, 0), (1, 0); task 1 at (0, 2), (0, -2); margin 1.

    Each anchor has one positive, and both negatives are sqrt(5) away whichever is drawn:
    task 0 anchors: max(0, 1 + 2 - sqrt5); task 1 anchors: max(0, 1 + 4 - sqrt5).
    Mean of the four: ((3 - sqrt5) + (5 - sqrt5)) / 2 = 4 - sqrt5.
    """
    f = torch.tensor([[-1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, -2.0]], device=device,
                     requires_grad=True)
    task = lt([0, 1, 0, 1], device)
    for seed in range(5):
        loss = triplet_loss(f, task, 1.0, generator=gen(device, seed))
        assert loss.device.type == device
        assert abs(loss.item() - (4 - math.sqrt(5))) < 1e-6
    loss.backward()
    assert torch.isfinite(f.grad).all()
    # Tight clusters far apart: d(a, p) = 0.1, d(a, n) >= 10, so the hinge is 0 at margin 5.
    tight = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 0.1], [10.0, 0.1]], device=device)
    assert triplet_loss(tight, task, 5.0).item() == 0.0
    assert abs(triplet_loss(tight, task, 10.5).item() - 0.6) < 1e-3     # 10.5 + 0.1 - (10 or 10.0005)


@pytest.mark.parametrize("device", DEVICES)
def test_triplet_anchors_left_out(device):
    # Task 1 has one sample: not an anchor (no positive), still a negative for task 0:
    # each task-0 anchor: max(0, 1 + 2 - sqrt5) = 3 - sqrt5.
    f = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], device=device, requires_grad=True)
    loss = triplet_loss(f, lt([0, 0, 1], device), 1.0, generator=gen(device))
    assert abs(loss.item() - (3 - math.sqrt(5))) < 1e-6
    loss.backward()
    assert torch.isfinite(f.grad).all()
    # One task only: no negatives, loss 0 and still differentiable.
    g = torch.randn(4, 3, device=device, requires_grad=True)
    loss = triplet_loss(g, lt([2, 2, 2, 2], device), 1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(g.grad, torch.zeros_like(g))


@pytest.mark.parametrize("device", DEVICES)
def test_triplet_indices_uniform_and_valid(device):
    """Shuffled uneven tasks: positives share the task and differ from the anchor, negatives do not
    share it; over many draws each candidate is picked about equally often."""
    task = lt([2, 0, 1, 2, 0, 2, 3, 1, 2], device)                 # task 3 alone: not an anchor
    valid_expect = [t != 3 for t in task.tolist()]
    g = gen(device, 2)
    pos_hits = torch.zeros(9, 9)
    neg_hits = torch.zeros(9, 9)
    draws = 3000
    for _ in range(draws):
        pos, neg, valid = triplet_indices(task, g)
        assert valid.tolist() == valid_expect
        pos_hits[torch.arange(9), pos.cpu()] += 1
        neg_hits[torch.arange(9), neg.cpu()] += 1
    tl = task.cpu()
    for a in range(9):
        if not valid_expect[a]:
            continue
        same = [b for b in range(9) if tl[b] == tl[a] and b != a]
        other = [b for b in range(9) if tl[b] != tl[a]]
        assert pos_hits[a, same].sum() == draws and neg_hits[a, other].sum() == draws
        for hits, cand in ((pos_hits, same), (neg_hits, other)):
            expect = draws / len(cand)
            chi2 = ((hits[a, cand] - expect) ** 2 / expect).sum().item()
            assert chi2 < 30, (a, hits[a, cand])                   # df <= 6, p < 1e-4
