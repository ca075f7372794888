"""Spec errors: every kind at its exact file:line:col, with its message and hint, all errors of a file
reported together, rendered with the source line and a caret, and never a traceback or a Lark
terminal name."""
from __future__ import annotations

import re
import textwrap
from contextlib import suppress
from importlib import resources
from pathlib import Path

import pytest
from lark import Lark

import graphnet
from graphnet.cli import main
from helpers import time_limit
from graphnet.errors import (CycleError, OpError, ParamError, SpecError, SpecErrors, SyntaxProblem,
                             TrainConfigError, UnknownName, WidthError)

# Lark's names for the grammar's terminals (RPAR, LSQB, NAME, ...) belong to the parser, not to a user.
_GRAMMAR = Lark(resources.files("graphnet").joinpath("grammar.lark").read_text(), parser="lalr")
TERMINAL = re.compile(r"\b(?:" + "|".join(sorted(t.name for t in _GRAMMAR.terminals)) + r")\b|__ANON|\$END")

ACTOR = "  actor = linear(obs -> 8)\n"
CRITIC = "  critic = linear(concat(obs, act) -> 1)\n"
AGENT = "agent {\n" + ACTOR + CRITIC + "}\n"


def write(directory: Path, text: str, name: str = "spec.gn") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def assert_readable(e: SpecErrors) -> None:
    """Every error has a message in the user's words and renders without a traceback."""
    assert e.errors
    for err in e.errors:
        words = err.message + " " + (err.hint or "")
        assert not TERMINAL.search(words), words
        assert "Traceback" not in err.render(e.sources)
    assert "Traceback" not in e.render()


def errors(tmp_path: Path, text: str, **overrides) -> list[SpecError]:
    with pytest.raises(SpecErrors) as info:
        graphnet.load(write(tmp_path, text), **overrides)
    assert_readable(info.value)
    return info.value.errors


def only(tmp_path: Path, text: str, **overrides) -> SpecError:
    errs = errors(tmp_path, text, **overrides)
    assert len(errs) == 1, [e.render() for e in errs]
    return errs[0]


def where(err: SpecError) -> tuple[int, int]:
    return err.pos.line, err.pos.col


