"""The `graphnet` command line. Spec problems print as file:line:col messages and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import registry
from ._spec import Sizes, Spec, load, parse_value, settings
from pydantic import ValidationError

from .errors import GraphnetError, SpecErrors, UsageError
from .ir import info, nodes, reads_metadata
from .matching import COUNTS, ablate, budget_like, provenance, solve, write_resolved


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set takes NAME=VALUE, got '{pair}'")
        out[name.strip()] = parse_value(value.strip())
    return out


def _load(args) -> Spec:
    return load(args.spec, Sizes(obs=args.obs, act=args.act, tasks=args.tasks), **_overrides(args.set))


def _env_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a param (repeatable)")
    p.add_argument("--obs", type=int, default=39, help="observation size (default: Meta-World's 39)")
    p.add_argument("--act", type=int, default=4, help="action size (default: 4)")
    p.add_argument("--tasks", type=int, default=10, help="number of tasks (default: MT10's 10)")


def cmd_check(args) -> int:
    failed = False
    for ref in args.specs:
        try:
            spec = load(ref, **_overrides(args.set))
        except SpecErrors as e:
            print(e.render(), file=sys.stderr)
            failed = True
            continue
        for w in spec.warnings:
            print(w.render(spec.sources), file=sys.stderr)
        print(f"ok: {spec.path} ({spec.params().total:,} parameters at MT10 sizes)")
    return 2 if failed else 0


def cmd_ops(args) -> int:
    for path in args.files:
        registry.load_file(path)
    if args.markdown:
        print(registry.markdown_table())
        return 0
    for op in registry.all_ops():
        if op.in_language:
            where = "" if op.source == "graphnet" else f"  ({op.source})"
            print(f"{op.signature}\n    {op.doc}{where}")
    return 0


def cmd_check_op(args) -> int:
    from .compiler.verify import OpCheckError, check_op
    ops = registry.load_file(args.file)
    if not ops:
        raise UsageError(f"{args.file} registers no op (call graphnet.registry.register(OpDef(...)))")
    failed = False
    for op in ops:
        try:
            report = check_op(op)
        except OpCheckError as e:
            print(f"FAIL: {e}", file=sys.stderr)
            failed = True
            continue
        print(f"ok: {op.name}: {report.cases} cases (compiled == reference, outputs and gradients, float64; "
              "built sizes == counts; ensembles of 1 and 2; task-major and shuffled batches)")
    return 1 if failed else 0


def cmd_params(args) -> int:
    spec = _load(args)
    report = spec.params(obs=args.obs, act=args.act, tasks=args.tasks)
    if args.json:
        print(json.dumps(report.model_dump(), indent=2))
        return 0
    print(f"{spec.path}  (obs {args.obs}, act {args.act}, tasks {args.tasks})")
    rows = [("actor", report.actor), ("critic (2 twins)", report.critic),
            ("critic target (2 twins)", report.critic_target), ("common to actor and critic", report.common),
            ("temperatures (1 per task)", report.alpha), ("trainable", report.trainable), ("total", report.total)]
    for name, n in rows:
        print(f"  {name:<28}{n:>14,}")
    print("  by sharing:  " + "   ".join(f"{k} {v:,}" for k, v in report.by_sharing.items()))
    print(f"  one sample of one task touches:  actor {report.per_task['actor']:,}   "
          f"critic (2 twins) {report.per_task['critic']:,}")
    print(f"\n  {'role':<7}{'module':<44}{'op':<10}{'sharing':<8}{'copies':>7}{'per copy':>11}{'total':>12}")
    for m in report.by_module:
        print(f"  {m.role:<7}{m.module:<44}{m.op:<10}{m.sharing:<8}{m.copies:>7}{m.per_copy:>11,}{m.total:>12,}")
    return 0


def cmd_show(args) -> int:
    spec = _load(args)
    g = spec.graph_for(obs=args.obs, act=args.act, tasks=args.tasks)
    mods = info(g).modules
    print(f"{spec.path}  hash {spec.hash}")
    print("params: " + settings(spec.values))
    if (b := info(g).bank) is not None:
        print(f"bank: K = {b['K']}, init = {b['init']}, w = {b['w']} (table w: {args.tasks} x {b['K']})")
    for n in nodes(g):
        ins = ", ".join(n.inputs)
        name = f"{n.id}" + (f"  [{n.label}]" if n.label and not n.id.endswith(n.label) else "")
        extra = ""
        if n.module:
            m = mods[n.module]
            extra = f"  {m.sharing}" + (f" x{m.copies}" if m.copies > 1 else "") + f"  {m.total:,} params"
            if m.id != n.id:
                extra += f" (module {m.id})"
        print(f"{n.role:<7}{name:<46} {n.op}({ins}) -> {n.width}{extra}")
    print(f"total parameters: {spec.params(obs=args.obs, act=args.act, tasks=args.tasks).total:,}")
    return 0


def cmd_compile(args) -> int:
    import torch
    from .compiler import build, built_counts
    spec = _load(args)
    g = spec.graph_for(obs=args.obs, act=args.act, tasks=args.tasks)
    reads_meta = reads_metadata(nodes(g))
    nets = build(spec, args.obs, args.act, args.tasks, device="cpu",
                 task_metadata=torch.zeros(args.tasks, 768) if reads_meta else None)
    built, report = built_counts(nets), spec.params(obs=args.obs, act=args.act, tasks=args.tasks)
    for role, net in (("actor", nets.actor), ("critic", nets.critic)):
        print(f"{role} trunk: {built[role]:,} parameters" + (" (2 stacked twins)" if role == "critic" else ""))
        if args.print_code:
            print(net.trunk.graph_module.code)
    print(f"common to actor and critic: {built['common']:,} (shared features, the composition table w); critic "
          f"target: {built['critic_target']:,}; temperatures: {built['alpha']:,}")
    agree = all(built[k] == getattr(report, k) for k in built)
    print(f"agent: {built['total']:,} parameters; built tensors "
          + ("agree with graphnet params in every count" if agree else
             "DISAGREE with graphnet params: " + ", ".join(f"{k} {built[k]:,} vs {getattr(report, k):,}"
                                                          for k in built if built[k] != getattr(report, k))))
    return 0 if agree else 1


def _run_config(args):
    """RunConfig from `graphnet train` flags; the spec's train section, then the flags, set SAC options."""
    from pathlib import Path
    from .runtime.config import RunConfig
    spec = load(args.spec, **_overrides(args.set))
    env = args.env or "MT10"
    seeds = f"s{'_'.join(map(str, args.seeds))}" if args.seeds else f"s{args.seed or 0}"
    out = args.out or Path("runs") / f"{Path(spec.path).stem}-{env.replace(':', '-')}-{seeds}"
    return RunConfig(spec=args.spec, overrides=_overrides(args.set), out=out, train=_train_section(spec, args),
                     **_run_fields(args, "seed", "seeds", "threads"))


