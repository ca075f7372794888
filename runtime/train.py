"""`graphnet train`: multi-task SAC on Meta-World for any spec. The loop reads top to bottom.

Everything that can be wrong is checked before the first step: the spec, its fit to the
environment, the config, the run directory. Checkpoints land at episode ends (every environment's
random state is saved there), so a resumed run continues exactly; SIGINT/SIGTERM write a
checkpoint before exiting. A run whose updates keep meeting NaN or inf stops at an episode end,
before its next checkpoint, so the last one on disk stays the last good one.
"""
from __future__ import annotations

import signal
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

import graphnet

from ..compiler import build
from ..compiler.build import resolve_device
from ..errors import RunError
from ..ir import nodes
from ..train_config import TAPER
from . import checkpoint
from .config import RunConfig
from .envs import MultiTaskEnv, task_names
from .evaluate import evaluate
from .graphed import GraphedUpdate, graph_blocker
from .logs import RunLog, versions, write_json
from .prioritized import TaskSumTrees
from .replay import TaskReplay
from .sac import SAC, squashed_sample
from .schemes import TaskSampler

NONFINITE_PATIENCE = 1_000   # updates in a row that lost a task or a step to NaN/inf before a run stops


def load_run_config(run_dir: Path) -> RunConfig:
    if not (run_dir / "config.json").is_file():
        raise RunError(f"{run_dir} is not a graphnet run directory (no config.json)")
    return RunConfig.model_validate_json((run_dir / "config.json").read_text())


def check(cfg: RunConfig, resume: bool, sizes: graphnet.Sizes | None = None) -> graphnet.Spec:
    """Fail before anything starts: the spec, its fit to the environment, the run directory."""
    sizes = sizes or graphnet.Sizes(obs=39, act=4, tasks=len(task_names(cfg.env)))
    spec = graphnet.load(cfg.spec, sizes, **cfg.overrides)
    g = spec.graph_for(sizes.obs, sizes.act, sizes.tasks)
    if any(n.op == "meta" for n in nodes(g)):
        raise RunError(f"{cfg.spec} reads meta(task), but Meta-World ships no task description embeddings; "
                       "use a learned task embedding (for care: --set ctx=learned)")
    if cfg.train.sampling.kind == "taco" and g.graph["bank"] is None:
        raise RunError("sampling = taco clusters the tasks' composition weights w, but the spec has no bank(K)")
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


