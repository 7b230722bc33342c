"""The wire format of OpenAI's APIs: Chat Completions and the Responses API.

This is the one parsing core for OpenAI traffic.  The live ``ask`` backend
feeds it the responses and stream chunks it receives, and the ingest parsers
(:mod:`vizierd.ingest.openai`) feed it recorded ones, so a response is
accounted the same way whichever path it takes:

* :func:`chat_usage` and :func:`responses_usage` map a ``usage`` object onto
  a :class:`~vizierd.events.UsageObserved`.  A count the server did not send
  is ``None``, never 0, and only the documented keys are read: a sibling
  block such as the Responses API's ``tool_usage`` is never mistaken for the
  usage.
* :class:`ChatStream` and :class:`ResponsesStream` accumulate one streamed
  response.  Usage in a stream is a snapshot, not an increment: the last one
  seen wins and chunks are never summed.
* :func:`chat_call` and :func:`responses_call` read one whole response body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from vizierd.events import UsageObserved

__all__ = [
    "Call",
    "ChatStream",
    "ResponseShapeError",
    "ResponsesStream",
    "chat_call",
    "chat_usage",
    "decode_json",
    "error_message",
    "responses_call",
    "responses_usage",
]

logger = logging.getLogger(__name__)

CHAT_SOURCE = "openai-chat"
RESPONSES_SOURCE = "openai-responses"

# The keys each API uses, in the order prompt, completion, total, then
# (details object, key) for cached prompt and reasoning tokens.
_CHAT_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    ("prompt_tokens_details", "cached_tokens"),
    ("completion_tokens_details", "reasoning_tokens"),
)
_RESPONSES_KEYS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    ("input_tokens_details", "cached_tokens"),
    ("output_tokens_details", "reasoning_tokens"),
)

# Events after which a Responses stream has nothing more to say.
_RESPONSES_TERMINAL = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "error"}
)

decode_json = msgspec.json.Decoder().decode


class ResponseShapeError(ValueError):
    """A response, stream chunk or usage object is not shaped as the API says.

    The ingest parsers turn it into :class:`~vizierd.errors.InputError`
    naming the line; the live backend into a
    :class:`~vizierd.errors.BackendError`.
    """


# --- usage -----------------------------------------------------------------


def _count(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ResponseShapeError(f"{where}.{key} is not an integer: {value!r}")
    if value < 0:
        raise ResponseShapeError(f"{where}.{key} is negative: {value}")
    return value


def _details(usage: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = usage.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ResponseShapeError(f"usage.{key} is not an object")
    return value


def _map_usage(
    source: str,
    keys: tuple[Any, ...],
    usage: object,
    request_id: str | None,
    model: str | None,
) -> UsageObserved:
    if usage is None:
        return UsageObserved(
            source=source, request_id=request_id, model=model, known=False
        )
    if not isinstance(usage, Mapping):
        raise ResponseShapeError("usage is not an object")

    prompt_key, completion_key, total_key, cached, reasoning = keys
    counts = (
        _count(usage, prompt_key, "usage"),
        _count(usage, completion_key, "usage"),
        _count(usage, total_key, "usage"),
        _count(_details(usage, cached[0]), cached[1], f"usage.{cached[0]}"),
        _count(_details(usage, reasoning[0]), reasoning[1], f"usage.{reasoning[0]}"),
    )
    # A usage object without a single count (``{}``) reports nothing: the
    # call is unknown, not free.
    known = any(count is not None for count in counts)
    return UsageObserved(
        source=source,
        request_id=request_id,
        model=model,
        scope="call",
        prompt_tokens=counts[0],
        completion_tokens=counts[1],
        total_tokens=counts[2],
        cached_prompt_tokens=counts[3],
        reasoning_tokens=counts[4],
        known=known,
    )


def chat_usage(
    usage: object, *, request_id: str | None = None, model: str | None = None
) -> UsageObserved:
    """Map a Chat Completions ``usage`` object onto one call's observation.

    ``usage`` is the decoded object, or ``None`` when the response had none.
    Returns an observation with ``known=False`` when there is no usage.
    Raises :class:`ResponseShapeError` when a count is not a non-negative
    integer or an object is not an object.
    """
    return _map_usage(CHAT_SOURCE, _CHAT_KEYS, usage, request_id, model)


def responses_usage(
    usage: object, *, request_id: str | None = None, model: str | None = None
) -> UsageObserved:
    """Map a Responses API ``usage`` object onto one call's observation.

    Returns and raises like :func:`chat_usage`.
    """
    return _map_usage(RESPONSES_SOURCE, _RESPONSES_KEYS, usage, request_id, model)


# --- one call --------------------------------------------------------------


class Call(msgspec.Struct, kw_only=True):
    """What one model call came to: its answer text and its usage.

    ``complete`` is false for a stream that ended before the response did;
    ``error`` holds the message of an error the response reported.
    """

    response_id: str | None
    model: str | None
    text: str
    observation: UsageObserved
    complete: bool = True
    error: str | None = None


def _text_field(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ResponseShapeError(f"{key} is not a string: {value!r}")
    return value


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ResponseShapeError(f"{what} is not an object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ResponseShapeError(f"{what} is not a list")
    return value


def _content_text(content: object, what: str) -> str:
    """Return the text of a message's ``content``: a string or a parts list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in _list(content, what):
        if isinstance(part, Mapping) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def error_message(body: Mapping[str, Any]) -> str | None:
    error = body.get("error")
    if error is None:
        return None
    if isinstance(error, Mapping):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
        code = error.get("code")
        return f"error {code}" if code else "an unnamed error"
    return str(error)


