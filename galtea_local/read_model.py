"""What ``create()``/``get()``/``list()`` return: the official pydantic read models plus sync facts.

``Trace`` (the official SDK 5.12 name; ``InferenceResult`` is kept as an alias)
has exactly the fields of the SDK's ``Trace`` plus ``sync_state`` and
``remote_id``, so ``model_dump()``, ``model_dump_json()``, ``model_copy()`` and
FastAPI responses behave as with the SDK. Local facts the SDK's read model does
not carry (``created_at``, ``retrieval_context``, ``session_custom_id``) are
read-only properties, outside ``model_dump()``, so dumps keep the SDK's keys.

create() builds its model on the hot path: :func:`_fast` skips validation
(the values come from our own validated row) and costs a dict and four slot
writes, about what the former dataclass cost.
"""

from __future__ import annotations

import json
import time
import warnings
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.alias_generators import to_camel


class _CaseInsensitive:
    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            return cls.__members__.get(value.upper())  # type: ignore[attr-defined]
        return None


class TraceStatus(_CaseInsensitive, str, Enum):
    """The status of a turn. Lookup is case-insensitive: ``TraceStatus("pending")``."""

    PENDING = "PENDING"
    GENERATED = "GENERATED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class SessionStatus(_CaseInsensitive, str, Enum):
    """The status of a session, as the official ``SessionStatus``."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


InferenceResultStatus = TraceStatus  # the pre-5.12 name


class SyncState(str, Enum):
    """Where a record stands with the upstream API."""

    QUEUED = "queued"  # some local change is not yet confirmed upstream
    SYNCED = "synced"  # upstream has exactly the local view
    DEAD = "dead"  # the upstream refused an operation; see `galtea-local dead list`


# BaseModel's own slots, written directly: object.__setattr__ by name costs several times more,
# and create() builds one model per call.
_new = object.__new__
_set_dict = object.__setattr__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


class _CamelModel(BaseModel):
    # The SDK's models read and dump camelCase aliases and accept field names too.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    _all_fields: ClassVar[set[str]] = set()  # set once the fields are known

    @classmethod
    def _fast(cls, values: dict[str, Any], private: dict[str, Any] | None = None) -> Any:
        """An instance from already-valid values holding every field, in field order, without validation.

        What ``model_construct`` does, minus its per-field loop: the values come
        from our own validated rows, and this runs once per create().
        """
        model = _new(cls)
        _set_dict(model, "__dict__", values)
        _set_fields_set(model, cls._all_fields.copy())
        _set_extra(model, None)
        _set_private(model, private)
        return model

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        cls._all_fields = set(cls.model_fields)


class AttachedFile(_CamelModel):
    """A file attached to an input or an output, as the official ``AttachedFile``."""

    uri: str
    filename: str | None = None
    mime_type: str | None = None
    type: str = "file"


class Trace(_CamelModel):
    """A turn as the official SDK's ``Trace`` shows it, plus ``sync_state`` and ``remote_id``.

    ``id`` is the local id, valid forever; ``remote_id`` and ``index`` are None
    until the record is confirmed upstream. ``input`` is the user message as a
    string and ``input_data`` the whole input object, as in the official SDK
    (``actual_output``/``actual_output_data`` likewise).
    """

    # Field order is the SDK's, so dumps list keys in the same order.
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    tokens: int | None = None
    cost_per_input_token: float | None = None
    cost_per_output_token: float | None = None
    cost_per_cache_read_input_token: float | None = None
    cost: float | None = None
    session_id: str | None = None
    status: TraceStatus | str | None = TraceStatus.GENERATED
    error: str | None = None
    actual_output: str | None = None
    latency: float | None = None
    conversation_simulator_version: str | None = None
    id: str
    index: int | None = None
    input: str | None = None
    input_data: dict[str, Any] | None = None
    actual_output_data: dict[str, Any] | None = None
    input_files: list[AttachedFile] = Field(default_factory=list)
    actual_output_files: list[AttachedFile] = Field(default_factory=list)
    sync_state: str = SyncState.QUEUED.value
    remote_id: str | None = None

    _created_at: str | None = PrivateAttr(default=None)
    _retrieval_context: str | None = PrivateAttr(default=None)
    _session_custom_id: str | None = PrivateAttr(default=None)

    @property
    def created_at(self) -> str | None:
        """When ``create()`` was called (ISO 8601 UTC); upstream ``createdAt`` is set to it."""
        return self._created_at

    @property
    def retrieval_context(self) -> str | None:
        """Write-only upstream (the API does not return it); kept locally."""
        return self._retrieval_context

    @property
    def session_custom_id(self) -> str | None:
        return self._session_custom_id

    @property
    def actual_input(self) -> str | None:
        """Deprecated, as in the SDK: use ``input``."""
        warnings.warn("Trace.actual_input is deprecated. Use Trace.input directly.", DeprecationWarning, 2)
        return self.input

    @model_validator(mode="before")
    @classmethod
    def _from_api_json(cls, data: Any) -> Any:
        """``Trace(**api_json)`` reads the API's shape as the SDK's model does (never on create()'s path)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for legacy in ("actualInput", "actual_input"):
            if legacy in data:
                data.setdefault("input", data.pop(legacy))
        if isinstance(data.get("input"), dict):
            raw = data["input"]
            data["input"], data["input_data"] = _split(raw, "user_message")
            data["input_files"] = _files(raw)
        output_key = "actualOutput" if "actualOutput" in data else "actual_output"
        if isinstance(data.get(output_key), dict):
            raw = data[output_key]
            data[output_key], data["actual_output_data"] = _split(raw, "assistant_message")
            data["actual_output_files"] = _files(raw)
        return data

    @field_validator("status", mode="before")
    @classmethod
    def _tolerant_status(cls, value: Any) -> Any:
        return _tolerant(TraceStatus, value)


InferenceResult = Trace  # the pre-5.12 name


_last_second: tuple[int, str] = (-1, "")


def iso_utc(epoch: float) -> str:
    """ISO 8601 in UTC with milliseconds, the API's ``createdAt`` format."""
    global _last_second
    # Formatting the seconds is most of create()'s read-model cost, and nearly every
    # call falls in the same second as the last one: reuse it. One tuple swap, thread-safe.
    second, text = _last_second
    if second != int(epoch):
        second = int(epoch)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return text + ".%03dZ" % (epoch % 1 * 1000)


def _split(value: str | dict[str, Any] | None, key: str) -> tuple[str | None, dict[str, Any] | None]:
    """Return the (primary text, whole object) pair the official read model exposes."""
    if isinstance(value, dict):
        text = value.get(key)
        return (text if isinstance(text, str) else None), value
    return value, None


def _files(data: dict[str, Any] | None) -> list[AttachedFile]:
    """The file parts of an input/output object's ``content`` list; never raises on odd shapes."""
    parts = data.get("content") if data else None
    if not isinstance(parts, list):
        return []
    return [
        AttachedFile._fast({"uri": part["uri"], "filename": part.get("filename"),
                            "mime_type": part.get("mimeType"), "type": "file"})
        for part in parts
        if isinstance(part, dict) and str(part.get("type")).lower() == "file" and isinstance(part.get("uri"), str)
    ]  # fmt: skip


def _tolerant(enum: type[Enum], value: Any) -> Any:
    """The SDK's tolerant enum: a known value in any case becomes the member, anything else stays as it is."""
    if not isinstance(value, str):
        return value
    try:
        return enum(value)
    except ValueError:
        return value


_TRACE_STATUS = {member.value: member for member in TraceStatus}  # a dict hit is 15x an Enum call


def _status(value: str | None) -> TraceStatus | str | None:
    # The SDK's tolerant enum: a known status becomes the enum, a newer one stays text.
    return _TRACE_STATUS.get(value, value)  # type: ignore[arg-type]


def stored_json(raw: str | None) -> Any:
    """Stored JSON text decoded; text that does not decode comes back as it is."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # a poison row (not written by create()): show what is stored rather than fail
        return raw


def from_row(row: Any, local_id: str) -> Trace:
    """Build the read model from an ``inference_results`` row (a mapping by column name)."""
    return build(row, local_id, stored_json(row["input"]), stored_json(row["actual_output"]))


def build(row: Any, local_id: str, input_value: Any, output_value: Any) -> Trace:
    """Build the read model from a row whose ``input``/``actual_output`` are already decoded."""
    text_in, data_in = _split(input_value, "user_message")
    if data_in is None and text_in is not None:
        data_in = {"user_message": text_in}  # the API stores a string input this way
    text_out, data_out = _split(output_value, "assistant_message")
    values = {
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "cache_read_input_tokens": row["cache_read_input_tokens"],
        "tokens": row["tokens"],
        "cost_per_input_token": row["cost_per_input_token"],
        "cost_per_output_token": row["cost_per_output_token"],
        "cost_per_cache_read_input_token": row["cost_per_cache_read_input_token"],
        "cost": row["cost"],
        "session_id": row["session_id"] or row["remote_session_id"],
        "status": _status(row["status"]),
        "error": row["error"],
        "actual_output": text_out,
        "latency": row["latency"],
        "conversation_simulator_version": row["conversation_simulator_version"],
        "id": local_id,
        "index": row["remote_index"],
        "input": text_in,
        "input_data": data_in,
        "actual_output_data": data_out,
        "input_files": _files(data_in),
        "actual_output_files": _files(data_out),
        "sync_state": row["sync_state"],
        "remote_id": row["remote_id"],
    }
    private = {
        "_created_at": iso_utc(row["created_at"]),
        "_retrieval_context": row["retrieval_context"],
        "_session_custom_id": row["session_custom_id"],
    }
    return Trace._fast(values, private)


class Session(_CamelModel):
    """A session as the official SDK's ``Session`` shows it, plus ``sync_state`` and ``remote_id``.

    A session created offline reports what the API would: ``status`` PENDING
    and ``is_production`` True unless a test case makes it a development one.
    Fields only the server fills (``user_id``, ``recording_uri``, ``is_seed``)
    are None locally.
    """

    custom_id: str | None = None
    version_id: str | None = None
    product_id: str | None = None
    test_case_id: str | None = None
    context: str | None = None
    metadata: dict[str, Any] | None = None
    status: SessionStatus | str | None = None
    is_production: bool | None = None
    run_id: str | None = None
    id: str
    created_at: str
    deleted_at: str | None = None
    stopping_reason: str | None = None
    error: str | None = None
    recording_uri: str | None = None
    user_id: str | None = None
    is_seed: bool | None = None
    context_data: dict[str, Any] | None = None
    sync_state: str = SyncState.QUEUED.value
    remote_id: str | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _tolerant_status(cls, value: Any) -> Any:
        return _tolerant(SessionStatus, value)

    def is_test_based(self) -> bool:
        return self.test_case_id is not None

    def is_monitoring(self) -> bool:
        if self.is_production is not None:
            return self.is_production
        return self.test_case_id is None


def session_status(value: str | None) -> SessionStatus | str | None:
    """The tolerant enum, as the SDK reads a session's status."""
    return _tolerant(SessionStatus, value)
