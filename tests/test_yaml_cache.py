"""The checked YAML files kept in the cache folder: a warm ``validate`` says byte for byte what
a cold one says (errors, warnings, every format and language) without reading any YAML; an
edited file, another zone or other code is checked again; a damaged, foreign or unwritable
cache changes nothing; the environment's LINE Login secret is never written there."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest

import forkkit
from engine.language import project
from engine.language.project import load_project

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def validate(cache: Path | str, *args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    """``linerules validate ARGS`` in a process of its own (forked with the command line's
    imports done, :mod:`forkkit`): exit code, output, whether it imported PyYAML."""
    code, out, imported = forkkit.validate_probe(args, cache=cache, cwd=cwd, modules=("yaml",))
    return code, out, f"yaml imported: {imported['yaml']}"


def checked_entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.startswith("checked-"))


#: Folders whose YAML files cannot be read (not UTF-8; named .yml)
NOTHING_TO_READ = ("not_utf8", "yml_names")
#: Folders whose YAML files hold errors and warnings of every kind (and one with none).
FOLDERS = ["yaml_cascade", "messages_types", "sale_moments", "flex_shapes", "not_utf8", "yml_names", "typing_habits"]


@pytest.mark.parametrize("case", FOLDERS)
def test_warm_validate_says_byte_for_byte_what_a_cold_one_says(tmp_path, case):
    cache = tmp_path / "cache"
    cold = validate(cache, case, cwd=GOLDEN)
    assert cold[2] == f"yaml imported: {case not in NOTHING_TO_READ}"
    for lang, golden in (("en", f"{case}.out"), ("ja", f"{case}.ja.out")):
        warm = validate(cache, case, "--lang", lang, cwd=GOLDEN)
        assert warm[2] == "yaml imported: False"
        assert warm[1] == (GOLDEN / golden).read_text(encoding="utf-8")
        assert warm[0] == cold[0] == (1 if "error[" in cold[1] else 0)
    assert validate(cache, case, cwd=GOLDEN)[:2] == cold[:2]


@pytest.mark.parametrize("fmt", ["json", "github"])
def test_warm_validate_in_the_other_formats(tmp_path, fmt):
    cache = tmp_path / "cache"
    args = ("yaml_cascade", "sale_moments", "--format", fmt)
    cold = validate(cache, *args, cwd=GOLDEN)
    warm = validate(cache, *args, cwd=GOLDEN)
    assert (cold[2], warm[2]) == ("yaml imported: True", "yaml imported: False")
    assert cold[:2] == warm[:2] and cold[0] == 1 and "warning" in cold[1] and "error" in cold[1]


def test_warm_validate_of_the_sample_reads_no_yaml(tmp_path):
    cache = tmp_path / "cache"
    cold = validate(cache, "rules")
    warm = validate(cache, "rules")
    assert cold[0] == warm[0] == 0 and cold[1] == warm[1]
    assert cold[2] == "yaml imported: True"
    assert warm[2] == "yaml imported: False"
    assert len(checked_entries(cache)) == 1


def test_an_edited_yaml_file_is_checked_again(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder, ignore=shutil.ignore_patterns("tests"))
    cache = tmp_path / "cache"
    assert validate(cache, str(folder))[0] == 0
    assert validate(cache, str(folder))[2] == "yaml imported: False"
    stat = (folder / "settings.yaml").stat()

    # the same length and modification time: only the bytes tell
    settings = (folder / "settings.yaml").read_text(encoding="utf-8")
    assert "Asia/Tokyo" in settings
    (folder / "settings.yaml").write_text(settings.replace("Asia/Tokyo", "Asia/Tokio"), encoding="utf-8")
    os.utime(folder / "settings.yaml", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, out, probe = validate(cache, str(folder))
    assert code == 1 and "settings.yaml:" in out and "unknown time zone `Asia/Tokio`" in out
    assert probe == "yaml imported: True"

    messages = (folder / "messages.yaml").read_text(encoding="utf-8")
    (folder / "messages.yaml").write_text(messages + 'broken: "{{ friend.display_name | upcase_all }}"\n', "utf-8")
    code, out, _ = validate(cache, str(folder))
    assert "unknown template filter `upcase_all`" in out and "unknown time zone" in out  # both files' errors
    assert validate(cache, str(folder))[1] == out  # and the new results are kept

    (folder / "settings.yaml").write_text(settings, encoding="utf-8")
    (folder / "messages.yaml").write_text(messages, encoding="utf-8")
    assert validate(cache, str(folder))[:2] == validate(tmp_path / "fresh", str(folder))[:2]
    assert validate(cache, str(folder))[0] == 0


def test_the_sale_calendar_is_read_again_in_another_zone(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder, ignore=shutil.ignore_patterns("tests"))
    first = load_project(folder).project
    assert first.settings.timezone == "Asia/Tokyo"
    assert load_project(folder).project.sales == first.sales  # from the cache
    settings = (folder / "settings.yaml").read_text(encoding="utf-8")
    (folder / "settings.yaml").write_text(settings.replace("Asia/Tokyo", "Europe/Berlin"), encoding="utf-8")
    berlin = load_project(folder).project
    assert [s.starts.tzinfo.key for s in berlin.sales] == ["Europe/Berlin"] * len(first.sales)
    # the same local times, so other instants
    assert [s.starts.replace(tzinfo=None) for s in berlin.sales] == [s.starts.replace(tzinfo=None) for s in first.sales]
    assert all(b.starts != f.starts for b, f in zip(berlin.sales, first.sales))


def test_other_code_checks_again(tmp_path, monkeypatch):
    """The entry is kept for the code that made it (the files of the modules that read and check
    YAML): with another stamp, today's checks run again."""
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder, ignore=shutil.ignore_patterns("tests"))
    monkeypatch.setattr(project, "_checked_stamp", "code A")
    assert load_project(folder).ok
    from engine.language import messages

    monkeypatch.setattr(messages, "TEXT_LIMIT", 5)  # as if a newer linerules checked a tighter limit
    assert load_project(folder).ok  # the same code as far as the stamp knows: the kept answer
    monkeypatch.setattr(project, "_checked_stamp", "code B")
    result = load_project(folder)
    assert not result.ok
    assert any("LINE allows at most 5" in d.message and d.path.endswith("messages.yaml") for d in result.diagnostics)