def chat_call(body: object) -> Call:
    """Read one whole Chat Completions response body.

    Returns the :class:`Call`: the first choice's message text, and the
    usage (unknown when the body has none).  Raises
    :class:`ResponseShapeError` when ``body`` is not a Chat Completions
    response.
    """
    body = _object(body, "the response")
    if body.get("object") == "response":
        raise ResponseShapeError(
            "this is a Responses API response, not a Chat Completions one"
        )
    if "choices" not in body:
        raise ResponseShapeError("not a Chat Completions response: no 'choices'")
    text = ""
    for choice in _list(body["choices"], "choices"):
        choice = _object(choice, "a choice")
        if choice.get("index", 0) == 0:
            message = _object(choice.get("message") or {}, "choices[].message")
            text = _content_text(message.get("content"), "message.content")
            break
    response_id = _text_field(body, "id")
    model = _text_field(body, "model")
    return Call(
        response_id=response_id,
        model=model,
        text=text,
        observation=chat_usage(body.get("usage"), request_id=response_id, model=model),
    )


def _output_text(response: Mapping[str, Any]) -> str:
    parts = []
    for item in _list(response.get("output"), "output"):
        item = _object(item, "an output item")
        if item.get("type") != "message":
            continue
        for part in _list(item.get("content"), "output[].content"):
            if isinstance(part, Mapping) and part.get("type") == "output_text":
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
    return "".join(parts)


def responses_call(body: object) -> Call:
    """Read one whole Responses API response body.

    Returns the :class:`Call`: the text of every ``output_text`` part of the
    output messages, and the usage (unknown when the body has none).
    Raises :class:`ResponseShapeError` when ``body`` is not a Responses API
    response.
    """
    body = _object(body, "the response")
    if body.get("object") != "response" and "output" not in body:
        if "choices" in body:
            raise ResponseShapeError(
                "this is a Chat Completions response, not a Responses API one"
            )
        raise ResponseShapeError("not a Responses API response: no 'output'")
    response_id = _text_field(body, "id")
    model = _text_field(body, "model")
    status = body.get("status")
    return Call(
        response_id=response_id,
        model=model,
        text=_output_text(body),
        observation=responses_usage(
            body.get("usage"), request_id=response_id, model=model
        ),
        complete=status not in ("in_progress", "queued"),
        error=error_message(body) if status == "failed" else None,
    )


# --- streams ---------------------------------------------------------------


class _Stream:
    """What both stream accumulators share."""

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.model: str | None = None
        #: How many chunks (events) were added.
        self.chunks = 0
        #: The stream said it is over: ``[DONE]``, a finish reason, a final event.
        self.complete = False
        self.error: str | None = None
        self._parts: list[str] = []
        self._usage: Mapping[str, Any] | None = None

    @property
    def text(self) -> str:
        """The answer text received so far."""
        return "".join(self._parts)

    @property
    def usage_seen(self) -> bool:
        """Whether a usage object arrived."""
        return self._usage is not None

    def done(self) -> None:
        """Note the stream's ``data: [DONE]`` line."""
        self.complete = True

    def observation(self) -> UsageObserved:
        """Return the call's observation: the last usage seen, or unknown."""
        raise NotImplementedError

    def result(self) -> Call:
        """Return the :class:`Call` the stream came to so far."""
        return Call(
            response_id=self.response_id,
            model=self.model,
            text=self.text,
            observation=self.observation(),
            complete=self.complete,
            error=self.error,
        )

    def _identify(self, obj: Mapping[str, Any]) -> None:
        # Some servers (Azure's content-filter chunk) send an empty id and
        # model first: only a real value names the response.
        response_id = _text_field(obj, "id")
        if response_id is not None and self.response_id is None:
            self.response_id = response_id
        model = _text_field(obj, "model")
        if model is not None:
            self.model = model