# ----------------------------------------------------------------------------- one error each
# (spec text, error class, (line, col), words in the message, words in the hint or None for no hint)
CASES = {
    # syntax
    "unexpected token": (
        "agent {\n" + ACTOR + "  critic = linear(concat(obs act) -> 1)\n}\n",
        SyntaxProblem, (3, 30), "unexpected name 'act': expected an operator, ',' or ')'",
        "'act' may be a reserved word or a missing operator before it"),
    "misspelt sharing prefix": (
        "agent {\n  actor = per_task linear(obs -> 8)\n" + CRITIC + "}\n",
        SyntaxProblem, (2, 11), "'per_task' before linear(...) is not a sharing prefix",
        "did you mean 'task'? a call may start with one sharing prefix: shared, task or bank(K)"),
    "plural sharing prefix": (
        "agent {\n  actor = tasks linear(obs -> 8)\n" + CRITIC + "}\n",
        SyntaxProblem, (2, 11), "'tasks' before linear(...) is not a sharing prefix", "did you mean 'task'?"),
    "bank without its size": (
        "agent {\n  actor = bank linear(obs -> 8)\n" + CRITIC + "}\n",
        SyntaxProblem, (2, 11), "bank needs its set size K", "write bank(K) linear(...)"),
    "shared with a size": (
        "agent {\n  actor = shared(4) linear(obs -> 8)\n" + CRITIC + "}\n",
        SyntaxProblem, (2, 11), "shared takes no size", "bank(K) is the prefix with a size"),
    "two sharing prefixes": (
        "agent {\n  actor = task bank(4) linear(obs -> 8)\n" + CRITIC + "}\n",
        SyntaxProblem, (2, 11), "a call has one sharing prefix, not two", "keep task or bank(K)"),
    "block inputs after settings": (
        "block f(x, k = 2, y) -> OUT { out = linear(x -> OUT) }\n" + AGENT,
        SyntaxProblem, (1, 19), "block 'f': its inputs come before its settings with defaults",
        "write block f(x, y, k = ...)"),
    "unexpected closing paren": (
        "agent {\n  actor = linear(obs -> 8))\n" + CRITIC + "}\n",
        SyntaxProblem, (2, 27), "unexpected ')': expected", None),
    "unexpected character": (
        "param H = 3 $ 4\n" + AGENT,
        SyntaxProblem, (1, 13), "unexpected character '$'", "comments start with '#'"),
    "file ends early": (
        "agent {\n" + ACTOR,
        SyntaxProblem, (2, 27), "the file ends too early: expected", "check for an unclosed '{', '(' or '['"),
    "repeat with <=": (
        "agent {\n  repeat i <= 3 { }\n" + ACTOR + CRITIC + "}\n",
        SyntaxProblem, (2, 12), "repeat counts with '<', not '<='", "write: repeat i < N { ... }"),
    "param declared twice": (
        "param H = 3, N = 2\nparam H = 4\n" + AGENT,
        SyntaxProblem, (2, 7), "param 'H' is declared twice (first at line 1)", "keep one declaration"),
    "block defined twice": (
        "block b(x) -> OUT { out = x }\nblock b(x) -> OUT { out = x }\n" + AGENT,
        SyntaxProblem, (2, 1), "block 'b' is defined twice", "rename one of them"),
    "two agent sections": (
        AGENT + "agent { }\n",
        SyntaxProblem, (5, 1), "a spec has one agent section", "merge the two sections"),
    # names
    "unknown name": (
        "agent {\n" + ACTOR + "  critic = linear(concat(obs, akt) -> 1)\n}\n",
        UnknownName, (3, 31), "unknown name 'akt'", "did you mean 'act'?"),
    "unknown op": (
        "agent {\n  actor = lineer(obs -> 8)\n" + CRITIC + "}\n",
        UnknownName, (2, 11), "unknown op or block 'lineer'", "did you mean 'linear'?"),
    "unknown op, nothing close": (
        "agent {\n  actor = zzz(obs -> 8)\n" + CRITIC + "}\n",
        UnknownName, (2, 11), "unknown op or block 'zzz'", "ops: "),
    "unknown op argument": (
        "agent {\n  actor = linear(obs -> 8, biass = false)\n" + CRITIC + "}\n",
        OpError, (2, 28), "linear has no argument 'biass'", "did you mean 'bias'?"),
    "unknown library import": (
        "import mtsak\n" + AGENT,
        UnknownName, (1, 1), "cannot find spec 'mtsak' to import", "did you mean 'mtsac'"),
    "unknown import alias": (
        "import mtsac\nagent {\n  actor = mtsak.mlp(obs)\n" + CRITIC + "}\n",
        UnknownName, (3, 11), "no import named 'mtsak'", "did you mean 'mtsac'?"),
    "unknown imported block": (
        "import mtsac\nagent {\n  actor = mtsac.mpl(obs)\n" + CRITIC + "}\n",
        UnknownName, (3, 11), "has no block 'mpl'", "did you mean 'mlp'?"),
    # widths
    "width mismatch of two calls": (
        "agent {\n  h = linear(obs -> 400) + linear(obs -> 50)\n" + ACTOR + CRITIC + "}\n",
        WidthError, (2, 7), "'+' needs inputs of equal width, got 400 and 50 (linear(...): 400, linear(...): 50)",
        None),
    "width mismatch of two names": (
        "agent {\n  a = linear(obs -> 400)\n  b = linear(obs -> 50)\n  h = a * b\n" + ACTOR + CRITIC + "}\n",
        WidthError, (4, 7), "'*' needs inputs of equal width, got 400 and 50 (a: 400, b: 50)", None),
    "named module called with another width": (
        "agent {\n  f = linear(-> 6)\n  a = f(obs)\n  b = f(concat(obs, obs))\n"
        "  actor = linear(a + b -> 8)\n" + CRITIC + "}\n",
        WidthError, (4, 7), "'f' was first called with widths [39], here with [78]",
        "a named module has one input width at every call site"),
    "named module with a declared input width": (
        "agent {\n  f = linear(39 -> 6)\n  actor = linear(f(onehot(task)) -> 8)\n" + CRITIC + "}\n",
        WidthError, (3, 18), "'f' takes 39 features (line 2) but gets 10", None),
    "zero width": (
        "agent {\n  actor = linear(obs -> 0)\n" + CRITIC + "}\n",
        ParamError, (2, 25), "an output width must be at least 1, got 0", None),
    "negative width": (
        "agent {\n  actor = linear(obs -> -3)\n" + CRITIC + "}\n",
        ParamError, (2, 25), "an output width must be at least 1, got -3", None),
    "zero width from a param": (
        "param H = 0\nagent {\n  h = linear(obs -> H)\n" + ACTOR + CRITIC + "}\n",
        ParamError, (3, 21), "an output width must be at least 1, got 0", "check the value of param H"),
    "fractional width": (
        "agent {\n  actor = linear(obs -> 2.5)\n" + CRITIC + "}\n",
        ParamError, (2, 25), "an output width must be a whole number, got 2.5", None),
    "actor output width": (
        "agent {\n  actor = linear(obs -> 9)\n" + CRITIC + "}\n",
        WidthError, (2, 11), "the actor must output 2 x ACT (mean and log-std) = 8 features, this outputs 9", None),
    "critic output width": (
        "agent {\n" + ACTOR + "  critic = linear(concat(obs, act) -> 2)\n}\n",
        WidthError, (3, 12), "the critic must output 1 (the Q-value) = 1 features, this outputs 2", None),
    "block output width missing": (
        "block b(x) -> OUT { out = linear(x -> OUT) }\nagent {\n  f = b(obs)\n" + ACTOR + CRITIC + "}\n",
        OpError, (3, 7), "block 'b' needs its output width OUT", "block b(...) -> OUT = 50"),
    "block input count": (
        "block b(x) -> OUT { out = linear(x -> OUT) }\nagent {\n  actor = b(obs, obs)\n" + CRITIC + "}\n",
        OpError, (3, 11), "block 'b' takes 1 input(s) (x), got 2", None),
    # cycles
    "recursive block": (
        "block a(x) -> OUT { out = b(x -> OUT) }\nblock b(x) -> OUT { out = a(x -> OUT) }\n"
        "agent {\n  actor = a(obs)\n" + CRITIC + "}\n",
        CycleError, (2, 27), "block 'a' calls itself (a -> b -> a)", "blocks cannot be recursive"),
    "block calling itself": (
        "block a(x) -> OUT { out = a(x -> OUT) }\nagent {\n  actor = a(obs)\n" + CRITIC + "}\n",
        CycleError, (1, 27), "block 'a' calls itself (a -> a)", "use repeat for depth"),
    "param cycle": (
        "param A = B + 1, B = A * 2\n" + AGENT,
        CycleError, (1, 7), "param A is defined in terms of itself (A -> B -> A)", None),
    "param defined by itself": (
        "param A = A + 1\n" + AGENT,
        CycleError, (1, 7), "param A is defined in terms of itself (A -> A)", None),
    # params
    "default outside its choices": (
        "param g = bogus in [none, add]\n" + AGENT,
        ParamError, (1, 7), "the default of g: 'bogus' is not one of its values", "its values are: none, add"),
    "param named like an input": (
        "param obs = 3\n" + AGENT,
        ParamError, (1, 7), "'obs' is given by the environment (an input); it cannot be a param",
        "choose another name"),
    "condition comparing a choice param with a word it cannot be": (
        "param g = none in [none, add]\nagent {\n  if g == proj { h = obs }\n" + ACTOR + CRITIC + "}\n",
        ParamError, (3, 11), "'proj' is not a value of param g", "its values are: none, add"),
    # the agent
    "actor reads act": (
        "agent {\n  actor = linear(concat(obs, act) -> 8)\n" + CRITIC + "}\n",
        SpecError, (2, 30), "the actor cannot read act: the action is what it outputs", "only the critic reads act"),
    "critic does not read act": (
        "agent {\n" + ACTOR + "  critic = linear(obs -> 1)\n}\n",
        SpecError, (3, 3), "the critic never reads act: Q(s, a) needs the action", "include act in the critic's input"),
    "no agent": (
        "param H = 3\n",
        SpecError, (1, 1), "the spec has no agent section", "add: agent { actor = ...  critic = ... }"),
    "no actor": (
        "agent {\n" + CRITIC + "}\n",
        SpecError, (1, 1), "the agent section does not define the actor", "add a line: actor = <trunk>(...)"),
    "no critic": (
        "agent {\n" + ACTOR + "}\n",
        SpecError, (1, 1), "the agent section does not define the critic", "add a line: critic = <trunk>(...)"),
    "actor is not features": (
        "agent {\n  actor = 3\n" + CRITIC + "}\n",
        OpError, (2, 11), "the actor must be a network output, not the number 3", None),
    "task used as features": (
        "agent {\n  actor = linear(task -> 8)\n" + CRITIC + "}\n",
        OpError, (2, 18), "task is a task id, not features", "use onehot(task), embed(task -> W) or meta(task)"),
    # sharing
    "bank onehot with K other than the task count": (
        "agent {\n  actor = bank(5, w = onehot) linear(obs -> 8)\n" + CRITIC + "}\n",
        ParamError, (2, 11), "bank(K, w = onehot) needs K equal to the number of tasks (10), got 5", None),
    "banks that disagree": (
        "agent {\n  actor = bank(3) linear(obs -> 8)\n  critic = bank(4) linear(concat(obs, act) -> 1)\n}\n",
        ParamError, (3, 12), "every bank of an agent shares one composition table w", None),
    "sharing on an op without parameters": (
        "agent {\n  actor = linear(task relu(obs) -> 8)\n" + CRITIC + "}\n",
        OpError, (2, 18), "relu has no parameters, so 'task' means nothing here", "sharing applies to"),
    # agent options
    "unknown agent option": (
        "agent(targt = copy) {\n" + ACTOR + CRITIC + "}\n",
        OpError, (1, 7), "the agent section has no option 'targt'", "did you mean 'target'?"),
    "agent option value": (
        "agent(target = polyak) {\n" + ACTOR + CRITIC + "}\n",
        OpError, (1, 16), "agent option target is one of: shared, copy", None),
    # train section
    "unknown train option": (
        AGENT + "train {\n  lrr = 0.1\n}\n",
        TrainConfigError, (6, 3), "unknown train option 'lrr'", "did you mean 'lr'?"),
    "unknown nested train option": (
        AGENT + "train {\n  replay = taper(alfa = 0.5)\n}\n",
        TrainConfigError, (6, 3), "'alfa'", "did you mean 'alpha'?"),
    "train value out of range": (
        AGENT + "train {\n  gamma = 2\n}\n",
        TrainConfigError, (6, 3), "train option gamma: Input should be less than or equal to 1", None),
    "train value not positive": (
        AGENT + "train {\n  lr = 0\n}\n",
        TrainConfigError, (6, 3), "train option lr: Input should be greater than 0", None),
    "train values that contradict": (
        AGENT + "train {\n  replay = taper(kmin = 64, kmax = 8)\n}\n",
        TrainConfigError, (6, 3), "kmin (64) must not exceed kmax (8)", None),
    "w_reset without a bank": (
        AGENT + "train {\n  loss_maskout = 10\n  w_reset = true\n}\n",
        TrainConfigError, (7, 3), "w_reset re-draws a task's composition weights w, but no layer of this agent is "
        "bank(K)", None),
    "taco sampling without a bank": (
        AGENT + "train {\n  sampling = taco()\n}\n",
        TrainConfigError, (6, 3), "sampling = taco(...) groups tasks by their composition weights w, but no layer of "
        "this agent is bank(K)", None),
    "triplet on an unknown feature": (
        AGENT + "train {\n  triplet = triplet(feature = v)\n}\n",
        TrainConfigError, (6, 3), "triplet feature 'v' is not a feature named in the agent section", None),
    "train option set twice": (
        AGENT + "train {\n  lr = 0.1\n  lr = 0.2\n}\n",
        TrainConfigError, (7, 3), "train option 'lr' is set twice", None),
}


