"""Torch modules for the graph's parameter groups: one `ParamOp` per IR module, whatever its sharing."""
from __future__ import annotations

from functools import cached_property
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import registry
from ..ir import Module
from ..ops.ensemble import aligned, dense_map, init_, to_ensemble


class TaskLayout:
    """A batch's task ids and how they are laid out; made once per forward, read by every task op.

    Task-major (equal contiguous chunks, task 0 first) takes the fast path: tasks fold into the
    ensemble dimension. Any other order takes the general path: samples sorted by task once.
    """

    def __init__(self, task: Tensor, num_tasks: int, major: bool):
        self.task, self.num_tasks, self.major = task, num_tasks, major

    @cached_property
    def order(self) -> tuple[Tensor, list[int], Tensor]:
        perm = torch.argsort(self.task, stable=True)
        counts = torch.bincount(self.task, minlength=self.num_tasks).tolist()
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm), device=perm.device)
        return perm, counts, inverse

    def by_task(self, fn: Callable[..., Tensor], *xs: Tensor) -> Tensor:
        """`fn(t, *task t's samples of each x)` for every task that has samples (the general path),
        concatenated back into the batch's order along dim 1."""
        perm, counts, inverse = self.order
        chunks = [x[:, perm].split(counts, dim=1) for x in xs]
        outs = [fn(t, *(c[t] for c in chunks)) for t in range(self.num_tasks) if counts[t]]
        return torch.cat(outs, 1)[:, inverse]

    @staticmethod
    def is_major(task: Tensor, num_tasks: int) -> bool:
        n, rem = divmod(task.shape[0], num_tasks)
        if rem or n == 0:
            return False
        pattern = torch.arange(num_tasks, device=task.device).repeat_interleave(n)
        return bool(torch.equal(task, pattern))


