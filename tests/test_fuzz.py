"""Property tests: whatever a researcher types, graphnet answers with a spec or with SpecErrors that
render, never with another exception, and promptly. Every error points into a file it read: a line of
it and a column of that line. A spec that loads also builds (at small widths): networks holding exactly
the parameters counted, computing what the reference interpreter computes.

Inputs are the library specs, mutated (spans deleted or duplicated, words of the language inserted,
tokens swapped, numbers replaced by 0, negative, fractional, huge or overflowing ones, train options
inserted: right ones, unknown ones, wrong kinds and values), and random `--set` values through the
command line.
"""
from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import Phase, given, note, settings
from hypothesis import strategies as st
import torch
from lark import Lark

import graphnet
from graphnet import registry
from graphnet.cli import main
from graphnet.compiler import build, reference_trunk
from graphnet.errors import SpecError, TrainConfigError
from helpers import time_limit

SPECS = {name: resources.files("graphnet.specs").joinpath(f"{name}.gn").read_text()
         for name in graphnet.library_names()}
PARAMS = {name: sorted(graphnet.load(name).values) for name in SPECS}

# A token outside comments (group 1): a string, a number, a word, a two-character operator, a symbol.
TOKEN = re.compile(r'#[^\n]*|("[^"\n]*"|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\w+|->|==|!=|<=|>=|\S)')
NUMBERS = ["0", "1", "2", "-1", "-7", "0.5", "2.5", "1e-9", "1e6", "1e400", "12345678901234567890"]
VOCABULARY = [
    "import", "as", "param", "in", "free", "block", "agent", "train", "repeat", "if", "else", "true", "false",
    "not", "and", "or", "task", "shared", "bank", "obs", "act", "OBS", "ACT", "T", "META", "out", "OUT", "x", "h",
    "i", "H", "N", "K", "g", "none", "add", "linear", "relu", "concat", "onehot", "embed", "meta", "combine",
    "film", "affine", "router", "modular", "mixture", "detach", "softmax", "layernorm", "lineer", "mtsac",
    "paco", "taper", "triplet", "(", ")", "{", "}", "[", "]", ",", ";", "=", "->", "+", "-", "*", "/", "==", "!=",
    "<", "<=", ">", ">=", ".", "#", '"', "@", "\n", '"x.gn"', '"0 1 | 2"', '"ops.py"', *NUMBERS,
    *registry.language_names(),   # every op, so that a new one cannot skip the fuzzing
]

# Lark's names for the grammar's terminals (RPAR, LSQB, NAME, ...) must never reach a message.
_GRAMMAR = Lark(resources.files("graphnet").joinpath("grammar.lark").read_text(), parser="lalr")
TERMINAL = re.compile(r"\b(?:" + "|".join(sorted(t.name for t in _GRAMMAR.terminals)) + r")\b|__ANON|\$END")

# Train options, right and wrong: every option, kind and setting; unknown ones; wrong kinds of value; values out
# of range; options that need another (w_reset: loss_maskout; a bank) or name what is not there.
TRAIN_OPTIONS = [
    "loss_maskout = 3000", "loss_maskout = 0", "loss_maskout = -1", "loss_maskout = true", "loss_maskout = 1e400",
    "w_reset = true", "w_reset = false", "w_reset = 3", "w_reset = none", "pcgrad = true", "pcgrad = 1.5",
    "replay = uniform", "replay = uniform()", "replay = taper", "replay = taper()",
    "replay = taper(alpha = 0.6, beta = 0.4, kmin = 32, kmax = 256)", "replay = taper(kmin = 300, kmax = 2)",
    "replay = taper(beta = 2)", "replay = taper(eps = 0)", "replay = taper(kmin = 2.5)", "replay = taper(bogus = 1)",
    "replay = taper(alpha = 1, alpha = 2)", "replay = taper(1, 2)", "replay = taper(alpha = taper())",
    "replay = prioritized(alpha = 1)", "replay = task taper()", "replay = paco.taper()", 'replay = "taper"',
    "replay = 3", "sampling = uniform", "sampling = taco", "sampling = taco(eps = 0.5, min_samples = 1, every = 10000)",
    "sampling = taco(eps = 0)", "sampling = taco(every = -5)", 'sampling = groups(groups = "0 1 | 2 3")',
    'sampling = groups(groups = "0 1 2 3 4 | 5 6 7 8 9")', 'sampling = groups(groups = "0 1 | 12")',
    'sampling = groups(groups = "0 | 0")', 'sampling = groups(groups = "0 | | 1")', 'sampling = groups(groups = "a b")',
    'sampling = groups(groups = "-1")', "sampling = groups", "sampling = groups(groups = 3)", "sampling = dbscan()",
    "triplet = triplet(feature = u, margin = 1.0)", "triplet = triplet(feature = u, weight = 0)",
    "triplet = triplet(feature = nowhere)", "triplet = triplet(margin = 1)", "triplet = triplet", "triplet = true",
    "lr = 3e-4", "lr = 0", "lr = -1", "lr = 1e400", "lr = H", "lr = H / 0", "lr = nowhere", 'lr = "fast"',
    "lr = lr", "gamma = 0.99", "gamma = 2", "gamma = 0", "tau = 0", "tau = 1", "batch_per_task = 64",
    "batch_per_task = 2.5", "batch_per_task = 0", "batch_per_task = 12345678901234567890", "init_alpha = -1",
    "init_alpha = 1", "bogus = 1", "lrr = 1e-3", "batch = 128", "train = true",
]
TRAIN_SECTION = re.compile(r"\btrain\s*\{")
# The small sizes a spec that loads is built at: every number param over SMALL (the widths) is SMALL.
OBS, ACT, T, META, SMALL = 6, 2, 10, 12, 8

