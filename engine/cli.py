"""The ``linerules`` command line. Each command is a thin shell around one module's ``main``.

The contract (docs/cli.md, "Exit status"): 0 when the command did what it was asked; 1 for a
data error, i.e. what the command read says no (invalid rules, a failing rule test, a file or
database that cannot be used), printed as the command's report or as one clean line through
:class:`engine.i18n.UserError` (a ``click.ClickException``); 2 for a usage error, i.e. the
command line itself is wrong (an unknown option, a missing argument, a value not of its
option's form or choices), through ``click.UsageError``/``click.BadParameter`` with the usage
line. Never a traceback.

The options that several commands share are defined once below (:func:`rules_option`,
:func:`db_option`, :func:`tick_option`, :data:`lang_option`), so ``--rules``, ``--db``,
``--tick`` and ``--lang`` are spelled and mean the same in every command. Shell completion is
click's: ``eval "$(_LINERULES_COMPLETE=bash_source linerules)"`` (docs/cli.md).
"""

from __future__ import annotations

import math

import click

from . import __version__
from .i18n import _

#: ``--lang`` of the commands that print texts for people.
lang_option = click.option(
    "--lang",
    type=click.Choice(["ja", "en"]),
    default=None,
    is_eager=True,  # read first: the other options' mistakes are told in it
    help="Language of messages and reports: ja or en (default: LINERULES_LANG, then "
    "`language:` in settings.yaml, then the locale).",
)


def rules_option(default: str | None = "rules", also: str = ""):
    """``--rules DIR``: the rule folder (its .rule files, messages.yaml, settings.yaml), or one
    .rule file; the same in every command."""
    return click.option(
        "--rules",
        "rules_dir",
        default=default,
        show_default=default is not None,
        type=click.Path(),
        metavar="DIR",
        is_eager=True,  # read before the options whose mistakes are told in its language
        help="The rule folder: its .rule files, messages.yaml and settings.yaml" + also + ".",
    )


def db_option(also: str = "", *, required: bool = False, env: bool = True, default: str | None = "linerules.db"):
    """``--db FILE|URL``: the SQLite database file or a ``postgresql://`` URL; ``LINERULES_DB``
    where the command works on the runner's database."""
    given = {"required": True} if required else {"default": default, "show_default": default is not None}
    return click.option(
        "--db",
        envvar="LINERULES_DB" if env else None,
        type=click.Path(),  # (a folder is refused by the store, with its own words: exit 1)
        metavar="FILE|URL",
        help="The SQLite database file, or a postgresql:// URL (docs/scale.md)"
        + also
        + (" (env LINERULES_DB)." if env else "."),
        **given,
    )


def _told(ctx, text) -> str:
    """An option's mistake in the language ``--lang`` (read first), ``LINERULES_LANG`` or the
    folder of ``--rules`` (when read already) name, else the locale's."""
    from engine import i18n

    params = ctx.params if ctx is not None else {}
    folder = None
    if params.get("rules_dir"):
        from engine.language.settings import folder_language

        folder = folder_language(params["rules_dir"])
    return i18n.render(text, i18n.choose(params.get("lang"), folder))


class Duration(click.ParamType):
    """Seconds (``60``, ``0.5``) or a duration (``30s``, ``5m``, ``1h``, ``1d12h``) -> seconds
    (a float; an int with ``whole``), at least ``minimum``."""

    name = "duration"

    def __init__(self, minimum: float = 0.0, *, whole: bool = False) -> None:
        self.minimum = minimum
        self.whole = whole

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            text = str(value).strip()
            try:
                seconds = float(text)
            except ValueError:
                from engine.language.ir import parse_duration

                try:
                    seconds = float(parse_duration(text))
                except ValueError:
                    self.fail(
                        _told(
                            ctx,
                            _(
                                "`{value}` is not a duration: give seconds (60) or a duration like 30s, 5m, 1h, 1d12h",
                                value=value,
                            ),
                        ),
                        param,
                        ctx,
                    )
        if not math.isfinite(seconds) or seconds < self.minimum:
            self.fail(
                _told(ctx, _("`{value}` is shorter than {minimum}s", value=value, minimum=f"{self.minimum:g}")),
                param,
                ctx,
            )
        if self.whole:
            if not seconds.is_integer():
                self.fail(_told(ctx, _("`{value}` is not a whole number of seconds", value=value)), param, ctx)
            return int(seconds)
        return seconds


