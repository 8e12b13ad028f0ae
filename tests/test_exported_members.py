"""The public surface is exactly ``__all__``, as httpx checks its own."""

from __future__ import annotations

import galtea_local


def test_all_is_exactly_the_public_surface():
    exported = set(galtea_local.__all__)
    public = {name for name in dir(galtea_local) if not name.startswith("_")}
    # Submodules are attributes of a package once imported; they are not exported names.
    modules = {name for name in public if type(getattr(galtea_local, name)).__name__ == "module"}
    assert exported == public - modules
    assert exported == {
        "AmbiguousVersionNameException", "AttachedFile", "BundleError", "ConfigError", "EntityNotFoundException", "EntityNotFoundHTTPError",
        "Galtea", "GalteaSpan", "GaltealocalError", "InferenceResult", "InferenceResultStatus", "InvalidInputError",
        "InvalidTypeError", "NotAStoreError", "NotFoundError", "OutcomeUnknownError", "Product", "RecordTooLargeError",
        "Session", "SessionStatus", "Span", "StoreError", "StoreFullError", "StoreOpenError", "StoreReadOnlyError",
        "StoreTimeoutError", "StoreUnavailableError", "SyncState", "Trace", "TraceStatus",
        "Version", "VersionNameConflictException", "clear_context", "get_trace_id", "set_context", "start_span", "traced",
    }  # fmt: skip
    assert len(galtea_local.__all__) == len(exported), "no name listed twice"
    assert all(getattr(galtea_local, name) is not None for name in exported), "every name resolves (lazy ones too)"


def test_the_deprecated_tracing_names_resolve_but_are_not_exported():
    for name in ("get_inference_result_id", "start_trace", "trace"):
        assert callable(getattr(galtea_local, name)) and name not in galtea_local.__all__, name


def test_every_documented_error_is_exported():
    doc = galtea_local.errors.__doc__ or ""
    app_facing = [name for name in ("EntityNotFoundException", "EntityNotFoundHTTPError", "NotFoundError",
                                    "InvalidInputError", "RecordTooLargeError", "InvalidTypeError", "StoreError",
                                    "StoreOpenError", "NotAStoreError", "StoreFullError", "ConfigError",
                                    "BundleError", "GaltealocalError")]
    for name in app_facing:
        assert name in doc and name in galtea_local.__all__, name


def test_the_sdk_5_12_names_are_the_same_objects_as_the_old_ones():
    assert galtea_local.InferenceResult is galtea_local.Trace
    assert galtea_local.InferenceResultStatus is galtea_local.TraceStatus
