"""The `graphnet` command line. Spec problems print as file:line:col messages and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._spec import Sizes, Spec, load, parse_value
from .errors import GraphnetError, SpecErrors
from .ir import nodes


class UsageError(GraphnetError):
    pass


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
    mods = g.graph["modules"]
    print(f"{spec.path}  hash {spec.hash}")
    print("params: " + ", ".join(f"{k} = {v}" for k, v in spec.values.items()))
    if g.graph["bank"]:
        b = g.graph["bank"]
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
    from .compiler import build
    spec = _load(args)
    g = spec.graph_for(obs=args.obs, act=args.act, tasks=args.tasks)
    reads_meta = any(n.op == "meta" for n in nodes(g))
    nets = build(spec, args.obs, args.act, args.tasks, device="cpu",
                 task_metadata=torch.zeros(args.tasks, 768) if reads_meta else None)
    for role, net in (("actor", nets.actor), ("critic", nets.critic)):
        count = sum(p.numel() for p in net.parameters())
        print(f"{role} trunk: {count:,} parameters" + (" (2 stacked twins)" if role == "critic" else ""))
        if args.print_code:
            print(net.trunk.graph_module.code)
    print(f"agent: {sum(p.numel() for p in nets.parameters()):,} parameters "
          f"(graphnet params: {spec.params(obs=args.obs, act=args.act, tasks=args.tasks).total:,})")
    return 0


def cmd_bench(args) -> int:
    from .compiler.bench import bench
    spec = _load(args)
    result = bench(spec, args.obs, args.act, args.tasks, args.batch_per_task, device=args.device,
                   compile=args.compile)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{spec.path}: actor + twin critics, forward + backward, {result['tasks']} tasks x "
          f"{args.batch_per_task} samples on {result['device']}")
    print(f"  compiled          {result['compiled_ms']:10.1f} ms")
    print(f"  dense equivalent  {result['dense_equiv_ms']:10.1f} ms   compiled / dense = "
          f"{result['compiled_vs_dense']:.2f}x")
    print(f"  reference         {result['reference_ms']:10.1f} ms   reference / compiled = "
          f"{result['reference_vs_compiled']:.0f}x (scaled from 1 sample per task)")
    print(f"  ~{result['flops'] / 1e9:.1f} GFLOP per step")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="check spec files; all problems of a file at once")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="a path or a library spec name")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a param (repeatable)")
    p.set_defaults(fn=cmd_check)
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
    p = sub.add_parser("bench", help="time compiled vs reference vs a dense MLP of the same per-sample size")
    p.add_argument("spec", metavar="SPEC")
    _env_args(p)
    p.add_argument("--batch-per-task", type=int, default=128, help="samples per task (default 128)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--compile", action="store_true", help="torch.compile the trunks")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SpecErrors as e:
        print(e.render(), file=sys.stderr)
        return 2
    except GraphnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
