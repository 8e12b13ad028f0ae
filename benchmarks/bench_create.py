"""create() latency and throughput: galtea_local vs. a raw sqlite3 INSERT vs. the official SDK.

    python benchmarks/bench_create.py [--n 20000] [--prefill 1000000] [--sdk-n 1000] [--file-kb 64] [--dir /var/tmp]

Three columns, measured in one run with the seed call
``create(session_id=..., input="What is the capital of France?", output="Paris", latency=150.5)``:

- ``ours``: ``galtea_local`` with the default durability (WAL + synchronous=NORMAL).
- ``raw``: the floor. The same row INSERTed with ``sqlite3`` into a table created
  from the store's own DDL, same pragmas, ``BEGIN IMMEDIATE ... COMMIT`` per row.
- ``sdk``: the official ``galtea`` SDK's ``inference_results.create()`` against
  our emulator, run as a separate process on loopback.

Then ``--file-n`` creates with one ``--file-kb`` file attached (the copy into the
blob folder is the cost). Then ``--prefill`` records are queued (records + create operations + lanes,
written with ``executemany`` in large transactions) and ours/raw are measured
again, to show how latency grows with the queue. Files go to a temporary
folder under ``--dir``: use a real local disk, not a tmpfs such as /dev/shm.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from galtea_local import Galtea
from galtea_local.store.migrations import _INITIAL

SESSION = "bench-session"
SEED = dict(session_id=SESSION, input="What is the capital of France?", output="Paris", latency=150.5)
WARMUP = 500

# ---------------------------------------------------------------------------------- timing


def measure(call: Callable[[], object], n: int) -> dict[str, float]:
    """p50/p99 of single calls (µs) and calls per second over the whole loop."""
    for _ in range(min(WARMUP, n)):
        call()
    samples = [0] * n
    clock = time.perf_counter_ns
    gc.disable()  # a collection pause is real, but it is not this code's latency
    try:
        start = clock()
        for i in range(n):
            t0 = clock()
            call()
            samples[i] = clock() - t0
        total = clock() - start
    finally:
        gc.enable()
    samples.sort()
    return {
        "p50": samples[n // 2] / 1000,
        "p99": samples[min(n - 1, n * 99 // 100)] / 1000,
        "mean": statistics.fmean(samples) / 1000,
        "per_s": n / (total / 1e9),
    }


# ---------------------------------------------------------------------------------- raw floor

RAW_COLUMNS = ("lane", "session_id", "status", "input", "actual_output", "latency",
               "created_at", "updated_at", "sync_state", "create_sent", "deleted")  # fmt: skip
RAW_INSERT = f"INSERT INTO inference_results ({', '.join(RAW_COLUMNS)}) VALUES ({', '.join('?' * len(RAW_COLUMNS))})"


def results_ddl() -> list[str]:
    """The store's own DDL for the records table and its indexes."""
    return [s for s in _INITIAL if "inference_results" in s]


def open_raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'inference_results'").fetchone():
        for statement in results_ddl():
            conn.execute(statement)
    return conn


def raw_row() -> tuple:
    now = time.time()
    return (f"s:{SESSION}", SESSION, "GENERATED", '"What is the capital of France?"', '"Paris"', 150.5,
            now, now, "queued", 0, 0)  # fmt: skip


def raw_create(conn: sqlite3.Connection) -> Callable[[], object]:
    def insert() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(RAW_INSERT, raw_row())
        conn.execute("COMMIT")

    return insert


# ---------------------------------------------------------------------------------- official SDK