@pytest.mark.parametrize("case", CASES)
def test_error_kind_position_message_and_hint(tmp_path, case):
    text, cls, pos, message, hint = CASES[case]
    err = only(tmp_path, text)
    assert type(err) is cls
    assert err.pos.file == str(tmp_path / "spec.gn")
    assert where(err) == pos, err.render()
    assert message in err.message
    if hint is None:
        assert err.hint is None
    else:
        assert hint in (err.hint or "")


def test_unknown_name_is_underlined_whole(tmp_path):
    err = only(tmp_path, CASES["unknown name"][0])
    assert (err.pos.col, err.pos.end_col) == (31, 34)


def test_a_mistake_in_a_block_called_twice_is_one_error_naming_the_calls(tmp_path):
    """Reported once, with both call sites, and not also as a block that never assigns out."""
    text = """
    block mlp(x) -> OUT {
      h = relu(linear(x -> 16))
      out = linear(hh -> OUT)
    }
    agent {
      actor = mlp(obs)
      critic = mlp(concat(obs, act))
    }
    """
    err = only(tmp_path, text)
    assert isinstance(err, UnknownName) and where(err) == (3, 16)
    assert "in block 'mlp', called at lines 6, 7" in err.hint


def test_every_agent_error_at_once(tmp_path):
    """An actor of the wrong width does not hide a critic that never reads the action."""
    errs = errors(tmp_path, "agent {\n  actor = linear(obs -> 3)\n  critic = linear(obs -> 1)\n}\n")
    assert [type(e) for e in errs] == [WidthError, SpecError] and [where(e) for e in errs] == [(2, 11), (3, 3)]
    assert "never reads act" in errs[1].message


