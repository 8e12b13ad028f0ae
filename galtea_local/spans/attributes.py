"""The OpenTelemetry attribute names the Galtea API and SDK 5.12 agree on, and Langfuse's.

Kept identical to the official SDK's, so a span made by either client's helpers (or
by Langfuse's ``@observe`` on a shared tracer provider) reads the same here.
"""

TRACE_ID = "galtea.inference_result.id"  # the trace (turn) a span belongs to, as the official SDK stamps it
# Ours: the official SDK's processor exports every span with TRACE_ID, so in an app that also
# runs the official client, a span recorded here under a local ``loc_…`` trace id must not carry
# it (the API does not know that id). The store processor reads LOCAL_TRACE_ID first, then TRACE_ID
# (spans of the official helpers, e.g. ``galtea.traced`` with ``galtea.set_context``).
LOCAL_TRACE_ID = "galtea_local.trace.id"
TYPE = "galtea.trace.type"
DESCRIPTION = "galtea.trace.description"
INPUT = "galtea.trace.input"
OUTPUT = "galtea.trace.output"
ERROR = "galtea.trace.error"
METADATA = "galtea.trace.metadata"

# Langfuse's observation (and, for a root span, trace) attributes: read when the Galtea
# ones are absent, so Langfuse-instrumented code lands too.
LANGFUSE_TYPE = "langfuse.observation.type"
INPUTS = (INPUT, "langfuse.observation.input", "langfuse.trace.input")
OUTPUTS = (OUTPUT, "langfuse.observation.output", "langfuse.trace.output")
METADATAS = (METADATA, "langfuse.observation.metadata", "langfuse.trace.metadata")

SPAN_TYPES = frozenset(
    ("SPAN", "GENERATION", "EVENT", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR", "EMBEDDING", "GUARDRAIL")
)
