"""settings.yaml: every setting, its checks, and the exact place of every error."""

import datetime as dt
import textwrap

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from engine.language import ir
from engine.language.settings import load_settings

#: Short texts made of YAML's punctuation, to reach deep into the parser.
YAMLISH = st.text(alphabet="{}[]:-&*!|>'\"\n #?,%@`<=~.\\ \tabc0123年", max_size=60)
PATH = "rules/settings.yaml"


def load(text: str):
    return load_settings(PATH, textwrap.dedent(text))


def errors(text: str) -> list[str]:
    """``line:col: message`` of each diagnostic (help after ` | ` when present)."""
    _, diags = load(text)
    return [f"{d.line}:{d.column}: {d.severity}: {d.message}" + (f" | {d.help}" if d.help else "") for d in diags]


@pytest.fixture(autouse=True)
def no_login_env(monkeypatch):
    monkeypatch.delenv("LINE_LOGIN_CHANNEL_ID", raising=False)
    monkeypatch.delenv("LINE_LOGIN_CHANNEL_SECRET", raising=False)


def test_empty_file_means_defaults():
    s, diags = load("")
    assert diags == []
    assert s == ir.Settings()
    assert s.timezone == "Asia/Tokyo" and s.window is None and s.utm is True
    assert s.attribution_days == 7 and s.max_per_day is None


def test_every_setting_read():
    s, diags = load("""\
        timezone: Europe/Berlin
        window: "22:00-06:30"
        max_per_day: 2
        monthly_quota: 5000
        rich_menus:
          member: richmenu-8d1f3c5a9b2e4f60a7c8d9e0f1a2b3c4
          会員: richmenu-2B7E9F41C6D84A35B0E1F2A3C4D5E6F7
        utm: false
        attribution_days: 14
        base_url: https://line.shop.example.jp/
        login_channel_id: 1234567890
    """)
    assert diags == []
    assert s.timezone == "Europe/Berlin"
    assert (s.window.start, s.window.end) == (dt.time(22), dt.time(6, 30))
    assert s.window.span.line == 2
    assert (s.max_per_day, s.monthly_quota, s.attribution_days, s.utm) == (2, 5000, 14, False)
    assert s.rich_menu("member") == "richmenu-8d1f3c5a9b2e4f60a7c8d9e0f1a2b3c4"
    assert s.rich_menu("会員") == "richmenu-2B7E9F41C6D84A35B0E1F2A3C4D5E6F7"
    assert s.base_url == "https://line.shop.example.jp"
    assert s.login_channel_id == "1234567890"


def test_null_values_keep_defaults():
    s, diags = load("window: null\nmax_per_day:\n")
    assert diags == [] and s.window is None and s.max_per_day is None


def test_sample_settings_file_is_valid():
    with open("rules/settings.yaml", encoding="utf-8") as f:
        s, diags = load_settings("rules/settings.yaml", f.read())
    assert diags == []
    assert s.timezone == "Asia/Tokyo" and s.max_per_day == 2 and s.monthly_quota == 5000
    assert {name for name, _ in s.rich_menus} == {"member", "vip"}
    assert (s.window.start, s.window.end) == (dt.time(9), dt.time(21))


def test_unknown_time_zone_suggests_close_name():
    assert errors("timezone: Asia/Tokio\n") == [
        "1:11: error: unknown time zone `Asia/Tokio` | did you mean `Asia/Tokyo`?"
    ]


@pytest.mark.parametrize("written", ["JST", '"+09:00"', "日本時間", "UTC+9"])
def test_japans_zone_written_another_way_is_told_its_name(written):
    [error] = errors(f"timezone: {written}\n")
    assert error.endswith("| write `Asia/Tokyo`: time zones are IANA names, which also know the zone's rules"), error


def test_time_zone_must_be_text():
    assert errors("timezone: 9\n") == [
        "1:11: error: unknown time zone `9` | use an IANA zone name such as `Asia/Tokyo`"
    ]


def test_unknown_zone_keeps_default_zone():
    s, _ = load("timezone: Mars/Olympus\n")
    assert s.timezone == "Asia/Tokyo"


@pytest.mark.parametrize(
    "value, message",
    [
        ('"9-21"', "`9-21` is not a delivery window like `09:00-21:00`"),
        ('"25:00-21:00"', "`25:00` is not a time of day (00:00 to 23:59)"),
        ('"09:00-21:60"', "`21:60` is not a time of day (00:00 to 23:59)"),
        ('"10:00-10:00"', "the window `10:00-10:00` starts and ends at the same time"),
    ],
)
def test_bad_windows(value, message):
    _, diags = load(f"window: {value}\n")
    assert [(d.line, d.column, d.end_column, d.message) for d in diags] == [(1, 9, 9 + len(value), message)]


