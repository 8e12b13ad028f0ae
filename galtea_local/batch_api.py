"""``create_batch()``: a conversation logged in one call, sent upstream as one batch request.

The local records are the ones the API will make from the turns, paired the way
the API pairs them: a user turn opens a record, the assistant turn after it
fills its output; an assistant turn with no open user turn (an assistant-first
conversation) makes a record with no input. The request body is the SDK's, so
the server sees exactly what the official client would have sent.
"""

from __future__ import annotations

from typing import Any

from galtea_local.errors import InvalidInputError

_TURN_KEYS = frozenset({"role", "content", "retrieval_context"})


def _check_turn(position: int, turn: Any) -> None:
    if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
        raise InvalidInputError(
            f"conversation_turns[{position}]: expected a dict with role 'user' or 'assistant' and 'content'"
        )
    if not isinstance(turn.get("content"), str):
        raise InvalidInputError(f"conversation_turns[{position}].content: expected a str, as the API requires")
    extra = set(turn) - _TURN_KEYS
    if extra or not isinstance(turn.get("retrieval_context", ""), (str, type(None))):
        raise InvalidInputError(
            f"conversation_turns[{position}]: only 'role', 'content' and a str 'retrieval_context' are sent"
        )


def pair_turns(turns: Any) -> list[dict[str, Any]]:
    """[{role, content, retrieval_context?}, ...] → the create() arguments of each record the API makes."""
    if not turns or not isinstance(turns, list):
        raise InvalidInputError("conversation_turns: pass a non-empty list of {'role', 'content'} dicts")
    pairs: list[dict[str, Any]] = []
    for position, turn in enumerate(turns):
        _check_turn(position, turn)
        if turn["role"] == "user":
            pairs.append({"input": turn["content"]})
            continue
        if not pairs or "output" in pairs[-1]:
            pairs.append({})  # assistant first, or two assistant turns in a row: a record of its own
        pairs[-1].update(output=turn["content"], retrieval_context=turn.get("retrieval_context"))
    return pairs


def wire_body(turns: list[dict[str, Any]], session_id: str | None, session_custom_id: str | None,
              version_id: str | None, product_id: str | None, simulator_version: str | None) -> dict[str, Any]:
    """The body the SDK sends: ``sessionId`` and ``conversationSimulatorVersion`` always present (null or not).

    A local session id is left out (null): the daemon names the session by its
    remote id once the session exists upstream.
    """
    body: dict[str, Any] = {
        "conversationTurns": turns,
        "sessionId": None if session_id is not None and session_id.startswith("ses_") else session_id,
        "conversationSimulatorVersion": simulator_version,
    }
    if session_custom_id is not None:
        body["sessionCustomId"] = session_custom_id
        del body["sessionId"]
    if version_id is not None:
        body["versionId"] = version_id
    elif product_id is not None:
        body["productId"] = product_id
    return body
