"""vizier: see what LLM agent runs spend, every token counted exactly once.

What a plugin author needs is importable from here: the event types, the
subscriber interface and the bus.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
