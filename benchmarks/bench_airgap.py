"""The air-gap path at scale: export and import time, and an app's create() latency during an import.

    python benchmarks/bench_airgap.py [--records 100000] [--sessions 1] [--writer] [--export-only] [--dir /var/tmp]

1. An origin store gets ``--records`` queued records spread over ``--sessions``
   sessions (1: one session's whole backlog, the case that used to be quadratic),
   written through ``create_batch`` in transactions of 1,000.
2. ``export`` writes them to one signed bundle: seconds, records/s, file size.
3. ``import`` reads it into a fresh store: seconds, records/s (target >= 20,000/s).
4. With ``--writer``, the import runs again into another fresh store while a
   separate process calls ``create()`` on that store every millisecond; it
   reports the slowest call and the 99th percentile (target: worst <= 100 ms).

Each figure is one run on the machine at hand; say how loaded it was.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from galtea_local import Galtea
from galtea_local.bundle import export_bundle, import_bundle
from galtea_local.bundle.signing import Signing, generate_key
from galtea_local.store import Store

BATCH = 1000
SIGNING = Signing(bytes.fromhex(generate_key()))

_WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from galtea_local import Galtea
    store, stop = sys.argv[1], Path(sys.argv[2])
    worst, samples = 0.0, []
    with Galtea(store=store) as galtea:
        Path(sys.argv[3]).touch()  # ready
        while not stop.exists():
            started = time.perf_counter()
            galtea.inference_results.create(session_id="app-session", input="during the import")
            samples.append(time.perf_counter() - started)
            time.sleep(0.001)
    samples.sort()
    print(json.dumps({"calls": len(samples), "worst_ms": samples[-1] * 1e3,
                      "p99_ms": samples[int(len(samples) * 0.99)] * 1e3,
                      "top_ms": [round(x * 1e3, 1) for x in samples[-8:]]}))
""")


def populate(path: Path, records: int, sessions: int) -> float:
    started = time.perf_counter()
    with Galtea(store=path) as galtea:
        made = 0
        while made < records:
            count = min(BATCH, records - made)
            session = f"bench-session-{(made // BATCH) % sessions}"
            turns = [turn for n in range(made, made + count) for turn in (
                {"role": "user", "content": f"How do I reset the press on line {n}?"},
                {"role": "assistant", "content": f"Hold the red button for {n % 60} seconds, then release."})]
            galtea.inference_results.create_batch(session_id=session, conversation_turns=turns)
            made += count
    return time.perf_counter() - started


def cpu_s() -> float:
    """This process's CPU seconds: on a shared, loaded machine a steadier figure than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_import(bundle: Path, target: Path) -> tuple[float, int, float]:
    """(wall seconds, records added, CPU seconds)."""
    store = Store(str(target))
    try:
        started, cpu = time.perf_counter(), cpu_s()
        result = import_bundle(store, bundle, signing=SIGNING)
        return time.perf_counter() - started, result.records_added, cpu_s() - cpu
    finally:
        store.close()


def import_with_writer(bundle: Path, target: Path, folder: Path) -> dict[str, float]:
    Galtea(store=target).close()  # the store exists before the writer opens it
    stop, ready = folder / "stop", folder / "ready"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(stop), str(ready)],
                              stdout=subprocess.PIPE, text=True)
    while not ready.exists():
        time.sleep(0.01)
    time.sleep(0.2)  # a few calls before the import starts
    seconds, added, _ = timed_import(bundle, target)
    stop.touch()
    out, _ = writer.communicate(timeout=60)
    return {"seconds": seconds, "records": added, **json.loads(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--writer", action="store_true", help="also measure a concurrent create() during an import")
    parser.add_argument("--export-only", action="store_true", help="stop after the export (for 1M records)")
    parser.add_argument("--dir", default=None, help="where the stores go (a real local disk)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-airgap-", dir=args.dir))
    try:
        origin, bundle = folder / "origin.db", folder / "queue.glb"
        print(f"populating {args.records:,} records in {args.sessions} session(s): "
              f"{populate(origin, args.records, args.sessions):.1f} s")
        store = Store(str(origin))
        try:
            started, cpu = time.perf_counter(), cpu_s()
            result = export_bundle(store, bundle, signing=SIGNING)
            seconds, cpu = time.perf_counter() - started, cpu_s() - cpu
        finally:
            store.close()
        print(f"export: {result.records:,} records in {seconds:.1f} s = {result.records / seconds:,.0f} records/s "
              f"({cpu:.1f} CPU s = {result.records / cpu:,.0f} records per CPU s); "
              f"bundle {bundle.stat().st_size / 2**20:.1f} MiB")
        if args.export_only:
            return
        seconds, added, cpu = timed_import(bundle, folder / "connected.db")
        print(f"import: {added:,} records in {seconds:.1f} s = {added / seconds:,.0f} records/s "
              f"({cpu:.1f} CPU s = {added / cpu:,.0f} records per CPU s; the rest is pauses for other writers "
              "and waiting for a CPU)")
        if args.writer:
            figures = import_with_writer(bundle, folder / "connected-2.db", folder)
            print(f"import with a concurrent writer: {figures['records']:,} records in {figures['seconds']:.1f} s; "
                  f"the writer's create(): {figures['calls']:,} calls, worst {figures['worst_ms']:.1f} ms, "
                  f"p99 {figures['p99_ms']:.1f} ms; slowest {figures['top_ms']}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
