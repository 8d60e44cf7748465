"""The rule language: parse, compile and check a rule folder."""
