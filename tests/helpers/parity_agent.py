"""The same tracing code, run with the official SDK online or with galtea_local offline.

``python parity_agent.py sdk URL KEY`` or ``python parity_agent.py local STORE``. Span ids
and the OpenTelemetry clock are pinned to counters (identically in both modes), so the two
runs make the very same spans and the test can compare them field by field; nothing else in
either client is touched.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import opentelemetry.sdk.trace as otel_sdk
from opentelemetry import trace as otel_trace

_ids = itertools.count(0x1000)
_clock = itertools.count(1_795_000_000_000_000_000, 1_250_000)  # 1.25 ms a tick
otel_sdk.RandomIdGenerator.generate_span_id = lambda self: next(_ids)  # type: ignore[method-assign]
otel_sdk.time_ns = lambda: next(_clock)  # type: ignore[attr-defined]


def run_agent(galtea: object, client: object, trace_id: str) -> None:
    """An agent turn: decorated functions (sync, async, docstring), nested blocks, an error,
    a Langfuse-style span from another instrumentation, through every entry point."""
    token = client.spans.set_context(trace_id=trace_id)  # type: ignore[attr-defined]

    @galtea.traced(type="TOOL", attributes={"model": "m1"})  # type: ignore[attr-defined]
    def lookup(city: str, limit: int = 3) -> dict:
        return {"city": city, "population": 2_100_000, "limit": limit}

    @client.spans.traced(name="summarise", type="GENERATION")  # type: ignore[attr-defined]
    async def summarise(text: str) -> str:
        return text.upper()

    @galtea.traced(include_docstring=True)  # type: ignore[attr-defined]
    def plan(question: str) -> list:
        """Decide which tools to call."""
        return ["lookup", "summarise"]

    with galtea.start_span("agent", type="AGENT", input={"q": "Paris?"}, metadata={"v": 1}) as root:  # type: ignore
        plan("Paris?")
        with client.spans.start_span("retrieve", type="RETRIEVER", input={"k": 2}) as span:  # type: ignore
            span.update(output=[{"doc": "Paris is the capital"}, {"doc": "of France"}], metadata={"hits": 2})
        facts = lookup("Paris")
        root.update(output=asyncio.run(summarise(str(facts))))
        try:
            with galtea.start_span("flaky", type="TOOL"):  # type: ignore[attr-defined]
                raise TimeoutError("tool timed out")
        except TimeoutError:
            pass
        with otel_trace.get_tracer("langfuse").start_as_current_span("observed", attributes={
            "langfuse.observation.type": "embedding", "langfuse.observation.input": '{"text": "Paris"}',
            "langfuse.observation.output": "not json", "langfuse.trace.metadata": '{"user": "u1"}',
        }):
            pass
    client.spans.clear_context(token)  # type: ignore[attr-defined]


def main() -> None:
    mode = sys.argv[1]
    if mode == "sdk":
        import galtea

        client = galtea.Galtea(api_key=sys.argv[3], base_url=sys.argv[2])
    else:
        import galtea_local as galtea  # type: ignore[no-redef]

        client = galtea.Galtea(store=sys.argv[2])  # type: ignore[assignment]
    session = client.sessions.create(version_id="v1", custom_id="parity")
    trace = client.traces.create(session_id=session.id, input="What is the population of Paris?")
    run_agent(galtea, client, trace.id)
    if mode == "sdk":
        client.shutdown()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
