"""Parsers for the two logs Codex writes: rollout files and ``exec --json``.

A rollout file (``~/.codex/sessions/**/rollout-*.jsonl``) holds one JSON
object a line, ``{"timestamp", "type", "payload"}``.  Its ``token_count``
events carry the usage of each model call twice over: ``last_token_usage``
(the call) and ``total_token_usage`` (the running total after it).  Every
such event becomes a ``call`` observation keyed by the session id and the
running total it marks, so the re-emits Codex writes whenever its rate
limits refresh, and the compaction marker that repeats a total with a
made-up ``last``, share the key of the call they repeat and are dropped by
the dedup stage.  This parser filters nothing by count itself.

A forked rollout starts by replaying its parent's history.  With the
parent's token rows at hand, the replayed prefix is found by value and
passed on marked ``replay``; without them the fork's own usage cannot be
told from the replay, so it is reported as unknown and the session waits
for its parent.

``codex exec --json`` prints thread events; each ``turn.completed`` carries
the thread's running total, which becomes a ``cumulative`` observation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from vizierd.errors import InputError
from vizierd.events import AnyEvent, Message, Progress, UsageObserved, utcnow
from vizierd.ingest.base import InputMeta, TokenRow

__all__ = ["CodexExecParser", "CodexRolloutParser", "LookupParent"]

#: Returns the token rows of an ingested session, or ``None`` when the
#: session is not known (yet).
LookupParent = Callable[[str], list[TokenRow] | None]

_NULL = msgspec.Raw(b"null")

_Count = Annotated[int, msgspec.Meta(ge=0)]
_Vector = tuple[int, int, int, int, int]


# --- wire shapes: only the fields used; everything else is skipped -----------


class _Line(msgspec.Struct):
    # The payload stays raw: it is decoded once more, into the shape its
    # type calls for, only when the type is one that is used.
    type: str = ""
    timestamp: str | None = None
    payload: msgspec.Raw = _NULL


class _SessionMeta(msgspec.Struct):
    id: str
    timestamp: str | None = None
    cwd: str | None = None
    forked_from_id: str | None = None
    source: msgspec.Raw = _NULL


class _TurnContext(msgspec.Struct):
    model: str | None = None


class _EventMsg(msgspec.Struct):
    type: str
    info: msgspec.Raw = _NULL


class _Usage(msgspec.Struct):
    input_tokens: _Count
    output_tokens: _Count
    cached_input_tokens: _Count | None = None
    reasoning_output_tokens: _Count | None = None
    total_tokens: _Count | None = None


class _TokenInfo(msgspec.Struct):
    last_token_usage: _Usage
    total_token_usage: _Usage


class _ContentItem(msgspec.Struct):
    text: str | None = None


class _ResponseItem(msgspec.Struct):
    type: str = ""
    role: str | None = None
    content: msgspec.Raw = _NULL


class _ExecLine(msgspec.Struct):
    type: str = ""
    thread_id: str | None = None
    item: msgspec.Raw = _NULL
    usage: msgspec.Raw = _NULL
    error: msgspec.Raw = _NULL
    message: msgspec.Raw = _NULL


class _ExecItem(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _ExecUsage(msgspec.Struct):
    input_tokens: _Count
    output_tokens: _Count
    cached_input_tokens: _Count | None = None
    reasoning_output_tokens: _Count | None = None


class _ErrorDetail(msgspec.Struct):
    message: str | None = None


_line_decoder = msgspec.json.Decoder(_Line)
_meta_decoder = msgspec.json.Decoder(_SessionMeta)
_turn_decoder = msgspec.json.Decoder(_TurnContext)
_event_decoder = msgspec.json.Decoder(_EventMsg)
_info_decoder = msgspec.json.Decoder(_TokenInfo | None)
_item_decoder = msgspec.json.Decoder(_ResponseItem)
_content_decoder = msgspec.json.Decoder(str | list[_ContentItem] | None)
_exec_decoder = msgspec.json.Decoder(_ExecLine)
_exec_item_decoder = msgspec.json.Decoder(_ExecItem)
_exec_usage_decoder = msgspec.json.Decoder(_ExecUsage | None)
_error_decoder = msgspec.json.Decoder(str | _ErrorDetail | None)
_any_decoder = msgspec.json.Decoder()

# Event kinds Codex writes that carry nothing this parser needs.  Anything
# else is counted as unknown, so a new Codex version that moves usage
# somewhere new shows up as skipped lines instead of silently vanishing.
_KNOWN_EVENT_MSGS = frozenset(
    """
    agent_message agent_message_content_delta agent_message_delta
    agent_reasoning agent_reasoning_delta agent_reasoning_raw_content
    agent_reasoning_raw_content_delta agent_reasoning_section_break
    apply_patch_approval_request background_event context_compacted
    deprecation_notice elicitation_request entered_review_mode error
    exec_approval_request exec_command_begin exec_command_end
    exec_command_output_delta exited_review_mode get_history_entry_response
    item_completed item_started list_custom_prompts_response
    list_skills_response mcp_list_tools_response mcp_startup_complete
    mcp_startup_update mcp_tool_call_begin mcp_tool_call_end patch_apply_begin
    patch_apply_end plan_update raw_response_item reasoning_content_delta
    reasoning_raw_content_delta session_configured shutdown_complete
    stream_error task_complete task_started terminal_interaction
    thread_rolled_back turn_aborted turn_complete turn_diff turn_started
    undo_completed undo_started user_message view_image_tool_call warning
    web_search_begin web_search_end
    """.split()
)

_ROLES: dict[str, Literal["user", "assistant", "system"]] = {
    "user": "user",
    "assistant": "assistant",
    "developer": "system",
    "system": "system",
}

_EXEC_KNOWN = frozenset(
    {"turn.started", "item.started", "item.updated", "item.completed"}
)


# --- helpers -----------------------------------------------------------------


def _where(exc: msgspec.ValidationError, prefix: str) -> str:
    """Return msgspec's message with its JSON path made relative to the line."""
    text = str(exc)
    if " - at `$" in text:
        return text.replace("`$", f"`$.{prefix}", 1)
    return f"{text} - at `$.{prefix}`"


