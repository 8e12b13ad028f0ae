"""The emulator's products and versions: the routes the official SDK 5.12 calls, as its code says the API behaves.

- Products are seeded through ``POST /_emulator/products`` (``{"name", "description", ...}``;
  the SDK cannot create one). ``GET /products/{id}`` (404 when missing), ``GET /products``
  (``ids[]`` (a missing id is a 404), ``names[]``, dates, paging, sort), ``DELETE /products/{id}``.
- ``POST /versions/get-or-create`` ``{productId, facts, name?}``: a strict body (any other key
  is a 400). The facts are trimmed (keys and values), empty entries dropped, at least one
  must be left, two keys that trim alike are a 400. The product's live version holding
  equal facts is answered (200, its name unchanged); else the product's next version is
  made (201) with the next ``number`` and ``name`` (or ``v<number>``). A ``name`` another
  live version of the product holds is a 409 with the API's fixed message. An unknown
  product is a 404. Requests run one at a time, so two calls on one state get one version.
- ``POST /versions`` (no facts), ``GET /versions/{id}``, ``GET /versions`` (``ids[]`` (404 if
  missing), ``productIds[]``, ``names[]``, ``parentVersionIds[]``, paging, sort),
  ``PATCH /versions/{id}``, ``DELETE /versions/{id}`` (soft: leaves lists and matching).

Every version made here is also a version sessions may name (``known_versions``).
"""

from __future__ import annotations

import re
from typing import Any

from galtea_local_daemon.emulator.rules import ApiError, ListQuery, bad_request, not_found
from galtea_local_daemon.emulator.state import new_id

NAME_COLLISION = "A Version with the same Name already exists."
PRODUCT_FILTERS = {"ids": "id", "names": "name"}
VERSION_FILTERS = {"ids": "id", "productIds": "productId", "names": "name", "parentVersionIds": "parentVersionId"}
_GET_OR_CREATE_KEYS = frozenset({"productId", "facts", "name"})
_RESERVED = re.compile(r"^v\d+$", re.IGNORECASE)
_VERSION_FIELDS = ("description", "systemPrompt", "modelId", "datasetDescription", "datasetUri", "guardrails",
                   "parentVersionId", "otelOutputSourceRule", "otelInputSourceRule",
                   "conversationEndpointConnectionId", "initializationEndpointConnectionId",
                   "finalizationEndpointConnectionId", "phoneConnectionId", "webRtcConnectionId")


def trimmed_facts(facts: Any) -> dict[str, str]:
    if not isinstance(facts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in facts.items()):
        raise bad_request("facts must be an object of strings to strings")
    kept: dict[str, str] = {}
    for key, value in facts.items():
        key, value = key.strip(), value.strip()
        if key and value:
            if key in kept:
                raise bad_request(f"facts: the key {key} appears more than once once trimmed")
            kept[key] = value
    if not kept:
        raise bad_request("facts must hold at least one non-empty entry")
    return kept


