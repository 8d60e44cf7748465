"""``linerules report --html``: one self-contained page whose charts render in a real browser.

The page is opened in headless Chromium (Debian's ``chromium``; ``make browser`` installs it);
the DOM tells where each chart is and what it drew, the screenshot that it is on screen.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from engine.reports.report import main as report_main
from engine.reports.report_html import BLUE, GREEN, GREY, RED
from reportkit import SPLIT_RULES, make_folder, simulate, split_test_events

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (`make browser` installs Debian's chromium as root)"
)

RULES = SPLIT_RULES + "    wait 1d\n    send weekly\n"
#: Added to a copy of the page: where each chart's SVG is and how many marks it drew.
PROBE = """<script>
const boxes = [...document.querySelectorAll('figure.chart')].map(f => {
  const r = f.querySelector('svg').getBoundingClientRect();
  return {id: f.id, kind: f.dataset.chart, x: r.left + scrollX, y: r.top + scrollY,
          w: r.width, h: r.height,
          marks: [...f.querySelectorAll('.mark')].filter(m => m.getBBox().width + m.getBBox().height > 0).length};
});
document.body.setAttribute('data-boxes', JSON.stringify(boxes));
document.body.setAttribute('data-height', document.documentElement.scrollHeight);
</script>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    folder = make_folder(tmp, rules=RULES, settings="timezone: Asia/Tokyo\n")
    db = simulate(folder, split_test_events(120, 2500, unfollows=True), "2026-11-05 00:00")
    path = tmp / "report.html"
    assert report_main(str(db), str(folder), "text", str(path), None, None, []) == 0
    return path


def test_page_is_self_contained(page):
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for fetch in ("<script", "<link", "src=", "href=", "url(", "@import", "<img", "<iframe"):
        assert fetch not in text, fetch
    kinds = re.findall(r'data-chart="([\w-]+)"', text)
    assert sorted(set(kinds)) == ["block-rate", "funnel", "sends", "variants"]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


def read_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows of raw pixels, bytes per pixel) of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if colour == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def count(rows: list[bytes], bpp: int, box: dict, colour: str) -> int:
    """Pixels of exactly ``colour`` inside a chart's box."""
    want = bytes.fromhex(colour[1:])
    n = 0
    for y in range(int(box["y"]), int(box["y"] + box["h"])):
        row = rows[y]
        for x in range(int(box["x"]), int(box["x"] + box["w"])):
            if row[x * bpp : x * bpp + 3] == want:
                n += 1
    return n


@needs_browser
def test_charts_render_in_chromium(page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium("--dump-dom", "--window-size=1200,900", probe.as_uri(), profile=tmp_path / "profile").stdout
    boxes = json.loads(html.unescape(re.search(r'data-boxes="([^"]*)"', dom).group(1)))
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    by_id = {b["id"]: b for b in boxes}
    # One funnel (the only rule), the two account charts, one experiment.
    assert sorted(by_id) == ["chart-blocks", "chart-funnel-1", "chart-sends", "chart-variants-1"]
    assert by_id["chart-funnel-1"]["marks"] == 3  # entered, reached, converted (no clicks)
    assert by_id["chart-sends"]["marks"] == 2  # coupons on the 1st, the next on the 2nd
    assert by_id["chart-blocks"]["marks"] == 3  # the line and a dot per send day
    assert by_id["chart-variants-1"]["marks"] == 6  # a bar and an interval per arm
    assert all(b["w"] > 100 and b["h"] > 50 for b in boxes)

    shot = tmp_path / "page.png"
    chromium(f"--screenshot={shot}", f"--window-size=1200,{height}", probe.as_uri(), profile=tmp_path / "profile")
    width, h, rows, bpp = read_png(shot.read_bytes())
    assert (width, h) == (1200, height)
    assert all(b["x"] + b["w"] <= width and b["y"] + b["h"] <= h for b in boxes)
    assert count(rows, bpp, by_id["chart-funnel-1"], GREEN) > 2000
    assert count(rows, bpp, by_id["chart-sends"], GREEN) > 2000
    assert count(rows, bpp, by_id["chart-blocks"], RED) > 100
    variants = by_id["chart-variants-1"]
    assert count(rows, bpp, variants, GREY) > 200 and count(rows, bpp, variants, BLUE) > 400
    # Nothing of a chart's colour leaks outside the charts: the top of the page is text only.
    header = {"x": 0, "y": 0, "w": width, "h": 60}
    assert count(rows, bpp, header, GREEN) == 0
