"""Where vizier keeps things: the socket, the state directory, the config.

The thin client resolves the socket and the config file on every command, so
those use only the standard library (following the conventions platformdirs
uses).  The state directory is the daemon's business and comes from
platformdirs, imported only when it is asked for.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from vizierd.errors import UsageError

__all__ = [
    "check_session_id",
    "config_dir",
    "config_file",
    "socket_path",
    "state_dir",
]

APP = "vizier"

# A session id names a folder under ``.vizier/sessions``: nothing in it may
# climb out of that folder or hide there (``/``, ``..``, a leading dot).
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` if it can name a session folder.

    Raises :class:`UsageError` for an id that is empty, longer than 200
    characters, or holds anything but letters, digits, ``.``, ``_`` and
    ``-`` (or starts with one of the last three).
    """
    if _SESSION_ID.fullmatch(session_id) is None:
        raise UsageError(
            f"not a valid session id: {session_id!r} (use letters, digits, "
            "'.', '_' and '-', starting with a letter or digit)"
        )
    return session_id


def socket_path() -> Path:
    """Return the daemon's socket path.

    ``$VIZIER_SOCKET``, else ``$XDG_RUNTIME_DIR/vizier/vizierd.sock``, else
    ``/tmp/vizier-<uid>/vizierd.sock``.
    """
    explicit = os.environ.get("VIZIER_SOCKET")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / APP / "vizierd.sock"
    return Path(f"/tmp/vizier-{os.getuid()}") / "vizierd.sock"


def state_dir() -> Path:
    """Return the state directory: ``$VIZIER_STATE_DIR`` or the platform's."""
    explicit = os.environ.get("VIZIER_STATE_DIR")
    if explicit:
        return Path(explicit)
    import platformdirs

    return Path(platformdirs.user_state_dir(APP, appauthor=False))


def config_dir() -> Path:
    """Return the user config directory: ``$VIZIER_CONFIG_DIR`` or the platform's."""
    explicit = os.environ.get("VIZIER_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / APP


def config_file() -> Path:
    """Return the path of ``config.toml``."""
    return config_dir() / "config.toml"
