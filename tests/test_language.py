"""The spec language end to end: params, control flow, blocks, named modules, sharing, imports, the
agent and train sections, warnings and the `graphnet show` / `graphnet check` commands.

Every spec here is tiny, so widths and parameter counts are worked out by hand at MT10 sizes
(obs 39, act 4, 10 tasks: the actor outputs 8 features, the critic 1).
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import graphnet
from graphnet.cli import main
from graphnet.ir import info, nodes
from graphnet.train_config import TAPER, GroupSampling, TacoSampling, Triplet

TASKS = 10


def write(directory: Path, text: str, name: str = "spec.gn") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, text: str, **overrides) -> graphnet.Spec:
    return graphnet.load(write(tmp_path, text), **overrides)


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def widths(spec: graphnet.Spec, role: str, op: str = "linear") -> list[int]:
    """Output widths of the `op` nodes of one role, inputs before users."""
    return [n.width for n in nodes(spec.graph) if n.op == op and n.role == role]


def total(actor: int, critic_twin: int, common: int = 0) -> int:
    """The whole agent: actor, 2 critic twins, 2 target twins, common parameters, T temperatures."""
    return actor + 4 * critic_twin + common + TASKS


# ----------------------------------------------------------------------------- params
MLP = """
param H = 32, N = 2, D = H / 8
block mlp(x) -> OUT {
  h = x
  repeat i < N { h = relu(linear(h -> H)) }
  out = linear(h -> OUT)
}
agent {
  actor = mlp(obs)
  critic = mlp(concat(obs, act))
}
"""


def test_param_defaults(tmp_path):
    spec = load(tmp_path, MLP)
    assert spec.values == {"H": 32, "N": 2, "D": 4}
    assert widths(spec, "actor") == [32, 32, 8]
    assert widths(spec, "critic") == [32, 32, 1]
    report = spec.params()
    assert report.actor == linear(39, 32) + linear(32, 32) + linear(32, 8)
    assert report.critic == 2 * (linear(43, 32) + linear(32, 32) + linear(32, 1))
    assert report.total == total(report.actor, report.critic // 2)


@pytest.mark.parametrize("h", [64, 64.0, "64"])
def test_param_override_reaches_params_computed_from_it(tmp_path, h):
    spec = load(tmp_path, MLP, H=h, N=1)
    assert spec.values == {"H": 64, "N": 1, "D": 8}
    assert isinstance(spec.values["H"], int)
    assert widths(spec, "actor") == [64, 8]
    assert spec.params().actor == linear(39, 64) + linear(64, 8)


def test_bool_and_float_params(tmp_path):
    text = """
    param deep = false, scale = 0.5
    agent {
      h = relu(linear(obs -> 16))
      if deep { h = relu(linear(h -> 16)) }
      actor = linear(scale * h -> 8)
      critic = linear(concat(h, act) -> 1)
    }
    """
    spec = load(tmp_path, text)
    assert widths(spec, "common") == [16]
    [scale] = [n for n in nodes(spec.graph) if n.op == "scale"]
    assert scale.attrs["factor"] == 0.5
    spec = load(tmp_path, text, deep=True, scale=2)
    assert widths(spec, "common") == [16, 16]
    [scale] = [n for n in nodes(spec.graph) if n.op == "scale"]
    assert scale.attrs["factor"] == 2.0


def test_set_through_the_cli(tmp_path, capsys):
    path = write(tmp_path, MLP)
    assert main(["show", str(path), "--set", "H=64", "--set", "N=1"]) == 0
    out = capsys.readouterr().out
    assert "params: H = 64, N = 1, D = 8" in out
    assert main(["params", str(path), "--set", "H=64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == graphnet.load(path, H=64).params().total
    assert report["actor"] == linear(39, 64) + linear(64, 64) + linear(64, 8)


CHOICE = """
param g = none in [none, add]
agent {
  h = relu(linear(obs -> 16))
  if g == add { h = h + relu(linear(h -> 16)) }
  actor = linear(h -> 8)
  critic = linear(concat(h, act) -> 1)
}
"""


def test_choice_param_default_and_override(tmp_path):
    spec = load(tmp_path, CHOICE)
    assert spec.values["g"] == "none"
    assert widths(spec, "common") == [16]
    assert widths(spec, "common", op="add") == []
    spec = load(tmp_path, CHOICE, g="add")
    assert spec.values["g"] == "add"
    assert widths(spec, "common") == [16, 16]
    assert widths(spec, "common", op="add") == [16]


def test_choice_param_set_through_the_cli(tmp_path, capsys):
    path = write(tmp_path, CHOICE)
    assert main(["show", str(path), "--set", "g=add"]) == 0
    out = capsys.readouterr().out
    assert "params: g = add" in out
    assert " add(" in out


def test_numeric_choices(tmp_path):
    text = MLP.replace("N = 2,", "N = 2 in [1, 2, 3],")
    assert widths(load(tmp_path, text, N=3), "actor") == [32, 32, 32, 8]


def test_free_params(tmp_path):
    spec = load(tmp_path, MLP.replace("param H = 32, N = 2", "param H = 32 free, N = 2, W = 7 free"))
    assert spec.free == ["H", "W"]
    assert graphnet.load("ptsl").free == ["H"]
    assert graphnet.load("softmod").free == ["W"]


# ----------------------------------------------------------------------------- control flow
REPEAT = """
param N = 4
agent {
  h = obs
  repeat i < N {
    if i == 0 { h = linear(h -> 10) }
    else if i == 1 { h = linear(h -> 20) }
    else if i < 3 { h = linear(h -> 30) }
    else { h = linear(h -> 40) }
  }
  actor = linear(h -> 8)
  critic = linear(concat(h, act) -> 1)
}
"""


@pytest.mark.parametrize("n, expected", [(4, [10, 20, 30, 40]), (2, [10, 20]), (1, [10]), (0, [])])
def test_repeat_index_and_if_else_chain(tmp_path, n, expected):
    spec = load(tmp_path, REPEAT, N=n)
    assert widths(spec, "common") == expected
    last = expected[-1] if expected else 39
    assert spec.params().actor == linear(last, 8)


@pytest.mark.parametrize("cond, taken", [
    ("N == 3", True), ("N != 3", False), ("N < 3", False), ("N <= 3", True), ("N > 2", True), ("N >= 4", False),
    ("N > 2 and g == none", True), ("not (g == none) or N >= 4", False), ("g != add", True),
    ("T == 10 and OBS == 39 and ACT == 4", True), ("true", True), ("false", False),
])
def test_conditions(tmp_path, cond, taken):
    text = f"""
    param N = 3, g = none in [none, add]
    agent {{
      h = obs
      if {cond} {{ h = linear(h -> 16) }}
      actor = linear(h -> 8)
      critic = linear(concat(h, act) -> 1)
    }}
    """
    assert widths(load(tmp_path, text), "common") == ([16] if taken else [])


def test_statements_separated_by_semicolons_on_one_line(tmp_path):
    spec = load(tmp_path, "param H = 5; agent { h = linear(obs -> H); actor = linear(h -> 8); "
                          "critic = linear(concat(h, act) -> 1) }  # all on one line")
    assert widths(spec, "common") == [5]


# ----------------------------------------------------------------------------- blocks
def test_block_output_width_from_caller_default_and_agent(tmp_path):
    spec = load(tmp_path, """
    param Z = 12, H = 4
    block enc(x) -> OUT = Z + 3 { out = relu(linear(x -> OUT)) }
    block mlp(x) -> OUT { out = linear(relu(linear(x -> H)) -> OUT) }
    agent {
      z = enc(obs)
      y = enc(obs -> 7)
      actor = enc(concat(z, y))
      critic = mlp(concat(z, act), H = 32)
    }
    """)
    g = spec.graph
    features = {name: g.nodes[node]["data"].width for name, node in info(g).features.items()}
    assert features == {"z": 15, "y": 7}                   # the default Z + 3, then the caller's -> 7
    assert widths(spec, "common") == [15]                  # z feeds actor and critic
    assert widths(spec, "actor") == [7, 8]                 # y feeds the actor only; the actor asks for
                                                           # 2 x ACT, not the default
    assert widths(spec, "critic") == [32, 1]               # H bound to 32 by the keyword argument
    assert spec.params().critic == 2 * (linear(19, 32) + linear(32, 1))


def test_block_with_several_inputs(tmp_path):
    spec = load(tmp_path, """
    block mix(a, b) -> OUT { out = linear(concat(a, b) -> OUT) }
    agent {
      actor = mix(obs, onehot(task))
      critic = mix(concat(obs, act), onehot(task))
    }
    """)
    assert spec.params().actor == linear(49, 8)
    assert spec.params().critic == 2 * linear(53, 1)


def test_every_block_call_has_its_own_parameters(tmp_path):
    spec = load(tmp_path, """
    block enc(x) -> OUT = 6 { out = linear(x -> OUT) }
    agent {
      a = enc(obs)
      b = enc(obs)
      actor = linear(a + b -> 8)
      critic = linear(concat(a, act) -> 1)
    }
    """)
    encoders = [m for m in info(spec.graph).modules.values() if m.attrs["out"] == 6]
    assert len(encoders) == 2
    assert spec.params().common == linear(39, 6)          # a (both roles) is common, b only the actor's
    assert spec.params().actor == linear(39, 6) + linear(6, 8)


# ----------------------------------------------------------------------------- named modules
def test_named_module_is_one_module_applied_at_every_call_site(tmp_path):
    spec = load(tmp_path, """
    agent {
      f = linear(-> 6)
      a = relu(f(obs))
      b = f(obs)
      actor = linear(a + b -> 8)
      critic = linear(concat(f(obs), act) -> 1)
    }
    """)
    [f] = [m for m in info(spec.graph).modules.values() if m.attrs["out"] == 6]
    users = [n for n in nodes(spec.graph) if n.module == f.id]
    assert len(users) == 3
    assert (f.sharing, f.copies, f.in_widths, f.per_copy, f.role) == ("shared", 1, [39], linear(39, 6), "common")
    report = spec.params()
    assert report.common == linear(39, 6)                 # counted once for three call sites
    assert report.total == total(linear(6, 8), linear(10, 1), linear(39, 6))


def test_named_module_with_declared_input_width_and_per_iteration_modules(tmp_path):
    spec = load(tmp_path, """
    block b(x) -> OUT {
      p = linear(5 -> 5, bias = false)
      h = linear(x -> 5)
      repeat i < 3 { h = p(h) }
      repeat j < 2 {
        q = linear(-> 5)
        h = q(h)
      }
      out = linear(h -> OUT)
    }
    agent {
      actor = b(obs)
      critic = b(concat(obs, act))
    }
    """)
    actor = [m for m in info(spec.graph).modules.values() if m.role == "actor"]
    per_module_uses = sorted(sum(n.module == m.id for n in nodes(spec.graph)) for m in actor)
    assert per_module_uses == [1, 1, 1, 1, 3]             # h, out, q at j=0, q at j=1; p three times
    assert spec.params().actor == linear(39, 5) + linear(5, 5, bias=False) + 2 * linear(5, 5) + linear(5, 8)


# ----------------------------------------------------------------------------- sharing
SHARING = """
param K = 3
block b(x) -> OUT {
  h = relu(linear(x -> 6))
  out = shared linear(h -> OUT)
}
agent {
  e = embed(task -> 4)
  actor = task b(concat(obs, e))
  critic = bank(K) b(concat(obs, act, e))
}
"""


def test_task_and_bank_on_whole_blocks_and_shared_inside(tmp_path):
    spec = load(tmp_path, SHARING)
    got = sorted((m.role, m.sharing, m.copies, m.per_copy) for m in info(spec.graph).modules.values())
    assert got == sorted([
        ("common", "task", 10, 4),                     # embed: one row per task
        ("actor", "task", 10, linear(43, 6)),          # task b(...): T copies of the hidden layer
        ("actor", "shared", 1, linear(6, 8)),          # ... but `shared linear` says otherwise
        ("critic", "bank", 3, linear(47, 6)),          # bank(K) b(...): K copies
        ("critic", "shared", 1, linear(6, 1)),
    ])
    assert {k: v for k, v in info(spec.graph).bank.items() if k != "pos"} == \
        {"K": 3, "init": "identical", "w": "normal"}
    report = spec.params()
    assert report.actor == 10 * linear(43, 6) + linear(6, 8)
    assert report.critic == 2 * (3 * linear(47, 6) + linear(6, 1))
    assert report.common == 10 * 4 + 10 * 3             # the embedding and the T x K table w
    assert report.by_sharing == {"shared": linear(6, 8) + 2 * linear(6, 1),
                                 "task": 10 * linear(43, 6) + 40,
                                 "bank": 2 * 3 * linear(47, 6) + 30}


def test_sharing_on_single_ops(tmp_path):
    spec = load(tmp_path, """
    agent {
      actor = task linear(obs -> 8)
      critic = bank(10, init = random, w = onehot) linear(concat(obs, act) -> 1)
    }
    """)
    got = sorted((m.role, m.sharing, m.copies) for m in info(spec.graph).modules.values())
    assert got == [("actor", "task", 10), ("critic", "bank", 10)]
    assert info(spec.graph).bank["init"] == "random"
    assert info(spec.graph).bank["w"] == "onehot"
    assert spec.params().actor == 10 * linear(39, 8)


def test_named_module_keeps_its_sharing(tmp_path):
    spec = load(tmp_path, """
    agent {
      f = task linear(-> 5)
      actor = linear(f(obs) -> 8)
      critic = linear(concat(f(obs), act) -> 1)
    }
    """)
    [f] = [m for m in info(spec.graph).modules.values() if m.attrs["out"] == 5]
    assert (f.sharing, f.copies, f.role) == ("task", 10, "common")
    assert spec.params().common == 10 * linear(39, 5)


# ----------------------------------------------------------------------------- imports
ENC = """
param Z = 16
block enc(x) -> OUT = Z { out = relu(linear(x -> OUT)) }
"""


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from another directory: imports resolve against the importing file, not the cwd."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)


def test_import_by_library_name_and_by_relative_path_with_as(tmp_path, elsewhere):
    write(tmp_path, ENC, "lib/enc.gn")
    path = write(tmp_path, """
    import "lib/enc.gn" as e
    import mtsac
    agent {
      f = e.enc(obs)
      actor = mtsac.mlp(f)
      critic = mtsac.mlp(concat(f, act))
    }
    """)
    spec = graphnet.load(path)
    assert spec.values == {"Z": 16, "H": 400, "N": 3}          # imported files bring their params
    assert widths(spec, "common") == [16]
    assert widths(spec, "actor") == [400, 400, 400, 8]
    spec = graphnet.load(path, Z=5, H=20, N=1)
    assert widths(spec, "common") == [5]
    assert widths(spec, "actor") == [20, 8]
    assert str(tmp_path / "lib" / "enc.gn") in spec.sources


def test_import_without_as_is_named_after_the_file_and_nests_relative_to_it(tmp_path, elsewhere):
    write(tmp_path, ENC, "lib/enc.gn")
    write(tmp_path, """
    import "enc.gn"
    block wrap(x) -> OUT = 3 { out = enc.enc(x -> OUT) }
    """, "lib/wrap.gn")
    spec = graphnet.load(write(tmp_path, """
    import "lib/wrap.gn"
    agent {
      w = wrap.wrap(obs)
      actor = linear(w -> 8)
      critic = linear(concat(w, act) -> 1)
    }
    """))
    assert widths(spec, "common") == [3]


def test_the_importing_file_declaration_wins(tmp_path):
    write(tmp_path, ENC, "enc.gn")
    spec = load(tmp_path, """
    import "enc.gn" as e
    param Z = 9
    agent {
      f = e.enc(obs)
      actor = linear(f -> 8)
      critic = linear(concat(f, act) -> 1)
    }
    """)
    assert spec.values == {"Z": 9}
    assert widths(spec, "common") == [9]


def test_library_spec_importing_library_specs():
    spec = graphnet.load("care_ptsl")
    assert {"K", "E", "Z", "H", "D", "N", "g", "proj", "first", "ctx"} <= set(spec.values)
    assert spec.values["H"] == 326                               # care_ptsl's own declaration wins


# ----------------------------------------------------------------------------- agent features, detach
def test_agent_level_feature_is_computed_once_and_detach(tmp_path):
    spec = load(tmp_path, """
    agent {
      u = relu(linear(obs -> 5))
      actor = linear(concat(obs, detach(u)) -> 8)
      critic = linear(concat(obs, act, u) -> 1)
    }
    """)
    g = spec.graph
    [u] = [n for n in nodes(g) if n.label == "u"]
    assert info(g).features == {"u": u.id}
    assert (u.op, u.width, u.role) == ("relu", 5, "common")
    [detach] = [n for n in nodes(g) if n.op == "detach"]
    assert (detach.inputs, detach.width, detach.role, detach.module) == ([u.id], 5, "actor", None)
    assert len([m for m in info(g).modules.values() if m.attrs["out"] == 5]) == 1
    assert spec.params().total == total(linear(44, 8), linear(48, 1), linear(39, 5))


# ----------------------------------------------------------------------------- train section
AGENT_WITH_BANK = """
agent {
  u = linear(obs -> 5)
  actor = bank(3) linear(concat(obs, u) -> 8)
  critic = bank(3) linear(concat(obs, act, u) -> 1)
}
"""


def test_train_section_is_parsed_into_train_config(tmp_path):
    spec = load(tmp_path, AGENT_WITH_BANK + """
    train {
      lr = 1e-3
      gamma = 0.9; pcgrad = true
      loss_maskout = 3000
      w_reset = true
      replay = taper(alpha = 0.7, kmin = 8, kmax = 16)
      sampling = groups(groups = "0 1 | 2 3 4")
      triplet = triplet(feature = u, margin = 2)
    }
    """)
    t = spec.train
    assert (t.lr, t.gamma, t.pcgrad, t.loss_maskout, t.w_reset) == (1e-3, 0.9, True, 3000.0, True)
    assert t.replay == TAPER(kind="taper", alpha=0.7, kmin=8, kmax=16)
    assert t.replay.beta == 0.4
    assert isinstance(t.sampling, GroupSampling)
    assert t.sampling.task_groups() == [[0, 1], [2, 3, 4]]
    assert t.triplet == Triplet(feature="u", margin=2.0)
    assert (t.tau, t.batch_per_task, t.init_alpha) == (0.005, 128, 1.0)   # defaults


def test_no_train_section_gives_the_defaults(tmp_path):
    assert load(tmp_path, AGENT_WITH_BANK).train == graphnet.TrainConfig()


def test_train_sampling_taco(tmp_path):
    spec = load(tmp_path, AGENT_WITH_BANK + "train { sampling = taco(every = 500) }")
    assert spec.train.sampling == TacoSampling(kind="taco", every=500)


def test_library_train_sections():
    paco = graphnet.load("paco").train
    assert (paco.loss_maskout, paco.w_reset) == (3000.0, True)
    su = graphnet.load("shared_unique").train
    assert isinstance(su.replay, TAPER) and su.triplet.feature == "u"
    assert isinstance(graphnet.load("taco").train.sampling, TacoSampling)


# ----------------------------------------------------------------------------- warnings
UNUSED = """
agent {
  unused = linear(obs -> 7)
  actor = linear(obs -> 8)
  critic = linear(concat(obs, act) -> 1)
}
"""


def test_unused_node_is_a_warning_and_not_counted(tmp_path):
    spec = load(tmp_path, UNUSED)
    [w] = spec.warnings
    assert w.kind == "warning"
    assert (w.pos.line, w.pos.col) == (2, 3)
    assert "'unused' is computed but never used" in w.message
    assert all(n.label != "unused" for n in nodes(spec.graph))
    assert spec.params().total == total(linear(39, 8), linear(43, 1))


def test_check_prints_warnings_and_exits_0(tmp_path, capsys):
    path = write(tmp_path, UNUSED)
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}:2:3: warning: 'unused' is computed but never used" in err
    assert f"ok: {path}" in out


@pytest.mark.parametrize("name", graphnet.library_names())
def test_library_specs_load_without_warnings(name):
    spec = graphnet.load(name)
    assert spec.warnings == []
    assert spec.params().total > 0


# ----------------------------------------------------------------------------- show and check
def test_show_prints_params_bank_nodes_sharing_and_total(tmp_path, capsys):
    path = write(tmp_path, SHARING)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    spec = graphnet.load(path)
    assert lines[0] == f"{path}  hash {spec.hash}"
    assert lines[1] == "params: K = 3"
    assert lines[2] == "bank: K = 3, init = identical, w = normal (table w: 10 x 3)"
    assert "embed(task) -> 4  task x10  40 params" in out
    assert f"linear(actor/concat) -> 6  task x10  {10 * linear(43, 6):,} params" in out
    assert f"linear(critic/concat) -> 6  bank x3  {3 * linear(47, 6):,} params" in out
    assert f"-> 8  shared  {linear(6, 8)} params" in out
    assert lines[-1] == f"total parameters: {spec.params().total:,}"


def test_show_at_other_sizes(tmp_path, capsys):
    assert main(["show", str(write(tmp_path, SHARING)), "--tasks", "5", "--obs", "20"]) == 0
    out = capsys.readouterr().out
    assert "(table w: 5 x 3)" in out
    assert f"linear(actor/concat) -> 6  task x5  {5 * linear(24, 6):,} params" in out


def test_check_exit_codes(tmp_path, capsys):
    good = write(tmp_path, MLP, "good.gn")
    bad = write(tmp_path, MLP.replace("h -> H", "h -> 0"), "bad.gn")
    assert main(["check", str(good)]) == 0
    out, err = capsys.readouterr()
    assert out == f"ok: {good} ({graphnet.load(good).params().total:,} parameters at MT10 sizes)\n"
    assert err == ""
    assert main(["check", str(bad)]) == 2
    assert f"{bad}:" in capsys.readouterr().err
    assert main(["check", str(good), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert f"ok: {good}" in out and f"{bad}:" in err


def test_check_every_library_spec_by_name(capsys):
    assert main(["check", *graphnet.library_names()]) == 0
    assert capsys.readouterr().out.count("ok: ") == len(graphnet.library_names())