def start_emulator() -> tuple[subprocess.Popen, str]:
    """The emulator in its own process (so it does not share our GIL); returns it and its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "galtea_local_daemon.emulator", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return proc, line.removeprefix("listening on ").strip()


def measure_sdk(n: int) -> dict[str, float] | None:
    try:
        import galtea
    except ImportError:
        print("official galtea SDK not installed: sdk column left out")
        return None
    proc, url = start_emulator()
    try:
        os.environ["GALTEA_API_URL"] = url
        # The brief names inference_results.create(); the SDK warns it is now called traces.
        warnings.filterwarnings("ignore", message=".*inference_results is deprecated")
        client = galtea.Galtea(api_key="gsk_benchmark_key", suppress_updatable_version_message=True)
        session = client.sessions.create(version_id="bench-version", is_production=True)
        return measure(lambda: client.inference_results.create(**{**SEED, "session_id": session.id}), n)
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------------------------- pre-fill


def prefill(store: Path, raw: Path, count: int, lanes: int = 10_000) -> float:
    """Queue ``count`` records in both files, as ``count`` creates would leave them; return seconds."""
    started = time.perf_counter()
    with closing(sqlite3.connect(store, isolation_level=None)) as conn:
        _prefill_store(conn, count, lanes)
    with closing(sqlite3.connect(raw, isolation_level=None)) as conn:
        _prefill_rows(conn, count, lanes)
    return time.perf_counter() - started


def _rows(count: int, lanes: int, chunk: int, start: int):
    now = time.time()
    for first in range(0, count, chunk):
        yield [(start + i, f"s:pre-{i % lanes}", f"pre-{i % lanes}", "GENERATED", '"What is the capital of France?"',
                '"Paris"', 150.5, now, now, "queued", 0, 0) for i in range(first, min(count, first + chunk))]  # fmt: skip


def _prefill_rows(conn: sqlite3.Connection, count: int, lanes: int) -> int:
    """Records only (the raw table); returns the first seq used."""
    start = (conn.execute("SELECT coalesce(max(seq), 0) FROM inference_results").fetchone()[0]) + 1
    insert = RAW_INSERT.replace("(lane", "(seq, lane").replace("VALUES (", "VALUES (?, ")
    for rows in _rows(count, lanes, 100_000, start):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
    return start


def _prefill_store(conn: sqlite3.Connection, count: int, lanes: int) -> None:
    start = _prefill_rows(conn, count, lanes)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    # One create operation per record and one lane per session, exactly as enqueue_create leaves them.
    conn.execute(
        "INSERT INTO outbox (record_seq, lane, kind, payload, state, attempts, not_before, created_at)"
        " SELECT seq, lane, 'create', NULL, 'pending', 0, 0, ? FROM inference_results WHERE seq >= ? ORDER BY seq",
        (now, start),
    )
    conn.execute("INSERT OR IGNORE INTO lanes (key, active) SELECT DISTINCT lane, 1 FROM inference_results")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# ---------------------------------------------------------------------------------- report


def run_local(folder: Path, n: int) -> dict[str, dict[str, float]]:
    """ours and raw, back to back, on the files in ``folder`` (created on first use)."""
    with closing(open_raw(folder / "raw.db")) as conn:
        raw = measure(raw_create(conn), n)
    with Galtea(store=folder / "store.db") as client:
        ours = measure(lambda: client.inference_results.create(**SEED), n)
    return {"ours": ours, "raw": raw}


def run_with_file(folder: Path, n: int, kb: int) -> dict[str, float]:
    """ours with one attached file of ``kb`` KB (checked, copied into the blob folder, its row written)."""
    attached = folder / "attached.pdf"
    attached.write_bytes(os.urandom(kb * 1024))
    with Galtea(store=folder / "files.db") as client:
        return measure(lambda: client.traces.create(**SEED, input_file_paths=[str(attached)]), n)


def print_table(title: str, columns: dict[str, dict[str, float] | None]) -> None:
    shown = {name: figures for name, figures in columns.items() if figures}
    print(f"\n{title}")
    print(f"{'':>14}" + "".join(f"{name:>14}" for name in shown))
    for key, label in (("p50", "p50 µs"), ("p99", "p99 µs"), ("mean", "mean µs"), ("per_s", "creates/s")):
        print(f"{label:>14}" + "".join(f"{figures[key]:>14,.1f}" for figures in shown.values()))


def verdict(label: str, value: float, limit: float, below: bool = True) -> None:
    ok = value <= limit if below else value >= limit
    print(f"  {label:<34} {value:>9.2f}   target {'≤' if below else '≥'} {limit:<6g} {'ok' if ok else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="timed creates per column (default 20000)")
    parser.add_argument("--sdk-n", type=int, default=1_000, help="timed creates through the official SDK")
    parser.add_argument("--prefill", type=int, default=1_000_000, help="records queued before the second round; 0 skips it")
    parser.add_argument("--file-kb", type=int, default=64, help="size of the file attached in the files round; 0 skips it")
    parser.add_argument("--file-n", type=int, default=1_000, help="timed creates with a file")
    parser.add_argument("--dir", default="/var/tmp", help="parent folder of the scratch files: a local disk")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-create-", dir=args.dir))
    try:
        print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, files in {folder}")
        empty = run_local(folder, args.n)
        sdk = measure_sdk(args.sdk_n) if args.sdk_n else None
        print_table(f"empty queue, n={args.n} (sdk n={args.sdk_n})", {**empty, "sdk": sdk})
        ours, raw = empty["ours"], empty["raw"]
        verdict("ours p50 µs", ours["p50"], 50)
        verdict("ours p99 µs", ours["p99"], 500)
        verdict("ours/raw p50", ours["p50"] / raw["p50"], 3)
        if sdk:
            verdict("sdk/ours p50", sdk["p50"] / ours["p50"], 20, below=False)
        if args.file_kb and args.file_n:
            with_file = run_with_file(folder, args.file_n, args.file_kb)
            print_table(f"with one {args.file_kb} KB file attached, n={args.file_n}", {"ours+file": with_file})
        if args.prefill:
            seconds = prefill(folder / "store.db", folder / "raw.db", args.prefill)
            full = run_local(folder, args.n)
            print_table(f"{args.prefill:,} records already queued (pre-fill took {seconds:.1f} s)", full)
            verdict("ours p50 growth (full/empty)", full["ours"]["p50"] / ours["p50"], 1.5)
            verdict("raw p50 growth (full/empty)", full["raw"]["p50"] / raw["p50"], 1.5)
            verdict("ours/raw p50 at full", full["ours"]["p50"] / full["raw"]["p50"], 3)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
