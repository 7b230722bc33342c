"""``vizier ask`` against any OpenAI-compatible API, with the official SDK.

One :func:`run_ask` is one model call, by Chat Completions (streamed or
not) or by the Responses API.  The answer is published as it arrives, and
the call is accounted by the same parsing core that ingests recorded
responses (:mod:`vizierd.ingest.openai_wire`): the SDK's chunks and responses are
turned back into the API's JSON and fed to it, so a live call and its
recording give the same figures.

A failed call becomes a :class:`~vizierd.errors.BackendError` whose message
is one line naming what failed and where.  The API key never appears in a
message, a progress line or a log line.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec
import openai

from vizierd.errors import BackendError, ConfigError
from vizierd.events import MessageRecord
from vizierd.ingest.openai_wire import (
    Call,
    ChatStream,
    ResponseShapeError,
    ResponsesStream,
    chat_call,
    responses_call,
)
from vizierd.protocol import AskRequest
from vizierd.sessions import SessionHandle

__all__ = ["run_ask"]

logger = logging.getLogger(__name__)

_SENDABLE_ROLES = ("system", "user", "assistant")
_DETAIL_LIMIT = 300


async def run_ask(handle: SessionHandle, req: AskRequest) -> None:
    """Ask ``req.prompt`` as the next turn of ``handle``'s session.

    The earlier messages of the session are sent again, then the system
    prompt (unless the session already has it) and the prompt.  Publishes
    the new ``system``/``user`` messages, the answer as ``text.delta``
    events while it streams, then the ``assistant`` message and exactly one
    ``usage.observed`` for the call.  Sets ``handle.summary`` to the answer
    and ``handle.model`` to the model that answered.

    Returns ``None``.  Raises :class:`ConfigError` when the SDK cannot be
    set up (no API key), and :class:`BackendError` when the call fails:
    refused, timed out, rejected (401, 404, 429, 5xx after the SDK's
    retries), or a stream cut off mid-way; the text received until then is
    published first.  Cancellation publishes the partial answer, then
    propagates.
    """
    messages, new = _conversation(handle.history, req)
    for role, content in new:
        await handle.message(role, content)

    async with _client(req) as client:
        call = await _Ask(handle, req, client).run(messages)

    handle.summary = call.text
    handle.model = call.model or req.model


def _conversation(
    history: list[MessageRecord], req: AskRequest
) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """Return the messages to send, and which of them are new to the session."""
    # A tool message cannot be sent without the tool call it answers, which
    # the session log does not keep; an empty assistant message (an answer
    # interrupted before its first word) says nothing.
    messages = [
        {"role": record.role, "content": record.content}
        for record in history
        if record.role in _SENDABLE_ROLES
        and (record.content or record.role != "assistant")
    ]
    new: list[tuple[str, str]] = []
    if req.system and not any(
        record.role == "system" and record.content == req.system for record in history
    ):
        new.append(("system", req.system))
    new.append(("user", req.prompt))
    messages += [{"role": role, "content": content} for role, content in new]
    return messages, new


def _client(req: AskRequest) -> openai.AsyncOpenAI:
    timeout = openai.DEFAULT_TIMEOUT if req.timeout is None else req.timeout
    retries = openai.DEFAULT_MAX_RETRIES if req.max_retries is None else req.max_retries
    try:
        return openai.AsyncOpenAI(
            api_key=req.api_key,
            base_url=req.base_url,
            timeout=timeout,
            max_retries=retries,
        )
    except openai.OpenAIError as exc:
        # The SDK refuses to start without a key (from the request or
        # OPENAI_API_KEY); its message names no secret.
        where = _public_url(req.base_url) if req.base_url else "the OpenAI API"
        raise ConfigError(
            f"cannot call {where}: {_one_line(_redact(str(exc), req.api_key))}"
        ) from None


class _Ask:
    """One model call: makes it, follows its stream, maps its failures."""

    def __init__(
        self, handle: SessionHandle, req: AskRequest, client: openai.AsyncOpenAI
    ) -> None:
        self.handle = handle
        self.req = req
        self.client = client
        self.where = _public_url(str(client.base_url))
        #: The stream being read, so that a failure can keep what came.
        self.stream: ChatStream | ResponsesStream | None = None
        self._recorded = False

    async def run(self, messages: list[dict[str, str]]) -> Call:
        """Make the call and record it; return what it came to.

        Raises :class:`BackendError` as :func:`run_ask` describes.
        """
        try:
            call = await self._call(messages)
        except anyio.get_cancelled_exc_class():
            await self._record_partial()
            raise
        except openai.APIError as exc:
            mid_stream = self._streaming()
            await self._record_partial()
            raise self._error(exc, mid_stream=mid_stream) from exc
        except ResponseShapeError as exc:
            await self._record_partial()
            raise BackendError(
                self._redact(f"{self.where} sent a malformed response: {exc}")
            ) from exc

        await self._record(call)
        if call.error is not None:
            raise BackendError(
                self._redact(f"{self.where} reported an error: {call.error}")
            )
        # A usage chunk comes last: a stream that delivered one was not cut,
        # even if the server never sent a finish reason.
        if not call.complete and not call.observation.known:
            if self.stream is not None and self.stream.chunks == 0:
                raise BackendError(
                    f"{self.where} answered without a single stream event: "
                    "is it an OpenAI-compatible API?"
                )
            raise BackendError(
                f"the stream from {self.where} was cut off mid-way: it ended "
                "before the answer was complete"
            )
        return call

    # -- the four kinds of call --------------------------------------------

    async def _call(self, messages: list[dict[str, str]]) -> Call:
        if self.req.api == "responses":
            if self.req.stream:
                return await self._responses_stream(messages)
            return await self._responses_once(messages)
        if self.req.stream:
            return await self._chat_stream(messages)
        return await self._chat_once(messages)

    async def _chat_once(self, messages: list[dict[str, str]]) -> Call:
        completion = await self.client.chat.completions.create(
            model=self.req.model, messages=cast(Any, messages)
        )
        call = chat_call(_as_json(completion))
        if call.text:
            await self.handle.text(call.text)
        return call

    async def _chat_stream(self, messages: list[dict[str, str]]) -> Call:
        try:
            stream = await self._open_chat_stream(messages, with_usage=True)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            # Not every OpenAI-compatible server knows stream_options; such
            # a server answers without usage, which is then unknown.
            await self.handle.progress(
                "ask",
                "retry",
                f"{self.where} refused the request with stream_options "
                f"(HTTP {exc.status_code}); retrying once without it",
                self._redact(_detail(exc)),
            )
            stream = await self._open_chat_stream(messages, with_usage=False)

        accumulator = self.stream = ChatStream()
        async with stream:
            async for chunk in stream:
                text = accumulator.add(_as_json(chunk))
                if text:
                    await self.handle.text(text)
        return accumulator.result()

    async def _open_chat_stream(
        self, messages: list[dict[str, str]], *, with_usage: bool
    ) -> openai.AsyncStream[Any]:
        if with_usage:
            return await self.client.chat.completions.create(
                model=self.req.model,
                messages=cast(Any, messages),
                stream=True,
                stream_options={"include_usage": True},
            )
        return await self.client.chat.completions.create(
            model=self.req.model, messages=cast(Any, messages), stream=True
        )

    async def _responses_once(self, messages: list[dict[str, str]]) -> Call:
        response = await self.client.responses.create(
            model=self.req.model, input=cast(Any, messages)
        )
        call = responses_call(_as_json(response))
        if call.text:
            await self.handle.text(call.text)
        return call

    async def _responses_stream(self, messages: list[dict[str, str]]) -> Call:
        stream = await self.client.responses.create(
            model=self.req.model, input=cast(Any, messages), stream=True
        )
        accumulator = self.stream = ResponsesStream()
        async with stream:
            async for event in stream:
                text = accumulator.add(_as_json(event))
                if text:
                    await self.handle.text(text)
        return accumulator.result()

    # -- recording ---------------------------------------------------------

    def _streaming(self) -> bool:
        """Whether a stream was opened: the server took the request."""
        return self.stream is not None

    async def _record_partial(self) -> None:
        """Keep the answer of a stream that broke off, with what usage came."""
        if self.stream is not None:
            await self._record(self.stream.result())

    async def _record(self, call: Call) -> None:
        """Publish the call's assistant message and its one observation."""
        if self._recorded:
            return
        self._recorded = True
        # Every HTTP call made here is a distinct call, even when a server
        # reuses response ids (Ollama draws them from a thousand): the id is
        # made unique per call, so the dedup stage never mistakes one call
        # for a repeat of another.
        request_id = f"{call.response_id or 'call'}~{secrets.token_hex(4)}"
        observation = msgspec.structs.replace(call.observation, request_id=request_id)
        # Shielded: a cancellation arriving between the two events must not
        # keep the message and lose the usage.
        with anyio.CancelScope(shield=True):
            await self.handle.message(
                "assistant",
                call.text,
                model=call.model,
                request_id=request_id,
            )
            await self.handle.observe(observation)

    # -- failures ----------------------------------------------------------

    def _error(self, exc: openai.APIError, *, mid_stream: bool) -> BackendError:
        """Return the one-line error for a failed SDK call."""
        where = self.where
        retries = _retries(self.client.max_retries)
        if isinstance(exc, openai.APITimeoutError):
            after = _seconds(self.req.timeout)
            if mid_stream:
                message = f"the stream from {where} stalled and timed out{after}"
            else:
                message = f"the request to {where} timed out{after}{retries}"
        elif isinstance(exc, openai.APIConnectionError):
            reason = _cause(exc)
            if mid_stream:
                message = f"the stream from {where} was cut off mid-way ({reason})"
            else:
                message = f"cannot connect to {where} ({reason}){retries}"
        elif isinstance(exc, openai.AuthenticationError):
            message = (
                f"{where} rejected the API key (HTTP 401): check OPENAI_API_KEY "
                f"({_detail(exc)})"
            )
        elif isinstance(exc, openai.NotFoundError):
            message = (
                f"model {self.req.model!r} not found at {where} (HTTP 404): "
                f"{_detail(exc)}"
            )
        elif isinstance(exc, openai.RateLimitError):
            message = f"{where} is rate-limiting requests (HTTP 429){retries}: "
            message += _detail(exc)
        elif isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status >= 500:
                message = f"{where} failed with HTTP {status}{retries}: {_detail(exc)}"
            else:
                message = f"{where} refused the request (HTTP {status}): "
                message += _detail(exc)
        elif mid_stream:
            # An error the server sent inside a stream it had begun.
            message = f"{where} reported an error mid-stream: {_detail(exc)}"
        else:
            message = f"the request to {where} failed: {_detail(exc)}"
        return BackendError(self._redact(message))

    def _redact(self, text: str) -> str:
        return _redact(text, self.req.api_key)


