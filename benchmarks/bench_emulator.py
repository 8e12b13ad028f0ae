"""How fast the emulator answers, so it is never the bottleneck of another benchmark.

Runs the real CLI (``python -m galtea_local_daemon.emulator``) in its own
process and drives it from this one with a minimal keep-alive HTTP/1.1 client on
raw asyncio streams: a general-purpose client (httpx) costs more CPU per request
than the server does, and on a 2-core machine it would measure itself.

Prints two figures:
1. creates/s: ``POST /inferenceResults`` without injected latency, over
   ``--connections`` keep-alive connections.
2. in flight: with ``--latency-ms`` (default 50), ``--in-flight`` requests sent
   at once on as many connections; the server's own ``maxInFlight`` counter says
   how many it held at the same time, and the wall time shows they were not queued.

Usage: python benchmarks/bench_emulator.py [--creates 20000] [--connections 64]
       [--in-flight 1000] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import Any

API_KEY = "gsk_bench"


class RawConnection:
    """One keep-alive HTTP/1.1 connection: send a request, read one answer (Content-Length bodies only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def start_emulator(latency_ms: float) -> tuple[subprocess.Popen[str], str, int]:
    command = [sys.executable, "-m", "galtea_local_daemon.emulator", "--port", "0", "--api-key", API_KEY]
    command += ["--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("listening on http://"):
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    host, port = line.strip().removeprefix("listening on http://").rsplit(":", 1)
    return proc, host, int(port)


def stop_emulator(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(15)


async def measure_creates(host: str, port: int, total: int, connections: int) -> float:
    """Creates per second, all ``total`` answered 201 over ``connections`` keep-alive connections."""
    conns = [await RawConnection.open(host, port) for _ in range(connections)]
    status, body = await conns[0].request("POST", "/sessions", {"versionId": "bench"})
    session_id = json.loads(body)["id"]
    record = {"sessionId": session_id, "input": "What is the capital of France?", "actualOutput": "Paris",
              "latency": 150.5, "inputTokens": 12, "outputTokens": 3, "status": "GENERATED"}  # fmt: skip
    remaining = [min(500, total)]  # warm-up first
    failures = [0]

    async def worker(conn: RawConnection) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            status, _ = await conn.request("POST", "/inferenceResults", record)
            failures[0] += status != 201

    await asyncio.gather(*(worker(c) for c in conns[:8]))
    remaining[0] = total
    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    if failures[0]:
        raise SystemExit(f"{failures[0]} creates were not answered 201")
    return total / elapsed


async def measure_in_flight(host: str, port: int, count: int) -> tuple[float, float]:
    """Send ``count`` requests at once on ``count`` connections; (wall seconds, slowest answer seconds)."""
    conns = await asyncio.gather(*(RawConnection.open(host, port) for _ in range(count)))

    async def one(conn: RawConnection) -> float:
        sent = time.perf_counter()
        status, _ = await conn.request("GET", "/sessions/unknown")
        if status != 404:
            raise SystemExit(f"unexpected status {status}")
        return time.perf_counter() - sent

    started = time.perf_counter()
    durations = await asyncio.gather(*(one(c) for c in conns))
    wall = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return wall, max(durations)


def server_counters(host: str, port: int) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        conn = await RawConnection.open(host, port)
        _, body = await conn.request("GET", "/_emulator/dump?log=0")
        conn.close()
        return json.loads(body)

    return asyncio.run(fetch())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    # Each in-flight request holds a socket on both sides: lift the open-files limit (inherited by the server).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    proc, host, port = start_emulator(0)
    try:
        rate = asyncio.run(measure_creates(host, port, args.creates, args.connections))
        stored = len(server_counters(host, port)["inferenceResults"]) - min(500, args.creates)
    finally:
        stop_emulator(proc)
    print(f"creates/s (no latency, {args.connections} connections): {rate:,.0f}  [{stored:,} records stored]")

    proc, host, port = start_emulator(args.latency_ms)
    try:
        wall, slowest = asyncio.run(measure_in_flight(host, port, args.in_flight))
        held = server_counters(host, port)["maxInFlight"]
    finally:
        stop_emulator(proc)
    print(
        f"in flight at --latency-ms {args.latency_ms:g}: {held:,} held at once by the server "
        f"({args.in_flight:,} sent; all answered in {wall * 1000:,.0f} ms, slowest {slowest * 1000:,.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
