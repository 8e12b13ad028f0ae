"""PostgreSQL: the lane upsert serialises writers of one session.

``create()`` upserts the session's lane row first; the upsert locks the row until
commit even when it changes nothing (ON CONFLICT DO UPDATE ... WHERE locks every
conflicting row). A second writer therefore takes its ``seq`` only after the first
committed, so ``seq`` order, which the daemon pushes in, is commit order. This test
pins the lock that ordering rests on: an upsert that did not lock (DO NOTHING, say)
would let the second writer finish first.
"""

from __future__ import annotations

import threading
import time

from galtea_local import Galtea
from galtea_local.service import _insert, _new_row
from galtea_local.validation import create_fields


def _slow_create(galtea: Galtea, label: str, hold_s: float, done: list[tuple[str, int, float]]) -> None:
    """A create whose transaction stays open ``hold_s`` after its insert, as a slow writer's would."""
    row = _new_row(create_fields({"session_id": "shared", "input": label}, 10_000), time.time())

    def write(conn):  # noqa: ANN001
        seq = _insert(conn, row)
        time.sleep(hold_s)
        return seq

    seq = galtea._store.transaction(write)
    done.append((label, seq, time.monotonic()))


def test_a_second_writer_of_a_session_waits_for_the_first_to_commit(pg_url: str) -> None:
    first_store, second_store = Galtea(store=pg_url), Galtea(store=pg_url)
    done: list[tuple[str, int, float]] = []
    first = threading.Thread(target=_slow_create, args=(first_store, "first", 0.5, done))
    first.start()
    time.sleep(0.1)  # the first holds the session's lane row now
    _slow_create(second_store, "second", 0.0, done)
    first.join()
    assert [label for label, _, _ in done] == ["first", "second"]  # the second waited for the commit
    (_, first_seq, _), (_, second_seq, _) = done
    assert first_seq < second_seq  # so upstream order (by seq) is commit order
    first_store.close()
    second_store.close()
