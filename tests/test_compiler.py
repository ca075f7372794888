"""The compiler (graphnet.compiler) against the reference interpreter, the accounting and PaCo's paper.

Every library spec is built at small sizes (OBS = 6, ACT = 2, T = 3 tasks) in float64, with its
parameters re-drawn at random so that zero-initialised layers (PTSL's up projections) and identical
bank copies (PaCo's Phi) take part. Checked:

- actor and critic trunk outputs, and the gradients of every parameter under a random linear loss
  of those outputs, equal `reference_trunk`'s, on task-major batches (the fast path: tasks folded
  into the ensemble dimension) and on shuffled and uneven ones (the general path: samples sorted
  by task, one task with no sample at all); bank specs at batch sizes that take both of
  `ParamOp._bank`'s strategies (mix the K copies' outputs, or compose theta_t = Phi w_t first), and
  bank(K) over the other library trunks (FiLM, D-Grad's affine, Soft Modularization, PTSL's combine);
- the fast path and the general path agree on the same samples;
- the networks hold exactly the parameters `graphnet params` counts, and the target critic trains
  only what it shares with the live critic;
- PaCo's special cases (Sun et al. 2022, section 4.3): K = 1 is one shared network, one-hot w with
  K = T is T independent networks, and bank output layers with one-hot w are a multi-head network;
- each trunk is a readable torch.fx GraphModule that names the spec's labels;
- FiLM's and D-Grad's coefficients of onehot(task) are built per task, not per sample (counted work);
- on a CUDA device (skipped without one): the reference equalities, and torch.compile == eager.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import graphnet
from graphnet.compiler import AgentNets, build, built_counts, reference_trunk
from graphnet.cli import main
from graphnet.ir import info
from graphnet.compiler.modules import TaskLayout, _Compose
from graphnet.compiler.verify import float64

OBS, ACT, T, META = 6, 2, 3, 12
TIGHT = dict(rtol=1e-9, atol=1e-9)        # float64: only summation order differs
REBATCHED = dict(rtol=1e-12, atol=1e-12)  # the same arithmetic, batched differently

# (spec, overrides): two or more small settings per library spec
SETTINGS = [
    ("mtsac", dict(H=16, N=2)),
    ("mtsac", dict(H=8, N=3)),
    ("mhsac", dict(H=16, N=2)),
    ("mhsac", dict(H=8, N=1)),
    ("film", dict(H=16, N=2)),
    ("film", dict(H=8, N=1)),
    ("dgrad_a", dict(H=8, N=2)),
    ("dgrad_a", dict(H=4, N=1)),
    ("softmod", dict(L=1, M=2, W=4, G=8, E=8)),
    ("softmod", dict(L=2, M=3, W=4, G=8, E=8)),
    ("softmod", dict(L=3, M=2, W=4, G=6, E=8)),
    ("care", dict(ctx="learned", K=2, E=4, Z=4, H=16, N=2)),
    ("care", dict(ctx="meta", K=3, E=4, Z=3, H=8, N=1)),
    ("ptsl", dict(H=16, D=4, N=2, g="none")),
    ("ptsl", dict(H=16, D=4, N=2, g="add", proj="independent")),
    ("ptsl", dict(H=8, D=4, N=3, g="sum", first="direct")),
    ("ptsl", dict(H=8, D=3, N=2, g="proj", proj="independent", first="direct")),
    ("care_ptsl", dict(H=16, D=4, N=2, K=2, E=4, Z=4, g="proj")),
    ("care_ptsl", dict(H=8, D=3, N=1, K=2, E=4, Z=3, g="sum", proj="independent", ctx="meta")),
    ("paco", dict(variant="ac_shared", K=2, H=16, N=2)),
    ("paco", dict(variant="actor_only", K=3, H=8, N=2, w_init="onehot")),
    ("paco", dict(variant="output_only", K=2, H=16, N=1)),
    ("shared_unique", dict(K=2, H=16, N=2, U=4, UH=8)),
    ("shared_unique", dict(K=3, H=8, N=1, U=3, UH=6)),
    ("taco", dict(K=2, H=16, N=2)),
    ("taco", dict(K=3, H=8, N=1)),
    ("moore", dict(K=3, H=8, D=5)),
    ("moore", dict(K=2, H=6, D=4)),
    ("mmoe", dict(K=3, H=8, D=5, TOWER=6)),
    ("mmoe", dict(K=2, H=6, D=4, TOWER=4)),
    ("hyper", dict(H=8, N=2, Z=4, G=6)),
    ("hyper", dict(H=6, N=1, Z=3, G=5)),
]
BANK_SPECS = {"paco", "shared_unique", "taco"}

# task ids of a batch; "major" ones take the fast path, the others the general path
BATCHES = {
    "major-1": torch.arange(T),                                      # one sample per task
    "major-4": torch.arange(T).repeat_interleave(4),
    "shuffled": torch.arange(T).repeat_interleave(3)[torch.randperm(3 * T, generator=torch.Generator().manual_seed(0))],
    "uneven": torch.tensor([2, 0, 2, 2]),                            # task 1 has no sample
    "sparse": torch.tensor([1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1]),       # task 2 has no sample
}

# the names each spec assigns in its trunks (block-internal names win over the caller's)
LABELS = {"mtsac": {"h", "out"}, "mhsac": {"h", "out"}, "film": {"z", "h", "out"}, "dgrad_a": {"z", "h", "out"},
          "softmod": {"f", "z", "h", "out"}, "care": {"h", "out"}, "ptsl": {"y", "h", "out"},
          "care_ptsl": {"y", "h", "out"}, "paco": {"h", "out"}, "shared_unique": {"h", "out"},
          "taco": {"h", "out"}, "moore": {"experts", "weights", "out"}, "mmoe": {"experts", "gate", "out"},
          "hyper": {"h", "z", "weights", "out"}}
TRACING_ARTEFACTS = ("getattr_", "getitem", "_tensor_constant")


def settings(per_spec: int | None = None) -> list:
    """SETTINGS as pytest params, optionally only the first `per_spec` settings of each spec."""
    chosen, seen = [], {}
    for name, overrides in SETTINGS:
        seen[name] = seen.get(name, 0) + 1
        if per_spec is None or seen[name] <= per_spec:
            label = ",".join(f"{k}={v}" for k, v in overrides.items())
            chosen.append(pytest.param(name, overrides, id=f"{name}[{label}]"))
    return chosen


@pytest.fixture(autouse=True)
def in_float64():
    """Every test in float64 from a fixed seed; the default dtype and the global RNG are restored after."""
    with float64():
        yield


# ----------------------------------------------------------------------------------------- helpers
def load(name: str, obs: int = OBS, act: int = ACT, tasks: int = T, **overrides) -> graphnet.Spec:
    """A library spec, checked at these sizes (a one-hot bank needs K = tasks)."""
    return graphnet.load(name, graphnet.Sizes(obs=obs, act=act, tasks=tasks, meta=META), **overrides)


def make(name: str, obs: int = OBS, act: int = ACT, tasks: int = T, device: str = "cpu", **overrides) -> AgentNets:
    """Build a library spec, with random task metadata where it reads meta(task)."""
    meta = torch.randn(tasks, META) if overrides.get("ctx") == "meta" else None
    return build(load(name, obs, act, tasks, **overrides), obs, act, tasks, device=device, task_metadata=meta)


def randomize(nets: AgentNets) -> AgentNets:
    """Re-draw every parameter (bank copies, zero-initialised layers, w), so that none is trivially equal."""
    with torch.no_grad():
        for p in nets.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return nets


def batch(task: torch.Tensor, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.randn(len(task), OBS, device=device), torch.randn(len(task), ACT, device=device),
            task.to(device))


def compiled(nets: AgentNets, obs, act, task, task_major: bool | None = None) -> list[torch.Tensor]:
    """Actor and critic trunk outputs, `[E, B, out]` each."""
    return [nets.actor.trunk(obs, task, task_major=task_major), nets.critic.trunk(obs, task, act, task_major)]


def reference(nets: AgentNets, obs, act, task) -> list[torch.Tensor]:
    return [reference_trunk(nets, "actor", obs, task), reference_trunk(nets, "critic", obs, task, act)]


def gradients(nets: AgentNets, outputs: list[torch.Tensor], weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """d(sum of weights * outputs)/d(parameter) for every parameter; zeros where it does not reach."""
    params = list(nets.parameters())
    for p in params:
        p.grad = None
    sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def bank_mixes(size: int, k: int) -> bool:
    """ParamOp._bank's choice for an op linear in its parameters: mix the K copies' outputs (True)
    when that costs fewer multiply-adds than composing theta_t = Phi w_t first (False)."""
    return size * k < T * k + size


def copy_modules(src: AgentNets, dst: AgentNets, pick: int = 0) -> None:
    """Copy src's module parameters into dst's, module by module in build order (the two specs have
    the same layers); where src holds more copies than dst (a bank into a shared layer), copy `pick`."""
    with torch.no_grad():
        for s, d in zip(src.op_modules.values(), dst.op_modules.values(), strict=True):
            assert (s.op, list(s.params)) == (d.op, list(d.params))
            for key, p in d.params.items():
                q = s.params[key]
                p.copy_(q if q.shape == p.shape else q[:, pick:pick + 1])


# ----------------------------------------------------------------------------- compiled == reference
def test_batches_take_the_intended_paths():
    """The batches below cover the fast and the general path, empty tasks, and both bank strategies."""
    for name, task in BATCHES.items():
        assert TaskLayout.is_major(task, T) == name.startswith("major"), name
    general = [task for name, task in BATCHES.items() if not name.startswith("major")]
    assert any((torch.bincount(task, minlength=T) == 0).any() for task in general)
    for name, overrides in SETTINGS:
        if name in BANK_SPECS:
            for major in (True, False):
                sizes = [len(task) for key, task in BATCHES.items() if key.startswith("major") == major]
                assert {bank_mixes(size, overrides["K"]) for size in sizes} == {True, False}, (name, overrides)


def assert_matches_reference(nets: AgentNets, task: torch.Tensor, device: str = "cpu") -> None:
    """Trunk outputs, and every parameter's gradient under a random linear loss of them, equal the reference's."""
    obs, act, task = batch(task, device)
    outputs = compiled(nets, obs, act, task)
    expected = reference(nets, obs, act, task)
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, **TIGHT)
    weights = [torch.randn_like(o) for o in outputs]
    for ours, theirs, (key, _) in zip(gradients(nets, outputs, weights), gradients(nets, expected, weights),
                                      nets.named_parameters()):
        torch.testing.assert_close(ours, theirs, **TIGHT, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("batch_name", BATCHES)
@pytest.mark.parametrize("name, overrides", settings())
def test_outputs_and_gradients_match_reference(name, overrides, batch_name):
    assert_matches_reference(randomize(make(name, **overrides)), BATCHES[batch_name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch_name", ["major-4", "shuffled"])
@pytest.mark.parametrize("name, overrides", settings(per_spec=1))
def test_cuda_matches_reference(name, overrides, batch_name):
    """The same equalities on a CUDA device (float64, so no TF32), both paths."""
    assert_matches_reference(randomize(make(name, device="cuda", **overrides)), BATCHES[batch_name], "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_torch_compile_matches_eager():
    spec = graphnet.load("ptsl", graphnet.Sizes(obs=6, act=2, tasks=3), H=16, D=4, N=2)
    eager = randomize(build(spec, 6, 2, 3, device="cuda"))
    compiled = build(spec, 6, 2, 3, device="cuda", compile=True)
    with torch.no_grad():
        for mine, theirs in zip(compiled.parameters(), eager.parameters(), strict=True):
            mine.copy_(theirs)
    obs, act, task = batch(BATCHES["major-4"], "cuda")
    for a, b in zip(compiled.critic(obs, act, task, True), eager.critic(obs, act, task, True)):
        torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(compiled.actor(obs, task, True)[0], eager.actor(obs, task, True)[0], **TIGHT)


# bank(K) over other library trunks: every parametric op composed per task, beside PTSL's task layers
BANKED = [("film", dict(H=8, N=2)), ("dgrad_a", dict(H=4, N=2)), ("softmod", dict(L=2, M=2, W=4, G=6, E=8)),
          ("ptsl", dict(H=8, D=3, N=2, g="sum")), ("ptsl", dict(H=8, D=3, N=2, g="proj"))]


@pytest.mark.parametrize("batch_name", BATCHES)
@pytest.mark.parametrize("name, overrides", BANKED, ids=[f"{n}[g={o['g']}]" if "g" in o else n for n, o in BANKED])
def test_bank_over_every_op_matches_reference(tmp_path, name, overrides, batch_name):
    spec = tmp_path / f"banked_{name}.gn"
    spec.write_text(f"import {name}\nparam K = 2\nagent {{\n  actor = bank(K) {name}.trunk(obs)\n"
                    f"  critic = bank(K) {name}.trunk(concat(obs, act))\n}}\n")
    assert_matches_reference(randomize(make(str(spec), **overrides)), BATCHES[batch_name])


# --------------------------------------------------------------------------- fast path == general path
@pytest.mark.parametrize("name, overrides", settings())
def test_fast_path_equals_general_path(name, overrides):
    nets = randomize(make(name, **overrides))
    obs, act, task = batch(BATCHES["major-4"])
    perm = torch.randperm(len(task))
    assert TaskLayout.is_major(task, T) and not TaskLayout.is_major(task[perm], T)
    fast = compiled(nets, obs, act, task)
    same_order = compiled(nets, obs, act, task, task_major=False)
    shuffled = compiled(nets, obs[perm], act[perm], task[perm])
    for f, g, s in zip(fast, same_order, shuffled):
        torch.testing.assert_close(g, f, **REBATCHED)
        torch.testing.assert_close(s, f[:, perm], **REBATCHED)


# ------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("name, overrides", settings(per_spec=2))
def test_parameters_are_those_counted(name, overrides):
    nets = make(name, **overrides)
    report = load(name, **overrides).params(OBS, ACT, T, meta=META)
    assert sum(p.numel() for p in nets.parameters()) == report.total
    assert built_counts(nets) == {k: getattr(report, k) for k in built_counts(nets)}      # every field, not the sum


@pytest.mark.parametrize("name", graphnet.library_names())
def test_parameters_are_those_counted_at_paper_sizes(name):
    overrides = {"ctx": "meta"} if name.startswith("care") else {}
    nets = make(name, obs=39, act=4, tasks=10, **overrides)
    report = load(name, 39, 4, 10, **overrides).params(39, 4, 10, meta=META)
    assert sum(p.numel() for p in nets.parameters()) == report.total
    assert built_counts(nets) == {k: getattr(report, k) for k in built_counts(nets)}


@pytest.mark.parametrize("variant", ["ac_shared", "actor_only", "output_only"])
def test_compile_prints_the_counts_of_graphnet_params(variant, capsys):
    """Its per-trunk counts once included the common parameters and w (paco: 1,720,090 against 1,720,040)."""
    assert main(["compile", "paco", "--set", f"variant={variant}"]) == 0
    out = capsys.readouterr().out
    report = load("paco", variant=variant).params()
    assert f"actor trunk: {report.actor:,} parameters\n" in out and f"critic trunk: {report.critic:,} " in out
    assert f"common to actor and critic: {report.common:,} " in out and "agree with graphnet params" in out


@pytest.mark.parametrize("name, overrides", settings(per_spec=2))
def test_target_critic_trains_only_what_it_shares(name, overrides):
    nets = make(name, **overrides)
    live = {id(p) for p in nets.critic.parameters()}
    for key, p in nets.critic_target.named_parameters():
        assert p.requires_grad == (id(p) in live), key
    assert all(p.requires_grad for p in nets.critic.parameters())
    bank_ops = [m for m in nets.critic_target.modules() if getattr(m, "sharing", None) == "bank"]
    assert all(m.table is nets.bank_table for m in bank_ops)
    obs, act, task = batch(BATCHES["shuffled"])
    for live_q, target_q in zip(nets.critic(obs, act, task), nets.critic_target(obs, act, task)):
        torch.testing.assert_close(target_q, live_q, rtol=0, atol=0)


# ---------------------------------------------------------------- PaCo's special cases (section 4.3)
def agree(a: AgentNets, b: AgentNets, task: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """The actors' (mean, log_std) and the critics' (q1, q2) agree on a batch (on `rows` of it)."""
    obs, act, _ = batch(task)
    rows = torch.ones(len(task), dtype=torch.bool) if rows is None else rows
    for x, y in zip([*a.actor(obs, task), *a.critic(obs, act, task)], [*b.actor(obs, task), *b.critic(obs, act, task)]):
        torch.testing.assert_close(x[rows], y[rows], **TIGHT)


@pytest.mark.parametrize("batch_name", ["major-1", "shuffled"])
def test_paco_with_one_copy_is_a_shared_network(batch_name):
    paco = randomize(make("paco", K=1, H=16, N=2))
    with torch.no_grad():
        paco.bank_table.fill_(1.0)
    mtsac = make("mtsac", H=16, N=2)
    copy_modules(paco, mtsac)
    agree(paco, mtsac, BATCHES[batch_name])


@pytest.mark.parametrize("batch_name", ["major-1", "shuffled"])
def test_paco_with_onehot_w_is_independent_networks(batch_name):
    paco = make("paco", K=T, w_init="onehot", H=16, N=2)
    assert torch.equal(paco.bank_table, torch.eye(T))
    randomize(paco)
    with torch.no_grad():
        paco.bank_table.copy_(torch.eye(T))
    task = BATCHES[batch_name]
    for t in range(T):
        single = make("mtsac", H=16, N=2)
        copy_modules(paco, single, pick=t)
        agree(paco, single, task, rows=task == t)


@pytest.mark.parametrize("batch_name", ["major-1", "shuffled"])
def test_paco_output_layers_with_onehot_w_are_multi_head(batch_name):
    paco = randomize(make("paco", variant="output_only", K=T, H=16, N=2))
    with torch.no_grad():
        paco.bank_table.copy_(torch.eye(T))
    mhsac = make("mhsac", H=16, N=2)
    copy_modules(paco, mhsac)
    agree(paco, mhsac, BATCHES[batch_name])


@pytest.mark.parametrize("phi_shape", [(2, 3, 4, 5), (1, 3, 5)])
def test_bank_composition_backward_is_the_derivative(phi_shape):
    """The CPU composition's hand-written backward (w's gradient summed over row blocks) against finite differences."""
    w = torch.randn(T, phi_shape[1], dtype=torch.float64, requires_grad=True)
    phi = torch.randn(*phi_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_Compose.apply, (w, phi))


# -------------------------------------------------------------------------------------------- torch.fx
@pytest.mark.parametrize("name, overrides", settings(per_spec=1))
def test_graph_modules_are_readable(name, overrides):
    nets = make(name, **overrides)
    for role, trunk in (("actor", nets.actor.trunk), ("critic", nets.critic.trunk)):
        gm = trunk.graph_module
        assert isinstance(gm, torch.fx.GraphModule)
        assigned = set(re.findall(r"^\s*(\w+?)(?:_\d+)? = ", gm.code, re.MULTILINE))
        labels = {n.label for n in info(nets.graph).trunk(role)
                  if n.label and n.op not in ("input", "output")}
        assert LABELS[name] | labels <= assigned, gm.code
        assert not [a for a in TRACING_ARTEFACTS if a in gm.code], gm.code


RESIDUALS = """param H = 8
block trunk(z, x) -> OUT {
  h = relu(linear(x -> H) + task linear(x -> H))
  h = relu(task linear(h -> H) + task linear(h -> H, bias = false))
  h = relu(bank(2) linear(h -> H) + linear(h -> H))
  h = relu(z + linear(h -> H))
  g = linear(h -> H)
  h = relu(g) * g
  out = linear(h -> OUT) + task linear(h -> OUT)
}
agent {
  z = linear(obs -> H)
  actor = trunk(z, obs)
  critic = trunk(z, concat(obs, act))
}
"""


@pytest.mark.parametrize("batch_name", BATCHES)
def test_residual_sums_of_linears_accumulate_in_place(tmp_path, batch_name):
    """`linear + linear` is one linear accumulating into the other's output, and the relu after it runs in
    place: shared + per-task, per-task + per-task, bank + shared, an actor-and-critic input (one copy) + the
    critic's twins (not in place: shapes differ), an output sum with no relu. A relu of a linear read by
    something else too stays out of place. The same function as the reference on every kind of batch."""
    spec = tmp_path / "residuals.gn"
    spec.write_text(RESIDUALS)
    nets = randomize(make(str(spec)))
    code = nets.critic.trunk.graph_module.code
    assert code.count("accumulate = ") == 5 and "basic_add(" not in code, code
    assert code.count("basic_relu_(") == 4 and code.count("basic_relu(") == 1, code
    assert_matches_reference(nets, BATCHES[batch_name])


PADDED = """param H = 101
block trunk(x) -> OUT {
  h = relu(linear(x -> H) + task linear(x -> H))
  h = tanh(bank(2) linear(h -> H)) * linear(h -> H)
  n = softmax(linear(h -> H))
  out = linear(h -> OUT) + linear(n -> OUT)
}
agent {
  actor = trunk(obs)
  critic = trunk(concat(obs, act))
}
"""


@pytest.mark.parametrize("batch_name", BATCHES)
def test_odd_widths_compute_zero_padded(tmp_path, batch_name):
    """Width 101 computes at 104 where only linears and zero-preserving ops touch it: the residual sum, the
    relu, tanh(bank) * linear. The softmax's input keeps 101 (its zeros would not stay zero). Parameters keep
    their shapes, and the function and every gradient equal the reference's on every kind of batch."""
    spec = tmp_path / "padded.gn"
    spec.write_text(PADDED)
    nets = randomize(make(str(spec)))
    code = nets.critic.trunk.graph_module.code
    assert code.count("pad = (0, 3)") == 2 and code.count("pad = (3, 3)") == 2, code
    # the softmax's linear and the output's read one h: one shared_input_linears call with both pads
    assert code.count("(3, 0), (3, 0))") == 1 and code.count("pad = ") == 4, code
    assert all(101 in p.shape or 104 not in p.shape for p in nets.parameters())
    assert_matches_reference(nets, BATCHES[batch_name])


