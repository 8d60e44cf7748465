"""``settings.yaml``: the time zone, delivery window, caps, quota, rich menus and link options.

:func:`load_settings` never raises: every problem is a :class:`Diagnostic` pointing at the key
or value at fault, and the returned :class:`ir.Settings` holds the defaults for anything that
is absent or invalid. See docs/settings.md for every setting.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import re
import unicodedata
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engine.i18n import LANGUAGES, E, _

from . import ir
from .diagnostics import Diagnostic, dedupe, did_you_mean
from .ir import NAME_RE

if TYPE_CHECKING:  # imported when a file is read: a warm `validate` never reads YAML
    from .yamlpos import YamlFile

RICH_MENU_ID_RE = re.compile(r"richmenu-[0-9a-fA-F]{32}")
_WINDOW_RE = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")

#: Environment variables that override the LINE Login settings (keep secrets out of git).
ENV_LOGIN_CHANNEL_ID = "LINE_LOGIN_CHANNEL_ID"
ENV_LOGIN_CHANNEL_SECRET = "LINE_LOGIN_CHANNEL_SECRET"


@functools.lru_cache(maxsize=1)
def available_zones() -> frozenset[str]:
    """The IANA zone names this machine knows (the ``tzdata`` package at least)."""
    return frozenset(zoneinfo.available_timezones())


def known_zone(name: str) -> bool:
    """``name in available_zones()``, answered without opening every file of the zone database
    (which ``zoneinfo.available_timezones`` does): the ``tzdata`` package's list of zones, else
    the one file that name would be on the zone path, checked the same way."""
    parts = name.split("/")
    if name == "posixrules" or any(p in ("", ".", "..") for p in parts) or "\\" in name or "\0" in name:
        return False
    if name in _tzdata_zones():
        return True
    for root in zoneinfo.TZPATH:
        if len(parts) > 1 and parts[0] in ("right", "posix") or not os.path.isdir(root):
            continue
        folder = root
        for part in parts[:-1]:  # os.walk does not go into linked folders
            folder = os.path.join(folder, part)
            if os.path.islink(folder) or not os.path.isdir(folder):
                break
        else:
            try:
                with open(os.path.join(root, *parts), "rb") as fh:
                    if fh.read(4) == b"TZif":
                        return True
            except OSError:
                continue
    return False


@functools.lru_cache(maxsize=1)
def _tzdata_zones() -> frozenset[str]:
    """The zones the ``tzdata`` package lists (its ``zones`` file), found without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("tzdata")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return frozenset()
    try:
        with open(os.path.join(os.path.dirname(spec.origin), "zones"), encoding="utf-8") as fh:
            return frozenset(line.strip() for line in fh if line.strip())
    except OSError:
        return frozenset()


def parse_window(text: str) -> tuple[dt.time, dt.time]:
    """``"09:00-21:00"`` -> (09:00, 21:00). Raises ValueError with a marketer-facing message."""
    m = _WINDOW_RE.fullmatch(text)
    if not m:
        raise ValueError(E("LR603", "`{text}` is not a delivery window like `09:00-21:00`", text=text))
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    for h, mi in ((h1, m1), (h2, m2)):
        if h > 23 or mi > 59:
            raise ValueError(E("LR603", "`{time}` is not a time of day (00:00 to 23:59)", time=f"{h:02d}:{mi:02d}"))
    start, end = dt.time(h1, m1), dt.time(h2, m2)
    if start == end:
        raise ValueError(E("LR603", "the window `{text}` starts and ends at the same time", text=text.strip()))
    return start, end


@dataclass
class SettingsFile:
    """What ``settings.yaml`` holds: the settings (defaults where absent or invalid), every
    rich menu name written (valid or not, so a rule using a broken one is not told it is
    unknown), and whether the file could be read as YAML at all (``readable``: when not,
    rich menu names cannot be checked)."""

    settings: ir.Settings
    menu_names: frozenset[str]
    readable: bool
    diagnostics: list[Diagnostic]


def load_settings(path: str, text: str) -> tuple[ir.Settings, list[Diagnostic]]:
    """Read ``settings.yaml``. Absent file content (empty text) means all defaults.

    ``LINE_LOGIN_CHANNEL_ID`` / ``LINE_LOGIN_CHANNEL_SECRET`` from the environment take
    precedence over the file's ``login_channel_id`` / ``login_channel_secret``.
    Diagnostics come sorted.
    """
    s = read_settings(path, text)
    return s.settings, s.diagnostics


