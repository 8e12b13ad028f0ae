"""The store's tables, declared once with SQLModel.

Three tables carry the queue:

- ``inference_results``: one row per record, holding the *current local view*
  (every update applied) plus what we learned upstream (``remote_id``,
  ``remote_index``). ``sync_state`` is ``queued`` until every operation of the
  record is confirmed upstream, then ``synced``; ``dead`` while one of its
  operations is dead-lettered.
- ``outbox``: one row per operation to apply upstream (create, update, delete).
  Only :mod:`galtea_local.outbox` changes an operation's state.
- ``lanes``: one row per ordering key (a session). Operations of a lane go
  upstream one at a time in ``seq`` order; a lane is claimed as a whole with a
  lease, so different lanes go in parallel and one lane never does.

Times are UNIX epoch seconds (REAL): cheap to write on the hot path and to
compare in SQL; the read model turns them into ISO 8601.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import BigInteger, Index, text
from sqlmodel import Field, SQLModel

from galtea_local.catalog_models import ProductRow, VersionRow
from galtea_local.outbox.kinds import OPEN


def _origin_index(name: str) -> Index:
    """One row per (origin store, origin row): what makes importing a bundle twice add nothing."""
    return Index(
        name,
        "origin_store_id",
        "origin_seq",
        unique=True,
        sqlite_where=text("origin_store_id IS NOT NULL"),
        postgresql_where=text("origin_store_id IS NOT NULL"),
    )


def _partial_index(name: str, column: str, where: str) -> Index:
    """An index over the rows matching ``where`` only, on both dialects."""
    return Index(name, column, sqlite_where=text(where), postgresql_where=text(where))


class Meta(SQLModel, table=True):
    """Key/value facts about the store (``store_id``, ``created_at``, auth pause, ...)."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class SchemaMigration(SQLModel, table=True):
    """One row per applied migration, written in the same transaction as its change."""

    __tablename__ = "schema_migrations"
    name: str = Field(primary_key=True)
    applied_at: float


class InferenceResultRow(SQLModel, table=True):
    """A record. Its local id is ``loc_<store prefix>_<seq>``: derived, not stored, so the
    hot path maintains no extra index for it; ``seq`` is never reused (retention keeps
    the newest row)."""

    __tablename__ = "inference_results"
    __table_args__ = (
        Index(
            "ix_results_remote_id",
            "remote_id",
            unique=True,
            sqlite_where=text("remote_id IS NOT NULL"),
            postgresql_where=text("remote_id IS NOT NULL"),
        ),
        Index("ix_results_session", "session_id"),
        Index("ix_results_sync_state", "sync_state"),  # status counts through it, not the wide rows
        _origin_index("ix_results_origin"),
    )

    seq: Optional[int] = Field(default=None, primary_key=True)
    lane: str
    session_id: Optional[str] = None
    session_custom_id: Optional[str] = None
    version_id: Optional[str] = None
    product_id: Optional[str] = None
    status: str
    error: Optional[str] = None
    input: Optional[str] = None  # JSON text: a string or an object, as given
    actual_output: Optional[str] = None  # JSON text
    retrieval_context: Optional[str] = None
    latency: Optional[float] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    cache_read_input_tokens: Optional[int] = None
    tokens: Optional[int] = None
    cost_per_input_token: Optional[float] = None
    cost_per_output_token: Optional[float] = None
    cost_per_cache_read_input_token: Optional[float] = None
    cost: Optional[float] = None
    conversation_simulator_version: Optional[str] = None
    created_at: float
    updated_at: float
    sync_state: str = "queued"  # queued | synced | dead
    create_sent: int = 0  # 1 once the create left at least once: later updates cannot fold
    deleted: int = 0
    remote_id: Optional[str] = None
    remote_index: Optional[int] = None
    remote_session_id: Optional[str] = None
    remote_created_at: Optional[str] = None
    # Set on a record imported from an air-gap bundle: which store and row it came from, and
    # the origin's updated_at of the version held here (a receipt reports it back).
    origin_store_id: Optional[str] = None
    origin_seq: Optional[int] = None
    origin_updated_at: Optional[float] = None


