"""`graphnet match` and `graphnet ablate`: exact width solving on graphnet's accounting, resolved specs.

Checked: the solver finds the same optimum as a brute-force scan (one and several solved params, the
ratio rule), falls back to a scan where a count is not monotone, rejects impossible budgets and
unsolvable names (exit 2, one-line message), warns on params not declared free; `-o` writes a spec that
loads from its new folder (comments, `free` and relative imports kept working) and counts what was
printed; `ablate` writes its grid and tables, every variant within tolerance of the budget.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import graphnet
from graphnet.cli import main
from graphnet.matching import MatchError, nearest, solve

SIZES = graphnet.Sizes(obs=5, act=2, tasks=3)
SMALL = ["--obs", "5", "--act", "2", "--tasks", "3"]

TINY = """# a tiny MLP agent
param H = 8 free, D = 4, N = 2   # widths
param head = shared in [shared, task]

block mlp(x) -> OUT {
  h = x
  repeat i < N { h = relu(linear(h -> H)) }
  z = relu(linear(h -> D))
  if head == task { out = task linear(z -> OUT) } else { out = linear(z -> OUT) }
}

agent {
  actor = mlp(obs)
  critic = mlp(concat(obs, act))
}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "tiny.gn"
    path.parent.mkdir()
    path.write_text(TINY)
    return path


def total(ref, **overrides) -> int:
    return graphnet.load(ref, SIZES, **overrides).params(SIZES.obs, SIZES.act, SIZES.tasks).total


def brute_force(counts: dict[int, int], budget: int) -> int:
    return min(counts, key=lambda x: (abs(counts[x] - budget), x))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- the solver
def test_match_is_the_brute_force_optimum(tiny):
    counts = {h: total(tiny, H=h) for h in range(1, 121)}
    for budget in (counts[1], counts[1] + 1, 1000, 2222, 5000, 9999, counts[57] + 3, counts[120] - 1):
        m = solve(tiny, ["H"], budget, sizes=SIZES)
        best = brute_force(counts, budget)
        assert m.values == {"H": best} and m.count == counts[best], budget
        assert m.mismatch == m.count - budget


def test_other_counts_and_overrides(tiny):
    counts = {h: graphnet.load(tiny, SIZES, H=h, head="task").params(5, 2, 3).actor for h in range(1, 80)}
    m = solve(tiny, ["H"], 3000, what="actor", overrides={"head": "task"}, sizes=SIZES)
    assert m.values["H"] == brute_force(counts, 3000)


