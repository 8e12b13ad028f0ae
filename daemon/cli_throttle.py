"""``galtea-local throttle show|clear``: see or end a pause the API asked for (Retry-After).

A running daemon notices a clear within a second while it waits, or at its next
pass (``sync.interval_s``) when idle.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from galtea_local.outbox.throttle import clear_throttle
from galtea_local.status import store_status, throttle_line

EXIT_OK = 0


def add_command(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    command = commands.add_parser("throttle", help="see or end a pause the API asked for (Retry-After)")
    common(command)
    command.add_argument("action", choices=("show", "clear"))
    command.add_argument("--json", action="store_true", help="one JSON object")


def cmd_throttle(args: argparse.Namespace) -> int:
    from galtea_local_daemon.cli import existing_store

    store = existing_store(args)
    if args.action == "clear":
        paused, made_due = store.transaction(clear_throttle, time.time())
        result = {"paused": paused, "operations_made_due": made_due}
        text = (f"{'pause ended' if paused else 'no pause was set'}; {made_due} operation(s) waiting on a"
                " Retry-After are due now")
    else:
        status = store_status(store)
        result = {key: status[key] for key in ("throttled_until", "throttled_for_s")}
        text = throttle_line(status) or "not throttled"
    print(json.dumps(result) if args.json else text)
    return EXIT_OK


COMMANDS = {"throttle": cmd_throttle}
