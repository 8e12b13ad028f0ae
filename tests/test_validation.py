"""Bad input: the documented error, naming the field, and not one byte written.

Each case snapshots every table of the store file before and after the call
(through a separate connection) and asserts they are equal.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from pathlib import Path

import pytest

from galtea_local import Galtea, InvalidInputError, InvalidTypeError, NotFoundError, RecordTooLargeError
from tests.helpers import snapshot

OK = dict(session_id="s", input="q", output="a")


@pytest.fixture
def seeded(galtea: Galtea) -> Galtea:
    """A store holding one record (its id is ``galtea.seeded_id``), so 'unchanged' means something."""
    galtea.seeded_id = galtea.inference_results.create(**OK, status="PENDING").id  # type: ignore[attr-defined]
    return galtea


def assert_refused(galtea: Galtea, call: Callable[[], object], error: type[Exception], field: str) -> None:
    before = snapshot(galtea.store_path)
    with pytest.raises(error) as raised:
        call()
    assert field in str(raised.value), f"message does not name {field!r}: {raised.value}"
    assert snapshot(galtea.store_path) == before


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


CREATE_CASES = [
    ({"status": "DONE"}, InvalidInputError, "status"),
    ({"status": 3}, InvalidTypeError, "status"),
    ({"latency": "fast"}, InvalidTypeError, "latency"),
    ({"latency": -1.0}, InvalidInputError, "latency"),
    ({"latency": float("inf")}, InvalidInputError, "latency"),
    ({"input": 123}, InvalidTypeError, "input"),
    ({"output": ["a"]}, InvalidTypeError, "output"),
    ({"retrieval_context": 5}, InvalidTypeError, "retrieval_context"),
    ({"input": {"a", "b"}}, InvalidTypeError, "input"),
    ({"input": {"score": float("nan")}}, InvalidInputError, "input"),
    ({"output": {"when": object()}}, InvalidInputError, "output"),
    ({"usage_info": {"input_tokens": 1, "prompt_tokens": 2}}, InvalidInputError, "prompt_tokens"),
    ({"usage_info": {"tokens": 1.5}}, InvalidTypeError, "usage_info"),
    ({"usage_info": ["tokens"]}, InvalidTypeError, "usage_info"),
    ({"cost_info": {"price": 1.0}}, InvalidInputError, "cost_info"),
    ({"cost_info": {"cost": "1"}}, InvalidTypeError, "cost_info"),
    ({"session_custom_id": "c", "version_id": "v"}, InvalidInputError, "session_custom_id"),
    ({"session_id": None}, InvalidInputError, "session_id"),
    ({"session_id": None, "session_custom_id": "c"}, InvalidInputError, "version_id"),
    ({"session_id": ""}, InvalidTypeError, "session_id"),
    # Hostile values that used to escape as UnicodeEncodeError, OverflowError or RecursionError.
    ({"input": "a\ud800b"}, InvalidInputError, "input"),
    ({"output": {"k": ["\udfff"]}}, InvalidInputError, "output"),
    ({"retrieval_context": "\ud800"}, InvalidInputError, "retrieval_context"),
    ({"session_id": "s\ud800"}, InvalidInputError, "session_id"),
    ({"latency": 2**63}, InvalidInputError, "latency"),
    ({"latency": 10**400}, InvalidInputError, "latency"),
    ({"usage_info": {"tokens": 2**70}}, InvalidInputError, "tokens"),
    ({"latency": [1.0]}, InvalidTypeError, "latency"),
    ({"input": _nested(1000)}, InvalidInputError, "input"),
    ({"output": _nested(100_000)}, InvalidInputError, "output"),
    ({"input": _nested(65)}, InvalidInputError, "nested"),
]


@pytest.mark.parametrize("changes, error, field", CREATE_CASES, ids=lambda v: reprlib.repr(v)[:40])
def test_bad_create_is_refused_and_writes_nothing(seeded, changes, error, field):
    assert_refused(seeded, lambda: seeded.inference_results.create(**{**OK, **changes}), error, field)


def test_errors_are_value_and_type_errors():
    assert issubclass(InvalidInputError, ValueError) and issubclass(RecordTooLargeError, ValueError)
    assert issubclass(InvalidTypeError, TypeError)
    assert issubclass(NotFoundError, KeyError)


UPDATE_CASES = [
    ({"status": "nope"}, InvalidInputError, "status"),
    ({"latency": "slow"}, InvalidTypeError, "latency"),
    ({"input_tokens": 1.5}, InvalidTypeError, "input_tokens"),
    ({"input": {"x": float("nan")}}, InvalidInputError, "input"),
    ({"index": 3}, InvalidInputError, "index"),
    ({"session_id": "other"}, InvalidInputError, "session_id"),
    ({"status": None}, InvalidInputError, "status"),
    ({"latency": 2**63}, InvalidInputError, "latency"),
    ({"output": "\ud800"}, InvalidInputError, "output"),
    ({"input": _nested(1000)}, InvalidInputError, "input"),
]


@pytest.mark.parametrize("changes, error, field", UPDATE_CASES, ids=lambda v: reprlib.repr(v)[:40])
def test_bad_update_is_refused_and_writes_nothing(seeded, changes, error, field):
    record_id = seeded.seeded_id  # type: ignore[attr-defined]
    assert_refused(seeded, lambda: seeded.inference_results.update(record_id, **changes), error, field)


@pytest.mark.parametrize("method", ["update", "get", "delete"])
def test_bad_id_is_refused(seeded, method):
    call = getattr(seeded.inference_results, method)
    assert_refused(seeded, lambda: call("loc_\ud800"), InvalidInputError, "trace_id")  # the SDK 5.12 name
    assert_refused(seeded, lambda: call(inference_result_id=["x"]), InvalidTypeError, "inference_result_id")


def test_bad_list_arguments_are_refused(seeded):
    results = seeded.inference_results
    assert_refused(seeded, lambda: results.list(id=5), InvalidTypeError, "id")
    assert_refused(seeded, lambda: results.list(session_id=["s", {"x": 1}]), InvalidTypeError, "session_id[1]")
    assert_refused(seeded, lambda: results.list(session_id="s", limit=2**64), InvalidTypeError, "limit")
    assert_refused(seeded, lambda: results.list(session_id="s", from_created_at=10**400), InvalidInputError,
                   "from_created_at")  # fmt: skip
    assert_refused(seeded, lambda: results.list(session_id="s", sort_by_created_at=1), InvalidInputError,
                   "sort_by_created_at")  # fmt: skip
    sessions = seeded.sessions
    assert_refused(seeded, lambda: sessions.list(version_id=[None]), InvalidTypeError, "version_id[0]")
    assert_refused(seeded, lambda: sessions.get("\ud800"), InvalidInputError, "session_id")
    assert_refused(seeded, lambda: sessions.create(version_id="v", metadata=_nested(1000)), InvalidInputError,
                   "metadata")  # fmt: skip
    assert_refused(seeded, lambda: sessions.create(version_id="v", context="\udc00"), InvalidInputError,
                   "context")  # fmt: skip


@pytest.mark.parametrize("method", ["update", "get", "delete"])
def test_unknown_id_is_not_found(seeded, method):
    def call() -> object:
        kwargs = {"status": "FAILED"} if method == "update" else {}
        return getattr(seeded.inference_results, method)("loc_deadbeef_1", **kwargs)

    assert_refused(seeded, call, NotFoundError, "loc_deadbeef_1")


def test_bad_batch_writes_no_turn(seeded):
    turns = [{"role": "user", "content": "ok"}, {"role": "user", "content": {"bad": float("nan")}}]
    assert_refused(seeded, lambda: seeded.inference_results.create_batch(session_id="s", conversation_turns=turns),
                   InvalidInputError, "conversation_turns[1]")  # fmt: skip


# -- the record size limit, from a config file -----------------------------------------------


@pytest.fixture
def small_limit_config(tmp_path: Path) -> Path:
    path = tmp_path / "galtea-local.toml"
    path.write_text("[store]\nmax_record_bytes = 100\n")
    return path


def test_size_limit_from_config_argument(store_path, small_limit_config):
    with Galtea(store=store_path, config=small_limit_config) as galtea:
        galtea.inference_results.create(session_id="s", input="q" * 50)
        assert_refused(galtea, lambda: galtea.inference_results.create(session_id="s", input="q" * 101),
                       RecordTooLargeError, "max_record_bytes")  # fmt: skip


def test_size_limit_from_config_environment(store_path, small_limit_config, monkeypatch):
    monkeypatch.setenv("GALTEA_LOCAL_CONFIG", str(small_limit_config))
    with Galtea(store=store_path) as galtea:
        record = galtea.inference_results.create(session_id="s", input="q")
        assert_refused(galtea, lambda: galtea.inference_results.update(record.id, output="a" * 200),
                       RecordTooLargeError, "record")  # fmt: skip


def test_size_limit_counts_bytes_not_characters(store_path, small_limit_config):
    # 40 characters of 3-byte UTF-8 text are 120 bytes: over a 100-byte limit.
    with Galtea(store=store_path, config=small_limit_config) as galtea:
        assert_refused(galtea, lambda: galtea.inference_results.create(session_id="s", input="€" * 40),
                       RecordTooLargeError, "record")  # fmt: skip
