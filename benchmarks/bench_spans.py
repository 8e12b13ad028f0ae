"""What a span costs the app, and how fast the daemon drains traces with their spans.

Part 1 (default): per-span cost, one run, four columns with the same span-making code
(``tracer.start_as_current_span`` with the Galtea attributes ``@traced`` sets: trace id,
type, JSON input; output set inside), each on its own OpenTelemetry TracerProvider:

- ``otel``: the OpenTelemetry SDK alone (a processor that does nothing): the floor.
- ``sdk``: the official SDK 5.12's ``GalteaSpanProcessor`` in batch mode, buffering spans
  in memory (nothing exported during the loop: what an app pays per span online).
- ``ours``: galtea_local's processor, writing each span to the store when it ends
  (default durability: WAL, synchronous=NORMAL).
- ``traced``: ``@galtea_local.traced(type="TOOL")`` end to end (argument capture included).

The figure that matters is ``ours - otel`` at p50: what durability at span end adds.

Part 2 (``--drain``): ``--sessions`` x ``--traces`` traces, each with ``--spans`` spans
recorded through ``start_span``, drained by ``SyncEngine.run_once`` against the emulator
in its own process with ``--latency-ms`` (default 50).

Usage: python benchmarks/bench_spans.py [--n 20000] [--dir /var/tmp]
       python benchmarks/bench_spans.py --drain [--sessions 100 --traces 10 --spans 5 --latency-ms 50]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

import galtea_local
from galtea_local import Galtea
from galtea_local.spans.processor import StoreSpanProcessor
from galtea_local.spans.tracing import span_attributes, to_json

sys.path.insert(0, str(Path(__file__).parent))
from bench_drain import emulator, make_sessions  # noqa: E402


class NoOp(SpanProcessor):
    pass


def timed_spans(tracer: Any, trace_id: str, n: int) -> list[float]:
    """µs per span for ``n`` spans, after 500 warm-up spans; GC paused while timing."""
    galtea_local.set_context(trace_id=trace_id)
    attributes = span_attributes(type="TOOL", input_data={"query": "capital of France", "k": 3})
    output = to_json({"answer": "Paris"})
    samples = []
    for i in range(n + 500):
        started = time.perf_counter_ns()
        with tracer.start_as_current_span("lookup", attributes=attributes) as span:
            span.set_attribute("galtea.trace.output", output)
        samples.append((time.perf_counter_ns() - started) / 1000)
        if i == 499:
            gc.disable()
    gc.enable()
    return samples[500:]


def timed_traced(n: int) -> list[float]:
    @galtea_local.traced(type="TOOL")
    def lookup(query: str, k: int = 3) -> dict[str, str]:
        return {"answer": "Paris"}

    samples = []
    for i in range(n + 500):
        started = time.perf_counter_ns()
        lookup("capital of France")
        samples.append((time.perf_counter_ns() - started) / 1000)
        if i == 499:
            gc.disable()
    gc.enable()
    return samples[500:]


def provider_with(processor: SpanProcessor) -> Any:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider.get_tracer("bench")


def per_span(n: int, folder: str) -> None:
    from galtea.infrastructure.telemetry.processors.galtea_processor import GalteaSpanProcessor

    galtea = Galtea(store=f"{folder}/spans.db")
    trace_id = galtea.traces.create(session_id="bench", input="q").id
    sdk = GalteaSpanProcessor(http_client=None, batch_mode=True, max_batch_size=10**9)  # never exports
    sdk.force_flush = sdk.shutdown = lambda *args: True  # nor at exit (it has no client to export with)
    columns = {
        "otel": timed_spans(provider_with(NoOp()), trace_id, n),
        "sdk": timed_spans(provider_with(sdk), trace_id, n),
        "ours": timed_spans(provider_with(StoreSpanProcessor()), trace_id, n),
        "traced": timed_traced(n),
    }
    stored = galtea._store.read(lambda conn: conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0])
    print(f"{n} spans per column; {stored} spans in the store (ours + traced, warm-ups included)")
    print(f"{'':8}{'p50 µs':>10}{'p99 µs':>10}{'spans/s':>10}")
    for name, samples in columns.items():
        p50, p99 = statistics.median(samples), statistics.quantiles(samples, n=100)[98]
        print(f"{name:8}{p50:10.1f}{p99:10.1f}{len(samples) / (sum(samples) / 1e6):10.0f}")
    floor, sdk_p50 = statistics.median(columns["otel"]), statistics.median(columns["sdk"])
    ours = statistics.median(columns["ours"])
    print(f"ours - otel p50: {ours - floor:.1f} µs (target <= 50); sdk - otel p50: {sdk_p50 - floor:.1f} µs")


def drain(args: argparse.Namespace, folder: str) -> None:
    from galtea_local.status import store_status
    from galtea_local_daemon.backoff import Backoff
    from galtea_local_daemon.engine import EngineSettings, SyncEngine
    from galtea_local_daemon.upstream import UpstreamClient
    from bench_drain import API_KEY

    with emulator(args.latency_ms) as url:
        sessions = make_sessions(url, args.sessions)
        galtea = Galtea(store=f"{folder}/drain.db")
        for t in range(args.traces):
            for session_id in sessions:
                trace = galtea.traces.create(session_id=session_id, input=f"question {t}")
                token = galtea_local.set_context(trace_id=trace.id)
                with galtea_local.start_span("agent", type="AGENT", input={"t": t}):
                    for s in range(args.spans - 1):
                        with galtea_local.start_span(f"step-{s}", type="TOOL") as span:
                            span.update(output={"s": s})
                galtea_local.clear_context(token)
        client = UpstreamClient(url, API_KEY, max_connections=args.concurrency)
        engine = SyncEngine(galtea._store, client, EngineSettings(concurrency=args.concurrency), backoff=Backoff())
        started, passes = time.perf_counter(), 0
        while True:
            passes += 1
            engine.run_once()
            status = store_status(galtea._store)
            if status["queued"] == 0 and status["spans_queued"] == 0:
                break
        elapsed = time.perf_counter() - started
        engine.close()
        log = httpx.get(f"{url}/_emulator/dump").json()["log"]
        phases = {route: [e["t"] for e in log if e["route"] == route] for route in ("/inferenceResults",
                                                                                  "/traces/batch")}
        first = min(phases["/inferenceResults"])
        print("phases (s from the first create): creates {:.2f}-{:.2f}, span batches {:.2f}-{:.2f} ({} requests)"
              .format(0.0, max(phases["/inferenceResults"]) - first, min(phases["/traces/batch"]) - first,
                      max(phases["/traces/batch"]) - first, len(phases["/traces/batch"])))
        records, spans = args.sessions * args.traces, args.sessions * args.traces * args.spans
        print(f"{records} traces + {spans} spans drained in {elapsed:.1f} s ({passes} passes) at "
              f"{args.latency_ms:.0f} ms latency, concurrency {args.concurrency}: {records / elapsed:.0f} traces/s, "
              f"{spans / elapsed:.0f} spans/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--traces", type=int, default=10)
    parser.add_argument("--spans", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        drain(args, folder) if args.drain else per_span(args.n, folder)


if __name__ == "__main__":
    main()
