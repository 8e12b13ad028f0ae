"""How fast the sync engine drains a queue, and how much memory the daemon needs for a huge one.

Part 1 (default): ``--sessions`` x ``--per-session`` records queued in a store, drained by
``SyncEngine.run_once`` at ``--concurrency`` C against the emulator in its own process with
``--latency-ms`` (default 50). Each session's records go one after another, so the ceiling
is C requests per latency: C / 0.05 s. Side by side, the official SDK creates
``--sdk-records`` of the same records one by one, as an app would, against the same emulator;
its rate is extrapolated to the whole set.

Part 2 (``--memory``): ``--records`` (default 1,000,000) pre-filled with bulk SQL, then
``galtea-local sync`` runs as a subprocess against the emulator (no latency) for ``--run-s``
seconds while its peak RSS (VmHWM) is sampled. Also times the lane-claim query on that store.

Every record is queued before the drain starts, so each lands well after its create() call
and also gets its ``createdAt`` PATCH (issue 14), sent beside the lane's next create.
``--no-stamps`` drains without them, for the comparison.

Usage: python benchmarks/bench_drain.py [--concurrency 32] [--sessions 100] [--per-session 100]
           [--latency-ms 50] [--sdk-records 300] [--no-stamps]
       python benchmarks/bench_drain.py --memory [--records 1000000] [--memory-sessions 1000] [--run-s 90]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import httpx

from galtea_local.outbox import attempts as ob
from galtea_local.outbox import stamps
from galtea_local.outbox.enqueue import ACTIVATE_LANE
from galtea_local.store import Store
from galtea_local_daemon.engine import EngineSettings, SyncEngine
from galtea_local_daemon.upstream import UpstreamClient

API_KEY = "gsk_bench_drain"
INPUT, OUTPUT = '"What is the capital of France?"', '"Paris"'
COLUMNS = ("seq", "lane", "session_id", "status", "input", "actual_output", "latency",
           "created_at", "updated_at", "sync_state", "create_sent", "deleted")  # fmt: skip
INSERT_RECORD = f"INSERT INTO inference_results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


@contextmanager
def emulator(latency_ms: float) -> Iterator[str]:
    """The emulator CLI in its own process (it must not share our GIL); yields its URL."""
    command = [sys.executable, "-m", "galtea_local_daemon.emulator", "--port", "0", "--api-key", API_KEY,
               "--latency-ms", str(latency_ms)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("listening on "):
            raise RuntimeError(f"emulator did not start: {line!r}")
        yield line.removeprefix("listening on ").strip()
    finally:
        proc.terminate()
        proc.wait(30)


def make_sessions(url: str, count: int) -> list[str]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        def one(_: int) -> str:
            return http.post("/sessions", json={"versionId": "bench"}).json()["id"]

        with ThreadPoolExecutor(16) as pool:  # 16 at a time: creating sessions is setup, not the benchmark
            return list(pool.map(one, range(count)))


def prefill(path: Path, sessions: list[str], per_session: int, chunk: int = 100_000) -> float:
    """Queue ``per_session`` creates in each session, interleaved, as create() leaves them; seconds."""
    started = time.perf_counter()
    Store(str(path)).close()  # creates the file and runs every migration
    total = len(sessions) * per_session
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for first in range(0, total, chunk):
            conn.execute("BEGIN IMMEDIATE")
            queue_creates(conn, sessions, first, min(total, first + chunk), time.time())
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


def queue_creates(conn: sqlite3.Connection, sessions: list[str], first: int, last: int, now: float) -> None:
    """Records ``seq`` first+1..last, round robin over ``sessions``, with their pending creates and
    their lanes active, as create() leaves them (in the caller's transaction)."""
    count = len(sessions)
    # Active (again), as create()'s open_lane makes them: the daemon marks a lane it drained inactive
    # and claims only active ones, so a lane topped up after that would otherwise never be served.
    # One turn of the round robin touches every lane the range does.
    lanes = range(first, min(last, first + count))
    conn.executemany(ACTIVATE_LANE, [(f"s:{sessions[i % count]}",) for i in lanes])
    rows = [(i + 1, f"s:{sessions[i % count]}", sessions[i % count], "GENERATED", INPUT, OUTPUT, 150.5, now, now,
             "queued", 0, 0) for i in range(first, last)]  # fmt: skip
    conn.executemany(INSERT_RECORD, rows)
    conn.execute(
        "INSERT INTO outbox (record_seq, lane, kind, payload, state, attempts, not_before, created_at)"
        " SELECT seq, lane, 'create', NULL, 'pending', 0, 0, created_at FROM inference_results"
        " WHERE seq > ? AND seq <= ? ORDER BY seq", (first, last),
    )


def open_ops(store: Store) -> int:
    return store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'sending')")
                      .fetchone()[0])


