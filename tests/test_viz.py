"""`graphnet viz`: the drawings read as the spec does.

The SVG is parsed (xml.etree): node labels, widths and parameter counts are there, nodes are filled in
the colour of their sharing (shared, per task, bank) with a legend naming all three, repeats collapse
into one node marked "x N" and expand on request; the HTML page is self-contained (inline SVG, legend,
parameter table). `.dot` needs no Graphviz program; svg without one is a clear error. Tests that render
need Graphviz's `dot` (the system package graphviz) and are skipped only where it is absent.
"""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

import graphnet
from graphnet.cli import main
from graphnet.viz import FILL

SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")


def draw(tmp_path: Path, spec: str, suffix: str = "svg", *args: str) -> Path:
    out = tmp_path / f"{spec}.{suffix}"
    assert main(["viz", spec, "-o", str(out), *args]) == 0
    return out


def svg_nodes(path: Path) -> dict[str, tuple[str, set[str]]]:
    """node name -> (its text, joined by '|', and the fill colours of its shapes)."""
    out = {}
    for g in ET.parse(path).getroot().iter(f"{SVG}g"):
        if g.get("class") == "node":
            texts = "|".join(t.text for t in g.iter(f"{SVG}text") if t.text and t.text.strip())
            fills = {s.get("fill") for s in g if s.get("fill") not in (None, "none", "transparent")}
            out[g.find(f"{SVG}title").text] = (texts, fills)
    return out


def fills_of(nodes: dict[str, tuple[str, set[str]]]) -> set[str]:
    return {f for name, (_, fills) in nodes.items() if name != "legend" for f in fills}


@needs_dot
def test_labels_widths_and_parameter_counts(tmp_path):
    path = draw(tmp_path, "ptsl")
    nodes = svg_nodes(path)
    texts = "|".join(t for t, _ in nodes.values())
    assert "actor output" in nodes["actor/actor"][0] and "critic output" in nodes["critic/critic"][0]
    assert "linear" in texts and "relu" in texts and "combine none" in texts
    y = next(t for t, _ in nodes.values() if "|y|" in f"|{t}|")                 # the task layers, label y
    assert "\u2192 50" in y and "x 10 tasks" in y and "25,500 params" in y
    root = ET.parse(path).getroot()
    edge_labels = {t.text for g in root.iter(f"{SVG}g") if g.get("class") == "edge" for t in g.iter(f"{SVG}text")}
    assert {"367", "50", "39"} <= edge_labels
    title = "".join(t.text or "" for t in root.find(f"{SVG}g").findall(f"{SVG}text"))
    assert "2,016,928" in title


@needs_dot
def test_sharing_colours(tmp_path):
    mhsac = svg_nodes(draw(tmp_path, "mhsac"))
    assert FILL["task"] in mhsac["actor/trunk/linear"][1]                    # one output layer per task
    assert FILL["shared"] in mhsac["actor/trunk/i=*/linear"][1]
    assert FILL["bank"] not in fills_of(mhsac)
    paco = svg_nodes(draw(tmp_path, "paco"))
    table = paco["composition table w"]
    assert FILL["bank"] in paco["actor/mlp/i=*/linear"][1] and FILL["bank"] in table[1]
    assert "10 tasks \u00d7 5 = 50 params" in table[0]
    assert FILL["task"] not in fills_of(paco) and FILL["shared"] not in fills_of(paco)
    mtsac = fills_of(svg_nodes(draw(tmp_path, "mtsac")))
    assert FILL["shared"] in mtsac and FILL["task"] not in mtsac and FILL["bank"] not in mtsac


@needs_dot
def test_legend(tmp_path):
    text, fills = svg_nodes(draw(tmp_path, "paco"))["legend"]
    assert {FILL["shared"], FILL["task"], FILL["bank"]} <= fills
    for words in ("shared: one copy for all tasks", "per task: x 10 tasks", "bank 5", "no parameters"):
        assert words in text


@needs_dot
def test_repeats_collapse_unless_expanded(tmp_path):
    collapsed = svg_nodes(draw(tmp_path, "mtsac"))
    assert sum("x 3" in t.split("|") for t, _ in collapsed.values()) == 2    # relu, actor and critic
    # the first linear reads concat(obs, ...), a different shape: its own box; the 400 -> 400 layers collapse
    assert sum("x 2" in t.split("|") for t, _ in collapsed.values()) == 2
    assert "actor/mlp/i=*/relu" in collapsed
    deeper = svg_nodes(draw(tmp_path / "n5", "mtsac", "svg", "--set", "N=5"))
    assert any("x 5" in t.split("|") for t, _ in deeper.values())
    expanded = svg_nodes(draw(tmp_path / "expanded", "mtsac", "svg", "--expand"))
    assert len(expanded) == len(collapsed) + 2 * 3                         # 1 more linear, 2 more relu each side
    assert not any("x 3" in t.split("|") for t, _ in expanded.values())
    assert {"actor/mlp/i=0/relu", "actor/mlp/i=2/relu"} <= set(expanded)


@needs_dot
def test_html_page_is_self_contained(tmp_path):
    page = draw(tmp_path, "care_ptsl", "html").read_text()

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.text, self.links = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.links += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]

        def handle_data(self, data):
            self.text.append(data)

    p = Page()
    p.feed(page)
    text = " ".join(p.text)
    assert {"html", "title", "svg", "table"} <= set(p.tags) and p.links == []
    assert "care_ptsl.gn" in text and "per task: x 10 tasks" in text
    report = graphnet.load("care_ptsl").params()
    assert "total" in text and f"{report.total:,}" in text and f"{report.critic_target:,}" in text


def test_dot_needs_no_graphviz_program(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))                              # no `dot` to be found
    source = draw(tmp_path, "ptsl", "dot", "--rankdir", "LR").read_text()
    assert source.startswith("digraph") and "cluster_actor" in source and "rankdir=LR" in source
    assert "x 10 tasks" in source and FILL["task"] in source


def test_missing_dot_program_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["viz", "ptsl", "-o", str(tmp_path / "ptsl.svg")]) == 2
    err = capsys.readouterr().err
    assert "dot program" in err and "graphviz" in err and not (tmp_path / "ptsl.svg").exists()


def test_unknown_format(tmp_path, capsys):
    assert main(["viz", "ptsl", "-o", str(tmp_path / "ptsl.jpeg")]) == 2
    assert ".svg, .png, .html or .dot" in capsys.readouterr().err


def test_boolean_params_read_as_written_in_the_title(tmp_path):
    spec = tmp_path / "b.gn"
    spec.write_text("param H = 8, skip = true\nagent {\n  actor = linear(relu(linear(obs -> H)) -> 2 * ACT)\n"
                    "  critic = linear(concat(obs, act) -> 1)\n}\n")
    out = tmp_path / "b.dot"
    assert main(["viz", str(spec), "-o", str(out)]) == 0
    text = out.read_text()
    assert "skip = true" in text and "True" not in text