class ChatStream(_Stream):
    """Accumulates one streamed Chat Completions response.

    Feed it every chunk with :meth:`add`.  Usage may ride on any chunk, also
    one carrying content or a finish reason; vLLM sends a running usage on
    every chunk.  The last usage object wins.  A chunk whose ``usage`` is
    null or absent is not a usage chunk.
    """

    @staticmethod
    def response_id_of(chunk: Mapping[str, Any]) -> str | None:
        """Return the response id a chunk names, if it names one."""
        value = chunk.get("id")
        return value if isinstance(value, str) and value else None

    def add(self, chunk: object) -> str:
        """Account one chunk; return the answer text it adds (maybe ``""``).

        Raises :class:`ResponseShapeError` when the chunk is not a Chat
        Completions chunk.
        """
        chunk = _object(chunk, "the chunk")
        kind = chunk.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            raise ResponseShapeError(
                "this is a Responses API stream event, not a Chat Completions chunk"
            )
        self.chunks += 1
        self._identify(chunk)

        error = error_message(chunk)
        if error is not None:
            self.error = error
            self.complete = True

        added = ""
        for choice in _list(chunk.get("choices"), "choices"):
            choice = _object(choice, "a choice")
            if choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason") is not None:
                self.complete = True
            delta = choice.get("delta")
            if delta is None:
                continue
            content = _object(delta, "choices[].delta").get("content")
            if content:
                added = _content_text(content, "delta.content")
                self._parts.append(added)

        usage = chunk.get("usage")
        if usage is not None:
            chat_usage(usage)  # reject a malformed one here, at its own chunk
            self._usage = usage
        return added

    def observation(self) -> UsageObserved:
        """Return the call's observation: the last usage seen, or unknown."""
        return chat_usage(self._usage, request_id=self.response_id, model=self.model)


class ResponsesStream(_Stream):
    """Accumulates one streamed Responses API response.

    Feed it every event with :meth:`add`.  The text is the
    ``response.output_text.delta`` deltas; the usage is that of the last
    event carrying a non-null ``response.usage`` (``response.completed``;
    the earlier lifecycle events carry ``"usage": null``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._final_text = ""

    @staticmethod
    def response_id_of(event: Mapping[str, Any]) -> str | None:
        """Return the response id an event names, if it names one."""
        response = event.get("response")
        if isinstance(response, Mapping):
            value = response.get("id")
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def text(self) -> str:
        """The answer text received so far."""
        # A stream without text deltas still has the text in its final
        # response object.
        return "".join(self._parts) or self._final_text

    def add(self, event: object) -> str:
        """Account one event; return the answer text it adds (maybe ``""``).

        Raises :class:`ResponseShapeError` when the event is not a Responses
        API stream event.
        """
        event = _object(event, "the event")
        kind = event.get("type")
        if not isinstance(kind, str):
            if "choices" in event:
                raise ResponseShapeError(
                    "this is a Chat Completions chunk, not a Responses API event"
                )
            raise ResponseShapeError("the event has no 'type'")
        self.chunks += 1

        response = event.get("response")
        if response is not None:
            response = _object(response, f"{kind}: response")
            self._identify(response)
            usage = response.get("usage")
            if usage is not None:
                responses_usage(usage)  # reject a malformed one at its own event
                self._usage = usage
            if kind in _RESPONSES_TERMINAL:
                self._final_text = _output_text(response)
                if kind == "response.failed":
                    self.error = error_message(response) or "the response failed"

        if kind in _RESPONSES_TERMINAL:
            self.complete = True
        if kind == "error":
            message = event.get("message")
            self.error = message if isinstance(message, str) else "a stream error"
        if kind == "response.output_text.delta":
            delta = event.get("delta")
            if isinstance(delta, str) and delta:
                self._parts.append(delta)
                return delta
        return ""

    def observation(self) -> UsageObserved:
        """Return the call's observation: the last usage seen, or unknown."""
        return responses_usage(
            self._usage, request_id=self.response_id, model=self.model
        )
