"""The pipeline: the bus with its stages and the subscribers that plugins give.

The daemon runs one pipeline for its whole life; ``--no-daemon`` runs one
for the length of a command.  Either way it is built the same way, from the
``vizierd.subscribers`` entry points, with the ledger right behind the
stages the plugins provide (the dedup stage first of all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio

from vizierd.bus import Bus
from vizierd.errors import SessionBusy
from vizierd.events import OutcomeDoc
from vizierd.ledger import Ledger
from vizierd.plugins import LoadReport, PluginContext, load_config, load_plugins
from vizierd.render import Renderer
from vizierd.sessions import Producer, SessionSpec, run_session

__all__ = ["SAME_SESSION_WAIT", "Pipeline"]

#: How long a run waits for another run of the same session to end.
SAME_SESSION_WAIT = 10.0

logger = logging.getLogger(__name__)


class Pipeline:
    """Use as ``async with Pipeline(...) as pipeline:``."""

    def __init__(
        self,
        mode: Literal["daemon", "inprocess"],
        state_dir: Path,
        *,
        renderer: Renderer | None = None,
        config: dict[str, Any] | None = None,
        extra_plugins: dict[str, Callable[[PluginContext], Any]] | None = None,
        drain_deadline: float = 5.0,
    ) -> None:
        self.mode = mode
        self.state_dir = state_dir
        self.ledger = Ledger()
        self._session_locks: dict[str, anyio.Lock] = {}
        self._session_users: dict[str, int] = {}
        self.plugins: LoadReport = load_plugins(
            mode,
            state_dir,
            renderer=renderer,
            config=load_config() if config is None else config,
            extra=extra_plugins,
        )
        self.bus = Bus(
            [*self.plugins.stages, self.ledger], drain_deadline=drain_deadline
        )
        for name, reason in self.plugins.failed.items():
            if renderer is not None:
                renderer.error(
                    f"plugin {name} failed to load and was skipped: {reason}"
                )

    @property
    def dedup(self) -> Any:
        """Return the dedup stage (``None`` if it was not loaded)."""
        for stage in self.plugins.stages:
            if getattr(stage, "name", None) == "dedup":
                return stage
        return None

    async def __aenter__(self) -> Pipeline:
        await self.bus.__aenter__()
        for subscriber in self.plugins.subscribers:
            self.bus.subscribe(subscriber)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self.bus.__aexit__(exc_type, exc, tb)

    async def run(
        self,
        spec: SessionSpec,
        producer: Producer,
        on_start: Callable[[str], None] | None = None,
    ) -> OutcomeDoc:
        """Run one session through this pipeline; return its outcome.

        Two runs of one session never overlap: they would share a session
        log and dedup state, and each would count the other's calls.  A run
        waits up to :data:`SAME_SESSION_WAIT` seconds for another run of its
        session to end, then raises :class:`SessionBusy`.
        """
        sid = spec.session_id
        if sid is None:
            return await run_session(self.bus, self.ledger, spec, producer, on_start)

        lock = self._session_locks.setdefault(sid, anyio.Lock())
        self._session_users[sid] = self._session_users.get(sid, 0) + 1
        try:
            # Only the wait for the other run has a deadline, never the run.
            acquired = False
            with anyio.move_on_after(SAME_SESSION_WAIT):
                await lock.acquire()
                acquired = True
            if not acquired:
                raise SessionBusy(
                    f"session {sid} is being run by another command (a "
                    "--follow?); run this again once that one has ended"
                )
            try:
                return await run_session(
                    self.bus, self.ledger, spec, producer, on_start
                )
            finally:
                lock.release()
        finally:
            self._session_users[sid] -= 1
            if not self._session_users[sid]:
                del self._session_users[sid]
                del self._session_locks[sid]

    def stats(self) -> dict[str, Any]:
        """Return subscriber states and dedup drop counts."""
        dedup = self.dedup
        return {
            "subscribers": self.bus.stats(),
            "stages": [getattr(s, "name", type(s).__name__) for s in self.bus.stages],
            "failed_plugins": dict(self.plugins.failed),
            "skipped_plugins": dict(self.plugins.skipped),
            "dedup_dropped": dict(dedup.dropped) if dedup is not None else {},
        }
