"""``sessions.list()`` filters, answered from the local ``sessions`` table.

Each filter takes one value or a list (OR within a filter, AND across
filters), as the official ``sessions.list()`` sends them to the API.
"""

from __future__ import annotations

import builtins
from typing import Any

from galtea_local.errors import InvalidInputError
from galtea_local.outbox import sessions as queue
from galtea_local.store.dialects import NO_LIMIT
from galtea_local.validation import check_ids, show


def _status_values(status: Any) -> builtins.list[str]:
    statuses = [status] if isinstance(status, str) else builtins.list(status or [])
    for position, value in enumerate(statuses):
        if not isinstance(value, str):  # a SessionStatus is a str too
            raise InvalidInputError(f"status[{position}]: expected a session status, got {show(value)}")
    return [str(getattr(value, "value", value)).upper() for value in statuses]


def _in(column: str, values: builtins.list[Any]) -> tuple[str, builtins.list[Any]]:
    return f"{column} IN ({', '.join('?' * len(values))})", values


def list_query(prefix: str, filters: dict[str, Any], since: float | None, until: float | None,
               order: str, offset: int | None, limit: int | None) -> tuple[str, builtins.list[Any]]:
    """SQL and parameters for the sessions matching every filter given."""
    where, params = ["deleted = 0"], []
    for column, name in (("version_id", "version_id"), ("custom_id", "custom_id"), ("test_case_id", "test_case_id")):
        values = check_ids(name, filters.get(name))
        if values:
            clause, more = _in(column, values)
            where.append(clause)
            params += more
    statuses = _status_values(filters.get("status"))
    if statuses:
        # A session created offline is PENDING until a change says otherwise, as upstream.
        clause, more = _in("COALESCE(status, 'PENDING')", statuses)
        where.append(clause)
        params += more
    if check_ids("dataset_id", filters.get("dataset_id")) or check_ids("user_id", filters.get("user_id")):
        # Dataset membership and the launching user are known only upstream; a session created
        # here is a production one with no launcher, which the API never matches either.
        where.append("1 = 0")
    ids = check_ids("id", filters.get("id"))
    if ids:
        marks = ", ".join("?" * len(ids))
        where.append(f"(seq IN ({marks}) OR remote_id IN ({marks}))")
        params += [queue.parse_session_id(prefix, any_id) for any_id in ids] + ids
    for clause, value in (("created_at >= ?", since), ("created_at <= ?", until)):
        if value is not None:
            where.append(clause)
            params.append(value)
    query = f"SELECT * FROM sessions WHERE {' AND '.join(where)} ORDER BY seq {order.upper()} LIMIT ? OFFSET ?"
    return query, [*params, NO_LIMIT if limit is None else limit, offset or 0]
