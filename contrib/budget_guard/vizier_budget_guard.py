"""A vizier plugin: warn once per session when its tokens pass a budget.

Install it next to vizier (``pip install contrib/budget_guard``) and set the
budget in ``config.toml``::

    [subscribers.budget-guard]
    max_tokens = 2000000

The warning goes to the daemon's log (``daemon.log`` in the state
directory), or to stderr with ``--no-daemon``.
"""

from __future__ import annotations

import logging
from typing import Any

from vizierd.events import AnyEvent, SessionEnded, UsageReport

logger = logging.getLogger("vizier.budget_guard")


class BudgetGuard:
    """Watches usage reports; drops the oldest if it ever falls behind."""

    name = "budget-guard"
    policy = "drop_oldest"
    capacity = 256

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._warned: set[str | None] = set()

    async def handle(self, event: AnyEvent) -> None:
        if isinstance(event, SessionEnded):
            self._warned.discard(event.session_id)
        elif isinstance(event, UsageReport) and event.total is not None:
            if event.total > self.max_tokens and event.session_id not in self._warned:
                self._warned.add(event.session_id)
                logger.warning(
                    "session %s passed its budget: %d tokens (budget %d)",
                    event.session_id,
                    event.total,
                    self.max_tokens,
                )


def create(context: Any) -> BudgetGuard:
    """Entry-point factory: reads ``max_tokens`` from the plugin's options."""
    return BudgetGuard(int(context.options.get("max_tokens", 1_000_000)))