def test_block_settings_with_defaults(tmp_path):
    """`block f(x, depth = 2, width = 16 * depth)`: defaults in order, each may read those before it; a call sets
    them by keyword; a misspelt one says which exist."""
    text = """
    block mlp(x, depth = 2, width = 16 * depth) -> OUT {
      h = x
      repeat i < depth { h = relu(linear(h -> width)) }
      out = linear(h -> OUT)
    }
    agent {
      actor = mlp(obs)
      critic = mlp(concat(obs, act), depth = 3)
    }
    """
    spec = graphnet.load(write(tmp_path, text), graphnet.Sizes(obs=5, act=2, tasks=3))
    actor = (5 * 32 + 32) + (32 * 32 + 32) + (32 * 4 + 4)
    critic = (7 * 48 + 48) + 2 * (48 * 48 + 48) + (48 + 1)
    assert (spec.params(5, 2, 3).actor, spec.params(5, 2, 3).critic) == (actor, 2 * critic)
    err = only(tmp_path, text.replace("depth = 3)", "deph = 3)"))
    assert "no setting 'deph'" in err.message and "did you mean 'depth'?" in err.hint


def test_params_may_refer_to_later_params(tmp_path):
    """A param's value may use any other param, declared before or after it; a cycle is an error."""
    text = "param A = B * 2\nparam B = 4\nagent {\n  actor = linear(obs -> 8)\n" \
           "  critic = linear(relu(linear(concat(obs, act) -> A)) -> 1)\n}\n"
    assert graphnet.load(write(tmp_path, text)).values == {"A": 8, "B": 4}
    assert graphnet.load(write(tmp_path, text), B=5).values["A"] == 10
    err = only(tmp_path, text.replace("param B = 4", "param B = A"))
    assert isinstance(err, CycleError) and "A -> B -> A" in err.message


