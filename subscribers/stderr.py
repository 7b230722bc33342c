"""The stderr line printer: the lines a person reads while a session runs.

In process it renders every event with :class:`vizierd.render.Renderer`.  In
the daemon there is no terminal: each client renders the events the daemon
pushes to it with the same renderer, so this subscriber is not loaded there.
"""

from __future__ import annotations

from vizierd.events import AnyEvent
from vizierd.plugins import PluginContext
from vizierd.render import Renderer

__all__ = ["StderrPrinter", "create"]


class StderrPrinter:
    """Renders events to the terminal.  It must lose nothing: it blocks."""

    name = "stderr"
    policy = "block"

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer

    async def handle(self, event: AnyEvent) -> None:
        self.renderer.feed(event)


def create(context: PluginContext) -> StderrPrinter | None:
    """Return the printer in process, ``None`` in the daemon."""
    if context.renderer is None:
        return None
    return StderrPrinter(context.renderer)
