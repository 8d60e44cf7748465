"""The product's two languages, English and Japanese, from one gettext catalog.

Every text a user reads (diagnostics, their ``help:``, HTTP refusals, report labels) is written
once in the source, in English, as a gettext message id with named ``{placeholders}``:

    E("LR102", "unknown message `{name}`", name=name)      # a diagnostic's headline, with its code
    _("define it in messages.yaml")                          # any other text
    n_("{n} error", "{n} errors", n)                         # a text that depends on a count

Each call returns a :class:`Text`: a ``str`` holding the English rendering (so comparing,
sorting and logging work as before) that remembers its message id and arguments, so it can be
rendered again in another language at the moment it is shown (:func:`render`). The Japanese
translations live in ``engine/locale/ja/LC_MESSAGES/linerules.po`` (extracted with Babel:
``make catalog``); the ``.po`` file is compiled to a gettext catalog in memory the first time
Japanese is needed (see docs/decisions.md).

The language is chosen by :func:`choose`: ``--lang``, then ``LINERULES_LANG``, then
``language:`` in settings.yaml, then the locale (``LC_ALL``, ``LC_MESSAGES``, ``LANG``), then
English. :func:`use` sets it for the process.
"""

from __future__ import annotations

import functools
import gettext
import io
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

LANGUAGES = ("en", "ja")
DEFAULT = "en"
DOMAIN = "linerules"
LOCALE_DIR = Path(__file__).with_name("locale")
ENV = "LINERULES_LANG"

_state = threading.local()
_process_language = DEFAULT


class Text(str):
    """A translatable text: its English rendering, plus what is needed to render it again."""

    msgid: str
    plural: str | None
    n: int | None
    args: dict[str, Any]
    code: str | None

    def __new__(
        cls,
        msgid: str,
        args: dict[str, Any] | None = None,
        *,
        code: str | None = None,
        plural: str | None = None,
        n: int | None = None,
    ) -> Text:
        args = args or {}
        english = _format(msgid if plural is None or n == 1 else plural, args, DEFAULT, n)
        self = super().__new__(cls, english)
        self.msgid, self.plural, self.n, self.args, self.code = msgid, plural, n, args, code
        return self

    def render(self, lang: str | None = None) -> str:
        lang = lang or language()
        if lang == DEFAULT:
            return str.__str__(self)
        catalog = translations(lang)
        if self.plural is None:
            template = catalog.gettext(self.msgid)
        else:
            template = catalog.ngettext(self.msgid, self.plural, self.n if self.n is not None else 1)
        return _format(template, self.args, lang, self.n)

    def __reduce__(self):  # pickle / copy keep the translatable form
        return (_rebuild, (self.msgid, self.args, self.code, self.plural, self.n))


def _rebuild(msgid, args, code, plural, n) -> Text:
    return Text(msgid, args, code=code, plural=plural, n=n)


def _format(template: str, args: dict[str, Any], lang: str, n: int | None) -> str:
    values = {k: render(v, lang) for k, v in args.items()}
    if n is not None:
        values.setdefault("n", n)
    # A text without arguments is taken as it is (its braces need no doubling).
    return template.format(**values) if values else template


def _(msgid: str, /, **args: Any) -> Text:
    """A translatable text (extracted by Babel under the keyword ``_``)."""
    return Text(msgid, args)


def N_(msgid: str, /) -> str:
    """Marks a constant for extraction; translate it later with :func:`gettext_`."""
    return msgid


def E(code: str, msgid: str, /, **args: Any) -> Text:
    """A diagnostic's headline with its stable code (extracted under ``E:2``)."""
    return Text(msgid, args, code=code)


def n_(singular: str, plural: str, n: int, /, **args: Any) -> Text:
    """A text that depends on the count ``n`` (``{n}`` is filled in)."""
    return Text(singular, args, plural=plural, n=n)


def gettext_(msgid: str, lang: str | None = None) -> str:
    """The translation of a constant marked with :func:`N_`."""
    lang = lang or language()
    return msgid if lang == DEFAULT else translations(lang).gettext(msgid)


def render(value: Any, lang: str | None = None) -> str:
    """A :class:`Text` in ``lang`` (default: the current language); anything else as ``str``."""
    if isinstance(value, Text):
        return value.render(lang)
    if value is None:
        return ""
    return str(value)


def join(parts: Iterable[Any], sep: str = ", ") -> Joined:
    """Several texts shown side by side (each translated when the whole is)."""
    return Joined(list(parts), sep)


