"""The stages of a tick, in the order the data goes through them (event in, outbox row out):

``events`` (friend state, event triggers, ``wait for``) → ``triggers`` (schedule and sale
audiences) → ``conditions`` (condition triggers) → ``walk`` (steps up to the next wait; sends
become intents) → ``deliver`` (every due send decided, rendered, written to the outbox).

``context`` is what they all read (the project, the store); ``entry`` is how any of them enrols
a friend. :class:`engine.interpreter.Engine` builds them and runs them in order; the database
is reached only through :class:`engine.runtime.store.Store` (conditions compiled by
:mod:`engine.runtime.sqlcond`). See docs/engine.md, "Interfaces".
"""
