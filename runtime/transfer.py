"""`graphnet transfer`: TaCo's transfer phase, one new task learned from a multi-task run's policy parameters.

Sun, Zhang, Xu and Tomizuka, "Efficient Multi-Task and Transfer Reinforcement Learning with
Parameter-Compositional Framework" (TaCo), section IV-B and Algorithm 2; `freeze_phi` is section V-C's
"Transferring with Fixed Phi" (Table V):

- the actor starts as the run's actor: every bank(K) module keeps the run's K copies (Phi), every shared
  module its parameters, and the new task gets a composition vector w (1 x K). While exploring they are
  fixed; then Phi and the shared layers are released and fine-tuned with w (Algorithm 2), or, with
  `freeze_phi`, stay fixed for good and w is the only actor parameter learned.
- the value function is retrained: the twin critics, their targets and the temperature start fresh.
  Where the spec composes the critic from a bank too, the critic gets a composition row of its own,
  so that value learning never moves the policy's w.
- exploration first: for `explore_steps` steps the agent acts (stochastically) with sub-space policies
  pi_explore = pi_theta, theta = Phi w~, w~ = beta W, W the run's learned [T, K] table, one beta per
  episode: the first T episodes take the simplex's corners beta = e_t (each source task's own policy,
  once), the others beta uniform on the simplex (Dirichlet(1, ..., 1), the paper's beta ~ Delta). Only
  the critic and the temperature learn meanwhile (targets and the temperature loss read the actor's
  own policy). Then SAC: the actor learns w (and Phi), the critic keeps learning.
- w starts at the centroid of W (the mean row; beta uniform) and, with start="best" (the default),
  moves when exploration ends to the explored point with the highest mean reward per step, so that
  SAC refines the best sub-space policy found rather than the average one (the paper leaves w_new's
  start open; on the point-mass tests SAC on w alone does not find a source task's corner from the
  centroid, and does from the best explored point). start="centroid" keeps the centroid.
- the run's SAC options carry over (lr, gamma, tau, batch_per_task, init_alpha, loss maskout, replay,
  buffer size, threads); those about several tasks (task sampling, w-reset, PCGrad, the triplet loss)
  are off.

A source task's one-hot id does not exist for a new task. Where the actor reads `onehot(task)` through
a linear layer, the one-task network has one input row there instead of T; it holds beta's mixture of
the run's T rows, so a sub-space point is the pair (w = beta W, one-hot input beta), and the corner
beta = e_t is exactly the run's policy for task t. That row starts at the start point's beta (uniform,
or the best explored) and learns, or stays, with Phi. Layers with one copy per task (`task ...`,
`embed(task)`) have no copy for a new task: such specs are refused.

The output is a normal run directory (metrics.csv, tb/, checkpoints/, config.json, spec.gn, spec.json,
versions.json) plus transfer.json (source, step, Phi fine-tuned or frozen, w's start) and exploration.csv (one
row per exploration episode: its return, w~ and beta). Checkpoints are marked as transfer checkpoints
(spec_hash "transfer:<hash>"), so `graphnet train --resume` refuses them instead of training Phi; a
transfer run does not resume. `load_transferred` reads its networks back.
"""
from __future__ import annotations

import csv
from contextlib import ExitStack, closing
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.func import functional_call

import graphnet

from ..compiler import AgentNets, build

from ..compiler.modules import ParamOp
from .. import registry
from ..errors import TransferError
from ..ir import info, modules, node, nodes, reads_metadata
from ..train_config import TAPER, TrainConfig, UniformSampling
from . import checkpoint
from .config import RunConfig
from .envs import MultiTaskEnv, SeedEnvs, TaskEnv, task_names
from .logs import RunLog, write_json
from .loop import Loop, Stepper
from .prioritized import TaskSumTrees
from .replay import TaskReplay
from .sac import SAC, squashed_action
from .schemes import TaskSampler
from .train import (evaluate_all, load_run_config, log_episode, log_evaluation, one_thread, sample_batch, start_run,
                    write_run_files)

