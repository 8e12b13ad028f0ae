"""``Version`` and ``Product``: the official SDK 5.12's read models, plus ``sync_state`` and ``remote_id``.

Pydantic models with the SDK's fields in the SDK's order, reading and dumping the
API's camelCase JSON. A version known from upstream has ``id == remote_id``; one
that ``versions.get_or_create`` made offline keeps its local id (``ver_<store>_<n>``)
for ever, and learns its ``remote_id``, number and canonical name once the daemon's
push is answered.
"""

from __future__ import annotations

import json
from typing import Any

from galtea_local.read_model import SyncState, _CamelModel, iso_utc


class Version(_CamelModel):
    """A version as the official ``Version``; ``name`` is ``""`` until the API names an unnamed one."""

    name: str
    product_id: str
    dataset_description: str | None = None
    dataset_uri: str | None = None
    description: str | None = None
    guardrails: str | None = None
    system_prompt: str | None = None
    model_id: str | None = None
    parent_version_id: str | None = None
    otel_output_source_rule: dict[str, Any] | None = None
    otel_input_source_rule: dict[str, Any] | None = None
    conversation_endpoint_connection_id: str | None = None
    initialization_endpoint_connection_id: str | None = None
    finalization_endpoint_connection_id: str | None = None
    phone_connection_id: str | None = None
    web_rtc_connection_id: str | None = None
    id: str
    number: int | None = None
    facts: dict[str, str] | None = None
    created_at: str
    deleted_at: str | None = None
    sync_state: str = SyncState.SYNCED.value
    remote_id: str | None = None


class Product(_CamelModel):
    """A product as the official ``Product`` (enum fields as the API's text)."""

    name: str
    description: str
    risk_level: str | None = None
    operator_type: str | None = None
    interaction_mode: str | None = None
    primary_task: str | None = None
    capabilities: str | None = None
    policies: str | None = None
    inabilities: str | None = None
    auto_close_scope: str | None = None
    auto_close_inactivity_minutes: int | None = None
    closed_session_inference_creation_policy: str | None = None
    otel_output_source_rule: dict[str, Any] | None = None
    otel_input_source_rule: dict[str, Any] | None = None
    id: str
    organization_id: str
    created_at: str
    deleted_at: str | None = None
    otel_product_key: list[str] | None = None
    otel_product_key_values: dict[str, str] | None = None
    otel_version_attributes: list[str] | None = None
    sync_state: str = SyncState.SYNCED.value
    remote_id: str | None = None


def version_from_row(row: Any) -> Version:
    """The read model of a ``versions`` row: the API's JSON once known, else what was asked offline."""
    remote = json.loads(row["remote_json"]) if row["remote_json"] else {}
    values: dict[str, Any] = {key: value for key, value in remote.items() if key not in ("syncState", "remoteId")}
    if not remote:
        values.update(name=row["name"] or "", productId=row["product_id"], createdAt=iso_utc(row["created_at"]),
                      facts=json.loads(row["facts_key"]) if row["facts_key"] else None)
    values.update(id=row["local_id"] or row["remote_id"], syncState=row["sync_state"], remoteId=row["remote_id"])
    return Version.model_validate(values)


def product_from_row(row: Any) -> Product:
    return Product.model_validate({**json.loads(row["remote_json"]), "remoteId": row["id"]})
