"""The ``linerules`` command line. Each command is a thin shell around one module's ``main``.

User errors are one clean line (``click.ClickException``), never a traceback.
"""
from __future__ import annotations

import click

from . import __version__

#: ``--lang`` of the commands that print texts for people.
lang_option = click.option(
    "--lang", type=click.Choice(["ja", "en"]), default=None,
    help="Language of messages and reports: ja or en (default: LINERULES_LANG, then "
         "`language:` in settings.yaml, then the locale).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True, help="Output: human text with carets, a JSON list, or GitHub Actions annotations.")
@lang_option
def validate(paths, fmt, lang):
    """Check rule folders (default rules/) and exit 1 on any error.

    Each error is printed as path:line:col: error: message, then the source line with a caret
    and a help: line. Warnings do not change the exit code.

    \b
    Example:
      linerules validate rules/
      linerules validate rules/ --format github
    """
    from engine.language.validate import main

    raise SystemExit(main(list(paths) or ["rules"], fmt, lang))


@cli.command()
@click.argument("code", required=False)
@click.option("--rules", "rules_dir", default="rules", show_default=True, type=click.Path(),
              help="The rule folder (for `language:` in its settings.yaml).")
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
@click.option("--rules", "rules_dir", default="rules", show_default=True, type=click.Path(),
              help="The rule folder.")
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
@click.option("--rules", "rules_dir", default="rules", show_default=True, type=click.Path(),
              help="The rule folder.")
@click.option("--until", default=None, help="Run the clock up to this ISO 8601 time (with offset). "
              "Default: 30 days after the last event.")
@click.option("--tick", default="1h", show_default=True,
              help="How often condition triggers are checked (aligned to local midnight).")
@click.option("--db", default=None, type=click.Path(dir_okay=False),
              help="Keep the simulated database in this file (for `linerules report`).")
@click.option("--render", is_flag=True, default=False,
              help='Also print "rendered": the LINE message objects each friend would get.')
@lang_option
def simulate(events, rules_dir, until, tick, db, render, lang):
    """Replay a JSON Lines timeline through the engine with a virtual clock; no network.

    Prints one JSON object per push, in time order:
    {"at": ..., "friend": ..., "rule": ..., "messages": [...]}

    \b
    Example:
      linerules simulate timeline.jsonl --rules rules/ --until 2026-12-31T00:00:00+09:00
    """
    from engine.runtime.simulate import main

    raise SystemExit(main(events, rules_dir, until, tick, db, lang, render=render))


@cli.command(name="test")
@click.argument("directory", default="rules", type=click.Path())
@lang_option
def test_cmd(directory, lang):
    """Run the rule tests kept in DIR/tests/ (default rules/tests/); exit 1 on any failure.

    \b
    Example:
      linerules test rules/
    """
    from engine.runtime.ruletest import main

    raise SystemExit(main(directory, lang=lang))


@cli.command()
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="The runner's (or a simulation's) database.")
@click.option("--rules", "rules_dir", default="rules", show_default=True, type=click.Path(),
              help="The rule folder (for the time zone, quota and attribution settings).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="Also write a self-contained HTML page with charts.")
@click.option("--since", default=None, help="Only activity at or after this date/time (ISO 8601).")
@click.option("--until", default=None, help="Only activity before this date/time (ISO 8601; a date includes that whole day).")
@click.option("--rule", "rule_names", multiple=True, help="Only this rule (repeatable).")
@click.option("--block-days", default=7, show_default=True, type=click.IntRange(min=1),
              help="Count an unfollow within this many days after a send as a block after that send.")
@lang_option
def report(db, rules_dir, fmt, html_path, since, until, rule_names, block_days, lang):
    """What each rule did: entered, pushes, capped, clicks, conversions, revenue, blocks.

    \b
    Example:
      linerules report --db linerules.db --format json
      linerules report --db forecast.db --html report.html
    """
    from engine.reports.report import main

    raise SystemExit(main(db, rules_dir, fmt, html_path, since, until, list(rule_names),
                          block_days=block_days, lang=lang))


@cli.command()
@click.option("--rules", "rules_dir", default="rules", show_default=True, type=click.Path(),
              help="The rule folder.")
@click.option("--db", envvar="LINERULES_DB", default="linerules.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite file (env LINERULES_DB).")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for the HTTP server.")
@click.option("--tick", "tick_seconds", default=60.0, show_default=True, type=float,
              help="Seconds between engine ticks.")
@click.option("--condition-interval", "condition_interval", default=0, show_default=True,
              type=click.IntRange(min=0),
              help="Seconds between condition-trigger checks, in slots from local midnight "
                   "(0 = every tick; 600-3600 for very large accounts).")
def run(rules_dir, db, listen, tick_seconds, condition_interval):
    """The runner: tick loop plus HTTP server (POST /callback, POST /events, GET /healthz).

    Without LINE_CHANNEL_ACCESS_TOKEN nothing is sent to LINE: a dry-run transport logs each
    push. LINE_CHANNEL_SECRET verifies webhooks; LINERULES_API_TOKEN guards POST /events;
    LINE_API_ENDPOINT points at another Messaging API host.

    \b
    Example:
      LINERULES_API_TOKEN=s3cret linerules run --rules rules/ --db /var/lib/linerules/linerules.db
    """
    from engine.runner.server import serve

    raise SystemExit(serve(rules_dir=rules_dir, db=db, listen=listen, tick_seconds=tick_seconds,
                           condition_interval=condition_interval))


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
@click.option("--format", "fmt", type=click.Choice(["shopify", "rakuten", "csv"]), required=True,
              help="shopify: Shopify's order export; rakuten: Rakuten RMS's order CSV (Shift_JIS); "
                   "csv: the plain CSV of docs/shop.md.")
@click.option("--columns", default=None, metavar="FIELD=Header,...",
              help="Columns named differently in this file, e.g. order_id=注文番号,customer=会員ID.")
@click.option("--db", envvar="LINERULES_DB", default="linerules.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite file (env LINERULES_DB).")
@click.option("--rules", "rules_dir", default="rules", show_default=True, type=click.Path(),
              help="The rule folder (its time zone reads times written without an offset).")
def import_orders_cmd(file, fmt, columns, db, rules_dir):
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

    raise SystemExit(main_orders(file, fmt, columns, db, rules_dir))


@import_group.command(name="customers")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--columns", default=None, metavar="FIELD=Header,...",
              help="Columns named differently, e.g. customer=会員ID,friend=LINE_ID.")
@click.option("--db", envvar="LINERULES_DB", default="linerules.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite file (env LINERULES_DB).")
def import_customers_cmd(file, columns, db):
    """Import customer id <-> LINE user id links (columns `customer` and `friend`).

    Linked customers' kept orders count for their friend from now on; no rule fires.

    \b
    Example:
      linerules import customers line_login_members.csv --db linerules.db
    """
    from engine.runtime.importer import main_customers

    raise SystemExit(main_customers(file, columns, db))


@cli.command(name="migrate-db")
@click.argument("sqlite_file", type=click.Path(dir_okay=False))
@click.argument("postgres_url", metavar="POSTGRESQL_URL")
@click.option("--batch", default=5000, show_default=True, type=click.IntRange(min=1),
              help="Rows per COPY batch (one PostgreSQL transaction each).")
@click.option("--refresh", is_flag=True, default=False,
              help="Make PostgreSQL equal to SQLite when an earlier copy is out of date: update the rows "
                   "that differ, delete the rows SQLite no longer has.")
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
