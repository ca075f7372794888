"""`graphnet sweep`: specs x variants x seeds, one ordinary training run per point, then a results table.

The grid is every spec times the cartesian product of the `--vary` lists (applied as param overrides,
like `--set`) times seeds 0..N-1. Each point is a normal run directory, DIR/runs/<spec>__<name>-<value>
__...__s<seed>/, so `graphnet plot` and `graphnet train --resume` work on it. Every point is checked
before anything starts. Re-running a sweep into the same DIR resumes the runs whose latest checkpoint
is short of `steps` and skips the finished ones.

Runs go to a local pool of processes (`spawn`), or to Ray (`ray_address`): one remote task per run, or
with `--pack-seeds` one per variant, whose seeds train as one group (`graphnet train --seeds`), each seed
in DIR/runs/<variant>__seeds/seed_<s>/.
A failing run is reported with its error, run directory and log (DIR/logs/<run>.log) and does not
stop the others. DIR/results.csv and DIR/results.md have one row per variant: the seeds finished, the
final and the best mean success, and the pace each run trained at (the median of its logged vector steps/s,
evaluations apart), each as mean ± standard error over seeds; DIR/curves.png draws one curve per variant.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import re
import signal
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
from pydantic import ValidationError

from .. import _spec
from .._spec import spec_value
from ..errors import GraphnetError, SpecErrors, SweepError
from ..matching import _safe
from . import checkpoint
from .config import RunConfig
from .envs import machine_cores
from .logs import read_scalars

# run-config fields a resumed sweep may change; any other difference from the stored config is an error
MAY_CHANGE = ("steps", "out", "device", "threads")
LOCAL_RAY = dict(num_cpus=2, include_dashboard=False)   # `--ray local`


@dataclass
class Point:
    """One run of the grid."""

    name: str                     # the run directory's name
    spec: str                     # the spec's file stem
    variant: dict[str, Any]       # the varied values
    seed: int
    cfg: RunConfig
    status: str = "start"         # start | resume | skip
    step: int = 0                 # the latest checkpoint's step
    group: Path | None = None     # packed (--pack-seeds): the directory of the variant's group of seeds

    @property
    def variant_name(self) -> str:
        return variant_name(self.spec, self.variant)

    @property
    def label(self) -> str:
        return ", ".join([self.spec] + [f"{k}={spec_value(v)}" for k, v in self.variant.items()])


def variant_name(stem: str, varied: dict[str, Any]) -> str:
    """<spec>__<name>-<value>__...: as `graphnet ablate` names its files."""
    return "__".join([stem] + [f"{k}-{_safe(v)}" for k, v in varied.items()])


@dataclass
class Outcome:
    point: Point
    ok: bool
    step: int = 0
    seconds: float = 0.0
    error: str = ""
    log: str = ""
    started: bool = True          # False: cancelled before it began (an interrupted sweep)

    @property
    def finished(self) -> bool:
        return self.ok and self.step >= self.point.cfg.steps


@dataclass
class Row:
    """One variant of the results table."""

    variant: str
    spec: str
    values: dict[str, Any]
    seeds: int                    # seeds whose run finished
    planned: int                  # seeds in the grid
    final: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    pace: list[float] = field(default_factory=list)   # each finished run's median train/steps_per_s


# --- the grid and its checks ---------------------------------------------------------------------

def plan(specs: list[str], vary: dict[str, list[Any]], seeds: int, out: Path, overrides: dict[str, Any] | None = None,
         train_updates: dict[str, Any] | None = None, pack_seeds: bool = False, **fields: Any) -> list[Point]:
    """Every point of the grid, each checked (spec, params, env, run directory) with runtime.train.check.
    Raises SweepError naming every bad variant, before anything is started or written.
    `fields` are RunConfig fields (env, steps, eval_every, ...); `train_updates` replace values of each
    spec's train section (lr, batch_per_task). `pack_seeds`: a variant's seeds train as one group in one
    process (`graphnet train --seeds`), each in DIR/runs/<variant>__seeds/seed_<s>/."""
    from .train import check, load_run_config
    overrides = dict(overrides or {})
    if not specs:
        raise SweepError("name at least one SPEC")
    if seeds < 1:
        raise SweepError(f"--seeds must be at least 1, got {seeds}")
    for name, values in vary.items():
        if not values:
            raise SweepError(f"--vary {name}= lists no values")
        if name in overrides:
            raise SweepError(f"{name} is both set (--set) and varied (--vary); drop one")
        if len(set(map(_safe, values))) < len(values):
            raise SweepError(f"--vary {name} lists a value twice")
    out = Path(out).resolve()
    problems: dict[str, list[str]] = {}       # message -> the variants or points it concerns
    variants: set[str] = set()
    points: list[Point] = []
    stems: dict[str, str] = {}
    for ref in specs:
        path = _spec.find_spec(ref)
        if path is None:                      # graphnet.load reports it, with a did-you-mean
            ref_used = ref
        else:                                 # a library name as it is, a file by its absolute path (workers
            library = "/" not in ref and path.resolve().parent == _spec.library_dir().resolve()   # anywhere)
            ref_used = ref if library else str(path.resolve())
        stem = Path(ref).stem if path is None else path.stem
        if stems.setdefault(stem, ref) != ref:
            raise SweepError(f"specs '{stems[stem]}' and '{ref}' would share run names ({stem}__...); "
                             "rename one of the files")
        for combo in itertools.product(*vary.values()):
            varied = dict(zip(vary, combo))
            vname = variant_name(stem, varied)
            variants.add(vname)
            try:
                spec = _spec.load(ref_used, **overrides, **varied)
                train = spec.train.model_dump() | dict(train_updates or {})
                base = RunConfig(spec=ref_used, overrides=overrides | varied, out=out, train=train, **fields)
            except (GraphnetError, ValidationError) as e:
                problems.setdefault(_message(e), []).append(vname)
                continue
            group = out / "runs" / f"{vname}__seeds" if pack_seeds and seeds > 1 else None
            mine: list[Point] = []
            for seed in range(seeds):
                name = f"{vname}__s{seed}"
                run_dir = out / "runs" / name if group is None else group / f"seed_{seed}"
                p = Point(name, stem, varied, seed, base.model_copy(update={"seed": seed, "out": run_dir}),
                          group=group)
                try:
                    _status(p, load_run_config)
                    checked = check(p.cfg, resume=p.status != "start")
                    _same_spec(p, checked.hash)
                except (GraphnetError, ValidationError) as e:
                    problems.setdefault(_message(e), []).append(name)
                    continue
                mine.append(p)
            if mine and group is not None:   # the group as one run: what --seeds refuses, a packed sweep does too
                try:
                    check(group_config(mine), resume=any(p.status != "start" for p in mine))
                except (GraphnetError, ValidationError) as e:
                    problems.setdefault(_message(e) + " (--pack-seeds)", []).append(vname)
                    continue
            points += mine
    if problems:
        raise SweepError(_render(problems, variants, seeds))
    return points


def group_config(points: list[Point]) -> RunConfig:
    """The one run that trains a packed variant's seeds."""
    assert points[0].group is not None, "a packed point"
    return points[0].cfg.model_copy(update={"seeds": [p.seed for p in points], "out": points[0].group})


