"""galtea-local: the Galtea SDK's inference-result calls, answered from a local queue.

``from galtea_local import Galtea`` and use it as the official client:
``create()``/``update()`` return in microseconds and a sync daemon pushes the
queue upstream later. This package never imports an HTTP client.
"""

from galtea_local.client import Galtea
from galtea_local.errors import (
    GaltealocalError,
    InvalidInputError,
    InvalidTypeError,
    NotAStoreError,
    NotFoundError,
    OutcomeUnknownError,
    RecordTooLargeError,
    StoreError,
    StoreOpenError,
    StoreReadOnlyError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from galtea_local.read_model import InferenceResult, InferenceResultStatus, SyncState

__all__ = [
    "Galtea",
    "GaltealocalError",
    "InferenceResult",
    "InferenceResultStatus",
    "InvalidInputError",
    "InvalidTypeError",
    "NotAStoreError",
    "NotFoundError",
    "OutcomeUnknownError",
    "RecordTooLargeError",
    "StoreError",
    "StoreOpenError",
    "StoreReadOnlyError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "SyncState",
]
