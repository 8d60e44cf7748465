"""``linerules report --html FILE``: the report as one self-contained page.

No network at all: the CSS is inline and every chart is an inline SVG drawn here from the
report data (:func:`engine.reports.report.build_report`): a funnel per rule, sends per day, the block
rate over time and the variant comparison of each experiment. Tables beside the charts carry
the exact numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from engine.i18n import _, join, language, render

from .report import EXIT_WORDS, PLAN_WORDS, period_text, yen
from .report import day as _day
from .report import month as _month

#: Chart colours (also what the page test looks for in the screenshot).
GREEN = "#06c755"  # LINE's green: sends, funnel bars
BLUE = "#1c7ed6"  # variants
GREY = "#868e96"  # the control arm
RED = "#e03131"  # blocks
INK = "#212529"

CSS = f"""
body {{ font: 14px/1.45 -apple-system, "Hiragino Sans", "Noto Sans CJK JP", sans-serif;
       color: {INK}; background: #fff; margin: 24px auto; max-width: 1100px; padding: 0 16px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
h2 {{ font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #dee2e6; padding-bottom: 4px; }}
h3 {{ font-size: 15px; margin: 20px 0 6px; }}
p.note {{ color: #495057; margin: 2px 0; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
th, td {{ padding: 3px 10px; border-bottom: 1px solid #e9ecef; text-align: right; white-space: nowrap; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.step td:first-child {{ padding-left: 24px; color: #495057; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 16px; }}
figure.chart {{ margin: 0; }}
figcaption {{ font-weight: 600; margin-bottom: 4px; }}
svg text {{ font-size: 11px; fill: {INK}; }}
.empty {{ color: #868e96; }}
"""


def t(text) -> str:
    """A text of the page in the current language, escaped for HTML."""
    return escape(render(text))


def render_html(report: dict, db: str) -> str:
    """The whole page for a report built by :func:`engine.reports.report.build_report`, in the current
    language (:func:`engine.i18n.language`)."""
    p, s = report["period"], report["settings"]
    period = period_text(p)
    title = t(_("linerules report: {db}", db=db))
    heading = t(_("linerules report"))
    conversions = t(
        _(
            "Conversions: an order within {days} days after a send, counted once for the last send before it.",
            days=s["attribution_days"],
        )
    )
    blocks = t(
        _("Blocks after send: an unfollow within {days} days after a send, counted the same way.", days=s["block_days"])
    )
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{language()}"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{heading}</h1><p class=note>{escape(db)}: {t(period)} ({escape(p['timezone'])})</p>",
        f"<p class=note>{conversions} {blocks}</p>",
    ]
    if report["empty"]:
        empty = t(
            _(
                "No activity recorded in this database for this period: nobody entered a rule, "
                "nothing was sent, no events arrived."
            )
        )
        parts.append(f'<p class="empty" id="empty">{empty}</p>')
    parts += _rules(report)
    parts += _account(report)
    parts += _experiments(report)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- sections


def _rules(report: dict) -> list[str]:
    out = ["<h2>" + t(_("Rules")) + "</h2>"]
    head = [
        render(h)
        for h in (
            _("rule / step"),
            _("entered"),
            _("pushes"),
            _("replies"),
            _("capped"),
            _("skipped"),
            _("held"),
            _("clicks"),
            _("conversions"),
            _("revenue (yen)"),
            _("blocks after send"),
            _("block rate"),
        )
    ]
    rows = []
    for r in report["rules"]:
        rows.append(("rule", [r["rule"], *_cells(r, r["entered"])]))
        rows += [("step", [st["step"] or render(_("(unknown step)")), *_cells(st, "")]) for st in r["steps"]]
    out.append(_table(head, rows))
    exits = [
        f"{escape(r['rule'])}: "
        + t(join(_("{reason} {count}", reason=EXIT_WORDS.get(k, k), count=v) for k, v in r["exits"].items()))
        for r in report["rules"]
        if r["exits"]
    ]
    if exits:
        out.append("<p class=note>" + t(_("Exits:")) + " " + "; ".join(exits) + "</p>")
    active = [r for r in report["rules"] if r["entered"] or r["pushes"] or r["conversions"]]
    out.append("<h3>" + t(_("Funnel per rule")) + '</h3><div class="charts">')
    for i, r in enumerate(active, 1):
        steps = [
            (render(_("entered")), r["entered"]),
            (render(_("reached")), r["reached"]),
            (render(_("clicked")), r["clicked"]),
            (render(_("converted")), r["converted"]),
        ]
        out.append(_figure(f"chart-funnel-{i}", "funnel", r["rule"], _bars(steps, GREEN)))
    if not active:
        out.append(
            _figure("chart-funnel-0", "funnel", render(_("no rule did anything in this period")), _nothing(360, 60))
        )
    out.append("</div>")
    return out


def _account(report: dict) -> list[str]:
    a, s = report["account"], report["settings"]
    f = a["friends"]
    friends = _(
        "Friends gained {gained}, lost {lost}; current {current}, active in the last {days} days {active}.",
        gained=_fmt(f["gained"]),
        lost=_fmt(f["lost"]),
        current=_fmt(f["current"]),
        days=s["active_days"],
        active=_fmt(f["active"]),
    )
    out = ["<h2>" + t(_("Account")) + "</h2>", "<p>" + t(friends) + "</p>", '<div class="charts">']
    days = a["days"]
    out.append(
        _figure(
            "chart-sends",
            "sends",
            render(_("Pushes per day")),
            _columns([(_day(d["day"]), d["pushes"]) for d in days], GREEN),
        )
    )
    out.append(
        _figure(
            "chart-blocks",
            "block-rate",
            render(_("Block rate by send day (blocks within {days} days per push)", days=s["block_days"])),
            _line([(_day(d["day"]), d["block_rate"]) for d in days], RED),
        )
    )
    out.append("</div>")
    if a["months"]:
        rows = [
            (
                "month",
                [
                    _month(m["month"]),
                    m["messages"],
                    m["replies"],
                    m["quota"] or "-",
                    _pct(m["quota_used"]) + (render(_(" over")) if m["over_quota"] else ""),
                    render(PLAN_WORDS.get(m["plan"], m["plan"])),
                    yen(m["cost_yen"]),
                    yen(m["saved_by_replies_yen"]),
                ],
            )
            for m in a["months"]
        ]
        out.append("<h3>" + t(_("Messages per month")) + "</h3>")
        out.append(
            _table(
                [
                    render(h)
                    for h in (
                        _("month"),
                        _("messages"),
                        _("replies (free)"),
                        _("quota"),
                        _("used"),
                        _("cheapest plan"),
                        _("cost (yen)"),
                        _("saved by replies (yen)"),
                    )
                ],
                rows,
            )
        )
        plans = []
        for pl in a["plans"]:
            name = render(PLAN_WORDS.get(pl["plan"], pl["plan"]))
            if pl["extra_yen"]:
                text = _(
                    "{fee} yen a month for {messages} messages, then up to {extra} yen each",
                    fee=yen(pl["fee_yen"]),
                    messages=_fmt(pl["messages"]),
                    extra=yen(pl["extra_yen"]),
                )
            else:
                text = _(
                    "{fee} yen a month for {messages} messages, no more",
                    fee=yen(pl["fee_yen"]),
                    messages=_fmt(pl["messages"]),
                )
            plans.append(f"{escape(name)} {t(text)}")
        out.append(
            "<p class=note>"
            + t(_("LINE's plans in Japan:"))
            + " "
            + "; ".join(plans)
            + ". "
            + t(_("Replies are free."))
            + "</p>"
        )
    return out


def _experiments(report: dict) -> list[str]:
    if not report["experiments"]:
        return []
    days = report["settings"]["attribution_days"]
    note = _(
        "Conversion: an order within {days} days after entering the rule. 95% Wilson intervals "
        "for rates, Newcombe intervals for differences.",
        days=days,
    )
    out = ["<h2>" + t(_("Experiments")) + "</h2>", "<p class=note>" + t(note) + "</p>"]
    for i, e in enumerate(report["experiments"], 1):
        out.append("<h3>" + t(_("{rule} (control: {control})", rule=e["rule"], control=e["control"])) + "</h3>")
        rows = [
            ("arm", [r["arm"], r["friends"], r["conversions"], _pct(r["rate"]), _ci(r["ci"]), yen(r["revenue"])])
            for r in e["arms"]
        ]
        out.append(
            _table(
                [
                    render(h)
                    for h in (_("arm"), _("friends"), _("converted"), _("rate"), _("95% interval"), _("revenue (yen)"))
                ],
                rows,
            )
        )
        for c in e["comparisons"]:
            diff = (
                "-" if c["difference"] is None else render(_("{points} points", points=f"{c['difference'] * 100:+.1f}"))
            )
            lift = "" if c["lift"] is None else render(_(", lift {lift}", lift=f"{c['lift'] * 100:+.1f}%"))
            line = _(
                "{arm} vs {control}: {difference} {interval}{lift}",
                arm=c["arm"],
                control=c["vs"],
                difference=diff,
                interval=_ci(c["ci"], signed=True),
                lift=lift,
            )
            out.append(f'<p class="verdict {escape(c["verdict"])}">{t(line)}: <strong>{t(c["reason"])}</strong></p>')
        out.append(
            _figure(
                f"chart-variants-{i}",
                "variants",
                render(_("{rule}: conversion rate by arm", rule=e["rule"])),
                _arms(e["arms"]),
            )
        )
    return out


# ----------------------------------------------------------------------------- pieces


def _cells(r: dict, entered) -> list:
    return [
        entered,
        r["pushes"],
        r["replies"],
        r["capped"],
        r["skipped"],
        r["held"],
        r["clicks"],
        r["conversions"],
        r["revenue"],
        r["blocks_after_send"],
        _pct(r["block_rate"]),
    ]


def _table(head: Sequence[str], rows: Sequence[tuple[str, Sequence]]) -> str:
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for cls, cells in rows:
        out.append(f'<tr class="{cls}">' + "".join(f"<td>{escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ci(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(ci[0] * 100)}, {fmt.format(ci[1] * 100)}]" + ("" if signed else "%")


def _figure(fig_id: str, kind: str, caption: str, svg: str) -> str:
    return (
        f'<figure class="chart" id="{fig_id}" data-chart="{kind}">'
        f"<figcaption>{escape(caption)}</figcaption>{svg}</figure>"
    )


def _svg(width: int, height: int, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">' + "".join(body) + "</svg>"
    )


def _nothing(width: int, height: int, text=None) -> str:
    text = render(text if text is not None else _("no data in this period"))
    return _svg(
        width,
        height,
        [f'<text class="empty" x="{width / 2}" y="{height / 2}" text-anchor="middle">{escape(text)}</text>'],
    )


def _bars(items: list[tuple[str, int]], colour: str) -> str:
    """Horizontal bars, one per (label, value), scaled to the largest."""
    width, left, bar, gap = 360, 80, 18, 8
    top = max((v for _, v in items), default=0) or 1
    height = len(items) * (bar + gap) + gap
    body = []
    for i, (label, value) in enumerate(items):
        y = gap + i * (bar + gap)
        w = (width - left - 50) * value / top
        body.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        if value:
            body.append(f'<rect class="mark" x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colour}"/>')
        body.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}">{value:,}</text>')
    return _svg(width, height, body)


def _columns(points: list[tuple[str, int]], colour: str) -> str:
    """Vertical bars over days, with the first and last day labelled."""
    width, height, pad, base = 520, 200, 36, 170
    if not any(v for _, v in points):
        return _nothing(width, height, _("no pushes in this period"))
    top = max(v for _, v in points)
    step = (width - 2 * pad) / len(points)
    body = [
        f'<line x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}" stroke="#adb5bd"/>',
        f'<text x="{pad - 4}" y="{base - 140 + 4}" text-anchor="end">{top:,}</text>',
    ]
    for i, (day, value) in enumerate(points):
        h = 140 * value / top
        if value:
            body.append(
                f'<rect class="mark" x="{pad + i * step + step * 0.1:.1f}" y="{base - h:.1f}" '
                f'width="{max(step * 0.8, 1):.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{escape(day)}: {value:,}</title></rect>"
            )
    body += _day_labels(points, pad, step, base)
    return _svg(width, height, body)


def _line(points: list[tuple[str, float | None]], colour: str) -> str:
    """A line over the days that have a value (a dot on each), 0% to the largest rate."""
    width, height, pad, base = 520, 200, 36, 170
    known = [(i, v) for i, (_, v) in enumerate(points) if v is not None]
    if not known:
        return _nothing(width, height, _("no pushes in this period"))
    top = max(v for _, v in known) or 0.01
    step = (width - 2 * pad) / len(points)
    xy = [(pad + (i + 0.5) * step, base - 140 * v / top) for i, v in known]
    body = [
        f'<line x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}" stroke="#adb5bd"/>',
        f'<text x="{pad - 4}" y="{base - 136}" text-anchor="end">{top * 100:.0f}%</text>',
        f'<text x="{pad - 4}" y="{base + 4}" text-anchor="end">0%</text>',
    ]
    if len(xy) > 1:
        body.append(
            f'<polyline class="mark" fill="none" stroke="{colour}" stroke-width="3" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            + '"/>'
        )
    for (x, y), (i, v) in zip(xy, known):
        body.append(
            f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}">'
            f"<title>{escape(points[i][0])}: {v * 100:.1f}%</title></circle>"
        )
    body += _day_labels(points, pad, step, base)
    return _svg(width, height, body)


def _day_labels(points: list, pad: float, step: float, base: float) -> list[str]:
    first, last = points[0][0], points[-1][0]
    out = [f'<text x="{pad}" y="{base + 18}">{escape(first)}</text>']
    if last != first:
        out.append(f'<text x="{pad + len(points) * step}" y="{base + 18}" text-anchor="end">{escape(last)}</text>')
    return out


def _arms(arms: list[dict]) -> str:
    """Horizontal bars of each arm's rate with its 95% interval as a whisker."""
    width, left, bar, gap = 520, 90, 22, 12
    highs = [r["ci"][1] for r in arms if r["ci"]] + [r["rate"] or 0 for r in arms]
    top = max(highs, default=0) or 0.01
    span = width - left - 60
    height = len(arms) * (bar + gap) + gap + 14
    body = []
    for i, r in enumerate(arms):
        y = gap + i * (bar + gap)
        colour = GREY if r["control"] else BLUE
        body.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{escape(r["arm"])}</text>')
        if r["rate"]:
            body.append(
                f'<rect class="mark" x="{left}" y="{y}" width="{span * r["rate"] / top:.1f}" '
                f'height="{bar}" fill="{colour}"/>'
            )
        if r["ci"]:
            lo, hi = (left + span * c / top for c in r["ci"])
            mid = y + bar / 2
            body.append(
                f'<path class="mark" d="M{lo:.1f},{mid}H{hi:.1f}M{lo:.1f},{y + 4}V{y + bar - 4}'
                f'M{hi:.1f},{y + 4}V{y + bar - 4}" stroke="{INK}" stroke-width="2" fill="none"/>'
            )
        label = "-" if r["rate"] is None else f"{r['rate'] * 100:.1f}%"
        body.append(f'<text x="{width - 50}" y="{y + 15}">{label}</text>')
    return _svg(width, height, body)