def test_unknown_block_argument(tmp_path):
    text = """
    param H = 16
    block mlp(x) -> OUT { out = linear(relu(linear(x -> H)) -> OUT) }
    agent {
      actor = mlp(obs, HH = 32)
      critic = mlp(concat(obs, act), H = 32)
    }
    """
    err = only(tmp_path, text)
    assert where(err) == (4, 20)
    assert "'HH'" in err.message


def test_import_cycle(tmp_path):
    write(tmp_path, 'import "b.gn"\n' + AGENT, "a.gn")
    write(tmp_path, 'import "a.gn"\nblock q(x) -> OUT { out = linear(x -> OUT) }\n', "b.gn")
    with pytest.raises(SpecErrors) as info:
        graphnet.load(tmp_path / "a.gn")
    assert_readable(info.value)
    [err] = info.value.errors
    assert type(err) is CycleError
    assert (err.pos.file, where(err)) == (str(tmp_path / "b.gn"), (1, 1))
    assert err.message == "b.gn and a.gn import each other"
    assert err.hint == "move the shared blocks into a third file"


def test_import_of_a_missing_file(tmp_path):
    err = only(tmp_path, 'import "nope.gn" as n\n' + AGENT)
    assert type(err) is UnknownName
    assert where(err) == (1, 1)
    assert err.message == "cannot find spec 'nope.gn' to import"