def _not_json(line: bytes, exc: msgspec.DecodeError) -> str:
    if b"\x00" in line:
        return "binary data (NUL bytes), not a JSON line"
    try:
        line.decode()
    except UnicodeDecodeError:
        return "binary data (not UTF-8), not a JSON line"
    return f"not JSON ({exc})"


def _not_a_line(line: bytes, exc: msgspec.ValidationError) -> str:
    value = _any_decoder.decode(line)
    if not isinstance(value, dict):
        return f"not a JSON object but {type(value).__name__}"
    return str(exc)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _vector(usage: _Usage) -> _Vector:
    total = usage.total_tokens
    return (
        usage.input_tokens,
        usage.cached_input_tokens or 0,
        usage.output_tokens,
        usage.reasoning_output_tokens or 0,
        usage.input_tokens + usage.output_tokens if total is None else total,
    )


def _parent_of(meta: _SessionMeta) -> str | None:
    """Return the session a rollout was forked or spawned from, if any."""
    if meta.forked_from_id:
        return meta.forked_from_id
    source = _any_decoder.decode(meta.source)
    if not isinstance(source, dict):
        return None
    subagent = source.get("subagent")
    spawn = subagent.get("thread_spawn") if isinstance(subagent, dict) else None
    parent = spawn.get("parent_thread_id") if isinstance(spawn, dict) else None
    return parent if isinstance(parent, str) and parent else None


def _check_recognized(name: str, fmt: str, fed: int, skipped: Counter[str]) -> None:
    """Raise :class:`InputError` when every line fed was of an unknown type."""
    if fed and sum(skipped.values()) >= fed:
        kinds = ", ".join(kind for kind, _ in skipped.most_common(3))
        raise InputError(
            f"{name}: no line is a {fmt} event (seen: {kinds}); is it another "
            "format? --format auto tells"
        )


def _skipped_progress(skipped: Counter[str]) -> Progress:
    detail = ", ".join(f"{kind}: {n}" for kind, n in skipped.most_common())
    return Progress(
        kind="ingest",
        phase="skipped",
        message=f"{skipped.total()} lines of unknown types skipped",
        detail=detail,
    )