EXPLORE_STEPS = 20_000      # TaCo, Table VII: transfer-stage exploration steps n_e
NO_BANK = "transfer reuses the policy parameter set Phi: the spec needs bank(K) layers"


# ------------------------------------------------------------------------------------------ the source run
class Source:
    """A finished (or checkpointed) multi-task run: its config, spec, latest checkpoint and learned W."""

    def __init__(self, run_dir: Path):
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise TransferError(f"{run_dir} does not exist: give the directory of a multi-task graphnet run")
        if (run_dir / "transfer.json").exists():
            raise TransferError(f"{run_dir} is a transfer run; transfer from the multi-task run it came from")
        self.dir = run_dir
        try:
            self.cfg = load_run_config(run_dir)
        except ValidationError:
            raise TransferError(f"{run_dir}/config.json is not a graphnet run configuration") from None
        saved = checkpoint.load(run_dir)
        if saved is None:
            raise TransferError(f"{run_dir} has no checkpoint (checkpoints/latest.pt): nothing to transfer yet")
        self.saved = saved
        state = self.saved.get("nets", {})
        if "log_alpha" not in state or "spec_hash" not in self.saved:
            raise TransferError(f"{run_dir}/checkpoints/latest.pt is not a graphnet training checkpoint")
        self.num_tasks = int(state["log_alpha"].shape[0])
        self.spec = graphnet.load(self.cfg.spec, graphnet.Sizes(obs=39, act=4, tasks=self.num_tasks),
                                  **self.cfg.overrides)
        if self.saved["spec_hash"] != self.spec.hash:
            raise TransferError(f"the spec changed since {run_dir} was trained (hash {self.saved['spec_hash']}, "
                                f"now {self.spec.hash}): its networks no longer match {self.cfg.spec}")
        self.step = int(self.saved["step"])
        self.table = state.get("bank_table")                   # the run's W, [T, K]
        names = _metrics_tasks(run_dir)
        self.task_names = names if names and len(names) == self.num_tasks else [f"task{t}" for t in
                                                                                range(self.num_tasks)]

    def check_actor(self) -> None:
        """The actor must hold a bank (Phi) and nothing that exists once per source task."""
        g = self.spec.graph_for(39, 4, self.num_tasks)
        mods = modules(g)
        used = {n.module for n in info(g).trunk("actor") if n.module}
        if not any(mods[m].sharing == "bank" for m in used) or self.table is None:
            raise TransferError(f"{self.cfg.spec}: {NO_BANK} in the actor (e.g. paco, taco, shared_unique)")
        per_task = sorted(m for m in used if mods[m].sharing == "task")
        if per_task:
            raise TransferError(f"{self.cfg.spec}: the actor has task-specific layers ({', '.join(per_task)}): they "
                                "hold one copy per source task and none for a new one, and transfer learns only w; "
                                "use a spec whose actor is shared and bank(K) layers only")
        if reads_metadata(info(g).trunk("actor")):
            raise TransferError(f"{self.cfg.spec}: the actor reads meta(task), which has no row for a new task")
        if (bank := info(g).bank) is not None and bank["w"] == "onehot":
            raise TransferError(f"{self.cfg.spec}: bank(K, w = onehot) ties K to the number of tasks; the transfer "
                                "network has one task. Transfer from a run whose bank uses w = normal")


def _metrics_tasks(run_dir: Path) -> list[str] | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        header = next(csv.reader(f), [])
    names = [h.removeprefix("success_") for h in header[2:]]
    return names or None


# ------------------------------------------------------------------------------------------ the networks
def _segments(g, nid: str) -> list[tuple[str, int]]:
    """The columns of a node's output: ("task", T) for a parameter-free op of the task id (its one-hot; an actor
    reading meta(task) is refused before), ("x", width) for anything else; concatenations are followed into
    their parts."""
    n = node(g, nid)
    op = registry.lookup(n.op)
    if op is not None and op.side_by_side:
        return [s for i in n.inputs for s in _segments(g, i)]
    return [("task", n.width)] if op is not None and op.reads_task and not op.parametric else [("x", n.width)]