@dataclass
class Job:
    """What one worker runs: a point's run, or a packed variant's group of seeds."""

    points: list[Point]
    cfg: RunConfig
    resume: bool
    log: str


def jobs(points: list[Point], out: Path) -> list[Job]:
    """One job per point to run; with packed seeds, one per variant with a seed to run (all its seeds train)."""
    groups: dict[Path, list[Point]] = {}
    for p in points:
        if p.group is not None:
            groups.setdefault(p.group, []).append(p)
    out_jobs = [Job([p], p.cfg, p.status == "resume", _log(out, p.name)) for p in points
                if p.group is None and p.status != "skip"]
    for group, members in groups.items():
        if any(p.status != "skip" for p in members):
            out_jobs.append(Job(members, group_config(members), any(p.status != "start" for p in members),
                                _log(out, group.name)))
    return out_jobs


def _message(e: Exception) -> str:
    if isinstance(e, SpecErrors):
        return e.render()
    if isinstance(e, ValidationError):
        return "; ".join(("--" + "-".join(map(str, err["loc"])).replace("_", "-") if err["loc"] else "config")
                         + ": " + err["msg"].removeprefix("Value error, ") for err in e.errors())
    return str(e)


def _render(problems: dict[str, list[str]], variants: set[str], seeds: int) -> str:
    grid = (variants, {f"{v}__s{i}" for v in variants for i in range(seeds)})
    if len(problems) == 1 and set(next(iter(problems.values()))) in grid:    # one reason, the whole grid
        return next(iter(problems)).removeprefix("error: ") + "\n(every point of the sweep; nothing was started)"
    lines = ["bad points in the sweep; nothing was started:"]
    for message, names in problems.items():
        lines.append(f"  {', '.join(names)}:\n    " + message.replace("\n", "\n    "))
    return "\n".join(lines)


