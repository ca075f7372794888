"""Drawings of the agent graph: what a spec builds, where its parameters are and how they are shared.

The actor and the critic are two clusters (features common to both a third); a node shows its op, the
name it was assigned to, its output width and the parameters it holds; the fill colour says how they are
shared (one copy, one per task, a PaCo bank). Repeat iterations are collapsed into one node marked
"x N" unless `expand`, so a deep trunk reads like its spec. DOT is built with the `graphviz` package;
svg, png and html are rendered by Graphviz's `dot` program (the system package `graphviz`).
"""
from __future__ import annotations

import html
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import graphviz
import networkx as nx

from . import registry
from ._spec import MT10, Sizes, Spec, settings
from .accounting import ParamReport, count
from .errors import VizError
from .ir import STRUCTURE, Module, OpNode, info, modules, nodes

FORMATS = ("svg", "png", "html", "dot")
FILL = {"shared": "#a6cee3", "task": "#fdbf6f", "bank": "#b2df8a"}   # ColorBrewer Paired: blue, orange, green
INPUT_FILL = "#e8e8e8"
EDGE_COLOUR = "#555555"
LOOP_COLOUR = "#8c8c8c"      # edges into the next repeat iteration, drawn dashed and lighter
FONT = "Helvetica"
CLUSTERS = ("actor", "critic", "common")
TABLE = "composition table w"     # PaCo's w (T x K), drawn among the common features
_ITERATION = re.compile(r"^(\w+)=(\d+)$")


@dataclass
class Box:
    """One drawn node: a graph node, or the same node of every iteration of a repeat."""

    name: str
    members: list[OpNode] = field(default_factory=list)
    owned: list[Module] = field(default_factory=list)     # modules whose parameters are counted here
    reused: bool = False                                   # applies a module counted at an earlier node

    @property
    def node(self) -> OpNode:
        return self.members[0]


# ----------------------------------------------------------------------------- the drawing's graph
def boxes(g: nx.DiGraph, expand: bool) -> tuple[dict[str, Box], dict[str, str]]:
    """The drawn nodes, and the box of every graph node. Collapsed, the nodes that differ only in their
    repeat iterations (same op, input and output widths) share a box; its modules are counted at the first
    box using them. (A first layer reading the block's input keeps its own box: its shape differs.)"""
    by_key: dict[tuple, Box] = {}
    box_of: dict[str, str] = {}
    names: set[str] = set()
    for n in nodes(g):
        base = n.id if expand else "/".join(_ITERATION.sub(r"\1=*", p) for p in n.id.split("/"))
        key = (base, n.op, n.width, tuple(g.nodes[i]["data"].width for i in n.inputs))
        if key not in by_key:
            name, k = base, 1
            while name in names:
                k += 1
                name = f"{base}~{k}"
            names.add(name)
            by_key[key] = Box(name)
        by_key[key].members.append(n)
        box_of[n.id] = by_key[key].name
    found = {b.name: b for b in by_key.values()}
    owner: dict[str, str] = {}
    mods = modules(g)
    for n in nodes(g):
        if n.module:
            box = found[box_of[n.id]]
            first = owner.setdefault(n.module, box.name)
            if first == box.name and all(m.id != n.module for m in box.owned):
                box.owned.append(mods[n.module])
            box.reused |= first != box.name and mods[n.module].total > 0
    return found, box_of


def edges(g: nx.DiGraph, box_of: dict[str, str], expand: bool) -> dict[tuple[str, str, str | None], int]:
    """(tail box, head box, repeat variable or None) -> width. Collapsed, an edge from one iteration to a
    later one runs back up the loop; it carries the repeat variable and is drawn apart."""
    out: dict[tuple[str, str, str | None], int] = {}
    for u, v, data in g.edges(data="data"):
        loop = None if expand else _loop_variable(g.nodes[u]["data"].scope, g.nodes[v]["data"].scope)
        out[(box_of[u], box_of[v], loop)] = data.width
    return out