# --- rollout files -----------------------------------------------------------


class CodexRolloutParser:
    """Parser for a Codex rollout file (``rollout-*.jsonl``).

    After parsing, ``rows`` holds every ``token_count`` row of the input (the
    material a later fork is matched against), ``last_assistant`` the text
    of the last assistant message, ``skipped`` the lines of unknown types by
    type, ``replayed`` the number of rows found to replay the parent, and
    ``waiting_for_parent`` the parent session id when this is a fork whose
    parent was not known.
    """

    def __init__(self, name: str, lookup_parent: LookupParent | None = None) -> None:
        self.name = name
        self.meta = InputMeta(source="codex-rollout")
        self.rows: list[TokenRow] = []
        self.last_assistant: str | None = None
        self.skipped: Counter[str] = Counter()
        self._fed = 0
        self.replayed = 0
        self.waiting_for_parent: str | None = None
        self._lookup_parent = lookup_parent
        self._thread = name
        self._seen_meta = False
        # The parent rows a replayed prefix can match, as (last, total)
        # pairs; None once the prefix has ended (or there is no parent).
        self._inherited: list[tuple[_Vector, _Vector]] | None = None

    def feed(self, line_no: int, line: bytes) -> Iterator[AnyEvent]:
        """Parse one line; yield its message or usage observation, if any.

        Raises :class:`InputError` naming the input and line when the line is
        not JSON, not an object, binary, or a known event of the wrong shape.
        """
        try:
            record = _line_decoder.decode(line)
        except msgspec.ValidationError as exc:
            raise self._error(line_no, _not_a_line(line, exc)) from None
        except msgspec.DecodeError as exc:
            if not line.strip():
                return
            raise self._error(line_no, _not_json(line, exc)) from None

        self._fed += 1
        kind = record.type
        if kind == "event_msg":
            usage = self._event_msg(line_no, record)
            if usage is not None:
                yield usage
        elif kind == "response_item":
            message = self._response_item(line_no, record)
            if message is not None:
                yield message
        elif kind == "turn_context":
            self._turn_context(line_no, record)
        elif kind == "session_meta":
            self._session_meta(line_no, record)
        elif kind != "compacted":
            self.skipped[kind or "(no type)"] += 1

    def finish(self) -> Iterator[AnyEvent]:
        """Yield what the whole input implies.

        Raises :class:`InputError` when no line was a rollout line at all:
        the input is some other format.

        For a fork whose parent is unknown: a progress line and one unknown
        observation, since its own usage cannot be told from the replay.
        Also a progress line for a replayed prefix that was skipped, and one
        for lines of unknown types.  Raises nothing.
        """
        _check_recognized(self.name, "codex-rollout", self._fed, self.skipped)
        parent = self.waiting_for_parent
        if parent is not None:
            yield Progress(
                kind="ingest",
                phase="fork",
                message=f"waiting for parent session {parent}",
                detail="usage unknown until the parent session is ingested",
            )
            # Dated at the fork, so a backfill puts it on the fork's day.
            yield UsageObserved(
                source="codex-rollout",
                request_id=f"{self._thread}#waiting-for-parent",
                model=self.meta.model,
                known=False,
                at=_parse_time(self.meta.started_at) or utcnow(),
            )
        elif self.replayed:
            yield Progress(
                kind="ingest",
                phase="fork",
                message=f"{self.replayed} token rows replayed from parent session "
                f"{self.meta.parent_id}",
                detail="counted in the parent session",
            )
        if self.skipped:
            yield _skipped_progress(self.skipped)

    def _error(self, line_no: int, what: str) -> InputError:
        return InputError(f"{self.name}:{line_no}: {what}")

    def _session_meta(self, line_no: int, record: _Line) -> None:
        # A fork's file embeds its parent's session_meta further down, in the
        # copied history; only the first one describes this session.
        if self._seen_meta:
            return
        try:
            meta = _meta_decoder.decode(record.payload)
        except msgspec.ValidationError as exc:
            raise self._error(
                line_no, f"session_meta: {_where(exc, 'payload')}"
            ) from None
        self._seen_meta = True
        self._thread = meta.id
        parent = _parent_of(meta)
        started = meta.timestamp or record.timestamp
        self.meta.external_id = meta.id
        self.meta.parent_id = parent
        self.meta.started_at = started
        self.meta.cwd = meta.cwd
        if parent is not None:
            self._find_parent(parent, started)

    def _find_parent(self, parent: str, forked_at: str | None) -> None:
        rows = None if self._lookup_parent is None else self._lookup_parent(parent)
        if rows is None:
            self.waiting_for_parent = parent
            return

        # Only history written before the fork can have been copied into it:
        # a fork call that equals a later parent call is the fork's own.
        fork_time = _parse_time(forked_at)
        eligible = []
        for row in rows:
            when = _parse_time(row.at)
            if fork_time is None or when is None or when < fork_time:
                eligible.append((row.last, row.total))
        self._inherited = eligible

    def _turn_context(self, line_no: int, record: _Line) -> None:
        try:
            context = _turn_decoder.decode(record.payload)
        except msgspec.ValidationError as exc:
            raise self._error(
                line_no, f"turn_context: {_where(exc, 'payload')}"
            ) from None
        if context.model:
            self.meta.model = context.model

    def _event_msg(self, line_no: int, record: _Line) -> UsageObserved | None:
        try:
            event = _event_decoder.decode(record.payload)
        except msgspec.ValidationError as exc:
            raise self._error(line_no, f"event_msg: {_where(exc, 'payload')}") from None

        if event.type != "token_count":
            if event.type not in _KNOWN_EVENT_MSGS:
                self.skipped[f"event_msg/{event.type}"] += 1
            return None
        try:
            info = _info_decoder.decode(event.info)
        except msgspec.ValidationError as exc:
            where = _where(exc, "payload.info")
            raise self._error(line_no, f"token_count: {where}") from None
        if info is None:
            return None

        last = info.last_token_usage
        row = TokenRow(
            last=_vector(last),
            total=_vector(info.total_token_usage),
            at=record.timestamp or "",
        )
        self.rows.append(row)
        if self.waiting_for_parent is not None:
            return None

        return UsageObserved(
            at=_parse_time(record.timestamp) or utcnow(),
            source="codex-rollout",
            scope="call",
            request_id=f"{self._thread}#{row.total[4]}",
            model=self.meta.model,
            prompt_tokens=last.input_tokens,
            cached_prompt_tokens=last.cached_input_tokens,
            completion_tokens=last.output_tokens,
            reasoning_tokens=last.reasoning_output_tokens,
            total_tokens=last.total_tokens,
            replay=self._is_replay(row),
        )

    def _is_replay(self, row: TokenRow) -> bool:
        inherited = self._inherited
        if inherited is None:
            return False
        ordinal = len(self.rows) - 1
        if ordinal < len(inherited) and inherited[ordinal] == (row.last, row.total):
            self.replayed += 1
            return True
        self._inherited = None
        return False

    def _response_item(self, line_no: int, record: _Line) -> Message | None:
        try:
            item = _item_decoder.decode(record.payload)
        except msgspec.ValidationError as exc:
            where = _where(exc, "payload")
            raise self._error(line_no, f"response_item: {where}") from None
        if item.type != "message":
            return None
        try:
            content = _content_decoder.decode(item.content)
        except msgspec.ValidationError as exc:
            where = _where(exc, "payload.content")
            raise self._error(line_no, f"message: {where}") from None

        role = _ROLES.get(item.role or "")
        if role is None:
            return None
        if isinstance(content, list):
            text = "\n".join(part.text for part in content if part.text is not None)
        else:
            text = content or ""
        if role == "assistant":
            self.last_assistant = text
        return Message(
            at=_parse_time(record.timestamp) or utcnow(),
            role=role,
            content=text,
            model=self.meta.model,
            request_id=f"{self._thread}:L{line_no}",
        )