def checkpoint_step(run_dir: Path) -> int:
    """The latest checkpoint's step (0 without one), read from its file name when it can be."""
    latest = run_dir / "checkpoints" / checkpoint.LATEST
    if latest.is_symlink():
        m = re.fullmatch(r"step_(\d+)\.pt", os.readlink(latest))
        if m:
            return int(m.group(1))
    if not latest.exists():
        return 0
    try:
        saved = checkpoint.load(run_dir)
        return int(saved["step"]) if saved else 0
    except Exception:  # noqa: BLE001 - unreadable: the run is not finished (resuming it reports the error)
        return 0


def _status(p: Point, load_run_config: Callable[[Path], RunConfig]) -> None:
    run_dir = p.cfg.out
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not (run_dir / "config.json").is_file():
        raise SweepError("its run directory holds files but is not a graphnet run directory (no config.json); "
                         "move them away or choose another -o")
    stored = _flat(load_run_config(run_dir).model_dump(mode="json", exclude=set(MAY_CHANGE)))
    wanted = _flat(p.cfg.model_dump(mode="json", exclude=set(MAY_CHANGE)))
    if stored != wanted:
        diff = ", ".join(f"{k} {stored.get(k)!r} (now {wanted.get(k)!r})"
                         for k in sorted(stored.keys() | wanted.keys()) if stored.get(k) != wanted.get(k))
        raise SweepError(f"its run directory was started with other options: {diff}; run the sweep with the same "
                         "options (only --steps may change), or choose another -o")
    p.step = checkpoint_step(run_dir)
    p.status = "skip" if p.step >= p.cfg.steps else "resume"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same_spec(p: Point, spec_hash: str) -> None:
    spec_json = p.cfg.out / "spec.json"
    if p.status != "start" and spec_json.is_file():
        before = json.loads(spec_json.read_text()).get("hash")
        if before != spec_hash:
            raise SweepError(f"the spec changed since its run started (hash {before}, now {spec_hash}); restore "
                             "it, or choose another -o")


# --- running ---------------------------------------------------------------------------------------

STOP_FILE = ".sweep-stop"    # in DIR while an interrupted sweep winds down: its runs checkpoint and stop


