"""Property tests: no input makes the front end raise, and every diagnostic has a place.

Random text, mutations of the sample rules (characters and whole tokens inserted, deleted,
replaced) and random YAML beside them all go through ``load_project`` on a real folder.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.language.diagnostics import Diagnostic
from engine.language.parser import keywords, parse_file
from engine.language.project import compile_source, load_project

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "rules").glob("*.rule"))}
YAML = {
    n: (ROOT / "rules" / n).read_text(encoding="utf-8")
    for n in ("messages.yaml", "settings.yaml", "sale_calendar.yaml")
}
TOKEN = re.compile(r'"[^"\n]*"|#[^\n]*|\S+')
PIECES = sorted(keywords()) + [
    "=",
    ",",
    "(",
    ")",
    ":",
    "%",
    "-",
    '"',
    "\n",
    "1d",
    "12:00",
    "50%",
    "0d",
    "25:00",
    "coupon15",
    "vip",
    "購入済み",
    "＝",
    "#",
]
FAST = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def assert_placed(diags: list[Diagnostic]) -> None:
    for d in diags:
        assert d.line >= 1 and d.column >= 1, d
        assert d.severity in ("error", "warning")
        assert d.message


@st.composite
def mutated(draw) -> tuple[str, str]:
    """A sample rule file with a few character or token edits."""
    name = draw(st.sampled_from(sorted(SAMPLES)))
    text = SAMPLES[name]
    for _ in range(draw(st.integers(1, 4))):
        tokens = [(m.start(), m.end()) for m in TOKEN.finditer(text)]
        kind = draw(
            st.sampled_from(
                [
                    "insert_char",
                    "delete_char",
                    "replace_char",
                    "delete_token",
                    "replace_token",
                    "insert_token",
                    "swap_tokens",
                ]
            )
        )
        if kind.endswith("_char"):
            i = draw(st.integers(0, len(text)))
            ch = draw(st.characters(blacklist_categories=("Cs",)))
            if kind == "insert_char":
                text = text[:i] + ch + text[i:]
            elif kind == "delete_char":
                text = text[:i] + text[i + 1 :]
            else:
                text = text[:i] + ch + text[i + 1 :]
        elif tokens:
            a, b = tokens[draw(st.integers(0, len(tokens) - 1))]
            piece = draw(st.sampled_from(PIECES))
            if kind == "delete_token":
                text = text[:a] + text[b:]
            elif kind == "replace_token":
                text = text[:a] + piece + text[b:]
            elif kind == "insert_token":
                text = text[:a] + piece + " " + text[a:]
            else:
                c, d = tokens[draw(st.integers(0, len(tokens) - 1))]
                if (a, b) < (c, d) and b <= c:
                    text = text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
    return name, text


@FAST
@given(st.text(max_size=300))
def test_random_text_never_raises(text):
    f, diags = parse_file("r.rule", text)
    assert_placed(diags)
    result = compile_source(text, messages={})
    assert_placed(result.diagnostics)
    assert (result.project is None) == any(d.is_error for d in result.diagnostics)


@FAST
@given(st.lists(st.sampled_from(PIECES), max_size=40).map(" ".join))
def test_random_keyword_soup_never_raises(text):
    result = compile_source(text)
    assert_placed(result.diagnostics)


@FAST
@given(mutated())
def test_mutated_sample_folder_never_raises(case):
    name, text = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for other, content in {**SAMPLES, **YAML}.items():
            (folder / other).write_text(content, encoding="utf-8")
        (folder / name).write_text(text, encoding="utf-8")
        result = load_project(folder)
        assert_placed(result.diagnostics)
        assert (result.project is None) == any(d.is_error for d in result.diagnostics)
        for d in result.diagnostics:
            assert d.path.startswith(str(folder))


@FAST
@given(mutated(), st.sampled_from(["\r\n", "\r"]))
def test_every_line_end_gives_the_same_diagnostics(case, end):
    """CR LF (Windows) and CR alone (old Mac) are line ends like LF: the same rules, the same
    diagnostics at the same places."""
    _, text = case
    # an LF text first: an edit may have put a CR in it, and a CR before an LF would become two
    # line ends where the LF text has one
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lf = compile_source(text, messages={})
    other = compile_source(text.replace("\n", end), messages={})
    assert other.diagnostics == lf.diagnostics
    assert (other.project is None) == (lf.project is None)
    if lf.project is not None:
        assert other.project.rules == lf.project.rules


@FAST
@given(st.sampled_from(sorted(SAMPLES) + sorted(YAML)), st.sampled_from(["\r\n", "\r"]))
def test_sample_folder_with_other_line_ends_is_the_same_project(name, end):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for other, content in {**SAMPLES, **YAML}.items():
            (folder / other).write_text(
                content.replace("\n", end) if other == name else content, encoding="utf-8", newline=""
            )
        result = load_project(folder)
        assert result.diagnostics == []
        lf = load_project(ROOT / "rules").project
        assert {n: r.version for n, r in result.project.rules.items()} == {n: r.version for n, r in lf.rules.items()}
        assert result.project.messages == lf.messages and result.project.sales == lf.sales
        assert result.project.settings == lf.settings


yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=20),
    st.sampled_from(["09:00-21:00", "Asia/Tokyo", "2026-12-04 20:00", "-"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)


@FAST
@given(st.sampled_from(sorted(YAML)), st.one_of(st.text(max_size=200), yaml_values))
def test_random_yaml_beside_the_rules_never_raises(name, content):
    import yaml

    text = content if isinstance(content, str) else yaml.safe_dump(content, allow_unicode=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for other, sample in {**SAMPLES, **YAML}.items():
            (folder / other).write_text(sample, encoding="utf-8")
        (folder / name).write_text(text, encoding="utf-8")
        result = load_project(folder)
        assert_placed(result.diagnostics)
