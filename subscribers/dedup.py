"""The deduplicating stage: every token is counted exactly once.

It sits in front of every subscriber and the ledger.  Sources repeat
themselves in three ways, and each has its rule:

* redelivery: the same event (same ``id``) arrives twice, and is dropped;
* ``call`` observations sharing a provider ``request_id``: the first passes,
  an identical repeat is dropped, a repeat that grew in some field and shrank
  in none (a progressive stream snapshot) passes on only the difference, and
  any other repeat is dropped;
* ``cumulative`` observations (running totals for a whole session, per
  session and source): an unchanged total is dropped, a larger one passes on
  the difference as a ``call`` observation, and a smaller one starts a new
  series whose values are taken as the difference.

Observations marked ``replay`` (the history a forked Codex session copies
from its parent) are dropped: they only set a baseline.  Their request ids
and counts are remembered all the same, so a repeat of a replayed call is
judged like any other repeat.

Counts are never compared on their own: two different calls can report
identical counts and both must be counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import msgspec

from vizierd.events import (
    AnyEvent,
    DedupRecord,
    SessionEnded,
    SessionStarted,
    UsageObserved,
)

__all__ = ["DROP_REASONS", "DedupStage"]

logger = logging.getLogger(__name__)

#: Every reason an event can be dropped for, in the order they are checked.
DROP_REASONS = ("redelivered", "replayed", "repeated", "conflicting", "unchanged")

_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
)

# A count vector: one int-or-None per name in _FIELDS, or None for a call
# whose usage was unknown.
Counts = tuple[int | None, ...]


def _counts(obs: UsageObserved) -> Counts | None:
    if not obs.known:
        return None
    return (
        obs.prompt_tokens,
        obs.completion_tokens,
        obs.total_tokens,
        obs.cached_prompt_tokens,
        obs.reasoning_tokens,
    )


def _compare(old: Counts, new: Counts) -> tuple[bool, bool]:
    """Return (grew somewhere, shrank somewhere) going from ``old`` to ``new``.

    A field missing on one side and present on the other counts as zero on
    the missing side: a later snapshot may add a detail an earlier one lacked.
    """
    grew = shrank = False
    for a, b in zip(old, new, strict=True):
        x = a or 0
        y = b or 0
        if y > x:
            grew = True
        elif y < x:
            shrank = True
    return grew, shrank


def _difference(old: Counts, new: Counts) -> Counts:
    return tuple(
        None if b is None else b - (a or 0) for a, b in zip(old, new, strict=True)
    )


class _SessionState:
    __slots__ = ("calls", "cumulative", "dropped", "seen")

    def __init__(self, record: DedupRecord | None) -> None:
        self.seen: set[str] = set()
        self.calls: dict[str, Counts | None] = {}
        self.cumulative: dict[str, Counts] = {}
        self.dropped: Counter[str] = Counter()
        if record is not None:
            self._load(record)

    def _load(self, record: DedupRecord) -> None:
        self.dropped.update(record.dropped)
        calls: Any = record.state.get("calls", {})
        cumulative: Any = record.state.get("cumulative", {})
        try:
            for key, value in calls.items():
                self.calls[str(key)] = None if value is None else tuple(value)
            for key, value in cumulative.items():
                self.cumulative[str(key)] = tuple(value)
        except (AttributeError, TypeError) as exc:
            # A damaged saved state must not stop the session: we start from
            # scratch, which can only count a resumed session's calls again.
            logger.warning("ignoring unreadable saved dedup state: %s", exc)
            self.calls.clear()
            self.cumulative.clear()

    def record(self) -> DedupRecord:
        state: dict[str, object] = {
            "calls": {k: None if v is None else list(v) for k, v in self.calls.items()},
            "cumulative": {k: list(v) for k, v in self.cumulative.items()},
        }
        return DedupRecord(dropped=dict(self.dropped), state=state)


class DedupStage:
    """The deduplicating stage.

    :meth:`process` returns the event to pass on (possibly a rewritten
    observation) or ``None`` to drop it.  State is kept per session from its
    ``session.started`` to its ``session.ended``; the final state and drop
    counts ride out on the ``session.ended`` event so the session log can
    keep them, and come back in on ``session.started`` when a session is
    continued.
    """

    name = "dedup"

    def __init__(self) -> None:
        self._sessions: dict[str | None, _SessionState] = {}
        self.dropped: Counter[str] = Counter()

    def _state(self, session_id: str | None) -> _SessionState:
        state = self._sessions.get(session_id)
        if state is None:
            state = self._sessions[session_id] = _SessionState(None)
        return state

    def _drop(self, state: _SessionState, reason: str) -> None:
        state.dropped[reason] += 1
        self.dropped[reason] += 1

    def process(self, event: AnyEvent) -> AnyEvent | None:
        """Return ``event`` (or its deduplicated form), or ``None`` to drop it."""
        kind = type(event)
        if kind is SessionStarted:
            state = self._sessions[event.session_id] = _SessionState(
                event.resume_dedup  # type: ignore[union-attr]
            )
        else:
            state = self._sessions.get(event.session_id) or self._state(
                event.session_id
            )

        seen = state.seen
        size = len(seen)
        seen.add(event.id)
        if len(seen) == size:
            self._drop(state, "redelivered")
            return None

        if kind is UsageObserved:
            return self._observation(state, event)  # type: ignore[arg-type]
        if isinstance(event, SessionEnded):
            record = state.record()
            del self._sessions[event.session_id]
            return msgspec.structs.replace(event, dedup=record)
        return event

    def _observation(
        self, state: _SessionState, obs: UsageObserved
    ) -> UsageObserved | None:
        if obs.replay:
            # A replayed call is still remembered: a later observation under
            # the same request id (a fork's first own row repeating the
            # replay's last total) is then judged against it, not counted.
            if obs.scope == "call" and obs.request_id is not None:
                state.calls.setdefault(obs.request_id, _counts(obs))
            self._drop(state, "replayed")
            return None
        if obs.scope == "cumulative":
            return self._cumulative(state, obs)
        if obs.request_id is None:
            return obs
        return self._call(state, obs)

    def _call(self, state: _SessionState, obs: UsageObserved) -> UsageObserved | None:
        assert obs.request_id is not None
        new = _counts(obs)
        if obs.request_id not in state.calls:
            state.calls[obs.request_id] = new
            return obs

        old = state.calls[obs.request_id]
        if new == old:
            self._drop(state, "repeated")
            return None
        if old is None and new is not None:
            # The call was first seen without usage and now reports it: the
            # unknown call becomes a known one, counted once.
            state.calls[obs.request_id] = new
            return obs
        if old is None or new is None:
            self._drop(state, "conflicting")
            return None

        grew, shrank = _compare(old, new)
        if grew and not shrank:
            state.calls[obs.request_id] = new
            return _with_counts(obs, _difference(old, new), progressive=True)
        self._drop(state, "conflicting")
        return None

    def _cumulative(
        self, state: _SessionState, obs: UsageObserved
    ) -> UsageObserved | None:
        new = _counts(obs)
        if new is None:
            # A running total that reports nothing: an unknown call.
            return msgspec.structs.replace(obs, scope="call")

        old = state.cumulative.get(obs.source)
        state.cumulative[obs.source] = new
        if old is None:
            return _with_counts(obs, new)
        if new == old:
            self._drop(state, "unchanged")
            return None

        _, shrank = _compare(old, new)
        if shrank:
            logger.info(
                "session %s: %s running total went down; starting a new series",
                obs.session_id,
                obs.source,
            )
            return _with_counts(obs, new)
        return _with_counts(obs, _difference(old, new))

    def record(self, session_id: str) -> DedupRecord | None:
        """Return the current drop counts and state of a running session."""
        state = self._sessions.get(session_id)
        return None if state is None else state.record()

    def forget(self, session_id: str | None) -> None:
        """Drop the state of a session that ended without a ``session.ended``."""
        self._sessions.pop(session_id, None)


def _with_counts(
    obs: UsageObserved, counts: Counts, *, progressive: bool = False
) -> UsageObserved:
    values: dict[str, Any] = dict(zip(_FIELDS, counts, strict=True))
    return msgspec.structs.replace(obs, scope="call", continues=progressive, **values)


def create(context: object) -> DedupStage:
    """Entry-point factory: the dedup stage is the same in every mode."""
    return DedupStage()