def train(cfg: RunConfig, resume: bool = False, quiet: bool = False,
          make_env: Callable[[int], MultiTaskEnv] | None = None) -> Path:
    """Run (or resume) training. `make_env(seed)` replaces the Meta-World environments (tests use a small
    problem of their own with the same interface)."""
    check_run_dir(cfg, resume)  # before the environments, which take seconds to build
    run_dir = cfg.out
    found = checkpoint.read_latest(run_dir) if resume else None
    saved = found.state if found else None
    if saved is not None and str(saved["spec_hash"]).startswith("transfer:"):
        raise RunError(f"{run_dir} is a transfer run (graphnet transfer): its networks are one task's, and its "
                       "critic keeps a w row of its own; it is not resumed with graphnet train")
    if saved is not None and saved["step"] >= cfg.steps:
        raise RunError(f"{run_dir} is at step {saved['step']:,} already, not short of --steps {cfg.steps:,}: "
                       f"nothing to do (pass --steps above {saved['step']:,} to extend it)")
    make_env = make_env or (lambda seed: MultiTaskEnv(cfg.env, seed))
    env, eval_env = make_env(cfg.seed), make_env(cfg.seed + 1_000_003)
    spec = check(cfg, resume, graphnet.Sizes(obs=env.obs_dim, act=env.act_dim, tasks=env.num_tasks))
    if resume and saved is not None and saved["spec_hash"] != spec.hash:
        raise RunError(f"the spec changed since this run started (hash {saved['spec_hash']}, now {spec.hash})")
    device, rng = start_run(cfg)

    # --- the run: environments, networks, SAC, replay, task sampling ----------------------------
    T = env.num_tasks
    nets = build(spec, env.obs_dim, env.act_dim, T, device=device)
    sac = SAC(nets, cfg.train, env.act_dim)
    replay = TaskReplay(T, cfg.buffer_size, env.obs_dim, env.act_dim, device)
    taper = cfg.train.replay if isinstance(cfg.train.replay, TAPER) else None
    trees = TaskSumTrees.from_config(taper, T, replay.capacity, device) if taper else None
    sampler = TaskSampler(T, cfg.train.sampling, device)
    tasks = torch.arange(T, device=device)
    step, refill_until, env_state, metrics = 0, 0, None, {}

    run_dir.mkdir(parents=True, exist_ok=True)
    if found is None:
        write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
        write_json(run_dir / "versions.json", versions())
        write_json(run_dir / "spec.json", {"hash": spec.hash, "values": spec.values, "sources": spec.sources})
        (run_dir / "spec.gn").write_text(spec.sources[spec.path])
    else:
        saved = found.state
        step = saved["step"]
        nets.load_state_dict(saved["nets"])
        for name, opt in sac.optimizers().items():
            opt.load_state_dict(saved["optimizers"][name])
        torch.set_rng_state(saved["rng"]["torch"])
        rng.bit_generator.state = saved["rng"]["numpy"]
        sampler.groups = saved["sampler_groups"]
        env_state = saved["env_state"]
        if "replay" in saved:
            replay.load_state_dict(saved["replay"])
            if trees is not None:
                trees.tree, trees.max_leaf = saved["trees"].to(device), saved["max_leaf"].to(device)
        else:
            refill_until = step + cfg.warmup
        print(f"resuming {run_dir} at step {step:,} of {cfg.steps:,} from checkpoints/{found.path.name}"
              + ("" if "replay" in saved else f" (replay not saved: refilling {cfg.warmup:,} steps first)"))
        for why in found.skipped:
            print(f"  a newer checkpoint could not be read and was passed over: {why}")
    update = make_update(sac, cfg, device, env.obs_dim, env.act_dim)   # after the checkpoint: captures its state
    log = RunLog(run_dir, env.names, resume_step=step if saved else None)
    if env_state is not None:
        env.set_state(env_state)
    obs = env.reset(seed=cfg.seed if env_state is None else None)

    def policy(o: np.ndarray, deterministic: bool) -> np.ndarray:
        with torch.no_grad(), one_thread(device):
            mean, log_std = nets.actor(torch.as_tensor(o, device=device), tasks, task_major=True)
            action = torch.tanh(mean) if deterministic else squashed_sample(mean, log_std)[0]
        return action.cpu().numpy()

    def save(env_state: list | None) -> None:
        state = {"step": step, "spec_hash": spec.hash, "nets": nets.state_dict(),
                 "optimizers": {k: o.state_dict() for k, o in sac.optimizers().items()},
                 "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state},
                 "sampler_groups": sampler.groups, "env_state": env_state}
        if cfg.save_replay:
            state["replay"] = replay.state_dict()
            if trees is not None:
                state["trees"], state["max_leaf"] = trees.tree, trees.max_leaf
        checkpoint.save(run_dir, state)

    bar = tqdm(total=cfg.steps, initial=step, unit="step", disable=quiet, dynamic_ncols=True)
    next_checkpoint = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    with stop_signals() as stop:
        # --- the loop: act, store, learn, evaluate, checkpoint -----------------------------------
        try:
            while step < cfg.steps and not stop:
                action = env.random_actions(rng) if step < cfg.warmup else policy(obs, deterministic=False)
                next_obs, reward, terminated, episode_over, _ = env.step(action)
                store(replay, trees, tasks, obs, action, reward, next_obs, terminated)
                obs = next_obs
                step += 1

                if step >= max(cfg.warmup, refill_until):
                    batch = sample_batch(replay, trees, sampler, taper, cfg.train.batch_per_task)
                    metrics = update(batch)
                    if trees is not None and taper is not None:
                        trees.update(batch.task, batch.index, metrics["td_error"] + taper.eps)
                # taco sampling regroups by w: the spec check refuses it without a bank
                if sampler.every and step % sampler.every == 0 and nets.bank_table is not None:
                    sampler.regroup(nets.bank_table.detach())

                if step % cfg.eval_every == 0 or step == cfg.steps:
                    evaluate_and_log(policy, eval_env, cfg, log, step, metrics, bar)
                if episode_over:
                    stop_if_nonfinite(sac, env.names, step, run_dir)
                    obs, env_state, next_checkpoint = end_episode(env, step, next_checkpoint, cfg.checkpoint_every,
                                                                  save)
                bar.update(1)
            stop_if_nonfinite(sac, env.names, step, run_dir)
            save(env_state)
        finally:
            bar.close()
            log.close()
            env.close()
            eval_env.close()
    if stop:
        print(f"{stop[0]}: checkpoint written at step {step:,}; continue with: graphnet train --resume {run_dir}")
    return run_dir


def stop_if_nonfinite(sac: SAC, names: list[str], step: int, run_dir: Path) -> None:
    """Stop a run whose last NONFINITE_PATIENCE updates each lost a task or a step to NaN/inf (one host read,
    at episode ends). Nothing non-finite reached the weights, but the run is no longer learning those tasks."""
    streak = int(sac.streak)
    if streak < NONFINITE_PATIENCE:
        return
    counts = sac.left_out.tolist()
    worst = sorted((c, n) for c, n in zip(counts, names) if c)[::-1][:5]
    tasks = ", ".join(f"{n} ({c:,} updates)" for c, n in worst) or "no task; the gradients"
    latest = run_dir / "checkpoints" / checkpoint.LATEST
    kept = f"checkpoints/{latest.resolve().name} is kept as the last good one" if latest.exists() else \
        "no checkpoint was written"
    raise RunError(f"stopped at step {step:,}: the last {streak:,} updates each met NaN or inf and left it out, in "
                   f"{tasks}; none reached the weights and {kept}. Check those tasks' rewards and observations "
                   "(or lower lr where the losses overflow)")


