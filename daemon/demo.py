"""``galtea-local demo``: the whole product on one machine, with no API key and nothing to set up.

1. Start the Galtea API emulator on a free loopback port; create the sessions.
2. Turn on latency and faults (503s, 429s, writes applied but unanswered).
3. Log a burst of turns through the library into a store in a temporary (or
   given) folder, timing every ``create()``; a share of them are PENDING.
4. Run the real daemon (``galtea-local daemon`` in a subprocess, the emulator's
   key in its environment) and, while it pushes, resolve the PENDING turns
   with ``update()``; show a progress bar until the queue drains.
5. Stop the daemon with SIGTERM, print the store's status, the exactly-once
   check against what the emulator holds, and the create() latency.
6. Run ``galtea-local verify``, which reads the sessions back through the API
   as an operator would after an outage.

Exit 0 when every record arrived exactly once with its final status and verify agrees.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from galtea_local import Galtea
from galtea_local.status import format_status, store_status
from galtea_local.store import Store
from galtea_local_daemon.emulator import EmulatorThread, FaultConfig

DEMO_KEY = "gsk_demo_emulator_key"
FAULTS = {"latency_ms": 20.0, "fail_rate": 0.05, "throttle_rate": 0.01, "ambiguous_rate": 0.05}
DRAIN_TIMEOUT_S = 90.0
# Short timeouts and backoff so a lost answer costs the demo a second, not the production defaults.
CONFIG = """\
[upstream]
read_timeout_s = 5.0
[sync]
interval_s = 1.0
backoff_initial_s = 0.2
backoff_max_s = 2.0
backoff_jitter_s = 0.2
lease_s = 10.0
shutdown_timeout_s = 5.0
# The emulator commits at once unless told to commit late, so a lost create that is not
# listed after 2 s never will be; production keeps the default (docs/delivery.md).
commit_grace_s = 2.0
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", help="folder for the store, config and daemon log (default: a new temporary one)")
    parser.add_argument("--sessions", type=int, default=20, help="conversations (default 20)")
    parser.add_argument("--turns", type=int, default=25, help="turns per conversation (default 25)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault draw and the PENDING choice")


def _create_sessions(url: str, count: int) -> list[str]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=10) as http:
        return [
            http.post("/sessions", json={"productId": "demo-product", "customId": f"demo-{n}"}).raise_for_status()
            .json()["id"] for n in range(count)
        ]


def _log_burst(store_path: Path, sessions: list[str], turns: int, rng: random.Random) -> tuple[list[float], list]:
    """Create every turn (sessions interleaved, as live traffic is); return create() latencies and PENDING ids."""
    latencies, pending = [], []
    with Galtea(store=store_path) as galtea:
        for turn in range(turns):
            for n, session in enumerate(sessions):
                is_pending = rng.random() < 0.2
                started = time.perf_counter()
                record = galtea.inference_results.create(
                    session_id=session, input=f"[{n}.{turn}] what is the status of order {1000 + turn}?",
                    output=None if is_pending else f"Order {1000 + turn} ships tomorrow.",
                    latency=rng.uniform(200, 900), usage_info={"input_tokens": 40 + turn, "output_tokens": 12},
                    status="PENDING" if is_pending else None,
                )
                latencies.append(time.perf_counter() - started)
                if is_pending:
                    pending.append(record.id)
    return latencies, pending


def _resolve_pending(store_path: Path, pending: list[str], rng: random.Random) -> None:
    """The app finishes its slow turns later: most are generated, a few fail."""
    with Galtea(store=store_path) as galtea:
        for record_id in pending:
            if rng.random() < 0.8:
                galtea.inference_results.update(record_id, output="Here is the answer, after a while.",
                                                 status="GENERATED")
            else:
                galtea.inference_results.update(record_id, status="FAILED", error="model timed out")


def _env(folder: Path, store_path: Path, url: str) -> dict[str, str]:
    return {**os.environ, "GALTEA_API_KEY": DEMO_KEY, "GALTEA_API_URL": url, "GALTEA_LOCAL_STORE": str(store_path),
            "GALTEA_LOCAL_CONFIG": str(folder / "config.toml")}


def _verify(folder: Path, store_path: Path, url: str) -> int:
    """``galtea-local verify``, as an operator runs it; its report goes to our output."""
    done = subprocess.run([sys.executable, "-m", "galtea_local_daemon.cli", "verify"],
                          env=_env(folder, store_path, url), capture_output=True, text=True, timeout=120)
    print("\ngaltea-local verify\n" + (done.stdout + done.stderr).rstrip())
    return done.returncode


def _start_daemon(folder: Path, store_path: Path, url: str) -> subprocess.Popen[bytes]:
    env = _env(folder, store_path, url)
    log_file = open(folder / "daemon.log", "wb")  # noqa: SIM115 - the child owns it until it exits
    return subprocess.Popen([sys.executable, "-m", "galtea_local_daemon.cli", "daemon"],
                            env=env, stdout=log_file, stderr=subprocess.STDOUT)