def test_several_params_keep_their_ratio(tiny):
    # D = 4 is half of H = 8 in the spec: D follows round-half-up(H / 2), at least 1
    counts = {h: total(tiny, H=h, D=max(1, (h + 1) // 2)) for h in range(1, 121)}
    m = solve(tiny, ["H", "D"], 6000, sizes=SIZES)
    best = brute_force(counts, 6000)
    assert m.values == {"H": best, "D": max(1, (best + 1) // 2)}
    assert m.count == counts[best]
    m = solve(tiny, ["D", "H"], 6000, overrides={"H": 12}, sizes=SIZES)   # the ratio after --set: H = 3 D
    assert m.values["H"] == 3 * m.values["D"]


def test_nearest_on_a_known_curve_and_the_non_monotone_fallback():
    assert nearest(lambda x: x * x, 50, "x") == (7, 49, None)        # 49 beats 64
    assert nearest(lambda x: x * x, 56, "x") == (7, 49, None)        # a tie, 49 and 64 are 7 apart
    # a spike where binary search looks first would mislead it; the neighbours give it away, the scan finds 100
    x, found, note = nearest(lambda x: 2000 if x == 96 else 10 * x, 1000, "x")
    assert note and "not monotone" in note and "64..128" in note
    assert (x, found) == (100, 1000)


def test_impossible_budgets_and_names(tiny):
    with pytest.raises(MatchError, match="below the total count at H = 1"):
        solve(tiny, ["H"], 10, sizes=SIZES)
    with pytest.raises(MatchError, match="not a whole number"):
        solve(tiny, ["head"], 1000, sizes=SIZES)
    with pytest.raises(MatchError, match="has no param 'Q'"):
        solve(tiny, ["Q"], 1000, sizes=SIZES)


# ----------------------------------------------------------------------------- the command
def test_match_json_keys_and_written_spec(tiny, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "solved.gn"
    code, text, err = run(capsys, "match", tiny, "--solve", "H", "--budget", 5000, "--set", "head=task",
                          *SMALL, "--json", "-o", out)
    assert code == 0 and err == ""
    result = json.loads(text)
    assert set(result) == {"values", "count", "budget", "mismatch"}
    assert result["budget"] == 5000 and result["mismatch"] == result["count"] - 5000
    written = out.read_text()
    assert f"param H = {result['values']['H']} free, D = 4, N = 2   # widths" in written
    assert "param head = task in [shared, task]" in written and "# a tiny MLP agent" in written
    assert total(out) == result["count"]                                  # no --set needed any more


def test_match_prints_values_count_budget_mismatch(tiny, capsys):
    code, text, _ = run(capsys, "match", tiny, "--solve", "H", "--budget", 5000, *SMALL)
    m = solve(tiny, ["H"], 5000, sizes=SIZES)
    assert code == 0
    assert f"H = {m.values['H']}" in text and f"{m.count:,}" in text and "5,000" in text
    assert f"{m.mismatch:+,}" in text and "%" in text


def test_match_like_another_spec(capsys):
    code, text, _ = run(capsys, "match", "care_ptsl", "--solve", "H", "--like", "care", "--json")
    assert code == 0
    assert json.loads(text) == {"values": {"H": 326}, "count": 1911740, "budget": 1911742, "mismatch": -2}


def test_match_errors_exit_2_with_one_line(tiny, capsys):
    for args, message in ((["--solve", "H", "--budget", "10"], "below the total count at H = 1"),
                          (["--solve", "head", "--budget", "1000"], "not a whole number"),
                          (["--solve", "Q", "--budget", "1000"], "has no param 'Q'"),
                          (["--solve", "H", "--budget", "0"], "positive")):
        code, _, err = run(capsys, "match", tiny, *args, *SMALL)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_match_warns_on_a_param_not_declared_free(tiny, capsys):
    code, _, err = run(capsys, "match", tiny, "--solve", "D", "--budget", 3000, *SMALL)
    assert code == 0 and "warning: D is not declared free" in err


def test_written_spec_keeps_imports_working(tmp_path, capsys):
    lib = tmp_path / "a" / "lib"
    lib.mkdir(parents=True)
    (lib / "enc.gn").write_text("param W = 16\nblock enc(x) -> OUT = W { out = relu(linear(x -> OUT)) }\n")
    (tmp_path / "a" / "helper.gn").write_text("block mlp(x) -> OUT { out = linear(relu(linear(x -> 32)) -> OUT) }\n")
    (tmp_path / "a" / "main.gn").write_text(
        'import "lib/enc.gn" as e\nimport helper\nimport care\n'
        "agent {\n  actor = helper.mlp(e.enc(obs))\n  critic = helper.mlp(concat(care.encoder(obs), act))\n}\n")
    out = tmp_path / "b" / "c" / "main.gn"
    code, text, _ = run(capsys, "match", tmp_path / "a" / "main.gn", "--solve", "W", "--budget", 400000,
                        "--json", "-o", out)
    assert code == 0
    written = out.read_text()
    assert 'import "../../a/lib/enc.gn" as e' in written and 'import "../../a/helper.gn" as helper' in written
    assert "import care\n" in written                                          # a library spec, by name
    assert f"param W = {json.loads(text)['values']['W']}   # declared in enc.gn" in written
    assert graphnet.load(out).params().total == json.loads(text)["count"]


# ----------------------------------------------------------------------------- ablations
def test_ablate_writes_the_grid_and_tables(tiny, tmp_path, capsys):
    out = tmp_path / "grid"
    budget = 300_000
    code, text, _ = run(capsys, "ablate", tiny, "--vary", "N=1,2", "--vary", "head=shared,task",
                        "--budget", budget, "--solve", "H", *SMALL, "-o", out)
    assert code == 0
    names = sorted(p.name for p in out.glob("*.gn"))
    assert names == sorted(f"tiny__N-{n}__head-{h}.gn" for n in (1, 2) for h in ("shared", "task"))
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["variant"] for r in rows] == [f"tiny__N-{n}__head-{h}.gn" for n in (1, 2) for h in ("shared", "task")]
    assert set(rows[0]) == {"variant", "N", "head", "H", "total", "budget", "mismatch", "mismatch %"}
    for r in rows:
        count = total(out / r["variant"])
        assert count == int(r["total"]) and abs(count - budget) <= 0.005 * budget
        assert int(r["mismatch"]) == count - budget
        assert solve(tiny, ["H"], budget, overrides={"N": int(r["N"]), "head": r["head"]},
                     sizes=SIZES).values["H"] == int(r["H"])
    md = (out / "ablation.md").read_text()
    assert md.count("\n| tiny__") == 4 and "| variant | N | head | H | total |" in md
    assert md in text                                                     # the table is printed too


def test_ablate_ptsl_residuals_like_care(tmp_path, capsys):
    code, _, _ = run(capsys, "ablate", "ptsl", "--vary", "g=none,proj", "--like", "care", "--solve", "H",
                     "-o", tmp_path)
    assert code == 0
    budget = graphnet.load("care").params().total
    for g in ("none", "proj"):
        assert abs(graphnet.load(tmp_path / f"ptsl__g-{g}.gn").params().total - budget) <= 0.005 * budget


def test_ablate_without_budget_only_counts(tiny, tmp_path, capsys):
    code, _, _ = run(capsys, "ablate", tiny, "--vary", "H=4,8", *SMALL, "-o", tmp_path)
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "ablation.csv").open()))
    assert [int(r["total"]) for r in rows] == [total(tiny, H=4), total(tiny, H=8)] and rows[0]["mismatch"] == ""


def test_ablate_errors(tiny, tmp_path, capsys):
    for args, message in ((["--vary", "H=4,8", "--solve", "H", "--budget", "5000"], "both varied and solved"),
                          (["--vary", "Q=1,2"], "has no param 'Q'"),
                          (["--vary", "N=1", "--solve", "H"], "go together")):
        code, _, err = run(capsys, "ablate", tiny, *args, *SMALL, "-o", tmp_path)
        assert code == 2 and message in err, err


BOOLEAN = "param H = 8, skip = false\nblock mlp(x) -> OUT {\n  h = relu(linear(x -> H))\n  if skip { h = h + x }\n" \
          "  out = linear(h -> OUT)\n}\nagent {\n  actor = mlp(linear(obs -> H))\n" \
          "  critic = mlp(linear(concat(obs, act) -> H))\n}\n"


def test_boolean_params_read_as_written_in_ablation_tables(tmp_path, capsys):
    spec = tmp_path / "b.gn"
    spec.write_text(BOOLEAN)
    code, text, _ = run(capsys, "ablate", spec, "--vary", "skip=true,false", "-o", tmp_path / "grid")
    assert code == 0 and "True" not in text and "False" not in text
    assert "| b__skip-true.gn | true |" in text and "| b__skip-false.gn | false |" in text
    assert [r["skip"] for r in csv.DictReader((tmp_path / "grid" / "ablation.csv").open())] == ["true", "false"]
    assert "skip = true" in (tmp_path / "grid" / "b__skip-true.gn").read_text().splitlines()[0]
