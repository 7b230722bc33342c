"""The lines a person reads, and the JSON a program reads.

:class:`Renderer` turns a session's events into output: the streamed answer
on stdout, progress lines and the epilogue on stderr, or one
``vizier.outcome.v1`` document per session on stdout with ``--json``.  The
stderr subscriber uses it in process, and the thin client uses it on the
events the daemon pushes, so both paths print the same bytes.

Only the standard library, msgspec and the event types are imported here.
"""

from __future__ import annotations

import os
from typing import TextIO

from vizierd.events import (
    AnyEvent,
    Message,
    Outcome,
    OutcomeDoc,
    Progress,
    SessionStarted,
    SubscriberFailed,
    TextDelta,
    TokenUsage,
    UsageReport,
    encode,
)

__all__ = [
    "Renderer",
    "epilogue",
    "progress_line",
    "summary_line",
    "usage_line",
    "use_color",
]

_DIM = "\x1b[2m"
_RED = "\x1b[31m"
_RESET = "\x1b[0m"


def use_color(stream: TextIO) -> bool:
    """Return whether ANSI styling may be written to ``stream``."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def usage_line(report: UsageReport | TokenUsage) -> str:
    """Return the progress line for one usage report."""
    if not report.known:
        return "[usage] token-usage — unknown usage (backend omitted token counts)"
    parts = [
        f"prompt={report.prompt_total} (+{report.prompt_delta})",
        f"completion={report.completion_total} (+{report.completion_delta})",
        f"total={report.total} (+{report.delta_total})",
    ]
    if report.cached_input_total is not None:
        parts.append(
            f"cached_input={report.cached_input_total} "
            f"(+{report.cached_input_delta or 0})"
        )
    if report.reasoning_output_total is not None:
        parts.append(
            f"reasoning_output={report.reasoning_output_total} "
            f"(+{report.reasoning_output_delta or 0})"
        )
    return "[usage] token-usage — " + " ".join(parts)


def progress_line(event: Progress) -> str:
    """Return ``[kind] phase — message (detail)``."""
    line = f"[{event.kind}] {event.phase} — {event.message}"
    if event.detail:
        line += f" ({event.detail})"
    return line


def _has_known_usage(usage: TokenUsage | None) -> bool:
    return usage is not None and usage.calls > usage.unknown_calls


def _delta(value: int | None) -> str:
    # The last report was an unknown call's: its delta is unknown, not 0.
    return "?" if value is None else str(value)


def epilogue(outcome: OutcomeDoc) -> str:
    """Return the last line of a command that ran a session."""
    verb = {"ok": "complete", "error": "failed", "interrupted": "interrupted"}[
        outcome.status
    ]
    usage = outcome.token_usage
    if usage is None or not _has_known_usage(usage):
        tokens = "unknown"
    else:
        tokens = (
            f"prompt={usage.prompt_total} [+{_delta(usage.prompt_delta)}] "
            f"completion={usage.completion_total} "
            f"[+{_delta(usage.completion_delta)}] "
            f"total={usage.total} [+{_delta(usage.delta_total)}]"
        )
    return f"{outcome.action} {verb}; session={outcome.session.id} (tokens: {tokens})"


def summary_line(usage: TokenUsage | None) -> str:
    """Return the ``-v`` summary, Codex style, with thousands separators.

    ``input`` is the non-cached input and ``total`` is that plus the output.
    """
    if usage is None or not _has_known_usage(usage):
        return "Token usage: unknown"
    cached = usage.cached_input_total or 0
    fresh = (usage.prompt_total or 0) - cached
    output = usage.completion_total or 0
    line = f"Token usage: total={fresh + output:,} input={fresh:,}"
    if usage.cached_input_total is not None:
        line += f" (+ {cached:,} cached)"
    line += f" output={output:,}"
    if usage.reasoning_output_total is not None:
        line += f" (reasoning {usage.reasoning_output_total:,})"
    if usage.unknown_calls:
        line += f"; {usage.unknown_calls:,} call(s) without usage"
    return line


class Renderer:
    """Writes a command's output for the events of the sessions it runs.

    ``verbosity`` is -1 for ``-q`` (errors only), 0 by default and 1 for
    ``-v``.  With ``json`` set, stdout carries only outcome documents.
    """

    def __init__(
        self,
        stdout: TextIO,
        stderr: TextIO,
        *,
        verbosity: int = 0,
        json: bool = False,
        color: bool | None = None,
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.verbosity = verbosity
        self.json = json
        self.color = use_color(stderr) if color is None else color
        self.outcomes: list[OutcomeDoc] = []
        self._answers: set[str | None] = set()
        self._streamed: dict[str | None, str] = {}

    def _err(self, line: str, style: str = _DIM) -> None:
        if self.color:
            line = f"{style}{line}{_RESET}"
        self.stderr.write(line + "\n")
        self.stderr.flush()

    def error(self, message: str) -> None:
        """Write one error line; errors are shown even with ``-q``."""
        self._err(f"vizier: {message}", _RED)

    def feed(self, event: AnyEvent) -> None:
        """Render one event."""
        if isinstance(event, TextDelta):
            if event.session_id in self._answers and not self.json:
                self._streamed[event.session_id] = (
                    self._streamed.get(event.session_id, "") + event.text
                )[-1:]
                self.stdout.write(event.text)
                self.stdout.flush()
        elif isinstance(event, Message):
            self._message(event)
        elif isinstance(event, UsageReport):
            if self.verbosity >= 0:
                self._err(usage_line(event))
        elif isinstance(event, Progress):
            if self.verbosity >= 0:
                self._err(progress_line(event))
        elif isinstance(event, Outcome):
            self._outcome(event.outcome)
        elif isinstance(event, SessionStarted):
            if event.action == "ask":
                self._answers.add(event.session_id)
        elif isinstance(event, SubscriberFailed):
            self._err(
                f"[subscriber] failed — {event.subscriber} quarantined "
                f"({event.reason})",
                _RED,
            )

    def _message(self, event: Message) -> None:
        if event.role != "assistant" or event.session_id not in self._answers:
            return
        if self.json:
            return
        last = self._streamed.pop(event.session_id, None)
        if last is None:
            # Not streamed (``--no-stream``): print the whole answer now.
            self.stdout.write(event.content)
            last = event.content[-1:]
        if last and last != "\n":
            self.stdout.write("\n")
        self.stdout.flush()

    def _outcome(self, outcome: OutcomeDoc) -> None:
        self.outcomes.append(outcome)
        last = self._streamed.pop(outcome.session.id, None)
        if last and last != "\n" and not self.json:
            self.stdout.write("\n")
            self.stdout.flush()
        if self.json:
            self.stdout.write(encode(outcome).decode() + "\n")
            self.stdout.flush()
        if outcome.error is not None and outcome.status == "error":
            self.error(outcome.error.message)
        if self.verbosity >= 0:
            self._err(epilogue(outcome))
        if self.verbosity >= 1:
            self._err(summary_line(outcome.token_usage))