TIME_LIMIT = 10   # seconds for one load; every library spec loads in well under one
# No shrinking: a hanging example would cost the time limit at every shrinking step.
FUZZ = settings(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])


# ----------------------------------------------------------------------------- mutations
def tokens(text: str) -> list[tuple[int, int]]:
    return [m.span(1) for m in TOKEN.finditer(text) if m.group(1)]


def span(draw, text: str) -> tuple[int, int]:
    start = draw(st.integers(0, len(text)))
    return start, draw(st.integers(start, min(len(text), start + 80)))


def delete_span(draw, text: str) -> str:
    a, b = span(draw, text)
    return text[:a] + text[b:]


def duplicate_span(draw, text: str) -> str:
    a, b = span(draw, text)
    at = draw(st.integers(0, len(text)))
    return text[:at] + text[a:b] + text[at:]


def insert_word(draw, text: str) -> str:
    at = draw(st.integers(0, len(text)))
    word = draw(st.sampled_from(VOCABULARY))
    sep = draw(st.sampled_from(["", " "]))
    return text[:at] + sep + word + sep + text[at:]


def swap_tokens(draw, text: str) -> str:
    spans = tokens(text)
    if len(spans) < 2:
        return text
    i, j = sorted(draw(st.lists(st.integers(0, len(spans) - 1), min_size=2, max_size=2, unique=True)))
    (a, b), (c, d) = spans[i], spans[j]
    return text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]


def replace_number(draw, text: str) -> str:
    spans = [(a, b) for a, b in tokens(text) if text[a].isdigit()]
    if not spans:
        return text
    a, b = draw(st.sampled_from(spans))
    return text[:a] + draw(st.sampled_from(NUMBERS)) + text[b:]


def with_train_options(text: str, options: str) -> str:
    """`options` into the first train section, or a train section of them at the end of a spec without one."""
    section = TRAIN_SECTION.search(text)
    if section is None:
        return f"{text}\ntrain {{\n  {options}\n}}\n"
    return text[:section.end()] + "\n  " + options + text[section.end():]


def insert_train_options(draw, text: str) -> str:
    separator = draw(st.sampled_from(["\n  ", " ", "; "]))
    return with_train_options(text, separator.join(draw(st.lists(st.sampled_from(TRAIN_OPTIONS), min_size=1,
                                                                         max_size=4))))


MUTATIONS = [delete_span, duplicate_span, insert_word, swap_tokens, replace_number, insert_train_options]


@st.composite
def mutated_specs(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(SPECS)))
    text = SPECS[name]
    for _ in range(draw(st.integers(1, 4))):
        mutation = draw(st.sampled_from(MUTATIONS))
        text = mutation(draw, text)
        note(f"{mutation.__name__}:\n{text}")
    return name, text


# ----------------------------------------------------------------------------- properties
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def assert_positioned(problems: list[SpecError], sources: dict[str, str]) -> None:
    """Each problem points into a file the load read (the spec or an import), at one of its lines, from a column
    of that line (or just past its end: a token missing there) to a column after it."""
    for problem in problems:
        pos, where = problem.pos, problem.render(sources)
        assert pos is not None and pos.file in sources, where
        lines = sources[pos.file].split("\n")   # as Lark counts lines
        assert 1 <= pos.line <= len(lines), where
        last = len(lines[pos.line - 1]) + 1
        assert 1 <= pos.col <= last and (pos.end_col is None or pos.col < pos.end_col <= last), where


def assert_renders(e: graphnet.SpecErrors) -> None:
    assert e.errors
    for err in e.errors:
        assert "Traceback" not in err.render(e.sources)
        words = err.message + " " + (err.hint or "")
        assert not TERMINAL.search(words), words
    e.render()
    assert_positioned(e.errors, e.sources)


