"""The run loop that train, transfer and bench --train share: act, step the environments (learning after the
step or while they step), evaluate, and at episode ends check for NaN streaks and checkpoint.

What differs between the three (how to act, what to learn, what to record after a step) comes in as
functions; the loop keeps the order of things, the signals (SIGINT/SIGTERM stop at the next step with a
checkpoint, or cut an evaluation short), the checkpoint of a run whose environment worker died, and the
closing of every environment, log and file, so that none of it is written twice.
"""
from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import EnvError, RunError
from . import checkpoint
from .envs import SeedEnvs
from .prioritized import TaskSumTrees
from .replay import TaskReplay
from .sac import SAC

NONFINITE_PATIENCE = 1_000   # updates in a row that lost a task or a step to NaN/inf before a run stops
LOGGED_BAR_S = 60.0   # the progress bar's refresh where stderr is a file (a scheduler's log), not a terminal:
                      # ten a second fill a day's log with megabytes of bars
Metrics = dict[str, Tensor]


class Stepper:
    """One vector step: step the environments with the actions, store the transition, and learn, after the
    step or, with `overlap`, while the environments step (on the replay one step older: the newest
    transition is stored after)."""

    def __init__(self, env: SeedEnvs, replay: TaskReplay, trees: TaskSumTrees | None, overlap: bool):
        self.env, self.replay, self.trees, self.overlap = env, replay, trees, overlap
        self.rows = torch.arange(replay.num_tasks, device=replay.device)

    def __call__(self, obs: np.ndarray, action: np.ndarray, learn: Callable[[], Metrics] | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, Metrics | None]:
        """-> next obs, reward, success, whether the episode is over, and the update's metrics (None: no
        update)."""
        metrics = None
        self.env.step_async(action)
        if learn is not None and self.overlap and self.replay.size:
            metrics = learn()
        next_obs, reward, terminated, over, success = self.env.step_wait()
        store(self.replay, self.trees, self.rows, obs, action, reward, next_obs, terminated)
        if learn is not None and not self.overlap:
            metrics = learn()
        return next_obs, reward, success, over, metrics


