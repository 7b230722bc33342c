"""What each request does, the same in the daemon and in process.

The daemon's server and the ``--no-daemon`` runner both hand requests to
these functions, so a command behaves the same either way; only where the
events are rendered differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vizierd.errors import InputError, SessionNotFound, UsageError
from vizierd.events import OutcomeDoc
from vizierd.ingest.runner import InputSource, ingest, order_parents_first
from vizierd.pipeline import Pipeline
from vizierd.protocol import AskRequest, IngestRequest
from vizierd.render import Renderer

__all__ = ["codex_home_inputs", "run_ask_request", "run_ingest_request"]

logger = logging.getLogger(__name__)

OnStart = Callable[[str], None]


def codex_home_inputs(home: Path) -> list[Path]:
    """Return every rollout under ``home``/sessions and ``home``/archived_sessions.

    When the same file name is in both, the one under ``sessions`` wins.
    Raises :class:`InputError` when ``home`` has neither folder.
    """
    live = home / "sessions"
    archived = home / "archived_sessions"
    if not live.is_dir() and not archived.is_dir():
        raise InputError(
            f"{home}: not a Codex home (no sessions/ or archived_sessions/ folder)"
        )
    found: dict[str, Path] = {}
    for folder in (archived, live):
        if folder.is_dir():
            for path in sorted(folder.rglob("*.jsonl")):
                found[path.name] = path
    return sorted(found.values())


def _check_cwd(cwd: str) -> None:
    """Raise :class:`UsageError` unless ``cwd`` is an existing absolute folder.

    The session log goes under the project of the client's working folder;
    a request naming a relative or missing one must not make the daemon
    create folders wherever its own working folder happens to be.
    """
    path = Path(cwd)
    if not path.is_absolute() or not path.is_dir():
        raise UsageError(f"the working folder {cwd!r} is not an existing absolute path")


async def run_ingest_request(
    pipeline: Pipeline, req: IngestRequest, on_start: OnStart | None = None
) -> list[OutcomeDoc]:
    """Ingest every input of ``req``, parents before forks; return the outcomes."""
    _check_cwd(req.cwd)
    if req.follow and (req.data is not None or len(req.paths) != 1):
        raise UsageError("--follow takes exactly one file")

    sources: list[InputSource] = []
    if req.data is not None:
        sources.append(InputSource(name="<stdin>", data=req.data))
    paths = [Path(p) for p in req.paths]
    if req.codex_home:
        paths += codex_home_inputs(Path(req.codex_home))
    for path in order_parents_first(paths):
        sources.append(InputSource(name=str(path), path=path, follow=req.follow))
    if not sources:
        raise UsageError(
            "nothing to ingest: name files, '-' for stdin, or --codex-home"
        )

    outcomes = []
    for source in sources:
        outcome = await ingest(
            pipeline,
            source,
            fmt=req.format,
            cwd=req.cwd,
            client_pid=req.client_pid,
            on_start=on_start,
        )
        outcomes.append(outcome)
    return outcomes


async def run_ask_request(
    pipeline: Pipeline, req: AskRequest, on_start: OnStart | None = None
) -> OutcomeDoc:
    """Run one ``ask``; return its outcome.

    Raises :class:`SessionNotFound` when ``req.session`` names no session
    of the client's project, :class:`UsageError` when it names one that is
    not an ``ask`` session or is not a valid id, and :class:`VizierError`
    when its session log cannot be read; no session runs then.
    """
    _check_cwd(req.cwd)
    if req.session is not None:
        await _check_continuable(req.cwd, req.session)

    # Imported only now: the SDK takes most of a second to load.
    from vizierd.backends.openai_backend import run_ask
    from vizierd.sessions import SessionHandle, SessionSpec

    spec = SessionSpec(
        action="ask",
        source="openai-responses" if req.api == "responses" else "openai-chat",
        cwd=req.cwd,
        session_id=req.session,
        model=req.model,
        provider="openai",
        client_pid=req.client_pid,
    )

    async def produce(handle: SessionHandle) -> None:
        await run_ask(handle, req)

    return await pipeline.run(spec, produce, on_start)


async def _check_continuable(cwd: str, session_id: str) -> None:
    """Raise unless ``session_id`` is an ``ask`` session of the project at ``cwd``.

    ``--session`` continues a conversation, so an id that names none is an
    error rather than the start of a new session under that id: a mistyped
    id would otherwise silently start over, without the earlier messages.
    """
    import anyio

    from vizierd.sessions import load_session_doc, project_root, session_path

    path = session_path(project_root(cwd), session_id)
    doc = await anyio.to_thread.run_sync(load_session_doc, path)
    if doc is None:
        raise SessionNotFound(
            f"no session {session_id} to continue: {path} does not exist "
            "(leave out --session to start a new session)"
        )
    if doc.action != "ask":
        raise UsageError(
            f"session {session_id} is an {doc.action} session, not an ask "
            "session: only a conversation started by ask can be continued"
        )


async def run_query(pipeline: Pipeline, req: object) -> object:
    """Answer a request that runs no session (plugins, usage, sessions).

    Returns plain JSON-able data (see :mod:`vizierd.queries`).  The history
    is read in a worker thread, off the event loop.  Raises
    :class:`UsageError` for a request that runs sessions or is malformed
    (a bad ``--since``, an unknown or ambiguous session id).
    """
    from functools import partial

    import anyio

    from vizierd import queries
    from vizierd.protocol import PluginsRequest, SessionsRequest, UsageRequest

    if isinstance(req, PluginsRequest):
        return pipeline.stats()
    if isinstance(req, UsageRequest):
        usage = partial(
            queries.usage_report,
            pipeline.state_dir,
            by=req.by,
            since=req.since,
            until=req.until,
            utc=req.utc,
            tz_offset_s=req.tz_offset_s,
            tz_name=req.tz_name,
        )
        return await anyio.to_thread.run_sync(usage)
    if isinstance(req, SessionsRequest):
        if req.show is None:
            return await anyio.to_thread.run_sync(
                queries.sessions_list, pipeline.state_dir
            )
        return await anyio.to_thread.run_sync(
            queries.session_show, pipeline.state_dir, req.show
        )
    raise UsageError(f"this command is not available here: {type(req).__name__}")


def print_result(req: object, result: object, renderer: Renderer) -> None:
    """Print a query's result: JSON with ``--json``, else a readable table."""
    from vizierd.tables import print_result as _print

    _print(req, result, renderer)
