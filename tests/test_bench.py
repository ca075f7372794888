"""`graphnet bench`'s accounting: the per-sample work it counts and the dense MLP it sizes from that.
(Its timings are the benchmark's output, not something a test can assert.)"""
from __future__ import annotations

from importlib import import_module

import pytest
import torch

import graphnet
from graphnet.compiler import build
from graphnet.cli import main
from graphnet.compiler.bench import bench, dense_mlp, flops, macs_per_sample, matmul_ms, op_times

OBS, ACT, T, PER_TASK = 6, 2, 3, 4
bench_module, build_module = import_module("graphnet.compiler.bench"), import_module("graphnet.compiler.build")


def work(name: str, **overrides) -> tuple[float, float]:
    """Forward multiply-adds per sample of the actor and of one critic twin."""
    spec = graphnet.load(name, graphnet.Sizes(obs=OBS, act=ACT, tasks=T), **overrides)
    nets = build(spec, OBS, ACT, T, device="cpu")
    obs, act = torch.randn(T, OBS), torch.randn(T, ACT)
    return macs_per_sample(nets, "actor", obs, act, T), macs_per_sample(nets, "critic", obs, act, T) / 2


def mlp_macs(inp: int, H: int, N: int, out: int) -> int:
    return inp * H + (N - 1) * H * H + H * out


def test_mtsac_work_is_its_layers():
    H, N = 16, 3
    assert work("mtsac", H=H, N=N) == (mlp_macs(OBS + T, H, N, 2 * ACT), mlp_macs(OBS + ACT + T, H, N, 1))


def test_ptsl_work_counts_every_use_of_its_shared_projections():
    H, D, N = 16, 4, 2
    def trunk(I: int, OUT: int) -> int:
        first = I * D + D * D + I * H + D * H                  # own down projection, task layer, shared layer, up
        middle = H * D + D * D + H * H + D * H                 # shared down again, task layer, shared layer, up again
        head = H * OUT + H * D + D * OUT                       # shared output layer, down a third time, task output
        return first + (N - 1) * middle + head
    assert work("ptsl", H=H, D=D, N=N, g="none", proj="shared", first="down") == (trunk(OBS, 2 * ACT),
                                                                                 trunk(OBS + ACT, 1))


def test_paco_work_leaves_out_composing_the_task_weights():
    """Per sample, PaCo evaluates one composed network: the work of the MT-SAC network of its shape."""
    assert work("paco", K=2, H=16, N=2) == work("mtsac", H=16, N=2)


def test_film_work_is_the_specs_not_the_compilers():
    """FiLM's gamma and beta read onehot(task): the compiled networks compute them once per task, but
    the spec's per-sample function has them for every sample, and that is the work counted."""
    H, N, Z = 16, 2, T

    def trunk(I: int, OUT: int) -> int:
        return I * H + (N - 1) * H * H + N * 2 * Z * H + H * OUT

    assert work("film", H=H, N=N) == (trunk(OBS, 2 * ACT), trunk(OBS + ACT, 1))


@pytest.mark.parametrize("inp, out, macs", [(6, 4, 5_000), (43, 1, 160_000), (39, 8, 1_000_000)])
def test_dense_mlp_is_the_widest_within_the_work(inp, out, macs):
    def count(w: int) -> int:
        return mlp_macs(inp, w, 3, out)
    w = dense_mlp(inp, out, macs)[0].out_features
    assert count(w) <= macs < count(w + 1)


def test_bench_reports_its_figures():
    spec = graphnet.load("ptsl", graphnet.Sizes(obs=OBS, act=ACT, tasks=T), H=16, D=4, N=2)
    r = bench(spec, OBS, ACT, T, PER_TASK, reps=1)
    assert {"compiled_ms", "reference_ms", "dense_equiv_ms", "flops", "dense_equiv_flops"} <= set(r)
    assert r["batch"] == T * PER_TASK and min(r["compiled_ms"], r["reference_ms"], r["dense_equiv_ms"]) > 0
    # the dense MLP does no more matmul work than the compiled networks, and at most one width step less
    assert 0.8 * r["flops"] < r["dense_equiv_flops"] <= r["flops"]


