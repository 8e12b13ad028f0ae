"""The emulator's HTTP surface: the Galtea API routes the SDK calls, plus control endpoints.

API routes (camelCase JSON, as the official SDK 5.12 sends and reads them):
``/inferenceResults[/{id}|/batch]``, ``/sessions[/{id}[/finish]]``, ``/products``, ``/versions`` (emulator/catalog.py), ``/traces[/{id}|/batch]`` (spans), ``/evaluations[/{id}|/fromInferenceResult|/fromSession|/singleTurn]`` and
``GET /minimum-sdk-version``, ``/storage/generate-put-presigned-url`` and the presigned links
it hands out (emulator/storage.py). Control routes live under ``/_emulator/`` and are
never delayed, faulted or authenticated:

- ``GET /_emulator/dump[?log=0][&store=0]``: everything stored plus the counters
  (``store=0``: only how many results and sessions are stored).
- ``GET|POST /_emulator/faults``: read or change :class:`FaultConfig` fields
  (``{"fail_rate": 0.5, ...}``; ``"seed"`` restarts the random sequence;
  ``"throttle_next": N`` answers exactly the next N API requests 429).
- ``POST /_emulator/storage``: ``{"hold_put_s": N}`` holds each upload's answer (emulator/storage.py).
- ``POST /_emulator/reset``: forget everything stored and zero the counters.
- ``POST /_emulator/products``: seed a product (the SDK cannot create one).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from galtea_local_daemon.emulator import rules
from galtea_local_daemon.emulator.faults import FaultConfig, FaultInjector
from galtea_local_daemon.emulator.layer import FaultLayer
from galtea_local_daemon.emulator.rules import ApiError
from galtea_local_daemon.emulator.catalog import PRODUCT_FILTERS, VERSION_FILTERS, Catalog
from galtea_local_daemon.emulator.evaluations import EvaluationStore
from galtea_local_daemon.emulator.spans import SpanStore
from galtea_local_daemon.emulator.storage import OBJECT_PATH
from galtea_local_daemon.emulator.state import RESULT_FILTERS, SESSION_FILTERS, Store, as_read

# Far ahead of any real release, and no higher minimum than the SDK we test with:
# the SDK neither warns about an update nor refuses to run.
SDK_VERSIONS = {"minimumSdkVersionSupported": "0.0.0", "latestSdkVersionPublished": "0.0.0"}


async def read_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body; an empty body is an empty object."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise rules.bad_request("request body is not valid JSON") from None
    return rules.require_object(body)


def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"message": exc.message, "statusCode": exc.status}, status_code=exc.status)


Handler = Callable[[Request], Awaitable[Response]]


class EmulatorApp:
    """The routes, bound to one :class:`Store` and one :class:`FaultInjector`."""

    def __init__(self, store: Store, injector: FaultInjector) -> None:
        self.store = store
        self.injector = injector
        self.spans = SpanStore(store)
        self.evaluations = EvaluationStore(store)
        self.catalog = Catalog(store)

    def routes(self) -> list[Route]:
        return [
            Route("/inferenceResults", self.create_result, methods=["POST"]),
            Route("/inferenceResults", self.list_results, methods=["GET"]),
            Route("/inferenceResults/batch", self.create_batch, methods=["POST"]),
            Route("/inferenceResults/{id}", self.get_result, methods=["GET"]),
            Route("/inferenceResults/{id}", self.update_result, methods=["PATCH"]),
            Route("/inferenceResults/{id}", self.delete_result, methods=["DELETE"]),
            Route("/sessions", self.create_session, methods=["POST"]),
            Route("/sessions", self.list_sessions, methods=["GET"]),
            Route("/sessions/{id}", self.get_session, methods=["GET"]),
            Route("/sessions/{id}", self.update_session, methods=["PATCH"]),
            Route("/sessions/{id}", self.delete_session, methods=["DELETE"]),
            Route("/sessions/{id}/finish", self.finish_session, methods=["PATCH"]),
            Route("/traces", self.create_span, methods=["POST"]),
            Route("/traces", self.list_spans, methods=["GET"]),
            Route("/traces/batch", self.create_spans, methods=["POST"]),
            Route("/traces/{id}", self.get_span, methods=["GET"]),
            Route("/traces/{id}", self.delete_span, methods=["DELETE"]),
            Route("/evaluations/fromInferenceResult", self.evaluate_trace, methods=["POST"]),
            Route("/evaluations/fromSession", self.evaluate_session, methods=["POST"]),
            Route("/evaluations/singleTurn", self.evaluate_single_turn, methods=["POST"]),
            Route("/evaluations", self.list_evaluations, methods=["GET"]),
            Route("/evaluations/{id}", self.get_evaluation, methods=["GET"]),
            Route("/evaluations/{id}", self.delete_evaluation, methods=["DELETE"]),
            *self.catalog_routes(),
            Route("/minimum-sdk-version", self.sdk_versions, methods=["GET"]),
            Route("/storage/generate-put-presigned-url", self.presign_put, methods=["GET"]),
            Route(OBJECT_PATH + "{key:path}", self.store.storage.put_object, methods=["PUT"]),
            Route(OBJECT_PATH + "{key:path}", self.store.storage.get_object, methods=["GET"]),
            Route("/_emulator/storage", self.set_storage, methods=["POST"]),
            Route("/_emulator/dump", self.dump, methods=["GET"]),
            Route("/_emulator/faults", self.get_faults, methods=["GET"]),
            Route("/_emulator/faults", self.set_faults, methods=["POST"]),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
            Route("/_emulator/versions", self.set_versions, methods=["POST"]),
            Route("/_emulator/products", self.seed_product, methods=["POST"]),
        ]

    def catalog_routes(self) -> list[Route]:
        return [
            Route("/products", self.list_products, methods=["GET"]),
            Route("/products/{id}", self.get_product, methods=["GET"]),
            Route("/products/{id}", self.delete_product, methods=["DELETE"]),
            Route("/versions", self.create_version, methods=["POST"]),
            Route("/versions", self.list_versions, methods=["GET"]),
            Route("/versions/get-or-create", self.get_or_create_version, methods=["POST"]),
            Route("/versions/{id}", self.get_version, methods=["GET"]),
            Route("/versions/{id}", self.update_version, methods=["PATCH"]),
            Route("/versions/{id}", self.delete_version, methods=["DELETE"]),
        ]

    # --- what a read shows ----------------------------------------------------------

    def _shown(self, record: dict[str, Any]) -> dict[str, Any]:
        return record if self.injector.config.echo_write_only else as_read(record)

    def _capped(self, query: rules.ListQuery) -> rules.ListQuery:
        """A proxy or the API caps ``limit`` without saying so: a short page is not the last one."""
        cap = self.injector.config.page_cap
        if not cap or (query.limit is not None and query.limit <= cap):
            return query
        return dataclasses.replace(query, limit=cap)

    # --- inference results ----------------------------------------------------------

    async def create_result(self, request: Request) -> Response:
        return JSONResponse(self._shown(self.store.create_result(await read_object(request))), status_code=201)

    async def create_batch(self, request: Request) -> Response:
        created = self.store.create_batch(await read_object(request))
        return JSONResponse([self._shown(r) for r in created], status_code=201)

    async def list_results(self, request: Request) -> Response:
        query = self._capped(rules.parse_list_query(request.query_params.multi_items(), RESULT_FILTERS))
        return JSONResponse([self._shown(r) for r in self.store.list_results(query)])

    async def get_result(self, request: Request) -> Response:
        return JSONResponse(self._shown(self.store.get_result(request.path_params["id"])))

    async def update_result(self, request: Request) -> Response:
        body = await read_object(request)
        return JSONResponse(self._shown(self.store.update_result(request.path_params["id"], body)))

    async def delete_result(self, request: Request) -> Response:
        self.store.delete_result(request.path_params["id"])
        return Response(status_code=204)

    # --- sessions -------------------------------------------------------------------

    async def create_session(self, request: Request) -> Response:
        return JSONResponse(self.store.create_session(await read_object(request)), status_code=201)

    async def list_sessions(self, request: Request) -> Response:
        query = self._capped(rules.parse_list_query(request.query_params.multi_items(), SESSION_FILTERS))
        return JSONResponse(self.store.list_sessions(query))

    async def get_session(self, request: Request) -> Response:
        return JSONResponse(self.store.get_session(request.path_params["id"]))

    async def update_session(self, request: Request) -> Response:
        body = await read_object(request)
        return JSONResponse(self.store.update_session(request.path_params["id"], body))

    async def finish_session(self, request: Request) -> Response:
        body = await read_object(request)
        return JSONResponse(self.store.finish_session(request.path_params["id"], body))

    async def delete_session(self, request: Request) -> Response:
        self.store.delete_session(request.path_params["id"])
        return Response(status_code=204)

    # --- spans (the API's /traces route; see emulator/spans.py) ------------------------

    async def create_span(self, request: Request) -> Response:
        return JSONResponse(self.spans.create(await read_object(request)), status_code=201)

    async def create_spans(self, request: Request) -> Response:
        include_rejected = request.query_params.get("includeRejected") == "true"
        answer = self.spans.create_batch(await read_object(request), include_rejected)
        return JSONResponse(answer, status_code=201)

    async def list_spans(self, request: Request) -> Response:
        return JSONResponse(self.spans.list(request.query_params.multi_items()))

    async def get_span(self, request: Request) -> Response:
        return JSONResponse(self.spans.get(request.path_params["id"]))

    async def delete_span(self, request: Request) -> Response:
        self.spans.delete(request.path_params["id"])
        return Response(status_code=204)

    # --- evaluations (see emulator/evaluations.py) --------------------------------------

    async def evaluate_trace(self, request: Request) -> Response:
        return JSONResponse(self.evaluations.from_trace(await read_object(request)), status_code=201)

    async def evaluate_session(self, request: Request) -> Response:
        return JSONResponse(self.evaluations.from_session(await read_object(request)), status_code=201)

    async def evaluate_single_turn(self, request: Request) -> Response:
        return JSONResponse(self.evaluations.single_turn(await read_object(request)), status_code=201)

    async def list_evaluations(self, request: Request) -> Response:
        return JSONResponse(self.evaluations.list(request.query_params.multi_items()))

    async def get_evaluation(self, request: Request) -> Response:
        return JSONResponse(self.evaluations.get(request.path_params["id"]))

    async def delete_evaluation(self, request: Request) -> Response:
        self.evaluations.delete(request.path_params["id"])
        return Response(status_code=204)

    async def presign_put(self, request: Request) -> Response:
        return JSONResponse(self.store.storage.presign_put(request))

    async def set_storage(self, request: Request) -> Response:
        return await self.store.storage.control(request, await read_object(request))

    # --- products and versions (see emulator/catalog.py) -------------------------------

    async def seed_product(self, request: Request) -> Response:
        return JSONResponse(self.catalog.seed_product(await read_object(request)), status_code=201)

    async def list_products(self, request: Request) -> Response:
        query = self._capped(rules.parse_list_query(request.query_params.multi_items(), PRODUCT_FILTERS))
        return JSONResponse(self.catalog.list_products(query))

    async def get_product(self, request: Request) -> Response:
        return JSONResponse(self.catalog.product(request.path_params["id"]))

    async def delete_product(self, request: Request) -> Response:
        self.catalog.delete_product(request.path_params["id"])
        return Response(status_code=204)

    async def create_version(self, request: Request) -> Response:
        return JSONResponse(self.catalog.create_version(await read_object(request)), status_code=201)

    async def get_or_create_version(self, request: Request) -> Response:
        version, made = self.catalog.get_or_create(await read_object(request))
        return JSONResponse(version, status_code=201 if made else 200)

    async def list_versions(self, request: Request) -> Response:
        query = self._capped(rules.parse_list_query(request.query_params.multi_items(), VERSION_FILTERS))
        return JSONResponse(self.catalog.list_versions(query))

    async def get_version(self, request: Request) -> Response:
        return JSONResponse(self.catalog.version(request.path_params["id"]))

    async def update_version(self, request: Request) -> Response:
        body = await read_object(request)
        return JSONResponse(self.catalog.update_version(request.path_params["id"], body))

    async def delete_version(self, request: Request) -> Response:
        self.catalog.delete_version(request.path_params["id"])
        return Response(status_code=204)

    async def sdk_versions(self, request: Request) -> Response:
        return JSONResponse(SDK_VERSIONS)

    # --- control and inspection -----------------------------------------------------

    async def dump(self, request: Request) -> Response:
        with_log = request.query_params.get("log", "1") not in ("0", "false")
        if request.query_params.get("store", "1") in ("0", "false"):  # counters only: cheap for a long benchmark
            counts = {"inferenceResultCount": len(self.store.results), "sessionCount": len(self.store.sessions)}
            return JSONResponse({**counts, **self.injector.snapshot(with_log)})
        spans = {"spans": list(self.spans.spans.values()), "deletedSpans": list(self.spans.deleted.values()),
                 "refusedDuplicateSpans": self.spans.refused_duplicates,
                 "evaluations": list(self.evaluations.evaluations.values()), **self.catalog.snapshot()}
        spans.update(self.store.storage.snapshot())
        return JSONResponse({**self.store.snapshot(), **spans, **self.injector.snapshot(with_log)})

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse({**self.injector.config.as_dict(), "seed": self.injector.seed})

    async def set_faults(self, request: Request) -> Response:
        changes = await read_object(request)
        seed = changes.pop("seed", None)
        throttle_next = changes.pop("throttle_next", None)
        try:
            self.injector.config = self.injector.config.changed(changes)
        except ValueError as exc:
            raise rules.bad_request(str(exc)) from None
        if seed is not None:
            self.injector.reseed(seed)
        if throttle_next is not None:
            self.injector.throttle_next(int(throttle_next))
        return await self.get_faults(request)

    async def set_versions(self, request: Request) -> Response:
        """``{"versionIds": [...]}`` makes only those versions exist; ``null`` accepts any again."""
        versions = (await read_object(request)).get("versionIds")
        if versions is not None and not (isinstance(versions, list) and all(isinstance(v, str) for v in versions)):
            raise rules.bad_request("versionIds must be a list of strings or null")
        self.store.known_versions = None if versions is None else set(versions)
        return JSONResponse({"versionIds": versions})

    async def reset(self, request: Request) -> Response:
        self.store.reset()
        self.spans.reset()
        self.evaluations.reset()
        self.catalog.reset()
        self.injector.reset()
        return JSONResponse({"reset": True})


def build_app(
    config: FaultConfig | None = None, seed: int | None = None
) -> tuple[FaultLayer, Store, FaultInjector]:
    """The ASGI app to serve, with the store and injector behind it (for in-process inspection)."""
    injector = FaultInjector(config, seed)
    store = Store(clock=lambda: time.time() + injector.config.clock_offset_s)
    api = Starlette(routes=EmulatorApp(store, injector).routes(), exception_handlers={ApiError: _api_error})
    return FaultLayer(api, injector), store, injector
