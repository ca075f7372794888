"""`graphnet train`: multi-task SAC on Meta-World for any spec. The loop reads top to bottom.

Everything that can be wrong is checked before the first step: the spec, its fit to the
environment, the config, the run directory. Checkpoints land at episode ends (every environment's
random state is saved there), so a resumed run continues exactly; SIGINT/SIGTERM write a
checkpoint before exiting. A run whose updates keep meeting NaN or inf stops at an episode end,
before its next checkpoint, so the last one on disk stays the last good one.

One loop trains one seed or a group of seeds as one agent (`--seeds`, runtime/seeds.py): every array of
the loop holds the seeds' rows one after the other, and each seed writes a run directory of its own.
The environments step in this process or in workers (`--env-workers`, runtime/workers.py), and the
update runs after the step or during it (`--overlap`). The loop itself is runtime/loop.py's, which transfer and
bench --train run too.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor

import graphnet

from ..compiler import AgentNets
from ..compiler.build import resolve_device
from ..errors import RunError
from ..ir import info, nodes, reads_metadata
from ..train_config import TAPER
from . import checkpoint
from .config import RunConfig
from .envs import SeedEnvs, TaskEnv, default_workers, make_envs, seed_workers, task_names
from .evaluate import MetaWorldEvaluation, evaluate
from .graphed import GraphedUpdate, graph_blocker
from .logs import RunLog, versions, write_json
from .loop import Loop, Stepper
from .prioritized import TaskSumTrees
from .replay import Batch, TaskReplay
from .sac import SAC, squashed_action
from .schemes import TaskSampler
from .seeds import SeedGroup


def load_run_config(run_dir: Path) -> RunConfig:
    if not (run_dir / "config.json").is_file():
        raise RunError(f"{run_dir} is not a graphnet run directory (no config.json)")
    return RunConfig.model_validate_json((run_dir / "config.json").read_text())


def check(cfg: RunConfig, resume: bool, sizes: graphnet.Sizes | None = None) -> graphnet.Spec:
    """Fail before anything starts: the spec, its fit to the environment, the run directory."""
    sizes = sizes or graphnet.Sizes(obs=39, act=4, tasks=len(task_names(cfg.env)))
    spec = graphnet.load(cfg.spec, sizes, **cfg.overrides)
    g = spec.graph_for(sizes.obs, sizes.act, sizes.tasks)
    if reads_metadata(nodes(g)):
        raise RunError(f"{cfg.spec} reads meta(task), but Meta-World ships no task description embeddings; "
                       "use a learned task embedding (for care: --set ctx=learned)")
    if cfg.train.sampling.kind == "taco" and info(g).bank is None:
        raise RunError("sampling = taco clusters the tasks' composition weights w, but the spec has no bank(K)")
    if cfg.seeds and (cfg.train.replay.kind == "taper" or cfg.train.sampling.kind == "taco"):
        kind = "replay = taper(...)" if cfg.train.replay.kind == "taper" else "sampling = taco(...)"
        raise RunError(f"--seeds trains the seeds' updates as one, on one task layout for all, but {kind} draws "
                       "each seed's tasks its own way; run the seeds one by one (graphnet sweep --seeds N)")
    if cfg.cuda_graph and (why := graph_blocker(resolve_device(cfg.device), cfg.train)):
        raise RunError(f"--cuda-graph: {why}; run without it")
    check_run_dir(cfg, resume)
    return spec


def make_update(sac: SAC, cfg: RunConfig, device: torch.device, obs_dim: int, act_dim: int) -> Callable:
    """`sac.update`, captured as a CUDA graph unless the run says no or cannot (see graph_blocker)."""
    if cfg.cuda_graph is False or graph_blocker(device, cfg.train):
        return sac.update
    try:
        return GraphedUpdate(sac, cfg.train.batch_per_task, obs_dim, act_dim)
    except RuntimeError as e:
        raise RunError(f"the update could not be captured as a CUDA graph ({e}); run with --no-cuda-graph") from e


def check_run_dir(cfg: RunConfig, resume: bool) -> None:
    if not resume and cfg.out.exists() and any(cfg.out.iterdir()):
        raise RunError(f"{cfg.out} already holds files; pass --resume {cfg.out} to continue it, or choose --out")


def seed_configs(cfg: RunConfig) -> list[RunConfig]:
    """Each seed's own run: the run itself, or for a group (`seeds`) one run per seed in OUT/seed_<s>."""
    if not cfg.seeds:
        return [cfg]
    return [cfg.model_copy(update={"seed": s, "seeds": None, "out": cfg.out / f"seed_{s}"}) for s in cfg.seeds]