# --- codex exec --json -------------------------------------------------------


class CodexExecParser:
    """Parser for the JSON Lines ``codex exec --json`` prints.

    After parsing, ``last_assistant`` holds the text of the last agent
    message and ``skipped`` the lines of unknown types by type.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.meta = InputMeta(source="codex-exec")
        self.last_assistant: str | None = None
        self.skipped: Counter[str] = Counter()
        self._fed = 0
        self._turns_completed = 0
        self._turn_open = False

    @property
    def _thread(self) -> str:
        return self.meta.external_id or self.name

    def feed(self, line_no: int, line: bytes) -> Iterator[AnyEvent]:
        """Parse one line; yield its message, usage or error line, if any.

        Raises :class:`InputError` naming the input and line when the line is
        not JSON, not an object, binary, or a known event of the wrong shape.
        """
        try:
            record = _exec_decoder.decode(line)
        except msgspec.ValidationError as exc:
            raise self._error(line_no, _not_a_line(line, exc)) from None
        except msgspec.DecodeError as exc:
            if not line.strip():
                return
            raise self._error(line_no, _not_json(line, exc)) from None

        self._fed += 1
        kind = record.type
        if kind == "item.completed":
            message = self._item(line_no, record)
            if message is not None:
                yield message
        elif kind == "turn.completed":
            yield self._usage(line_no, record)
        elif kind == "turn.started":
            self._turn_open = True
        elif kind == "thread.started":
            if not record.thread_id:
                raise self._error(line_no, "thread.started without a thread_id")
            if self.meta.external_id is None:
                self.meta.external_id = record.thread_id
        elif kind == "turn.failed":
            yield self._failure(line_no, "turn failed", record.error, "error")
        elif kind == "error":
            yield self._failure(line_no, "error", record.message, "message")
        elif kind not in _EXEC_KNOWN:
            self.skipped[kind or "(no type)"] += 1

    def finish(self) -> Iterator[AnyEvent]:
        """Yield what the end of the stream implies.

        A stream without any ``turn.completed`` has no usage: one unknown
        observation says so.  So does a last turn that started and never
        completed, whose tokens no running total covers.  Also a progress
        line for lines of unknown types.  Raises :class:`InputError` when no
        line was an exec event at all: the input is some other format.
        """
        _check_recognized(self.name, "codex-exec", self._fed, self.skipped)
        if self._turns_completed == 0:
            yield UsageObserved(
                source="codex-exec",
                scope="call",
                request_id=f"{self._thread}#no-usage",
                known=False,
            )
        elif self._turn_open:
            yield UsageObserved(
                source="codex-exec",
                scope="call",
                request_id=f"{self._thread}#unfinished-turn-{self._turns_completed}",
                known=False,
            )
        if self.skipped:
            yield _skipped_progress(self.skipped)

    def _error(self, line_no: int, what: str) -> InputError:
        return InputError(f"{self.name}:{line_no}: {what}")

    def _item(self, line_no: int, record: _ExecLine) -> Message | None:
        try:
            item = _exec_item_decoder.decode(record.item)
        except msgspec.ValidationError as exc:
            raise self._error(
                line_no, f"item.completed: {_where(exc, 'item')}"
            ) from None
        # "assistant_message" is what early exec versions called it.
        if item.type not in ("agent_message", "assistant_message"):
            return None
        text = item.text or ""
        self.last_assistant = text
        return Message(
            role="assistant",
            content=text,
            request_id=f"{self._thread}:L{line_no}",
        )

    def _usage(self, line_no: int, record: _ExecLine) -> UsageObserved:
        try:
            usage = _exec_usage_decoder.decode(record.usage)
        except msgspec.ValidationError as exc:
            where = _where(exc, "usage")
            raise self._error(line_no, f"turn.completed: {where}") from None
        if usage is None:
            raise self._error(line_no, "turn.completed without usage")

        self._turns_completed += 1
        self._turn_open = False
        return UsageObserved(
            source="codex-exec",
            scope="cumulative",
            prompt_tokens=usage.input_tokens,
            cached_prompt_tokens=usage.cached_input_tokens,
            completion_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_output_tokens,
            total_tokens=None,
        )

    def _failure(
        self, line_no: int, phase: str, raw: msgspec.Raw, field: str
    ) -> Progress:
        try:
            detail = _error_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise self._error(line_no, f"{phase}: {_where(exc, field)}") from None
        if isinstance(detail, _ErrorDetail):
            detail = detail.message
        return Progress(kind="ingest", phase=phase, message=detail or "no message")