def _call_segments(g, mid: str) -> list[list[tuple[str, int]]]:
    """Per input port of the module's first call site, its column segments."""
    calls = [n for n in nodes(g) if n.module == mid]
    return [_segments(g, i) for i in calls[0].inputs] if calls else []


def _carry(key: str, pname: str, src: Tensor, param: Tensor, op: str, src_segs, new_segs,
           task_rows: list[tuple[int, Tensor]]) -> Tensor:
    """A source parameter for the one-task network. A linear layer's weight rows for the task one-hot
    (T rows in the run, one here) are appended to `task_rows` as (row, the run's rows) and start as their
    mean: the new task presents the uniform mixture of the source one-hots. Everything else is copied."""
    if any(k == "task" for segs in src_segs for k, _ in segs):
        if not registry.get(op).dense_layer:
            raise TransferError(f"{key}: a {op} reads the task one-hot; transfer can take the one-hot out of "
                                "linear layers only")
        if pname == "weight":
            return _split_task_rows(key, src, param, src_segs[0], new_segs[0], task_rows)
    if tuple(src.shape) != tuple(param.shape):
        raise TransferError(f"{key} is {tuple(src.shape)} in the run but {tuple(param.shape)} here: the run was "
                            "trained with other observation or action sizes than this environment's")
    return src


def _split_task_rows(key: str, src: Tensor, param: Tensor, src_segs, new_segs,
                     task_rows: list[tuple[int, Tensor]]) -> Tensor:
    """A linear weight [E, copies, in, out]: input rows copied part by part; the one-hot's rows averaged."""
    out = torch.empty(param.shape, dtype=src.dtype)
    i = j = 0
    for (kind, ws), (_, wn) in zip(src_segs, new_segs):
        if kind == "task":
            out[:, :, j:j + wn] = src[:, :, i:i + ws].mean(2, keepdim=True)
            task_rows.append((j, src[:, :, i:i + ws].clone()))
        elif ws != wn:
            raise TransferError(f"{key}: input columns of width {ws} in the run but {wn} here: the run was "
                                "trained with other observation or action sizes than this environment's")
        else:
            out[:, :, j:j + wn] = src[:, :, i:i + ws]
        i, j = i + ws, j + wn
    if i != src.shape[2] or j != param.shape[2]:
        raise TransferError(f"{key} is {tuple(src.shape)} in the run but {tuple(param.shape)} here: the run was "
                            "trained with other observation or action sizes than this environment's")
    return out


class SubSpace:
    """The run's policy sub-space in the one-task actor: the point beta (on the simplex over the run's T
    tasks) is the actor with w = beta W and, where the actor reads the task one-hot, the input beta (the
    mixture of the source tasks' one-hots). beta = e_t is exactly the run's policy for task t."""

    def __init__(self, nets: AgentNets, W: Tensor, task_rows: dict[str, list[tuple[int, Tensor]]]):
        self.W = W.to(nets.bank_table)                                      # [T, K]
        self.params = dict(nets.actor.named_parameters(remove_duplicate=False))
        self.table_names = [n for n, p in self.params.items() if p is nets.bank_table]
        self.task_rows = {n: [(j, r.to(nets.bank_table)) for j, r in rows] for n, rows in task_rows.items()}
        self.centroid = torch.full_like(self.W[:, 0], 1 / self.W.shape[0])   # beta uniform: w = mean of W

    def draw(self, rng: np.random.Generator) -> Tensor:
        """beta uniform on the simplex: Dirichlet(1, ..., 1)."""
        return torch.as_tensor(rng.dirichlet(np.ones(self.W.shape[0])), dtype=self.W.dtype, device=self.W.device)

    def explore(self, episode: int, rng: np.random.Generator) -> Tensor:
        """The sub-space point of exploration episode `episode`: the T corners first (each source task's own
        policy, once), then uniform draws."""
        T = self.W.shape[0]
        return torch.eye(T, dtype=self.W.dtype, device=self.W.device)[episode] if episode < T else self.draw(rng)

    def w(self, beta: Tensor) -> Tensor:
        return (beta @ self.W).unsqueeze(0)

    def move_to(self, beta: Tensor) -> None:
        """Put the actor itself at the sub-space point beta (w and, where read, the one-hot input rows)."""
        with torch.no_grad():
            for name, value in self.point(beta).items():
                self.params[name].copy_(value)

    def point(self, beta: Tensor) -> dict[str, Tensor]:
        """Parameter overrides (for torch.func.functional_call on the actor) of the sub-space point beta."""
        out = dict.fromkeys(self.table_names, self.w(beta))
        for name, rows in self.task_rows.items():
            weight = self.params[name].detach().clone()
            for j, r in rows:
                weight[:, :, j] = torch.einsum("t,ekto->eko", beta, r)
            out[name] = weight
        return out


