"""``--no-daemon``: run a request's pipeline in this process.

The pipeline is built exactly as the daemon builds it, except that the
stderr printer renders events straight to this terminal.
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

import anyio

from vizierd.errors import UsageError, VizierError
from vizierd.events import OutcomeDoc
from vizierd.paths import state_dir
from vizierd.pipeline import Pipeline
from vizierd.protocol import AskRequest, IngestRequest
from vizierd.render import Renderer

__all__ = ["run_local"]

logger = logging.getLogger(__name__)


def _exit_code(outcomes: list[OutcomeDoc]) -> int:
    codes = [o.exit_code for o in outcomes]
    if 130 in codes:
        return 130
    return max(codes, default=0)


async def _serve(request: Any, renderer: Renderer) -> int:
    from vizierd import service

    outcomes: list[OutcomeDoc] = []
    interrupted = False
    failure: VizierError | None = None
    async with Pipeline("inprocess", state_dir(), renderer=renderer) as pipeline:
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                    async for _ in sigs:
                        interrupted = True
                        work.cancel()
                        return

            tg.start_soon(watch_signals)
            with anyio.CancelScope() as work:
                # Caught here, not around the task group, which would wrap
                # it in an exception group.
                try:
                    if isinstance(request, IngestRequest):
                        outcomes = await service.run_ingest_request(pipeline, request)
                    elif isinstance(request, AskRequest):
                        outcomes = [await service.run_ask_request(pipeline, request)]
                    else:
                        result = await service.run_query(pipeline, request)
                        service.print_result(request, result, renderer)
                except VizierError as exc:
                    failure = exc
            tg.cancel_scope.cancel()

        await pipeline.bus.drain()
    # Raised out here: inside the pipeline (a task group) it would come out
    # wrapped in an exception group.
    if failure is not None:
        raise failure
    if interrupted:
        return 130
    return _exit_code(outcomes)


def run_local(request: Any, renderer: Renderer, args: argparse.Namespace) -> int:
    """Run ``request`` in process; return the command's exit code."""
    if getattr(args, "command", None) == "watch":
        raise UsageError("watch needs the daemon: it shows what other commands do")
    try:
        return anyio.run(_serve, request, renderer)
    except VizierError as exc:
        renderer.error(str(exc))
        return exc.exit_code
