"""sale_calendar.yaml: time formats, zones, and the exact place of every error."""

import datetime as dt
import textwrap
from zoneinfo import ZoneInfo

import yaml
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from engine.language import ir
from engine.language.sales import load_sales

#: Short texts made of YAML's punctuation, to reach deep into the parser.
YAMLISH = st.text(alphabet="{}[]:-&*!|>'\"\n #?,%@`<=~.\\ \tabc0123年", max_size=60)
PATH = "rules/sale_calendar.yaml"
TOKYO = ZoneInfo("Asia/Tokyo")


def load(text: str, tz: ZoneInfo = TOKYO):
    return load_sales(PATH, textwrap.dedent(text), tz)


def errors(text: str) -> list[str]:
    _, diags = load(text)
    return [f"{d.line}:{d.column}: {d.message}" + (f" | {d.help}" if d.help else "") for d in diags]


def one_sale(**fields) -> str:
    base = {"name": "s1", "title": "楽天スーパーSALE", "starts": "2026-12-04 20:00", "ends": "2026-12-11 01:59"}
    base.update(fields)
    lines = ["sales:"]
    for i, (k, v) in enumerate((k, v) for k, v in base.items() if v is not None):
        lines.append(f"  {'- ' if i == 0 else '  '}{k}: {v}")
    return "\n".join(lines) + "\n"


def test_sample_calendar():
    with open("rules/sale_calendar.yaml", encoding="utf-8") as f:
        sales, diags = load_sales("rules/sale_calendar.yaml", f.read(), TOKYO)
    assert diags == []
    assert [(s.name, s.kind) for s in sales] == [
        ("super_sale_2026_12", "super_sale"),
        ("marathon_2027_01", "marathon"),
        ("marathon_2027_02", "marathon"),
        ("super_sale_2027_03", "super_sale"),
    ]
    first = sales[0]
    assert first.title == "楽天スーパーSALE"
    assert first.starts.isoformat() == "2026-12-04T20:00:00+09:00"
    assert first.ends.isoformat() == "2026-12-11T01:59:00+09:00"
    assert sales[2].starts == dt.datetime(2027, 2, 4, 20, tzinfo=TOKYO)
    assert first.span.line == 3


def test_time_formats():
    sales, diags = load("""\
        sales:
          - {name: a, title: A, starts: 2026-12-04 20:00, ends: "2026-12-05T20:00:00+09:00"}
          - {name: b, title: B, starts: 2026-12-04T11:00:00Z, ends: 2026-12-05}
          - {name: c, title: C, starts: 2026/12/04 20:00, ends: 2026-12-05 20:00:30}
    """)
    # a bare date as `ends` is kept (00:00 local) and only warned about
    assert [(d.severity, d.line) for d in diags] == [("warning", 3)]
    a, b, c = sales
    assert a.starts == dt.datetime(2026, 12, 4, 20, tzinfo=TOKYO)
    assert a.ends == dt.datetime(2026, 12, 5, 20, tzinfo=TOKYO)
    assert b.starts.isoformat() == "2026-12-04T20:00:00+09:00"  # an offset is kept, shown in Tokyo
    assert b.ends.isoformat() == "2026-12-05T00:00:00+09:00"  # a bare date is 00:00 local
    assert c.starts == dt.datetime(2026, 12, 4, 20, tzinfo=TOKYO)
    assert c.ends == dt.datetime(2026, 12, 5, 20, 0, 30, tzinfo=TOKYO)


def test_local_times_follow_the_configured_zone():
    (sale,), diags = load(one_sale(), ZoneInfo("Europe/Berlin"))
    assert diags == []
    assert sale.starts.isoformat() == "2026-12-04T20:00:00+01:00"


def test_optional_fields():
    (sale,), diags = load(one_sale(kind="super_sale", url="https://shop.example.jp/sale"))
    assert diags == [] and sale.kind == "super_sale" and sale.url == "https://shop.example.jp/sale"
    (sale,), _ = load(one_sale())
    assert sale.kind is None and sale.url is None


def test_empty_calendar():
    assert load("") == ((), [])
    assert load("sales: []\n") == ((), [])


def test_unparseable_date():
    assert errors(one_sale(starts="next friday")) == [
        "4:13: `next friday` is not a date and time | write `2026-12-04 20:00` (local time), "
        "`2026-12-04T20:00:00+09:00` or a date `2026-12-04`"
    ]


def test_impossible_date():
    assert errors(one_sale(ends="2026-02-30")) == [
        "5:11: `2026-02-30` is not a date and time | write `2026-12-04 20:00` (local time), "
        "`2026-12-04T20:00:00+09:00` or a date `2026-12-04`"
    ]


def test_ends_before_starts():
    _, diags = load(one_sale(ends="2026-12-04 19:00"))
    assert [(d.line, d.column, d.end_column, d.message, d.help) for d in diags] == [
        (5, 11, 27, "the sale ends before it starts", "it starts 2026-12-04 20:00; `ends` must be later")
    ]


def test_ends_equal_starts():
    assert errors(one_sale(ends="2026-12-04T20:00:00+09:00"))[0].startswith("5:11: the sale ends the moment it starts")


def test_a_one_day_sale_written_as_two_dates_is_explained():
    assert errors(one_sale(starts="2027-02-01", ends="2027-02-01")) == [
        "5:11: the sale ends the moment it starts | a date alone is 00:00, the start of that day: "
        "for a sale through 2027-02-01, write `ends: 2027-02-01 23:59`"
    ]