def read_checkpoints(runs: list[RunConfig]) -> list[checkpoint.Found] | None:
    """Each seed's latest checkpoint, all of one step (the newest every seed has: a group killed while saving
    may have written some seeds' files only); None for a fresh start."""
    found = [checkpoint.read_latest(r.out) for r in runs]
    if all(f is None for f in found):
        return None
    if any(f is None for f in found):
        missing = [str(r.out) for r, f in zip(runs, found) if f is None]
        raise RunError(f"{', '.join(missing)} of this group of seeds has no checkpoint, the others have: "
                       "the group cannot resume together")
    step = min(f.state["step"] for f in found if f is not None)
    at_step = [f if f is not None and f.state["step"] == step else checkpoint.read_latest(r.out, at_most=step)
               for r, f in zip(runs, found)]
    if any(f is None or f.state["step"] != step for f in at_step):
        raise RunError(f"the seeds of this group have no checkpoint of one step in common (step {step:,} missing "
                       "in some); resume the seeds' directories one by one")
    return cast(list[checkpoint.Found], at_step)


def train(cfg: RunConfig, resume: bool = False, quiet: bool = False,
          make_env: Callable[[int], TaskEnv] | None = None, cores: int | None = None) -> Path:
    """Run (or resume) training: one seed, or a group of seeds (`cfg.seeds`) trained as one agent, each seed in
    a run directory of its own. `make_env(seed)` replaces the Meta-World environments (tests use a small
    problem of their own with the same interface). `cores`: the cores the run may use, where it shares the
    machine (a sweep's run), for its default number of environment workers."""
    check_run_dir(cfg, resume)  # before the environments, which take seconds to build
    runs = seed_configs(cfg)
    found = read_checkpoints(runs) if resume else None
    saved = found[0].state if found else None
    if saved is not None and str(saved["spec_hash"]).startswith("transfer:"):
        raise RunError(f"{cfg.out} is a transfer run (graphnet transfer): its networks are one task's, and its "
                       "critic keeps a w row of its own; it is not resumed with graphnet train")
    if saved is not None and saved["step"] >= cfg.steps:
        raise RunError(f"{cfg.out} is at step {saved['step']:,} already, not short of --steps {cfg.steps:,}: "
                       f"nothing to do (pass --steps above {saved['step']:,} to extend it)")
    if cfg.env_workers is None:
        cuda = resolve_device(cfg.device).type == "cuda"
        workers = default_workers(len(task_names(cfg.env)) * len(runs), cores, cuda)
    else:
        workers = cfg.env_workers
    per_seed = seed_workers(workers, len(runs))
    make_env = make_env or (lambda seed: make_envs(cfg.env, seed, per_seed))
    with ExitStack() as opened:   # what the set-up opens, closed here if it fails; by the loop once it runs
        env = SeedEnvs([opened.enter_context(closing(make_env(r.seed))) for r in runs])
        if cfg.eval_protocol == "metaworld":
            eval_env: SeedEnvs | list[MetaWorldEvaluation] = [
                opened.enter_context(closing(MetaWorldEvaluation(cfg.env, r.seed + 1_000_003, workers > 0)))
                for r in runs]
        else:
            eval_env = SeedEnvs([opened.enter_context(closing(make_env(r.seed + 1_000_003))) for r in runs])
        spec = check(cfg, resume, graphnet.Sizes(obs=env.obs_dim, act=env.act_dim, tasks=env.num_tasks))
        if resume and saved is not None and saved["spec_hash"] != spec.hash:
            raise RunError(f"the spec changed since this run started (hash {saved['spec_hash']}, now {spec.hash})")
        device, _ = start_run(cfg)
        seeds = [r.seed for r in runs]
        rngs = [np.random.default_rng(seed) for seed in seeds]

        # --- the run: environments, networks (one seed, or a group as one), SAC, replay, task sampling -------
        T, S = env.num_tasks, len(runs)
        group = SeedGroup(spec, env.obs_dim, env.act_dim, T, seeds, device)
        nets = group.nets
        sac = SAC(nets, cfg.train, env.act_dim)
        replay = TaskReplay(S * T, cfg.buffer_size, env.obs_dim, env.act_dim, device)   # rows: seed-major tasks
        taper = cfg.train.replay if isinstance(cfg.train.replay, TAPER) else None        # one seed only (check)
        trees = TaskSumTrees.from_config(taper, T, replay.capacity, device) if taper else None
        sampler = TaskSampler(T, cfg.train.sampling, device)
        step, refill_until, env_state = 0, 0, None

        for r in ([cfg] if cfg.seeds else []) + runs:   # a group's directory, then each seed's
            r.out.mkdir(parents=True, exist_ok=True)
            if found is None:
                write_run_files(r, spec)
            else:   # as resumed (--steps, ...), so that a plain --resume goes on to its new end
                write_config(r)
        if found is not None:
            states = [f.state for f in found]
            step = states[0]["step"]
            nets.load_state_dict(group.stack_states([st["nets"] for st in states]))
            opts = group.stack_optimizers([st["optimizers"] for st in states], sac)
            for name, opt in sac.optimizers().items():
                opt.load_state_dict(opts[name])
            torch.set_rng_state(states[0]["rng"]["torch"])
            for rng, st in zip(rngs, states):
                rng.bit_generator.state = st["rng"]["numpy"]
            sampler.load_state_dict(states[0]["sampler"] if "sampler" in states[0] else
                                    {"groups": states[0]["sampler_groups"]})
            env_states = [st["env_state"] for st in states]   # None: saved mid-episode, which restarts it
            env_state = None if any(e is None for e in env_states) else env_states
            kept = all("replay" in st for st in states)
            if kept:
                replay.load_state_dict(group.stack_replays([st["replay"] for st in states]))
                if trees is not None:
                    trees.load_state_dict(states[0]["trees"] if isinstance(states[0]["trees"], dict) else
                                          {"tree": states[0]["trees"], "max_leaf": states[0]["max_leaf"]})
            else:
                refill_until = step + cfg.warmup
            print(f"resuming {cfg.out} at step {step:,} of {cfg.steps:,} from checkpoints/{found[0].path.name}"
                  + (f" ({S} seeds)" if cfg.seeds else "")
                  + ("" if kept else f" (replay not saved: refilling {cfg.warmup:,} steps first)"))
            for why in (w for f in found for w in f.skipped):
                print(f"  a newer checkpoint could not be read and was passed over: {why}")
        update = make_update(sac, cfg, device, env.obs_dim, env.act_dim)   # after the checkpoint: captures its state
        logs = [opened.enter_context(closing(RunLog(r.out, env.names, resume_step=step if saved else None)))
                for r in runs]
        if env_state is not None:
            env.set_state(env_state)
        obs = env.reset(seed=seeds if env_state is None else None)

        policy = group_policy(nets, S, T, device)

        def save(step: int, env_state: list | None) -> None:
            nets_state = nets.state_dict()
            opts = {k: o.state_dict() for k, o in sac.optimizers().items()}
            replay_state = replay.state_dict() if cfg.save_replay else None
            for i, r in enumerate(runs):
                state = {"step": step, "spec_hash": spec.hash, "nets": group.seed_state(nets_state, i),
                         "optimizers": group.seed_optimizers(opts, sac, i),
                         "rng": {"torch": torch.get_rng_state(), "numpy": rngs[i].bit_generator.state},
                         "sampler": sampler.state_dict(), "env_state": None if env_state is None else env_state[i],
                         "overlap": overlap}
                if cfg.seeds:
                    state["group"] = {"seeds": cfg.seeds}
                if replay_state is not None:
                    state["replay"] = group.seed_replay(replay_state, i)
                    if trees is not None:
                        state["trees"] = trees.state_dict()
                checkpoint.save(r.out, state)

        def act(step: int, obs: np.ndarray) -> np.ndarray:
            return env.random_actions(rngs) if step < cfg.warmup else policy(obs, False)

        def learn_step() -> dict[str, Tensor]:
            batch = group.batch(sample_batch(replay, trees, sampler, taper, cfg.train.batch_per_task, S))
            out = update(batch)
            if trees is not None and taper is not None:
                trees.update(batch.task, batch.index[0], out["td_error"][0] + taper.eps)
            return out

        def after_step(step: int, reward: np.ndarray, episode_over: bool) -> None:
            # taco sampling regroups by w: the spec check refuses it without a bank, and for a group
            if sampler.every and step % sampler.every == 0 and nets.bank_table is not None:
                sampler.regroup(nets.bank_table.detach())

        if cfg.overlap is not None:
            overlap = cfg.overlap
        else:   # with workers; a resumed run keeps the mode it ran in, whatever its workers are now
            overlap = bool(saved["overlap"]) if saved is not None and "overlap" in saved else workers > 0
        loop = Loop(env, Stepper(env, replay, trees, overlap), sac, steps=cfg.steps, run_dir=cfg.out, act=act,
                    learn=lambda step: learn_step if step + 1 >= max(cfg.warmup, refill_until) else None,
                    after_step=after_step, evaluate=lambda step: evaluate_all(eval_env, policy, cfg, seeds),
                    record=lambda step, success, metrics, pace: log_evaluation(success, logs, step, metrics, pace),
                    record_episode=lambda step, returns, solved: log_episode(logs, step, returns, solved),
                    eval_every=cfg.eval_every, save=save, checkpoint_every=cfg.checkpoint_every,
                    resume=f"continue with: graphnet train --resume {cfg.out}", quiet=quiet)
        opened.pop_all()
    loop.run(obs, step, env_state, closing=(*logs, *(eval_env if isinstance(eval_env, list) else [eval_env])))
    return cfg.out


