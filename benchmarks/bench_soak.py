"""Sustained load: apps write while the daemon drains a large backlog, retains and checkpoints.

Default run (issue 17's soak, shortened for a shared box):

- the emulator in its own process with the soak's fault mix (3% 503, 2% 429, 3% lost
  answers, 30 ms latency; ``--faults none`` for none, ``--rate-limit R`` for a token bucket);
- ``--backlog`` records (100,000) already queued across ``--sessions`` sessions;
- ``galtea-local daemon`` as a subprocess, retention on (``synced_days = 0``: every synced
  record goes at the next retention pass), WAL bound and checkpoints as shipped;
- ``--writers`` app processes, each calling ``create()`` ``--rate`` times a second
  (``--pending-share`` of them PENDING, then updated to GENERATED).

Every ``--every-s`` seconds it prints: drained/min, queued, oldest age, the daemon's RSS
and open fds, WAL and store size, and the daemon's longest write transaction. At the end:
the writers' ``create()`` p50/p99/p99.9/max and failed creates, what the emulator saw, and
the daemon's CPU per record created upstream (a figure that moves less with the box's load).

    python benchmarks/bench_soak.py [--minutes 3] [--backlog 100000] [--writers 3] [--rate 70] [--concurrency 16]
    python benchmarks/bench_soak.py --short                      # 1 minute, 20k backlog
    python benchmarks/bench_soak.py --faults none --rate-limit 200 --writers 0 --minutes 1
    python benchmarks/bench_soak.py --drain-scaling 1000,100000  # drain rate, queue held at each size
    python benchmarks/bench_soak.py --fault-cost 20000          # drain with the fault mix vs none
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from galtea_local.config import SyncSettings

sys.path.insert(0, str(Path(__file__).parent))
from bench_drain import API_KEY, emulator, make_sessions, prefill, queue_creates  # noqa: E402

FAULT_MIX = {"fail_rate": 0.03, "throttle_rate": 0.02, "ambiguous_rate": 0.03}
CONFIG = """
[sync]
concurrency = {concurrency}
[retention]
synced_days = 0
[log]
level = "WARNING"
"""


# -- the app side: one writer process ------------------------------------------------------


def run_writer(args: argparse.Namespace) -> None:
    """``--writer``: create() at ``--rate``/s until ``--until`` (epoch s); print latency stats as JSON."""
    from galtea_local import Galtea

    sessions = json.loads(Path(args.sessions_file).read_text())
    latencies: list[float] = []
    failed, pending = 0, []
    gap = 1 / args.rate if args.rate else 0.0
    with Galtea(store=args.store) as app:
        next_at = time.monotonic()
        while time.time() < args.until:
            status = "PENDING" if random.random() < args.pending_share else "GENERATED"
            started = time.perf_counter()
            try:
                turn = app.traces.create(session_id=random.choice(sessions), input="What is the capital?",
                                         output=None if status == "PENDING" else "Paris", status=status)
                latencies.append(time.perf_counter() - started)
                if status == "PENDING":
                    pending.append(turn.id)
            except Exception as exc:  # counted, never hidden: the promise is 0 failed creates
                failed += 1
                print(f"create failed: {exc}", file=sys.stderr)
            if len(pending) > 5:
                app.traces.update(pending.pop(0), output="Paris", status="GENERATED")
            next_at += gap
            time.sleep(max(0.0, next_at - time.monotonic()))
    print(json.dumps({"latencies": latencies, "failed": failed}))


# -- the daemon's side ---------------------------------------------------------------------------


def proc_figures(pid: int) -> tuple[float, int]:
    """RSS in MB and open fds of a process (0, 0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0.0, 0


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (user + system), in seconds; 0 once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def store_figures(path: Path) -> dict[str, Any]:
    """What the store says (read by a separate connection, as `galtea-local status` does)."""
    from galtea_local.status import store_status
    from galtea_local.store import Store

    store = Store(str(path))
    try:
        status = store_status(store)
        top = store.read(lambda conn: conn.execute("SELECT COALESCE(MAX(seq), 0) FROM inference_results")
                         .fetchone()[0])
    finally:
        store.close()
    return {**status, "created": top}


def start_daemon(url: str, path: Path, folder: Path, concurrency: int) -> subprocess.Popen[bytes]:
    config = folder / "soak.toml"
    config.write_text(CONFIG.format(concurrency=concurrency))
    env = {**os.environ, "GALTEA_API_KEY": API_KEY, "GALTEA_API_URL": url, "GALTEA_LOCAL_STORE": str(path),
           "GALTEA_LOCAL_CONFIG": str(config)}
    return subprocess.Popen([sys.executable, "-m", "galtea_local_daemon.cli", "daemon"], env=env)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Monitor:
    """Samples the daemon and the store every ``every_s`` seconds and prints one line each."""

    HEADER = (f"{'t':>5} {'drained/min':>11} {'queued':>8} {'oldest s':>9} {'RSS MB':>7} {'fds':>4}"
              f" {'WAL MB':>7} {'store MB':>8} {'longest write ms':>16} {'rate/s':>7}")

    def __init__(self, path: Path, daemon: subprocess.Popen[bytes], every_s: float) -> None:
        self.path, self.daemon, self.every_s = path, daemon, every_s
        self.started = time.monotonic()
        first = store_figures(path)
        self.last = (self.started, first["created"] - first["queued"])
        self.rows: list[dict[str, Any]] = []
        print(self.HEADER)

    def sample(self) -> dict[str, Any]:
        now, figures = time.monotonic(), store_figures(self.path)
        drained = figures["created"] - figures["queued"]
        per_min = (drained - self.last[1]) / (now - self.last[0]) * 60
        self.last = (now, drained)
        rss, fds = proc_figures(self.daemon.pid)
        wal = Path(f"{self.path}-wal")
        row = {"t": now - self.started, "drained_per_min": per_min, "queued": figures["queued"],
               "oldest_s": figures["oldest_queued_age_s"] or 0.0, "rss_mb": rss, "fds": fds,
               "wal_mb": wal.stat().st_size / 2**20 if wal.exists() else 0.0,
               "store_mb": self.path.stat().st_size / 2**20,
               "longest_ms": figures.get("longest_write_recent_ms") or 0.0,
               "send_rate": figures.get("send_rate_per_s") or 0.0}
        self.rows.append(row)
        print(f"{row['t']:5.0f} {per_min:11,.0f} {row['queued']:8,} {row['oldest_s']:9.0f} {rss:7.1f} {fds:4}"
              f" {row['wal_mb']:7.1f} {row['store_mb']:8.1f} {row['longest_ms']:16.1f} {row['send_rate']:7.0f}",
              flush=True)
        return row

    def run_until(self, deadline: float) -> None:
        while time.time() < deadline:
            time.sleep(max(0.0, min(self.every_s, deadline - time.time())))
            self.sample()


# -- figures --------------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def print_writers(results: list[dict[str, Any]]) -> None:
    latencies = [value for result in results for value in result["latencies"]]
    failed = sum(result["failed"] for result in results)
    if not latencies:
        return
    ms = [value * 1000 for value in latencies]
    print(f"create(): {len(ms):,} calls in {len(results)} processes; p50 {statistics.median(ms):.3f} ms,"
          f" p99 {percentile(ms, 0.99):.2f} ms, p99.9 {percentile(ms, 0.999):.2f} ms, max {max(ms):.1f} ms;"
          f" failed creates: {failed}")


def emulator_counts(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_emulator/dump", params={"log": "0", "store": "0"}, timeout=60).json()


def print_upstream(url: str, before: dict[str, Any], seconds: float, rate_limit: float) -> int:
    """Prints what the emulator saw since ``before``; returns the records created upstream."""
    after = emulator_counts(url)
    requests = sum(after["requests"].values()) - sum(before["requests"].values())
    limited = after["faults"].get("rate_limit", 0) - before["faults"].get("rate_limit", 0)
    throttled = after["faults"]["throttle"] - before["faults"]["throttle"] + limited
    stored = after["inferenceResultCount"] - before["inferenceResultCount"]
    print(f"upstream: {requests:,} requests ({requests / seconds:,.1f}/s), {stored:,} records created"
          f" ({stored / seconds:,.1f}/s), {throttled:,} answered 429 ({100 * throttled / max(1, requests):.2f}%)")
    if rate_limit:
        served = requests - limited
        print(f"token bucket R = {rate_limit:g}/s: {served / seconds:,.1f} requests/s served ="
              f" {100 * served / seconds / rate_limit:.0f}% of R, {100 * limited / max(1, requests):.2f}% 429'd")
        print_steady(url, time.time() - seconds + WARM_UP_S, rate_limit)
    return stored


WARM_UP_S = 15.0  # slow start overshoots the bucket's burst once: the steady state is judged after it


def print_steady(url: str, since: float, rate_limit: float) -> None:
    """The same from the emulator's request log, after the warm-up (the log keeps the last 100,000)."""
    log = httpx.get(f"{url}/_emulator/dump", params={"log": "1", "store": "0"}, timeout=120).json()["log"]
    steady = [entry for entry in log if entry["t"] >= since]
    if not steady:
        return
    seconds = max(1e-9, time.time() - since)
    limited = sum(1 for entry in steady if entry["fault"] == "rate_limit")
    print(f"  after the first {WARM_UP_S:g} s: {(len(steady) - limited) / seconds:,.1f} requests/s served ="
          f" {100 * (len(steady) - limited) / seconds / rate_limit:.0f}% of R,"
          f" {100 * limited / len(steady):.2f}% 429'd")


# -- runs ---------------------------------------------------------------------------------------------


def start_writers(args: argparse.Namespace, path: Path, sessions_file: Path, until: float
                  ) -> list[subprocess.Popen[str]]:
    command = [sys.executable, __file__, "--writer", "--store", str(path), "--sessions-file", str(sessions_file),
               "--until", str(until), "--rate", str(args.rate), "--pending-share", str(args.pending_share)]
    return [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.writers)]


def soak(args: argparse.Namespace) -> None:
    faults = {} if args.faults == "none" else FAULT_MIX
    with ExitStack() as stack:
        url = stack.enter_context(emulator(args.latency_ms))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        sessions = make_sessions(url, args.sessions)
        (folder / "sessions.json").write_text(json.dumps(sessions))
        path = folder / "store.db"
        print(f"pre-filled {args.backlog:,} queued records in {args.sessions} sessions in"
              f" {prefill(path, sessions, args.backlog // args.sessions):.1f} s")
        httpx.post(f"{url}/_emulator/faults", json={**faults, "rate_limit_rps": args.rate_limit}, timeout=10)
        before = emulator_counts(url)
        daemon = start_daemon(url, path, folder, args.concurrency)
        stack.callback(stop, daemon)
        started = time.time()
        until = started + args.minutes * 60
        writers = start_writers(args, path, folder / "sessions.json", until)
        Monitor(path, daemon, args.every_s).run_until(until)
        results = [json.loads(writer.communicate(timeout=120)[0] or "{}") for writer in writers]
        cpu, seconds = cpu_seconds(daemon.pid), time.time() - started
        print_writers([result for result in results if result])
        stored = print_upstream(url, before, seconds, args.rate_limit)
        print(f"daemon's CPU: {cpu:.1f} s ({100 * cpu / seconds:.0f}% of a core),"
              f" {1000 * cpu / max(1, stored):.2f} ms per record created upstream")
        figures = store_figures(path)
        print(f"daemon's longest write transaction since start: {figures['longest_write_ms'] or 0:.1f} ms"
              f" ({figures['longest_write_name']}); the most CPU one used: {figures['longest_write_cpu_ms'] or 0:.2f} ms"
              f"; {figures['writes_given_way']:,} gave way to an app; load average {os.getloadavg()[0]:.1f}"
              f" on {os.cpu_count()} CPUs")


def drain_rate(args: argparse.Namespace, backlog: int, faults: dict[str, float] | None = None) -> float:
    """Records/s the daemon drains from a queue of ``backlog`` (with ``faults`` on the emulator): timed
    from the 10th percent of the queue (at most 2,000 records: start-up left out) to the 90th, at
    most ``--drain-s`` s."""
    with ExitStack() as stack:
        url = stack.enter_context(emulator(args.latency_ms))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        sessions = make_sessions(url, args.sessions)
        path = folder / "store.db"
        prefill(path, sessions, max(1, backlog // args.sessions))
        if faults:
            httpx.post(f"{url}/_emulator/faults", json=faults, timeout=10).raise_for_status()
        base = emulator_counts(url)["inferenceResultCount"]
        daemon = stack.enter_context(_running(start_daemon(url, path, folder, args.concurrency)))
        first = wait_for_count(url, base + min(2000, backlog // 10), daemon)
        deadline = first[0] + args.drain_s
        last = first
        while last[1] < base + backlog * 9 // 10 and time.monotonic() < deadline:
            time.sleep(0.25)
            last = (time.monotonic(), emulator_counts(url)["inferenceResultCount"])
        return (last[1] - first[1]) / (last[0] - first[0])


class Tick(NamedTuple):
    when: float  # time.monotonic()
    upstream: int  # records the emulator holds beyond those it had when the feeder started
    before: int  # queued before this tick's top-up
    after: int  # queued after it


class Feeder:
    """Holds the daemon's queue near ``size``: each tick tops it up by what went upstream since the last."""

    def __init__(self, url: str, path: Path, sessions: list[str], size: int, inserted: int) -> None:
        self.url, self.sessions, self.size, self.inserted = url, sessions, size, inserted
        # Waits out the daemon's write transactions rather than failing on SQLITE_BUSY.
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.base = emulator_counts(url)["inferenceResultCount"]

    def tick(self) -> Tick:
        # Queued from the emulator's count: a COUNT on the store would compete with the daemon.
        upstream = emulator_counts(self.url)["inferenceResultCount"] - self.base
        when, queued = time.monotonic(), self.inserted - upstream
        if queued < self.size:
            top = self.inserted + self.size - queued
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                queue_creates(self.conn, self.sessions, self.inserted, top, time.time())
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")  # the daemon's data_version watch sees it and starts a pass
            self.inserted = top
        return Tick(when, upstream, queued, max(queued, self.size))

    def feed_until(self, daemon: subprocess.Popen[bytes], done: Callable[[Tick], bool]) -> list[Tick]:
        """Tick every ``FEED_S`` until ``done`` says so; the ticks."""
        ticks: list[Tick] = []
        while daemon.poll() is None:
            time.sleep(FEED_S)
            ticks.append(self.tick())
            if done(ticks[-1]):
                return ticks
        raise RuntimeError("the daemon exited")


FEED_S = 0.25  # at ~400 records/s the queue dips ~100 records between top-ups: 10% of a 1k queue


def held_drain(args: argparse.Namespace, size: int) -> tuple[float, list[int]]:
    """Records/s the daemon drains while a feeder holds its queue at ``size``, and the queue sizes
    seen in the window (before and after each top-up: the sawtooth's ends). The window is
    ``--drain-s`` s after a warm-up of max(3 s, 2,000 records): slow start is left out."""
    with ExitStack() as stack:
        url = stack.enter_context(emulator(args.latency_ms))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        sessions = make_sessions(url, args.sessions)
        path = folder / "store.db"
        per_session = max(1, size // args.sessions)
        prefill(path, sessions, per_session)
        feeder = Feeder(url, path, sessions, size, per_session * len(sessions))
        stack.callback(feeder.conn.close)
        daemon = stack.enter_context(_running(start_daemon(url, path, folder, args.concurrency)))
        started = time.monotonic()
        first = feeder.feed_until(daemon, lambda tick: tick.when - started >= 3 and tick.upstream >= 2000)[-1]
        window = feeder.feed_until(daemon, lambda tick: tick.when - first.when >= args.drain_s)
        rate = (window[-1].upstream - first.upstream) / (window[-1].when - first.when)
        return rate, [queued for tick in window for queued in (tick.before, tick.after)]


def drain_scaling(args: argparse.Namespace, sizes: list[int]) -> None:
    for size in sizes:
        rate, queue = held_drain(args, size)
        print(f"queued ~{size:,} (held {min(queue):,}-{max(queue):,}, mean {statistics.mean(queue):,.0f}):"
              f" drained {rate:,.1f} records/s", flush=True)


def fault_cost(args: argparse.Namespace, backlog: int, rounds: int = 2) -> None:
    """Drain rate with the soak's fault mix vs none, alternated in one run (the box's noise hits both)."""
    rates: dict[str, list[float]] = {"none": [], "mix": []}
    for _ in range(rounds):
        for name, faults in (("none", None), ("mix", FAULT_MIX)):
            rates[name].append(drain_rate(args, backlog, faults))
            print(f"  {name:>4}: {rates[name][-1]:,.1f} records/s", flush=True)
    clean, mixed = statistics.median(rates["none"]), statistics.median(rates["mix"])
    print(f"queued {backlog:,}, no writers: fault-free {clean:,.1f}/s, fault mix {mixed:,.1f}/s"
          f" = {100 * mixed / clean:.0f}% of fault-free (medians of {rounds}); load average"
          f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def wait_for_count(url: str, count: int, daemon: subprocess.Popen[bytes]) -> tuple[float, int]:
    while daemon.poll() is None:
        seen = emulator_counts(url)["inferenceResultCount"]
        if seen >= count:
            return time.monotonic(), seen
        time.sleep(0.1)
    raise RuntimeError("the daemon exited")


@contextmanager
def _running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=70.0, help="create() calls per second per writer")
    parser.add_argument("--pending-share", type=float, default=0.2)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=SyncSettings().concurrency,
                        help="the daemon's sync.concurrency (default: the shipped default)")
    parser.add_argument("--faults", choices=("mix", "none"), default="mix")
    parser.add_argument("--rate-limit", type=float, default=0.0, help="emulator token bucket, requests/s (0: off)")
    parser.add_argument("--every-s", type=float, default=60.0)
    parser.add_argument("--short", action="store_true", help="1 minute, a 20k backlog, a line every 15 s")
    parser.add_argument("--drain-scaling",
                        help="comma-separated queue sizes: drain rate with the queue held at each, no writers")
    parser.add_argument("--drain-s", type=float, default=20.0)
    parser.add_argument("--fault-cost", type=int, metavar="QUEUED",
                        help="drain rate with the fault mix vs none, alternated, from QUEUED records, no writers")
    parser.add_argument("--dir", default="/var/tmp", help="parent folder of the scratch store: a local disk")
    parser.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--sessions-file", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        return run_writer(args)
    if args.short:
        args.minutes, args.backlog, args.every_s = 1.0, 20_000, 15.0
    if args.fault_cost:
        return fault_cost(args, args.fault_cost)
    if args.drain_scaling:
        return drain_scaling(args, [int(value) for value in args.drain_scaling.split(",")])
    soak(args)


if __name__ == "__main__":
    main()
