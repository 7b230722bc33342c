"""Ingesting recorded OpenAI traffic: response bodies, JSON Lines, SSE captures.

:class:`OpenAIChatParser` and :class:`OpenAIResponsesParser` read a single
response body (pretty-printed or not), JSON Lines of bodies, or a captured
server-sent-event stream, through the same parsing core the live ``ask``
backend uses (:mod:`vizierd.ingest.openai_wire`), which this module also
re-exports.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import msgspec

from vizierd.errors import InputError
from vizierd.events import AnyEvent, Message, Progress
from vizierd.ingest.base import InputMeta
from vizierd.ingest.openai_wire import (
    CHAT_SOURCE,
    RESPONSES_SOURCE,
    Call,
    ChatStream,
    ResponseShapeError,
    ResponsesStream,
    chat_call,
    chat_usage,
    decode_json,
    error_message,
    responses_call,
    responses_usage,
)

__all__ = [
    "Call",
    "ChatStream",
    "OpenAIChatParser",
    "OpenAIResponsesParser",
    "ResponseShapeError",
    "ResponsesStream",
    "chat_call",
    "chat_usage",
    "responses_call",
    "responses_usage",
]

logger = logging.getLogger(__name__)

_SSE_FIELDS = frozenset({b"data", b"event", b"id", b"retry"})


def _sse_field(line: bytes) -> bytes | None:
    """Return the field name of a server-sent-event line, else ``None``."""
    name = line.split(b":", 1)[0]
    return name if name in _SSE_FIELDS else None


class _OpenAIParser:
    """Reads one input of recorded OpenAI responses.

    The input is one of:

    * a single response body, possibly pretty-printed over many lines: it is
      held and parsed at the end;
    * JSON Lines, one response body per line, each one call;
    * a captured server-sent-event stream (``data:`` lines, ``data: [DONE]``,
      ``:`` comments, ``event:`` lines), possibly several streams back to
      back: a new response id starts a new call.

    Each response id is counted once: one ``message`` and one
    ``usage.observed`` per id, a stream's at the end of its chunks.
    """

    source: ClassVar[str]
    _stream_type: ClassVar[type[ChatStream] | type[ResponsesStream]]

    def __init__(self, name: str) -> None:
        self.name = name
        self.meta = InputMeta(source=self.source)
        self.last_assistant: str | None = None
        self._mode: str | None = None
        self._body: list[bytes] = []
        self._body_line = 0
        self._stream: ChatStream | ResponsesStream | None = None
        self._pending: list[bytes] = []
        self._pending_line = 0
        self._emitted: set[str] = set()
        self._calls = 0

    # -- what the subclasses say --------------------------------------------

    def _is_chunk(self, obj: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def _body_call(self, obj: object) -> Call:
        raise NotImplementedError

    # -- the Parser interface ----------------------------------------------

    def feed(self, line_no: int, line: bytes) -> Iterator[AnyEvent]:
        """Parse one line; yield the events of each call it completes.

        Raises :class:`InputError` naming the line when it is not JSON, not
        an object, or not shaped like this API's responses.
        """
        line = line.rstrip(b"\r")
        if self._mode is None:
            line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                return
            self._mode = self._detect(line_no, line)
        if self._mode == "body":
            self._body.append(line)
        elif self._mode == "jsonl":
            if line.strip():
                yield from self._take(line_no, self._json(line_no, line))
        else:
            yield from self._sse(line_no, line)

    def finish(self) -> Iterator[AnyEvent]:
        """Yield the events of the call still open at the end of the input.

        Raises :class:`InputError` when the input is empty, holds no
        response, or ends inside an unfinished JSON value.
        """
        if self._mode is None:
            raise InputError(f"{self.name}: the input is empty")
        if self._mode == "body":
            text = b"\n".join(self._body)
            yield from self._take(self._body_line, self._json(self._body_line, text))
        if self._pending:
            self._unfinished()
        yield from self._flush()
        if self._calls == 0:
            raise InputError(f"{self.name}: no {self.source} response in the input")

    # -- input forms -------------------------------------------------------

    def _detect(self, line_no: int, line: bytes) -> str:
        start = line.lstrip()
        if start.startswith(b":") or _sse_field(start) is not None:
            return "sse"
        if start.startswith(b"{"):
            try:
                value = decode_json(line)
            except msgspec.DecodeError:
                value = None
            if isinstance(value, dict):
                return "jsonl"
        if start.startswith((b"{", b"[")):
            # The start of a value spread over several lines.
            self._body_line = line_no
            return "body"
        raise InputError(
            f"{self.name}:{line_no}: neither JSON nor a server-sent-event stream"
        )

    def _json(self, line_no: int, data: bytes) -> Mapping[str, Any]:
        try:
            value = decode_json(data)
        except msgspec.DecodeError as exc:
            raise InputError(f"{self.name}:{line_no}: not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InputError(
                f"{self.name}:{line_no}: expected a JSON object, "
                f"found {type(value).__name__}"
            )
        return value

    def _sse(self, line_no: int, line: bytes) -> Iterator[AnyEvent]:
        line = line.lstrip()
        if not line:
            if self._pending:
                self._unfinished()
            return
        if line.startswith(b":"):
            return
        field = _sse_field(line)
        if field is None:
            raise InputError(
                f"{self.name}:{line_no}: not a server-sent-event line "
                "(expected 'data:', 'event:' or a ': comment')"
            )
        if field != b"data":
            if self._pending:
                self._unfinished()
            return

        value = line[5:].removeprefix(b" ")
        if not self._pending and value.strip() == b"[DONE]":
            if self._stream is not None:
                self._stream.done()
            yield from self._flush()
            return
        if self._pending:
            # The SSE format lets one value span several data lines.
            self._pending.append(value)
            value = b"\n".join(self._pending)
        try:
            decoded = decode_json(value)
        except msgspec.DecodeError:
            if not self._pending:
                self._pending = [value]
                self._pending_line = line_no
            return
        start = self._pending_line if self._pending else line_no
        self._pending = []
        if not isinstance(decoded, dict):
            raise InputError(
                f"{self.name}:{start}: expected a JSON object in the data line, "
                f"found {type(decoded).__name__}"
            )
        yield from self._chunk(start, decoded)

    def _unfinished(self) -> None:
        data = b"\n".join(self._pending)
        try:
            decode_json(data)
        except msgspec.DecodeError as exc:
            raise InputError(
                f"{self.name}:{self._pending_line}: not valid JSON: {exc}"
            ) from None

    # -- calls -------------------------------------------------------------

    def _take(self, line_no: int, obj: Mapping[str, Any]) -> Iterator[AnyEvent]:
        """Account one decoded object of a JSON body or JSON Lines input."""
        if self._is_chunk(obj):
            yield from self._chunk(line_no, obj)
            return
        yield from self._flush()
        if error_message(obj) is not None and not any(
            key in obj for key in ("choices", "output", "usage")
        ):
            # A recorded failed request: no answer and nothing billed.
            self._calls += 1
            yield self._warning(line_no, f"an error response: {error_message(obj)}")
            return
        try:
            call = self._body_call(obj)
        except ResponseShapeError as exc:
            raise InputError(f"{self.name}:{line_no}: {exc}") from None
        yield from self._emit(call, line_no)

    def _chunk(self, line_no: int, obj: Mapping[str, Any]) -> Iterator[AnyEvent]:
        stream = self._stream
        response_id = self._stream_type.response_id_of(obj)
        if (
            stream is not None
            and response_id is not None
            and stream.response_id is not None
            and response_id != stream.response_id
        ):
            yield from self._flush()
            stream = None
        if stream is None:
            stream = self._stream = self._stream_type()
        try:
            stream.add(obj)
        except ResponseShapeError as exc:
            raise InputError(f"{self.name}:{line_no}: {exc}") from None
        if isinstance(stream, ResponsesStream) and stream.complete:
            yield from self._flush()

    def _flush(self) -> Iterator[AnyEvent]:
        stream = self._stream
        if stream is None:
            return
        self._stream = None
        yield from self._emit(stream.result(), None)

    def _emit(self, call: Call, line_no: int | None) -> Iterator[AnyEvent]:
        self._calls += 1
        response_id = call.response_id
        if response_id is not None:
            if response_id in self._emitted:
                logger.debug("%s: response %s repeated", self.name, response_id)
                return
            self._emitted.add(response_id)
        if call.model and self.meta.model is None:
            self.meta.model = call.model

        self.last_assistant = call.text
        yield Message(
            role="assistant",
            content=call.text,
            model=call.model,
            request_id=response_id,
        )
        yield call.observation
        what = f"response {response_id}" if response_id else "a response"
        if call.error is not None:
            yield self._warning(line_no, f"{what} reports an error: {call.error}")
        elif not call.complete and not call.observation.known:
            yield self._warning(
                line_no, f"the stream of {what} ends early; its usage is unknown"
            )

    def _warning(self, line_no: int | None, message: str) -> Progress:
        where = self.name if line_no is None else f"{self.name}:{line_no}"
        return Progress(kind="ingest", phase="warning", message=f"{where}: {message}")


class OpenAIChatParser(_OpenAIParser):
    """The ingest parser for recorded Chat Completions responses.

    Takes one response body (pretty-printed or not), JSON Lines of bodies or
    of stream chunks, or a captured server-sent-event stream; yields one
    ``message`` and one ``usage.observed`` per response id.
    """

    source = CHAT_SOURCE
    _stream_type = ChatStream

    def _is_chunk(self, obj: Mapping[str, Any]) -> bool:
        kind = obj.get("object")
        if kind in ("chat.completion.chunk", "chat.completion"):
            return bool(kind == "chat.completion.chunk")
        # Azure starts a stream with a chunk that names no object and has no
        # choices (its prompt filter results): it is part of the stream, not
        # a response of its own.  A body without an object has messages.
        choices = obj.get("choices")
        return isinstance(choices, list) and not any(
            isinstance(choice, Mapping) and "message" in choice for choice in choices
        )

    def _body_call(self, obj: object) -> Call:
        return chat_call(obj)


class OpenAIResponsesParser(_OpenAIParser):
    """The ingest parser for recorded Responses API responses.

    Takes the same forms of input as :class:`OpenAIChatParser`; a stream's
    call ends at its ``response.completed`` (or failed, incomplete) event.
    """

    source = RESPONSES_SOURCE
    _stream_type = ResponsesStream

    def _is_chunk(self, obj: Mapping[str, Any]) -> bool:
        return isinstance(obj.get("type"), str) and obj.get("object") != "response"

    def _body_call(self, obj: object) -> Call:
        return responses_call(obj)