def tick_option(default: str, also: str = ""):
    """``--tick DURATION``: the engine's tick, the same in every command."""
    return click.option(
        "--tick",
        "tick",
        default=default,
        show_default=True,
        type=Duration(0.01),
        metavar="DURATION",
        help="The engine's tick: how often condition triggers are checked; seconds (60) or a "
        "duration (30s, 5m, 1h)" + also + ".",
    )


class HostPort(click.ParamType):
    """``HOST:PORT`` (``127.0.0.1:8080``, ``[::1]:8080``, ``0.0.0.0:0``)."""

    name = "host:port"

    def convert(self, value, param, ctx):
        host, _sep, port = str(value).rpartition(":")
        if not host.strip("[]") or not port.isdigit() or int(port) > 65535:
            self.fail(_told(ctx, _("`{value}` is not HOST:PORT, e.g. 127.0.0.1:8080", value=value)), param, ctx)
        return str(value)


class Command(click.Command):
    """A command whose usage errors raised by the module it calls show its usage line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if exc.ctx is None:
                exc.ctx, exc.cmd = ctx, ctx.command
            raise


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="linerules")
def cli():
    """Declarative marketing automation for LINE Official Accounts.

    Keep campaigns as text in rules/, validate them in CI, replay timelines before going live,
    and let one runner send them through the LINE Messaging API.

    \b
    Example:
      linerules validate rules/
      linerules simulate timeline.jsonl --until 2026-12-31T00:00:00+09:00
      linerules run --rules rules/
    """


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(), metavar="[PATH]...")
@rules_option(None, " (the same as giving it as PATH; default: rules)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="Output: human text with carets, a JSON list, or GitHub Actions annotations.",
)
@lang_option
def validate(paths, rules_dir, fmt, lang):
    """Check rule folders or .rule files (default rules/) and exit 1 on any error.

    Each error is printed as path:line:col: error[LR102]: message, then the source line with a caret
    and a help: line. Warnings do not change the exit code.

    \b
    Example:
      linerules validate rules/
      linerules validate --rules rules/ --format github
    """
    from engine.language.validate import main

    targets = list(paths) + ([rules_dir] if rules_dir else [])
    raise SystemExit(main(targets or ["rules"], fmt, lang))


def _complete_code(ctx, param, incomplete):
    from engine.language.codes import CODES

    return [code for code in CODES if code.lower().startswith(incomplete.lower())]


@cli.command()
@click.argument("code", required=False, shell_complete=_complete_code)
@rules_option(also=" (for `language:` in its settings.yaml)")
@lang_option
def explain(code, rules_dir, lang):
    """Explain a diagnostic code (the LR012 of `error[LR012]`): what it means, a wrong and a
    fixed example. Without a code, list every code.

    \b
    Example:
      linerules explain LR102
      linerules explain LR102 --lang ja
    """
    from engine.language.explain import main

    raise SystemExit(main(code, rules_dir, lang))


@cli.command()
@click.argument("rule", required=False)
@rules_option()
@lang_option
def graph(rule, rules_dir, lang):
    """Print a Mermaid flowchart of the compiled rule(s), for pull request review.

    \b
    Example:
      linerules graph welcome --rules rules/ > welcome.mmd
    """
    from engine.language.graph import main

    raise SystemExit(main(rules_dir, rule, lang))


@cli.command()
@click.argument("events", type=click.Path(dir_okay=False))
@rules_option()
@click.option(
    "--until",
    default=None,
    metavar="ISO8601",
    help="Run the clock up to this ISO 8601 time (with offset). Default: 30 days after the last event.",
)
@tick_option("1h", ", in slots from local midnight")
@db_option(
    ": keep the simulation in it (for `linerules report`); a new file, or one an earlier simulation made",
    env=False,
    default=None,
)
@click.option(
    "--render",
    is_flag=True,
    default=False,
    help='Also print "rendered": the LINE message objects each friend would get.',
)
@lang_option
def simulate(events, rules_dir, until, tick, db, render, lang):
    """Replay a JSON Lines timeline through the engine with a virtual clock; no network.

    Prints one JSON object per push, in time order:
    {"at": ..., "friend": ..., "rule": ..., "messages": [...]}

    \b
    Example:
      linerules simulate timeline.jsonl --rules rules/ --until 2026-12-31T00:00:00+09:00
      linerules simulate timeline.jsonl --tick 15m --db forecast.db
    """
    from engine.runtime.simulate import main

    raise SystemExit(main(events, rules_dir, until, tick, db, lang, render=render))


@cli.command(name="test")
@click.argument("directory", required=False, type=click.Path(), metavar="[DIR]")
@rules_option(None, " (the same as giving it as DIR; default: rules)")
@lang_option
def test_cmd(directory, rules_dir, lang):
    """Run the rule tests kept in DIR/tests/ (default rules/tests/); exit 1 on any failure.

    \b
    Example:
      linerules test rules/
      linerules test --rules rules/ --lang en
    """
    from engine.runtime.ruletest import main

    if directory and rules_dir and directory != rules_dir:
        raise click.UsageError(f"give the rule folder once: DIR `{directory}` or --rules `{rules_dir}`, not both")
    raise SystemExit(main(directory or rules_dir or "rules", lang=lang))


@cli.command()
@db_option(": the runner's, or one kept by `linerules simulate --db`", required=True)
@rules_option(also=" (for the time zone, quota and attribution settings)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--html",
    "html_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write a self-contained HTML page with charts.",
)
@click.option("--since", default=None, help="Only activity at or after this date/time (ISO 8601).")
@click.option(
    "--until", default=None, help="Only activity before this date/time (ISO 8601; a date includes that whole day)."
)
@click.option("--rule", "rule_names", multiple=True, help="Only this rule (repeatable).")
@click.option(
    "--block-days",
    default=7,
    show_default=True,
    type=click.IntRange(min=1),
    help="Count an unfollow within this many days after a send as a block after that send.",
)
@lang_option
def report(db, rules_dir, fmt, html_path, since, until, rule_names, block_days, lang):
    """What each rule did: entered, pushes, capped, clicks, conversions, revenue, blocks.

    \b
    Example:
      linerules report --db linerules.db --format json
      linerules report --db forecast.db --html report.html
    """
    from engine.reports.report import main

    raise SystemExit(
        main(db, rules_dir, fmt, html_path, since, until, list(rule_names), block_days=block_days, lang=lang)
    )


@cli.command()
@rules_option(also="; reloaded on SIGHUP and when its files change")
@db_option()
@click.option(
    "--listen", default="127.0.0.1:8080", show_default=True, type=HostPort(), help="HOST:PORT for the HTTP server."
)
@tick_option("60s", "; the runner also wakes when a step, an event or a send is due")
@click.option(
    "--condition-interval",
    "condition_interval",
    default="0",
    show_default=True,
    type=Duration(0, whole=True),
    metavar="DURATION",
    help="Check condition triggers once per slot of this length from local midnight "
    "(0 = every tick; 10m-1h for very large accounts).",
)
def run(rules_dir, db, listen, tick, condition_interval):
    """The runner: tick loop plus HTTP server (POST /callback, POST /events, GET /healthz).

    Without LINE_CHANNEL_ACCESS_TOKEN nothing is sent to LINE: a dry-run transport logs each
    push. LINE_CHANNEL_SECRET verifies webhooks; LINERULES_API_TOKEN guards POST /events;
    LINE_API_ENDPOINT points at another Messaging API host.

    On a postgresql:// database several runners may run side by side: one runs the ticks,
    every one takes webhooks and sends (docs/scale.md).

    \b
    Example:
      LINERULES_API_TOKEN=s3cret linerules run --rules rules/ --db /var/lib/linerules/linerules.db
      LINERULES_DB='postgresql://linerules@db.internal/linerules?options=-csearch_path%3Dshop_a' \\
        linerules run --rules rules/
    """
    from engine.runner.server import serve

    raise SystemExit(
        serve(rules_dir=rules_dir, db=db, listen=listen, tick_seconds=tick, condition_interval=condition_interval)
    )


@cli.group(name="import")
def import_group():
    """Load the shop's history: orders (Shopify, Rakuten RMS, plain CSV) and customer links.

    Importing sends nothing and fires no rule; it is safe to run again (nothing doubles).
    See docs/shop.md.

    \b
    Example:
      linerules import orders orders_export.csv --format shopify --db linerules.db
      linerules import customers links.csv --db linerules.db
    """


@import_group.command(name="orders")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["shopify", "rakuten", "csv"]),
    required=True,
    help="shopify: Shopify's order export; rakuten: Rakuten RMS's order CSV (Shift_JIS); "
    "csv: the plain CSV of docs/shop.md.",
)
@click.option(
    "--columns",
    default=None,
    metavar="FIELD=Header,...",
    help="Columns named differently in this file, e.g. order_id=注文番号,customer=会員ID.",
)
@db_option()
@rules_option(also=" (its time zone reads times written without an offset, its `language:` the summary's)")
@lang_option
def import_orders_cmd(file, fmt, columns, db, rules_dir, lang):
    """Import order history by order id; prints what was counted, kept and refused.

    Orders of customers linked to a friend count for that friend (orders, spend, last purchase,
    rankings); the others are kept and count once the customer is linked. Refused rows are
    listed as FILE:LINE: reason.

    \b
    Example:
      linerules import orders orders_export.csv --format shopify
      linerules import orders rms_orders.csv --format rakuten --db /var/lib/linerules/linerules.db
    """
    from engine.runtime.importer import main_orders

    raise SystemExit(main_orders(file, fmt, columns, db, rules_dir, lang))


@import_group.command(name="customers")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--columns",
    default=None,
    metavar="FIELD=Header,...",
    help="Columns named differently, e.g. customer=会員ID,friend=LINE_ID.",
)
@db_option()
@rules_option(also=" (its `language:` the summary's)")
@lang_option
def import_customers_cmd(file, columns, db, rules_dir, lang):
    """Import customer id <-> LINE user id links (columns `customer` and `friend`).

    Linked customers' kept orders count for their friend from now on; no rule fires.

    \b
    Example:
      linerules import customers line_login_members.csv --db linerules.db
    """
    from engine.runtime.importer import main_customers

    raise SystemExit(main_customers(file, columns, db, lang, rules_dir))


@cli.command(name="migrate-db")
@click.argument("sqlite_file", type=click.Path(dir_okay=False))
@click.argument("postgres_url", metavar="POSTGRESQL_URL")
@click.option(
    "--batch",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows per COPY batch (one PostgreSQL transaction each).",
)
@click.option(
    "--refresh",
    is_flag=True,
    default=False,
    help="Make PostgreSQL equal to SQLite when an earlier copy is out of date: update the rows "
    "that differ, delete the rows SQLite no longer has.",
)
def migrate_db_cmd(sqlite_file, postgres_url, batch, refresh):
    """Copy a linerules SQLite database into PostgreSQL, then verify the rows of every table.

    Stop the runner first. Every table is copied (friends, enrollments in flight, the outbox,
    history), in batches; running it again copies only what is missing (resume after an
    interruption), never anything twice, and compares every row already there. It ends with the
    rows of each table on both sides, and exits 1 unless PostgreSQL holds exactly SQLite's rows
    (--refresh puts right an earlier copy of a file that changed since). The tables go to the schema the URL's search_path
    names (created when missing): one schema per LINE channel. See docs/scale.md.

    \b
    Example:
      linerules migrate-db linerules.db postgresql://linerules@db.internal:5432/linerules
      linerules migrate-db shop_a.db 'postgresql://linerules@db.internal/linerules?options=-csearch_path%3Dshop_a'
    """
    from engine.runtime.migrate_db import main as migrate_main

    raise SystemExit(migrate_main(sqlite_file, postgres_url, batch, refresh))


def main():
    cli(prog_name="linerules")


if __name__ == "__main__":
    main()