def _run_fields(args, *more: str) -> dict[str, Any]:
    """The RunConfig fields `_run_args`' flags (and `more` of train's) give, those that were given."""
    names = ("env", "steps", "eval_every", "eval_episodes", "checkpoint_every", "warmup", "device", "save_replay",
             "cuda_graph", "env_workers", "overlap", "eval_protocol", *more)
    fields = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if fields.get("eval_protocol") == "metaworld":
        fields.setdefault("eval_episodes", 50)
    return fields


def _train_section(spec: Spec, args):
    """The spec's train section with the SAC options given on the command line."""
    from .train_config import TrainConfig
    flags = {k: getattr(args, k, None) for k in ("lr", "batch_per_task")}
    return TrainConfig(**(spec.train.model_dump() | {k: v for k, v in flags.items() if v is not None}))


# what `train --resume` may change: how long, where and how fast it runs, how often it evaluates and checkpoints;
# the rest of a run's flags set what it learns, so a resume refuses them rather than ignore them
RESUMABLE = ("steps", "device", "threads", "cuda_graph", "env_workers", "eval_every", "eval_episodes",
             "checkpoint_every", "save_replay")
FIXED_AT_START = ("env", "seed", "seeds", "set", "out", "warmup", "batch_per_task", "lr", "overlap", "eval_protocol")