def new_w(nets: AgentNets) -> nn.Parameter:
    """The new task's composition row w, [1, K]: every transferred spec has one (`Source.check_actor`)."""
    if nets.bank_table is None:
        raise TransferError(NO_BANK)
    return nets.bank_table


def one_task_nets(spec: graphnet.Spec, obs_dim: int, act_dim: int, device: torch.device | str) -> AgentNets:
    """`build` for one task, with the critic's bank modules (if any) on a composition row of their own,
    so that value learning never moves the policy's w. The actor's row is `nets.bank_table`."""
    nets = build(spec, obs_dim, act_dim, 1, device=device)
    actor_ids = {id(m) for m in nets.actor.modules()}
    critic_ops = [m for m in (*nets.critic.modules(), *nets.critic_target.modules())
                  if isinstance(m, ParamOp) and m.sharing == "bank" and m.table is nets.bank_table
                  and id(m) not in actor_ids]
    if critic_ops:
        critic_w = nn.Parameter(torch.randn_like(new_w(nets)))
        for m in critic_ops:
            m.table = critic_w
    return nets


def load_transferred(run_dir: Path | str, obs_dim: int = 39, act_dim: int = 4,
                     device: torch.device | str = "cpu") -> AgentNets:
    """A transfer run's networks from its latest checkpoint (a plain `build` would tie the critic's w row
    to the policy's again and load one over the other)."""
    run_dir = Path(run_dir)
    cfg, saved = load_run_config(run_dir), checkpoint.load(run_dir)
    if not (run_dir / "transfer.json").exists() or saved is None:
        raise TransferError(f"{run_dir} is not a transfer run with a checkpoint")
    nets = one_task_nets(graphnet.load(cfg.spec, graphnet.Sizes(obs=obs_dim, act=act_dim, tasks=1),
                                       **cfg.overrides), obs_dim, act_dim, device)
    nets.load_state_dict(saved["nets"])
    return nets


def transfer_nets(source: Source, obs_dim: int, act_dim: int,
                  device: torch.device) -> tuple[AgentNets, SubSpace, dict]:
    """The one-task agent: the run's actor (Phi and shared layers copied, frozen until `release_policy`), a new
    w at the centroid of W, a fresh critic; and the run's policy sub-space for exploring."""
    spec, state = source.spec, source.saved["nets"]
    g_src = spec.graph_for(obs_dim, act_dim, source.num_tasks)
    g_new = spec.graph_for(obs_dim, act_dim, 1)
    nets = one_task_nets(spec, obs_dim, act_dim, device)
    qualname = {id(m): name for name, m in nets.actor.named_modules()}
    actor_ops = {mid: op for mid, op in nets.op_modules.items() if id(op) in qualname}
    src_mods, new_mods = modules(g_src), modules(g_new)
    counts = {"bank": 0, "shared": 0}
    task_rows: dict[str, list[tuple[int, Tensor]]] = {}
    with torch.no_grad():
        for mid, op in actor_ops.items():
            src_segs, new_segs = _call_segments(g_src, mid), _call_segments(g_new, mid)
            m = src_mods[mid]
            for pname, param in op.params.items():
                name = f"{qualname[id(op)]}.params.{pname}"
                key = f"actor.{name}"
                if key not in state:
                    raise TransferError(f"the run's checkpoint has no {key}: it was not trained from this spec")
                shape = registry.get(m.op).shapes(m.widths, m.attrs)[pname].shape
                expected = (1, m.copies, *shape)
                if tuple(state[key].shape) != expected:
                    raise TransferError(f"{key} is {tuple(state[key].shape)} in the run, {expected} for this "
                                        "environment: the run was trained with other observation or action sizes")
                rows: list[tuple[int, Tensor]] = []
                param.copy_(_carry(key, pname, state[key], param, m.op, src_segs, new_segs, rows).to(param))
                if rows:
                    task_rows[name] = rows
                counts[new_mods[mid].sharing] += param.numel()
        for p in nets.actor.parameters():
            p.requires_grad_(p is nets.bank_table)
        space = SubSpace(nets, source.table, task_rows)
        w0 = space.w(space.centroid)                                         # the centroid of W
        new_w(nets).copy_(w0)
    critic_own_w = any(isinstance(m, ParamOp) and m.sharing == "bank" and m.table is not nets.bank_table
                       for m in nets.critic.modules())
    info = {"phi_params": counts["bank"], "shared_params": counts["shared"], "w_init": w0[0].tolist(),
            "K": int(new_w(nets).shape[1]), "critic_own_w": critic_own_w,
            "task_input_layers": sorted(task_rows)}
    return nets, space, info


