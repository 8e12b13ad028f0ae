"""Fuzz the public API: whatever the arguments, only project errors, an intact store, and every
accepted row goes upstream.

Hypothesis draws sequences of calls (create, create_batch, update, get, delete, list and the
sessions service) mixing well-formed values with hostile ones: lone surrogates, integers past
64 bits, NaN and infinities, lists where numbers belong, dicts nested past any sane depth,
bytes, arbitrary objects. A call either returns or raises a ``GaltealocalError`` that is a
``ValueError``/``TypeError`` (or ``KeyError`` for an unknown id). Afterwards the store passes
``PRAGMA integrity_check`` and one sync against the emulator delivers every accepted record:
nothing queued, nothing dead, every live record upstream with the content we stored.

The run is bounded and repeatable: a fixed number of examples, derandomized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galtea_local import Galtea
from galtea_local.errors import GaltealocalError, NotFoundError
from tests.helpers import integrity
from tests.sync_helpers import drain, make_engine, new_session, open_store

EXAMPLES = 120


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"k": value}
    return value


SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc80" * 3])
HOSTILE_SCALARS = st.one_of(
    st.none(), st.booleans(), SURROGATES, st.just(b"bytes"), st.just(object()),
    st.integers(min_value=-(2**80), max_value=2**80), st.sampled_from([2**63, 10**400, -1]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
HOSTILE = st.one_of(
    HOSTILE_SCALARS,
    st.lists(HOSTILE_SCALARS, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), SURROGATES), HOSTILE_SCALARS, max_size=3),
    st.sampled_from([_nested(70), _nested(1000), {"deep": [[[[[[1]]]]]]}]),
)
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
GOOD = {
    "input": st.one_of(st.text(max_size=40), st.dictionaries(st.text(max_size=8), JSON_VALUE, max_size=3)),
    "output": st.one_of(st.none(), st.text(max_size=40), st.dictionaries(st.text(max_size=8), JSON_VALUE, max_size=3)),
    "retrieval_context": st.one_of(st.none(), st.text(max_size=40)),
    "latency": st.one_of(st.none(), st.floats(0, 1e12), st.integers(0, 2**63 - 1)),
    "usage_info": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"tokens": st.integers(0, 2**63 - 1),
                                                                             "input_tokens": st.integers(0, 10**6)})),
    "cost_info": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"cost": st.floats(0, 1e6)})),
    "status": st.one_of(st.none(), st.sampled_from(["PENDING", "generated", "FAILED", "SKIPPED"])),
    "error": st.one_of(st.none(), st.text(max_size=20)),
}
CREATE_ARGS = [name for name in GOOD if name != "error"]
UPDATE_ARGS = [*(n for n in GOOD if not n.endswith("_info")), "input_tokens", "cost", "conversation_simulator_version"]


def _mostly(draw: Any, good: st.SearchStrategy[Any]) -> Any:
    """A well-formed value three times in four, else a hostile one."""
    return draw(HOSTILE) if draw(st.integers(0, 3)) == 3 else draw(good)


def _arg(draw: Any, name: str) -> Any:
    return _mostly(draw, GOOD.get(name, st.one_of(st.none(), st.integers(0, 1000))))


class Fuzzer:
    """Runs drawn calls on one store; remembers what was accepted."""

    def __init__(self, galtea: Galtea, sessions: list[str]) -> None:
        self.galtea = galtea
        self.sessions = sessions  # remote ids that exist upstream, and local sessions as they are made
        self.records: set[str] = set()
        self.accepted = 0

    def call(self, draw: Any) -> None:
        kind = ["create", "update", "session", "batch", "read", "create"][draw(st.integers(0, 5))]
        try:
            getattr(self, "_" + kind)(draw)
            self.accepted += 1
        except GaltealocalError as error:
            assert isinstance(error, (ValueError, TypeError, NotFoundError)), repr(error)

    # Draws never depend on the state (Hypothesis replays draws): an index picks among what exists.
    def _known_session(self, draw: Any) -> str:
        return self.sessions[draw(st.integers(0, 255)) % len(self.sessions)]

    def _session_ref(self, draw: Any) -> dict[str, Any]:
        choice = ["known", "known", "known", "hostile", "custom"][draw(st.integers(0, 4))]
        if choice == "known":
            return {"session_id": self._known_session(draw)}
        if choice == "custom":
            return {"session_custom_id": draw(HOSTILE), "version_id": draw(st.one_of(st.just("v1"), HOSTILE))}
        value = draw(HOSTILE)  # a hostile value is refused, or a str taken as an unknown remote id: skip those
        return {"session_id": value if not isinstance(value, str) else value + "\ud800"}

    def _create(self, draw: Any) -> None:
        names = draw(st.lists(st.sampled_from(CREATE_ARGS), unique=True, max_size=5))
        kwargs = {name: _arg(draw, name) for name in names}
        self.records.add(self.galtea.inference_results.create(**self._session_ref(draw), **kwargs).id)

    def _batch(self, draw: Any) -> None:
        turns = draw(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", 3]),
                                                     "content": st.one_of(GOOD["input"], HOSTILE)}), max_size=4))
        for result in self.galtea.inference_results.create_batch(**self._session_ref(draw), conversation_turns=turns):
            self.records.add(result.id)

    def _target(self, draw: Any) -> Any:
        known, index, hostile = draw(st.booleans()), draw(st.integers(0, 255)), draw(HOSTILE)
        return sorted(self.records)[index % len(self.records)] if known and self.records else hostile

    def _update(self, draw: Any) -> None:
        names = draw(st.lists(st.sampled_from(UPDATE_ARGS), unique=True, max_size=4))
        self.galtea.inference_results.update(self._target(draw), **{name: _arg(draw, name) for name in names})

    def _read(self, draw: Any) -> None:
        results = self.galtea.inference_results
        target = self._target(draw)
        action = draw(st.sampled_from(["get", "list", "list_sessions", "delete"]))
        if action == "get":
            results.get(target)
        elif action == "delete":
            results.delete(target)
            self.records.discard(target)
        elif action == "list":
            results.list(id=target, limit=draw(HOSTILE), sort_by_created_at=draw(st.one_of(st.just("desc"), HOSTILE)))
        else:
            results.list(session_id=(self._known_session(draw) if draw(st.booleans()) else draw(HOSTILE)),
                         from_created_at=draw(HOSTILE), offset=draw(HOSTILE))

    def _session(self, draw: Any) -> None:
        sessions = self.galtea.sessions
        action = draw(st.sampled_from(["create", "create", "create", "update", "finish", "get", "list"]))
        if action == "create":
            created = sessions.create(version_id=_mostly(draw, st.just("v1")),
                                      custom_id=_mostly(draw, st.one_of(st.none(), st.text(min_size=1, max_size=20))),
                                      context=_mostly(draw, st.one_of(st.none(), st.text(max_size=20))),
                                      metadata=_mostly(draw, st.one_of(st.none(), GOOD["input"].filter(
                                          lambda v: isinstance(v, dict)))))
            self.sessions.append(created.id)
        elif action in ("update", "finish"):
            target = (self._known_session(draw) if draw(st.booleans()) else draw(HOSTILE))
            if action == "update":
                sessions.update(target, context=_mostly(draw, st.text(max_size=20)), metadata=draw(HOSTILE))
            else:
                sessions.finish(target, stopping_reason=_mostly(draw, st.text(max_size=20)))
        elif action == "get":
            sessions.get(draw(HOSTILE))
        else:
            sessions.list(version_id=draw(HOSTILE), id=draw(HOSTILE), limit=draw(HOSTILE))


def _fuzz(galtea: Galtea, fuzzer: Fuzzer) -> None:
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(1, 6))):
            fuzzer.call(data.draw)

    run()


def _content(record: Any) -> tuple[Any, ...]:
    """What the API shows of a record, from the local read model (a str output stays a str)."""
    output = record.actual_output_data if record.actual_output_data is not None else record.actual_output
    return record.input_data, output, record.latency, record.status, record.error, record.tokens


def test_any_input_raises_only_project_errors_and_every_accepted_row_is_delivered(tmp_path: Path, emulator):
    store_path = tmp_path / "fuzz.db"
    sessions = [new_session(emulator) for _ in range(3)]
    with Galtea(store=store_path) as galtea:
        fuzzer = Fuzzer(galtea, sessions)
        _fuzz(galtea, fuzzer)
        assert integrity(store_path) == "ok"
        assert fuzzer.records, "the fuzzer never produced an accepted record: the strategies are too hostile"

        store = open_store(store_path)
        engine = make_engine(store, emulator)
        try:
            drain(engine)
        finally:
            engine.close()
            store.close()
        assert integrity(store_path) == "ok"
        upstream = {r["id"]: r for r in emulator.dump(log=False)["inferenceResults"] if not r.get("deletedAt")}
        for record_id in fuzzer.records:
            record = galtea.inference_results.get(record_id)
            assert record.sync_state == "synced", (record_id, record.sync_state)
            sent = upstream[record.remote_id]
            assert tuple(sent[k] for k in ("input", "actualOutput", "latency", "status", "error", "tokens")) \
                == _content(record)