def test_flops_count_in_place_products():
    """Residual sums and shared-input gradients run as baddbmm_, which torch's counter skips; bench counts it."""
    a, b, into = torch.randn(2, 3, 4), torch.randn(2, 4, 5), torch.zeros(2, 3, 5)
    assert flops(lambda: into.baddbmm_(a, b)) == flops(lambda: torch.bmm(a, b)) == 2 * 2 * 3 * 4 * 5


def test_bench_compiles_both_sides_alike(monkeypatch):
    """`--compile`: the trunks and the dense MLPs alike through torch.compile, in the mode asked for."""
    compiled_modules: list[tuple[str, str]] = []

    def recording(module, mode):
        compiled_modules.append((type(module).__name__, mode))
        return torch.compile(module, mode=None if mode is True else mode)
    monkeypatch.setattr(build_module, "compile_module", recording)
    monkeypatch.setattr(bench_module, "compile_module", recording)
    spec = graphnet.load("mtsac", graphnet.Sizes(obs=OBS, act=ACT, tasks=T), H=16)
    r = bench(spec, OBS, ACT, T, PER_TASK, reps=1, compile="default")
    assert {mode for _, mode in compiled_modules} == {"default"}
    # actor, critic, the critic target's (deep-copied) trunk; the dense actor and critic
    assert sorted(name for name, _ in compiled_modules) == ["ActorTrunk", "CriticTrunk", "GraphModule", "Sequential",
                                                            "Sequential"]
    assert min(r["compiled_ms"], r["dense_equiv_ms"]) > 0


def test_op_times_names_every_op_of_a_step_once_per_call():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    ops = {r["op"]: r for r in op_times(lambda: torch.mm(a, b).relu().sum(), steps=3)}
    assert set(ops) == {"mm", "relu", "sum"} and all(r["calls"] == 1 for r in ops.values())
    assert matmul_ms(list(ops.values())) == ops["mm"]["ms"] > 0


def test_bench_ops_splits_both_steps_into_matmuls_and_the_rest(capsys):
    """The compiled step's products are batched over the stacked twins (bmm, baddbmm); the dense MLP's are mm
    and addmm. PaCo at K = 2 composes weights for its three tasks' paths: more bmm calls than MT-SAC's."""
    r = {name: bench(graphnet.load(name, graphnet.Sizes(obs=OBS, act=ACT, tasks=T), H=16), OBS, ACT, T, PER_TASK,
                     reps=2, ops=True) for name in ("mtsac", "paco")}
    calls = {name: {x["op"]: x["calls"] for x in r[name]["ops"]["compiled"]} for name in r}
    dense = {x["op"] for x in r["mtsac"]["ops"]["dense"]}
    assert {"bmm", "baddbmm"} <= set(calls["mtsac"]) and not {"mm", "addmm"} & set(calls["mtsac"])
    assert {"mm", "addmm"} <= dense and "bmm" not in dense
    assert calls["paco"]["bmm"] > calls["mtsac"]["bmm"]
    r = r["paco"]
    for side in ("compiled", "dense"):
        assert 0 < r[f"{side}_matmul_ms"] < sum(x["ms"] for x in r["ops"][side])
    assert r["matmul_floor"] == pytest.approx(r["compiled_matmul_ms"] / r["dense_equiv_ms"])
    assert main(["bench", "mtsac", "--obs", str(OBS), "--act", str(ACT), "--tasks", str(T), "--batch-per-task",
                 str(PER_TASK), "--set", "H=16", "--ops"]) == 0
    assert "compiled matmuls alone / dense step" in capsys.readouterr().out
    assert main(["bench", "mtsac", "--train", "--ops"]) == 2
    assert "--ops" in capsys.readouterr().err
    for other in ({"device": "cuda"}, {"compile": True}):
        with pytest.raises(graphnet.GraphnetError, match="eager CPU"):
            bench(graphnet.load("mtsac"), ops=True, **other)