#: How lists are joined in Japanese: `a`、`b` / `a` または `b` / `a` と `b`; between Japanese
#: words the joining word takes no spaces: 購入または来店 (:func:`_ja_join`).
_JA_SEPARATORS = {", ": "、", " or ": "または", " and ": "と"}


def _ja_join(texts: list[str], word: str) -> str:
    """``texts`` joined by ``word`` (または, と), with a space only on the side of a part that
    ends or starts with a half-width character (a `code` span, a number, a Latin word)."""
    out = texts[0] if texts else ""
    for text in texts[1:]:
        left = " " if out and out[-1].isascii() else ""
        right = " " if text and text[0].isascii() else ""
        out += f"{left}{word}{right}{text}"
    return out


class Joined(Text):
    def __new__(cls, parts: list[Any], sep: str) -> Joined:
        self = str.__new__(cls, sep.join(render(p, DEFAULT) for p in parts))
        self.msgid, self.plural, self.n, self.args, self.code = "", None, None, {}, None
        self.parts, self.sep = parts, sep
        return self

    def render(self, lang: str | None = None) -> str:
        lang = lang or language()
        texts = [render(p, lang) for p in self.parts]
        if lang == DEFAULT or self.sep not in _JA_SEPARATORS:
            return self.sep.join(texts)
        word = _JA_SEPARATORS[self.sep]
        return word.join(texts) if word == "、" else _ja_join(texts, word)

    def __reduce__(self):
        return (Joined, (self.parts, self.sep))


# ----------------------------------------------------------------------------- the catalog


def catalog_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def translations(lang: str) -> gettext.NullTranslations:
    """The compiled catalog of ``lang``.

    The ``.po`` file is the source. It is compiled with Babel the first time it is needed and
    the ``.mo`` is kept beside it (not in git) while it is newer than the ``.po``; where the
    package folder cannot be written, the compiled catalog stays in memory."""
    path = catalog_path(lang)
    if lang == DEFAULT or not path.exists():
        return gettext.NullTranslations()
    mo = path.with_suffix(".mo")
    try:
        if mo.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            with open(mo, "rb") as fh:
                return gettext.GNUTranslations(fh)
    except OSError:
        pass
    data = compile_catalog(path, lang)
    try:
        tmp = mo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, mo)
    except OSError:
        pass
    return gettext.GNUTranslations(io.BytesIO(data))


def compile_catalog(path: Path, lang: str) -> bytes:
    """A ``.po`` file compiled to ``.mo`` bytes (fuzzy entries left out)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with open(path, "rb") as fh:
        catalog = read_po(fh, locale=lang, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the language


def normalize(value: str | None) -> str | None:
    """``ja``, ``ja_JP.UTF-8``, ``JA`` -> ``ja``; ``en_US`` -> ``en``; anything else -> None."""
    if not value:
        return None
    head = value.strip().replace("-", "_").split(".")[0].split("_")[0].lower()
    return head if head in LANGUAGES else None


def from_locale(environ: dict[str, str] | None = None) -> str | None:
    """The language of the process locale (the first of ``LC_ALL``, ``LC_MESSAGES``, ``LANG``
    that is set), when it is one of ours."""
    env = os.environ if environ is None else environ
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        if env.get(var):
            return normalize(env[var])
    return None


def choose(cli: str | None = None, settings: str | None = None, environ: dict[str, str] | None = None) -> str:
    """``--lang``, then ``LINERULES_LANG``, then settings.yaml's ``language``, then the locale."""
    env = os.environ if environ is None else environ
    for candidate in (cli, env.get(ENV), settings):
        lang = normalize(candidate)
        if lang:
            return lang
    return from_locale(env) or DEFAULT


def use(lang: str) -> None:
    """Make ``lang`` the language of this process (and of this thread)."""
    global _process_language
    _process_language = lang if lang in LANGUAGES else DEFAULT
    _state.lang = _process_language


def language() -> str:
    """The language texts are shown in now."""
    return getattr(_state, "lang", None) or _process_language


class UserError(click.ClickException):
    """A command's data error (docs/cli.md, "Exit status"): one clean line ``error: …`` on
    standard error in the user's language, exit status 1, never a traceback. The message is a
    :class:`Text` (or a plain ``str``), rendered when it is shown. Mistakes in the command line
    itself are click's usage errors (``click.UsageError``/``click.BadParameter``, status 2)."""

    exit_code = 1

    def __init__(self, message: Any) -> None:
        super().__init__(str(message))
        self.text = message

    def format_message(self) -> str:
        return render(self.text)

    def show(self, file: Any = None) -> None:
        click.echo(render(_("error: {reason}", reason=self.text)), file=file, err=True)