# ------------------------------------------------------------------------------------------ the run
def transfer(run_dir: Path | str, task: str, steps: int = 200_000, explore_steps: int = EXPLORE_STEPS,
             out: Path | str | None = None, seed: int = 0, eval_every: int = 10_000, eval_episodes: int = 10,
             checkpoint_every: int = 50_000, device: str | None = None, quiet: bool = False,
             make_env: Callable[[int], TaskEnv] | None = None, start: str = "best",
             freeze_phi: bool = False) -> Path:
    """Transfer the run at `run_dir` to Meta-World task `task` (MT1:<task>); returns the new run directory.

    `steps` counts environment steps in all, the `explore_steps` of exploration included. `start`: "best"
    (w starts SAC at the best explored sub-space point) or "centroid" (at the mean of W). `freeze_phi`:
    the run's policy parameters stay fixed and only w learns (TaCo's Table V) instead of being fine-tuned
    with w after exploration (Algorithm 2). `make_env(seed)` replaces the Meta-World environment with a
    one-task environment of the same interface (tests)."""
    source = Source(Path(run_dir))
    source.check_actor()
    env_name = f"MT1:{task}"
    if make_env is None:
        task_names(env_name)                                   # an unknown task: did-you-mean, before anything
    out = Path(out) if out is not None else source.dir / f"transfer-{task}-s{seed}"
    if explore_steps < 0:
        raise TransferError(f"--explore-steps must be 0 or more, got {explore_steps}")
    if start not in ("best", "centroid"):
        raise TransferError(f"--start is best or centroid, not '{start}'")
    train_cfg = source.cfg.train.model_copy(update={"sampling": UniformSampling(), "w_reset": False,
                                                    "triplet": None, "pcgrad": False})
    cfg = RunConfig(spec=source.cfg.spec, overrides=source.cfg.overrides, env=env_name, steps=steps, seed=seed,
                    out=out, eval_every=eval_every, eval_episodes=eval_episodes, checkpoint_every=checkpoint_every,
                    warmup=explore_steps, buffer_size=source.cfg.buffer_size, device=device,
                    threads=source.cfg.threads, train=TrainConfig.model_validate(train_cfg.model_dump()))
    if explore_steps >= steps:
        raise TransferError(f"--explore-steps ({explore_steps:,}) must be below --steps ({steps:,}): the policy "
                            "learns w after exploring")
    if out.exists() and any(out.iterdir()):
        raise TransferError(f"{out} already holds files; choose another --out")
    return _run(source, cfg, quiet, make_env or (lambda s: MultiTaskEnv(env_name, s)), start, freeze_phi)


def release_policy(sac: SAC, nets: AgentNets) -> None:
    """Algorithm 2 after exploration: every actor parameter initialised from the run (Phi, shared layers, the
    one-hot input rows) learns with w, in a param group of the actor optimizer of its own. The critic's
    optimizer was built while they were frozen, so it never holds them, even where the critic reads them."""
    released = [p for p in nets.actor.parameters() if p is not nets.bank_table]
    for p in released:
        p.requires_grad_(True)
    sac.actor_opt.add_param_group({"params": released})
    sac.actor_params.extend(released)