def end_episode(env: MultiTaskEnv, step: int, next_checkpoint: int, every: int,
                save: Callable[[list], None]) -> tuple[np.ndarray, list, int]:
    """At an episode's end, the only point whose environment state a checkpoint can restore: checkpoint if
    one is due, then reset. Returns the new observation, that state and the next checkpoint's step."""
    env_state = env.get_state()
    if step >= next_checkpoint:
        save(env_state)
        next_checkpoint += every
    return env.reset(), env_state, next_checkpoint


def start_run(cfg: RunConfig) -> tuple[torch.device, np.random.Generator]:
    """What every run sets first: torch's threads, gymnasium's warnings off, the device, seeded generators."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    warnings.filterwarnings("ignore", module="gymnasium")
    torch.manual_seed(cfg.seed)
    return resolve_device(cfg.device), np.random.default_rng(cfg.seed)


@contextmanager
def stop_signals() -> Iterator[list[str]]:
    """Collect SIGINT/SIGTERM instead of dying mid-update: the loop stops at the next step and checkpoints."""
    stop: list[str] = []
    handlers = {s: signal.signal(s, lambda sig, _: stop.append(signal.Signals(sig).name))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def store(replay: TaskReplay, trees: TaskSumTrees | None, tasks: Tensor, *transition: np.ndarray) -> None:
    """One vector step (obs, action, reward, next_obs, terminated) into the replay, and its sum trees."""
    slot = replay.add(*(torch.as_tensor(x, device=replay.device, dtype=torch.float32) for x in transition))
    if trees is not None:
        trees.add(tasks, torch.full((len(tasks),), slot, device=replay.device))


def evaluate_and_log(policy: Callable[[np.ndarray, bool], np.ndarray], eval_env: MultiTaskEnv, cfg: RunConfig,
                     log: RunLog, step: int, metrics: dict[str, Tensor], bar: tqdm,
                     extra: dict[str, float] | None = None) -> None:
    success = evaluate(lambda o: policy(o, True), eval_env, cfg.eval_episodes, cfg.seed)
    log.evaluation(step, success)
    log.scalars(step, {k: float(v.float().mean()) for k, v in metrics.items()} | (extra or {}))
    bar.set_postfix(success=f"{success.mean():.2f}")


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


def sample_batch(replay: TaskReplay, trees: TaskSumTrees | None, sampler: TaskSampler, taper, per_task: int):
    """Uniform and task-major by default; TA-PER and task sampling give each task its own share."""
    T = replay.num_tasks
    if trees is not None:
        k = trees.counts(T * per_task, taper.kmin, taper.kmax)
        sizes = torch.full((T,), replay.size, device=replay.device)
        task, index, weight = trees.sample(k, sizes)
        return replay.gather(task, index, task_major=False, weight=weight.to(replay.obs.dtype))
    if sampler.kind != "uniform":
        return replay.sample(sampler.batch_counts(T * per_task))
    return replay.sample(per_task)


def bench_train(cfg: RunConfig, steps: int = 200) -> dict:
    """Env steps/s, updates/s and the share of time in the env vs the update, on a short real run."""
    spec = check(cfg, resume=True)
    device, _ = start_run(cfg)
    env = MultiTaskEnv(cfg.env, cfg.seed)
    nets = build(spec, env.obs_dim, env.act_dim, env.num_tasks, device=device)
    sac = SAC(nets, cfg.train, env.act_dim)
    update = make_update(sac, cfg, device, env.obs_dim, env.act_dim)
    replay = TaskReplay(env.num_tasks, steps + 1, env.obs_dim, env.act_dim, device)
    tasks = torch.arange(env.num_tasks, device=device)
    obs, t_env, t_update = env.reset(seed=cfg.seed), 0.0, 0.0
    for _ in range(steps):
        with torch.no_grad(), one_thread(device):
            action = squashed_sample(*nets.actor(torch.as_tensor(obs, device=device), tasks, True))[0].cpu().numpy()
        start = time.perf_counter()
        next_obs, reward, terminated, over, _ = env.step(action)
        t_env += time.perf_counter() - start
        replay.add(*(torch.as_tensor(x, device=device, dtype=torch.float32)
                     for x in (obs, action, reward, next_obs, terminated)))
        obs = env.reset() if over else next_obs
        start = time.perf_counter()
        metrics = update(replay.sample(cfg.train.batch_per_task))
        metrics["critic_loss"].item()  # wait for the device
        t_update += time.perf_counter() - start
    env.close()
    return {"spec": cfg.spec, "env": cfg.env, "tasks": env.num_tasks, "device": str(device),
            "cuda_graph": isinstance(update, GraphedUpdate),
            "env_steps_per_s": steps * env.num_tasks / t_env, "updates_per_s": steps / t_update,
            "steps_per_s": steps / (t_env + t_update), "env_share": t_env / (t_env + t_update),
            "update_share": t_update / (t_env + t_update)}
