"""The rule language: parse, compile and check a rule folder."""

import os as _os

#: The rule language's Lark grammar (read by :mod:`engine.language.parser`; its file is part of
#: what a kept parse depends on, :mod:`engine.language.project`).
GRAMMAR_FILE = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "grammar.lark")
