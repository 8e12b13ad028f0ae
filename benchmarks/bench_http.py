"""CPU per request of the daemon's upstream client: through httpx.Client vs its own kept-alive connections.

Under a backlog the daemon is bound by its CPU, and it sends two requests per record (the
create and its ``createdAt`` stamp), so the client's CPU per request is the drain's. This
sends the same ``POST /inferenceResults`` through one ``UpstreamClient`` on each path
(``httpx.Client``, as with a proxy or a test transport, and ``upstream_pool``'s ``http.client``
connection per thread, the default), in
alternating rounds (the box's noise hits both alike), to the emulator in its own process,
and prints the CPU time this process spent per request (``time.process_time``), and the wall
time.

    python benchmarks/bench_http.py [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_drain import API_KEY, emulator, make_sessions  # noqa: E402

from galtea_local_daemon.upstream import UpstreamClient  # noqa: E402


def per_request(client: UpstreamClient, body: dict, count: int) -> tuple[float, float]:
    """CPU and wall microseconds per request, over ``count`` creates."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        client.create_inference_result(body)
    return 1e6 * (time.process_time() - cpu) / count, 1e6 * (time.perf_counter() - wall) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with emulator(0) as url:
        session = make_sessions(url, 1)[0]
        body = {"sessionId": session, "input": "What is the capital of France?", "actualOutput": "Paris " * 20,
                "latency": 12.5, "inputTokens": 12, "outputTokens": 40, "status": "GENERATED"}
        paths = {"httpx.Client": UpstreamClient(url, API_KEY, transport=httpx.HTTPTransport()),
                 "http.client": UpstreamClient(url, API_KEY)}
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, client in paths.items():
                per_request(client, body, 100)  # warm: connections open, code paths hot
                figures[name].append(per_request(client, body, args.requests))
        for client in paths.values():
            client.close()
    print(f"{args.rounds} alternating rounds of {args.requests:,} creates each, to the emulator (no added latency)")
    for name, runs in figures.items():
        cpu = [c for c, _ in runs]
        print(f"  {name:15} CPU {statistics.median(cpu):7.1f} us/request (rounds: "
              f"{', '.join(f'{c:.0f}' for c in cpu)}), wall {statistics.median(w for _, w in runs):7.1f} us")
    old, new = (statistics.median(c for c, _ in runs) for runs in figures.values())
    print(f"  http.client connections use {100 * (1 - new / old):.0f}% less CPU per request")


if __name__ == "__main__":
    main()
