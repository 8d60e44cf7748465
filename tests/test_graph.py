"""``linerules graph``: Mermaid flowcharts in the rule's own words."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from engine.cli import cli
from engine.language.graph import escape, to_mermaid
from engine.language.project import compile_source, load_project

ROOT = Path(__file__).resolve().parent.parent
NODE = re.compile(r'^\s*(r\d+_\w+)(\(\[|\{\{|\(\(|\[|\{)"([^"]*)"(\]\)|\}\}|\)\)|\]|\})$')
EDGE = re.compile(r'^\s*(r\d+_\w+) (-->|-\.->)(?:\|"([^"]*)"\|)? (r\d+_\w+)$')


def chart(text: str, rule: str | None = None) -> str:
    result = compile_source(text)
    assert result.project is not None, result.diagnostics
    return to_mermaid(result.project, rule)


def parse(mermaid: str) -> tuple[dict[str, str], list[tuple[str, str | None, str]]]:
    """Nodes (id -> label) and edges (from, label, to); fails on any other line."""
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str | None, str]] = []
    for line in mermaid.splitlines():
        if m := NODE.match(line):
            nodes[m.group(1)] = m.group(3)
        elif m := EDGE.match(line):
            edges.append((m.group(1), m.group(3), m.group(4)))
        else:
            assert re.match(r'^(\s*%%.*|flowchart TD|\s*subgraph r\d+g\["[^"]*"\]|\s*direction TB|\s*end)$', line), line
    for a, _, b in edges:
        assert a in nodes and b in nodes, (a, b)
    return nodes, edges


def label_edges(nodes, edges):
    return {(nodes[a], label, nodes[b]) for a, label, b in edges}


def test_welcome_rule_reads_in_its_own_words():
    text = (ROOT / "rules" / "welcome.rule").read_text(encoding="utf-8")
    out = chart(text, "welcome")
    assert out.startswith("flowchart TD\n    %% rule welcome (test.rule)\n")
    # its description is shown, as the title of its box
    assert '    subgraph r0g["welcome: 同梱QRカードから友だち追加した人へのステップ配信"]\n' in out
    nodes, edges = parse(out)
    flow = label_edges(nodes, edges)
    assert {
        ("when followed via qr=shipping", None, "send greeting_shipping"),
        ("send greeting_shipping", None, "wait 1d"),
        ("wait 1d", None, "if not purchased"),
        ("if not purchased", "yes", "send coupon15"),
        ("if not purchased", "no", "wait 3d at 12:00"),
        ("send coupon15", None, "wait 3d at 12:00"),
        ("wait 3d at 12:00", None, "if purchased"),
        ("if purchased", "yes", "send review_request"),
        ("exit when blocked", None, "exit"),
    } <= flow
    assert ("tag 購入済み", None, "done") in flow


def test_entry_filter_split_holdout_and_stop():
    out = chart("""rule r "A/B"
        when purchased product=SKU-1
        unless tagged vip
        split a 50%, b 50%
        holdout 10%
        then
          send x if variant a
          stop if variant a
          send y
          stop""")
    nodes, edges = parse(out)
    flow = label_edges(nodes, edges)
    assert ("when purchased product=SKU-1", None, "if not tagged vip") in flow
    assert ("if not tagged vip", "no: not entered", "exit") in flow
    assert ("if not tagged vip", "yes", "holdout 10%") in flow
    assert ("holdout 10%", "control group: nothing sent", "exit") in flow
    assert ("holdout 10%", "others", "split") in flow
    assert ("split", "variant a 50%", "if variant a") in flow
    assert ("split", "variant b 50%", "if variant a") in flow
    assert ("stop", None, "exit") in flow
    assert "done" not in nodes.values()  # the last step is an unconditional stop


def test_labels_escape_quotes_and_keep_japanese():
    out = chart('when message "say \\"hi\\"", "クーポン" then send x if display_name >= "<b>#1"')
    nodes, _ = parse(out)
    labels = set(nodes.values())
    assert "when message #quot;say \\#quot;hi\\#quot;#quot;, #quot;クーポン#quot;" in labels
    assert "if display_name #gt;= #quot;#lt;b#gt;#35;1#quot;" in labels
    assert escape('a"b') == "a#quot;b" and escape("`x`") == "#96;x#96;"


def test_every_rule_is_a_subgraph():
    project = load_project(ROOT / "rules").project
    out = to_mermaid(project)
    nodes, edges = parse(out)
    titles = re.findall(r'subgraph r\d+g\["([^"]*)"\]', out)
    assert len(titles) == len(project.rules)
    assert "welcome: 同梱QRカードから友だち追加した人へのステップ配信" in titles
    assert "when schedule #quot;0 20 * * 5#quot;" in nodes.values()
    assert "when sale kind=super_sale starts in 14d at 12:00" in nodes.values()
    assert out.count("\n    end\n") == len(project.rules)


def invoke(args, cwd):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, ["graph", *args], prog_name="linerules")
    finally:
        os.chdir(old)


def test_cli_one_rule_and_all_rules():
    one = invoke(["welcome"], ROOT)
    assert one.exit_code == 0
    assert one.output.startswith("flowchart TD\n    %% rule welcome (rules/welcome.rule)\n")
    every = invoke([], ROOT)
    assert every.exit_code == 0 and every.output.startswith("flowchart TD\n    subgraph")


def test_cli_unknown_rule_is_a_usage_error():
    result = invoke(["welcom", "--lang", "en"], ROOT)
    assert result.exit_code == 2
    assert result.output.startswith("Usage: linerules graph [OPTIONS] [RULE]\n")
    assert result.output.endswith("\nError: unknown rule `welcom` (did you mean `welcome`?)\n")
    result = invoke(["welcom"], ROOT)  # the sample folder says `language: ja`
    assert result.output.endswith("\nError: ルール `welcom` はありません (もしかして `welcome` ですか?)\n")


def test_cli_invalid_folder_prints_diagnostics(tmp_path):
    (tmp_path / "r.rule").write_text("when followed send x\n", encoding="utf-8")
    result = invoke(["--rules", str(tmp_path)], ROOT)
    assert result.exit_code == 1
    assert f"{tmp_path / 'r.rule'}:1:15: error" in result.output
    assert "missing `then` before `send`" in result.output
    assert "flowchart" not in result.output