def damaged(entry: Path) -> list[bytes]:
    """Ways an entry can be wrong: cut short, a byte changed, a word changed, garbage, a sound
    file holding something else."""
    data = entry.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    assert b"not indented like" in data  # yaml_cascade's first error, kept as its message id
    reworded = data.replace(b"not indented like", b"not indented LIKE")
    odd = pickle.dumps({"messages.yaml": ("another key", "not a result")})
    wrong_shape = pickle.dumps(["not", "a", "dict"])
    return [
        data[: len(data) // 2],
        bytes(flipped),
        reworded,  # still a sound pickle: only the digest tells
        b"\x00garbage",
        b"",
        hashlib.sha256(odd).digest() + odd,
        hashlib.sha256(wrong_shape).digest() + wrong_shape,
    ]


def test_a_damaged_or_foreign_entry_is_ignored(tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(GOLDEN / "yaml_cascade", folder)
    other = tmp_path / "other"
    shutil.copytree(GOLDEN / "messages_types", other)
    cache = tmp_path / "cache"
    expected = validate(cache, str(folder))[:2]
    validate(cache, str(other))
    (entry,) = [e for e in checked_entries(cache) if e.name == project._Checked(str(folder)).entry]
    (foreign,) = [e for e in checked_entries(cache) if e != entry]
    for bad in [*damaged(entry), foreign.read_bytes()]:
        entry.write_bytes(bad)
        assert validate(cache, str(folder))[:2] == expected
        assert validate(cache, str(folder))[2] == "yaml imported: False"  # made again, then used
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    assert validate(blocked, str(folder))[:2] == expected
    assert validate("", str(folder))[:2] == expected  # no cache at all


def test_the_environments_login_secret_is_applied_but_never_kept(tmp_path, monkeypatch):
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder, ignore=shutil.ignore_patterns("tests"))
    with open(folder / "settings.yaml", "a", encoding="utf-8") as fh:
        fh.write("login_channel_id: '1650000000'\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("LINERULES_CACHE_DIR", str(cache))
    monkeypatch.setenv("LINE_LOGIN_CHANNEL_ID", "2000000001")
    monkeypatch.setenv("LINE_LOGIN_CHANNEL_SECRET", "s3cr3t-from-the-environment")
    for _ in range(2):  # cold, then from the cache
        settings = load_project(folder).project.settings
        assert (settings.login_channel_id, settings.login_channel_secret) == (
            "2000000001",
            "s3cr3t-from-the-environment",
        )
    assert checked_entries(cache)
    assert not any(b"s3cr3t-from-the-environment" in p.read_bytes() for p in cache.iterdir() if p.is_file())
    monkeypatch.delenv("LINE_LOGIN_CHANNEL_ID")
    monkeypatch.delenv("LINE_LOGIN_CHANNEL_SECRET")
    settings = load_project(folder).project.settings
    assert (settings.login_channel_id, settings.login_channel_secret) == ("1650000000", None)


def test_old_entries_make_way(tmp_path, monkeypatch):
    from engine.language import cache as cache_module

    cache = tmp_path / "cache"
    monkeypatch.setenv("LINERULES_CACHE_DIR", str(cache))
    for i in range(5):
        cache_module.write_pickled(f"checked-{i}", {"n": i}, prefix="checked-", limit=3)
        os.utime(cache / f"checked-{i}", ns=(i * 10**9, i * 10**9))
    assert [p.name for p in checked_entries(cache)] == ["checked-2", "checked-3", "checked-4"]
    assert cache_module.read_pickled("checked-4") == {"n": 4}
