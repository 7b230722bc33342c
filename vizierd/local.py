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

    async with Pipeline("inprocess", state_dir(), renderer=renderer) as pipeline:
        outcomes: list[OutcomeDoc] = []
        interrupted = False

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
                if isinstance(request, IngestRequest):
                    outcomes = await service.run_ingest_request(pipeline, request)
                elif isinstance(request, AskRequest):
                    outcomes = [await service.run_ask_request(pipeline, request)]
                else:
                    result = await service.run_query(pipeline, request)
                    service.print_result(request, result, renderer)
            tg.cancel_scope.cancel()

        await pipeline.bus.drain()
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
