"""The errors vizier raises, in one small tree.

Every class says when it is raised.  The command line turns each into one
clear line on stderr and the exit code named by its ``exit_code``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "AmbiguousSession",
    "BackendError",
    "BusClosed",
    "ConfigError",
    "DaemonUnavailable",
    "InputError",
    "ProtocolError",
    "SessionBusy",
    "SessionNotFound",
    "UnsafeDirectory",
    "UsageError",
    "VizierError",
]


class VizierError(Exception):
    """Base of every error vizier raises on purpose."""

    exit_code = 1
    kind = "error"


class UsageError(VizierError):
    """The command line was wrong: an unknown option, a missing argument."""

    exit_code = 2
    kind = "usage"


class ConfigError(VizierError):
    """Configuration is missing or invalid (no API key, a bad config.toml)."""

    exit_code = 2
    kind = "config"


class InputError(VizierError):
    """An input to ingest is unusable: not JSON, not a known format, empty.

    The message names the file and, where there is one, the line.
    """

    kind = "input"


class SessionNotFound(UsageError):
    """No session has the id given, nor an id starting with it."""

    kind = "session-not-found"


class AmbiguousSession(UsageError):
    """More than one session id starts with the prefix given."""

    kind = "ambiguous-session"


class SessionBusy(VizierError):
    """Another command is running the same session (a ``--follow``, say)."""

    kind = "session-busy"


class BackendError(VizierError):
    """A model API call failed: refused, timed out, or answered with an error."""

    kind = "backend"


class DaemonUnavailable(VizierError):
    """The daemon could not be reached or started."""

    exit_code = 3
    kind = "daemon"


class AlreadyRunning(DaemonUnavailable):
    """A daemon already serves this socket or this state directory."""

    kind = "already-running"


class ProtocolError(VizierError):
    """A peer on the socket broke the wire protocol: bad frame, wrong version."""

    exit_code = 3
    kind = "protocol"


class UnsafeDirectory(VizierError):
    """The socket directory is writable by others or owned by another user."""

    exit_code = 3
    kind = "unsafe-directory"


class BusClosed(VizierError):
    """An event was published after the bus started closing."""