class ParamOp(nn.Module):
    """The parameters of one graph module, stored `[E, copies, ...]`, and the op applied to them.

    shared: copy 0. task: the sample's task's copy. bank(K): theta_t = sum_k w[t, k] Phi_k, either
    composed first (then the task path) or, for ops linear in their parameters, by mixing the K
    copies' outputs, whichever costs fewer multiply-adds.
    """

    def __init__(self, module: Module, ensemble: int, bank_table: nn.Parameter | None = None,
                 identical: bool = False):
        super().__init__()
        self.op, self.attrs, self.sharing = module.op, dict(module.attrs), module.sharing
        self.definition = registry.get(module.op)   # held: another op file may later register the same name
        self.params = nn.ParameterDict()
        for name, shape in self.definition.shapes(module.widths, module.attrs).items():
            p = torch.empty(ensemble, module.copies, *shape.shape)
            for e in range(ensemble):
                for c in range(module.copies):
                    if identical and c > 0:
                        p[e, c] = p[e, 0]
                    else:
                        init_(p[e, c], shape.init, shape.fan_in)
            self.params[name] = nn.Parameter(p)
        self.table = bank_table  # one tensor shared by every bank module of actor and critic: [T, K], or [S, T, K]

    def forward(self, *xs: Tensor, layout: TaskLayout, part: str | None = None,
                accumulate: Tensor | None = None, pad: tuple[int, int] = (0, 0)) -> Tensor:
        """The op on `xs`; `part` names a piece of it instead (its definition's parts), e.g. FiLM's coefficients.
        `accumulate` (a linear's residual partner, a fresh tensor read nowhere else; see lower.py): the result
        is added into it, in place where this path allows (shared, or per task on a task-major batch).
        `pad` (a linear's): zero rows and columns appended to its weight (lower.pad_widths)."""
        p = self.padded(pad)
        op = self.definition
        if op.reads_task:   # every copy, [E, copies, ...]: the op picks each sample's
            return op.forward(p, layout=layout, **self.attrs)
        fn = op.forward if part is None else op.parts[part]
        # a module of one copy (actor's, common) may read an ensemble's inputs, and the reverse: broadcast
        E = max(t.shape[0] for t in (*xs, *p.values()))
        one_matmul = self.sharing == "shared" or (self.sharing == "task" and layout.major)
        if accumulate is not None and not (op.dense_layer and one_matmul and accumulate.shape[0] == E
                                           and accumulate.is_contiguous()):
            return torch.add(*aligned(accumulate, self(*xs, layout=layout, part=part, pad=pad)))
        xs = tuple(to_ensemble(x, E) for x in xs)
        p = {k: to_ensemble(v, E) for k, v in p.items()}
        if self.sharing == "shared":  # squeeze, not [:, 0]: a view whose backward writes no zeros
            into = {} if accumulate is None else {"accumulate": accumulate}
            return fn({k: v.squeeze(1) for k, v in p.items()}, *xs, **self.attrs, **into)
        if self.sharing == "task":
            return self._per_task(fn, p, xs, layout, accumulate)
        return self._bank(fn, p, xs, layout)

    def padded(self, pad: tuple[int, int] = (0, 0)) -> dict[str, Tensor]:
        """The parameters; a linear's with `pad` = (rows, columns) of zeros appended (lower.pad_widths), on
        the CPU only: on CUDA the pads are extra kernels that do not pay (see shared_input_linears)."""
        if pad == (0, 0) or next(iter(self.params.values())).is_cuda:
            return dict(self.params.items())
        widths = {k: (0, pad[1]) if k == "bias" else (0, pad[1], 0, pad[0]) for k in self.params}
        return {k: F.pad(v, widths[k]) if any(widths[k]) else v for k, v in self.params.items()}

    def _per_task(self, fn: Callable, p: dict[str, Tensor], xs: tuple[Tensor, ...], layout: TaskLayout,
                  accumulate: Tensor | None = None) -> Tensor:
        E, B, T = xs[0].shape[0], xs[0].shape[1], layout.num_tasks
        if layout.major:
            # a linear's output (and its accumulate) reshaped as a tensor autograd does not track as a view: a
            # relu_ or accumulate on a view made autograd rebuild the whole base in backward (CopySlices: a
            # zeroed copy and a clone, ~1 ms a PaCo critic layer). Safe: a linear's backward never reads its output
            reshape = _unsafe_reshape if self.definition.dense_layer else Tensor.reshape
            folded = [x.reshape(E * T, B // T, *x.shape[2:]) for x in xs]
            into = {} if accumulate is None else {"accumulate": reshape(accumulate, (E * T, B // T, -1))}
            out = fn({k: v.flatten(0, 1) for k, v in p.items()}, *folded, **self.attrs, **into)
            return reshape(out, (E, B, *out.shape[2:]))
        return layout.by_task(lambda t, *chunks: fn({k: v[:, t] for k, v in p.items()}, *chunks, **self.attrs), *xs)

    def _bank(self, fn: Callable, p: dict[str, Tensor], xs: tuple[Tensor, ...], layout: TaskLayout) -> Tensor:
        w = self.table
        assert w is not None, "a bank module is built with its composition table"
        T, K = w.shape[-2:]
        B = xs[0].shape[1]
        if self.definition.linear_in_params and B * K < T * K + B:
            E = xs[0].shape[0]
            folded = [x.unsqueeze(1).expand(E, K, *x.shape[1:]).reshape(E * K, *x.shape[1:]) for x in xs]
            out = fn({k: v.flatten(0, 1) for k, v in p.items()}, *folded, **self.attrs).view(E, K, B, -1)
            if w.dim() == 2:
                return torch.einsum("ekbo,bk->ebo", out, w[layout.task])
            return torch.einsum("ekbo,ebk->ebo", out, to_ensemble(w, E)[:, layout.task])   # a seed's own w
        # theta_t = sum_k w[t, k] Phi_k for every task, laid out [E, T, ...] for the task path. On CUDA one mm
        # over [K, E * P]: cuBLAS runs bmm's backward for w, [T, P] @ [P, K], without splitting P, and that
        # one kernel took 78 % of PaCo's update on an H100 (measured)
        composed = {}
        for k, v in p.items():
            E = v.shape[0]
            if v.is_cuda and w.dim() == 2:
                mixed = (w @ v.reshape(E, K, -1).transpose(0, 1).reshape(K, -1)).view(T, E, -1).transpose(0, 1)
                composed[k] = mixed.reshape(E, T, *v.shape[2:])
            elif v.is_cuda:   # seeds: each its own w
                composed[k] = torch.bmm(to_ensemble(w, E), v.reshape(E, K, -1)).view(E, T, *v.shape[2:])
            else:
                composed[k] = _Compose.apply(w, v)
        return self._per_task(fn, composed, xs, layout)


def _unsafe_reshape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """`x.reshape(shape)` of a contiguous x, not recorded as a view of x (as torch's matmul returns its results)."""
    return torch.ops.aten._unsafe_view(x, shape)


class _Compose(torch.autograd.Function):
    """theta[e, t] = sum_k w[t, k] Phi[e, k] on the CPU: w `[T, K]` (or `[S, T, K]`, a group of seeds: member e
    reads its seed's), Phi `[E, K, *shape]` -> `[E, T, *shape]`.

    Forward is one bmm per ensemble member (w copied to a real batch: over a stride-0 batch it took 5x
    longer). The gradient for w reduces over all P = prod(shape) entries: as one [T, P] @ [P, K] matmul MKL
    ran it on one thread at less than half the speed of copying those bytes (PaCo's 400 x 400 layer:
    0.88 ms at one thread, 0.83 at two), so it is split along shape's first axis into a batch of R
    products whose results are summed (0.40 and 0.21 ms). Those ops in PaCo's fwd+bwd, two threads: 4.4 -> 2.0 ms.
    """

    @staticmethod
    def forward(ctx, w: Tensor, phi: Tensor) -> Tensor:
        E, K, T = phi.shape[0], phi.shape[1], w.shape[-2]
        w_batch = to_ensemble(w if w.dim() == 3 else w.unsqueeze(0), E).contiguous()
        ctx.save_for_backward(w_batch, phi)
        ctx.w_shape = w.shape
        return torch.bmm(w_batch, phi.reshape(E, K, -1)).view(E, T, *phi.shape[2:])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        w_batch, phi = ctx.saved_tensors
        E, K, T = phi.shape[0], phi.shape[1], w_batch.shape[1]
        R = phi.shape[2] if phi.dim() > 3 else 1
        grad_w = grad_phi = None
        if ctx.needs_input_grad[0]:
            per_member = [torch.matmul(grad[e].reshape(T, R, -1).transpose(0, 1),
                                       phi[e].reshape(K, R, -1).permute(1, 2, 0)).sum(0) for e in range(E)]
            seeds = ctx.w_shape[0] if len(ctx.w_shape) == 3 else 1
            grad_w = torch.stack([cast(Tensor, sum(per_member[s * E // seeds:(s + 1) * E // seeds]))
                                  for s in range(seeds)]).view(ctx.w_shape)
        if ctx.needs_input_grad[1]:
            grad_phi = torch.bmm(w_batch.transpose(1, 2), grad.reshape(E, T, -1)).view(phi.shape)
        return grad_w, grad_phi


def shared_input_linears(x: Tensor, a: ParamOp, b: ParamOp, pad_a: tuple[int, int] = (0, 0),
                         pad_b: tuple[int, int] = (0, 0)) -> tuple[Tensor, Tensor]:
    """Two shared linears of one input, `(a(x), b(x))`, with one input gradient (see _SharedInput)."""
    pa, pb = a.padded(pad_a), b.padded(pad_b)
    E = max(t.shape[0] for t in (x, *pa.values(), *pb.values()))

    def batch(t: Tensor | None) -> Tensor | None:   # [E, 1, ...] -> [E, ...], broadcast over the ensemble
        return None if t is None else to_ensemble(t.squeeze(1), E)
    x = to_ensemble(x, E)
    wa, wb = (to_ensemble(p["weight"].squeeze(1), E) for p in (pa, pb))
    ba, bb = batch(pa.get("bias")), batch(pb.get("bias"))
    if x.is_cuda:   # both passes are CPU wins; on an H100 they made PTSL's eager fwd+bwd 1.31x slower (launches)
        return dense_map(x, wa, ba), dense_map(x, wb, bb)
    return _SharedInput.apply(x, wa, ba, wb, bb)


class _SharedInput(torch.autograd.Function):
    """x -> (x Wa + ba, x Wb + bb): two shared linears reading one tensor (PTSL's SH_i(h) and P_down(h)).

    Autograd computes x's gradient as two products and a sum of them (a fresh [E, B, in] tensor and one
    more pass); here the second product accumulates into the first in place. A narrow weight's gradient
    (out < in) is computed as (g^T x)^T, the orientation MKL runs fast: PTSL's 368 -> 50 projection, alone,
    0.32 vs 0.44 ms. PTSL fwd+bwd side by side: see lower.shared_inputs."""

    @staticmethod
    def forward(ctx, x: Tensor, wa: Tensor, ba: Tensor | None, wb: Tensor, bb: Tensor | None) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(x, wa, wb)
        ctx.biases = (ba is not None, bb is not None)
        return dense_map(x, wa, ba), dense_map(x, wb, bb)

    @staticmethod
    def backward(ctx, ga: Tensor, gb: Tensor) -> tuple[Tensor | None, ...]:
        x, wa, wb = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(ga, wa.transpose(1, 2)).baddbmm_(gb, wb.transpose(1, 2))

        def weight_grad(g: Tensor) -> Tensor:
            if g.shape[-1] < x.shape[-1]:
                return torch.bmm(g.transpose(1, 2), x).transpose(1, 2)
            return torch.bmm(x.transpose(1, 2), g)
        return (gx, weight_grad(ga), ga.sum(1) if ctx.biases[0] else None,
                weight_grad(gb), gb.sum(1) if ctx.biases[1] else None)
