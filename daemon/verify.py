"""``galtea-local verify``: read the upstream sessions back and prove "every record once, in order".

For every upstream session that local records went to (since ``--since``), the
session's records are listed (paging until the server answers an empty page)
and compared with the store:

- **missing**: a local record the store calls synced whose remote id is not upstream;
- **duplicates**: more upstream records with a turn's input than local records
  with it, in that session (twins logged on purpose count on both sides);
- **differing**: a synced record whose echoed fields differ upstream (fields
  with an update still queued are left out: they are on their way);
- **out of order**: upstream ``index`` order disagrees with creation order.

Not verifiable from the API, and reported as such rather than passed silently:
``retrievalContext`` (write-only: the API keeps it as a span, not on the turn),
records deleted locally by retention (their upstream twins cannot be matched),
and the creates the engine had to re-send after the commit grace
(``resent_unconfirmed``): each is a duplicate if its first attempt committed
even later; the duplicate check above is what finds it. A full verify (no
``--since``) that passes clears that counter: those re-sends are now confirmed.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from galtea_local.outbox import health
from galtea_local.outbox.enqueue import local_id
from galtea_local.outbox.kinds import OPEN
from galtea_local.read_model import iso_utc
from galtea_local.store import Store
from galtea_local_daemon import reconcile, wire
from galtea_local_daemon.bodies import decoded_fields
from galtea_local_daemon.upstream import UpstreamClient

_LOCAL = (
    "SELECT r.*, l.remote_session_id AS lane_session FROM inference_results r LEFT JOIN lanes l ON l.key = r.lane"
    " WHERE r.deleted = 0 AND r.created_at >= ? ORDER BY r.seq"
)


@dataclass
class VerifyReport:
    since: float | None
    sessions: int = 0
    local_records: int = 0
    checked: int = 0  # synced local records compared with upstream
    queued: int = 0  # not yet confirmed upstream: not checked
    missing: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    differing: list[dict[str, Any]] = field(default_factory=list)
    out_of_order: list[dict[str, Any]] = field(default_factory=list)
    unverifiable: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.differing or self.out_of_order)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _session_of(row: Any) -> str | None:
    """The upstream session a local record went to (None while unknown: never pushed)."""
    return row["remote_session_id"] or row["lane_session"]


def _input_key(value: Any) -> str:
    return json.dumps(reconcile.as_stored("input", value), sort_keys=True)


def _list_session(client: UpstreamClient, session_id: str, since: float | None) -> list[dict[str, Any]]:
    start = iso_utc(since) if since is not None else None
    return list(reconcile.pages(lambda offset, limit: client.list_inference_results(
        session_ids=[session_id], from_created_at=start, offset=offset, limit=limit, sort="asc")))


def _open_fields(store: Store) -> dict[int, set[str]]:
    """Per record, the fields an open (queued) update still changes."""
    rows = store.read(lambda conn: conn.execute(
        f"SELECT record_seq, payload FROM outbox WHERE kind = 'update' AND {OPEN}").fetchall())
    pending: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        pending[row[0]].update(wire.UPDATE_FIELDS.get(name, name) for name in json.loads(row[1] or "{}"))
    return pending


def verify(store: Store, client: UpstreamClient, since: float | None = None, skew_s: float = 120.0) -> VerifyReport:
    """Compare the store with what the API holds; nothing is written anywhere."""
    report = VerifyReport(since=since)
    prefix = store.store_id[:8]
    rows = store.read(lambda conn: conn.execute(_LOCAL, (since or 0.0,)).fetchall())
    report.local_records = len(rows)
    by_session: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        session = _session_of(row)
        if row["sync_state"] != "synced" or session is None:
            report.queued += row["sync_state"] == "queued"
            continue
        by_session[session].append(row)
    pending = _open_fields(store)
    offset = client.server_clock.offset_s or 0.0
    window = None if since is None else since + offset - skew_s
    for session_id, local in by_session.items():
        upstream = _list_session(client, session_id, window)
        report.sessions += 1
        report.checked += len(local)
        _compare_session(report, prefix, session_id, local, upstream, pending)
    report.unverifiable = {
        "write_only_fields": sum(1 for row in rows if row["retrieval_context"] is not None),
        "resent_unconfirmed": int(store.read(health.get_float, health.RESENT_UNCONFIRMED) or 0),
        "note": "retrievalContext is write-only upstream and cannot be read back; records deleted by"
                " retention cannot be matched",
    }
    return report


def _compare_session(report: VerifyReport, prefix: str, session_id: str, local: list[Any],
                     upstream: list[dict[str, Any]], pending: dict[int, set[str]]) -> None:
    by_id = {record["id"]: record for record in upstream}
    for row in local:
        record = by_id.get(row["remote_id"])
        if record is None:
            report.missing.append({"id": local_id(prefix, row["seq"]), "remote_id": row["remote_id"],
                                   "session": session_id})
            continue
        differing = _differences(row, record, pending.get(row["seq"], set()))
        if differing:
            report.differing.append({"id": local_id(prefix, row["seq"]), "remote_id": row["remote_id"],
                                     "fields": differing})
    local_counts = Counter(_input_key(decoded_fields(dict(row)).get("input")) for row in local)
    upstream_counts = Counter(_input_key(record.get("input")) for record in upstream)
    for key, count in upstream_counts.items():
        if key in local_counts and count > local_counts[key]:
            extra = [r["id"] for r in upstream if _input_key(r.get("input")) == key and r["id"] not in
                     {row["remote_id"] for row in local}]
            report.duplicates.append({"session": session_id, "input": json.loads(key), "local": local_counts[key],
                                      "upstream": count, "extra_remote_ids": extra})
    order = [by_id[row["remote_id"]]["index"] for row in local if row["remote_id"] in by_id]
    if order != sorted(order):
        report.out_of_order.append({"session": session_id, "indexes_in_creation_order": order})


def _differences(row: Any, record: dict[str, Any], in_flight: set[str]) -> dict[str, list[Any]]:
    differing = reconcile.differing_fields(wire.create_body(decoded_fields(dict(row))), record)
    return {name: values for name, values in differing.items() if name not in in_flight}


def format_report(report: VerifyReport) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.since)) if report.since else "the start"
    lines = [
        f"verified    {report.checked} synced records in {report.sessions} upstream sessions since {since}"
        f" ({report.queued} still queued, not checked)",
        f"missing     {len(report.missing)}",
        f"duplicates  {sum(d['upstream'] - d['local'] for d in report.duplicates)}",
        f"differing   {len(report.differing)}",
        f"order       {'kept' if not report.out_of_order else f'BROKEN in {len(report.out_of_order)} sessions'}",
    ]
    lines += [f"  MISSING    {m['id']} (remote {m['remote_id']})" for m in report.missing[:20]]
    lines += [f"  DUPLICATE  session {d['session']}: {d['upstream']} upstream for {d['local']} local"
              f" ({json.dumps(d['input'])[:60]})" for d in report.duplicates[:20]]
    lines += [f"  DIFFERS    {d['id']}: {', '.join(d['fields'])}" for d in report.differing[:20]]
    unverifiable = report.unverifiable
    lines.append(f"not checked {unverifiable.get('write_only_fields', 0)} records' retrievalContext (write-only"
                 " upstream)")
    if unverifiable.get("resent_unconfirmed"):
        lines.append(f"WARNING     {unverifiable['resent_unconfirmed']} creates were re-sent after the commit grace;"
                     " a late first attempt would show above as a duplicate")
    lines.append("OK: every synced record is upstream exactly once, in order" if report.ok else "FAILED: see above")
    return "\n".join(lines)
