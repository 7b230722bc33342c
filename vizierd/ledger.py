"""The usage ledger: running totals per session, from deduplicated observations.

The ledger is a stage that runs right after the dedup stage.  Each
observation that reaches it is one model call (or, when ``continues`` is set,
more tokens for a call already counted).  It adds the call to the session's
totals and follows the observation with a ``usage.report`` whenever the
totals or the count of unknown calls changed.

Rules that hold here:

* cached tokens are part of the prompt and reasoning tokens part of the
  completion, so neither is ever added to the totals;
* a call's total is its reported ``total_tokens``, else prompt + completion;
* a call without usage is an *unknown call*: it never shows up as 0 and does
  not make later known calls unknown.
"""

from __future__ import annotations

import msgspec

from vizierd.events import (
    AnyEvent,
    SessionEnded,
    SessionStarted,
    TokenUsage,
    UsageObserved,
    UsageReport,
    token_usage_of,
)

__all__ = ["Ledger", "Totals"]


class Totals:
    """The running totals of one session."""

    __slots__ = (
        "cached",
        "calls",
        "completion",
        "known_calls",
        "last",
        "last_report",
        "prompt",
        "reasoning",
        "total",
        "unknown_calls",
    )

    def __init__(self, resume: TokenUsage | None = None) -> None:
        self.prompt = 0
        self.completion = 0
        self.total = 0
        self.cached: int | None = None
        self.reasoning: int | None = None
        self.calls = 0
        self.unknown_calls = 0
        self.known_calls = 0
        self.last: TokenUsage | None = None
        # The latest report; turned into a TokenUsage only when asked for.
        self.last_report: UsageReport | None = None
        if resume is not None:
            # A continued session starts from its saved totals with nothing
            # new yet: until a call is counted, its deltas are zero.
            self.last = msgspec.structs.replace(
                resume,
                prompt_delta=0 if resume.prompt_total is not None else None,
                completion_delta=0 if resume.completion_total is not None else None,
                delta_total=0 if resume.total is not None else None,
                cached_input_delta=0 if resume.cached_input_total is not None else None,
                reasoning_output_delta=0
                if resume.reasoning_output_total is not None
                else None,
            )
            self.prompt = resume.prompt_total or 0
            self.completion = resume.completion_total or 0
            self.total = resume.total or 0
            self.cached = resume.cached_input_total
            self.reasoning = resume.reasoning_output_total
            self.calls = resume.calls
            self.unknown_calls = resume.unknown_calls
            self.known_calls = resume.calls - resume.unknown_calls

    def add(self, obs: UsageObserved) -> UsageReport | None:
        """Account one observation; return the report to publish, if any."""
        if not obs.continues:
            self.calls += 1

        if not obs.known:
            self.unknown_calls += 1
            return self._report(obs, None, None, None, None, None, known=False)

        if not obs.continues:
            self.known_calls += 1

        prompt = obs.prompt_tokens or 0
        completion = obs.completion_tokens or 0
        if obs.total_tokens is not None:
            total = obs.total_tokens
        else:
            total = prompt + completion
        cached = obs.cached_prompt_tokens
        reasoning = obs.reasoning_tokens

        if cached is not None:
            self.cached = (self.cached or 0) + cached
        if reasoning is not None:
            self.reasoning = (self.reasoning or 0) + reasoning
        self.prompt += prompt
        self.completion += completion
        self.total += total

        if not (prompt or completion or total or cached or reasoning):
            return None
        return self._report(obs, prompt, completion, total, cached, reasoning)

    def _report(
        self,
        obs: UsageObserved,
        prompt: int | None,
        completion: int | None,
        total: int | None,
        cached: int | None,
        reasoning: int | None,
        *,
        known: bool = True,
    ) -> UsageReport:
        # Until one call with usage is counted, the totals are unknown.
        some = self.known_calls > 0
        # The report is dated like the observation it reports: a backfilled
        # call belongs to the day it was made, not the day it was ingested.
        report = UsageReport(
            session_id=obs.session_id,
            at=obs.at,
            prompt_total=self.prompt if some else None,
            completion_total=self.completion if some else None,
            total=self.total if some else None,
            prompt_delta=prompt,
            completion_delta=completion,
            delta_total=total,
            calls=self.calls,
            unknown_calls=self.unknown_calls,
            known=known,
            cached_input_total=self.cached,
            cached_input_delta=None
            if self.cached is None or not known
            else cached or 0,
            reasoning_output_total=self.reasoning,
            reasoning_output_delta=None
            if self.reasoning is None or not known
            else reasoning or 0,
        )
        self.last_report = report
        return report


class Ledger:
    """The ledger stage: keeps :class:`Totals` per running session."""

    name = "ledger"

    def __init__(self) -> None:
        self._sessions: dict[str | None, Totals] = {}

    def process(self, event: AnyEvent) -> AnyEvent | list[AnyEvent]:
        """Return ``event``, followed by a ``usage.report`` when one is due."""
        if isinstance(event, UsageObserved):
            totals = self._sessions.get(event.session_id)
            if totals is None:
                totals = self._sessions[event.session_id] = Totals()
            report = totals.add(event)
            return event if report is None else [event, report]
        if isinstance(event, SessionStarted):
            self._sessions[event.session_id] = Totals(event.resume_usage)
        elif isinstance(event, SessionEnded):
            self._sessions.pop(event.session_id, None)
        return event

    def usage(self, session_id: str | None) -> TokenUsage | None:
        """Return the last report of a running session, or ``None``."""
        totals = self._sessions.get(session_id)
        if totals is None:
            return None
        if totals.last_report is not None:
            totals.last = token_usage_of(totals.last_report)
            totals.last_report = None
        return totals.last
