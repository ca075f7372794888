"""The tasks' environments in worker processes (`--env-workers N`), several per worker when there are more
tasks than workers: MultiTaskEnv's interface, and exactly its transitions for the same seed.

Each worker builds its tasks' environments as Meta-World's own vector env builds them (one benchmark
sampled from the seed in the parent, each task's environment from it), so the workers together hold the
same environments a MultiTaskEnv holds. A step sends every worker its actions first and then collects,
so the workers step in parallel; `step_async`/`step_wait` let the run update its networks meanwhile.
Workers ignore SIGINT and SIGTERM (the run checkpoints and stops them), exit when the run's process is
gone, and a worker that dies or raises is one EnvError naming its tasks.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from gymnasium.spaces.utils import flatdim

from ..errors import EnvError
from .envs import EPISODE_STEPS, MultiTaskEnv, Step, TaskEnv, task_names, vector_step


def env_makers(env: str, seed: int) -> list[partial]:
    """One picklable maker per task, the environments `gym.make_vec("Meta-World/...", seed=seed)` builds."""
    import metaworld
    if env.startswith("MT1:"):
        one = metaworld.MT1(env[4:], seed=seed)
        return [partial(metaworld._init_each_env, env_cls=one.train_classes[env[4:]],
                        tasks=list(one.train_tasks), seed=seed, num_tasks=1)]
    bench = metaworld.MT10(seed=seed) if env == "MT10" else metaworld.MT50(seed=seed)
    classes = bench.train_classes
    return [partial(metaworld._init_each_env, env_cls=cls, tasks=[t for t in bench.train_tasks if t.env_name == name],
                    seed=seed, env_id=i, num_tasks=len(classes))
            for i, (name, cls) in enumerate(classes.items())]


def as_worker() -> None:
    """What a worker process sets first. Ctrl-C reaches the whole process group, and so does SIGTERM from a job
    scheduler: the run, not its workers, decides what they mean (a checkpoint, then it closes them; a worker
    whose run is gone exits by itself). Warnings are the run's to show, once."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    import warnings
    warnings.filterwarnings("ignore")


def built_as_worker(make: Callable[[], Any]) -> Any:
    """`make()` in a worker process of gymnasium's async vector env, set up as graphnet's workers are."""
    as_worker()
    return make()


def _serve(conn: Connection, makers: list[partial], first: int, parent: int) -> None:
    """A worker: build its environments, then answer the parent's commands until told to close."""
    as_worker()
    try:
        envs = [make() for make in makers]
        conn.send(("ok", (flatdim(envs[0].observation_space), flatdim(envs[0].action_space))))
        while True:
            while not conn.poll(1.0):
                if os.getppid() != parent:   # the run is gone: no orphans
                    return
            command, arg = conn.recv()
            if command == "close":
                return
            conn.send(("ok", _run(envs, command, arg, first)))
    except (EOFError, BrokenPipeError):
        return
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass


def _run(envs: list, command: str, arg: Any, first: int) -> Any:
    if command == "step":
        out = [env.step(a) for env, a in zip(envs, arg)]
        obs, reward, terminated, truncated, info = zip(*out)
        return (np.stack(obs), np.asarray(reward), np.asarray(terminated), np.asarray(truncated),
                np.asarray([i["success"] for i in info]))
    if command == "reset":   # a vector env's seeding: environment i (over all workers) gets seed + i
        return np.stack([env.reset(seed=None if arg is None else arg + first + i)[0] for i, env in enumerate(envs)])
    if command == "get_state":
        return [env.get_wrapper_attr("get_checkpoint")() for env in envs]
    if command == "set_state":
        for env in envs:
            env.get_wrapper_attr("load_checkpoint")(arg)
        return None
    raise ValueError(command)