def _drain(store: Store, total: int, daemon: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Show progress until nothing is queued; return the last status."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    with tqdm(total=total, desc="pushed", unit="rec", file=sys.stderr) as bar:
        while True:
            status = store_status(store)
            done = status["synced"] + status["dead"]
            if done != bar.n:
                bar.set_postfix(queued=status["queued"], dead=status["dead"], refresh=False)
                bar.update(done - bar.n)
            if status["queued"] == 0 or daemon.poll() is not None or time.monotonic() > deadline:
                return status
            time.sleep(0.1)


def _exactly_once(store: Store, emulator: EmulatorThread, sessions: list[str]) -> dict[str, int]:
    """Compare the local records with what the emulator holds, record by record."""
    upstream = [r for r in httpx.get(f"{emulator.url}/_emulator/dump", params={"log": "0"}).json()["inferenceResults"]
                if r["sessionId"] in set(sessions)]
    by_id = {r["id"]: r for r in upstream}
    copies = collections.Counter((r["sessionId"], json.dumps(r["input"], sort_keys=True)) for r in upstream)
    local = store.read(lambda conn: conn.execute(
        "SELECT remote_id, status FROM inference_results WHERE deleted = 0").fetchall())
    return {
        "created": len(local),
        "upstream": len(upstream),
        "duplicates": sum(count - 1 for count in copies.values()),
        "missing": sum(1 for row in local if row["remote_id"] not in by_id),
        "status_mismatch": sum(1 for row in local
                               if row["remote_id"] in by_id and by_id[row["remote_id"]]["status"] != row["status"]),
    }


def _stop(daemon: subprocess.Popen[bytes]) -> int | None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(15)
    except subprocess.TimeoutExpired:
        daemon.kill()
        return None


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1e3 if len(values) > 1 else values[0] * 1e3


def main(args: argparse.Namespace) -> int:
    if args.dir:
        return _run(args, Path(args.dir))
    with tempfile.TemporaryDirectory(prefix="galtea-local-demo-") as folder:  # nothing left behind
        return _run(args, Path(folder))


def _run(args: argparse.Namespace, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(CONFIG)
    store_path = folder / "store.db"
    rng = random.Random(args.seed)
    emulator = EmulatorThread(config=FaultConfig(api_key=DEMO_KEY), seed=args.seed).start()
    try:
        print(f"emulator   {emulator.url} (faults: {', '.join(f'{k}={v}' for k, v in FAULTS.items())})")
        sessions = _create_sessions(emulator.url, args.sessions)
        emulator.injector.config = emulator.injector.config.changed(FAULTS)
        started = time.perf_counter()
        latencies, pending = _log_burst(store_path, sessions, args.turns, rng)
        print(f"logged     {len(latencies)} turns ({len(pending)} PENDING) in {time.perf_counter() - started:.2f}s "
              f"into {store_path}")
        daemon = _start_daemon(folder, store_path, emulator.url)
        _resolve_pending(store_path, pending, rng)
        store = Store(str(store_path))
        status = _drain(store, len(latencies), daemon)
        code = _stop(daemon)
        emulator.injector.config = emulator.injector.config.changed({k: 0 for k in FAULTS})  # verify reads clean
        ok = _report(store, emulator, sessions, status, code, latencies, folder if args.dir else None) == 0
        verified = _verify(folder, store_path, emulator.url) == 0
        return 0 if ok and verified else 1
    finally:
        emulator.stop()


def _report(store: Store, emulator: EmulatorThread, sessions: list[str], status: dict[str, Any],
            code: int | None, latencies: list[float], kept: Path | None) -> int:
    print("\n" + format_status(store_status(store)))
    check = _exactly_once(store, emulator, sessions)
    faults = emulator.injector.faults
    print(f"\nfaults     {dict(faults)} injected by the emulator")
    print(f"exactly    created {check['created']}, upstream {check['upstream']}, duplicates {check['duplicates']}, "
          f"missing {check['missing']}, final status mismatches {check['status_mismatch']}")
    print(f"create()   p50 {_percentile(latencies, 50):.3f} ms, p99 {_percentile(latencies, 99):.3f} ms "
          f"(local SQLite, no network)")
    where = f"its log: {kept / 'daemon.log'}" if kept else "pass --dir DIR to keep the store and the daemon's log"
    print(f"daemon     exit {code} after SIGTERM; {where}")
    ok = code == 0 and status["queued"] == 0 and check["created"] == check["upstream"] and not any(
        check[k] for k in ("duplicates", "missing", "status_mismatch"))
    print("OK: every record arrived exactly once" if ok else "FAILED: see above")
    return 0 if ok else 1