def drain_rate(url: str, path: Path, concurrency: int) -> tuple[int, float, int]:
    """Drain the store with the engine; (records pushed, seconds, passes)."""
    store = Store(str(path))
    queued = open_ops(store)
    client = UpstreamClient(url, API_KEY, max_connections=concurrency)
    engine = SyncEngine(store, client, EngineSettings(concurrency=concurrency))
    started, passes = time.perf_counter(), 0
    while open_ops(store) and passes < 10_000:
        engine.run_once()
        passes += 1
    elapsed = time.perf_counter() - started
    client.close()
    pushed = queued - open_ops(store)
    store.close()
    return pushed, elapsed, passes


def sdk_rate(url: str, session_id: str, count: int) -> float:
    """Records/s of the official SDK creating records one by one, as an app would."""
    import galtea  # the baseline: a test/benchmark dependency only

    os.environ["GALTEA_API_URL"] = url
    client = galtea.Galtea(api_key=API_KEY, suppress_updatable_version_message=True)
    started = time.perf_counter()
    for _ in range(count):
        client.traces.create(session_id=session_id, input="What is the capital of France?", output="Paris",
                             latency=150.5)
    elapsed = time.perf_counter() - started
    client.shutdown()
    return count / elapsed


def run_drain(args: argparse.Namespace) -> None:
    total = args.sessions * args.per_session
    limit = args.concurrency / (args.latency_ms / 1000)
    with emulator(args.latency_ms) as url, tempfile.TemporaryDirectory() as folder:
        sessions = make_sessions(url, args.sessions)
        path = Path(folder) / "store.db"
        print(f"pre-filled {total:,} records in {prefill(path, sessions, args.per_session):.1f} s")
        if args.no_stamps:
            stamps.TOLERANCE_S = math.inf  # every create counts as landed at its call time: no PATCH
        pushed, elapsed, passes = drain_rate(url, path, args.concurrency)
        rate = pushed / elapsed
        print(f"galtea-local  C={args.concurrency}{' (no stamps)' if args.no_stamps else ''}: {pushed:,} records in {elapsed:.1f} s ({passes} passes)"
              f" = {rate:,.0f} records/s, {100 * rate / limit:.0f}% of the limit {limit:,.0f}/s"
              f" (C / {args.latency_ms / 1000:g} s)")
        baseline = sdk_rate(url, make_sessions(url, 1)[0], args.sdk_records)
        print(f"official SDK, one by one: {args.sdk_records} records at {baseline:,.1f} records/s;"
              f" {total:,} would take {total / baseline:,.0f} s")
        print(f"ratio galtea-local / SDK: {rate / baseline:,.1f}x")


def claim_query_ms(path: Path, repeats: int = 5) -> float:
    """Median time of the lane-claim query (``due_lanes``) on the pre-filled store, in ms."""
    store = Store(str(path))
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        store.read(lambda conn: ob.due_lanes(conn, time.time(), 32))
        samples.append((time.perf_counter() - started) * 1000)
    store.close()
    return sorted(samples)[len(samples) // 2]


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) in MB, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def watch_sync(url: str, path: Path, run_s: float, concurrency: int) -> float:
    """Run `galtea-local sync` for ``run_s`` seconds (then SIGTERM); its peak RSS in MB."""
    env = {**os.environ, "GALTEA_API_KEY": API_KEY, "GALTEA_API_URL": url, "GALTEA_LOCAL_STORE": str(path),
           "GALTEA_LOCAL_LOG_LEVEL": "WARNING"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "galtea_local_daemon.cli", "sync", "--concurrency",
                             str(concurrency)], env=env)  # fmt: skip
    peak, deadline = 0.0, time.monotonic() + run_s
    while proc.poll() is None and time.monotonic() < deadline:
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        time.sleep(0.2)
    peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # a warm stop: in-flight pushes finish
    proc.wait(120)
    return peak


def run_memory(args: argparse.Namespace) -> None:
    per_session = args.records // args.memory_sessions
    with emulator(0) as url, tempfile.TemporaryDirectory() as folder:
        sessions = make_sessions(url, args.memory_sessions)
        path = Path(folder) / "store.db"
        seconds = prefill(path, sessions, per_session)
        size_mb = path.stat().st_size / 2**20
        print(f"pre-filled {len(sessions) * per_session:,} records in {len(sessions)} sessions in {seconds:.1f} s"
              f" ({size_mb:,.0f} MB)")
        print(f"claim query (due_lanes, 32 lanes) on the full store: {claim_query_ms(path):.1f} ms")
        peak = watch_sync(url, path, args.run_s, args.concurrency)
        store = Store(str(path))
        left = open_ops(store)
        store.close()
        pushed = len(sessions) * per_session - left
        print(f"`galtea-local sync` for {args.run_s:g} s: pushed {pushed:,} records ({pushed / args.run_s:,.0f}/s),"
              f" {left:,} still queued; peak RSS {peak:.1f} MB (target <= 150 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--per-session", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--sdk-records", type=int, default=300)
    parser.add_argument("--no-stamps", action="store_true", help="drain without the createdAt PATCHes")
    parser.add_argument("--memory", action="store_true", help="the 1M-record backlog memory run instead")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--memory-sessions", type=int, default=1000)
    parser.add_argument("--run-s", type=float, default=90.0)
    args = parser.parse_args()
    run_memory(args) if args.memory else run_drain(args)


if __name__ == "__main__":
    main()