def _loop_variable(su: tuple[str, ...], sv: tuple[str, ...]) -> str | None:
    """The repeat variable when an edge goes from one iteration to a later one of the same repeat."""
    for a, b in zip(su, sv):
        if a != b:
            ma, mb = _ITERATION.match(a), _ITERATION.match(b)
            if ma and mb and ma[1] == mb[1] and int(ma[2]) < int(mb[2]):
                return ma[1]
            return None
    return None


# ----------------------------------------------------------------------------- labels
def _params_text(box: Box) -> str | None:
    totals = [m.total for m in box.owned]
    if not any(totals):
        return "shares weights" if box.reused else None
    if len(totals) > 1 and len(set(totals)) == 1:
        text = f"{len(totals)} \u00d7 {totals[0]:,} params"
    else:
        text = f"{sum(totals):,} params"
    return text + (" + shared weights" if box.reused else "")


def _sharing(box: Box, mods: dict[str, Module]) -> str | None:
    """The box's sharing mode (bank over task over shared), or None when it holds no parameters."""
    used = {mods[n.module].sharing for n in box.members if n.module and mods[n.module].total}
    return next((s for s in ("bank", "task", "shared") if s in used), None)


def _copies(sharing: str | None, sizes: Sizes, bank: dict | None) -> str | None:
    if sharing == "task":
        return f"x {sizes.tasks} tasks"
    if sharing == "bank" and bank:
        return f"bank {bank['K']}"
    return None


def _operator(n: OpNode) -> bool:
    """`a + b`, `a - b`, `a * b`: the binary ops written as symbols, drawn small."""
    if n.op in STRUCTURE:
        return False
    op = registry.get(n.op)
    return not op.in_language and op.inputs == (2, 2)


def _op_text(n: OpNode) -> str:
    return registry.get(n.op).text(n.attrs) if n.op not in STRUCTURE else n.op


def _label(box: Box, sharing: str | None, sizes: Sizes, bank: dict | None) -> str:
    n = box.node
    head = f"<B>{html.escape(_op_text(n))}</B>"
    if n.label and n.op not in STRUCTURE:
        head += f"  <I>{html.escape(_name(n))}</I>"
    if len(box.members) > 1:
        head += f'  <FONT COLOR="#b00000"><B>x {len(box.members)}</B></FONT>'
    detail = [f"\u2192 {n.stack} \u00d7 {n.width // n.stack}" if n.stack > 1 else f"\u2192 {n.width}"]
    if copies := _copies(sharing, sizes, bank):
        detail.append(copies)
    lines = [head, " \u00b7 ".join(detail)]
    if params := _params_text(box):
        lines.append(params)
    return "<" + "<BR/>".join(lines[:1] + [f'<FONT POINT-SIZE="9">{html.escape(x)}</FONT>' for x in lines[1:]]) + ">"


def _name(n: OpNode) -> str:
    """The name a node was assigned to; a block's `out` is named after its block (encoder.out)."""
    blocks = [p for p in n.scope[1:] if not _ITERATION.match(p)]
    return f"{blocks[-1]}.out" if n.label == "out" and blocks else n.label or ""


def _io_label(n: OpNode) -> str:
    if n.op == "input":
        return f"<<B>{n.label}</B><BR/><FONT POINT-SIZE=\"9\">{n.width}</FONT>>"
    what = "mean, log-std" if n.label == "actor" else "Q-value"
    return f"<<B>{n.label} output</B><BR/><FONT POINT-SIZE=\"9\">{n.width} ({what})</FONT>>"


def _legend_words(sizes: Sizes, bank: dict | None) -> list[tuple[str, str]]:
    return [("shared", "shared: one copy for all tasks"), ("task", f"per task: x {sizes.tasks} tasks"),
            ("bank", "bank: theta_t = Phi w_t" + (f", bank {bank['K']}" if bank else ""))]


def _legend(sizes: Sizes, bank: dict | None) -> str:
    rows = "".join(f'<TR><TD BGCOLOR="{FILL[k]}" WIDTH="18"></TD><TD ALIGN="LEFT">{html.escape(t)}</TD></TR>'
                   for k, t in _legend_words(sizes, bank))
    rows += '<TR><TD BORDER="1" WIDTH="18"></TD><TD ALIGN="LEFT">no parameters</TD></TR>'
    rows += '<TR><TD><FONT COLOR="#b00000"><B>x N</B></FONT></TD><TD ALIGN="LEFT">N repeat iterations</TD></TR>'
    return (f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3"><TR><TD COLSPAN="2"><B>legend</B></TD></TR>'
            f"{rows}</TABLE>>")


