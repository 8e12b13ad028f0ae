"""galtea-local: the Galtea SDK's inference-result calls, answered from a local queue.

``from galtea_local import Galtea`` and use it as the official client:
``create()``/``update()`` return in microseconds and a sync daemon pushes the
queue upstream later. This package never imports an HTTP client.
"""

from galtea_local.client import Galtea
from galtea_local.errors import (
    BundleError,
    ConfigError,
    EntityNotFoundException,
    EntityNotFoundHTTPError,
    GaltealocalError,
    InvalidInputError,
    InvalidTypeError,
    NotAStoreError,
    NotFoundError,
    RecordTooLargeError,
    StoreError,
    StoreFullError,
    StoreOpenError,
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
    "AttachedFile",
    "BundleError",
    "ConfigError",
    "EntityNotFoundException",
    "EntityNotFoundHTTPError",
    "Galtea",
    "GaltealocalError",
    "InferenceResult",
    "InferenceResultStatus",
    "InvalidInputError",
    "InvalidTypeError",
    "NotAStoreError",
    "NotFoundError",
    "RecordTooLargeError",
    "Session",
    "SessionStatus",
    "StoreError",
    "StoreFullError",
    "StoreOpenError",
    "SyncState",
    "Trace",
    "TraceStatus",
]
