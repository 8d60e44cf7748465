"""What ``validate`` keeps in the user's cache folder between runs: the same answers, cold or
warm, and no Liquid import for templates checked before."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import forkkit

ROOT = Path(__file__).resolve().parent.parent

#: validate the folder, then say whether Liquid was imported
PROBE = (
    "import sys; from engine.language.validate import main; code = main([sys.argv[1]], 'text'); "
    "print('liquid imported:', 'liquid' in sys.modules); raise SystemExit(code)"
)


def validate(folder: Path, cache: Path | str) -> tuple[int, str]:
    # in English: the sample folder says `language: ja`
    env = {**os.environ, "LINERULES_CACHE_DIR": str(cache), "LINERULES_LANG": "en"}
    proc = forkkit.run(["-c", PROBE, str(folder)], preload=forkkit.CLI, cwd=ROOT, env=env, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_warm_validate_answers_the_same_without_liquid(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder, ignore=shutil.ignore_patterns("tests"))
    with open(folder / "messages.yaml", "a", encoding="utf-8") as fh:
        fh.write(
            'broken_tpl: "{{ friend.display_name | upcase_all }}さん"\n'
            'odd_var: "{{ frend.name }}さん"\n'
            'bad_syntax: "{% if %}x"\n'
        )
    cache = tmp_path / "cache"
    cold_code, cold = validate(folder, cache)
    warm_code, warm = validate(folder, cache)
    assert cold_code == warm_code == 1
    assert "unknown template filter `upcase_all`" in cold
    assert "unknown template variable `frend`" in cold
    assert "template error" in cold
    assert "liquid imported: True" in cold
    assert warm.replace("liquid imported: False", "liquid imported: True") == cold
    assert "templates.json" in os.listdir(cache)
    assert any(n.startswith("grammar-") for n in os.listdir(cache))


def test_sample_folder_warm_needs_no_liquid(tmp_path):
    cache = tmp_path / "cache"
    validate(ROOT / "rules", cache)
    code, out = validate(ROOT / "rules", cache)
    assert code == 0
    assert out.startswith("ok: ") and "liquid imported: False" in out


def test_damaged_or_unwritable_cache_changes_nothing(tmp_path):
    cache = tmp_path / "cache"
    code, expected = validate(ROOT / "rules", cache)
    for name in os.listdir(cache):
        (cache / name).write_bytes(b"\x00garbage")
    assert validate(ROOT / "rules", cache) == (code, expected)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    code2, out2 = validate(ROOT / "rules", blocked)
    assert code2 == code and out2 == expected
    off_code, off = validate(ROOT / "rules", "")  # empty: no cache at all
    assert (off_code, off) == (code, expected)


#: validate the folder, then name the heavy libraries it imported
PROBE_HEAVY = (
    "import sys; from engine.language.validate import main; "
    "code = main([sys.argv[1]], 'text'); print('imported:', [m for m in "
    "('liquid', 'croniter', 'linebot', 'aiohttp') if m in sys.modules]); "
    "raise SystemExit(code)"
)


def test_warm_validate_of_schedules_answers_the_same_without_croniter(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder, ignore=shutil.ignore_patterns("tests"))
    (folder / "schedules.rule").write_text(
        'rule nightly\n  when schedule "0 21 * * *"\n  then\n    send weekly_pick\n\n'
        'rule typo\n  when schedule "0 25 * * *"\n  then\n    send weekly_pick\n\n'
        'rule never\n  when schedule "0 0 31 2 *"\n  then\n    send weekly_pick\n',
        encoding="utf-8",
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "LINERULES_CACHE_DIR": str(cache), "LINERULES_LANG": "en"}

    def run() -> tuple[int, str]:
        proc = forkkit.run(["-c", PROBE_HEAVY, str(folder)], preload=forkkit.CLI, cwd=ROOT, env=env, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    cold_code, cold = run()
    warm_code, warm = run()
    assert cold_code == warm_code == 1
    assert "schedules.rule:7:" in cold and "schedules.rule:12:" in cold  # both bad schedules
    assert "'croniter'" in cold
    assert "imported: []" in warm

    def answer(out: str) -> str:
        return "\n".join(line for line in out.splitlines() if not line.startswith("imported:"))

    assert answer(warm) == answer(cold)
    assert "cron.json" in os.listdir(cache)