class Catalog:
    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions  # the results store: its known_versions registry and clock
        self.reset()

    def reset(self) -> None:
        self.products: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.get_or_create_calls = 0
        self.versions_made = 0

    def _now(self) -> str:
        return self.sessions._stamp()[1]

    # --- products -------------------------------------------------------------------

    def seed_product(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("name"), str) or not body["name"]:
            raise bad_request("name is required")
        product = {"id": body.get("id") or new_id(), "name": body["name"],
                   "description": body.get("description") or "", "organizationId": "org_emulator",
                   "createdAt": self._now(), "deletedAt": None,
                   **{k: v for k, v in body.items() if k not in ("id", "name", "description")}}
        self.products[product["id"]] = product
        return product

    def product(self, product_id: str) -> dict[str, Any]:
        found = self.products.get(product_id)
        if found is None or found["deletedAt"]:
            raise not_found("Product", product_id)
        return found

    def list_products(self, query: ListQuery) -> list[dict[str, Any]]:
        live = {k: p for k, p in self.products.items() if not p["deletedAt"]}
        self.sessions._require_all_found("Product", query, live)
        return self.sessions._select(live.values(), query, lambda p: p["createdAt"])

    def delete_product(self, product_id: str) -> None:
        self.product(product_id)["deletedAt"] = self._now()

    # --- versions -------------------------------------------------------------------

    def _live_versions(self, product_id: str) -> list[dict[str, Any]]:
        return [v for v in self.versions.values() if v["productId"] == product_id and not v["deletedAt"]]

    def _make_version(self, product_id: str, name: Any, facts: dict[str, str] | None,
                      extra: dict[str, Any]) -> dict[str, Any]:
        number = 1 + sum(1 for v in self.versions.values() if v["productId"] == product_id)
        if name is not None and not isinstance(name, str):
            raise bad_request("name must be a string")
        name = (name or "").strip() or f"v{number}"
        if _RESERVED.match(name) and name.lower() != f"v{number}":
            raise bad_request(f"the name {name} is reserved for a version number")
        if any(v["name"] == name for v in self._live_versions(product_id)):
            raise ApiError(409, NAME_COLLISION)
        version = {"id": new_id(), "name": name, "productId": product_id, "number": number, "facts": facts,
                   **{key: extra.get(key) for key in _VERSION_FIELDS}, "createdAt": self._now(), "deletedAt": None}
        self.versions[version["id"]] = version
        self.versions_made += 1
        if self.sessions.known_versions is not None:
            self.sessions.known_versions.add(version["id"])
        return version

    def get_or_create(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The version and whether it was made now."""
        self.get_or_create_calls += 1
        unknown = sorted(set(body) - _GET_OR_CREATE_KEYS)
        if unknown:
            raise bad_request(f"property {unknown[0]} should not exist")
        product_id = body.get("productId")
        if not isinstance(product_id, str) or not product_id:
            raise bad_request("productId must be a string")
        facts = trimmed_facts(body.get("facts"))
        self.product(product_id)
        for version in self._live_versions(product_id):
            if version["facts"] == facts:
                return version, False
        return self._make_version(product_id, body.get("name"), facts, {}), True

    def create_version(self, body: dict[str, Any]) -> dict[str, Any]:
        product_id = body.get("productId")
        if not isinstance(product_id, str) or not product_id:
            raise bad_request("productId must be a string")
        self.product(product_id)
        return self._make_version(product_id, body.get("name"), None, body)

    def version(self, version_id: str) -> dict[str, Any]:
        found = self.versions.get(version_id)
        if found is None or found["deletedAt"]:
            raise not_found("Version", version_id)
        return found

    def list_versions(self, query: ListQuery) -> list[dict[str, Any]]:
        live = {k: v for k, v in self.versions.items() if not v["deletedAt"]}
        self.sessions._require_all_found("Version", query, live)
        return self.sessions._select(live.values(), query, lambda v: v["createdAt"])

    def update_version(self, version_id: str, body: dict[str, Any]) -> dict[str, Any]:
        version = self.version(version_id)
        if "facts" in body and body["facts"] is not None:
            facts = trimmed_facts(body["facts"])
            if any(v["facts"] == facts and v is not version for v in self._live_versions(version["productId"])):
                raise ApiError(409, "Another version of the product holds these facts.")
            body = {**body, "facts": facts}
        if body.get("name") and any(v["name"] == body["name"] and v is not version
                                    for v in self._live_versions(version["productId"])):
            raise ApiError(409, NAME_COLLISION)
        version.update({k: v for k, v in body.items() if k in (*_VERSION_FIELDS, "name", "facts")})
        return version

    def delete_version(self, version_id: str) -> None:
        self.version(version_id)["deletedAt"] = self._now()

    def snapshot(self) -> dict[str, Any]:
        return {"products": list(self.products.values()), "versions": list(self.versions.values()),
                "versionGetOrCreateCalls": self.get_or_create_calls, "versionsMade": self.versions_made}
