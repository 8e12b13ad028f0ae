"""Every error galtea-local raises, under one base class.

    GaltealocalError
    ├── InvalidInputError (also ValueError)     bad argument to create()/update(); nothing written
    │   └── RecordTooLargeError                 a record over the configured size limit
    ├── InvalidTypeError (also TypeError)       an argument of the wrong type; nothing written
    ├── EntityNotFoundException                 the SDK's name: nothing with that id (catch this)
    │   └── EntityNotFoundHTTPError             the SDK's name for a not-found from the API
    │       └── NotFoundError (also KeyError)   what we raise: no local record/session with that id
    ├── StoreError                              the store cannot be used
    │   ├── StoreOpenError                      the path cannot be opened or created
    │   ├── NotAStoreError                      the file is not a galtea-local store
    │   ├── StoreFullError                      the size cap is reached and the policy refuses
    │   ├── StoreUnavailableError               the database server cannot be reached or dropped us; nothing written
    │   ├── StoreReadOnlyError                  the database refuses writes (failover, maintenance); nothing written
    │   ├── StoreTimeoutError                   a lock or statement outlasted ``store.busy_timeout_s``; nothing written
    │   └── OutcomeUnknownError                 the COMMIT's answer was lost and its outcome cannot be told
    ├── ConfigError (also ValueError)           a bad setting: names the file, the key, what is allowed
    ├── MissingExtraError                       a feature needs an optional extra: names the pip command
    ├── BundleError                             an air-gap bundle or receipt refused: names the file and the fix
    └── UpstreamError                           anything the Galtea API (or the way to it) did
        ├── NotSentError                        the request surely never reached the server: retry freely
        ├── MaybeSentError                      it may have been applied: reconcile before re-sending a create
        ├── RetryLaterError                     429/503: back off, honouring ``retry_after`` (seconds);
        │                                       a 503 to a write is also ``maybe_sent`` (a proxy may answer it
        │                                       after the API applied the request)
        ├── AuthError                           401/403: pause all pushing, dead-letter nothing
        └── RejectedError                       any other 4xx: dead-letter the operation with ``message``

Third-party errors (sqlite3, psycopg, SQLAlchemy, httpx) are translated where they are
caught; nothing above the store or the upstream client sees them.
"""

from __future__ import annotations


class GaltealocalError(Exception):
    """Base class of every error raised by galtea-local."""


class InvalidInputError(GaltealocalError, ValueError):
    """An argument has a bad value. The message names the field and the fix."""


class RecordTooLargeError(InvalidInputError):
    """The serialized record is larger than ``store.max_record_bytes``."""


class InvalidTypeError(GaltealocalError, TypeError):
    """An argument has the wrong type. The message names the field and the fix."""


class EntityNotFoundException(GaltealocalError):
    """Nothing has the id or custom id you named: the official SDK's class name and attributes.

    An app that switched its import from ``galtea`` to ``galtea_local`` keeps its
    ``except EntityNotFoundException`` / ``except EntityNotFoundHTTPError`` clauses.
    An ``except requests.HTTPError`` clause does not catch it: that would make this
    network-free library depend on an HTTP client (see docs/sdk-parity.md).
    """

    name: str = "EntityNotFoundException"
    status_code: int = 404


class EntityNotFoundHTTPError(EntityNotFoundException):
    """The SDK raises this name where the API answered 404; we raise its subclass :class:`NotFoundError`.

    ``response`` and ``request`` are None: the answer came from the local store.
    """

    name: str = "EntityNotFoundHTTPError"
    response: None = None
    request: None = None


class NotFoundError(EntityNotFoundHTTPError, KeyError):
    """No local record or session has that id (local or remote).

    Also a ``KeyError``, as it was before the SDK names were added, so older
    ``except KeyError`` clauses keep working.
    """

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable.
        return str(self.args[0]) if self.args else ""


class VersionNameConflictException(InvalidInputError):
    """``versions.get_or_create(name=...)``: another version of the product already holds the name.

    The official SDK's name; raised locally when this store knows that version, else the
    daemon dead-letters the push with the API's 409 message.
    """

    name: str = "VersionNameConflictException"
    status_code: int = 409


