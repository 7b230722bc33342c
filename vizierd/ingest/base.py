"""What every input parser shares: the parser interface and input metadata."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import msgspec

from vizierd.events import AnyEvent

__all__ = ["InputMeta", "Parser", "TokenRow"]


class TokenRow(msgspec.Struct, array_like=True):
    """One Codex ``token_count`` row: its last and total usage, and when.

    Counts are in the order input, cached input, output, reasoning, total.
    Kept for every ingested Codex session so that a fork can be lined up
    against its parent's history.
    """

    last: tuple[int, int, int, int, int]
    total: tuple[int, int, int, int, int]
    at: str


class InputMeta(msgspec.Struct, kw_only=True):
    """What a parser learned about its input from the first lines.

    ``external_id`` is the agent's own session (thread) id when it has one;
    the session id is derived from it, which makes re-ingesting an update.
    ``parent_id`` names the session a fork was made from.
    """

    source: str
    external_id: str | None = None
    model: str | None = None
    parent_id: str | None = None
    started_at: str | None = None
    cwd: str | None = None


class Parser(Protocol):
    """An incremental parser for one input."""

    meta: InputMeta

    def feed(self, line_no: int, line: bytes) -> Iterator[AnyEvent]:
        """Parse one line (without its newline); yield the events it implies.

        Raises :class:`vizierd.errors.InputError` naming the line when the
        line is not usable.
        """

    def finish(self) -> Iterator[AnyEvent]:
        """Yield what the end of the input implies (for example, no usage)."""
