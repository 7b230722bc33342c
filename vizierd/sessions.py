"""Sessions: one run (an ``ask``, one ingested input) from start to outcome.

:func:`run_session` is the single place a session is driven: it publishes
``session.started``, lets a *producer* (an ingest parser loop, a model call)
publish the session's events through a :class:`SessionHandle`, and then
publishes the ``outcome`` and ``session.ended`` whatever happened.  The same
code runs in the daemon and in process (``--no-daemon``).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import msgspec

from vizierd.bus import Bus
from vizierd.errors import VizierError
from vizierd.events import (
    AnyEvent,
    DedupRecord,
    ErrorInfo,
    Message,
    MessageRecord,
    ModelInfo,
    Outcome,
    OutcomeDoc,
    Progress,
    RepoInfo,
    SessionDoc,
    SessionEnded,
    SessionRef,
    SessionStarted,
    TextDelta,
    TokenUsage,
    UsageObserved,
    utcnow,
)
from vizierd.ledger import Ledger
from vizierd.paths import check_session_id

__all__ = [
    "SessionHandle",
    "SessionSpec",
    "load_session_doc",
    "new_session_id",
    "project_root",
    "repo_info",
    "run_session",
    "session_path",
]

logger = logging.getLogger(__name__)


def new_session_id() -> str:
    """Return a new session id: sortable by start time, unique by chance."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def project_root(cwd: str) -> Path:
    """Return the git root above ``cwd``, else ``cwd`` itself."""
    path = Path(cwd).resolve()
    for candidate in (path, *path.parents):
        if (candidate / ".git").exists():
            return candidate
    return path


def repo_info(root: Path) -> RepoInfo:
    """Return the branch and head commit of the git repo at ``root``, if any.

    Reads ``.git/HEAD`` directly rather than running git: it is cheap, and a
    machine without git still gets its sessions written.
    """
    info = RepoInfo(root=str(root))
    head_file = root / ".git" / "HEAD"
    try:
        head = head_file.read_text().strip()
    except OSError:
        return info
    if head.startswith("ref: "):
        ref = head[5:]
        info.branch = ref.removeprefix("refs/heads/")
        try:
            info.head = (root / ".git" / ref).read_text().strip() or None
        except OSError:
            info.head = _packed_ref(root, ref)
    else:
        info.head = head or None
    return info


def _packed_ref(root: Path, ref: str) -> str | None:
    try:
        lines = (root / ".git" / "packed-refs").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        sha, _, name = line.partition(" ")
        if name == ref:
            return sha
    return None


def session_path(root: Path, session_id: str) -> Path:
    """Return where the session log of ``session_id`` lives under ``root``.

    Raises :class:`~vizierd.errors.UsageError` for an id that cannot name a
    folder there (one holding ``/`` or ``..``): a session log is never
    written outside ``root/.vizier/sessions``.
    """
    return root / ".vizier" / "sessions" / check_session_id(session_id) / "session.json"


_doc_decoder = msgspec.json.Decoder(SessionDoc)


def load_session_doc(path: Path) -> SessionDoc | None:
    """Return the session log at ``path``, or ``None`` if there is none.

    Raises :class:`VizierError` when the file exists but is not a valid
    session log.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VizierError(f"cannot read session log {path}: {exc}") from exc
    try:
        return _doc_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise VizierError(f"session log {path} is damaged: {exc}") from exc


class SessionSpec(msgspec.Struct, kw_only=True):
    """What a client asks for when it starts a session."""

    action: str
    source: str
    cwd: str
    session_id: str | None = None
    model: str | None = None
    provider: str | None = None
    client_pid: int | None = None
    input: str | None = None
    #: Continue the session's saved state (``ask --session``, re-ingest).
    resume: bool = True


class SessionHandle:
    """What a producer uses to publish its session's events.

    ``history`` holds the messages of the session so far when it is being
    continued.  A producer sets ``summary`` (the final assistant text) and
    ``model`` as it learns them.
    """

    def __init__(
        self,
        bus: Bus,
        session_id: str,
        path: Path,
        history: list[MessageRecord],
    ) -> None:
        self.bus = bus
        self.session_id = session_id
        self.path = path
        self.history = history
        self.summary: str | None = None
        self.model: str | None = None
        self.waiting_for_parent: str | None = None

    async def publish(self, event: AnyEvent) -> None:
        """Publish ``event`` as part of this session."""
        event.session_id = self.session_id
        await self.bus.publish(event)

    async def message(
        self,
        role: str,
        content: str,
        *,
        model: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Publish one message of the conversation."""
        await self.publish(
            Message(
                role=role,  # type: ignore[arg-type]
                content=content,
                model=model,
                request_id=request_id,
            )
        )

    async def text(self, delta: str) -> None:
        """Publish a chunk of streamed assistant text."""
        await self.publish(TextDelta(text=delta))

    async def observe(self, observation: UsageObserved) -> None:
        """Publish one usage observation."""
        await self.publish(observation)

    async def progress(
        self, kind: str, phase: str, message: str, detail: str | None = None
    ) -> None:
        """Publish a progress line."""
        await self.publish(
            Progress(kind=kind, phase=phase, message=message, detail=detail)
        )