def _as_json(obj: object) -> object:
    """Return an SDK object as the JSON object the API sent.

    Only the keys the server set are kept, so a count the server left out
    stays missing rather than becoming the model's default.
    """
    if isinstance(obj, Mapping):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict(warnings=False)
    return obj


def _detail(exc: openai.APIError) -> str:
    """Return the server's own error message, on one short line."""
    message: object = None
    body = exc.body
    if isinstance(body, Mapping):
        message = body.get("message")
        error = body.get("error")
        if not message and isinstance(error, Mapping):
            message = error.get("message")
        elif not message and isinstance(error, str):
            message = error
    if not isinstance(message, str) or not message:
        message = exc.message
    return _one_line(message)


def _cause(exc: BaseException) -> str:
    """Return the innermost reason an exception names, for a network error."""
    reason = ""
    seen: BaseException | None = exc
    for _ in range(8):  # exception chains can loop
        if seen is None:
            break
        text = str(seen)
        if text:
            reason = text
        seen = seen.__cause__ or seen.__context__
    return _one_line(reason) or type(exc).__name__


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 1] + "…"
    return text


def _retries(count: int) -> str:
    if count <= 0:
        return ""
    return f" after {count} {'retry' if count == 1 else 'retries'}"


def _seconds(timeout: float | None) -> str:
    return "" if timeout is None else f" after {timeout:g}s"


_CREDENTIALS = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]+")


def _redact(text: str, secret: str | None) -> str:
    """Return ``text`` without ``secret`` nor any credentials it echoes."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    return _CREDENTIALS.sub(r"\1 [redacted]", text)


def _public_url(url: str) -> str:
    """Return ``url`` without credentials: no user name or password, no query
    string (some gateways take the key there), no trailing slash."""
    parts = urlsplit(url.rstrip("/"))._replace(query="", fragment="")
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    return urlunsplit(parts)