def _run(source: Source, cfg: RunConfig, quiet: bool, make_env: Callable[[int], TaskEnv],
         start: str, freeze_phi: bool) -> Path:
    with ExitStack() as opened:   # what the set-up opens, closed here if it fails; by the loop once it runs
        env = SeedEnvs([opened.enter_context(closing(make_env(cfg.seed)))])
        eval_env = SeedEnvs([opened.enter_context(closing(make_env(cfg.seed + 1_000_003)))])
        if env.num_tasks != 1:
            raise TransferError(f"transfer learns one new task; the environment has {env.num_tasks}")
        device, rng = start_run(cfg)
        nets, space, info = transfer_nets(source, env.obs_dim, env.act_dim, device)
        spec, run_dir, tcfg = source.spec, cfg.out, cfg.train
        sac = SAC(nets, tcfg, env.act_dim)
        if len(sac.actor_params) != 1 or sac.actor_params[0] is not nets.bank_table:   # until exploration ends
            raise TransferError("internal: the actor optimizer would train more than w")
        replay = TaskReplay(1, min(cfg.buffer_size, cfg.steps), env.obs_dim, env.act_dim, device)
        taper = tcfg.replay if isinstance(tcfg.replay, TAPER) else None
        trees = TaskSumTrees.from_config(taper, 1, replay.capacity, device) if taper else None
        sampler = TaskSampler(1, tcfg.sampling, device)
        tasks = torch.zeros(1, dtype=torch.long, device=device)

        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_files(cfg, spec)
        meta = {"source": str(source.dir.resolve()), "source_step": source.step, "source_env": source.cfg.env,
                "source_tasks": source.task_names, "task": env.names[0], "explore_steps": cfg.warmup,
                "explore_w": "w~ = beta W, one beta per episode: the T corners e_t first, then beta ~ "
                             "Dirichlet(1, ..., 1) over the source tasks (the one-hot input, where the actor reads "
                             "one, is beta too)",
                "start": start, "phi": "frozen" if freeze_phi else "fine-tuned",
                "actor": "w (1 x K) learned; Phi (bank copies), shared layers and one-hot input rows: the run's, "
                         + ("frozen" if freeze_phi else "frozen while exploring, then fine-tuned with w"),
                "critic": "fresh: critic, target and temperature",
                "task_input": "starts as beta_start's mixture of the source tasks' one-hot rows",
                "source_w": source.table.tolist(), **info}
        write_json(run_dir / "transfer.json", meta)
        if not quiet:
            print(f"transfer {source.dir} (step {source.step:,}, {source.num_tasks} tasks) -> {env.names[0]}: "
                  f"Phi {info['phi_params']:,} and shared {info['shared_params']:,} actor parameters "
                  f"{'frozen' if freeze_phi else 'fine-tuned after exploration'}, w (1 x {info['K']}) learned, "
                  f"critic fresh; {cfg.warmup:,} steps of random sub-space exploration first")
        log = opened.enter_context(closing(RunLog(run_dir, env.names)))
        explored = opened.enter_context(closing(Exploration(space, rng, run_dir / "exploration.csv",
                                                            source.task_names)))

        def policy(o: np.ndarray, deterministic: bool, point: dict[str, Tensor] | None = None) -> np.ndarray:
            with torch.no_grad(), one_thread(device):
                x = torch.as_tensor(o, device=device)
                if point is None:
                    mean, log_std = nets.actor(x, tasks, task_major=True)
                else:   # pi_explore: the actor at a point of the sub-space, theta = Phi w~
                    mean, log_std = functional_call(nets.actor, point, (x, tasks, True))
                action = squashed_action(mean, log_std, deterministic)
            return action.cpu().numpy()

        def save(step: int, env_state: list | None) -> None:
            checkpoint.save(run_dir, {
                "step": step, "spec_hash": f"transfer:{spec.hash}", "nets": nets.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in sac.optimizers().items()},
                "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state},
                "env_state": env_state, "transfer": meta})

        def act(step: int, obs: np.ndarray) -> np.ndarray:
            """The exploration episode's sub-space policy, then (from the start point) the actor's own."""
            if step == cfg.warmup:                 # exploration over: SAC on w (and Phi) starts here
                beta_start = explored.best if start == "best" and explored.best is not None else space.centroid
                space.move_to(beta_start)
                if not freeze_phi:
                    release_policy(sac, nets)
                meta["w_start"], meta["beta_start"] = new_w(nets)[0].tolist(), beta_start.tolist()
                write_json(run_dir / "transfer.json", meta)
            return policy(obs, False, explored.point if step < cfg.warmup else None)

        def learn(step: int) -> Callable[[], dict[str, Tensor]]:
            def update() -> dict[str, Tensor]:   # while exploring, the value function and the temperature only
                batch = sample_batch(replay, trees, sampler, taper, tcfg.batch_per_task)
                out = sac.update(batch.with_seed_dim(), actor=step >= cfg.warmup)
                if trees is not None and taper is not None:
                    trees.update(batch.task, batch.index, out["td_error"][0] + taper.eps)
                return out
            return update

        def after_step(step: int, reward: np.ndarray, episode_over: bool) -> None:
            if step <= cfg.warmup:
                explored.record(step, float(reward[0]), episode_over or step == cfg.warmup)
                if episode_over and step < cfg.warmup:
                    explored.next_episode(step)

        def record(step: int, success: np.ndarray, metrics: dict[str, Tensor], pace: dict[str, float]) -> None:
            log_evaluation(success, [log], step, metrics, pace | {"w_norm": float(new_w(nets).detach().norm())})

        loop = Loop(env, Stepper(env, replay, trees, overlap=False), sac, steps=cfg.steps, run_dir=run_dir, act=act,
                    learn=learn, after_step=after_step, record=record, eval_every=cfg.eval_every, save=save,
                    record_episode=lambda step, returns, solved: log_episode([log], step, returns, solved),
                    evaluate=lambda step: evaluate_all(eval_env, policy, cfg, [cfg.seed]),
                    checkpoint_every=cfg.checkpoint_every, resume="transfer runs do not resume", quiet=quiet)
        opened.pop_all()
    loop.run(env.reset(seed=[cfg.seed]), closing=(log, explored, eval_env))
    return run_dir


