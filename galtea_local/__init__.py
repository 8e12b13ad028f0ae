"""galtea-local: the Galtea SDK's inference-result calls, answered from a local queue."""
