"""Loading subscribers and stages from the ``vizierd.subscribers`` entry points.

Built-in subscribers register in the same group a third-party plugin uses.
Each entry point names a factory ``create(context) -> object | None``: the
object is a stage (it has ``process``) or a subscriber (it has ``handle``);
``None`` means "not in this mode" (the stderr printer has no terminal in the
daemon).  A plugin that fails to import or to build is reported and skipped,
never fatal.

Configuration comes from ``config.toml`` in the user config directory::

    [subscribers.journal]
    enabled = true
    # any other key is passed to the factory as an option

and ``VIZIER_PLUGINS`` (a comma-separated list of names) limits which load.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from vizierd.errors import ConfigError
from vizierd.paths import config_file
from vizierd.render import Renderer

__all__ = ["GROUP", "LoadReport", "PluginContext", "load_config", "load_plugins"]

logger = logging.getLogger(__name__)

GROUP = "vizierd.subscribers"


@dataclass
class PluginContext:
    """What a plugin factory is given."""

    name: str
    mode: Literal["daemon", "inprocess"]
    state_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    #: The in-process renderer (``None`` in the daemon, which has no terminal).
    renderer: Renderer | None = None


@dataclass
class LoadReport:
    """What :func:`load_plugins` found."""

    stages: list[Any] = field(default_factory=list)
    subscribers: list[Any] = field(default_factory=list)
    #: name -> one line saying why it was skipped.
    skipped: dict[str, str] = field(default_factory=dict)
    #: name -> the error that kept it from loading.
    failed: dict[str, str] = field(default_factory=dict)


def load_config(path: Path | None = None) -> dict[str, Any]:
    """Return the parsed ``config.toml``, or ``{}`` when there is none.

    Raises :class:`ConfigError` naming the file when it is not valid TOML.
    """
    path = path or config_file()
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_plugins(
    mode: Literal["daemon", "inprocess"],
    state_dir: Path,
    *,
    renderer: Renderer | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Callable[[PluginContext], Any]] | None = None,
) -> LoadReport:
    """Build every enabled stage and subscriber; return what loaded and what not.

    ``extra`` adds factories by name, as if they were entry points (tests use
    it to add plugins without installing them).
    """
    report = LoadReport()
    section = (config or {}).get("subscribers", {})
    if not isinstance(section, dict):
        section = {}
    only = os.environ.get("VIZIER_PLUGINS")
    allowed = {n.strip() for n in only.split(",") if n.strip()} if only else None

    factories: dict[str, Callable[[], Callable[[PluginContext], Any]]] = {}
    for ep in entry_points(group=GROUP):
        factories.setdefault(ep.name, ep.load)
    for name, factory in (extra or {}).items():
        factories[name] = lambda factory=factory: factory  # type: ignore[misc]

    for name, load in sorted(factories.items()):
        options = section.get(name, {})
        options = dict(options) if isinstance(options, dict) else {}
        if allowed is not None and name not in allowed and name != "dedup":
            report.skipped[name] = "not in VIZIER_PLUGINS"
            continue
        if not options.pop("enabled", True):
            report.skipped[name] = "disabled in config.toml"
            continue
        try:
            factory = load()
            obj = factory(
                PluginContext(
                    name=name,
                    mode=mode,
                    state_dir=state_dir,
                    options=options,
                    renderer=renderer,
                )
            )
        except Exception as exc:  # a plugin may raise anything on import
            report.failed[name] = f"{type(exc).__name__}: {exc}"
            logger.error("plugin %s failed to load and is skipped: %s", name, exc)
            continue
        if obj is None:
            report.skipped[name] = f"not used in {mode} mode"
        elif hasattr(obj, "process"):
            report.stages.append(obj)
        elif hasattr(obj, "handle"):
            report.subscribers.append(obj)
        else:
            report.failed[name] = "factory returned neither a stage nor a subscriber"
    # The dedup stage sits in front of everything else.
    report.stages.sort(key=lambda stage: getattr(stage, "name", "") != "dedup")
    return report
