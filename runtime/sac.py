"""Multi-task SAC: twin critics, one temperature per task, and the papers' training schemes.

Losses are kept per task so PaCo's loss maskout and PCGrad can act on them. The update does no
wasted work: the actor loss reads the critic through detached parameters (no critic weight
gradients), log-pi is reused for the temperature loss, the target update is one foreach lerp, and
nothing in it waits for the host (metrics stay tensors until logged).

Non-finite values never reach the weights, for every spec: a task with a NaN or inf in its batch
(rewards, observations, actions, importance weights) or in one of its losses is left out of that
update (its samples zeroed, its losses masked with torch.where), and a step whose gradient is still
non-finite is skipped on the device (fused Adam's found_inf, as torch.amp's GradScaler does). Both
are counted (`nonfinite_tasks`, `skipped_steps`, and `streak`, the updates in a row with either) for
the training loop to log and to stop on.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..compiler import AgentNets
from ..train_config import TrainConfig
from .replay import Batch
from .schemes import maskout, pcgrad, per_task_mean, triplet_loss, w_reset_


_HALF_LOG_2PI, _LOG_2 = 0.5 * math.log(2 * math.pi), math.log(2.0)


def squashed_sample(mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
    """A tanh-squashed Gaussian sample and its log-probability."""
    std = log_std.exp()
    u = mean + std * torch.randn_like(mean)
    action = torch.tanh(u)
    log_prob = (-0.5 * ((u - mean) / std) ** 2 - log_std - _HALF_LOG_2PI).sum(-1)
    log_prob = log_prob - (2 * (_LOG_2 - u - F.softplus(-2 * u))).sum(-1)   # tanh's Jacobian, stably
    return action, log_prob


def squashed_action(mean: Tensor, log_std: Tensor, deterministic: bool) -> Tensor:
    """An action to act with: tanh of the mean, or squashed_sample's action (the same draw, the same bits)
    without the log-probability, which acting never reads: 14 of an MT-SAC acting step's 60 ops."""
    if deterministic:
        return torch.tanh(mean)
    return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))