def run_one(cfg_json: str, resume: bool, log: str, threads: int, stop_file: str | None = None) -> dict:
    """One run, in a worker: train(cfg, quiet=True) with its output in `log`; never raises. Once `stop_file`
    exists the run stops as on Ctrl-C (a checkpoint, then it returns), or does not begin."""
    import torch
    from .train import train
    cfg = RunConfig.model_validate_json(cfg_json)
    if stop_file is not None and Path(stop_file).exists():
        return {"ok": True, "started": False}
    torch.set_num_threads(max(1, threads))
    resume = resume or (cfg.out / "config.json").is_file()        # a retried task continues its run
    start = time.perf_counter()
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None   # only train() listens
    finished = threading.Event()
    if stop_file is not None and main_thread:
        threading.Thread(target=_watch, args=(Path(stop_file), finished), daemon=True).start()
    try:
        with open(log, "a") as f, redirect_stdout(f), redirect_stderr(f):
            print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'} {cfg.out} "
                  f"(pid {os.getpid()}, torch threads: {max(1, threads)})", flush=True)
            try:
                train(cfg, resume=resume, quiet=True, cores=threads)   # its share, not the machine, sets env workers
            except BaseException as e:  # noqa: BLE001 - reported to the sweep, which goes on
                traceback.print_exc()
                error = str(e) if isinstance(e, GraphnetError) else f"{type(e).__name__}: {e}"
                return {"ok": False, "error": error or type(e).__name__, "seconds": time.perf_counter() - start}
    finally:
        finished.set()
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return {"ok": True, "seconds": time.perf_counter() - start}


def _watch(stop_file: Path, finished: threading.Event) -> None:
    """Once the sweep asks (its stop file exists), call train()'s SIGINT handler each second while it is in place:
    train() writes a checkpoint and returns. (interrupt_main, not kill: Ray's workers block SIGINT.)"""
    import _thread
    while not finished.wait(1):
        if stop_file.exists() and callable(signal.getsignal(signal.SIGINT)):
            _thread.interrupt_main(signal.SIGINT)


def _report(job: Job, result: dict, on_done: Callable[[Outcome], None]) -> None:
    """An outcome per point of a finished job, each with its run's latest checkpoint step."""
    for p in job.points:
        on_done(Outcome(p, result["ok"], checkpoint_step(p.cfg.out), result.get("seconds", 0.0),
                        result.get("error", ""), job.log, result.get("started", True)))