def assert_builds(path: Path, spec: graphnet.Spec) -> None:
    """A spec that loads builds at small widths: networks with exactly the parameters counted, whose actor and
    critics compute on one sample per task what the reference interpreter computes from the same parameters."""
    small = {name: SMALL for name, value in spec.values.items() if type(value) in (int, float) and value > SMALL}
    try:
        spec = graphnet.load(path, graphnet.Sizes(obs=OBS, act=ACT, tasks=T, meta=META), **small)
    except graphnet.SpecErrors as e:   # the widths it accepts may exclude SMALL (a param's choices)
        assert_renders(e)
        note(f"not built at {small}:\n{e}")
        return
    torch.manual_seed(0)   # the same weights each call: a failure hypothesis finds, it can replay
    nets = build(spec, OBS, ACT, T, device="cpu", task_metadata=torch.randn(T, META))
    assert sum(p.numel() for p in nets.parameters()) == spec.params(OBS, ACT, T, meta=META).total
    obs, act, task = torch.randn(T, OBS), torch.rand(T, ACT) * 2 - 1, torch.arange(T)
    with torch.no_grad():
        outputs = [nets.actor.trunk(obs, task), nets.critic.trunk(obs, task, act)]
        expected = [reference_trunk(nets, "actor", obs, task), reference_trunk(nets, "critic", obs, task, act)]
    assert [o.shape for o in outputs] == [(1, T, 2 * ACT), (2, T, 1)]
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def load_checked(path: Path) -> graphnet.Spec | graphnet.SpecErrors:
    """The spec at `path`, its warnings positioned too, or the SpecErrors it raised, which render and point."""
    with time_limit(TIME_LIMIT):
        try:
            spec = graphnet.load(path)
        except graphnet.SpecErrors as e:
            assert_renders(e)
            return e
        spec.params()
    assert_positioned(spec.warnings, spec.sources)
    return spec


@settings(FUZZ, max_examples=300)
@given(mutated_specs())
def test_mutated_library_spec_loads_and_builds_or_raises_spec_errors(workdir, named_text):
    name, text = named_text
    # its own folder, so that `import paco` in a mutated taco still finds the library's paco
    path = workdir / name / f"{name}.gn"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    spec = load_checked(path)
    if isinstance(spec, graphnet.Spec):
        assert_builds(path, spec)


@pytest.mark.parametrize("name", ["mtsac", "paco", "shared_unique"])   # no train section, a bank, a feature u
@pytest.mark.parametrize("option", TRAIN_OPTIONS)
def test_train_option_loads_and_builds_or_raises_errors_in_the_train_section(tmp_path, name, option):
    """Each train option alone, in specs with and without a train section: its errors point into that section."""
    path = tmp_path / f"{name}.gn"
    text = with_train_options(SPECS[name], option)
    path.write_text(text)
    spec = load_checked(path)
    if isinstance(spec, graphnet.Spec):
        assert_builds(path, spec)
        return
    start = TRAIN_SECTION.search(text).start()
    lines = range(text.count("\n", 0, start) + 1, text.count("\n", 0, text.index("}", start)) + 2)
    assert all(e.pos.line in lines for e in spec.errors if isinstance(e, TrainConfigError)), str(spec)


SET_VALUES = st.one_of(
    st.integers(-10, 64).map(str),
    st.sampled_from(["1e6", "10000001", "100000000000000000000", "1e400", "inf", "-inf", "nan", "0.0", "-0.0",
                     "2.5", "1e-300", "1.7976931348623157e+308", "true", "false", "none", "add", "proj", "onehot",
                     "shared", "bogus", "", " ", "3 4", "1_000", "0x10", "=", "H=3"]),
    st.text(max_size=6),
)


@st.composite
def set_commands(draw) -> list[str]:
    name = draw(st.sampled_from(sorted(SPECS)))
    names = st.one_of(st.sampled_from(PARAMS[name]), st.sampled_from(["HH", "h", "obs", "T", " H", ""]),
                      st.text(max_size=3))
    pairs = draw(st.lists(st.tuples(names, SET_VALUES), min_size=1, max_size=3))
    command = draw(st.sampled_from(["check", "params", "show"]))
    return [command, name, *(f"--set={param}={value}" for param, value in pairs)]


@settings(FUZZ, max_examples=200)
@given(set_commands())
def test_set_values_through_the_cli_exit_0_or_2(argv):
    out, err = io.StringIO(), io.StringIO()
    with time_limit(TIME_LIMIT), redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    note(err.getvalue())
    assert code in (0, 2)
    assert "Traceback" not in err.getvalue()
    if code == 2:
        assert "error" in err.getvalue()
