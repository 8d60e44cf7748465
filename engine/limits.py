"""LINE's limits and wire constants, in one place.

Everything linerules knows about the LINE Messaging API as numbers and fixed strings lives
here: how many objects a request holds, how many users a multicast reaches, the text limits
(counted in UTF-16 code units, as LINE counts), the retry key's form and the error messages
LINE answers with. The rule checks, the engine, the dispatcher and the LINE emulator all read
them from this module, so a change in LINE's documentation is one edit.
"""
from __future__ import annotations

#: LINE's 429 body when the monthly message quota is spent.
MONTHLY_LIMIT_MESSAGE = "You have reached your monthly limit."
