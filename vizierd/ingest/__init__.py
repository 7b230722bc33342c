"""Parsers that turn agent logs and recorded API traffic into events.

A parser reads one input line by line and yields the events it implies:
``message``, ``usage.observed`` and ``progress``, with ``session_id`` left
unset (the session runner fills it in).  Parsers are plain synchronous code
with no I/O of their own, so the same parser serves a whole file, stdin, and
a file that is still being written (``--follow``).
"""