def test_shared_input_linears_backward_is_the_derivative():
    """The one-input-gradient form of two linears of one x: a wide and a narrow weight (the narrow one's
    gradient taken as (g^T x)^T), with and without bias, checked against finite differences in float64."""
    from graphnet.compiler.modules import _SharedInput
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    x, wa, ba = torch.randn(2, 5, 7, **f64), torch.randn(2, 7, 9, **f64), torch.randn(2, 9, **f64)
    wb = torch.randn(2, 7, 3, **f64)
    assert torch.autograd.gradcheck(_SharedInput.apply, (x, wa, ba, wb, None))
    assert torch.autograd.gradcheck(_SharedInput.apply, (x, wb, None, wa, ba))


def test_ptsl_layers_read_h_once():
    """PTSL's SH_i(h) and P_down(h) at each layer (and the output's) are one shared_input_linears call."""
    code = make("ptsl").critic.trunk.graph_module.code
    assert code.count("shared_input_linears(") == 4, code


def backward_nodes(out: torch.Tensor) -> set[str]:
    """The names of the autograd nodes `out`'s backward runs."""
    seen, todo, names = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return names


@pytest.mark.parametrize("name", ["ptsl", "paco"])
def test_in_place_ops_on_task_linears_rebuild_no_view(name):
    """A per-task (or composed) linear's output on a task-major batch is not an autograd view of the folded
    product, so its in-place relu and residual accumulate cost their own backward only: no CopySlices or
    AsStrided node (a zeroed copy and a clone of the whole batch each)."""
    nets = make(name)
    obs, act, task = batch(BATCHES["major-4"])
    code = nets.critic.trunk.graph_module.code
    assert "basic_relu_(" in code and (name != "ptsl" or "accumulate = " in code), code
    names = backward_nodes(nets.critic.trunk(obs, task, act, True).sum())
    assert "ReluBackward0" in names and not names & {"CopySlices", "AsStridedBackward0"}, names


