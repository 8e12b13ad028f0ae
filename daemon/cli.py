"""galtea-local: run the Galtea sync daemon, inspect the local queue, carry it across an air gap.

    galtea-local daemon                  run the sync daemon in the foreground until SIGTERM
    galtea-local sync                    one pass: push everything due, then exit (0: nothing waits, 2: some does)
    galtea-local status [--json]         counts and health
    galtea-local dead list|retry|drop    inspect, replay or discard dead letters
    galtea-local config check [FILE]     validate a config file, print the effective settings (key masked)
    galtea-local emulator [...]          the local Galtea API emulator
    galtea-local demo [--dir DIR]        emulator + burst of turns + daemon drain + exactly-once check
    galtea-local export|import|receipt|import-receipt   carry the queue across an air gap (docs/airgap.md)
    galtea-local throttle show|clear     see or end a pause the API asked for (Retry-After)
    galtea-local verify [--since T] [--json]   read upstream back: missing, duplicated, differing records

Settings, highest first: flags, environment, config file, defaults.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from galtea_local.config import Settings, effective_settings_text, load_settings
from galtea_local.errors import GaltealocalError, MissingExtraError
from galtea_local.outbox import dead as dead_letters
from galtea_local.outbox import parse_local_id
from galtea_local.outbox.sessions import parse_session_id
from galtea_local.status import format_status, store_status
from galtea_local.store import Store, open_configured
from galtea_local_daemon import cli_bundle, cli_throttle, cli_verify

EXIT_OK, EXIT_WAITING, EXIT_ERROR = 0, 2, 1
# What a missing import means: which extra brings it (`pip install 'galtea-local[...]'`).
EXTRA_OF_MODULE = {
    **dict.fromkeys(("apscheduler", "httpx", "httpcore", "h11", "tenacity", "starlette", "uvicorn", "tqdm",
                     "prometheus_client", "anyio"), "daemon"),
    "psycopg": "postgres",
}


class _AnyOrderParser(argparse.ArgumentParser):
    """A subcommand parser whose options may come before, between or after its positionals
    (``dead drop --store S ID`` and ``dead drop ID --store S`` alike)."""

    _mixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._mixing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: $GALTEA_LOCAL_CONFIG)")
    parser.add_argument("--store", help="store file path or sqlite:/// URL (default: $GALTEA_LOCAL_STORE, config)")


def _pusher(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="Galtea API base URL (default: $GALTEA_API_URL, config)")
    parser.add_argument("--concurrency", type=int, help="sessions pushed in parallel")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--log-format", choices=("text", "json"), help="log line format")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galtea-local", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_AnyOrderParser)
    for name, text in (("daemon", "run the sync daemon in the foreground"), ("sync", "push everything due once")):
        command = commands.add_parser(name, help=text)
        _common(command)
        _pusher(command)
        if name == "daemon":
            command.add_argument("--interval", type=float, help="seconds between idle sync passes")
            command.add_argument("--shutdown-timeout", type=float, help="seconds in-flight pushes get on SIGTERM")
    command = commands.add_parser("status", help="counts and health")
    _common(command)
    command.add_argument("--json", action="store_true", help="one JSON object")
    command = commands.add_parser("dead", help="dead letters")
    _common(command)
    command.add_argument("action", choices=("list", "retry", "drop"))
    command.add_argument("ids", nargs="*", help="local record ids (retry/drop); none with --all")
    command.add_argument("--all", action="store_true", help="every dead letter")
    command.add_argument("--json", action="store_true", help="list as JSON")
    command = commands.add_parser("config", help="configuration")
    command.add_argument("action", choices=("check",))
    command.add_argument("file", nargs="?", help="config file (default: $GALTEA_LOCAL_CONFIG)")
    _optional(commands, "emulator", "the local Galtea API emulator", "galtea_local_daemon.emulator.cli")
    _optional(commands, "demo", "the whole product against a local emulator", "galtea_local_daemon.demo")
    cli_bundle.add_commands(commands, _common)
    cli_throttle.add_command(commands, _common)
    cli_verify.add_command(commands, _common)
    return parser


def _optional(commands: Any, name: str, text: str, module: str) -> None:
    """A subcommand whose options live in a module that needs an extra. Without the extra the
    command still parses (so ``--help`` lists it) and running it names the pip command."""
    try:
        add_arguments = importlib.import_module(module).add_arguments
    except ModuleNotFoundError as error:
        if _extra_of(error) is None:
            raise
        commands.add_parser(name, help=f"{text} (needs the [{_extra_of(error)}] extra)", add_help=False,
                            prefix_chars="\0").add_argument("rest", nargs="*")
        return
    add_arguments(commands.add_parser(name, help=text))


def _extra_of(error: ModuleNotFoundError) -> str | None:
    return EXTRA_OF_MODULE.get((error.name or "").partition(".")[0])


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        "store.path": getattr(args, "store", None),
        "upstream.base_url": getattr(args, "api_url", None),
        "sync.concurrency": getattr(args, "concurrency", None),
        "log.level": getattr(args, "log_level", None),
        "log.format": getattr(args, "log_format", None),
        "sync.interval_s": getattr(args, "interval", None),
        "sync.shutdown_timeout_s": getattr(args, "shutdown_timeout", None),
    }
    return load_settings(getattr(args, "config", None), overrides=overrides)


def existing_store(args: argparse.Namespace) -> Store:
    """The configured store for a command that must not create one (status, dead, export)."""
    return open_configured(settings_from(args).store, must_exist=True)


def cmd_status(args: argparse.Namespace) -> int:
    status = store_status(existing_store(args))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK


def _targets(prefix: str, ids: Sequence[str]) -> tuple[list[int], list[int]]:
    """Local record ids and local session ids → their seqs; anything else is an error."""
    records, sessions = [], []
    for any_id in ids:
        record, session = parse_local_id(prefix, any_id), parse_session_id(prefix, any_id)
        if record is None and session is None:
            raise GaltealocalError(f"{any_id!r} is not a local record or session id of this store")
        (records if record is not None else sessions).append(record if record is not None else session)
    return records, sessions


def cmd_dead(args: argparse.Namespace) -> int:
    store = existing_store(args)
    prefix = store.store_id[:8]
    if args.action == "list":
        rows = store.read(dead_letters.list_dead, prefix)
        print(json.dumps(rows, indent=2) if args.json else _dead_table(rows))
        if not args.json:  # spans and evaluation requests the API refused: counted, retried with --all
            from galtea_local.status import store_status

            status = store_status(store)
            if status["spans_dead"] or status["evaluations_dead"] or status["versions_dead"]:
                print(f"also dead: {status['spans_dead']} span(s), {status['evaluations_dead']} evaluation "
                      f"request(s), {status['versions_dead']} version(s) (reasons in the store;"
                      " `galtea-local dead retry --all` queues them again)")
        return EXIT_OK
    if not args.ids and not args.all:
        raise GaltealocalError(f"dead {args.action}: name record or session ids, or pass --all")
    records, sessions = (None, None) if args.all else _targets(prefix, args.ids)
    if args.action == "retry":
        count = store.transaction(dead_letters.retry_dead, records, sessions)
        print(f"{count} operation(s) queued again")
        if args.all:  # spans and evaluation requests refused by the API: queued again too
            from galtea_local.outbox import evaluations, spans, versions

            print(f"{store.transaction(spans.retry_dead)} span(s), "
                  f"{store.transaction(evaluations.retry_dead)} evaluation request(s), "
                  f"{store.transaction(versions.retry_dead)} version(s) queued again")
    else:
        count = store.transaction(dead_letters.drop_dead, time.time(), records, sessions)
        print(f"{count} operation(s) dropped")
    return EXIT_OK


def _dead_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no dead letters"
    return "\n".join(
        f"{row['id']}  {row['kind']:<14}  HTTP {row['last_status'] or '-'}  {row['last_error']}" for row in rows
    )


def cmd_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    print(effective_settings_text(settings))
    if settings.upstream.api_key is not None:
        settings.upstream.require_api_key()  # reads a key file or credential: unreadable is an error
    else:
        print("# no API key: fine for an app; the daemon needs one", file=sys.stderr)
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    from galtea_local_daemon.sync_once import sync_once

    return sync_once(settings_from(args))


def cmd_daemon(args: argparse.Namespace) -> int:
    from galtea_local_daemon.service import run_daemon

    return run_daemon(settings_from(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from galtea_local_daemon import demo

    return demo.main(args)


def cmd_emulator(args: argparse.Namespace) -> int:
    from galtea_local_daemon.emulator import cli as emulator_cli

    return emulator_cli.main(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": cmd_status,
    "dead": cmd_dead,
    "config": cmd_config,
    "sync": cmd_sync,
    "daemon": cmd_daemon,
    "emulator": cmd_emulator,
    "demo": cmd_demo,
    **cli_bundle.COMMANDS,
    **cli_throttle.COMMANDS,
    **cli_verify.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ModuleNotFoundError as error:
        extra = _extra_of(error)
        if extra is None:
            raise
        return _fail(args, MissingExtraError(extra, error.name or "?", f"`galtea-local {args.command}`"))
    except GaltealocalError as error:
        return _fail(args, error)
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, error: GaltealocalError) -> int:
    print(f"galtea-local {args.command}: {error}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
