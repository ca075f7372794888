"""SAC.update on tiny networks against losses written out by hand from the SAC papers' formulas: the soft
Bellman target, per-task means, TA-PER's importance weights, PCGrad's projection, PaCo's maskout and
w-reset, non-finite values left out, Polyak targets; and the tanh-Gaussian's log-probability against
torch.distributions. The optimizers' steps are intercepted to read the gradients they were given."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform
from torch.func import functional_call

import graphnet
from graphnet.compiler import build
from graphnet.runtime.replay import Batch
from graphnet.runtime.sac import SAC, squashed_action, squashed_sample

OBS, ACT, T, PER_TASK = 3, 2, 2, 4


def test_log_prob_is_the_tanh_gaussians():
    """The squashed sample's log-density equals torch.distributions' tanh-transformed Normal's, and, where tanh
    is not saturated, the change of variables log N(u) - log(1 - tanh(u)^2) in float64."""
    mean, log_std = torch.randn(256, 3, dtype=torch.float64) * 2, torch.randn(256, 3, dtype=torch.float64) * 0.5
    torch.manual_seed(0)
    action, logp = squashed_sample(mean, log_std)
    torch.manual_seed(0)
    u = mean + log_std.exp() * torch.randn_like(mean)
    tanh = TanhTransform(cache_size=1)
    y = tanh(u)                                                  # cached: log_prob(y) reads u back exactly
    expected = TransformedDistribution(Normal(mean, log_std.exp()), [tanh]).log_prob(y).sum(-1)
    assert torch.equal(action, y)
    torch.testing.assert_close(logp, expected)
    moderate = (u.abs() < 3).all(-1)
    by_hand = (Normal(mean, log_std.exp()).log_prob(u) - torch.log1p(-torch.tanh(u) ** 2)).sum(-1)
    torch.testing.assert_close(logp[moderate], by_hand[moderate])


def test_acting_draws_the_squashed_samples_action():
    """Acting skips the log-probability, not the draw: the same noise and the same bits as squashed_sample's
    action, and the generator left where squashed_sample leaves it, so runs act as they did; deterministic is
    tanh of the mean."""
    mean, log_std = torch.randn(64, 4), torch.randn(64, 4) * 0.5
    torch.manual_seed(3)
    action, _ = squashed_sample(mean, log_std)
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(squashed_action(mean, log_std, deterministic=False), action)
    assert torch.equal(torch.rand(1), after)
    assert torch.equal(squashed_action(mean, log_std, deterministic=True), torch.tanh(mean))


def batch(rewards=(1.0, -1.0), weight: torch.Tensor | None = None, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n = T * PER_TASK
    task = torch.arange(T).repeat_interleave(PER_TASK)
    return Batch(obs=torch.randn(n, OBS, generator=g), act=torch.rand(n, ACT, generator=g) * 2 - 1,
                 reward=torch.tensor(rewards).repeat_interleave(PER_TASK) + torch.randn(n, generator=g),
                 next_obs=torch.randn(n, OBS, generator=g), done=(torch.arange(n) % 3 == 0).float(), task=task,
                 index=torch.zeros_like(task), weight=weight)


def agent(name: str = "mtsac", **train) -> tuple[SAC, dict]:
    """SAC on a tiny spec, with every optimizer's step recording the gradients it is given, by parameter name,
    and the critic as its step left it (what the actor's loss reads) under "critic_after"."""
    torch.manual_seed(1)
    spec = graphnet.load(name, graphnet.Sizes(obs=OBS, act=ACT, tasks=T), H=8, **({"K": 2} if name == "paco" else {}))
    nets = build(spec, OBS, ACT, T, device="cpu")
    sac = SAC(nets, spec.train.model_copy(update=train), ACT)
    names = {id(p): n for n, p in nets.named_parameters()}
    grads: dict = {}
    for key, opt in sac.optimizers().items():
        def recording(step=opt.step, key=key, opt=opt):
            grads[key] = {names[id(p)]: p.grad.clone() for g in opt.param_groups for p in g["params"]
                          if p.grad is not None}
            out = step()
            if key == "critic":
                grads["critic_after"] = {n: p.detach().clone() for n, p in nets.critic.named_parameters()}
            return out
        opt.step = recording
    return sac, grads


def task_means(values: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    return torch.stack([values[task == t].mean() for t in range(T)])


def reference_losses(nets, b: Batch, gamma: float, seed: int, critic_after: dict, pcgrad: bool = False):
    """Per-task critic, actor and per-sample temperature losses of SAC, from the networks as they were; the
    actor's loss reads the critic after its step (`critic_after`), as a constant. The noise is the update's:
    the same seed, drawn in the same order (PCGrad's critic step draws its visiting order in between)."""
    torch.manual_seed(seed)
    alpha = nets.log_alpha.exp().detach()
    with torch.no_grad():
        next_act, next_logp = squashed_sample(*nets.actor(b.next_obs, b.task))
        q1t, q2t = nets.critic_target(b.next_obs, next_act, b.task)
        y = b.reward + gamma * (1 - b.done) * (torch.min(q1t, q2t).squeeze(-1) - alpha[b.task] * next_logp)
    q1, q2 = nets.critic(b.obs, b.act, b.task)
    per_sample = (q1.squeeze(-1) - y) ** 2 + (q2.squeeze(-1) - y) ** 2
    critic = task_means(per_sample * (1 if b.weight is None else b.weight), b.task)
    if pcgrad:
        torch.rand(T, T)
    with torch.no_grad():   # W is trained by both losses: the actor's reads it as the critic's step left it
        for name, p in nets.critic.named_parameters():
            if p is nets.bank_table:
                p.copy_(critic_after[name])
    action, logp = squashed_sample(*nets.actor(b.obs, b.task))
    q1p, q2p = functional_call(nets.critic, critic_after, (b.obs, action, b.task))
    actor = task_means(alpha[b.task] * logp - torch.min(q1p, q2p).squeeze(-1), b.task)
    temperature = -nets.log_alpha[b.task] * (logp.detach() - ACT)
    return critic, actor, temperature


def grads_of(loss: torch.Tensor, params: dict) -> dict:
    g = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
    return {n: x for n, x in zip(params, g) if x is not None}


def assert_grads(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys(), got.keys() ^ expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def params(module) -> dict:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def prefixed(module, prefix: str, table: torch.Tensor | None = None) -> dict:
    """A network's parameters under the agent's names (W, read by both networks, is "bank_table")."""
    return {"bank_table" if p is table else f"{prefix}.{n}": p for n, p in params(module).items()}


@pytest.mark.parametrize("weighted", [False, True])
def test_update_follows_the_sac_losses(weighted):
    """Critic, actor and temperature gradients equal the hand-written losses' (TA-PER's weights scale each
    sample's TD error); the metrics are those losses; the critic's own target moves by tau toward it."""
    weight = torch.linspace(0.2, 2.0, T * PER_TASK) if weighted else None
    sac, grads = agent()
    ref, b = copy.deepcopy(sac.nets), batch(weight=weight)
    torch.manual_seed(5)
    metrics = sac.update(b)
    critic, actor, temperature = reference_losses(ref, b, sac.cfg.gamma, seed=5, critic_after=grads["critic_after"])
    assert_grads(grads["critic"], grads_of(critic.mean(), prefixed(ref.critic, "critic")))
    assert_grads(grads["actor"], grads_of(actor.mean(), prefixed(ref.actor, "actor")))
    assert_grads(grads["alpha"], grads_of(temperature.mean(), {"log_alpha": ref.log_alpha}))
    torch.testing.assert_close(metrics["critic_loss"], critic.mean().detach())
    torch.testing.assert_close(metrics["actor_loss"], actor.mean().detach())
    live, before = dict(sac.nets.critic.named_parameters()), dict(ref.critic_target.named_parameters())
    for name, p in sac.nets.critic_target.named_parameters():
        torch.testing.assert_close(p, torch.lerp(before[name], live[name], sac.cfg.tau), msg=name)


def projected_sum(g0: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
    """PCGrad for two tasks: each gradient loses its component against the other where they conflict."""
    dot = g0 @ g1
    if dot >= 0:
        return g0 + g1
    return (g0 - dot / (g1 @ g1) * g1) + (g1 - dot / (g0 @ g0) * g0)


def test_pcgrad_projects_conflicting_task_gradients():
    sac, grads = agent(pcgrad=True)
    ref, b = copy.deepcopy(sac.nets), batch(rewards=(20.0, -20.0))
    torch.manual_seed(5)
    sac.update(b)
    critic, actor, _ = reference_losses(ref, b, sac.cfg.gamma, seed=5, critic_after=grads["critic_after"], pcgrad=True)
    for key, losses, net in (("critic", critic, ref.critic), ("actor", actor, ref.actor)):
        named = prefixed(net, key)
        per_task = [torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], list(named.values()),
                                                                         retain_graph=True)]) for t in range(T)]
        expected = projected_sum(*per_task) / T
        got = torch.cat([grads[key][n].flatten() for n in named])
        if key == "critic":
            assert per_task[0] @ per_task[1] < 0        # the tasks conflict: the projection is exercised
            assert not torch.allclose(expected, (per_task[0] + per_task[1]) / T)
        torch.testing.assert_close(got, expected)


