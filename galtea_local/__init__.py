"""galtea-local: the Galtea SDK's inference-result calls, answered from a local queue.

``from galtea_local import Galtea`` and use it as the official client:
``create()``/``update()`` return in microseconds and a sync daemon pushes the
queue upstream later. This package never imports an HTTP client.
"""

from galtea_local.client import Galtea
from galtea_local.catalog_read import Product, Version
from galtea_local.errors import (
    AmbiguousVersionNameException,
    BundleError,
    ConfigError,
    EntityNotFoundException,
    EntityNotFoundHTTPError,
    GaltealocalError,
    InvalidInputError,
    InvalidTypeError,
    NotAStoreError,
    NotFoundError,
    OutcomeUnknownError,
    RecordTooLargeError,
    StoreError,
    StoreFullError,
    StoreOpenError,
    StoreReadOnlyError,
    StoreTimeoutError,
    StoreUnavailableError,
    VersionNameConflictException,
)
from galtea_local.read_model import (
    AttachedFile,
    InferenceResult,
    InferenceResultStatus,
    Session,
    SessionStatus,
    SyncState,
    Trace,
    TraceStatus,
)

# The app-facing surface: the SDK's names for what we return and raise, plus our own errors.
# The daemon-side errors (UpstreamError and its subclasses) are not part of it: an app never sees them.
__all__ = [
    "AmbiguousVersionNameException",
    "AttachedFile",
    "BundleError",
    "ConfigError",
    "EntityNotFoundException",
    "EntityNotFoundHTTPError",
    "Galtea",
    "GalteaSpan",
    "GaltealocalError",
    "InferenceResult",
    "InferenceResultStatus",
    "InvalidInputError",
    "InvalidTypeError",
    "NotAStoreError",
    "NotFoundError",
    "OutcomeUnknownError",
    "Product",
    "RecordTooLargeError",
    "Session",
    "SessionStatus",
    "Span",
    "StoreError",
    "StoreFullError",
    "StoreOpenError",
    "StoreReadOnlyError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "SyncState",
    "Trace",
    "TraceStatus",
    "Version",
    "VersionNameConflictException",
    "clear_context",
    "get_trace_id",
    "set_context",
    "start_span",
    "traced",
]

# The tracing names load galtea_local.spans on first use: `import galtea_local` stays fast.
_SPAN_NAMES = frozenset({"GalteaSpan", "Span", "clear_context", "get_trace_id", "set_context", "start_span", "traced",
                         "get_inference_result_id", "start_trace", "trace"})  # the last three: deprecated


def __dir__() -> list[str]:
    # The lazily loaded names are listed like the others; the deprecated ones are not.
    return sorted(set(globals()) | (_SPAN_NAMES & set(__all__)))


def __getattr__(name: str) -> object:
    if name in _SPAN_NAMES:
        from galtea_local import spans

        return getattr(spans, name)
    raise AttributeError(f"module 'galtea_local' has no attribute {name!r}")