# ----------------------------------------------------------------------------- bad param values
CHOICE = "param g = none in [none, add], H = 8\n" + AGENT


@pytest.mark.parametrize("overrides, pos, message, hint", [
    ({"g": "bogus"}, (1, 7), "--set g=bogus: 'bogus' is not one of its values", "its values are: none, add"),
    ({"H": "abc"}, (1, 32), "--set H=abc: param H takes a whole number", None),
    ({"H": 2.5}, (1, 32), "--set H=2.5: param H takes a whole number", None),
    ({"HH": 3}, None, "--set HH=3: the spec has no param 'HH'", "did you mean 'H'?"),
])
def test_bad_param_value(tmp_path, overrides, pos, message, hint):
    err = only(tmp_path, CHOICE, **overrides)
    assert type(err) is ParamError
    assert (where(err) if err.pos else None) == pos
    assert err.message == message
    assert err.hint == hint


@pytest.mark.parametrize("pair, printed", [
    ("g=bogus", ":1:7: error: --set g=bogus: 'bogus' is not one of its values"),
    ("H=abc", ":1:32: error: --set H=abc: param H takes a whole number"),
    ("HH=3", "error: --set HH=3: the spec has no param 'HH'\n  did you mean 'H'?"),
    ("H", "error: --set takes NAME=VALUE, got 'H'"),
])
def test_bad_set_through_the_cli(tmp_path, capsys, pair, printed):
    path = write(tmp_path, CHOICE)
    assert main(["check", str(path), "--set", pair]) == 2
    out, err = capsys.readouterr()
    assert printed in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", float("inf"), float("nan")])
def test_non_finite_set_value_is_a_param_error(tmp_path, value):
    err = only(tmp_path, CHOICE, H=value)
    assert type(err) is ParamError
    assert where(err) == (1, 32)


def test_non_finite_set_value_through_the_cli(tmp_path, capsys):
    assert main(["check", str(write(tmp_path, CHOICE)), "--set", "H=inf"]) == 2
    assert ":1:32: error: --set H=inf" in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    "param H = 1e400\nagent {\n  h = linear(obs -> H)\n" + ACTOR + CRITIC + "}\n",
    "agent {\n  repeat i < 1e400 { h = obs }\n" + ACTOR + CRITIC + "}\n",
    "agent {\n  actor = linear(obs -> 1e400 - 1e400)\n" + CRITIC + "}\n",
    "agent {\n  h = mixture(obs, softmax(linear(obs -> 4)), width = 1e400)\n" + ACTOR + CRITIC + "}\n",
    "agent {\n  f = linear(1e400 -> 6)\n" + ACTOR + CRITIC + "}\n",
])
def test_non_finite_number_in_a_spec_is_an_error(tmp_path, text):
    assert all(e.pos is not None for e in errors(tmp_path, text))


