"""The span, evaluation, version and product calls of :class:`~galtea_local_daemon.upstream.UpstreamClient`.

A mixin, so ``upstream.py`` stays one screenful per concern: every request still
goes through the client's one ``_call`` (classification, redaction, logging).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from galtea_local_daemon.wire import as_list, path_segment, query_string


class SpanAndEvaluationCalls:
    _call: Any  # UpstreamClient._call

    # -- spans (the API's /traces route) -------------------------------------

    def create_spans(self, spans: Sequence[Mapping[str, Any]]) -> Any:
        """POST /traces/batch?includeRejected=true: ``{"spans", "partialSuccess"?}``, or the bare
        list of created spans from an API that predates the flag."""
        return self._call("POST", "/traces/batch", query="includeRejected=true", body={"traces": list(spans)},
                          expect=(dict, list))  # type: ignore[arg-type]

    def list_spans(self, *, trace_ids: Sequence[str], offset: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """GET /traces of these traces: one page."""
        query = query_string([("inferenceResultIds", as_list(trace_ids)), ("offset", offset), ("limit", limit)])
        return self._call("GET", "/traces", query=query, expect=list)

    def delete_span(self, span_id: str) -> None:
        """DELETE /traces/{id}; a span already gone counts as deleted."""
        self._call("DELETE", f"/traces/{path_segment(span_id)}", expect=None, missing_ok=True)

    # -- evaluations ---------------------------------------------------------

    def evaluate_trace(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """POST /evaluations/fromInferenceResult; the evaluations created (one per metric)."""
        return self._call("POST", "/evaluations/fromInferenceResult", body=body, expect=list)

    def evaluate_session(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """POST /evaluations/fromSession; the evaluations created (one per metric)."""
        return self._call("POST", "/evaluations/fromSession", body=body, expect=list)

    def list_evaluations(self, *, session_ids: Sequence[str], from_created_at: str | None = None,
                         limit: int = 1000) -> list[dict[str, Any]]:
        """GET /evaluations of these sessions, oldest first: one page."""
        query = query_string([("sessionIds", as_list(session_ids)), ("fromCreatedAt", from_created_at),
                              ("limit", limit), ("sort", ["createdAt", "asc"])])
        return self._call("GET", "/evaluations", query=query, expect=list)

    # -- versions and products (the cache, and versions made offline) ----------

    def get_or_create_version(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /versions/get-or-create ``{productId, facts, name?}``: the product's version holding
        the facts, made only when none does (so sending it again never makes a second one)."""
        return self._call("POST", "/versions/get-or-create", body=body, expect=dict)

    def list_versions(self, *, product_ids: Sequence[str], names: Sequence[str] | None = None,
                      offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """GET /versions of these products (and names): one page, oldest first."""
        query = query_string([("productIds", as_list(product_ids)), ("names", as_list(names)),
                              ("offset", offset), ("limit", limit), ("sort", ["createdAt", "asc"])])
        return self._call("GET", "/versions", query=query, expect=list)

    def list_products(self, *, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """GET /products: one page, oldest first."""
        query = query_string([("offset", offset), ("limit", limit), ("sort", ["createdAt", "asc"])])
        return self._call("GET", "/products", query=query, expect=list)