@dataclass
class Loop:
    """A run from `step` to `steps`. `act(step, obs)` gives the actions; `learn(step)` the update to run in
    that step, or None; `after_step(step, reward, episode_over)` records what a run keeps of a step;
    `record_episode(step, returns, solved)` logs each training episode as it ends (every row's return, and
    whether it succeeded at any step);
    `evaluate(step)` gives the success rates, every `eval_every` steps and at the end, and `record(step,
    success, metrics, pace)` logs them with the run's pace (`steps_per_s`: vector steps/s of training since the
    previous evaluation, evaluations apart; `evaluation_s`: this evaluation's seconds); `save(step, env_state)`
    checkpoints, with every environment's state at an episode end or None mid-episode. A loop without `save` (a
    benchmark) keeps nothing, so a signal stops it as it would any program, and prints nothing. `resume` says how
    to continue the run, for the messages of a stop."""
    env: SeedEnvs
    stepper: Stepper
    sac: SAC
    act: Callable[[int, np.ndarray], np.ndarray]
    learn: Callable[[int], Callable[[], Metrics] | None]
    steps: int
    run_dir: Path
    save: Callable[[int, list | None], None] | None = None
    checkpoint_every: int = 0
    evaluate: Callable[[int], np.ndarray] | None = None
    record: Callable[[int, np.ndarray, Metrics, dict[str, float]], None] | None = None
    eval_every: int = 0
    after_step: Callable[[int, np.ndarray, bool], None] | None = None
    record_episode: Callable[[int, np.ndarray, np.ndarray], None] | None = None
    resume: str = ""
    quiet: bool = False

    def run(self, obs: np.ndarray, step: int = 0, env_state: list | None = None, closing: tuple[Any, ...] = ()
            ) -> int:
        """Train to `steps` (or a signal) and return the step reached; closes the environments and `closing`."""
        bar = tqdm(total=self.steps, initial=step, unit="step", disable=self.quiet, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else LOGGED_BAR_S)
        every = self.checkpoint_every or self.steps + 1
        next_checkpoint = (step // every + 1) * every
        metrics: Metrics = {}
        cut_short = None    # the step whose evaluation a signal ended
        first, started = step, time.perf_counter()
        paced_from, evaluating = (step, started), 0.0   # training's pace is measured from the last evaluation's end
        returns, solved = np.zeros(len(obs)), np.zeros(len(obs), bool)   # runs start and resume with an episode
        with StopSignals(installed=self.save is not None) as stop:
            try:
                while step < self.steps and not stop:
                    action = self.act(step, obs)
                    obs, reward, reached, episode_over, learned = self.stepper(obs, action, self.learn(step))
                    metrics = learned if learned is not None else metrics
                    step += 1
                    returns += reward
                    solved |= reached
                    if self.after_step is not None:
                        self.after_step(step, reward, episode_over)
                    if self.evaluate is not None and (step % self.eval_every == 0 or step == self.steps):
                        begun = time.perf_counter()
                        try:
                            with stop.interruptible():   # evaluating can take minutes: a signal ends it at once
                                success = self.evaluate(step)
                        except Interrupted:
                            cut_short = step
                        else:
                            ended = time.perf_counter()
                            if self.record is not None:
                                self.record(step, success, metrics, {
                                    "steps_per_s": (step - paced_from[0]) / (begun - paced_from[1]),
                                    "evaluation_s": ended - begun})
                            bar.set_postfix(success=f"{success.mean():.2f}")
                            paced_from = (step, ended)
                        evaluating += time.perf_counter() - begun
                    if episode_over:   # the only point whose environment state a checkpoint can restore
                        if self.record_episode is not None:
                            self.record_episode(step, returns, solved)
                        returns, solved = np.zeros_like(returns), np.zeros_like(solved)
                        stop_if_nonfinite(self.sac, self.env.names, step, self.run_dir)
                        env_state = self.env.get_state()
                        if self.save is not None and step >= next_checkpoint:
                            self.save(step, env_state)
                            next_checkpoint += every
                        obs = self.env.reset()
                    bar.update(1)
                stop_if_nonfinite(self.sac, self.env.names, step, self.run_dir)
                if self.save is not None:
                    self.save(step, env_state)
            except EnvError as e:   # a worker died: keep what was learned; its episode cannot be restored
                if self.save is None:
                    raise
                self.save(step, None)
                raise RunError(f"{e}\ncheckpoint written at step {step:,}; {self.resume} (the environments start "
                               "a fresh episode there)") from None
            finally:
                close_all(bar, self.env, *closing)
        if self.save is not None:
            print(pace_line(step - first, time.perf_counter() - started, evaluating))
        if stop:
            unlogged = "" if cut_short is None else f" (the evaluation at step {cut_short:,} was cut short: not logged)"
            print(f"{stop.names[0]}: checkpoint written at step {step:,}{unlogged}; {self.resume}")
        return step


def pace_line(steps: int, seconds: float, evaluating: float) -> str:
    """How fast the run trained: its vector steps over the time outside evaluations (checkpoints included)."""
    training = seconds - evaluating
    rate = f"{steps / training:,.1f} vector steps/s" if steps and training > 0 else "no steps"
    return f"{steps:,} steps in {seconds:,.1f} s: {rate} ({evaluating:,.1f} s of it in evaluations)"


def close_all(*things) -> None:
    """Close every environment, log and file of a run, each even where one before it fails."""
    errors = []
    for thing in things:
        try:
            thing.close()
        except Exception as e:  # noqa: BLE001 - the first one is raised after the rest are closed
            errors.append(e)
    if errors:
        raise errors[0]


def stop_if_nonfinite(sac: SAC, names: list[str], step: int, run_dir: Path) -> None:
    """Stop a run whose last NONFINITE_PATIENCE updates each lost a task or a step to NaN/inf (one host read,
    at episode ends). Nothing non-finite reached the weights, but the run is no longer learning those tasks.
    A group stops when any seed does (`run_dir` the group's directory)."""
    streak = int(sac.streak.max())
    if streak < NONFINITE_PATIENCE:
        return
    counts = sac.left_out.view(-1, len(names)).sum(0).tolist()
    worst = sorted((c, n) for c, n in zip(counts, names) if c)[::-1][:5]
    tasks = ", ".join(f"{n} ({c:,} updates)" for c, n in worst) or "no task; the gradients"
    latest = sorted(run_dir.glob(f"**/checkpoints/{checkpoint.LATEST}"))
    kept = (", ".join(f"{p.parent.relative_to(run_dir) / p.resolve().name}" for p in latest)
            + f" {'is' if len(latest) == 1 else 'are'} kept as the last good one") if latest else \
        "no checkpoint was written"
    raise RunError(f"stopped at step {step:,}: the last {streak:,} updates each met NaN or inf and left it out, in "
                   f"{tasks}; none reached the weights and {kept}. Check those tasks' rewards and observations "
                   "(or lower lr where the losses overflow)")


class Interrupted(BaseException):
    """A signal inside `StopSignals.interruptible()`; a BaseException, so that no `except Exception` keeps it."""


class StopSignals:
    """SIGINT/SIGTERM collected (once `installed`) instead of dying mid-update: the loop stops at the next step
    and checkpoints. Inside `interruptible()` a signal, or one already collected, also raises Interrupted there.
    True once a signal came; `names` are the signals'."""

    def __init__(self, installed: bool):
        self.installed, self._raise = installed, False
        self.names: list[str] = []
        self._previous: dict = {}

    def __bool__(self) -> bool:
        return bool(self.names)

    def __enter__(self) -> StopSignals:
        if self.installed:
            self._previous = {s: signal.signal(s, self._collect) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def _collect(self, sig: int, _frame) -> None:
        self.names.append(signal.Signals(sig).name)
        if self._raise:
            raise Interrupted

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.names:
            raise Interrupted
        self._raise = True
        try:
            yield
        finally:
            self._raise = False


def store(replay: TaskReplay, trees: TaskSumTrees | None, tasks: Tensor, *transition: np.ndarray) -> None:
    """One vector step (obs, action, reward, next_obs, terminated) into the replay, and its sum trees."""
    slot = replay.add(*(torch.as_tensor(x, device=replay.device, dtype=torch.float32) for x in transition))
    if trees is not None:
        trees.add(tasks, torch.full((len(tasks),), slot, device=replay.device))