@pytest.mark.parametrize("size, value", [("--obs", "0"), ("--obs", "-5"), ("--act", "0"), ("--tasks", "0")])
@pytest.mark.parametrize("command", ["show", "params"])
def test_environment_sizes_must_be_positive(capsys, command, size, value):
    assert main([command, "mtsac", size, value]) == 2
    out, err = capsys.readouterr()
    assert f"error: {size} must be a positive whole number, got {value}" in err
    assert "param OUT" not in err


def test_huge_router_depth_is_checked_promptly():
    """An absurd width or depth is an error or a (huge) count, in milliseconds like the stock softmod."""
    with time_limit(5), suppress(SpecErrors):
        graphnet.load("softmod", L=10 ** 12)


def test_unclosed_string_says_so(tmp_path):
    err = only(tmp_path, 'import "lib/enc.gn as e\n' + AGENT)
    assert where(err) == (1, 8)
    assert re.search(r"unclosed|unterminated|not closed", err.message + " " + (err.hint or "")), err.render()


# ----------------------------------------------------------------------------- all errors together
MANY = """
param H = 16
block mlp(x) -> OUT {
  h = relu(linear(x -> H))
  out = linear(h -> OUT, biass = false)
}
agent {
  a = lineer(obs -> 5)
  b = linear(obs -> 0)
  c = linear(obs -> 4) + linear(obs -> 5)
  d = linear(task -> 3)
  actor = mlp(obs)
  critic = linear(concat(obs, akt) -> 1)
}
"""
MANY_LINES = [4, 7, 8, 9, 10, 12]


def test_independent_errors_are_all_reported(tmp_path):
    errs = errors(tmp_path, MANY)
    assert sorted(e.pos.line for e in errs) == MANY_LINES
    assert {type(e) for e in errs} == {OpError, UnknownName, ParamError, WidthError}


def test_check_prints_every_error_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, MANY)
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    printed = re.findall(rf"^{re.escape(str(path))}:(\d+):\d+: error: ", err, re.M)
    assert sorted(map(int, printed)) == MANY_LINES
    assert "Traceback" not in err


def test_train_errors_are_reported_with_graph_errors(tmp_path):
    errs = errors(tmp_path, "agent {\n  actor = linear(obs -> 9)\n" + CRITIC + "}\ntrain {\n  lrr = 0.1\n}\n")
    assert sorted((type(e).__name__, where(e)) for e in errs) == [("TrainConfigError", (6, 3)),
                                                                   ("WidthError", (2, 11))]


def test_every_bad_train_option_is_reported_at_its_own_place(tmp_path):
    """Two unknown options once crashed the check; a w_reset without loss_maskout was reported with no name at
    the agent section's line and hid the checks against the graph (no bank, an unknown triplet feature)."""
    errs = errors(tmp_path, AGENT + "train {\n  lrr = 0.001  gama = 0.9\n  w_reset = true\n"
                                    "  triplet = triplet(feature = zz)\n}\n")
    assert sorted((where(e), e.message) for e in errs) == [
        ((6, 3), "unknown train option 'lrr'"), ((6, 16), "unknown train option 'gama'"),
        ((7, 3), "train option w_reset: it re-draws the w of tasks masked out by loss_maskout: set loss_maskout too"),
        ((8, 3), "triplet feature 'zz' is not a feature named in the agent section")]


def test_w_reset_without_a_bank_is_reported_beside_an_unknown_option(tmp_path):
    errs = errors(tmp_path, AGENT + "train {\n  loss_maskout = 10  w_reset = true\n  lrr = 1\n}\n")
    assert sorted(where(e) for e in errs) == [(6, 22), (7, 3)]
    assert "no layer of this agent is bank(K)" in errs[0].message + errs[1].message