@pytest.mark.parametrize(
    "value, meant",
    [
        ('"9:00～21:00"', "09:00-21:00"),  # the full-width wave dash of a Japanese keyboard
        ('"09:00〜21:00"', "09:00-21:00"),
        ('"9-21"', "09:00-21:00"),
        ('"9時から21時30分"', "09:00-21:30"),
        ('"22:00 – 7:00"', "22:00-07:00"),
        ('"２２時〜７時"', "22:00-07:00"),
    ],
)
def test_a_window_written_another_way_gets_the_form_to_write(value, meant):
    _, [diag] = load(f"window: {value}\n")
    assert diag.code == "LR603"
    assert diag.help == f'write window: "{meant}": two times of day joined by `-`'


@pytest.mark.parametrize("value", ['"25-21"', '"9-9"', '"9:00-21:00-22:00"', '"9時"'])
def test_a_window_that_means_no_window_gets_the_general_help(value):
    _, [diag] = load(f"window: {value}\n")
    assert diag.help.startswith("write the local opening and closing times")


def test_window_must_be_text():
    assert errors("window: 9\n") == [
        '1:9: error: `window` must be text like "09:00-21:00" | quote it: window: "09:00-21:00"'
    ]


@pytest.mark.parametrize("key", ["max_per_day", "monthly_quota", "attribution_days"])
@pytest.mark.parametrize("value", ["0", "-3", "two", "true", "1.5"])
def test_positive_whole_numbers(key, value):
    assert errors(f"{key}: {value}\n") == [
        f"1:{len(key) + 3}: error: `{key}` must be a whole number of at least 1, not `{load_value(value)}`"
    ]


def load_value(text: str):
    import yaml

    return yaml.safe_load(text)


def test_rich_menu_id_shape():
    assert errors("""\
        rich_menus:
          member: richmenu-123
    """) == [
        "2:11: error: `richmenu-123` is not a rich menu id | a rich menu id is `richmenu-` "
        "followed by 32 hexadecimal characters, as shown by LINE when the menu is created"
    ]


def test_a_rich_menu_left_without_an_id_is_named_not_shown_as_none():
    assert errors("""\
        rich_menus:
          member: richmenu-8d1f3c5a9b2e4f60a7c8d9e0f1a2b3c4
          vip:
    """) == [
        "3:3: error: rich menu `vip` has no id | write the id LINE shows for the menu, e.g. "
        "`vip: richmenu-0123456789abcdef0123456789abcdef`, or remove the line"
    ]


@pytest.mark.parametrize(
    "written, meant",
    [
        ("5,000", "monthly_quota: 5000"),
        ("5000通", "monthly_quota: 5000"),
        ("５０００", "monthly_quota: 5000"),
    ],
)
def test_a_count_written_like_a_shop_writes_it_gets_the_number_meant(written, meant):
    assert errors(f"monthly_quota: {written}\n") == [
        f"1:16: error: `monthly_quota` must be a whole number of at least 1, not `{written}` | "
        f"write the number alone: `{meant}`"
    ]


def test_rich_menu_name_rule():
    assert errors("""\
        rich_menus:
          1st: richmenu-8d1f3c5a9b2e4f60a7c8d9e0f1a2b3c4
    """) == [
        "2:3: error: `1st` is not a valid menu name | a name starts with a letter and "
        "continues with letters, digits, _ or -"
    ]


def test_rich_menus_must_be_a_mapping():
    assert errors("rich_menus: [a, b]\n") == [
        "1:13: error: `rich_menus` must map menu names to rich menu ids | "
        "e.g. rich_menus: {member: richmenu-0123456789abcdef0123456789abcdef}"
    ]


def test_utm_must_be_true_or_false():
    assert errors("utm: maybe\n") == ["1:6: error: `utm` must be true or false, not `maybe`"]


def test_base_url_must_be_https():
    assert errors("base_url: http://shop.example.jp\n") == [
        "1:11: error: `base_url` must be an https:// URL, not `http://shop.example.jp` | "
        "the public address of the runner, e.g. https://line.shop.example.jp"
    ]


def test_secret_in_file_is_a_warning():
    s, diags = load("login_channel_secret: abc123\n")
    assert s.login_channel_secret == "abc123"
    assert [(d.line, d.column, d.severity, d.message) for d in diags] == [
        (1, 23, "warning", "`login_channel_secret` is a secret kept in git")
    ]
    assert "LINE_LOGIN_CHANNEL_SECRET" in diags[0].help


def test_login_settings_from_environment_win(monkeypatch):
    monkeypatch.setenv("LINE_LOGIN_CHANNEL_ID", "2000000001")
    monkeypatch.setenv("LINE_LOGIN_CHANNEL_SECRET", "from-env")
    s, diags = load("login_channel_id: '1000'\n")
    assert diags == []
    assert (s.login_channel_id, s.login_channel_secret) == ("2000000001", "from-env")