#: A ``language:`` line as written, for a settings.yaml that cannot be read as a whole (the
#: patterns of the error paths are compiled when first used: a warm ``validate`` needs none).
_LANGUAGE_LINE = r"""^language[ \t]*:[ \t]*["']?([A-Za-z][A-Za-z_.-]*)["']?[ \t]*(?:#.*)?$"""


def written_language(path: str) -> str | None:
    """The language the ``language:`` line of the settings file at ``path`` names, read from
    its bytes alone: for a file that is not UTF-8 or not valid YAML, whose diagnostics should
    still speak the folder's language (ASCII lines read the same in Shift_JIS)."""
    from engine.i18n import normalize

    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = re.search(_LANGUAGE_LINE, text.replace("\r", ""), re.M)
    return normalize(found.group(1)) if found else None


def folder_language(rules_dir: str) -> str | None:
    """``language:`` of the folder's settings.yaml, when it names one: for the messages a
    command prints before (or without) loading the whole folder."""
    path = os.path.join(rules_dir, "settings.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        text = None
    return (load_settings(path, text)[0].language if text is not None else None) or written_language(path)


def read_settings(path: str, text: str) -> SettingsFile:
    """:func:`load_settings`, with the menu names written and whether the YAML was readable."""
    read = read_settings_file(path, text)
    return dataclasses.replace(read, settings=with_environment(read.settings))


def with_environment(settings: ir.Settings) -> ir.Settings:
    """``settings`` with the LINE Login settings of the environment in place of the file's."""
    env = {}
    if env_id := os.environ.get(ENV_LOGIN_CHANNEL_ID):
        env["login_channel_id"] = env_id
    if env_secret := os.environ.get(ENV_LOGIN_CHANNEL_SECRET):
        env["login_channel_secret"] = env_secret
    return dataclasses.replace(settings, **env) if env else settings


def read_settings_file(path: str, text: str) -> SettingsFile:
    """What the file alone says (:func:`with_environment` adds the environment's LINE Login
    settings): it depends only on ``path`` and ``text``, so a checked result can be kept."""
    import yaml

    from .yamlpos import YamlFile

    f = YamlFile(path, text)
    values: dict[str, Any] = {}
    if not f.empty:
        if not isinstance(f.root, yaml.MappingNode):
            f.error(
                f.span(f.root),
                E("LR600", "settings.yaml must be a mapping of settings"),
                help=_("write one setting per line, e.g. `timezone: Asia/Tokyo`"),
            )
        else:
            for key, key_node, value_node in f.items(f.root):
                check = _CHECKS.get(key)
                if check is None:
                    f.error(
                        f.span(key_node),
                        E("LR601", "unknown setting `{key}`", key=key),
                        help=did_you_mean(key, _CHECKS),
                    )
                    continue
                value = f.plain(value_node, (key,))
                if value is None:
                    continue
                ok = check(f, (key,), value)
                if ok is not None:
                    values[key] = ok
    if "account_link" in values:
        values["account_link_url"] = values.pop("account_link")
        if "base_url" not in values:
            f.error(
                f.span_at(("account_link",), key=True),
                E("LR604", "`account_link` needs `base_url`"),
                help=_(
                    "set base_url to the runner's public https address: the link a friend taps goes through it to get LINE's link token"
                ),
            )
    root_span = f.span(f.root) if f.root is not None else None
    menus = f.nodes.get(("rich_menus",))
    names = (
        frozenset(k.value for k, _ in menus.value if isinstance(k, yaml.ScalarNode))
        if isinstance(menus, yaml.MappingNode)
        else frozenset()
    )
    readable = isinstance(f.root, yaml.MappingNode) or (f.empty and not any(d.is_error for d in f.diagnostics))
    return SettingsFile(ir.Settings(**values, span=root_span), names, readable, dedupe(f.diagnostics))


# ---------------------------------------------------------------------------- one check per key
# Each returns the value for ir.Settings, or None after reporting an error.


#: What Japanese shops write for their zone, which is not an IANA name.
_JAPAN = {"jst", "japan standard time", "日本", "日本時間", "東京", "+09:00", "+0900", "utc+9", "utc+09:00", "gmt+9"}


def _timezone(f: YamlFile, path, value: Any) -> str | None:
    if not isinstance(value, str) or not known_zone(value):
        shown = value if isinstance(value, str) else repr(value)
        if isinstance(value, str) and value.strip().lower() in _JAPAN:
            help_ = _("write `Asia/Tokyo`: time zones are IANA names, which also know the zone's rules")
        elif isinstance(value, str):
            help_ = did_you_mean(str(value), available_zones())
        else:
            help_ = _("use an IANA zone name such as `Asia/Tokyo`")
        f.error(f.span_at(path), E("LR602", "unknown time zone `{zone}`", zone=shown), help=help_)
        return None
    return value


def _window(f: YamlFile, path, value: Any) -> ir.Window | None:
    if not isinstance(value, str):
        f.error(
            f.span_at(path),
            E("LR603", '`window` must be text like "09:00-21:00"'),
            help=_('quote it: window: "09:00-21:00"'),
        )
        return None
    try:
        start, end = parse_window(value)
    except ValueError as e:
        meant = _window_meant(value)
        f.error(
            f.span_at(path),
            e.args[0],
            help=_('write window: "{meant}": two times of day joined by `-`', meant=meant)
            if meant
            else _(
                'write the local opening and closing times, e.g. "09:00-21:00" (an end before the start runs over midnight)'
            ),
        )
        return None
    return ir.Window(start, end, span=f.span_at(path))


#: What a window's two times are joined by when not by `-`: a wave dash (`〜`, `～`), a
#: tilde, a dash.
_WINDOW_JOINS = r"\s*(?:[~〜～–—−]|から)\s*"
#: A time of day as a marketer may write it: ``9``, ``9:00``, ``9時``, ``9時30分``.
_LOOSE_TIME = r"\s*(\d{1,2})(?:(?::|時)(\d{2})?分?)?\s*"


def _window_meant(text: str) -> str | None:
    """The window ``text`` means when written with another join or bare hours (``9〜21``,
    ``9:00～21:00``, ``9時から21時``), in the form to write; None when it means none."""
    parts = re.split(_WINDOW_JOINS, unicodedata.normalize("NFKC", text).strip().replace("-", "〜"))
    parts = [p for p in parts if p]
    if len(parts) != 2:
        return None
    times = []
    for part in parts:
        m = re.fullmatch(_LOOSE_TIME, part)
        if not m or int(m.group(1)) > 23 or int(m.group(2) or 0) > 59:
            return None
        times.append(f"{int(m.group(1)):02d}:{m.group(2) or '00'}")
    return None if times[0] == times[1] else "-".join(times)


def _positive_int(name: str) -> Callable[[YamlFile, Any, Any], int | None]:
    def check(f: YamlFile, path, value: Any) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            f.error(
                f.span_at(path),
                E("LR604", "`{name}` must be a whole number of at least 1, not `{value}`", name=name, value=value),
                help=_number_help(name, value),
            )
            return None
        return value

    return check


def _number_help(name: str, value: Any) -> str | None:
    """The number meant by a text such as ``5,000``, ``２``, ``2回`` or ``5000通``."""
    if not isinstance(value, str):
        return None
    text = unicodedata.normalize("NFKC", value).strip().replace(",", "").replace("_", "")
    m = re.fullmatch(r"(\d+)\s*[^\d\s.]*", text)
    if m is None or int(m[1]) < 1:
        return None
    return _("write the number alone: `{name}: {number}`", name=name, number=int(m[1]))


def _rich_menus(f: YamlFile, path, value: Any) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(value, dict):
        f.error(
            f.span_at(path),
            E("LR605", "`rich_menus` must map menu names to rich menu ids"),
            help=_("e.g. rich_menus: {member: richmenu-0123456789abcdef0123456789abcdef}"),
        )
        return None
    menus = []
    for name, rid in value.items():
        where = path + (name,)
        if not NAME_RE.fullmatch(name):
            f.error(
                f.span_at(where, key=True),
                E("LR605", "`{name}` is not a valid menu name", name=name),
                help=_("a name starts with a letter and continues with letters, digits, _ or -"),
            )
        elif rid is None:
            f.error(
                f.span_at(where, key=True),
                E("LR605", "rich menu `{name}` has no id", name=name),
                help=_(
                    "write the id LINE shows for the menu, e.g. `{name}: "
                    "richmenu-0123456789abcdef0123456789abcdef`, or remove the line",
                    name=name,
                ),
            )
        elif not isinstance(rid, str) or not RICH_MENU_ID_RE.fullmatch(rid):
            f.error(
                f.span_at(where),
                E("LR605", "`{id}` is not a rich menu id", id=rid),
                help=_(
                    "a rich menu id is `richmenu-` followed by 32 hexadecimal characters, as shown by LINE when the menu is created"
                ),
            )
        else:
            menus.append((name, rid))
    return tuple(menus)


def _bool(name: str) -> Callable[[YamlFile, Any, Any], bool | None]:
    def check(f: YamlFile, path, value: Any) -> bool | None:
        if not isinstance(value, bool):
            from .yamlpos import YAML_1_1_BOOLEANS

            help_ = None
            if isinstance(value, str) and value.lower() in YAML_1_1_BOOLEANS:
                meant = "true" if YAML_1_1_BOOLEANS[value.lower()] else "false"
                help_ = _("YAML 1.2 reads `{value}` as a text: write `{meant}`", value=value, meant=meant)
            f.error(
                f.span_at(path),
                E("LR604", "`{name}` must be true or false, not `{value}`", name=name, value=value),
                help=help_,
            )
            return None
        return value

    return check


def _base_url(f: YamlFile, path, value: Any) -> str | None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme != "https" or not parts.netloc:
        f.error(
            f.span_at(path),
            E("LR604", "`base_url` must be an https:// URL, not `{value}`", value=value),
            help=_("the public address of the runner, e.g. https://line.shop.example.jp"),
        )
        return None
    return value.rstrip("/")


def _text(name: str, *, secret: bool = False) -> Callable[[YamlFile, Any, Any], str | None]:
    def check(f: YamlFile, path, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
            f.error(f.span_at(path), E("LR604", "`{name}` must be text, not `{value}`", name=name, value=value))
            return None
        if secret:
            f.warning(
                f.span_at(path),
                E("LR606", "`{name}` is a secret kept in git", name=name),
                help=_(
                    "remove it here and set the environment variable {variable} where the runner runs",
                    variable=ENV_LOGIN_CHANNEL_SECRET,
                ),
            )
        return str(value)

    return check


def _language(f: YamlFile, path, value: Any) -> str | None:
    if not isinstance(value, str) or value not in LANGUAGES:
        f.error(
            f.span_at(path),
            E("LR607", "unknown language `{value}`", value=value),
            help=_("write `ja` (Japanese) or `en` (English)"),
        )
        return None
    return value


def _account_link(f: YamlFile, path, value: Any) -> str | None:
    """``account_link: {login_url: https://...}``: the shop's login page for LINE's account link."""
    if not isinstance(value, dict):
        f.error(
            f.span_at(path),
            E("LR604", "`account_link` must be a mapping with `login_url`"),
            help=_("e.g. account_link: {login_url: https://shop.example.jp/line/login}"),
        )
        return None
    for key in value:
        if key != "login_url":
            f.error(
                f.span_at(path + (key,), key=True),
                E("LR601", "unknown setting `account_link.{key}`", key=key),
                help=_("account_link holds only `login_url`"),
            )
    url = value.get("login_url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "https" or not parts.netloc:
        where = path + ("login_url",) if "login_url" in value else path
        f.error(
            f.span_at(where),
            E("LR604", "`account_link.login_url` must be an https:// URL, not `{url}`", url=url),
            help=_("the page of the shop where a friend signs in to link their account"),
        )
        return None
    return url


_CHECKS: dict[str, Callable[[YamlFile, Any, Any], Any]] = {
    "timezone": _timezone,
    "window": _window,
    "max_per_day": _positive_int("max_per_day"),
    "monthly_quota": _positive_int("monthly_quota"),
    "rich_menus": _rich_menus,
    "utm": _bool("utm"),
    "attribution_days": _positive_int("attribution_days"),
    "base_url": _base_url,
    "login_channel_id": _text("login_channel_id"),
    "login_channel_secret": _text("login_channel_secret", secret=True),
    "language": _language,
    "account_link": _account_link,
}

#: Every key settings.yaml may hold.
KNOWN_SETTINGS: tuple[str, ...] = tuple(_CHECKS)