class WorkerEnvs:
    """`num_tasks` environments in `workers` processes; task i is environment i, as in MultiTaskEnv."""

    def __init__(self, env: str, seed: int, workers: int):
        self.names = task_names(env)
        self.num_tasks, self.episode_steps, self.seed = len(self.names), EPISODE_STEPS, seed
        makers = env_makers(env, seed)
        self.slices = [s for s in np.array_split(np.arange(self.num_tasks), min(workers, self.num_tasks))]
        # fork, as gymnasium's async vector env on Linux: no re-import of the caller's script (spawn runs an
        # unguarded one again) and no pickling; the workers run numpy and MuJoCo only, never torch's threads
        ctx = mp.get_context("fork")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for tasks in self.slices:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(theirs, [makers[i] for i in tasks], int(tasks[0]), os.getpid()),
                               daemon=True, name=f"graphnet-env-{tasks[0]}")
            proc.start()
            theirs.close()
            self.conns.append(mine)
            self.procs.append(proc)
        try:
            self.obs_dim, self.act_dim = self._gather()[0]
        except BaseException:
            self.close()
            raise

    def _gather(self) -> list:
        """Every worker's answer to the command just sent, in task order; a dead or failing worker is an
        EnvError naming its tasks."""
        out = []
        for k, (conn, proc) in enumerate(zip(self.conns, self.procs)):
            try:
                while not conn.poll(1.0):
                    if not proc.is_alive():
                        raise self._died(k, f"exit code {proc.exitcode}")
                status, value = conn.recv()
            except (EOFError, OSError):   # the pipe broke: the worker is gone
                proc.join(5)
                raise self._died(k, f"exit code {proc.exitcode}") from None
            if status == "error":
                raise self._died(k, f"it raised:\n{value}")
            out.append(value)
        return out

    def _died(self, k: int, why: str) -> EnvError:
        tasks = ", ".join(self.names[i] for i in self.slices[k])
        return EnvError(f"environment worker {k} ({tasks}) failed: {why}")

    def _send(self, command: str, args: list | None = None) -> None:
        for k, conn in enumerate(self.conns):
            try:
                conn.send((command, None if args is None else args[k]))
            except (BrokenPipeError, OSError):   # the worker is gone
                self.procs[k].join(5)
                raise self._died(k, f"exit code {self.procs[k].exitcode}") from None

    def _command(self, command: str, args: list | None = None) -> list:
        self._send(command, args)
        return self._gather()

    def reset(self, seed: int | None = None) -> np.ndarray:
        return np.concatenate(self._command("reset", [seed] * len(self.conns))).astype(np.float32)

    def step(self, action: np.ndarray) -> Step:
        """As MultiTaskEnv.step."""
        self.step_async(action)
        return self.step_wait()

    def step_async(self, action: np.ndarray) -> None:
        """Start a step and return at once: the workers step while this process does something else."""
        self._send("step", [action[s] for s in self.slices])

    def step_wait(self) -> Step:
        """The step `step_async` started, as `step` returns it."""
        return vector_step(*(np.concatenate(x) for x in zip(*self._gather())))

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1, 1, (self.num_tasks, self.act_dim)).astype(np.float32)

    def get_state(self) -> list:
        return [s for part in self._command("get_state") for s in part]

    def set_state(self, state: list) -> None:
        self._command("set_state", [state] * len(self.conns))

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


def bench_stepping(env: str, seed: int, workers: int, steps: int) -> dict[str, float]:
    """Task-steps/s of stepping alone (random actions, no update), side by side: the environments in this
    process, in `workers` of graphnet's worker processes (several environments each), and in gymnasium's
    async vector env (a process and shared memory per environment): the measurement behind the workers."""
    def rate(envs: TaskEnv) -> float:
        rng = np.random.default_rng(seed)
        try:
            envs.reset(seed=seed)
            start = time.perf_counter()
            for _ in range(steps):
                envs.step_async(envs.random_actions(rng))
                _, _, _, episode_over, _ = envs.step_wait()
                if episode_over:
                    envs.reset()
            return steps * envs.num_tasks / (time.perf_counter() - start)
        finally:
            envs.close()
    in_process = rate(MultiTaskEnv(env, seed))
    ours, gym_async = rate(WorkerEnvs(env, seed, workers)), rate(MultiTaskEnv(env, seed, strategy="async"))
    return {"in_process": in_process, "workers": ours, "gym_async": gym_async,
            "workers_vs_in_process": ours / in_process, "workers_vs_gym_async": ours / gym_async}
