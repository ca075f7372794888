"""Property tests: whatever a researcher types, graphnet answers with a spec or with SpecErrors that
render, never with another exception, and promptly.

Inputs are the library specs, mutated (spans deleted or duplicated, words of the language inserted,
tokens swapped, numbers replaced by 0, negative, fractional, huge or overflowing ones), and random
`--set` values through the command line.
"""
from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from importlib import resources

import pytest
from hypothesis import Phase, given, note, settings
from hypothesis import strategies as st
from lark import Lark

import graphnet
from graphnet.cli import main
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
    "<", "<=", ">", ">=", ".", "#", '"', "@", "\n", '"x.gn"', '"0 1 | 2"', *NUMBERS,
]

# Lark's names for the grammar's terminals (RPAR, LSQB, NAME, ...) must never reach a message.
_GRAMMAR = Lark(resources.files("graphnet").joinpath("grammar.lark").read_text(), parser="lalr")
TERMINAL = re.compile(r"\b(?:" + "|".join(sorted(t.name for t in _GRAMMAR.terminals)) + r")\b|__ANON|\$END")

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


MUTATIONS = [delete_span, duplicate_span, insert_word, swap_tokens, replace_number]


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


def assert_renders(e: graphnet.SpecErrors) -> None:
    assert e.errors
    for err in e.errors:
        assert "Traceback" not in err.render(e.sources)
        words = err.message + " " + (err.hint or "")
        assert not TERMINAL.search(words), words
    e.render()


@settings(FUZZ, max_examples=300)
@given(mutated_specs())
def test_mutated_library_spec_loads_or_raises_spec_errors(workdir, named_text):
    name, text = named_text
    # its own folder, so that `import paco` in a mutated taco still finds the library's paco
    path = workdir / name / f"{name}.gn"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    with time_limit(TIME_LIMIT):
        try:
            spec = graphnet.load(path)
        except graphnet.SpecErrors as e:
            assert_renders(e)
        else:
            spec.params()


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
