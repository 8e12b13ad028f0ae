"""The PostgreSQL store: create() latency, and how the drain rate scales with daemons.

Part 1: ``--creates`` calls of ``create()`` from one thread on a fresh schema over
loopback; prints p50/p99/max in ms (each is one SERIALIZABLE transaction, commit
included: ``synchronous_commit`` as the server has it).

Part 2: for 1, 2, 3 daemons (``--daemons``): a fresh schema pre-filled with
``--sessions`` x ``--per-session`` records, then that many ``galtea-local daemon``
processes (each ``--concurrency`` lanes at once) drain it against the emulator in
its own process with ``--latency-ms`` (default 50). Prints records/s per daemon
count and the scaling against one daemon. Each session's records go one after
another, so the ceiling is ``daemons x concurrency`` requests per latency, and
never more than ``--sessions`` at once.

Usage: python benchmarks/bench_postgres.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/test]
           [--creates 5000] [--daemons 1,2,3] [--concurrency 16] [--sessions 100] [--per-session 30]
           [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

from bench_drain import API_KEY, emulator, make_sessions  # the same emulator process and sessions
from galtea_local import Galtea
from galtea_local.store.postgres import conninfo_from
from galtea_local.status import store_status

CONFIG = """\
[sync]
interval_s = 0.2
concurrency = {concurrency}
"""


@contextmanager
def fresh_schema(server: str) -> Iterator[str]:
    """A store URL on a new schema, dropped afterwards."""
    schema = f"gl_bench_{secrets.token_hex(4)}"
    with psycopg.connect(conninfo_from(server), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            sep = "&" if "?" in server else "?"
            yield f"{server}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def create_latency(server: str, count: int) -> None:
    with fresh_schema(server) as url, Galtea(store=url) as local:
        for i in range(200):  # warm up: connection, prepared statements
            local.traces.create(session_id="warm", input="q")
        times = []
        for i in range(count):
            started = time.perf_counter()
            local.traces.create(session_id=f"s{i % 100}", input="What is the capital of France?", output="Paris",
                                latency=12.5)
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(f"create() on PostgreSQL, {count} calls, one thread: p50 {statistics.median(times):.3f} ms, "
          f"p99 {times[int(len(times) * 0.99)]:.3f} ms, max {times[-1]:.3f} ms")


def drain_with(server: str, emulator_url: str, sessions: list[str], per_session: int, daemons: int,
               concurrency: int, folder: Path) -> float:
    """Seconds for ``daemons`` daemon processes to push every queued record."""
    config = folder / "config.toml"
    config.write_text(CONFIG.format(concurrency=concurrency))
    with fresh_schema(server) as url, Galtea(store=url) as local:
        for turn in range(per_session):
            for session in sessions:
                local.traces.create(session_id=session, input=f"{session}#{turn}", output="ok")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GALTEA_")}
        env.update(GALTEA_LOCAL_STORE=url, GALTEA_API_URL=emulator_url, GALTEA_API_KEY=API_KEY,
                   GALTEA_LOCAL_CONFIG=str(config))
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-m", "galtea_local_daemon.cli", "daemon"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(f"/tmp/bench_pg_daemon{daemons}.log", "ab")) for _ in range(daemons)]
        try:
            deadline = started + float(os.environ.get("BENCH_DRAIN_LIMIT_S", "300"))
            while store_status(local._store)["queued"]:
                if time.monotonic() > deadline:
                    raise SystemExit(f"not drained after 300 s: {store_status(local._store)}")
                time.sleep(0.05)
            return time.monotonic() - started
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)


def drain_scaling(args: argparse.Namespace) -> None:
    total = args.sessions * args.per_session
    with emulator(0) as url, tempfile.TemporaryDirectory() as folder:
        sessions = make_sessions(url, args.sessions)
        httpx.post(f"{url}/_emulator/faults", json={"latency_ms": args.latency_ms}).raise_for_status()
        rates = {}
        for daemons in [int(n) for n in args.daemons.split(",")]:
            seconds = drain_with(args.url, url, sessions, args.per_session, daemons, args.concurrency, Path(folder))
            rates[daemons] = total / seconds
            base = rates[min(rates)]
            ceiling = min(daemons * args.concurrency, args.sessions) / (args.latency_ms / 1000)
            print(f"{daemons} daemon(s) x concurrency {args.concurrency}, latency {args.latency_ms:g} ms: "
                  f"{total} records in {seconds:.1f} s = {rates[daemons]:.0f} records/s "
                  f"(x{rates[daemons] / base:.2f} of {min(rates)} daemon; ceiling {ceiling:.0f}/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("GALTEA_TEST_POSTGRES",
                                                        "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--creates", type=int, default=5000)
    parser.add_argument("--daemons", default="1,2,3")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--per-session", type=int, default=30)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    if args.creates:
        create_latency(args.url, args.creates)
    if args.daemons:
        drain_scaling(args)


if __name__ == "__main__":
    main()
