"""A child process that records spans forever, printing each span's id once it has ended.

Run as ``python span_writer.py STORE``; the parent SIGKILLs it at a random moment.
"""

import sys

import galtea_local
from galtea_local import Galtea

galtea = Galtea(store=sys.argv[1])
trace = galtea.traces.create(session_id="crash", input="q")
galtea_local.set_context(trace_id=trace.id)
n = 0
while True:
    with galtea_local.start_span(f"outer-{n}", type="AGENT") as outer:
        with galtea_local.start_span(f"inner-{n}", type="TOOL") as inner:
            inner.update(output={"n": n})
        print(f"trace_{inner.span.context.span_id:016x}", flush=True)  # inner has ended
    print(f"trace_{outer.span.context.span_id:016x}", flush=True)  # outer has ended
    n += 1