def test_maskout_leaves_an_exploded_task_out_and_w_reset_restarts_its_w():
    """PaCo: task 1's critic loss exceeds the threshold: both losses are task 0's alone, and task 1's row of W
    is reset into the hull of the healthy rows, here task 0's row itself."""
    sac, grads = agent("paco", loss_maskout=1e4, w_reset=True)
    ref, b = copy.deepcopy(sac.nets), batch(rewards=(0.0, 1e4))
    torch.manual_seed(5)
    metrics = sac.update(b)
    critic, actor, _ = reference_losses(ref, b, sac.cfg.gamma, seed=5, critic_after=grads["critic_after"])
    assert critic[1] > 1e4 >= critic[0] and int(metrics["healthy_tasks"]) == 1
    assert_grads(grads["critic"], grads_of(critic[0], prefixed(ref.critic, "critic", ref.bank_table)))
    assert_grads(grads["actor"], grads_of(actor[0], prefixed(ref.actor, "actor", ref.bank_table)))
    table = sac.nets.bank_table.detach()
    assert torch.equal(table[1], table[0]) and not torch.equal(table[1], ref.bank_table[1])


def test_a_task_with_nan_rewards_is_left_out_and_counted():
    """NaN rewards in task 1's samples: every gradient is task 0's alone, every weight stays finite, and the
    update counts one task left out and no step skipped."""
    sac, grads = agent()
    clean, b = batch(), batch()
    b.reward[PER_TASK + 1] = float("nan")
    ref = copy.deepcopy(sac.nets)
    torch.manual_seed(5)
    metrics = sac.update(b)
    critic, actor, temperature = reference_losses(ref, clean, sac.cfg.gamma, 5, grads["critic_after"])
    assert_grads(grads["critic"], grads_of(critic[0], prefixed(ref.critic, "critic")))
    assert_grads(grads["actor"], grads_of(actor[0], prefixed(ref.actor, "actor")))
    assert_grads(grads["alpha"], grads_of(temperature[:PER_TASK].mean(), {"log_alpha": ref.log_alpha}))
    assert all(torch.isfinite(p).all() for p in sac.nets.parameters())
    assert int(metrics["nonfinite_tasks"]) == 1 and int(metrics["skipped_steps"]) == 0
    assert sac.left_out.tolist() == [0, 1] and int(sac.streak) == 1
    sac.update(clean)
    assert int(sac.streak) == 0 and sac.left_out.tolist() == [0, 1]