class AmbiguousVersionNameException(InvalidInputError):
    """``versions.get_by_name``: more than one version of the product answers to the name (the SDK's name)."""

    name: str = "AmbiguousVersionNameException"


class StoreError(GaltealocalError):
    """The store cannot be used."""


class StoreUnavailableError(StoreError):
    """The database server refused the connection, dropped it, or is shutting down.

    Raised only when nothing was written (a lost COMMIT raises
    :class:`OutcomeUnknownError` instead): retrying the call is safe.
    """


class StoreReadOnlyError(StoreError):
    """The database accepts reads but refuses writes (a standby after a failover,
    ``default_transaction_read_only``). Nothing was written; retry once it is writable."""


class StoreTimeoutError(StoreError):
    """A lock wait or a statement took longer than ``store.busy_timeout_s`` (a lock held by
    another session, an overloaded server). Nothing was written; retry, or find the holder."""


class OutcomeUnknownError(StoreError):
    """The connection broke while COMMIT was in flight, and the store could not find out
    whether it landed. ``record_id`` names the record (or session) the call wrote, when known:
    look it up with ``get()`` once the database answers again, rather than creating it twice.
    ``transaction`` is the PostgreSQL transaction id, for ``pg_xact_status()``.
    """

    def __init__(self, message: str, *, transaction: str | None = None, record_id: str | None = None,
                 result: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.transaction = transaction
        self.record_id = record_id
        # What the transaction function returned (e.g. the new row's seq): lets the caller name the record.
        self.result = result

    def naming(self, record_id: str) -> OutcomeUnknownError:
        """The same error, with the id of the record the call wrote in its message."""
        return OutcomeUnknownError(f"{self.message}; the record is {record_id}: get() it before writing it again",
                                   transaction=self.transaction, record_id=record_id, result=self.result)


class StoreOpenError(StoreError):
    """The store path cannot be opened or created."""


class NotAStoreError(StoreError):
    """The file exists but is not a galtea-local store (or is from a newer version)."""


class StoreFullError(StoreError):
    """The store reached its size cap and the retention policy refuses new records."""


class ConfigError(GaltealocalError, ValueError):
    """A setting is invalid. The message names the source, the key and what is allowed."""


class MissingExtraError(GaltealocalError):
    """A feature needs an optional extra that is not installed.

    ``extra`` is the extra's name (``"daemon"``, ``"postgres"``), ``module`` the
    missing import; the message names the ``pip install`` command.
    """

    def __init__(self, extra: str, module: str, what: str) -> None:
        self.extra, self.module = extra, module
        super().__init__(f"{what} needs the [{extra}] extra ({module} is not installed): "
                         f"pip install 'galtea-local[{extra}]'")


class BundleError(GaltealocalError):
    """An export bundle or receipt cannot be used (corrupt, truncated, foreign, newer, wrong store).

    Raised before anything is written: a refused file imports nothing.
    """


class UpstreamError(GaltealocalError):
    """Something the Galtea API, or the network on the way to it, did.

    ``status`` is the HTTP status when there was an answer, else None.
    ``maybe_sent`` is True when the server may have applied the request: a create
    must then be reconciled before it is sent again. Each subclass says which.
    """

    maybe_sent: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotSentError(UpstreamError):
    """The request never reached the server (connect error, pool timeout): retry freely."""


class MaybeSentError(UpstreamError):
    """The server may have applied the request (read timeout, dropped answer, 500/502/504)."""

    maybe_sent = True


class RetryLaterError(UpstreamError):
    """The server asked us to slow down (429) or is unavailable (503).

    ``maybe_sent`` is True for a 503 to a write: a proxy may give it after the
    API applied the request, so a create is reconciled before it goes again.
    """

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 maybe_sent: bool = False) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent


class AuthError(UpstreamError):
    """The API key was refused (401/403)."""


class RejectedError(UpstreamError):
    """The server refused the request for good (a 4xx other than 401/403/429)."""