def cmd_train(args) -> int:
    from pathlib import Path
    from .runtime.train import load_run_config, train
    if (args.spec is None) == (args.resume is None):
        raise UsageError("give a SPEC to start a run, or --resume RUN_DIR to continue one")
    if args.resume:
        cfg = load_run_config(Path(args.resume))
        if fixed := [f"--{k.replace('_', '-')}" for k in FIXED_AT_START if getattr(args, k) is not None]:
            raise UsageError(f"{', '.join(fixed)}: --resume continues {args.resume} as it started (its config.json); "
                             "start a new run (SPEC --out DIR) to change what it learns")
        updates = {k: getattr(args, k) for k in RESUMABLE if getattr(args, k) is not None}
        cfg = cfg.model_copy(update=updates | {"out": Path(args.resume)})
    else:
        cfg = _run_config(args)
    run_dir = train(cfg, resume=args.resume is not None, quiet=args.quiet)
    print(f"run directory: {run_dir}")
    return 0


def cmd_transfer(args) -> int:
    from .runtime.transfer import EXPLORE_STEPS, transfer
    run_dir = transfer(args.run, args.task, steps=args.steps, out=args.out, seed=args.seed,
                       explore_steps=EXPLORE_STEPS if args.explore_steps is None else args.explore_steps,
                       eval_every=args.eval_every, eval_episodes=args.eval_episodes, device=args.device,
                       start=args.start, freeze_phi=args.freeze_phi, quiet=args.quiet)
    print(f"run directory: {run_dir}")
    return 0


def cmd_plot(args) -> int:
    from pathlib import Path
    from .runtime.plot import plot
    groups = plot([Path(d) for d in args.runs], Path(args.output))
    print(f"wrote {args.output}: " + ", ".join(f"{k} ({n} run{'s' * (n > 1)})" for k, n in groups.items()))
    return 0