def _cluster_label(role: str, report: ParamReport) -> str:
    if role == "actor":
        return f"actor \u00b7 {report.actor:,} params"
    if role == "critic":
        return (f"critic \u00b7 one of 2 twins drawn\n{report.critic:,} params in both "
                f"(+ {report.critic_target:,} in their targets)")
    return f"common to actor and critic \u00b7 {report.common:,} params"


def _title(spec: Spec, report: ParamReport, sizes: Sizes) -> str:
    values = settings(spec.values)
    return (f"{Path(spec.path).name}: " + "\n".join(textwrap.wrap(values, 90)) +
            f"\n{report.total:,} parameters in all (obs {sizes.obs}, act {sizes.act}, {sizes.tasks} tasks)")


# ----------------------------------------------------------------------------- DOT
def to_dot(spec: Spec, sizes: Sizes = MT10, expand: bool = False, rankdir: str = "TB") -> graphviz.Digraph:
    """The drawing as a graphviz.Digraph (no `dot` program needed to build or save its source)."""
    g = spec.graph_for(sizes.obs, sizes.act, sizes.tasks, sizes.meta)
    report, mods, bank = count(g), modules(g), info(g).bank
    found, box_of = boxes(g, expand)
    dot = graphviz.Digraph(Path(spec.path).stem)
    dot.attr(rankdir=rankdir, label=_title(spec, report, sizes), labelloc="t", fontname=FONT, fontsize="14",
             nodesep="0.3", ranksep="0.35", newrank="true")
    dot.attr("node", fontname=FONT, fontsize="11", shape="box", style="rounded", margin="0.1,0.04")
    dot.attr("edge", fontname=FONT, fontsize="9", color=EDGE_COLOUR, fontcolor=EDGE_COLOUR, arrowsize="0.6")
    dot.node("legend", _legend(sizes, bank), shape="plaintext")
    with dot.subgraph(name="inputs") as inputs:
        inputs.attr(rank="source")
        ordered = sorted((b for b in found.values() if b.node.op == "input"), key=_input_order)
        for box in ordered:
            inputs.node(box.name, _io_label(box.node), shape="ellipse", style="filled", fillcolor=INPUT_FILL)
        for a, b in zip(ordered, ordered[1:]):
            inputs.edge(a.name, b.name, style="invis")
    for role in CLUSTERS:
        members = [b for b in found.values() if b.node.role == role and b.node.op != "input"]
        table = role == "common" and bank is not None      # PaCo's w, shared by actor and critic
        if not members and not table:
            continue
        with dot.subgraph(name=f"cluster_{role}") as c:
            c.attr(label=_cluster_label(role, report), style="rounded,dashed", color="#999999", fontsize="12")
            for box in members:
                _add_box(c, box, _sharing(box, mods), sizes, bank)
            if table and bank is not None:
                c.node(TABLE, _table_label(bank, sizes), style="rounded,filled", fillcolor=FILL["bank"])
    for (tail, head, loop), width in edges(g, box_of, expand).items():
        if loop is None:
            dot.edge(tail, head, label=str(width))
        else:
            dot.edge(tail, head, label=f"{width} (next {loop})", style="dashed", constraint="false",
                     color=LOOP_COLOUR, fontcolor=LOOP_COLOUR)
    return dot


def _input_order(box: Box) -> int:
    """obs, task, then act, which only the critic reads: with invisible edges between them in this order,
    the actor is drawn on the left."""
    return ("obs", "task", "act").index(box.name)


def _add_box(c: graphviz.Digraph, box: Box, sharing: str | None, sizes: Sizes, bank: dict | None) -> None:
    n = box.node
    if n.op == "output":
        c.node(box.name, _io_label(n), style="rounded,bold")
    elif _operator(n):
        c.node(box.name, _label(box, None, sizes, bank), shape="ellipse", margin="0.03")
    elif sharing is None:
        c.node(box.name, _label(box, None, sizes, bank))
    else:
        c.node(box.name, _label(box, sharing, sizes, bank), style="rounded,filled", fillcolor=FILL[sharing])