def test_cpu_builds_keep_freed_memory_for_reuse():
    """After a CPU build, a 64 MiB tensor allocated and freed again and again reuses its memory: glibc
    would otherwise map each one afresh and fault its 16,384 pages in one by one (host_memory). Measured
    in a fresh process after a few rounds: the first one or two still fault while the heap grows to hold it
    (in a long test session, after however much other work has shaped the heap, more of them did)."""
    code = """if True:
        import resource, torch, graphnet
        from graphnet.compiler import build
        build(graphnet.load("mtsac"), 39, 4, 10, device="cpu")
        size = 16 << 20                         # float32 elements
        for _ in range(6):                      # until the heap has grown to hold it
            torch.ones(size)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            torch.ones(size)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.split()[-1]) < 1000


@pytest.mark.parametrize("name", ["mhsac", "paco", "ptsl"])
def test_torch_compile_matches_eager(name):
    """`build(..., compile=True)` wraps each trunk in torch.compile; the function and its gradients stay the
    same (PaCo: through the bank composition's hand-written backward; PTSL: through in-place residual sums)."""
    spec = graphnet.load(name, graphnet.Sizes(obs=6, act=2, tasks=3), H=16, N=2)
    obs, act = torch.randn(12, 6), torch.rand(12, 2)
    task = torch.arange(3).repeat_interleave(4)
    results = []
    for compile in (False, True):
        torch.manual_seed(0)
        nets = build(spec, 6, 2, 3, device="cpu", compile=compile)
        outputs = [*nets.critic(obs, act, task, True), nets.actor(obs, task, True)[0]]
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs).backward()
        results.append(outputs + [p.grad for p in nets.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ work done once per task, not per sample
def compiled_macs_per_sample(nets: AgentNets, role: str) -> float:
    """Matmul multiply-adds per sample of a compiled trunk's forward (all ensemble members): the
    difference between task-major batches of 8 and 4 samples per task, so per-batch work drops out."""
    from graphnet.compiler.bench import flops

    def at(per_task: int) -> int:
        obs, act, task = batch(torch.arange(T).repeat_interleave(per_task))
        with torch.no_grad():
            return flops(lambda: getattr(nets, role).trunk(obs, task, act, True))
    return (at(8) - at(4)) / (2 * 4 * T)


def test_task_conditioned_film_and_affine_cost_no_per_sample_coefficients():
    """FiLM's gamma/beta and D-Grad's matrix M of onehot(task) are built once per task: per sample only
    the layers and the application remain (the spec's per-sample function has (T + 1) n^2 for M)."""
    H, N, I, OUT = 8, 2, OBS, 2 * ACT
    film = make("film", H=H, N=N)
    assert compiled_macs_per_sample(film, "actor") == I * H + (N - 1) * H * H + H * OUT
    dgrad = make("dgrad_a", H=H, N=N)
    assert compiled_macs_per_sample(dgrad, "actor") == I * H + (N - 1) * H * H + N * H * H + H * OUT
    for name in ("film", "dgrad_a"):
        code = make(name, H=H, N=N).actor.trunk.graph_module.code
        assert "film_rows" in code or "affine_rows" in code, code