def cmd_bench(args) -> int:
    if args.train and args.ops:
        raise UsageError("--ops times the compiled networks and the dense MLP op by op; it does not apply to --train")
    if args.seeds is not None and (not args.train or args.seeds < 2):
        raise UsageError("--seeds S (2 or more) compares S seeds trained as one with one seed, under --train")
    if args.env_workers is not None and (not args.train or args.env_workers < 1):
        raise UsageError("--env-workers N (1 or more) compares worker environments with in-process ones, under --train")
    if args.train:
        from pathlib import Path
        from .runtime.config import RunConfig
        from .runtime.train import bench_train
        from .runtime.workers import bench_stepping
        spec = load(args.spec, **_overrides(args.set))
        cfg = RunConfig(spec=args.spec, overrides=_overrides(args.set), env=args.env, out=Path("."),
                        device=args.device, threads=args.threads, cuda_graph=args.cuda_graph,
                        train=_train_section(spec, args))
        result = bench_train(cfg, steps=args.train_steps)
        runs, one_seed = [result], result
        if args.env_workers:   # side by side: the environments in this process, then in workers
            result = {**result, "workers": bench_train(cfg, steps=args.train_steps, workers=args.env_workers)}
            result["workers_vs_in_process_steps"] = result["workers"]["steps_per_s"] / result["steps_per_s"]
            overlap = bench_train(cfg, steps=args.train_steps, workers=args.env_workers, overlap=True)
            result["workers_overlap"] = overlap   # not "overlap": that is the in-process run's own field
            result["overlap_vs_workers_steps"] = overlap["steps_per_s"] / result["workers"]["steps_per_s"]
            result["stepping"] = bench_stepping(args.env, cfg.seed, args.env_workers, args.train_steps)
            runs += [result["workers"], overlap]
            one_seed = overlap
        if args.seeds:   # side by side: one seed, then a group in one process, the environments set up alike
            group = bench_train(cfg, steps=args.train_steps, seeds=args.seeds, workers=one_seed["env_workers"],
                                overlap=one_seed["overlap"])
            result = {**result, "group": group, "group_vs_one_seed_steps":
                      group["seed_steps_per_s"] / one_seed["seed_steps_per_s"]}
            runs.append(group)
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        for r in runs:
            graphed = ", update as one CUDA graph" if r["cuda_graph"] else ""
            seeds = f", {r['seeds']} seeds as one" if r["seeds"] > 1 else ""
            workers = f", {r['env_workers']} env workers" if r["env_workers"] else ", envs in process"
            workers += ", update overlapping the step" if r["overlap"] else ""
            print(f"{args.spec} on {r['env']} ({r['tasks']} tasks{seeds}{workers}, {r['device']}{graphed}): "
                  f"{r['steps_per_s']:.1f} vector steps/s, env {r['env_steps_per_s']:.0f} "
                  f"task-steps/s, {r['updates_per_s']:.1f} updates/s; time in env "
                  f"{100 * r['env_share']:.0f} %, acting {100 * r['act_share']:.0f} %, in updates "
                  f"{100 * r['update_share']:.0f} %")
        if args.env_workers:
            print(f"{args.env_workers} env workers: {result['workers_vs_in_process_steps']:.2f}x the vector steps/s "
                  f"of in-process environments; overlapping the update: {result['overlap_vs_workers_steps']:.2f}x "
                  "the workers' without")
            st = result["stepping"]
            print(f"stepping alone (random actions, no update): in process {st['in_process']:.0f} task-steps/s, "
                  f"{args.env_workers} env workers {st['workers']:.0f} ({st['workers_vs_in_process']:.2f}x), "
                  f"gymnasium's async vector env (a process per environment) {st['gym_async']:.0f} "
                  f"(workers {st['workers_vs_gym_async']:.2f}x it)")
        if args.seeds:
            print(f"{args.seeds} seeds in one process: {result['group_vs_one_seed_steps']:.2f}x the seed-steps/s "
                  f"of one ({result['group']['seed_steps_per_s']:.1f} vs {one_seed['seed_steps_per_s']:.1f})")
        return 0
    from .compiler.bench import bench
    spec = _load(args)
    result = bench(spec, args.obs, args.act, args.tasks, args.batch_per_task or 128, device=args.device or "cpu",
                   compile=args.compile, ops=args.ops)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{spec.path}: actor + twin critics, forward + backward, {result['tasks']} tasks x "
          f"{result['batch'] // result['tasks']} samples on {result['device']}")
    widths = result["dense_width"]
    print(f"  compiled          {result['compiled_ms']:10.1f} ms   {result['flops'] / 1e9:.2f} GFLOP (matmuls)")
    print(f"  dense equivalent  {result['dense_equiv_ms']:10.1f} ms   {result['dense_equiv_flops'] / 1e9:.2f} GFLOP, "
          f"3 hidden layers of {widths['actor']} (actor) and {widths['critic']} (each critic); compiled / dense = "
          f"{result['compiled_vs_dense']:.2f}x")
    print(f"  reference         {result['reference_ms']:10.1f} ms   reference / compiled = "
          f"{result['reference_vs_compiled']:.0f}x (scaled from 1 sample per task)")
    if args.ops:
        _print_ops(result)
    return 0


def _print_ops(result: dict) -> None:
    print("  where the time goes (each op timed where it runs, ms a step; the rest is Python and autograd):")
    for side in ("compiled", "dense"):
        ops = result["ops"][side]
        total, matmuls = sum(r["ms"] for r in ops), result[f"{side}_matmul_ms"]
        top = ", ".join(f"{r['op']} {r['ms']:.2f} ({r['calls']})" for r in ops[:6])
        print(f"    {side:9s}{total:7.1f} ms in {sum(r['calls'] for r in ops)} ops, {matmuls:.1f} in matmuls; "
              f"top (ms, calls): {top}")
    print(f"    compiled matmuls alone / dense step = {result['matmul_floor']:.2f}x: no scheduling of the other "
          f"ops goes below this")


RATIO_RULE = ("With several --solve, the first named is searched and each other one keeps its ratio to it as in "
              "the spec's current values (after --set), rounded half up.")


def _sizes(args) -> Sizes:
    return Sizes(obs=args.obs, act=args.act, tasks=args.tasks)


def _budget(args) -> tuple[int, str]:
    """The budget and how to describe it: --budget N, or --like OTHER's count at its defaults."""
    if args.like is None:
        if args.budget < 1:
            raise UsageError(f"--budget must be a positive number of parameters, got {args.budget}")
        return args.budget, ""
    return budget_like(args.like, _sizes(args), args.count), f"  ({args.count} of {args.like})"