def group_policy(nets: AgentNets, seeds: int, tasks: int, device: torch.device
                 ) -> Callable[[np.ndarray, bool], np.ndarray]:
    """Every seed's actions for observations `[seeds * tasks, obs]` (seed-major), the mean's or sampled."""
    task_ids = torch.arange(tasks, device=device)

    def policy(o: np.ndarray, deterministic: bool) -> np.ndarray:
        with torch.no_grad(), one_thread(device):
            x = torch.as_tensor(o, device=device).view(seeds, tasks, -1)
            mean, log_std = nets.actor(x, task_ids, task_major=True)
            action = squashed_action(mean, log_std, deterministic)
        return action.reshape(seeds * tasks, -1).cpu().numpy()
    return policy


def start_run(cfg: RunConfig) -> tuple[torch.device, np.random.Generator]:
    """What every run sets first: torch's threads, gymnasium's warnings off, the device, seeded generators."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    warnings.filterwarnings("ignore", module="gymnasium")
    torch.manual_seed(cfg.seed)
    return resolve_device(cfg.device), np.random.default_rng(cfg.seed)


def evaluate_all(eval_env: SeedEnvs | list[MetaWorldEvaluation], policy: Callable[[np.ndarray, bool], np.ndarray],
                 cfg: RunConfig, seeds: list[int]) -> np.ndarray:
    """Every seed's success rate per task (seed-major rows), by graphnet's evaluation or Meta-World's protocol
    (one per seed: its rows filled in, the others zero)."""
    if isinstance(eval_env, SeedEnvs):
        return evaluate(lambda o: policy(o, True), eval_env, cfg.eval_episodes, seeds)
    T, S = len(eval_env[0].names), len(eval_env)

    def seed_policy(i: int) -> Callable[[np.ndarray], np.ndarray]:
        def act(o: np.ndarray) -> np.ndarray:
            rows = np.zeros((S * T, o.shape[1]), np.float32)
            rows[i * T:(i + 1) * T] = o
            return policy(rows, True)[i * T:(i + 1) * T]
        return act
    return np.concatenate([protocol(seed_policy(i), cfg.eval_episodes) for i, protocol in enumerate(eval_env)])


def log_evaluation(success: np.ndarray, logs: list[RunLog], step: int, metrics: dict[str, Tensor],
                   extra: dict[str, float] | None = None) -> None:
    """Log each seed's success (`success` seed-major rows) and training metrics (one value per seed)."""
    T = len(success) // len(logs)
    for i, log in enumerate(logs):
        log.evaluation(step, success[i * T:(i + 1) * T])
        log.scalars(step, {k: float(v[i].float().mean()) for k, v in metrics.items()} | (extra or {}))