class Exploration:
    """TaCo's exploration episodes: one sub-space point beta each (`SubSpace.explore`), their returns (a row
    each in exploration.csv), and the best point found (the highest mean reward per step), where SAC starts
    with start="best"."""

    def __init__(self, space: SubSpace, rng: np.random.Generator, path: Path, task_names: list[str]):
        self.space, self.rng = space, rng
        self.file = path.open("w", newline="")
        self.log = csv.writer(self.file)
        self.log.writerow(["episode", "step", "steps", "return", *(f"w_{k}" for k in range(space.W.shape[1])),
                           *(f"beta_{t}" for t in task_names)])
        self.episode, self.start, self.ret = 0, 0, 0.0
        self.beta = space.explore(0, rng)                       # a corner: no draw from rng
        self.point = space.point(self.beta)
        self.best: Tensor | None = None
        self.best_reward = -float("inf")

    def record(self, step: int, reward: float, ended: bool) -> None:
        """A step's reward; at the episode's end (or exploration's), the episode's row."""
        self.ret += reward
        if not ended:
            return
        if self.ret / (step - self.start) > self.best_reward:
            self.best_reward, self.best = self.ret / (step - self.start), self.beta
        self.log.writerow([self.episode, self.start, step - self.start, f"{self.ret:.4f}",
                           *(f"{v:.6f}" for v in (*self.space.w(self.beta)[0].tolist(), *self.beta.tolist()))])
        self.file.flush()

    def next_episode(self, step: int) -> None:
        self.episode, self.start, self.ret = self.episode + 1, step, 0.0
        self.beta = self.space.explore(self.episode, self.rng)
        self.point = self.space.point(self.beta)

    def close(self) -> None:
        self.file.close()