def _print_warnings(warnings) -> None:
    for w in dict.fromkeys(warnings):
        print(f"warning: {w}", file=sys.stderr)


def cmd_match(args) -> int:
    budget, like = _budget(args)
    overrides = _overrides(args.set)
    match = solve(args.spec, args.solve, budget, args.count, overrides, _sizes(args))
    _print_warnings(match.warnings)
    if args.output:
        values = {**overrides, **match.values}
        write_resolved(args.spec, values, args.output, _sizes(args), args.count,
                       header=provenance(args.spec, values, args.count, match))
    if args.json:
        print(json.dumps(match.as_json(), indent=2))
        return 0
    print(f"{args.spec}: " + settings(match.values))
    print(f"  {args.count + ' count':<14}{match.count:>14,}")
    print(f"  {'budget':<14}{match.budget:>14,}{like}")
    print(f"  {'mismatch':<14}{match.mismatch:>+14,}  ({match.mismatch_pct:+.3f} %)")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _grid(pairs: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        name, sep, values = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--vary takes NAME=v1,v2,..., got '{pair}'")
        if name in grid:
            raise UsageError(f"--vary {name} is given twice; list all its values once")
        grid[name] = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
    return grid


def cmd_ablate(args) -> int:
    budget = None if args.budget is None and args.like is None else _budget(args)[0]
    rows = ablate(args.spec, _grid(args.vary), args.output, args.solve or (), budget, args.count,
                  _overrides(args.set), _sizes(args))
    _print_warnings(w for r in rows for w in r.warnings)
    print((Path(args.output) / "ablation.md").read_text(), end="")
    print(f"\nwrote {len(rows)} specs, ablation.md and ablation.csv to {args.output}")
    return 0


def cmd_viz(args) -> int:
    from .viz import draw
    spec = _load(args)
    draw(spec, args.output, _sizes(args), expand=args.expand, rankdir=args.rankdir)
    print(f"wrote {args.output}")
    return 0


def cmd_sweep(args) -> int:
    from .runtime.sweep import plan, sweep
    if args.ray is not None and args.workers is not None:
        raise UsageError("--workers sizes the local pool; with --ray, Ray places the runs (see --cpus-per-run)")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_run <= 0 or args.gpus_per_run < 0:
        raise UsageError("--cpus-per-run must be above 0 and --gpus-per-run at least 0")
    if args.pack_seeds and args.seeds < 2:
        raise UsageError(f"--pack-seeds trains a variant's seeds as one group; with --seeds {args.seeds} there is "
                         "nothing to pack (give --seeds 2 or more, or leave --pack-seeds out)")
    grid = _grid(args.vary or [])
    fields = _run_fields(args)
    train_updates = {k: getattr(args, k) for k in ("lr", "batch_per_task") if getattr(args, k) is not None}
    points = plan(args.specs, grid, args.seeds, Path(args.output), _overrides(args.set), train_updates,
                  pack_seeds=args.pack_seeds, **fields)
    out = Path(args.output).resolve()
    variants = len(points) // args.seeds // len(args.specs)
    status = {s: sum(p.status == s for p in points) for s in ("start", "resume", "skip")}
    def n(count: int, word: str) -> str:
        return f"{count} {word}{'s' * (count != 1)}"
    print(f"sweep: {n(len(args.specs), 'spec')} x {n(variants, 'variant')} x {n(args.seeds, 'seed')} = "
          f"{n(len(points), 'run')} in {out / 'runs'} ({status['start']} to start, {status['resume']} to resume, "
          f"{status['skip']} finished: skipped)")
    outcomes, rows, completed = sweep(points, out, workers=args.workers or 1, ray_address=args.ray,
                                      cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
    print()
    print((out / "results.md").read_text(), end="")
    written = ["results.csv", "results.md"] + (["curves.png"] if (out / "curves.png").exists() else [])
    print(f"\nwrote {', '.join(written)} to {out}")
    failed = [o for o in outcomes if not o.ok]
    stopped = [o for o in outcomes if o.ok and not o.finished]
    if not completed:
        print("interrupted: running runs wrote a checkpoint; run the same command again to resume them",
              file=sys.stderr)
        return 130
    if failed:
        print(f"{len(failed)} of {len(outcomes)} runs failed (see above and their logs in {out / 'logs'}); run the "
              "same command again to retry them (finished runs are skipped)", file=sys.stderr)
    if stopped:
        print(f"{len(stopped)} of {len(outcomes)} runs stopped before the end; run the same command again to resume "
              "them", file=sys.stderr)
    return 1 if failed or stopped else 0


def _seed_list(text: str) -> list[int]:
    """`--seeds 4`: seeds 0..3; `--seeds 0,2,5`: those."""
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()] if "," in text else list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is neither a count (4: seeds 0..3) nor a list (0,2,5)") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"'{text}': a group needs two or more different seeds (one seed: --seed)")
    return seeds


def _train_args(p: argparse.ArgumentParser) -> None:
    one_or_many = p.add_mutually_exclusive_group()   # both given, one would be ignored
    one_or_many.add_argument("--seed", type=int, help="the run's seed (default 0)")
    one_or_many.add_argument("--seeds", type=_seed_list, metavar="N|S0,S1,...",
                             help="train several seeds in one process as one agent (N: seeds 0..N-1), each in "
                                  "OUT/seed_<s>")
    p.add_argument("--out", help="run directory (default runs/<spec>-<env>-s<seed>)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a spec param (repeatable)")
    _run_args(p)
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _run_args(p: argparse.ArgumentParser) -> None:
    """The flags of a training run, shared by `train` and `sweep`."""
    p.add_argument("--env", help="MT10 (default), MT50 or MT1:<task>, e.g. MT1:reach-v3")
    p.add_argument("--steps", type=int, help="environment steps per task (default 200,000)")
    p.add_argument("--eval-every", type=int, help="steps per task between evaluations (default 10,000)")
    p.add_argument("--eval-episodes", type=int, help="episodes per task at each evaluation (default 10)")
    p.add_argument("--checkpoint-every", type=int, help="steps per task between checkpoints (default 50,000)")
    p.add_argument("--warmup", type=int, help="steps per task of random actions before learning (default 1,500)")
    p.add_argument("--batch-per-task", type=int, help="samples per task in an update (default 128)")
    p.add_argument("--lr", type=float, help="learning rate of every optimizer (default 3e-4)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--save-replay", action="store_true", default=None,
                   help="keep the replay in checkpoints (exact resume; large)")
    _cuda_graph_arg(p)
    p.add_argument("--env-workers", type=int, metavar="N",
                   help="processes stepping a run's environments (0: the run's own). Default, one per task at most: "
                        "on the CPU none up to 4 cores, else half the cores; on CUDA all cores but one (the "
                        "machine's cores, or in a sweep the run's share)")
    p.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="update while the environments step, on a replay one step older (default: with env workers)")
    p.add_argument("--eval-protocol", choices=["graphnet", "metaworld"],
                   help="graphnet's evaluation (default) or Meta-World's own (metaworld.evaluation; then "
                        "--eval-episodes defaults to its 50)")