Producer = Callable[[SessionHandle], Awaitable[None]]


def _check_writable(folder: Path) -> None:
    """Raise :class:`OSError` unless a session log can be written in ``folder``.

    Checked before a session starts, so that a session whose log cannot be
    written fails at once instead of reporting success without a record.
    """
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
    probe.touch()
    probe.unlink()


def _resumable(doc: SessionDoc) -> bool:
    """Return whether a saved session can be continued from its saved state.

    The dedup state is saved when a session ends.  A session cut short by a
    crash has totals on disk but no state to go with them; continuing from
    it would count its calls again, so such a session starts over instead
    (an ingest then recounts its whole input).
    """
    usage = doc.outcome.token_usage
    if usage is None or usage.calls == 0:
        return True
    return bool(doc.dedup.state.get("calls") or doc.dedup.state.get("cumulative"))


async def run_session(
    bus: Bus,
    ledger: Ledger,
    spec: SessionSpec,
    producer: Producer,
    on_start: Callable[[str], None] | None = None,
) -> OutcomeDoc:
    """Run one session from ``session.started`` to ``session.ended``.

    ``on_start`` is called with the session id just before the session's
    first event is published (a client stream uses it to pick its events).

    The producer's :class:`VizierError` becomes an ``error`` outcome with its
    message; cancellation (Ctrl-C, daemon shutdown) becomes ``interrupted``
    and is re-raised once the outcome is published.  Returns the outcome.
    """
    started = utcnow()
    clock = time.monotonic()
    root = project_root(spec.cwd)
    session_id = spec.session_id or new_session_id()
    path = session_path(root, session_id)

    try:
        await anyio.to_thread.run_sync(_check_writable, path.parent)
    except OSError as exc:
        raise VizierError(
            f"cannot write the session log in {path.parent}: {exc.strerror or exc}"
        ) from exc
    previous = await anyio.to_thread.run_sync(load_session_doc, path)
    resume_dedup: DedupRecord | None = None
    resume_usage: TokenUsage | None = None
    history: list[MessageRecord] = []
    if previous is not None and spec.resume and _resumable(previous):
        resume_dedup = previous.dedup
        resume_usage = previous.outcome.token_usage
        history = previous.messages

    handle = SessionHandle(bus, session_id, path, history)
    handle.model = spec.model
    if on_start is not None:
        on_start(session_id)
    await handle.publish(
        SessionStarted(
            action=spec.action,
            source=spec.source,
            cwd=spec.cwd,
            project_root=str(root),
            model=spec.model,
            client_pid=spec.client_pid,
            path=str(path),
            resume_dedup=resume_dedup,
            resume_usage=resume_usage,
            input=spec.input,
        )
    )
    logger.info("session %s started (%s, %s)", session_id, spec.action, spec.source)

    status = "ok"
    error: ErrorInfo | None = None
    exit_code = 0
    cancelled: BaseException | None = None
    try:
        await producer(handle)
    except VizierError as exc:
        status, exit_code = "error", exc.exit_code
        error = ErrorInfo(kind=exc.kind, message=str(exc))
    except anyio.get_cancelled_exc_class() as exc:
        status, exit_code = "interrupted", 130
        error = ErrorInfo(kind="interrupted", message="interrupted")
        cancelled = exc
    except Exception as exc:
        # A bug in a producer must still end the session cleanly on disk.
        logger.exception("session %s failed unexpectedly", session_id)
        status, exit_code = "error", 1
        error = ErrorInfo(kind="internal", message=f"{type(exc).__name__}: {exc}")

    outcome = OutcomeDoc(
        action=spec.action,
        status=status,  # type: ignore[arg-type]
        exit_code=exit_code,
        session=SessionRef(id=session_id, path=str(path)),
        started_at=started,
        elapsed_ms=int((time.monotonic() - clock) * 1000),
        model=ModelInfo(provider=spec.provider, name=handle.model)
        if handle.model
        else None,
        summary=handle.summary,
        token_usage=ledger.usage(session_id),
        error=error,
    )

    # The ending must be published even while being cancelled, or the
    # session log would be left "running".
    with anyio.CancelScope(shield=True):
        await handle.publish(Outcome(outcome=outcome))
        await handle.publish(
            SessionEnded(
                status=outcome.status,
                waiting_for_parent=handle.waiting_for_parent,
            )
        )
    logger.info("session %s ended: %s", session_id, outcome.status)
    if cancelled is not None:
        raise cancelled
    return outcome