@pytest.mark.parametrize("argv", [["train", "mtsac", "--env", "MT1:reach-v3", "--steps", "10"],
                                  ["bench", "mtsac"], ["bench", "mtsac", "--train"]])
@pytest.mark.parametrize("device", ["gpu", "cuda:99", "tpu"])
def test_a_device_this_process_cannot_use_is_one_line_before_anything_starts(tmp_path, capsys, argv, device):
    assert main([*argv, "--device", device, *(["--out", str(tmp_path / "run")] if argv[0] == "train" else [])]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and f"device '{device}'" in err and len(err.strip().splitlines()) == 1
    assert out == "" and not (tmp_path / "run").exists()


def test_an_error_in_a_block_called_twice_is_reported_once(tmp_path):
    errs = errors(tmp_path, """
    block mlp(x) -> OUT {
      h = linear(x -> 10) + linear(x -> 20)
      g = lineer(x -> 3)
      out = linear(x -> OUT)
    }
    agent {
      actor = mlp(obs)
      critic = mlp(concat(obs, act))
    }
    """)
    assert sorted(where(e) for e in errs) == [(2, 7), (3, 7)]


# ----------------------------------------------------------------------------- rendering
def test_render_shows_file_line_col_the_line_a_caret_and_the_hint(tmp_path):
    path = write(tmp_path, CASES["unknown name"][0])
    with pytest.raises(SpecErrors) as info:
        graphnet.load(path)
    assert info.value.render() == "\n".join([
        f"{path}:3:31: error: unknown name 'akt'",
        "      critic = linear(concat(obs, akt) -> 1)",
        "                                  ^^^",
        "  did you mean 'act'?",
    ])
    assert str(info.value) == info.value.render()


def test_render_of_a_syntax_error(tmp_path):
    path = write(tmp_path, "param H = 3 $ 4\n" + AGENT)
    with pytest.raises(SpecErrors) as info:
        graphnet.load(path)
    assert info.value.render().splitlines() == [
        f"{path}:1:13: error: unexpected character '$'",
        "    param H = 3 $ 4",
        "                ^",
        "  names use letters, digits and '_'; comments start with '#'",
    ]


def test_render_without_a_position(tmp_path):
    with pytest.raises(SpecErrors) as info:
        graphnet.load(write(tmp_path, CHOICE), HH=3)
    assert info.value.render() == "error: --set HH=3: the spec has no param 'HH'\n  did you mean 'H'?"


@pytest.mark.parametrize("comment", [
    "# plain",
    "# pasted text with a unicode line separator \u2028 in it",
    "# a form feed \x0c in a comment",
    "# a next-line character \x85 in a comment",
])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_render_shows_the_right_source_line(tmp_path, comment, newline):
    path = tmp_path / "spec.gn"
    lines = [comment, "agent {", "  actor = lineer(obs -> 8)", CRITIC.rstrip("\n"), "}", ""]
    path.write_bytes(newline.join(lines).encode())
    with pytest.raises(SpecErrors) as info:
        graphnet.load(path)
    [err] = info.value.errors
    assert where(err) == (3, 11)
    assert info.value.render().splitlines()[1:3] == ["      actor = lineer(obs -> 8)", "              ^^^^^^"]


def test_unknown_spec_name(capsys):
    assert main(["check", "mtsak"]) == 2
    err = capsys.readouterr().err
    assert "error: no spec file or library spec named 'mtsak'" in err
    assert "did you mean 'mtsac'" in err


def test_a_target_copy_with_nothing_shared_is_a_warning(tmp_path):
    spec = graphnet.load(write(tmp_path, "agent(target = copy) {\n" + ACTOR + CRITIC + "}\n"))
    assert [(where(w), w.message.split(":")[0]) for w in spec.warnings] == [((1, 7), "agent(target = copy)")]
    assert "share no parameters" in spec.warnings[0].message
