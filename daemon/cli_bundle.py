"""The air-gap subcommands of ``galtea-local`` (see docs/airgap.md).

    galtea-local export --out FILE [--since-last] [--from ISO] [--to ISO]   on the origin
    galtea-local import FILE                                                on the connected machine
    galtea-local receipt --for ORIGIN_STORE_ID --out FILE                   on the connected machine
    galtea-local import-receipt FILE                                        back on the origin
    galtea-local reclaim ID... | --all                                      the origin takes exported records back
    galtea-local keygen --out FILE                                          the key both sites share

Files are signed with this site's bundle key (see bundle_keys.py); unsigned ones need
--unsigned to write and --allow-unsigned to read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from galtea_local.bundle import export_bundle, import_bundle, import_receipt, write_receipt
from galtea_local.errors import GaltealocalError

EXIT_OK = 0
_ALLOW_UNSIGNED = "accept a file without a signature (refused by default: anyone could have written it)"


def add_commands(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    command = commands.add_parser("export", help="write the records not yet upstream to one bundle file")
    common(command)
    command.add_argument("--out", required=True,
                         help="bundle file to write (replaced atomically), or a folder to write it in")
    command.add_argument("--since-last", action="store_true", help="only what changed since the last export")
    command.add_argument("--from", dest="start", metavar="ISO", help="records created at or after this time (UTC)")
    command.add_argument("--to", dest="end", metavar="ISO", help="records created before this time (UTC)")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.add_argument("--unsigned", action="store_true", help="write it unsigned when this site has no key")
    command = commands.add_parser("import", help="queue a bundle's records in this store (idempotent)")
    common(command)
    command.add_argument("file", help="bundle written by `galtea-local export`")
    command.add_argument("--allow-unsigned", action="store_true", help=_ALLOW_UNSIGNED)
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command = commands.add_parser("receipt", help="write which imported records of an origin are upstream")
    common(command)
    command.add_argument("--for", dest="origin", required=True, metavar="ORIGIN_STORE_ID",
                         help="the origin's store_id (its `galtea-local status --json`)")
    command.add_argument("--out", required=True, help="receipt file to write, or a folder to write it in")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.add_argument("--unsigned", action="store_true", help="write it unsigned when this site has no key")
    command = commands.add_parser("import-receipt", help="mark the records a receipt confirms as synced")
    common(command)
    command.add_argument("file", help="receipt written by `galtea-local receipt`")
    command.add_argument("--allow-unsigned", action="store_true", help=_ALLOW_UNSIGNED)
    command = commands.add_parser("reclaim", help="push exported records from here after all (the bundle is lost)")
    common(command)
    command.add_argument("ids", nargs="*", help="local record or session ids; none with --all")
    command.add_argument("--all", action="store_true", help="everything handed over by an export")
    command = commands.add_parser("keygen", help="make the key two sites share to sign bundles and receipts")
    common(command)
    command.add_argument("--out", help="key file to write (0600; default: the configured bundle.key_file)")
    command.add_argument("--replace", action="store_true", help="replace an existing key file")


def _epoch(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise GaltealocalError(f"{flag} {text!r}: not an ISO 8601 time; write e.g. 2025-03-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # documented: a time without offset is UTC
    return moment.timestamp()


def _progress(args: argparse.Namespace, what: str) -> Callable[[int], Any] | None:
    if args.no_progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return lambda total: tqdm(total=total, desc=what, unit="record", file=sys.stderr)


def _settings(args: argparse.Namespace) -> Any:
    from galtea_local_daemon.cli import settings_from

    return settings_from(args)


def _store(args: argparse.Namespace, settings: Any = None, *, must_exist: bool = False) -> Any:
    from galtea_local.store import WriterRole, open_configured

    # Import and export write in bulk: like the daemon's, their writes give way to the apps'.
    return open_configured((settings or _settings(args)).store, must_exist=must_exist, role=WriterRole.DAEMON)


def _signing(settings: Any, unsigned: bool) -> Any:
    from galtea_local_daemon.bundle_keys import signing_for

    return signing_for(settings, allow_unsigned=unsigned)


def cmd_keygen(args: argparse.Namespace) -> int:
    from galtea_local_daemon.bundle_keys import cmd_keygen as keygen

    return keygen(args, _settings(args))


def cmd_export(args: argparse.Namespace) -> int:
    start, end = _epoch("--from", args.start), _epoch("--to", args.end)
    settings = _settings(args)
    store = _store(args, settings, must_exist=True)
    result = export_bundle(store, args.out, signing=_signing(settings, args.unsigned),
                           since_last=args.since_last, start=start, end=end,
                           progress=_progress(args, "export"))
    scope = "changed since the last export" if args.since_last else "not yet confirmed upstream"
    print(f"wrote {result.path}: {result.records} record(s) and {result.sessions} session(s) {scope}; "
          "they are the bundle's to push now: held here (not pushed) until `galtea-local import-receipt` "
          "confirms them or `galtea-local reclaim` takes them back")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _store(args, settings)
    result = import_bundle(store, args.file, signing=_signing(settings, args.allow_unsigned),
                           max_record_bytes=settings.store.max_record_bytes, limits=settings.bundle,
                           progress=_progress(args, "import"))
    print(f"imported {args.file} from store {result.origin_store_id}: records {result.records_added} added, "
          f"{result.records_updated} updated, {result.records_unchanged} already here; sessions "
          f"{result.sessions_added} added, {result.sessions_updated} updated, {result.sessions_unchanged} already here;"
          f" spans {result.spans_added} added")
    return EXIT_OK


def cmd_receipt(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _store(args, settings)
    result = write_receipt(store, args.origin, args.out, signing=_signing(settings, args.unsigned),
                           progress=_progress(args, "receipt"))
    print(f"wrote {result.path}: {result.records} record(s) and {result.sessions} session(s) of store "
          f"{args.origin} are upstream; take it back and run `galtea-local import-receipt` there")
    return EXIT_OK


def cmd_import_receipt(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _store(args, settings)
    result = import_receipt(store, args.file, signing=_signing(settings, args.allow_unsigned), limits=settings.bundle)
    print(f"receipt {args.file}: {result.records} record(s) and {result.sessions} session(s) now synced; "
          f"{result.still_queued} changed here since (queued as updates for the next export); "
          f"{result.unchanged} confirmed before; {result.missing} no longer here; {result.conflicts} conflicting")
    return EXIT_OK


def cmd_reclaim(args: argparse.Namespace) -> int:
    from galtea_local.outbox import custody
    from galtea_local_daemon.cli import _targets

    if not args.ids and not args.all:
        raise GaltealocalError("reclaim: name record or session ids, or pass --all")
    store = _store(args, must_exist=True)
    records, sessions = (None, None) if args.all else _targets(store.store_id[:8], args.ids)
    count = store.transaction(custody.reclaim, records, sessions)
    custody.recount(store)
    print(f"{count} operation(s) taken back; the daemon pushes them (a maybe-sent create is reconciled first)")
    return EXIT_OK


COMMANDS = {
    "export": cmd_export,
    "import": cmd_import,
    "receipt": cmd_receipt,
    "import-receipt": cmd_import_receipt,
    "reclaim": cmd_reclaim,
    "keygen": cmd_keygen,
}