def _ignore_sigint() -> None:
    """Idle pool workers ignore Ctrl-C; a running train() installs its own handler (checkpoint, stop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_local(todo: list[Job], out: Path, workers: int, on_done: Callable[[Outcome], None],
              stop: threading.Event, on_stop: Callable[[], None] = lambda: None) -> bool:
    """A pool of `workers` spawned processes; returns False when `stop` was set (Ctrl-C, SIGTERM): then runs not
    started are cancelled and running ones write a checkpoint and stop."""
    import multiprocessing
    threads = max(1, machine_cores() // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_sigint)
    futures = {pool.submit(run_one, job.cfg.model_dump_json(), job.resume, job.log, threads,
                           str(out / STOP_FILE)): job for job in todo}
    pending = set(futures)
    try:
        while pending:
            done, _ = wait(pending, timeout=1, return_when=FIRST_COMPLETED)
            if stop.is_set() and not (out / STOP_FILE).exists():
                (out / STOP_FILE).touch()
                on_stop()
                for fut in pending:
                    fut.cancel()
            for fut in done | {f for f in pending if f.cancelled()}:
                pending.discard(fut)
                result: dict[str, Any]
                if fut.cancelled():
                    result = {"ok": True, "started": False}
                else:
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        result = {"ok": False, "error": "its worker process died (killed? out of memory?)"}
                    except Exception as e:  # noqa: BLE001
                        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                _report(futures[fut], result, on_done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return not stop.is_set()


def _log(out: Path, name: str) -> str:
    return str(out / "logs" / f"{name}.log")


def import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray, an optional dependency: pip install graphnet-rl[ray]  (or: pip install "
                         "'ray>=2.9')") from None
    return ray


def start_ray(address: str):
    """Connect to Ray: 'local' starts a Ray instance here (2 CPUs, no dashboard); 'auto' or an address
    joins a running cluster."""
    ray = import_ray()
    try:
        if address == "local":
            ray.init(**LOCAL_RAY)
        else:
            ray.init(address=address)
    except Exception as e:  # noqa: BLE001 - no cluster there, a bad address
        raise SweepError(f"--ray {address}: could not connect to Ray: {type(e).__name__}: {e}") from None
    return ray


def run_ray(ray, todo: list[Job], out: Path, cpus: float, gpus: float, on_done: Callable[[Outcome], None],
            stop: threading.Event, on_stop: Callable[[], None] = lambda: None) -> bool:
    """One remote task per job (num_cpus `cpus`, num_gpus `gpus`); returns False when `stop` was set: then
    running runs write a checkpoint and stop, and the others return without starting."""
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_one)
    threads = max(1, int(cpus))
    refs = {task.remote(job.cfg.model_dump_json(), job.resume, job.log, threads, str(out / STOP_FILE)): job
            for job in todo}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1, timeout=1)
        if stop.is_set() and not (out / STOP_FILE).exists():
            (out / STOP_FILE).touch()
            on_stop()
        for ref in done:
            job = refs.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a crashed worker or node
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                result = {"ok": False, "error": f"{type(e).__name__}: {first}"}
            _report(job, result, on_done)
    return not stop.is_set()


# --- results ---------------------------------------------------------------------------------------

def results(points: list[Point], out: Path) -> list[Row]:
    """Read every finished run's metrics.csv and logged pace; write DIR/results.csv, DIR/results.md and
    DIR/curves.png."""
    from .plot import plot, read_curve
    out = Path(out)
    rows: dict[str, Row] = {}
    curves: list[tuple[Path, str]] = []
    for p in points:
        row = rows.setdefault(p.variant_name, Row(p.variant_name, p.spec, p.variant, 0, 0))
        row.planned += 1
        if checkpoint_step(p.cfg.out) < p.cfg.steps:
            continue
        try:
            _, _, success = read_curve(p.cfg.out)
        except GraphnetError:
            continue
        row.seeds += 1
        row.final.append(float(success[-1]))
        row.best.append(float(success.max()))
        if paces := [v for _, v in read_scalars(p.cfg.out, "train/steps_per_s")]:
            row.pace.append(float(np.median(paces)))
        curves.append((p.cfg.out, p.label))
    table = list(rows.values())
    write_tables(table, out)
    if curves:
        plot([d for d, _ in curves], out / "curves.png", labels=[label for _, label in curves])
    elif (out / "curves.png").exists():
        (out / "curves.png").unlink()
    return table


def mean_stderr(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    a = np.asarray(values, dtype=float)
    return float(a.mean()), (float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None)


def _fmt(values: list[float], digits: int = 3) -> str:
    mean, err = mean_stderr(values)
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {err:.{digits}f}" if err is not None else "")


def write_tables(rows: list[Row], out: Path) -> None:
    names = list(dict.fromkeys(k for r in rows for k in r.values))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["spec", *names, "seeds", "final_mean", "final_stderr", "best_mean", "best_stderr",
                    "steps_per_s_mean", "steps_per_s_stderr", "variant"])
        for r in rows:
            stats = [*mean_stderr(r.final), *mean_stderr(r.best)]
            pace = mean_stderr(r.pace)
            w.writerow([r.spec, *(spec_value(r.values[k]) if k in r.values else "" for k in names), r.seeds,
                        *("" if s is None else f"{s:.4f}" for s in stats),
                        *("" if s is None else f"{s:.1f}" for s in pace), r.variant])
    lines = ["| spec | " + "".join(f"{k} | " for k in names) + "seeds | final success | best success | steps/s |",
             "|---|" + "---|" * len(names) + "---|---|---|---|"]
    for r in rows:
        seeds = f"{r.seeds}" if r.seeds == r.planned else f"{r.seeds} of {r.planned}"
        lines.append(f"| {r.spec} | " + "".join(f"{spec_value(r.values[k]) if k in r.values else ''} | " for k in names)
                     + f"{seeds} | {_fmt(r.final)} | {_fmt(r.best)} | {_fmt(r.pace, 1)} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


# --- the whole sweep -------------------------------------------------------------------------------

def sweep(points: list[Point], out: Path, workers: int = 1, ray_address: str | None = None, cpus_per_run: float = 1,
          gpus_per_run: float = 0, echo: Callable[[str], None] = print) -> tuple[list[Outcome], list[Row], bool]:
    """Run the points not yet finished (checked by `plan`), then write the results. Returns the outcomes
    of the runs started or resumed, the results rows, and whether it ran to the end (not interrupted)."""
    out = Path(out).resolve()
    work = jobs(points, out)
    todo = [p for job in work for p in job.points]
    packed = f" in {len(work)} process{'es' * (len(work) > 1)} (seeds packed)" if len(work) < len(todo) else ""
    if ray_address and todo:
        import_ray()                  # missing: say so before anything else
    for p in points:
        if p.status == "skip":
            echo(f"  skip    {p.name}  (finished: step {p.step:,} of {p.cfg.steps:,})")
        elif p.status == "resume":
            echo(f"  resume  {p.name}  " + (f"(checkpoint at step {p.step:,} of {p.cfg.steps:,})" if p.step
                                             else "(no checkpoint yet: starts over)"))
        else:
            echo(f"  start   {p.name}")
    outcomes: list[Outcome] = []
    completed = True
    ray = start_ray(ray_address) if ray_address and todo else None    # before anything is written
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        (out / STOP_FILE).unlink(missing_ok=True)          # left by a sweep that was killed
        if ray is not None:
            where = f"Ray at {ray_address}" + (f" ({LOCAL_RAY['num_cpus']} CPUs)" if ray_address == "local" else "")
            echo(f"running {len(todo)} run{'s' * (len(todo) > 1)}{packed} on {where}, {cpus_per_run:g} CPU"
                 + (f" and {gpus_per_run:g} GPU" if gpus_per_run else "") + " each")
        else:
            workers = max(1, min(workers, len(work)))
            threads = max(1, machine_cores() // workers)
            echo(f"running {len(todo)} run{'s' * (len(todo) > 1)}{packed}: a local pool of {workers} worker"
                 f"{'s' * (workers > 1)}, {threads} torch thread{'s' * (threads > 1)} each")

        def on_done(o: Outcome) -> None:
            outcomes.append(o)
            head = f"[{len(outcomes)}/{len(todo)}]"
            if not o.started:
                echo(f"{head} not run {o.point.name} (interrupted; " + (f"latest checkpoint: step {o.step:,} of "
                     f"{o.point.cfg.steps:,})" if o.step else "no checkpoint)"))
            elif not o.ok:
                echo(f"{head} FAILED  {o.point.name}: {o.error}\n        run dir: {o.point.cfg.out}\n        "
                     f"log: {o.log}")
            elif not o.finished:
                echo(f"{head} stopped {o.point.name} at step {o.step:,} of {o.point.cfg.steps:,} (checkpoint "
                     "written)")
            else:
                echo(f"{head} done    {o.point.name}  ({o.seconds:.1f} s)")
        stop = threading.Event()       # Ctrl-C and SIGTERM: runs write a checkpoint and stop, the sweep reports
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_stop() -> None:
            echo("interrupted: runs not started are cancelled, running ones write a checkpoint and stop")
        try:
            completed = (run_ray(ray, work, out, cpus_per_run, gpus_per_run, on_done, stop, on_stop)
                         if ray is not None else run_local(work, out, workers, on_done, stop, on_stop))
        finally:
            (out / STOP_FILE).unlink(missing_ok=True)
            for s, h in handlers.items():
                signal.signal(s, h)
            if ray is not None:
                ray.shutdown()
    out.mkdir(parents=True, exist_ok=True)
    rows = results(points, out)
    return outcomes, rows, completed
