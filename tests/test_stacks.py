"""Stacks of features, per-sample reductions, broadcasting, division and computed weights, and the library
specs written with them: MOORE's experts are orthonormal per sample, MMoE's gates sum to one per task, the
hypernetwork's generated layer differs per task and trains. (Every op's compiled == reference: test_registry;
the specs' whole networks: test_compiler's SETTINGS.)"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import graphnet
from graphnet.compiler import build
from graphnet.compiler.build import Trunk
from graphnet.compiler.lower import lower
from graphnet.compiler.verify import float64
from graphnet.errors import SpecErrors

SMALL = graphnet.Sizes(obs=5, act=2, tasks=3)


@pytest.fixture(autouse=True)
def in_float64():
    with float64():
        yield


def feature(spec: graphnet.Spec, label: str, role: str = "actor"):
    """The networks, and a function of (obs, task) giving the actor's node named `label`, `[B, width]`."""
    nets = build(spec, SMALL.obs, SMALL.act, SMALL.tasks, device="cpu")
    g = nets.graph
    nid = next(n for n in g if g.nodes[n]["data"].label == label and g.nodes[n]["data"].role == role)
    trunk = Trunk(lower(g, "feature", nets.op_modules, None, out=nid), SMALL.tasks, False)
    return nets, lambda obs, task: trunk(obs, task)[0]


def test_moore_experts_are_orthonormal_per_sample():
    spec = graphnet.load("moore", SMALL, K=3, H=16, D=6)
    _, experts = feature(spec, "experts")
    e = experts(torch.randn(9, 5), torch.arange(3).repeat(3)).view(9, 3, 6)
    torch.testing.assert_close(e @ e.transpose(1, 2), torch.eye(3).expand(9, 3, 3))


def test_mmoe_gates_sum_to_one_and_differ_per_task():
    spec = graphnet.load("mmoe", SMALL, K=4, H=8, D=5, TOWER=4)
    _, gate = feature(spec, "gate")
    obs = torch.randn(1, 5).expand(3, 5)
    g = gate(obs, torch.arange(3))
    torch.testing.assert_close(g.sum(-1), torch.ones(3))
    assert (g > 0).all() and not torch.allclose(g[0], g[1]) and not torch.allclose(g[1], g[2])


