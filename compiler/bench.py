"""`graphnet bench`: compiled networks vs the reference interpreter vs a dense MLP doing the same
per-sample work, timed side by side in one run (ratios matter; absolute times only on a quiet machine).

"The same per-sample work" is counted, not assumed: torch's FlopCounterMode counts the matmul
multiply-adds of the reference interpreter on one sample (the spec's meaning, whatever the compiler
does with it), and the dense MLP is the widest whose own count is no larger. Counting parameters
instead undercounts specs that reuse a layer (PTSL applies its shared projections at every layer: 1.23x
the multiply-adds of a dense MLP with its per-task parameter count)."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .._spec import Spec
from ..errors import GraphnetError
from ..ir import nodes, reads_metadata
from .build import AgentNets, build, compile_module
from .reference import reference_trunk


def dense_mlp(inp: int, out: int, macs: float) -> nn.Sequential:
    """3 hidden layers of one width, the widest with at most `macs` multiply-adds per sample. Its relus run in
    place, as the compiled trunks' do (lower.in_place), so that the ratio compares architectures."""
    w = 8
    while inp * (w + 1) + 2 * (w + 1) ** 2 + (w + 1) * out <= macs:
        w += 1
    return nn.Sequential(nn.Linear(inp, w), nn.ReLU(True), nn.Linear(w, w), nn.ReLU(True), nn.Linear(w, w),
                         nn.ReLU(True), nn.Linear(w, out))


def flops(fn: Callable[[], object]) -> int:
    """Matmul floating-point operations of one call (2 per multiply-add), as torch counts them, and the
    in-place baddbmm_ of residual sums and input gradients (lower.in_place, shared_inputs), which it skips."""
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.baddbmm_: _baddbmm_flops}) as counter:
        fn()
    return counter.get_total_flops()


def _baddbmm_flops(into_shape, a_shape, b_shape, out_shape=None, **_) -> int:
    batch, rows, inner = a_shape
    return 2 * batch * rows * inner * b_shape[-1]


def macs_per_sample(nets: AgentNets, role: str, obs: Tensor, act: Tensor, tasks: int) -> float:
    """Multiply-adds per sample of the spec's own per-sample function: the reference interpreter's
    matmuls on one sample per task, all ensemble members together. What the compiler saves (FiLM's
    coefficients computed per task, not per sample) or adds (a bank's composition) does not count."""
    task = torch.arange(tasks, device=obs.device)
    with torch.no_grad():
        return flops(lambda: reference_trunk(nets, role, obs[:tasks], task, act[:tasks])) / (2 * tasks)


MATMULS = {"mm", "bmm", "addmm", "baddbmm", "addmm_", "baddbmm_"}


class _OpTimer(TorchDispatchMode):
    """Each aten op's time where it runs in the step (the kernels that reach the dispatcher: a custom autograd
    Function's ops, not the Function). The Python between ops slows the step, not the ops. torch.profiler is
    not used: in a step it read a twin critic's relu backward 3x higher than hooks on that node did."""

    def __init__(self):
        super().__init__()
        self.seconds, self.calls = Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1
        return out


