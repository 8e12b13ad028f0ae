"""``galtea-local verify [--since T] [--json]``: prove the store and the API agree (see :mod:`.verify`).

Exit 0 when every synced record is upstream exactly once, in order, with its
fields; 1 on any missing, duplicated, differing or out-of-order record (and on
errors, as every command).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from galtea_local.errors import InvalidInputError

EXIT_OK, EXIT_FOUND = 0, 1


def since_value(text: str) -> float:
    """``--since``: Unix seconds, or an ISO 8601 time (naive means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"--since: {text!r} is neither Unix seconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def add_command(commands: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    command = commands.add_parser("verify", help="read the upstream sessions back and check every record")
    common(command)
    command.add_argument("--api-url", help="Galtea API base URL (default: $GALTEA_API_URL, config)")
    command.add_argument("--since", help="only records created since (Unix seconds or ISO 8601)")
    command.add_argument("--json", action="store_true", help="one JSON object")


def cmd_verify(args: argparse.Namespace) -> int:
    from galtea_local_daemon.cli import existing_store, settings_from
    from galtea_local_daemon.runtime import make_client
    from galtea_local_daemon.verify import format_report, verify

    settings = settings_from(args)
    settings.upstream.require_api_key()
    since = since_value(args.since) if args.since else None
    store = existing_store(args)
    with make_client(settings) as client:
        report = verify(store, client, since, settings.sync.clock_skew_s)
    if report.ok and since is None:
        acknowledge_resends(store)
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    return EXIT_OK if report.ok else EXIT_FOUND


def acknowledge_resends(store: Any) -> None:
    """A full verify that found no duplicate settles every unconfirmed re-send counted so far."""
    from galtea_local.outbox import health

    store.transaction(health.put, health.RESENT_UNCONFIRMED, None)


COMMANDS = {"verify": cmd_verify}