def _adam(params, lr: float) -> torch.optim.Adam:
    """Fused Adam; on CUDA its step count stays on the device, so an update can be a CUDA graph."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    capturable = all(p.device.type == "cuda" for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused, capturable=capturable)


def _unique(params) -> list:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen and p.requires_grad:
            seen.add(id(p))
            out.append(p)
    return out


def _finite_samples(b: Batch) -> tuple[Batch, Tensor]:
    """The batch with every non-finite sample zeroed, and which samples were finite, ``BoolTensor[S, B]``.
    One row sum per tensor finds them (a NaN or inf anywhere in a row, or a sum overflowing, is not finite)."""
    total = b.obs.sum(-1) + b.next_obs.sum(-1) + b.act.sum(-1) + b.reward + b.done
    if b.weight is not None:
        total = total + b.weight
    ok = torch.isfinite(total)

    def clean(x: Tensor) -> Tensor:
        return torch.where(ok.view(*ok.shape, *([1] * (x.dim() - ok.dim()))), x, 0)
    weight = None if b.weight is None else clean(b.weight)
    return replace(b, obs=clean(b.obs), next_obs=clean(b.next_obs), act=clean(b.act), reward=clean(b.reward),
                   done=clean(b.done), weight=weight), ok


class SAC:
    """SAC for one agent, or for a group of independent seeds built as one (build's `seeds`): every loss is
    a seed's own, summed, so each seed's parameters get exactly its own gradient, and Adam, elementwise,
    steps each seed as it would alone. One exception couples them: a step whose gradient is non-finite
    anywhere is skipped for the whole group (fused Adam's one found_inf)."""

    def __init__(self, nets: AgentNets, cfg: TrainConfig, act_dim: int):
        self.nets, self.cfg = nets, cfg
        self.seeds, self.num_tasks = nets.seeds, nets.log_alpha.shape[-1]
        device = nets.log_alpha.device
        shape = (self.seeds,) if self.seeds > 1 else ()
        self.left_out = torch.zeros(*shape, self.num_tasks, dtype=torch.long, device=device)   # updates missed
        self.streak = torch.zeros(shape, dtype=torch.long, device=device)   # updates in a row with a task or step lost
        self._one = torch.ones((), device=device)
        self.target_entropy = -float(act_dim)
        self.actor_params = _unique(nets.actor.parameters())     # PaCo's w is in both, trained by both
        self.critic_params = _unique(nets.critic.parameters())
        self.actor_opt = _adam(self.actor_params, cfg.lr)
        self.critic_opt = _adam(self.critic_params, cfg.lr)
        self.alpha_opt = _adam([nets.log_alpha], cfg.lr)
        self.feature_opt = None
        if cfg.triplet is not None:
            self.feature_params = _unique(nets.feature_parameters(cfg.triplet.feature))
            self.feature_opt = _adam(self.feature_params, cfg.triplet.lr)
        live = dict(nets.critic.named_parameters())
        target = dict(nets.critic_target.named_parameters())
        own = [n for n in live if live[n] is not target[n]]   # shared tensors have no target copy
        self._live: list[Tensor] = [live[n] for n in own]
        self._target: list[Tensor] = [target[n] for n in own]
        self._found_inf = {name: torch.zeros((), device=device) for name in self.optimizers()}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts: dict[str, torch.optim.Optimizer] = {"actor": self.actor_opt, "critic": self.critic_opt,
                                                  "alpha": self.alpha_opt}
        return opts | ({"feature": self.feature_opt} if self.feature_opt else {})

    def update(self, b: Batch, actor: bool = True) -> dict[str, Tensor]:
        """One gradient step of critic, actor, temperatures (and features); returns metric tensors.

        `actor=False` leaves the actor as it is and trains the value function and temperatures only
        (TaCo's transfer exploration phase); the temperature loss then reads log-pi without gradients.

        A group's batch holds one batch per seed (`[S, B, ...]`, one task layout for all) and its metrics one
        value per seed; a single agent's batch and metrics are as they always were."""
        nets, cfg, T, S = self.nets, self.cfg, self.num_tasks, self.seeds
        single = b.obs.dim() == 2
        if single:
            b = b.with_seed_dim()
        b, ok = _finite_samples(b)
        log_alpha = nets.log_alpha.view(S, T)
        alpha = log_alpha.exp().detach()

        def per_task(values: Tensor) -> Tensor:   # [S, B] -> [S, T]
            return per_task_mean(values.T, b.task, T).T
        with torch.no_grad():
            next_act, next_logp = squashed_sample(*nets.actor(b.next_obs, b.task, b.task_major))
            q1t, q2t = nets.critic_target(b.next_obs, next_act, b.task, b.task_major)
            soft_v = torch.min(q1t, q2t).squeeze(-1) - alpha[:, b.task] * next_logp
            target = b.reward + cfg.gamma * (1 - b.done) * soft_v
        q1, q2 = nets.critic(b.obs, b.act, b.task, b.task_major)
        td1, td2 = q1.squeeze(-1) - target, q2.squeeze(-1) - target
        per_sample = td1.square() + td2.square()
        if b.weight is not None:
            per_sample = per_sample * b.weight
        critic_task = per_task(per_sample)

        finite = (per_task((~ok).to(critic_task.dtype)) == 0) & torch.isfinite(critic_task)
        healthy = finite if cfg.loss_maskout is None else finite & maskout(critic_task.detach(), cfg.loss_maskout)
        skipped = self._step("critic", self.critic_params, critic_task, healthy)

        if actor:
            action, logp = squashed_sample(*nets.actor(b.obs, b.task, b.task_major))
            detached = {n: p.detach() for n, p in nets.critic.named_parameters()}
            q1p, q2p = functional_call(nets.critic, detached, (b.obs, action, b.task, b.task_major))
            actor_task = per_task(alpha[:, b.task] * logp - torch.min(q1p, q2p).squeeze(-1))
            finite = finite & torch.isfinite(actor_task)
            skipped = skipped + self._step("actor", self.actor_params, actor_task, healthy & finite)
        else:
            with torch.no_grad():
                logp = squashed_sample(*nets.actor(b.obs, b.task, b.task_major))[1]

        per_sample_alpha = -(log_alpha[:, b.task] * (logp.detach() + self.target_entropy))
        finite = finite & torch.isfinite(per_task(per_sample_alpha.detach()))
        counted = finite[:, b.task]
        alpha_loss = torch.where(counted, per_sample_alpha, 0).sum(1) / counted.sum(1).clamp(min=1)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.sum().backward()
        skipped = skipped + self._apply(self.alpha_opt, "alpha", [nets.log_alpha])

        left_out = ~finite
        def mean(task_losses: Tensor) -> Tensor:   # over the tasks that counted
            return torch.where(finite, task_losses.detach(), 0).sum(1) / finite.sum(1).clamp(min=1)
        metrics = {"critic_loss": mean(critic_task), **({"actor_loss": mean(actor_task)} if actor else {}),
                   "alpha": alpha.mean(1), "healthy_tasks": healthy.sum(1)}
        if cfg.triplet is not None and self.feature_opt is not None:
            feats = nets.feature(cfg.triplet.feature, b.obs, b.task, b.task_major)
            loss = cfg.triplet.weight * torch.stack([triplet_loss(f, b.task, cfg.triplet.margin) for f in feats])
            self.feature_opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            skipped = skipped + self._apply(self.feature_opt, "feature", self.feature_params)
            metrics["triplet_loss"] = loss.detach()
        self.left_out += left_out.view(self.left_out.shape)
        lost = (left_out.any(1) | (skipped > 0)).view(self.streak.shape)
        self.streak.copy_(torch.where(lost, self.streak + 1, 0))
        metrics |= {"nonfinite_tasks": left_out.sum(1), "skipped_steps": skipped.expand(S)}
        if cfg.w_reset and nets.bank_table is not None:   # the spec check refuses w_reset without a bank
            for table, ok_tasks in zip(nets.bank_table.view(S, T, -1), healthy):
                w_reset_(table, ok_tasks)
        with torch.no_grad():
            torch._foreach_lerp_(self._target, self._live, cfg.tau)
        metrics["td_error"] = 0.5 * (td1.abs() + td2.abs()).detach()
        return {k: v[0] for k, v in metrics.items()} if single else metrics

    def _step(self, name: str, params: list, task_losses: Tensor, included: Tensor) -> Tensor:
        """Minimise each seed's mean loss of its included tasks; with PCGrad, per-task gradients deconflicted,
        seed by seed. torch.where, not a product, leaves the others out: 0 * NaN is NaN. Returns whether the
        step was skipped."""
        opt = self.optimizers()[name]
        opt.zero_grad(set_to_none=True)
        losses = torch.where(included, task_losses, 0)             # [S, T]
        count = included.sum(1).clamp(min=1)
        if not self.cfg.pcgrad:
            (losses.sum(1) / count).sum().backward()
        else:   # a seed's parameters are its rows of every tensor (seed-major): its gradients are those rows
            S = self.seeds
            grads: list[list[Tensor]] = [[] for _ in range(S)]
            for t in range(self.num_tasks):
                g = torch.autograd.grad(losses[:, t].sum(), params, retain_graph=True, allow_unused=True)
                rows = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(S, -1)
                                  for x, p in zip(g, params)], 1)
                for s in range(S):
                    grads[s].append(rows[s])
            flat = torch.stack([pcgrad(grads[s]) / count[s] for s in range(S)])
            offset = 0
            for p in params:
                size = p.numel() // S
                p.grad = flat[:, offset:offset + size].reshape(p.shape).clone()
                offset += size
        return self._apply(opt, name, params)

    def _apply(self, opt: torch.optim.Optimizer, name: str, params: list) -> Tensor:
        """The optimizer's step, skipped where a gradient is NaN or inf: on the device for fused Adam (its
        found_inf, which also holds back the step count), a host check otherwise. Returns 1 if skipped, else 0."""
        found_inf = self._found_inf[name]
        found_inf.zero_()
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, self._one)
        if opt.defaults["fused"]:
            opt.found_inf = found_inf   # type: ignore[attr-defined]  # read by fused Adam's step, as GradScaler sets it
            opt.step()
        elif not found_inf.item():
            opt.step()
        return found_inf