class OutboxOperation(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        # The open operations of each lane in order: the head of a lane is one
        # index probe. Settled operations leave the index.
        Index(
            "ix_outbox_open",
            "lane",
            "seq",
            sqlite_where=text(OPEN),
            postgresql_where=text(OPEN),
        ),
        Index(
            "ix_outbox_dead",
            "record_seq",
            sqlite_where=text("state = 'dead'"),
            postgresql_where=text("state = 'dead'"),
        ),
        # A record's operations, one lookup whatever its lane's backlog (outbox/probes.py);
        # also what the foreign-key check needs when retention deletes a record.
        Index("ix_outbox_by_record", "record_seq"),
        Index(
            "ix_outbox_session",
            "session_seq",
            sqlite_where=text("session_seq IS NOT NULL"),
            postgresql_where=text("session_seq IS NOT NULL"),
        ),
        _partial_index("ix_outbox_waits_version", "waits_version", "waits_version IS NOT NULL"),
    )

    seq: Optional[int] = Field(default=None, primary_key=True)
    # Exactly one of the two: the record or the session the operation applies to.
    record_seq: Optional[int] = Field(default=None, foreign_key="inference_results.seq")
    session_seq: Optional[int] = Field(default=None, foreign_key="sessions.seq")
    lane: str
    kind: str  # create | update | delete | session_create | session_update | session_finish
    payload: Optional[str] = None  # JSON: the changed fields of an update
    state: str = "pending"  # pending | sending | done | dead
    attempts: int = 0
    not_before: float = 0.0  # backoff: not claimed before this time
    sending_since: Optional[float] = None  # write-ahead mark: the attempt's start
    sent_body: Optional[str] = None  # what the last attempt sent (reconciliation)
    last_error: Optional[str] = None
    last_status: Optional[int] = None
    created_at: float
    settled_at: Optional[float] = None
    # Server clock minus ours when the attempt was marked: its start in server time (issue 11).
    sending_offset_s: Optional[float] = None
    # The HTTP status that answered a maybe-sent attempt (None: no answer): its commit grace (issue 17).
    sent_status: Optional[int] = None
    # A version made offline that this operation names and that upstream has not answered yet
    # (0013_versions_cache): the operation is not claimed until the version's push settles.
    waits_version: Optional[int] = None


class OwnedRemoteId(SQLModel, table=True):
    """A remote id some local record owns or owned: reconciliation never adopts it.

    Kept after retention deletes the row (filled by triggers on ``inference_results``)."""

    __tablename__ = "owned_remote_ids"

    remote_id: str = Field(primary_key=True)
    owned_at: float


class SessionRow(SQLModel, table=True):
    """A session created offline. Its local id is ``ses_<store prefix>_<seq>``; its lane is
    ``ls:<seq>``, shared with its turns so the session goes upstream before any of them."""

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_custom_id", "custom_id", "version_id"),
        Index(
            "ix_sessions_remote_id",
            "remote_id",
            unique=True,
            sqlite_where=text("remote_id IS NOT NULL"),
            postgresql_where=text("remote_id IS NOT NULL"),
        ),
        _origin_index("ix_sessions_origin"),
    )

    seq: Optional[int] = Field(default=None, primary_key=True)
    custom_id: str  # generated when the caller gives none, so a lost answer is found again
    custom_id_generated: int = 0
    version_id: Optional[str] = None
    product_id: Optional[str] = None
    test_case_id: Optional[str] = None
    context: Optional[str] = None
    metadata_json: Optional[str] = None
    is_production: Optional[int] = None
    status: Optional[str] = None
    stopping_reason: Optional[str] = None
    created_at: float
    updated_at: float
    sync_state: str = "queued"
    create_sent: int = 0  # 1 once the create left: later changes are PATCHes, not folded
    remote_id: Optional[str] = None
    remote_version_id: Optional[str] = None
    origin_store_id: Optional[str] = None  # as on inference_results: set when imported from a bundle
    origin_seq: Optional[int] = None
    origin_updated_at: Optional[float] = None
    # 0007_session_parity (added by ALTER TABLE, so after the origin columns and with server defaults).
    run_id: Optional[str] = None  # sent as runId
    join_existing: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})  # get_or_create()
    deleted: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})  # sessions.delete()
    error: Optional[str] = None


class Lane(SQLModel, table=True):
    __tablename__ = "lanes"
    __table_args__ = (
        Index(
            "ix_lanes_active",
            "lease_until",
            sqlite_where=text("active = 1"),
            postgresql_where=text("active = 1"),
        ),
        # A turn logged by a remote session id finds the lane that pushes to it under another name.
        Index(
            "ix_lanes_remote_session",
            "remote_session_id",
            sqlite_where=text("remote_session_id IS NOT NULL"),
            postgresql_where=text("remote_session_id IS NOT NULL"),
        ),
    )

    key: str = Field(primary_key=True)
    active: int = 1
    lease_owner: Optional[str] = None
    lease_until: Optional[float] = None
    remote_session_id: Optional[str] = None  # learned for session_custom_id lanes


