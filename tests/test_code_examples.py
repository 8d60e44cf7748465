"""Every rule-file example of `linerules explain` (and docs/errors.md) does what it says: in
the sample folder, with its file's rules replaced by the example, the wrong one raises its code
and the fixed one does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.i18n import render
from engine.language.codes import CODES
from engine.language.project import load_project

SAMPLE = Path(__file__).resolve().parent.parent / "rules"
#: Examples that stand for a file rather than hold one (an encoding, "more than 50 times").
SCHEMATIC = {"LR002", "LR017"}
RULE_CODES = [c for c in CODES.values() if c.file.endswith(".rule") and c.code not in SCHEMATIC]


def codes_of(tmp_path: Path, file: str, example: str) -> set[str]:
    root = tmp_path / "rules"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns("tests"))
    text = example if not example.lstrip().startswith("then") else "rule example when followed " + example.strip()
    # the example takes the place of its file's rules; the file's segments stay, for the others
    target = root / Path(file).name
    kept = [line for line in target.read_text(encoding="utf-8").splitlines() if line.startswith("segment ")]
    target.write_text("\n".join([text, *kept]) + "\n", encoding="utf-8")
    return {getattr(d.message, "code", None) for d in load_project(str(root)).diagnostics}


@pytest.mark.parametrize("code", RULE_CODES, ids=lambda c: c.code)
def test_the_wrong_example_raises_its_code_and_the_fixed_one_does_not(tmp_path, code):
    assert code.code in codes_of(tmp_path, code.file, render(code.wrong, "en")), render(code.wrong, "en")
    assert code.code not in codes_of(tmp_path, code.file, render(code.fixed, "en")), render(code.fixed, "en")