def test_a_step_with_a_non_finite_gradient_is_skipped_on_the_device():
    """A gradient turned NaN (a hook on one critic weight): the critic's step is skipped (weights, Adam's
    moments and step count as they were), the actor's and temperature's go on."""
    sac, _ = agent()
    weight = next(p for p in sac.nets.critic.parameters() if p.dim() > 1)
    weight.register_hook(lambda g: g * float("nan"))
    before = copy.deepcopy(sac.nets)
    metrics = sac.update(batch())
    assert int(metrics["skipped_steps"]) == 1 and int(metrics["nonfinite_tasks"]) == 0 and int(sac.streak) == 1
    assert all(torch.equal(a, b) for a, b in zip(sac.nets.critic.parameters(), before.critic.parameters()))
    assert all(int(s["step"]) == 0 for s in sac.critic_opt.state.values())
    assert not torch.equal(sac.nets.log_alpha, before.log_alpha)
    assert not all(torch.equal(a, b) for a, b in zip(sac.nets.actor.parameters(), before.actor.parameters()))


SHARED_ENCODER = """param H = 8
agent{options} {{
  u = relu(linear(obs -> H))
  actor = linear(concat(u, onehot(task)) -> 2 * ACT)
  critic = linear(concat(u, act, onehot(task)) -> 1)
}}
"""


@pytest.mark.parametrize("target", ["shared", "copy"])
def test_the_critic_target_reads_live_features_or_a_polyak_copy(tmp_path, target):
    """agent(target = shared): the target reads the live encoder's very tensors; target = copy: a copy of its
    own, moved by tau toward the live encoder at each update, as the critic's own target layers are."""
    path = tmp_path / "enc.gn"
    path.write_text(SHARED_ENCODER.format(options="" if target == "shared" else "(target = copy)"))
    spec = graphnet.load(path, graphnet.Sizes(obs=OBS, act=ACT, tasks=T))
    nets = build(spec, OBS, ACT, T, device="cpu")
    sac = SAC(nets, spec.train, ACT)
    before = {n: p.detach().clone() for n, p in nets.critic_target.named_parameters()}
    sac.update(batch())
    live = dict(nets.critic.named_parameters())
    encoder = [n for n in live if "linear" in n and live[n].shape[-1] == 8 and live[n].shape[-2] in (OBS, 1)]
    assert encoder
    for name, p in nets.critic_target.named_parameters():
        if name in encoder and target == "shared":
            assert p is live[name]
        else:
            assert p is not live[name] and not p.requires_grad
            torch.testing.assert_close(p, torch.lerp(before[name], live[name], sac.cfg.tau), msg=name)