def test_an_end_written_as_a_date_warns_that_the_day_itself_is_not_in_the_sale():
    sales, diags = load(one_sale(ends="2026-12-11"))
    assert [(d.severity, f"{d.line}:{d.column}: {d.message}", d.help) for d in diags] == [
        (
            "warning",
            "5:11: the sale ends at 2026-12-11 00:00, so its last day is 2026-12-10",
            "a date alone is 00:00, the start of that day: for a sale through 2026-12-11, write "
            "`ends: 2026-12-11 23:59`, or `ends: 2026-12-11 00:00` if the day before is meant",
        )
    ]
    assert [s.name for s in sales] == ["s1"]  # a warning: the sale is still there


def test_missing_fields():
    assert errors("""\
        sales:
          - name: s1
            starts: 2026-12-04
    """) == ["2:5: sale is missing `title`, `ends` | every sale needs name, title, starts and ends"]


def test_a_misspelt_field_is_told_at_the_typo_not_as_missing_too():
    assert errors("""\
        sales:
          - name: s1
            title: A
            strats: 2026-12-04 20:00
            ends: 2026-12-05 00:00
    """) == ["4:5: unknown sale field `strats` | did you mean `starts`?"]


def test_duplicate_names():
    assert errors("""\
        sales:
          - {name: s1, title: A, starts: 2026-12-04, ends: 2026-12-05 00:00}
          - {name: s1, title: B, starts: 2027-12-04, ends: 2027-12-05 00:00}
    """) == ["3:12: duplicate sale name `s1` | sale 1 already uses it; give each sale its own name"]


def test_a_duplicate_name_is_reported_beside_the_sales_other_errors():
    # the second s1 also ends before it starts, the third has no title: each error is told,
    # the duplicates too, in one run
    assert errors("""\
        sales:
          - {name: s1, title: A, starts: 2026-12-04, ends: 2026-12-05 00:00}
          - {name: s1, title: B, starts: 2027-12-04, ends: 2027-12-01 00:00}
          - {name: s1, starts: 2028-12-04, ends: 2028-12-05 00:00}
    """) == [
        "3:12: duplicate sale name `s1` | sale 1 already uses it; give each sale its own name",
        "3:52: the sale ends before it starts | it starts 2027-12-04 00:00; `ends` must be later",
        "4:5: sale is missing `title` | every sale needs name, title, starts and ends",
        "4:12: duplicate sale name `s1` | sale 1 already uses it; give each sale its own name",
    ]


def test_url_must_be_https():
    assert errors(one_sale(url="http://shop.example.jp")) == [
        "6:10: `url` must be an https:// link, not `http://shop.example.jp`"
    ]


def test_bad_name_and_kind():
    assert errors(one_sale(name="2026sale", kind="super sale")) == [
        "2:11: `2026sale` is not a valid sale name | a name starts with a letter and continues "
        "with letters, digits, _ or -",
        "6:11: `super sale` is not a valid sale kind | a name starts with a letter and continues "
        "with letters, digits, _ or -",
    ]


def test_unknown_field_suggests_close_name():
    assert errors(one_sale(stars="x")) == ["6:5: unknown sale field `stars` | did you mean `starts`?"]


def test_unknown_top_level_key():
    assert errors("sale: []\n") == ["1:1: unknown key `sale` | did you mean `sales`?"]


def test_shapes():
    assert errors("- a\n") == [
        "1:1: sale_calendar.yaml must be a mapping with a `sales:` list | "
        "start the file with `sales:` and list one sale per item"
    ]
    assert errors("sales: {a: 1}\n") == [
        "1:8: `sales` must be a list of sales | write each sale as an item starting with `- name: ...`"
    ]
    assert errors("sales:\n  - just text\n") == ["2:5: a sale must be a mapping with name, title, starts and ends"]


def test_title_must_be_text():
    assert errors(one_sale(title="[1]")) == ["3:12: `title` must be text"]


def test_one_bad_sale_keeps_the_others():
    sales, diags = load("""\
        sales:
          - {name: a, title: A, starts: 2026-12-04, ends: 2026-12-03}
          - {name: b, title: B, starts: 2026-12-04, ends: 2026-12-05 00:00}
    """)
    assert [s.name for s in sales] == ["b"] and len(diags) == 1


def test_yaml_error_in_calendar():
    assert errors("sales:\n  - name: 'a\n") == [
        "2:11: invalid YAML: the quoted text that starts here is never closed | "
        "close it with the same quote, or write a text over several lines after `|`"
    ]


@hsettings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        YAMLISH,
        st.fixed_dictionaries(
            {
                "sales": st.lists(
                    st.dictionaries(
                        st.sampled_from(["name", "title", "kind", "starts", "ends", "url", "x"]),
                        st.one_of(
                            st.none(),
                            st.integers(),
                            st.text(max_size=25),
                            st.dates(),
                            st.datetimes(),
                            st.lists(st.integers(), max_size=2),
                        ),
                        max_size=7,
                    ),
                    max_size=4,
                )
            }
        ).map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    )
)
def test_never_raises(text):
    sales, diags = load_sales(PATH, text, TOKYO)
    assert all(isinstance(s, ir.Sale) and s.starts < s.ends for s in sales)
    assert all(d.path == PATH and d.line >= 1 and d.column >= 1 for d in diags)


def test_a_field_with_no_value_is_an_error_that_says_quote_it():
    text = one_sale(url="#sale")
    assert errors(text) == ['6:5: `url` has no value | an unquoted `#` starts a comment: quote it, e.g. url: "#sale"']