def _cuda_graph_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the whole update as one CUDA graph (default: on CUDA with uniform task sampling)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="check spec files; all problems of a file at once")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="a path or a library spec name")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a param (repeatable)")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("ops", help="list the ops a spec can call (graphnet's and those of op files)")
    p.add_argument("files", nargs="*", metavar="FILE.py", help="op files whose ops to list too")
    p.add_argument("--markdown", action="store_true", help="print the README's op table")
    p.set_defaults(fn=cmd_ops)
    p = sub.add_parser("check-op", help="verify every op of an op file as graphnet's own are verified")
    p.add_argument("file", metavar="FILE.py")
    p.set_defaults(fn=cmd_check_op)
    p = sub.add_parser("params", help="count parameters (no torch)")
    p.add_argument("spec", metavar="SPEC")
    _env_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_params)
    p = sub.add_parser("show", help="print the resolved graph: nodes, widths, sharing, counts")
    p.add_argument("spec", metavar="SPEC")
    _env_args(p)
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("compile", help="build the torch networks; --print-code shows the generated fx code")
    p.add_argument("spec", metavar="SPEC")
    _env_args(p)
    p.add_argument("--print-code", action="store_true", help="print each trunk's generated forward()")
    p.set_defaults(fn=cmd_compile)
    p = sub.add_parser("train", help="train a spec with multi-task SAC on Meta-World")
    p.add_argument("spec", nargs="?", metavar="SPEC")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    _train_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("transfer", help="TaCo transfer: learn a new Meta-World task from a bank(K) run's policy "
                                        "parameters (a new w, Phi fine-tuned after exploring, a fresh critic)",
                       description="Transfer a multi-task run of a spec with bank(K) layers (paco, taco, "
                                   "shared_unique) to one new task (MT1:<task>), as TaCo's Algorithm 2: the actor "
                                   "starts from the run's Phi and shared layers with a new task's w; the critic "
                                   "starts fresh. The first --explore-steps act with sub-space policies (w~ = beta "
                                   "W, one beta per episode: the run's tasks' corners first, then uniform on the "
                                   "simplex) and train only the critic and temperature; then SAC trains w, Phi, the "
                                   "shared actor layers and the critic (--freeze-phi: w and the critic only).")
    p.add_argument("run", metavar="RUN_DIR", help="the multi-task run (its config.json, spec and latest checkpoint)")
    p.add_argument("--task", required=True, help="the new Meta-World task, e.g. reach-v3")
    p.add_argument("--steps", type=int, default=200_000, help="environment steps in all (default 200,000)")
    p.add_argument("--explore-steps", type=int,
                   help="steps of random sub-space exploration first (default 20,000, TaCo's n_e)")
    p.add_argument("--out", help="run directory (default RUN_DIR/transfer-<task>-s<seed>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=10_000, help="steps between evaluations (default 10,000)")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes at each evaluation (default 10)")
    p.add_argument("--start", choices=("best", "centroid"), default="best",
                   help="where SAC starts w after exploring: the best explored sub-space point (default) or the "
                        "mean of the run's w rows")
    p.add_argument("--freeze-phi", action="store_true",
                   help="keep Phi and the shared actor layers fixed; learn only w (TaCo's Table V variant)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_transfer)
    p = sub.add_parser("plot", help="success curves of runs (mean ± stderr over runs of one spec)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
    p.set_defaults(fn=cmd_plot)
    p = sub.add_parser("bench", help="time compiled vs reference vs a dense MLP doing the same per-sample work; "
                                     "--train: env and update throughput of training")
    p.add_argument("spec", metavar="SPEC")
    _env_args(p)
    p.add_argument("--train", action="store_true", help="measure a short real training run instead")
    p.add_argument("--train-steps", type=int, default=200, help="vector steps for --train (default 200)")
    p.add_argument("--seeds", type=int, metavar="S",
                   help="with --train: also S seeds trained as one in this process, side by side with one "
                        "(with --env-workers N: both in N workers with overlap, as train runs them)")
    p.add_argument("--env-workers", type=int, metavar="N",
                   help="with --train: also the environments in N worker processes, without and with the update "
                        "overlapping the step, side by side with in-process")
    p.add_argument("--env", default="MT10", help="with --train: MT10 (default), MT50 or MT1:<task>")
    p.add_argument("--threads", type=int, help="with --train: torch CPU threads")
    p.add_argument("--batch-per-task", type=int, help="samples per task (default 128)")
    p.add_argument("--device", help="cpu or cuda (default cpu; --train: CUDA when present)")
    _cuda_graph_arg(p)
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the trunks (and the dense MLPs); MODE is a torch.compile mode, e.g. "
                        "reduce-overhead for CUDA graphs")
    p.add_argument("--ops", action="store_true", help="also time both op by op (CPU): where the time goes, and "
                                                       "the compiled matmuls' share")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("match", help="solve whole-number params so the parameter count is nearest a budget",
                       description="Find whole-number values of the --solve params whose parameter count is "
                                   "nearest the budget: an exact integer search on graphnet's accounting "
                                   "(no torch). " + RATIO_RULE)
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--solve", action="append", required=True, metavar="NAME",
                   help="a whole-number param to solve (repeatable: several follow the ratio rule above)")
    _budget_args(p, required=True)
    _env_args(p)
    p.add_argument("--json", action="store_true", help="print {values, count, budget, mismatch} as JSON")
    p.add_argument("-o", "--output", metavar="FILE", help="write the resolved spec (solved and --set values in it)")
    p.set_defaults(fn=cmd_match)
    p = sub.add_parser("ablate", help="write one resolved spec per grid point, width-solved to one budget, "
                                      "with ablation.md and ablation.csv",
                       description="Write DIR/<spec>__<name>-<value>__....gn for every point of the --vary grid "
                                   "(the cartesian product of the lists), each solved to the budget when --solve "
                                   "is given, and the tables DIR/ablation.md and DIR/ablation.csv. " + RATIO_RULE)
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--vary", action="append", required=True, metavar="NAME=v1,v2,...",
                   help="a param and the values to try (repeatable: the grid is every combination)")
    p.add_argument("--solve", action="append", metavar="NAME",
                   help="a whole-number param to solve in each variant (with --budget or --like)")
    _budget_args(p, required=False)
    _env_args(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write to")
    p.set_defaults(fn=cmd_ablate)
    p = sub.add_parser("viz", help="draw the agent graph (svg, png, html or dot)",
                       description="Draw the actor and critic trunks: ops, labels, widths, parameter counts, "
                                   "sharing by colour. svg, png and html need Graphviz's dot program (the "
                                   "system package graphviz); dot does not.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.svg, .png, .html or .dot")
    p.add_argument("--expand", action="store_true", help="draw every repeat iteration (default: collapse to 'x N')")
    p.add_argument("--rankdir", choices=("TB", "LR"), default="TB", help="top to bottom (default) or left to right")
    _env_args(p)
    p.set_defaults(fn=cmd_viz)
    p = sub.add_parser("sweep", help="train specs x --vary grid x seeds (a local pool or Ray); results table and "
                                     "curves",
                       description="One training run per point of specs x the --vary grid (the cartesian product "
                                   "of the lists, applied like --set) x seeds 0..N-1, in DIR/runs/<spec>__<name>-"
                                   "<value>__...__s<seed>/. Every point is checked before anything starts. Running "
                                   "it again into the same DIR resumes unfinished runs and skips finished ones. "
                                   "Writes DIR/results.md, DIR/results.csv (one row per variant: final and best "
                                   "mean success, mean ± stderr over seeds) and DIR/curves.png.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="paths or library spec names")
    p.add_argument("--vary", action="append", metavar="NAME=v1,v2,...",
                   help="a param and the values to try (repeatable: the grid is every combination)")
    p.add_argument("--seeds", type=int, required=True, metavar="N", help="seeds 0..N-1 for every variant")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a param in every run (repeatable)")
    _run_args(p)
    p.add_argument("--pack-seeds", action="store_true",
                   help="train each variant's seeds as one group in one process (graphnet train --seeds), each "
                        "in DIR/runs/<variant>__seeds/seed_<s>/; one job per variant, locally or on Ray")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local pool size (default 1); each worker gets max(1, cores // N) torch threads")
    p.add_argument("--ray", metavar="ADDRESS|auto|local",
                   help="run on Ray (pip install graphnet-rl[ray]): a cluster address, 'auto' (the running cluster) "
                        "or 'local' (start a Ray instance here with 2 CPUs)")
    p.add_argument("--cpus-per-run", type=float, default=1, metavar="N", help="with --ray: CPUs per run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0, metavar="N", help="with --ray: GPUs per run (default 0)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the sweep folder")
    p.set_defaults(fn=cmd_sweep)
    return parser


def _budget_args(p: argparse.ArgumentParser, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--budget", type=int, metavar="N", help="the parameter count to match")
    group.add_argument("--like", metavar="OTHER_SPEC",
                       help="match OTHER_SPEC's count (its defaults, the same --obs/--act/--tasks)")
    p.add_argument("--count", choices=COUNTS, default="total",
                   help="which count to match: total (default), trainable, actor or critic")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None):   # before anything starts: a device this process cannot use
            from .compiler.build import resolve_device
            resolve_device(args.device)
        return args.fn(args)
    except SpecErrors as e:
        print(e.render(), file=sys.stderr)
        return 2
    except GraphnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
    except ValidationError as e:  # a bad run configuration, before anything starts
        for err in e.errors():
            where = "--" + "-".join(str(x) for x in err["loc"]).replace("_", "-") if err["loc"] else "config"
            print(f"error: {where}: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