def op_times(fn: Callable[[], None], steps: int) -> list[dict]:
    """The time of every op `fn` runs on the CPU, per call of `fn`, longest first. Their sum falls short of a
    plain step by the Python and autograd bookkeeping between ops."""
    fn()
    with _OpTimer() as timer:
        for _ in range(steps):
            fn()
    rows = [{"op": op, "ms": t / steps * 1e3, "calls": timer.calls[op] // steps} for op, t in timer.seconds.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def matmul_ms(ops: list[dict]) -> float:
    return sum(r["ms"] for r in ops if r["op"] in MATMULS)


def median_seconds(fn: Callable[[], None], reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench(spec: Spec, obs_dim: int = 39, act_dim: int = 4, tasks: int = 10, batch_per_task: int = 128,
          reps: int = 10, reference_per_task: int = 1, device: str = "cpu", compile: bool | str = False,
          ops: bool = False) -> dict:
    """Actor + twin-critic forward and backward at a task-major batch. The reference interpreter runs
    `reference_per_task` samples per task and is scaled to the full batch (it is linear in samples).
    With `compile` (True or a torch.compile mode) the dense MLPs are compiled alike, so the ratio stays
    like for like. With `ops` (eager, CPU), also the op-by-op time of both (op_times) and the compiled step's
    matmul time over the dense step's time: a floor no scheduling of the non-matmul ops can go below."""
    if ops and (compile or str(device) != "cpu"):   # under the timer torch.compile'd code runs eager
        raise GraphnetError("--ops times eager CPU ops one by one: not with --compile or on CUDA (there, use "
                            "torch.profiler or Nsight Systems)")
    torch.manual_seed(0)
    reads_meta = reads_metadata(nodes(spec.graph_for(obs_dim, act_dim, tasks)))
    meta = torch.randn(tasks, 768) if reads_meta else None  # stand-in description embeddings
    eager = build(spec, obs_dim, act_dim, tasks, device=device, task_metadata=meta)
    nets = eager if not compile else build(spec, obs_dim, act_dim, tasks, device=device, compile=compile,
                                           task_metadata=meta)
    n = tasks * batch_per_task
    obs, act = torch.randn(n, obs_dim, device=device), torch.rand(n, act_dim, device=device) * 2 - 1
    task = torch.arange(tasks, device=device).repeat_interleave(batch_per_task)
    actor_net = dense_mlp(obs_dim, 2 * act_dim, macs_per_sample(eager, "actor", obs, act, tasks)).to(device)
    critic_net = dense_mlp(obs_dim + act_dim, 1, macs_per_sample(eager, "critic", obs, act, tasks) / 2).to(device)
    actor_fn: nn.Module = actor_net
    critic_fn: nn.Module = critic_net
    if compile:
        actor_fn, critic_fn = compile_module(actor_net, compile), compile_module(critic_net, compile)

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    def step(agent: AgentNets) -> None:
        agent.zero_grad(set_to_none=True)
        q1, q2 = agent.critic.trunk(obs, task, act, True)
        loss = agent.actor.trunk(obs, task, task_major=True).square().mean() + q1.square().mean() + q2.square().mean()
        loss.backward()
        sync()

    def compiled():
        step(nets)

    def dense(actor: nn.Module = actor_fn, critic: nn.Module = critic_fn):
        actor_net.zero_grad(set_to_none=True)
        critic_net.zero_grad(set_to_none=True)
        x = torch.cat([obs, act], 1)
        (actor(obs).square().mean() + critic(x).square().mean() + critic(x).square().mean()).backward()
        sync()

    few = torch.arange(tasks, device=device).repeat_interleave(reference_per_task)
    picked = torch.cat([torch.arange(t * batch_per_task, t * batch_per_task + reference_per_task)
                        for t in range(tasks)]).to(device)

    def reference():
        nets.zero_grad(set_to_none=True)
        a = reference_trunk(nets, "actor", obs[picked], few)
        q = reference_trunk(nets, "critic", obs[picked], few, act[picked])
        (a.square().mean() + q.square().mean()).backward()

    t_compiled, t_dense = [], []
    for _ in range(3):  # interleaved, so both see the same machine
        t_compiled.append(median_seconds(compiled, reps))
        t_dense.append(median_seconds(dense, reps))
    t_ref = median_seconds(reference, 1) * batch_per_task / reference_per_task
    c, d = sorted(t_compiled)[1], sorted(t_dense)[1]
    by_op: dict[str, Any] = {}
    if ops:
        by_op = {"ops": {"compiled": op_times(compiled, reps), "dense": op_times(dense, reps)}}
        by_op["compiled_matmul_ms"] = matmul_ms(by_op["ops"]["compiled"])
        by_op["dense_matmul_ms"] = matmul_ms(by_op["ops"]["dense"])
        by_op["matmul_floor"] = by_op["compiled_matmul_ms"] / (d * 1e3)
    return {"spec": spec.path, "tasks": tasks, "batch": n, "device": str(device), "compiled_ms": c * 1e3,
            "reference_ms": t_ref * 1e3, "dense_equiv_ms": d * 1e3, "compiled_vs_dense": c / d,
            "reference_vs_compiled": t_ref / c, "flops": flops(lambda: step(eager)),
            "dense_equiv_flops": flops(lambda: dense(actor_net, critic_net)),
            "dense_width": {"actor": actor_net[0].out_features, "critic": critic_net[0].out_features}, **by_op}
