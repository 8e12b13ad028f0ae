"""Named schema migrations, each recorded in the same transaction as its change.

A migration's SQL is frozen text, never derived from the live models: a store
written by an older release must upgrade to exactly the schema a new store gets.
``tests/test_migrations.py`` checks that the result matches the SQLModel tables.
A store that has a migration this release does not know was written by a newer
galtea-local and is refused rather than guessed at.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from galtea_local.errors import NotAStoreError

_INITIAL = (
    """CREATE TABLE meta (
    "key" VARCHAR NOT NULL,
    value VARCHAR NOT NULL,
    PRIMARY KEY ("key")
)""",
    """CREATE TABLE schema_migrations (
    name VARCHAR NOT NULL,
    applied_at FLOAT NOT NULL,
    PRIMARY KEY (name)
)""",
    """CREATE TABLE inference_results (
    seq INTEGER NOT NULL,
    lane VARCHAR NOT NULL,
    session_id VARCHAR,
    session_custom_id VARCHAR,
    version_id VARCHAR,
    product_id VARCHAR,
    status VARCHAR NOT NULL,
    error VARCHAR,
    input VARCHAR,
    actual_output VARCHAR,
    retrieval_context VARCHAR,
    latency FLOAT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cache_read_input_tokens INTEGER,
    tokens INTEGER,
    cost_per_input_token FLOAT,
    cost_per_output_token FLOAT,
    cost_per_cache_read_input_token FLOAT,
    cost FLOAT,
    conversation_simulator_version VARCHAR,
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    sync_state VARCHAR NOT NULL,
    create_sent INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    remote_id VARCHAR,
    remote_index INTEGER,
    remote_session_id VARCHAR,
    remote_created_at VARCHAR,
    PRIMARY KEY (seq)
)""",
    """CREATE UNIQUE INDEX ix_results_remote_id ON inference_results (remote_id) WHERE remote_id IS NOT NULL""",
    """CREATE INDEX ix_results_session ON inference_results (session_id)""",
    """CREATE TABLE outbox (
    seq INTEGER NOT NULL,
    record_seq INTEGER NOT NULL,
    lane VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    payload VARCHAR,
    state VARCHAR NOT NULL,
    attempts INTEGER NOT NULL,
    not_before FLOAT NOT NULL,
    sending_since FLOAT,
    sent_body VARCHAR,
    last_error VARCHAR,
    last_status INTEGER,
    created_at FLOAT NOT NULL,
    settled_at FLOAT,
    PRIMARY KEY (seq),
    FOREIGN KEY(record_seq) REFERENCES inference_results (seq)
)""",
    """CREATE INDEX ix_outbox_dead ON outbox (record_seq) WHERE state = 'dead'""",
    """CREATE INDEX ix_outbox_open ON outbox (lane, seq) WHERE state IN ('pending', 'sending')""",
    """CREATE TABLE lanes (
    "key" VARCHAR NOT NULL,
    active INTEGER NOT NULL,
    lease_owner VARCHAR,
    lease_until FLOAT,
    remote_session_id VARCHAR,
    PRIMARY KEY ("key")
)""",
    """CREATE INDEX ix_lanes_active ON lanes (lease_until) WHERE active = 1""",
)


def statements(sql: tuple[str, ...]) -> Callable[[Any], None]:
    """A migration that runs these statements in order (both dialects)."""

    def apply(conn: Any) -> None:
        for statement in sql:
            conn.execute(statement)

    return apply


def _initial(conn: sqlite3.Connection) -> None:
    statements(_INITIAL)(conn)
    write_initial_meta(conn)


def write_initial_meta(conn: Any) -> None:
    """The facts a new store starts with (both dialects): what it is, its random id, its birth."""
    now = time.time()
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (:key, :value)",
        [
            {"key": "app", "value": "galtea-local"},
            {"key": "store_id", "value": secrets.token_hex(16)},
            {"key": "created_at", "value": repr(now)},
        ],
    )


_SESSIONS = (
    """CREATE TABLE sessions (
    seq INTEGER NOT NULL,
    custom_id VARCHAR NOT NULL,
    custom_id_generated INTEGER NOT NULL,
    version_id VARCHAR,
    product_id VARCHAR,
    test_case_id VARCHAR,
    context VARCHAR,
    metadata_json VARCHAR,
    is_production INTEGER,
    status VARCHAR,
    stopping_reason VARCHAR,
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    sync_state VARCHAR NOT NULL,
    create_sent INTEGER NOT NULL,
    remote_id VARCHAR,
    remote_version_id VARCHAR,
    PRIMARY KEY (seq)
)""",
    """CREATE INDEX ix_sessions_custom_id ON sessions (custom_id, version_id)""",
    """CREATE UNIQUE INDEX ix_sessions_remote_id ON sessions (remote_id) WHERE remote_id IS NOT NULL""",
    # SQLite cannot relax NOT NULL in place: rebuild the outbox, keeping every queued operation.
    """CREATE TABLE outbox_v2 (
    seq INTEGER NOT NULL,
    record_seq INTEGER,
    session_seq INTEGER,
    lane VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    payload VARCHAR,
    state VARCHAR NOT NULL,
    attempts INTEGER NOT NULL,
    not_before FLOAT NOT NULL,
    sending_since FLOAT,
    sent_body VARCHAR,
    last_error VARCHAR,
    last_status INTEGER,
    created_at FLOAT NOT NULL,
    settled_at FLOAT,
    PRIMARY KEY (seq),
    FOREIGN KEY(record_seq) REFERENCES inference_results (seq),
    FOREIGN KEY(session_seq) REFERENCES sessions (seq)
)""",
    """INSERT INTO outbox_v2 (seq, record_seq, session_seq, lane, kind, payload, state, attempts, not_before,
    sending_since, sent_body, last_error, last_status, created_at, settled_at)
    SELECT seq, record_seq, NULL, lane, kind, payload, state, attempts, not_before,
    sending_since, sent_body, last_error, last_status, created_at, settled_at FROM outbox""",
    """DROP TABLE outbox""",
    """ALTER TABLE outbox_v2 RENAME TO outbox""",
    """CREATE INDEX ix_outbox_dead ON outbox (record_seq) WHERE state = 'dead'""",
    """CREATE INDEX ix_outbox_open ON outbox (lane, seq) WHERE state IN ('pending', 'sending')""",
    """CREATE INDEX ix_outbox_record ON outbox (record_seq)""",
    """CREATE INDEX ix_outbox_session ON outbox (session_seq) WHERE session_seq IS NOT NULL""",
)


# Air-gap bundles: an imported record or session remembers where it came from, so a bundle
# imported twice (or two overlapping bundles) adds nothing, and a receipt can name it.
_ORIGIN = tuple(
    statement
    for table in ("inference_results", "sessions")
    for statement in (
        f"ALTER TABLE {table} ADD COLUMN origin_store_id VARCHAR",
        f"ALTER TABLE {table} ADD COLUMN origin_seq INTEGER",
        f"ALTER TABLE {table} ADD COLUMN origin_updated_at FLOAT",
    )
) + (
    """CREATE UNIQUE INDEX ix_results_origin ON inference_results (origin_store_id, origin_seq)"""
    """ WHERE origin_store_id IS NOT NULL""",
    """CREATE UNIQUE INDEX ix_sessions_origin ON sessions (origin_store_id, origin_seq)"""
    """ WHERE origin_store_id IS NOT NULL""",
)


# create() inserted into ix_outbox_record on every call. Only settled operations need a lookup by
# record (retention); open ones are found by lane and dead ones by ix_outbox_dead, so the index
# now holds done operations only and the hot path writes one index less.
LIGHTER_OUTBOX_INDEX = (
    """DROP INDEX ix_outbox_record""",
    """CREATE INDEX ix_outbox_record_done ON outbox (record_seq) WHERE state = 'done'""",
)


# Delivery exactness (issue 11). An attempt remembers the server clock offset measured when it
# was marked, so its reconciliation window and commit grace are in server time. Every remote id
# a local record ever owned is kept (compactly, beyond retention and through bundle receipts),
# so reconciliation never adopts a record that an older or imported row owns; triggers catch
# every path that sets a remote id, present and future.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # Unix seconds from SQLite's clock (3.40 has no unixepoch subsec)
DELIVERY = (
    """CREATE INDEX ix_lanes_remote_session ON lanes (remote_session_id) WHERE remote_session_id IS NOT NULL""",
    """ALTER TABLE outbox ADD COLUMN sending_offset_s FLOAT""",
    """CREATE TABLE owned_remote_ids (
    remote_id VARCHAR NOT NULL,
    owned_at FLOAT NOT NULL,
    PRIMARY KEY (remote_id)
)""",
    f"""INSERT OR IGNORE INTO owned_remote_ids (remote_id, owned_at)"""
    f""" SELECT remote_id, {_NOW} FROM inference_results WHERE remote_id IS NOT NULL""",
    f"""CREATE TRIGGER tr_results_owned_on_update AFTER UPDATE OF remote_id ON inference_results"""
    f""" WHEN NEW.remote_id IS NOT NULL BEGIN"""
    f""" INSERT OR IGNORE INTO owned_remote_ids (remote_id, owned_at) VALUES (NEW.remote_id, {_NOW}); END""",
    f"""CREATE TRIGGER tr_results_owned_on_insert AFTER INSERT ON inference_results"""
    f""" WHEN NEW.remote_id IS NOT NULL BEGIN"""
    f""" INSERT OR IGNORE INTO owned_remote_ids (remote_id, owned_at) VALUES (NEW.remote_id, {_NOW}); END""",
)


# Sustained load (issue 17): statements whose cost does not grow with the backlog.
# - Operations by record, all states. Deleting a record made SQLite's foreign-key check scan
#   the whole outbox for children (a partial index cannot serve it): retention held the write
#   lock for seconds. It also serves a record's open operations in one lookup, where the probe
#   by lane walked the lane's backlog on every settle (galtea_local/outbox/probes.py), and the
#   settled-by-record probe, so that partial index goes: settling moves an operation between
#   fewer indexes. create() pays one index insert for it.
# - Records by sync state: ``status`` counts through this narrow index instead of reading
#   every row of the widest table, and retention reads only settled records.
BOUNDED_PROBES = (
    """CREATE INDEX ix_outbox_by_record ON outbox (record_seq)""",
    """DROP INDEX ix_outbox_record_done""",
    """CREATE INDEX ix_results_sync_state ON inference_results (sync_state)""",
)


# SDK 5.12 session parity: run_id goes upstream as runId, get_or_create() sessions join an
# upstream session with the same custom id (join_existing), sessions.delete() hides a session
# locally (deleted), and a session's error is shown as the SDK shows it. Same SQL on both backends.
SESSION_PARITY = (
    """ALTER TABLE sessions ADD COLUMN run_id VARCHAR""",
    """ALTER TABLE sessions ADD COLUMN join_existing INTEGER NOT NULL DEFAULT 0""",
    """ALTER TABLE sessions ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0""",
    """ALTER TABLE sessions ADD COLUMN error VARCHAR""",
)


# Spans (issue 15): one row per span, written when the span ends. ``span_id`` is the
# client-generated upstream id (``trace_<16 hex>``) and so the span's idempotency key;
# ``record_seq`` points at the local trace when ``trace_ref`` is one of this store's local
# ids (no foreign key: retention deletes a synced trace and its synced spans separately).
# The queued index is what the daemon scans; settled spans leave it.
SPANS = (
    """CREATE TABLE spans (
    seq INTEGER NOT NULL,
    span_id VARCHAR NOT NULL,
    trace_ref VARCHAR NOT NULL,
    record_seq INTEGER,
    name VARCHAR NOT NULL,
    type VARCHAR,
    description VARCHAR,
    input_data VARCHAR,
    output_data VARCHAR,
    error VARCHAR,
    metadata_json VARCHAR,
    parent_span_id VARCHAR,
    start_ns BIGINT,
    end_ns BIGINT,
    start_time VARCHAR,
    end_time VARCHAR,
    latency_ms FLOAT,
    sync_state VARCHAR NOT NULL,
    pushed INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    not_before FLOAT NOT NULL,
    lease_owner VARCHAR,
    lease_until FLOAT,
    last_error VARCHAR,
    remote_trace_id VARCHAR,
    created_at FLOAT NOT NULL,
    settled_at FLOAT,
    PRIMARY KEY (seq)
)""",
    """CREATE UNIQUE INDEX ix_spans_span_id ON spans (span_id)""",
    # Spans of a local trace are found by its seq (appended in order: cheap on the hot path);
    # only spans recorded under a remote trace id need the text index.
    """CREATE INDEX ix_spans_record ON spans (record_seq) WHERE record_seq IS NOT NULL""",
    """CREATE INDEX ix_spans_remote_trace ON spans (trace_ref) WHERE record_seq IS NULL""",
    """CREATE INDEX ix_spans_queued ON spans (seq) WHERE sync_state = 'queued'""",
)


# Evaluations queued offline (issue 15): one row per evaluations.create() call, sent after the
# trace (or session) it names is upstream. ``remote_json`` keeps the API's answer (one
# evaluation per metric); ``evaluation_ids`` maps each upstream id back to its row.
EVALUATIONS = (
    """CREATE TABLE evaluations (
    seq INTEGER NOT NULL,
    trace_ref VARCHAR,
    record_seq INTEGER,
    session_ref VARCHAR,
    session_seq INTEGER,
    metrics_json VARCHAR,
    specification_ids_json VARCHAR,
    run_id VARCHAR,
    sync_state VARCHAR NOT NULL,
    attempts INTEGER NOT NULL,
    not_before FLOAT NOT NULL,
    sending_since FLOAT,
    lease_owner VARCHAR,
    lease_until FLOAT,
    last_error VARCHAR,
    remote_json VARCHAR,
    created_at FLOAT NOT NULL,
    settled_at FLOAT,
    PRIMARY KEY (seq)
)""",
    """CREATE INDEX ix_evaluations_queued ON evaluations (seq) WHERE sync_state = 'queued'""",
    # Retention asks "does a waiting evaluation need this record?" in one lookup.
    """CREATE INDEX ix_evaluations_waiting ON evaluations (record_seq) WHERE sync_state = 'queued'""",
    """CREATE TABLE evaluation_ids (
    remote_id VARCHAR NOT NULL,
    evaluation_seq INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (remote_id)
)""",
)


# Bundle bookkeeping for signed receipts: which export carried which row (origin), which exports
# were imported (connected side). The same SQL on both backends (PostgreSQL: seq as BIGINT).
BUNDLE_LEDGER = (
    """CREATE TABLE bundle_exported (
    kind VARCHAR NOT NULL,
    seq {int} NOT NULL,
    export_id VARCHAR NOT NULL,
    PRIMARY KEY (kind, seq, export_id)
)""",
    """CREATE TABLE bundle_imports (
    origin_store_id VARCHAR NOT NULL,
    export_id VARCHAR NOT NULL,
    imported_at FLOAT NOT NULL,
    PRIMARY KEY (origin_store_id, export_id)
)""",
)


# How a maybe-sent attempt ended decides how long it may still commit (daemon/maybe_sent.py).
# The same SQL on both backends.
SENT_STATUS = ("ALTER TABLE outbox ADD COLUMN sent_status INTEGER",)


# Files attached to a turn (issue 14): one row per file the app passed, its copy in the blob
# folder beside the store (``blob``) and how far its upload went (daemon/uploads.py). The
# same SQL on both backends ({int}: BIGINT on PostgreSQL, {float}: DOUBLE PRECISION).
BLOBS = (
    """CREATE TABLE attachments (
    blob VARCHAR NOT NULL,
    record_seq {int} NOT NULL,
    side VARCHAR NOT NULL,
    position INTEGER NOT NULL,
    filename VARCHAR NOT NULL,
    mime_type VARCHAR,
    size {int} NOT NULL,
    sha256 VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    upload_url VARCHAR,
    download_url VARCHAR,
    presigned_at {float},
    uri VARCHAR,
    uploaded_at {float},
    created_at {float} NOT NULL,
    PRIMARY KEY (blob)
)""",
    """CREATE INDEX ix_attachments_record ON attachments (record_seq)""",
    """CREATE INDEX ix_attachments_waiting ON attachments (record_seq) WHERE state != 'uploaded'""",
)


# The version and product cache (issue 14): what versions.get/get_or_create and products.get
# answer offline, refreshed by the daemon; a version made offline is queued in its own row and the
# operations that name it wait for it (outbox.waits_version). SQLite text; pg_migrations adapts it.
VERSIONS_CACHE = (
    """CREATE TABLE versions (
    seq INTEGER NOT NULL,
    local_id VARCHAR,
    remote_id VARCHAR,
    product_id VARCHAR NOT NULL,
    name VARCHAR,
    facts_key VARCHAR,
    remote_json VARCHAR,
    sync_state VARCHAR NOT NULL,
    attempts INTEGER NOT NULL,
    not_before FLOAT NOT NULL,
    sending_since FLOAT,
    lease_owner VARCHAR,
    lease_until FLOAT,
    last_error VARCHAR,
    created_at FLOAT NOT NULL,
    refreshed_at FLOAT,
    PRIMARY KEY (seq)
)""",
    """CREATE UNIQUE INDEX ix_versions_local_id ON versions (local_id) WHERE local_id IS NOT NULL""",
    """CREATE INDEX ix_versions_remote_id ON versions (remote_id)""",
    """CREATE INDEX ix_versions_facts ON versions (product_id, facts_key)""",
    """CREATE INDEX ix_versions_queued ON versions (seq) WHERE sync_state = 'queued'""",
    """CREATE TABLE products (
    id VARCHAR NOT NULL,
    remote_json VARCHAR NOT NULL,
    refreshed_at FLOAT NOT NULL,
    PRIMARY KEY (id)
)""",
    """ALTER TABLE outbox ADD COLUMN waits_version INTEGER""",
    """CREATE INDEX ix_outbox_waits_version ON outbox (waits_version) WHERE waits_version IS NOT NULL""",
)


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_initial", _initial),
    ("0002_offline_sessions", statements(_SESSIONS)),
    ("0003_bundle_origin", statements(_ORIGIN)),
    ("0004_lighter_outbox_index", statements(LIGHTER_OUTBOX_INDEX)),
    ("0005_delivery_exactness", statements(DELIVERY)),
    ("0006a_bounded_probes", statements(BOUNDED_PROBES)),
    ("0007_session_parity", statements(SESSION_PARITY)),
    ("0008a_spans", statements(SPANS)),
    ("0008b_evaluations", statements(EVALUATIONS)),
    ("0009_bundle_ledger", statements(tuple(sql.format(int="INTEGER") for sql in BUNDLE_LEDGER))),
    ("0011_sent_status", statements(SENT_STATUS)),
    ("0012_blobs", statements(tuple(sql.format(int="INTEGER", float="FLOAT") for sql in BLOBS))),
    ("0013_versions_cache", statements(VERSIONS_CACHE)),
]


def refuse_foreign(conn: sqlite3.Connection, path: Path) -> set[str]:
    """The store's table names; :class:`NotAStoreError` if it is some other SQLite database."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "schema_migrations" not in tables:
        raise NotAStoreError(f"store {path}: the file is an SQLite database but not a galtea-local store")
    return tables


def upgrade(conn: sqlite3.Connection, path: Path) -> list[str]:
    """Apply every migration this store lacks, in order; return their names."""
    tables = refuse_foreign(conn, path)
    applied = set()
    if tables:
        applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    return apply_missing(conn, MIGRATIONS, applied, path, time.time())


def apply_missing(conn: Any, known: list[tuple[str, Callable[[Any], None]]], applied: set[str], where: object,
                  now: float) -> list[str]:
    """Apply the ``known`` migrations not in ``applied``, each recorded with its change; return their names."""
    unknown = sorted(applied - {name for name, _ in known})
    if unknown:
        raise NotAStoreError(
            f"store {where}: written by a newer galtea-local (migrations {', '.join(unknown)}); upgrade the package"
        )
    done = []
    for name, apply in known:
        if name in applied:
            continue
        apply(conn)
        conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (:name, :at)", {"name": name, "at": now})
        done.append(name)
    return done


def read_store_id(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
