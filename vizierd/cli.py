"""The ``vizier`` command line.

Every command is a thin client of the daemon: it resolves its arguments and
configuration here, sends one request over the socket and renders what comes
back.  ``--no-daemon`` runs the same request in process instead.

This module imports only the standard library, msgspec and vizier's
protocol-side modules, so a command starts about as fast as Python does.
The daemon side is imported only when ``--no-daemon`` asks for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from vizierd import __version__
from vizierd.errors import ConfigError, UsageError, VizierError
from vizierd.paths import check_session_id, config_file, socket_path
from vizierd.protocol import (
    AskRequest,
    IngestRequest,
    PluginsRequest,
    SessionsRequest,
    StatusRequest,
    UsageRequest,
    WatchRequest,
)
from vizierd.render import Renderer

__all__ = ["build_parser", "daemon_main", "main"]

FORMATS = ("auto", "codex-rollout", "codex-exec", "openai-chat", "openai-responses")

EXIT_CODES = """\
exit codes:
  0    ok
  1    the session failed (backend error, bad input data)
  2    bad command-line usage or configuration
  3    the daemon could not be reached or started
  130  interrupted
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised instead of exiting mid-parse."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("vizier").strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see --help)")


def _common(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    # SUPPRESS keeps a subcommand's unset flag from hiding the same flag
    # given before the subcommand.
    s = argparse.SUPPRESS
    parser.add_argument(
        "--no-daemon",
        action="store_true",
        default=s,
        help="run the pipeline in this process instead of in the daemon",
    )
    parser.add_argument(
        "--socket", metavar="PATH", default=s, help="the daemon's socket"
    )
    if output:
        parser.add_argument(
            "--json",
            action="store_true",
            default=s,
            help="print only JSON on stdout",
        )


def _verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress lines or epilogue: stderr carries errors only",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="add a token summary (non-cached input, cached, output, reasoning)",
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of ``vizier``.

    With ``only`` naming a command, only that command's subparser is built:
    building all of them costs more than the rest of a quick command.
    """
    parser = _Parser(
        prog="vizier",
        description=(
            "See what LLM runs spend. vizier accounts every token of a run "
            "exactly once, shows the running figures as they happen and keeps "
            "a session log of each run."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vizier {__version__}")
    parser.add_argument(
        "--no-daemon",
        action="store_true",
        help="run the pipeline in this process instead of in the daemon",
    )
    parser.add_argument("--socket", metavar="PATH", help="the daemon's socket")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def wanted(name: str) -> bool:
        return only is None or only == name

    if wanted("ask"):
        ask = sub.add_parser(
            "ask",
            help="ask a model (any OpenAI-compatible API) and account the usage",
            description=(
                "Send a prompt to an OpenAI-compatible API, stream the answer to "
                "stdout and account its usage. Configuration: --model, then "
                "OPENAI_API_KEY, OPENAI_BASE_URL and VIZIER_MODEL, then the [ask] "
                "table of config.toml (api_key, base_url, model)."
            ),
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        ask.add_argument("prompt", nargs="?", help="the prompt, or '-' to read stdin")
        ask.add_argument(
            "-f", "--file", metavar="FILE", help="read the prompt from FILE"
        )
        ask.add_argument("--model", "-m", metavar="M", help="the model to use")
        ask.add_argument("--system", "-s", metavar="S", help="a system prompt")
        ask.add_argument(
            "--session",
            metavar="ID",
            help="continue this session: its messages are sent again",
        )
        ask.add_argument(
            "--api",
            choices=("chat", "responses"),
            default="chat",
            help="Chat Completions (default) or the Responses API",
        )
        ask.add_argument(
            "--no-stream", action="store_true", help="wait for the whole answer"
        )
        _verbosity(ask)
        _common(ask)

    if wanted("ingest"):
        ingest = sub.add_parser(
            "ingest",
            help="account agent logs and recorded API traffic",
            description=(
                "Account the usage in agent logs (Codex rollout files, `codex exec "
                "--json` output) and recorded OpenAI responses. Each input becomes "
                "one session; ingesting the same Codex session again updates it "
                "and never doubles it."
            ),
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        ingest.add_argument(
            "files", nargs="*", metavar="FILE", help="inputs; '-' is stdin"
        )
        ingest.add_argument(
            "--format",
            choices=FORMATS,
            default="auto",
            help="the input format (default: detected from the first line)",
        )
        ingest.add_argument(
            "--follow",
            action="store_true",
            help="keep reading FILE as it grows, until interrupted",
        )
        ingest.add_argument(
            "--codex-home",
            metavar="DIR",
            help="backfill every rollout under DIR/sessions and DIR/archived_sessions",
        )
        _verbosity(ingest)
        _common(ingest)

    if wanted("usage"):
        usage = sub.add_parser(
            "usage",
            help="what was spent, by day, model, session or source",
            description="Aggregate every session the daemon has accounted.",
        )
        usage.add_argument(
            "--by",
            choices=("day", "model", "session", "source"),
            default="day",
            help="how to group rows (default: day)",
        )
        usage.add_argument(
            "--since", metavar="DATE", help="from DATE (2026-12-01, or 7d, 12h ago)"
        )
        usage.add_argument("--until", metavar="DATE", help="up to DATE (exclusive)")
        usage.add_argument("--utc", action="store_true", help="days in UTC, not local")
        _common(usage)

    if wanted("sessions"):
        sessions = sub.add_parser("sessions", help="list sessions or show one")
        ssub = sessions.add_subparsers(dest="sessions_command", required=True)
        slist = ssub.add_parser("list", help="newest first")
        _common(slist)
        sshow = ssub.add_parser(
            "show", help="one session; a unique id prefix is enough"
        )
        sshow.add_argument("id", metavar="ID")
        _common(sshow)

    if wanted("watch"):
        watch = sub.add_parser("watch", help="a live stream of events as they happen")
        watch.add_argument("--session", metavar="ID", help="only this session")
        _common(watch)

    if wanted("plugins"):
        plugins = sub.add_parser("plugins", help="loaded subscribers and their state")
        _common(plugins)

    if wanted("daemon"):
        daemon = sub.add_parser("daemon", help="start, stop or inspect the daemon")
        dsub = daemon.add_subparsers(dest="daemon_command", required=True)
        start = dsub.add_parser("start", help="start the daemon (detached)")
        start.add_argument(
            "--foreground", action="store_true", help="run in this terminal"
        )
        _common(start, output=False)
        for name, text in (
            ("stop", "stop the daemon gracefully"),
            ("status", "pid, uptime, sessions, subscribers, dedup drops"),
            ("restart", "stop, then start"),
        ):
            cmd = dsub.add_parser(name, help=text)
            _common(cmd, output=name == "status")
    return parser


def _renderer(args: argparse.Namespace) -> Renderer:
    verbosity = -1 if getattr(args, "quiet", False) else 0
    if getattr(args, "verbose", False):
        verbosity = 1
    return Renderer(
        sys.stdout, sys.stderr, verbosity=verbosity, json=getattr(args, "json", False)
    )


def _read_config() -> dict[str, Any]:
    import tomllib  # only ``ask`` reads the config: keep other commands quick

    path = config_file()
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _stdin() -> Any:
    """Return stdin, or raise :class:`UsageError` when it is closed."""
    if sys.stdin is None:
        raise UsageError("stdin is closed: give the input as a file instead")
    return sys.stdin


def _prompt(args: argparse.Namespace) -> str:
    if args.file and args.prompt:
        raise UsageError("give the prompt as an argument or with -f, not both")
    if args.file:
        try:
            return Path(args.file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read prompt file {args.file}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise UsageError(f"prompt file {args.file} is not UTF-8 text") from exc
    if args.prompt is None or args.prompt == "-":
        if args.prompt is None and _stdin().isatty():
            raise UsageError("no prompt: give PROMPT, -f FILE, or '-' to read stdin")
        return str(_stdin().read())
    return str(args.prompt)


def ask_request(args: argparse.Namespace) -> AskRequest:
    """Resolve ``ask``'s configuration in this environment; return the request.

    Raises :class:`ConfigError` naming what to set when nothing says which
    model to use or where to send it.
    """
    table = _read_config().get("ask", {})
    if not isinstance(table, dict):
        table = {}
    model = args.model or os.environ.get("VIZIER_MODEL") or table.get("model")
    key = os.environ.get("OPENAI_API_KEY") or table.get("api_key")
    base_url = os.environ.get("OPENAI_BASE_URL") or table.get("base_url")
    if not key and not base_url and not model:
        raise ConfigError(
            "nothing configured for ask: set OPENAI_API_KEY (and OPENAI_BASE_URL "
            "for a server other than OpenAI's) and VIZIER_MODEL, or api_key and "
            f"model in [ask] of {config_file()}"
        )
    if not key and not base_url:
        raise ConfigError(
            "no API configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for a "
            f"server other than OpenAI's), or api_key in [ask] of {config_file()}"
        )
    if not model:
        raise ConfigError(
            "no model: pass --model, set VIZIER_MODEL, or set model in [ask] of "
            f"{config_file()}"
        )
    if args.session is not None:
        check_session_id(args.session)
    prompt = _prompt(args)
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return AskRequest(
        id=1,
        cwd=os.getcwd(),
        prompt=prompt,
        model=str(model),
        # A local server (Ollama, llama.cpp) needs no key; the SDK needs one.
        api_key=str(key) if key else "unused",
        # Always explicit, so the daemon's own environment never decides.
        base_url=str(base_url) if base_url else "https://api.openai.com/v1",
        system=args.system,
        session=args.session,
        api=args.api,
        stream=not args.no_stream,
        timeout=_seconds("VIZIER_TIMEOUT", table, "timeout"),
        max_retries=_count("VIZIER_MAX_RETRIES", table, "max_retries"),
        client_pid=os.getpid(),
    )


def _setting(env: str, table: dict[str, Any], key: str) -> tuple[object, str]:
    """Return a setting's value and where it came from: ``env``, else ``key``.

    An empty variable counts as unset, as for ``OPENAI_API_KEY``.
    """
    value = os.environ.get(env)
    if value:
        return value, env
    return table.get(key), f"{key} in [ask] of {config_file()}"


def _seconds(env: str, table: dict[str, Any], key: str) -> float | None:
    value, where = _setting(env, table, key)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # also false for NaN
        raise ConfigError(f"{where} must be a number of seconds, not {value!r}")
    return seconds


def _count(env: str, table: dict[str, Any], key: str) -> int | None:
    value, where = _setting(env, table, key)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise ConfigError(f"{where} must be a whole number, not {value!r}")
    return count


def ingest_request(args: argparse.Namespace) -> IngestRequest:
    """Return the request for ``ingest``; raises :class:`UsageError`."""
    files: list[str] = list(args.files)
    data = None
    if files.count("-") > 1:
        raise UsageError("'-' (stdin) can be given only once")
    if "-" in files:
        files.remove("-")
        data = _stdin().buffer.read()
    if not files and data is None and not args.codex_home:
        if _stdin().isatty():
            raise UsageError(
                "nothing to ingest: name files, '-' for stdin, or --codex-home"
            )
        data = _stdin().buffer.read()
    if args.follow and (data is not None or len(files) != 1 or args.codex_home):
        raise UsageError("--follow takes exactly one file")
    for name in files:
        if not Path(name).exists():
            raise UsageError(f"{name}: no such file")
    if args.codex_home and not Path(args.codex_home).is_dir():
        raise UsageError(f"--codex-home {args.codex_home}: no such directory")
    return IngestRequest(
        id=1,
        cwd=os.getcwd(),
        format=args.format,
        paths=[str(Path(name).resolve()) for name in files],
        data=data,
        codex_home=str(Path(args.codex_home).resolve()) if args.codex_home else None,
        follow=args.follow,
        client_pid=os.getpid(),
    )


def _request(args: argparse.Namespace) -> Any:
    command = args.command
    if command == "ask":
        return ask_request(args)
    if command == "ingest":
        return ingest_request(args)
    if command == "usage":
        return UsageRequest(
            id=1,
            by=args.by,
            since=args.since,
            until=args.until,
            utc=args.utc,
            tz_offset_s=_local_offset(),
            tz_name=_local_zone_name(),
        )
    if command == "sessions":
        show = args.id if args.sessions_command == "show" else None
        return SessionsRequest(id=1, show=show)
    if command == "watch":
        return WatchRequest(id=1, session=args.session)
    if command == "plugins":
        return PluginsRequest(id=1)
    if command == "daemon" and args.daemon_command == "status":
        return StatusRequest(id=1)
    raise UsageError(f"unknown command {command}")


def _local_zone_name() -> str | None:
    """Return this machine's time zone by name (``Europe/Berlin``), if known.

    From ``TZ`` when it names a zone, else from where ``/etc/localtime``
    points; ``None`` leaves the daemon with the fixed UTC offset.
    """
    name = os.environ.get("TZ", "").lstrip(":")
    if name and "/" in name and not name.startswith("/"):
        return name
    if name:
        return None
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return None
    _, found, zone = target.partition("zoneinfo/")
    return zone if found and zone else None


def _local_offset() -> int:
    import time

    return -(
        time.altzone if time.daylight and time.localtime().tm_isdst else time.timezone
    )


COMMANDS = ("ask", "ingest", "usage", "sessions", "watch", "plugins", "daemon")


def _command_in(argv: list[str]) -> str | None:
    """Return the command ``argv`` names, or ``None`` when it names none."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--socket":
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def run(argv: list[str] | None = None) -> int:
    """Run ``vizier`` with ``argv``; return the exit code."""
    parser = build_parser(_command_in(sys.argv[1:] if argv is None else argv))
    renderer: Renderer | None = None
    try:
        args = parser.parse_args(argv)
        if args.socket:
            os.environ["VIZIER_SOCKET"] = args.socket
        renderer = _renderer(args)
        if args.command == "daemon":
            from vizierd.client import daemon_command

            return daemon_command(args, renderer)
        request = _request(args)
        if args.no_daemon:
            from vizierd.local import run_local

            return run_local(request, renderer, args)
        from vizierd.client import run_remote

        return run_remote(request, renderer, args, socket_path())
    except VizierError as exc:
        (renderer or Renderer(sys.stdout, sys.stderr)).error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def main() -> NoReturn:
    """Console entry point of ``vizier``."""
    sys.exit(run())


def daemon_main() -> NoReturn:
    """Console entry point of ``vizierd``: the daemon in the foreground."""
    sys.exit(run(["daemon", "start", "--foreground", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