class SpanRow(SQLModel, table=True):
    """A span, written when it ends (migration 0008a). ``sync_state`` is ``queued`` until the
    span is upstream (or its upstream delete is), ``synced``, ``dead`` (refused for good) or
    ``cancelled`` (deleted before it left). Only :mod:`galtea_local.outbox.spans` changes it."""

    __tablename__ = "spans"
    __table_args__ = (
        Index("ix_spans_span_id", "span_id", unique=True),
        _partial_index("ix_spans_record", "record_seq", "record_seq IS NOT NULL"),
        _partial_index("ix_spans_remote_trace", "trace_ref", "record_seq IS NULL"),
        _partial_index("ix_spans_queued", "seq", "sync_state = 'queued'"),
    )

    seq: Optional[int] = Field(default=None, primary_key=True)
    span_id: str  # trace_<16 hex>: the upstream id, generated here, so a re-send is recognised
    trace_ref: str  # the trace id the app gave (local loc_... or remote)
    record_seq: Optional[int] = None  # the local trace, when trace_ref is one of ours
    name: str
    type: Optional[str] = None
    description: Optional[str] = None
    input_data: Optional[str] = None  # JSON text, or a raw attribute string (read as {"value": ...})
    output_data: Optional[str] = None
    error: Optional[str] = None
    metadata_json: Optional[str] = None
    parent_span_id: Optional[str] = None
    start_ns: Optional[int] = Field(default=None, sa_type=BigInteger)  # OTel spans: exact nanoseconds
    end_ns: Optional[int] = Field(default=None, sa_type=BigInteger)
    start_time: Optional[str] = None  # spans.create(): the ISO text given
    end_time: Optional[str] = None
    latency_ms: Optional[float] = None
    sync_state: str = "queued"
    pushed: int = 0  # 1 once upstream has it: a later delete must be sent
    deleted: int = 0
    attempts: int = 0
    not_before: float = 0.0
    lease_owner: Optional[str] = None
    lease_until: Optional[float] = None
    last_error: Optional[str] = None
    remote_trace_id: Optional[str] = None
    created_at: float
    settled_at: Optional[float] = None


class EvaluationRow(SQLModel, table=True):
    """Evaluations asked for offline (migration 0008b): one row per ``evaluations.create()``.
    ``sync_state`` is ``queued`` until the API answered (``synced``, its evaluations in
    ``remote_json``) or refused (``dead``). Only :mod:`galtea_local.outbox.evaluations` changes it."""

    __tablename__ = "evaluations"
    __table_args__ = (
        _partial_index("ix_evaluations_queued", "seq", "sync_state = 'queued'"),
        _partial_index("ix_evaluations_waiting", "record_seq", "sync_state = 'queued'"),
    )

    seq: Optional[int] = Field(default=None, primary_key=True)
    trace_ref: Optional[str] = None  # exactly one of trace_ref / session_ref
    record_seq: Optional[int] = None  # the local trace, when trace_ref is one of ours
    session_ref: Optional[str] = None
    session_seq: Optional[int] = None  # the local session, when session_ref is one of ours
    metrics_json: Optional[str] = None  # the wire metrics: [{"name"|"id", "score"?}, ...]
    specification_ids_json: Optional[str] = None
    run_id: Optional[str] = None
    sync_state: str = "queued"
    attempts: int = 0
    not_before: float = 0.0
    sending_since: Optional[float] = None  # write-ahead mark: "maybe sent" after a crash
    lease_owner: Optional[str] = None
    lease_until: Optional[float] = None
    last_error: Optional[str] = None
    remote_json: Optional[str] = None
    created_at: float
    settled_at: Optional[float] = None


class EvaluationIdRow(SQLModel, table=True):
    """An upstream evaluation id and the local row (and metric position) it answers."""

    __tablename__ = "evaluation_ids"
    remote_id: str = Field(primary_key=True)
    evaluation_seq: int
    position: int


class BundleExported(SQLModel, table=True):
    """Which export carried which row (origin side): a receipt may confirm only rows exported in a
    bundle its writer imported. Forgotten once a receipt confirms the row."""

    __tablename__ = "bundle_exported"

    kind: str = Field(primary_key=True)  # record | session
    seq: int = Field(primary_key=True)
    export_id: str = Field(primary_key=True)


class BundleImport(SQLModel, table=True):
    """Which exports of which origin this store imported (connected side); listed in its receipts."""

    __tablename__ = "bundle_imports"

    origin_store_id: str = Field(primary_key=True)
    export_id: str = Field(primary_key=True)
    imported_at: float


class AttachmentRow(SQLModel, table=True):
    """A file attached to a turn (migration 0012): its copy in the blob folder (``blob``, also the
    placeholder the record's input/output names it by) and its upload's progress, ``pending`` ->
    ``presigned`` (links kept, so a crash resumes the same upload) -> ``uploaded`` (``uri``)."""

    __tablename__ = "attachments"
    __table_args__ = (
        Index("ix_attachments_record", "record_seq"),
        _partial_index("ix_attachments_waiting", "record_seq", "state != 'uploaded'"),
    )

    blob: str = Field(primary_key=True)
    record_seq: int
    side: str  # input | output
    position: int
    filename: str
    mime_type: Optional[str] = None
    size: int
    sha256: str
    state: str
    upload_url: Optional[str] = None
    download_url: Optional[str] = None
    presigned_at: Optional[float] = None
    uri: Optional[str] = None
    uploaded_at: Optional[float] = None
    created_at: float


TABLES = [
    Meta.__table__,
    SchemaMigration.__table__,
    InferenceResultRow.__table__,
    SessionRow.__table__,
    OutboxOperation.__table__,
    Lane.__table__,
    SpanRow.__table__,
    EvaluationRow.__table__,
    EvaluationIdRow.__table__,
    OwnedRemoteId.__table__,
    BundleExported.__table__,
    BundleImport.__table__,
    AttachmentRow.__table__,
    VersionRow.__table__,
    ProductRow.__table__,
]
COLUMNS = [c.name for c in InferenceResultRow.__table__.columns]
