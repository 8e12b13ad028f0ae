"""Poison rows: a queued operation whose request cannot be built is dead-lettered once.

A row that cannot be encoded (stored ``input`` that is not JSON, text that is
not valid Unicode, a NaN, a value nested past the recursion limit: a bundle
from an old or hostile writer, a row edited by hand) would fail the same way
on every pass. Retrying cannot help, so the engine dead-letters it at once,
with the reason naming the column, and logs it once.

The order rule is the one for an operation the API refuses (a 4xx): the
poison operation is dead-lettered and the rest of its session proceeds behind
it; ``galtea-local dead list`` shows it. The operator either fixes it
(``update()`` the record, which folds into its create because it never left,
then ``galtea-local dead retry ID``) or gives up on it (``dead drop ID``).
When the poison is a session created offline, its turns stay held behind the
dead session create, as for any dead session create, and are visible the same way.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from galtea_local.errors import GaltealocalError
from galtea_local.outbox import attempts as ob
from galtea_local.outbox import dead
from galtea_local.store import Store

log = logging.getLogger("galtea_local.sync")

_JSON_COLUMNS = ("input", "actual_output", "metadata_json")
# What a build or an encode raises on bad data (JSONDecodeError and UnicodeError are ValueErrors).
_BAD_DATA = (ValueError, TypeError, KeyError, RecursionError, OverflowError)
_check_encodable = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode

BuildBody = Callable[[dict[str, Any], "ob.Attempt"], dict[str, Any]]


class PoisonRowError(GaltealocalError):
    """The request body for ``attempt`` cannot be built from the stored row; ``reason`` says why."""

    def __init__(self, attempt: ob.Attempt, reason: str) -> None:
        super().__init__(reason)
        self.attempt = attempt
        self.reason = reason


def _culprit(row: dict[str, Any], payload: dict[str, Any] | None) -> str:
    """Name the stored column that does not decode, when one does not."""
    for source in (payload or {}, row):
        for name in _JSON_COLUMNS:
            text = source.get(name)
            if isinstance(text, str):
                try:
                    json.loads(text)
                except _BAD_DATA:
                    return f"{name} is not valid JSON"
    return "a value cannot be sent as JSON (invalid Unicode, NaN or infinity, or nested too deeply)"


def refuse_unencodable(build: BuildBody) -> BuildBody:
    """Wrap a body builder: a row it cannot encode raises :class:`PoisonRowError` instead.

    The body is also encoded the way it will be sent (UTF-8 JSON, no NaN), so a
    row that would fail inside the HTTP client fails here, before the write-ahead mark.
    """

    @functools.wraps(build)
    def build_or_refuse(row: dict[str, Any], attempt: ob.Attempt) -> dict[str, Any]:
        try:
            body = build(row, attempt)
            _check_encodable(body).encode()
        except _BAD_DATA as exc:
            reason = _culprit(row, attempt.payload)
            raise PoisonRowError(attempt, f"cannot be encoded: {reason} ({type(exc).__name__}: {str(exc)[:200]})"
                                 ) from None
        return body

    return build_or_refuse


def dead_letter(store: Store, poison: PoisonRowError, now: float) -> None:
    """Dead-letter the poison operation with its reason; logged once, as it is settled once."""
    attempt = poison.attempt
    message = (f"{poison.reason}; fix the record and run `galtea-local dead retry`, "
               "or give it up with `galtea-local dead drop`")
    store.transaction(dead.settle_unencodable, attempt, now, message)
    target = attempt.record.get("seq")
    log.warning("dead-lettered %s of %s %s: %s", attempt.kind,
                "session" if attempt.kind.startswith("session_") else "record", target, poison.reason)
