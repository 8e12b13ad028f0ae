"""The emulator's in-memory store: sessions and inference results.

Everything runs on the server's event loop, so no method awaits and no lock is
needed: each request's read-check-write happens in one step, in arrival order.
That is what makes ``index`` (0-based, per session, in arrival order) and the
non-decreasing ``createdAt`` stamps trustworthy for the tests that rely on them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from galtea_local_daemon.emulator import rules
from galtea_local_daemon.emulator.rules import ApiError, ListQuery, bad_request, not_found

RESULT_FIELDS = ("id", "sessionId", "index", "status", "error", *rules.RESULT_CONTENT, "createdAt", "deletedAt")
RESULT_FIELDS = tuple(dict.fromkeys(RESULT_FIELDS))  # "error" sits in both lists
RESULT_FILTERS = {"ids": "id", "sessionIds": "sessionId"}
SESSION_FILTERS = {
    "ids": "id",
    "versionIds": "versionId",
    "productIds": "productId",
    "customIds": "customId",
    "testCaseIds": "testCaseId",
    "testIds": "testId",
    "statuses": "status",
    "userIds": "userId",
}
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    """A cuid-like id: ``c`` and 24 lower-case base-36 characters, random enough never to collide."""
    return "c" + "".join(_ALPHABET[b % 36] for b in os.urandom(24))


def wrap_input(value: Any) -> Any:
    """The API stores a plain-string input as ``{"user_message": ...}``."""
    return {"user_message": value} if isinstance(value, str) else value


def wrap_context(value: Any) -> Any:
    """The API stores a plain-string session context as ``{"value": ...}`` (the SDK unwraps it on reads)."""
    return {"value": value} if isinstance(value, str) else value


# Accepted on create, never returned on reads: the real API turns retrievalContext into a
# RETRIEVER span and its read model (the SDK's Trace) has no such field. The dump keeps it.
WRITE_ONLY_RESULT_FIELDS = frozenset({"retrievalContext"})


def as_read(record: dict[str, Any]) -> dict[str, Any]:
    """A stored inference result as the API answers it: without its write-only fields."""
    return {key: value for key, value in record.items() if key not in WRITE_ONLY_RESULT_FIELDS}


class Store:
    """Sessions and inference results, with the API's rules for creating, changing and listing them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # None: any version id is accepted. A set: only those (a registry, for unknown-version tests).
        self.known_versions: set[str] | None = None
        self.clock = clock  # the server's clock: createdAt stamps and date filters are in its time
        self.reset()

    def reset(self) -> None:
        """Forget everything stored."""
        self.sessions: dict[str, dict[str, Any]] = {}
        self.deleted_sessions: dict[str, dict[str, Any]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        # Live result ids by session, in arrival order: a list by session reads its own records,
        # as the real API's index does, not every record stored (which made reconciliation's
        # lists slow the whole emulator down as a benchmark's store grew).
        self._by_session: dict[str, dict[str, None]] = {}
        self.deleted_results: dict[str, dict[str, Any]] = {}
        self.creates_per_session: Counter[str] = Counter()
        self._by_custom_id: dict[tuple[str, str, str], str] = {}
        self._next_index: Counter[str] = Counter()
        self._seq: dict[str, int] = {}
        # Record id -> server time it arrived: createdAt can be PATCHed (the SDK's TraceUpdate), so
        # tests that need the arrival order read it here. Dump only, never served.
        self.arrived: dict[str, float] = {}
        self._last_stamp = 0.0

    def _stamp(self) -> tuple[float, str]:
        # Never step back, even if the wall clock does: creation order and createdAt order agree.
        now = max(self.clock(), self._last_stamp)
        self._last_stamp = now
        return now, rules.format_timestamp(now)

    # --- sessions -------------------------------------------------------------------

    @staticmethod
    def _anchor_key(version_id: str | None, product_id: str | None, custom_id: str) -> tuple[str, str, str]:
        # versionId wins over productId, as in the API; custom ids are unique per anchor.
        return ("version", version_id, custom_id) if version_id else ("product", product_id or "", custom_id)

    def create_session(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /sessions``: needs ``versionId`` or ``productId``; a ``customId`` must be new on that anchor."""
        rules.check_fields(body, rules.SESSION_CREATE)
        version_id, product_id = body.get("versionId"), body.get("productId")
        if not version_id and not product_id:
            raise bad_request("either versionId or productId must be provided")
        if version_id:
            product_id = None
            if self.known_versions is not None and version_id not in self.known_versions:
                raise bad_request(f"version {version_id} does not exist")
        status = rules.check_status(body.get("status") or "PENDING", rules.SESSION_STATUSES)
        custom_id = body.get("customId")
        key = self._anchor_key(version_id, product_id, custom_id) if custom_id else None
        if key and key in self._by_custom_id:
            raise bad_request(f"a session with customId {custom_id} already exists")
        is_production = body.get("isProduction")
        session = {
            "id": new_id(), "versionId": version_id, "productId": product_id, "customId": custom_id,
            "testCaseId": body.get("testCaseId"), "testId": None, "context": wrap_context(body.get("context")),
            "metadata": body.get("metadata"), "status": status, "runId": body.get("runId"),
            "isProduction": is_production if is_production is not None else body.get("testCaseId") is None,
            "stoppingReason": None, "error": None, "userId": None, "isSeed": False, "recordingUri": None,
            "createdAt": self._stamp()[1], "deletedAt": None,
        }  # fmt: skip
        self.sessions[session["id"]] = session
        if key:
            self._by_custom_id[key] = session["id"]
        return session

    def get_session(self, session_id: str) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        if session is None:
            raise not_found("Session", session_id)
        return session

    def update_session(self, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``PATCH /sessions/{id}``: applies only the given fields."""
        session = self.get_session(session_id)
        rules.check_fields(body, rules.SESSION_PATCH)
        if "status" in body:
            rules.check_status(body["status"], rules.SESSION_STATUSES)
        if "customId" in body and body["customId"] != session["customId"]:
            self._rekey_session(session, body["customId"])
        _normalize_created_at(body)
        if "context" in body:
            body["context"] = wrap_context(body["context"])
        session.update(body)
        return session

    def _rekey_session(self, session: dict[str, Any], custom_id: str | None) -> None:
        anchor = (session["versionId"], session["productId"])
        new_key = self._anchor_key(*anchor, custom_id) if custom_id else None
        if new_key and new_key in self._by_custom_id:
            raise bad_request(f"a session with customId {custom_id} already exists")
        if session["customId"]:
            self._by_custom_id.pop(self._anchor_key(*anchor, session["customId"]), None)
        if new_key:
            self._by_custom_id[new_key] = session["id"]

    def finish_session(self, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``PATCH /sessions/{id}/finish``: needs a non-empty ``stoppingReason`` or an ``error``."""
        session = self.get_session(session_id)
        reason, error = body.get("stoppingReason"), body.get("error")
        if not (isinstance(reason, str) and reason.strip()) and not error:
            raise bad_request("stoppingReason must be a non-empty string")
        session.update(status="COMPLETED", stoppingReason=reason, error=error or session["error"])
        return session

    def delete_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise not_found("Session", session_id)
        if session["customId"]:
            self._by_custom_id.pop(self._anchor_key(session["versionId"], session["productId"], session["customId"]))
        session["deletedAt"] = self._stamp()[1]
        self.deleted_sessions[session_id] = session

    def list_sessions(self, query: ListQuery) -> list[dict[str, Any]]:
        """``GET /sessions``: unknown ``ids[]`` are a 404, like the API's entity lookup."""
        self._require_all_found("Session", query, self.sessions)
        return self._select(self.sessions.values(), query, lambda s: (s["createdAt"], 0))

    # --- inference results ----------------------------------------------------------

    def _resolve_session(self, body: dict[str, Any]) -> str:
        session_id, custom_id = body.get("sessionId"), body.get("sessionCustomId")
        if (session_id is None) == (custom_id is None):
            raise bad_request("provide exactly one of sessionId or sessionCustomId")
        if session_id is not None:
            if session_id not in self.sessions:
                raise bad_request(f"session {session_id} does not exist")
            return session_id
        version_id, product_id = body.get("versionId"), body.get("productId")
        if not version_id and not product_id:
            raise bad_request("versionId or productId is required with sessionCustomId")
        found = self._by_custom_id.get(self._anchor_key(version_id, product_id, custom_id))
        if found is None:
            raise bad_request(f"no session with customId {custom_id}; create it through the sessions API first")
        return found

    def _new_result(self, session_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        now, created_at = self._stamp()
        record = dict.fromkeys(RESULT_FIELDS)
        record.update(fields, id=new_id(), sessionId=session_id, createdAt=created_at)
        self.arrived[record["id"]] = now
        record["input"] = wrap_input(record["input"])
        record["index"] = self._next_index[session_id]
        self._next_index[session_id] += 1
        self._seq[record["id"]] = len(self._seq)
        self.results[record["id"]] = record
        self._by_session.setdefault(session_id, {})[record["id"]] = None
        self.creates_per_session[session_id] += 1
        return record

    def create_result(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /inferenceResults``: the stored record, with ``id``, ``index`` and ``createdAt``."""
        rules.check_fields(body, {**rules.RESULT_CONTENT, **rules.RESULT_IDENTITY, "status": rules.TEXT})
        status = rules.check_status(body.get("status", "GENERATED"), rules.RESULT_STATUSES)
        session_id = self._resolve_session(body)
        content = {name: body[name] for name in rules.RESULT_CONTENT if name in body}
        return self._new_result(session_id, {**content, "status": status})

    def create_batch(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``POST /inferenceResults/batch``: each user turn and the assistant turn after it make one record."""
        turns = body.get("conversationTurns")
        if not isinstance(turns, list) or not turns:
            raise bad_request("conversationTurns must be a non-empty array")
        allowed = {**rules.RESULT_IDENTITY, "conversationTurns": (lambda v: True, ""),
                   "conversationSimulatorVersion": rules.TEXT}  # fmt: skip
        rules.check_fields(body, allowed)
        session_id = self._resolve_session(body)
        common = {"status": "GENERATED", "conversationSimulatorVersion": body.get("conversationSimulatorVersion")}
        return [self._new_result(session_id, {**pair, **common}) for pair in _pair_turns(turns)]

    def get_result(self, result_id: str) -> dict[str, Any]:
        record = self.results.get(result_id)
        if record is None:
            raise not_found("Inference result", result_id)
        return record

    def update_result(self, result_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``PATCH /inferenceResults/{id}``: only the given fields change; ``null`` clears one."""
        record = self.get_result(result_id)
        rules.check_fields(body, {**rules.RESULT_CONTENT, **rules.RESULT_PATCH_EXTRA, "status": rules.TEXT})
        if "status" in body:
            rules.check_status(body["status"], rules.RESULT_STATUSES)
        if body.get("sessionId") is not None and body["sessionId"] not in self.sessions:
            raise bad_request(f"session {body['sessionId']} does not exist")
        _normalize_created_at(body)
        for required in ("sessionId", "index"):
            if required in body and body[required] is None:
                raise bad_request(f"{required} cannot be null")
        if "input" in body:
            body["input"] = wrap_input(body["input"])
        if body.get("sessionId") not in (None, record["sessionId"]):
            self._by_session[record["sessionId"]].pop(result_id, None)
            self._by_session.setdefault(body["sessionId"], {})[result_id] = None
        record.update(body)
        return record

    def delete_result(self, result_id: str) -> None:
        record = self.results.pop(result_id, None)
        if record is None:
            raise not_found("Inference result", result_id)
        self._by_session[record["sessionId"]].pop(result_id, None)
        record["deletedAt"] = self._stamp()[1]
        self.deleted_results[result_id] = record

    def list_results(self, query: ListQuery) -> list[dict[str, Any]]:
        """``GET /inferenceResults``: filtered, sorted by ``createdAt`` (ties in arrival order), paged."""
        self._require_all_found("Inference result", query, self.results)
        records: Iterable[dict[str, Any]] = self.results.values()
        if "sessionId" in query.filters:
            ids = (i for session in query.filters["sessionId"] for i in self._by_session.get(session, ()))
            records = [self.results[i] for i in ids]
        return self._select(records, query, lambda r: (r["createdAt"], self._seq[r["id"]]))

    # --- shared ---------------------------------------------------------------------

    @staticmethod
    def _require_all_found(entity: str, query: ListQuery, live: dict[str, Any]) -> None:
        missing = sorted(query.filters.get("id", frozenset()) - live.keys())
        if missing:
            raise ApiError(404, f"{entity} with id {', '.join(missing)} not found")

    @staticmethod
    def _select(records: Iterable[dict[str, Any]], query: ListQuery, order: Any) -> list[dict[str, Any]]:
        chosen = [r for r in records if all(r.get(field) in values for field, values in query.filters.items())]
        if query.from_ts is not None or query.to_ts is not None:
            low = query.from_ts if query.from_ts is not None else float("-inf")
            high = query.to_ts if query.to_ts is not None else float("inf")
            chosen = [r for r in chosen if low <= rules.parse_timestamp("createdAt", r["createdAt"]) <= high]
        chosen.sort(key=order, reverse=query.descending)
        end = None if query.limit is None else query.offset + query.limit
        return chosen[query.offset : end]

    def snapshot(self) -> dict[str, Any]:
        """Everything stored, live and deleted, in creation order."""
        return {
            "sessions": list(self.sessions.values()),
            "deletedSessions": list(self.deleted_sessions.values()),
            "inferenceResults": list(self.results.values()),
            "deletedInferenceResults": list(self.deleted_results.values()),
            "createsPerSession": dict(self.creates_per_session),
            "arrivedAt": dict(self.arrived),
        }


def _normalize_created_at(body: dict[str, Any]) -> None:
    """A PATCHed ``createdAt`` is stored in the API's own format; it cannot be cleared."""
    if "createdAt" not in body:
        return
    if body["createdAt"] is None:
        raise bad_request("createdAt cannot be null")
    body["createdAt"] = rules.format_timestamp(rules.parse_timestamp("createdAt", body["createdAt"]))


def _pair_turns(turns: list[Any]) -> list[dict[str, Any]]:
    """Fold ``[{role, content, retrieval_context?}, ...]`` into one record per user turn and its answer."""
    pairs: list[dict[str, Any]] = []
    open_pair: dict[str, Any] | None = None
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            raise bad_request("each conversation turn needs role 'user' or 'assistant'")
        if not isinstance(turn.get("content"), str):
            raise bad_request("each conversation turn needs a string content")
        if turn["role"] == "user":
            open_pair = {"input": turn["content"]}
            pairs.append(open_pair)
            continue
        if open_pair is None or "actualOutput" in open_pair:
            open_pair = {}
            pairs.append(open_pair)
        open_pair["actualOutput"] = turn["content"]
        if turn.get("retrieval_context") is not None:
            open_pair["retrievalContext"] = turn["retrieval_context"]
    return pairs