def test_hypernetwork_generates_a_layer_per_task_that_trains():
    spec = graphnet.load("hyper", SMALL, H=8, N=2, Z=4, G=6)
    nets, weights = feature(spec, "weights")
    obs, task = torch.randn(6, 5), torch.arange(3).repeat(2)
    before = weights(obs, task).detach()
    assert before.shape == (6, 8 * 4 + 4)
    assert not torch.allclose(before[0], before[1]) and torch.allclose(before[0], before[3])   # per task, not sample
    target = torch.randn(6, 2)
    optimiser = torch.optim.Adam(nets.actor.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = (nets.actor(obs, task)[0] - target).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert not torch.allclose(weights(obs, task), before)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.gn"
    path.write_text(textwrap.dedent(text))
    return str(path)


AGENT = """
block f(x) -> OUT {{
  s = stack(3) linear(x -> 4)
  {line}
}}
agent {{ actor = f(obs)  critic = f(concat(obs, act)) }}
"""


@pytest.mark.parametrize("line, message, hint", [
    ("out = linear(s -> OUT)", "linear takes features, not a stack of 3", "reduce the stack first"),
    ("out = s", "block 'f' gives out a stack of 3", "stack the block's call"),
    ("out = linear(mix(s, linear(x -> 2)) -> OUT)", "mix of a stack of 3 needs one weight per member, got width 2",
     "mix(s, softmax(linear(x -> k)))"),
    ("out = linear(member(s, i = 3) -> OUT)", "member(s, i = 3) of a stack of 3: i counts from 0 to 2", None),
    ("out = linear(s + stack(2) linear(x -> 6) -> OUT)", "add of stacks of 3 and 2 members", "one stack size"),
    ("out = linear(apply(x, linear(x -> 7) -> 2) -> OUT)", "apply(x -> 2) of 5 features needs weights of width "
     "5 x 2 + 2 = 12", "linear(z -> 12)"),
    ("out = linear(concat(gram_schmidt(stack(5) linear(x -> 4))) -> OUT)", "gram_schmidt of 5 members of width 4: "
     "more members than dimensions cannot be orthonormal", "each member at least 5 wide, or the stack at most 4"),
])
def test_stack_misuse_is_a_located_error(tmp_path, line, message, hint):
    """At the call (a block's out: at the block, as its other out errors), saying what was expected."""
    with pytest.raises(SpecErrors) as info:
        graphnet.load(write(tmp_path, AGENT.format(line=line)), SMALL)
    err = info.value.errors[0]
    assert err.pos.line == (2 if line == "out = s" else 4) and message in err.message, err.render()
    assert hint is None or hint in (err.hint or "")


def test_stacks_of_blocks_reductions_broadcasting_and_division(tmp_path):
    """stack(k) of a block: k independent copies (k times its parameters), inputs evaluated once; a width-1
    value broadcasts against any width; features divide features."""
    text = """
    block expert(x) -> OUT { out = relu(linear(x -> OUT)) }
    block f(x) -> OUT {
      h = linear(x -> 6)
      s = relu(stack(3) expert(h -> 4))
      m = mean(s) / norm(mean(s)) + dot(h, h) * member(s, i = 1)
      out = linear(concat(m, concat(s), total(h)) -> OUT)
    }
    agent { actor = f(obs)  critic = f(concat(obs, act)) }
    """
    spec = graphnet.load(write(tmp_path, text), SMALL)
    actor = (5 * 6 + 6) + 3 * (6 * 4 + 4) + ((4 + 12 + 1) * 4 + 4)
    assert spec.params(5, 2, 3).actor == actor


MIXTURE = """
block f(x) -> OUT {
  a = softmax(linear(x -> 3))
  out = linear(mixture(x, a, experts = 3, width = 5, layers = 2) -> OUT)
}
agent { actor = f(obs)  critic = f(concat(obs, act)) }
"""
STACKED = """
block expert(x) -> OUT { out = linear(relu(linear(x -> 5)) -> OUT) }
block f(x) -> OUT {
  a = softmax(linear(x -> 3))
  out = linear(mix(stack(3) expert(x -> 5), a) -> OUT)
}
agent { actor = f(obs)  critic = f(concat(obs, act)) }
"""


def test_cares_mixture_is_a_mix_of_stacked_experts(tmp_path):
    """`mixture(x, a, experts = k, ...)` is `mix(stack(k) expert(x), a)`: the same count and, with the experts'
    parameters copied across, the same function. (It stays an op for speed: see the README.)"""
    (tmp_path / "op").mkdir(), (tmp_path / "stacked").mkdir()
    op = graphnet.load(write(tmp_path / "op", MIXTURE), SMALL)
    stacked = graphnet.load(write(tmp_path / "stacked", STACKED), SMALL)
    assert op.params(5, 2, 3).total == stacked.params(5, 2, 3).total
    a, b = (build(s, 5, 2, 3, device="cpu") for s in (op, stacked))
    for role in ("actor", "critic"):
        mixture = next(m for k, m in a.op_modules.items() if k.startswith(role) and m.op == "mixture")
        first = {k: m for k, m in a.op_modules.items() if k.startswith(role) and m.op == "linear"}
        rest = {k: m for k, m in b.op_modules.items() if k.startswith(role) and "member=" not in k}
        with torch.no_grad():
            for (_, src), (_, dst) in zip(sorted(first.items()), sorted(rest.items()), strict=True):
                for name, p in dst.params.items():
                    p.copy_(src.params[name])
            for j in range(3):
                layers = sorted(k for k in b.op_modules if k.startswith(role) and f"member={j}/" in k)
                for layer, key in enumerate(layers, 1):
                    b.op_modules[key].params["weight"].copy_(mixture.params[f"weight{layer}"][:, :, j])
                    b.op_modules[key].params["bias"].copy_(mixture.params[f"bias{layer}"][:, :, j])
    obs, act, task = torch.randn(6, 5), torch.randn(6, 2), torch.arange(3).repeat(2)
    torch.testing.assert_close(b.actor(obs, task)[0], a.actor(obs, task)[0])
    torch.testing.assert_close(b.critic(obs, act, task)[0], a.critic(obs, act, task)[0])


@pytest.mark.parametrize("settings", [{}, {"L": 2, "M": 2, "W": 256}, {"L": 1, "M": 3}, {"L": 3, "M": 2}])
def test_soft_modularization_from_primitives_counts_as_the_ops(settings):
    """examples/softmod_from_primitives.gn: the router and modular ops' parameters, written with stack(M), mix by
    routing matrices, softmax per member and as_stack."""
    primitives = Path(__file__).resolve().parents[1] / "examples" / "softmod_from_primitives.gn"
    ours = graphnet.load(str(primitives), **settings).params()
    assert ours.model_dump(exclude={"by_module"}) == graphnet.load("softmod", **settings).params().model_dump(
        exclude={"by_module"})


def test_soft_modularization_from_primitives_compiles_to_its_reference():
    from graphnet.compiler import reference_trunk
    primitives = Path(__file__).resolve().parents[1] / "examples" / "softmod_from_primitives.gn"
    spec = graphnet.load(str(primitives), SMALL, L=3, M=2, W=4, G=6, E=8)
    nets = build(spec, 5, 2, 3, device="cpu")
    with torch.no_grad():
        for p in nets.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    obs, act = torch.randn(7, 5), torch.randn(7, 2)
    for task in (torch.arange(3).repeat_interleave(2), torch.tensor([2, 0, 2, 2, 0, 1, 0])):
        n = len(task)
        torch.testing.assert_close(nets.critic.trunk(obs[:n], task, act[:n]),
                                   reference_trunk(nets, "critic", obs[:n], task, act[:n]))