def test_login_channel_id_must_be_text():
    assert errors("login_channel_id: [1]\n") == ["1:19: error: `login_channel_id` must be text, not `[1]`"]


def test_unknown_setting_suggests_close_name():
    assert errors("max_per_days: 2\n") == ["1:1: error: unknown setting `max_per_days` | did you mean `max_per_day`?"]


def test_duplicate_setting():
    assert errors("utm: true\nutm: false\n") == [
        "2:1: error: duplicate key `utm` | each key may appear once in a mapping; remove one of them"
    ]


def test_root_must_be_a_mapping():
    assert errors("- timezone\n") == [
        "1:1: error: settings.yaml must be a mapping of settings | "
        "write one setting per line, e.g. `timezone: Asia/Tokyo`"
    ]


def test_yaml_syntax_error_at_its_place():
    assert errors("timezone: Asia/Tokyo\nwindow: [09:00\n") == [
        "2:9: error: invalid YAML: the `{` or `[` that starts here is not closed properly | "
        "close it on the same line, quote values that hold `,` or `:`, "
        "or write the entries as indented lines instead"
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "timezone: Asia/Tokyo\n\tutm: true\n",
            "2:1: error: invalid YAML: a tab is used for indentation here | "
            "YAML indents with spaces only: replace the tab with spaces",
        ),
        (
            "timezone: Asia/Tokyo\nmax_per_day:\t2\n",
            "2:13: error: invalid YAML: a tab separates the value here | "
            "YAML separates with spaces only: replace the tab with a space",
        ),
        (
            "rich_menus:\n  member: richmenu-8d1f3c5a9b2e4f60a7c8d9e0f1a2b3c4\n vip: x\n",
            "3:2: error: invalid YAML: this line is not indented like the lines above it | "
            "the keys of one mapping (and the `-` of one list) start in the same column; "
            "indent with spaces so that this line lines up with the others",
        ),
        (
            "timezone: Asia/Tokyo\nmax_per_day\uff1a 2\nutm: true\n",
            "2:12: error: invalid YAML: `\uff1a` is a full-width colon | "
            "write a half-width `:` followed by a space after the key, e.g. `greeting: ...`",
        ),
        (
            'timezone: "Asia/Tokyo\nutm: true\n',
            "1:11: error: invalid YAML: the quoted text that starts here is never closed | "
            "close it with the same quote, or write a text over several lines after `|`",
        ),
    ],
)
def test_yaml_syntax_errors_in_plain_words(text, expected):
    assert errors(text) == [expected]


def test_yaml_1_2_core_schema():
    """`no`, `yes`, `on` are texts in YAML 1.2: a setting that needs true/false says so."""
    assert errors("utm: no\n") == [
        "1:6: error: `utm` must be true or false, not `no` | YAML 1.2 reads `no` as a text: write `false`"
    ]
    s, diags = load("utm: false\nmax_per_day: 0x2\n")
    assert diags == [] and s.utm is False and s.max_per_day == 2


def test_crlf_and_cr_line_ends():
    for end in ("\r\n", "\r"):
        s, diags = load(f"# settings{end}timezone: Asia/Tokyo{end}max_per_day: 0{end}")
        assert [(d.line, d.column) for d in diags] == [(3, 14)]


def test_control_characters_are_reported():
    assert errors("utm: true\n\x00\n") == [
        "2:1: error: invalid YAML: the control character U+0000 is not allowed in a YAML file | "
        "remove it (it is often pasted in with text copied from elsewhere)"
    ]


def test_unsupported_tag():
    assert errors("max_per_day: !!python/name:os.system 2\n") == [
        "1:14: error: unsupported YAML tag `tag:yaml.org,2002:python/name:os.system` | "
        "write plain text, numbers, lists and mappings"
    ]


def test_alias_bomb_is_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(8):
        bomb += f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    bomb += "rich_menus: *i\n"
    msgs = errors(bomb)
    assert "the document is too large (aliases expand to too many values)" in "\n".join(msgs)


@hsettings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        YAMLISH,
        st.binary().map(lambda b: b.decode("latin-1")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: (
                st.lists(c, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["timezone", "window", "max_per_day", "utm", "rich_menus", "base_url", "x"]),
                    c,
                    max_size=4,
                )
            ),
            max_leaves=10,
        ).map(lambda v: __import__("yaml").safe_dump(v, allow_unicode=True)),
    )
)
def test_never_raises(text):
    s, diags = load_settings(PATH, text)
    assert isinstance(s, ir.Settings)
    assert all(d.path == PATH and d.line >= 1 and d.column >= 1 for d in diags)


def test_every_setting_is_documented():
    from engine.language.settings import KNOWN_SETTINGS

    with open("docs/settings.md", encoding="utf-8") as f:
        doc = f.read()
    assert [k for k in KNOWN_SETTINGS if f"| `{k}` |" not in doc] == []
    assert "LINE_LOGIN_CHANNEL_SECRET" in doc