def _table_label(bank: dict, sizes: Sizes) -> str:
    k = bank["K"]
    return (f"<<B>w</B>  <I>composition table</I><BR/><FONT POINT-SIZE=\"9\">{sizes.tasks} tasks \u00d7 {k} = "
            f"{sizes.tasks * k:,} params</FONT>>")


# ----------------------------------------------------------------------------- output files
def draw(spec: Spec, path: str | Path, sizes: Sizes = MT10, expand: bool = False, rankdir: str = "TB") -> None:
    """Write the drawing to path; its suffix (.svg, .png, .html, .dot) picks the format."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise VizError(f"cannot draw to '{path.name}': name a .svg, .png, .html or .dot file")
    dot = to_dot(spec, sizes, expand, rankdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        path.write_text(dot.source)
    elif fmt == "html":
        path.write_text(html_page(spec, _render(dot, "svg").decode(), sizes))
    else:
        path.write_bytes(_render(dot, fmt))


def _render(dot: graphviz.Digraph, fmt: str) -> bytes:
    try:
        return dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise VizError(f"drawing {fmt} needs Graphviz's dot program, which is not installed: install the system "
                       "package graphviz (Debian/Ubuntu: apt-get install graphviz), or write a .dot file") from None


def html_page(spec: Spec, svg: str, sizes: Sizes = MT10) -> str:
    """A self-contained page: title, legend, the drawing (inline SVG) and the parameter summary."""
    report = spec.params(sizes.obs, sizes.act, sizes.tasks, sizes.meta)
    bank = info(spec.graph_for(sizes.obs, sizes.act, sizes.tasks, sizes.meta)).bank
    name = html.escape(Path(spec.path).name)
    svg = svg[svg.index("<svg"):]
    values = html.escape(settings(spec.values))
    legend = "".join(f'<span class="key"><span class="swatch" style="background:{FILL[k]}"></span>'
                     f"{html.escape(t)}</span>" for k, t in _legend_words(sizes, bank))
    summary = [("actor", report.actor), ("critic (2 twins)", report.critic),
               ("critic target (2 twins)", report.critic_target), ("common to actor and critic", report.common),
               ("temperatures (1 per task)", report.alpha), ("trainable", report.trainable),
               ("total", report.total)]
    summary += [(f"by sharing: {k}", v) for k, v in report.by_sharing.items()]
    summary += [(f"one sample of one task touches: {k}", v) for k, v in report.per_task.items()]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td class=n>{v:,}</td></tr>" for k, v in summary)
    mods = "".join(f"<tr><td>{m.role}</td><td>{html.escape(m.module)}</td><td>{m.op}</td><td>{m.sharing}</td>"
                   f"<td class=n>{m.copies}</td><td class=n>{m.per_copy:,}</td><td class=n>{m.total:,}</td></tr>"
                   for m in report.by_module)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>graphnet: {name}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }}
.params {{ color: #555; margin-top: 0; }}
.key {{ margin-right: 1.5em; white-space: nowrap; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; border: 1px solid #888; vertical-align: middle;
          margin-right: 0.4em; }}
.drawing {{ overflow: auto; border: 1px solid #ddd; padding: 1em; margin: 1em 0; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ padding: 0.15em 0.8em; border-bottom: 1px solid #eee; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head>
<body>
<h1>{name}</h1>
<p class="params">{values}<br>obs {sizes.obs}, act {sizes.act}, {sizes.tasks} tasks: {report.total:,} parameters</p>
<div class="legend">{legend}</div>
<div class="drawing">{svg}</div>
<h2>Parameters</h2>
<table>{rows}</table>
<details><summary>by module</summary>
<table><tr><th>role</th><th>module</th><th>op</th><th>sharing</th><th>copies</th><th>per copy</th><th>total</th></tr>
{mods}</table></details>
</body></html>
"""