def log_episode(logs: list[RunLog], step: int, returns: np.ndarray, solved: np.ndarray) -> None:
    """Log each seed's training episode that ended at `step`: its mean return and success over the tasks."""
    T = len(returns) // len(logs)
    for i, log in enumerate(logs):
        rows = slice(i * T, (i + 1) * T)
        log.scalars(step, {"episode_return": float(returns[rows].mean()),
                           "episode_success": float(solved[rows].mean())})


def write_config(cfg: RunConfig) -> None:
    """The run's config.json, which `load_run_config` reads back."""
    write_json(cfg.out / "config.json", cfg.model_dump(mode="json"))


def write_run_files(cfg: RunConfig, spec: graphnet.Spec) -> None:
    """What makes a directory a run: its config, the versions it ran with, and the spec as it was."""
    write_config(cfg)
    write_json(cfg.out / "versions.json", versions())
    write_json(cfg.out / "spec.json", {"hash": spec.hash, "values": spec.values, "sources": spec.sources})
    (cfg.out / "spec.gn").write_text(spec.sources[spec.path])


@contextmanager
def one_thread(device: torch.device):
    """Acting and evaluation forward one sample per task: on a CPU, more threads only add synchronisation
    (measured: 0.2-1 ms per forward on one thread, 20-100 ms on two when the machine is busy)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sample_batch(replay: TaskReplay, trees: TaskSumTrees | None, sampler: TaskSampler, taper, per_task: int,
                 seeds: int = 1) -> Batch:
    """Uniform and task-major by default; TA-PER and task sampling give each task its own share. A group's
    replay holds `seeds` x T task rows: each seed draws the same shares (SeedGroup.batch splits them)."""
    if trees is not None:
        T = replay.num_tasks
        k = trees.counts(T * per_task, taper.kmin, taper.kmax)
        sizes = torch.full((T,), replay.size, device=replay.device)
        task, index, weight = trees.sample(k, sizes)
        return replay.gather(task, index, task_major=False, weight=weight.to(replay.obs.dtype))
    if sampler.kind != "uniform":
        return replay.sample(sampler.batch_counts(sampler.num_tasks * per_task).repeat(seeds))
    return replay.sample(per_task)


def bench_train(cfg: RunConfig, steps: int = 200, seeds: int = 1, workers: int = 0, overlap: bool = False) -> dict:
    """Vector steps/s and where the time goes (the update, acting, the rest: stepping the environments and
    storing), on a short real run of train's loop: `seeds` seeds trained as one (seed_steps_per_s counts each
    seed's vector steps), the environments in this process or in `workers` worker processes (split over the
    seeds as train splits them), the update after the step or during it (`overlap`: then env time is only what
    the update did not hide)."""
    spec = check(cfg, resume=True)
    device, _ = start_run(cfg)
    per_seed = seed_workers(workers, seeds)
    env = SeedEnvs([make_envs(cfg.env, cfg.seed + i, per_seed) for i in range(seeds)])
    T = env.num_tasks
    group = SeedGroup(spec, env.obs_dim, env.act_dim, T, [cfg.seed + i for i in range(seeds)], device)
    sac = SAC(group.nets, cfg.train, env.act_dim)
    update = make_update(sac, cfg, device, env.obs_dim, env.act_dim)
    replay = TaskReplay(seeds * T, steps + 1, env.obs_dim, env.act_dim, device)
    policy = group_policy(group.nets, seeds, T, device)
    spent = {"update": 0.0, "act": 0.0}

    def timed(part: str, fn: Callable) -> Callable:
        def call(*args):
            start = time.perf_counter()
            out = fn(*args)
            spent[part] += time.perf_counter() - start
            return out
        return call

    def learn() -> dict[str, Tensor]:
        metrics = update(group.batch(replay.sample(cfg.train.batch_per_task)))
        metrics["critic_loss"].sum().item()  # wait for the device
        return metrics

    def step_ended(step: int, reward: np.ndarray, episode_over: bool) -> None:
        spent["end"] = time.perf_counter()
    obs = env.reset(seed=[cfg.seed + i for i in range(seeds)])
    timed_learn = timed("update", learn)
    loop = Loop(env, Stepper(env, replay, None, overlap), sac, steps=steps, run_dir=cfg.out,
                act=timed("act", lambda step, o: policy(o, False)), learn=lambda step: timed_learn,
                after_step=step_ended, quiet=True)
    start = time.perf_counter()
    loop.run(obs)
    t_all = spent["end"] - start
    t_env = t_all - spent["update"] - spent["act"]
    updates = steps - 1 if overlap else steps
    return {"spec": cfg.spec, "env": cfg.env, "tasks": T, "seeds": seeds, "env_workers": per_seed * seeds,
            "overlap": overlap, "device": str(device), "cuda_graph": isinstance(update, GraphedUpdate),
            "env_steps_per_s": steps * seeds * T / t_env, "updates_per_s": updates / spent["update"],
            "steps_per_s": steps / t_all, "seed_steps_per_s": seeds * steps / t_all, "env_share": t_env / t_all,
            "act_share": spent["act"] / t_all, "update_share": spent["update"] / t_all}
