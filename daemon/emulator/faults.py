"""Fault settings, the seeded draw that picks a fault per request, and the counters tests read.

One ``random.Random(seed)`` draws one number per API request, in arrival order,
so a given seed and request sequence always misbehave the same way. The rates
split [0, 1): ``fail`` first, then ``throttle``, ``ambiguous``, ``late`` and
``applied_error``; their sum must not exceed 1. The last three apply only to
writes (POST/PATCH/DELETE): a read that draws one is served normally.

Besides the drawn faults, some settings model how the real API and the proxies
in front of it behave on every request: ``page_cap`` (a list ``limit`` silently
capped), ``clock_offset_s`` (the server's clock, in its ``Date`` header and its
``createdAt`` stamps, runs that far from ours) and ``echo_write_only`` (off, as
the real API: ``retrievalContext`` is accepted on create and never read back).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

FAIL = "fail"
THROTTLE = "throttle"
AMBIGUOUS = "ambiguous"
RATE_LIMIT = "rate_limit"  # the token bucket was empty: answered 429 (see FaultConfig.rate_limit_rps)
LATE = "late"  # a write held inside the server, applied (and answered) only after ``late_commit_s``
APPLIED_ERROR = "applied_error"  # a write applied, then answered 502/503/504 by a proxy
GATEWAY_STATUSES = frozenset({500, 502, 503, 504})
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_DRAWN = (FAIL, THROTTLE, AMBIGUOUS, LATE, APPLIED_ERROR)
_ANY_METHOD = frozenset({FAIL, THROTTLE})  # the others only make sense for a write
LOG_LIMIT = 100_000  # enough for any test; bounded so a long benchmark cannot exhaust memory


@dataclass(frozen=True)
class FaultConfig:
    """How the emulator misbehaves, and which key it accepts.

    ``api_key=None`` accepts any non-empty Bearer key. ``retry_after_http_date``
    sends ``Retry-After`` as an HTTP date instead of seconds. ``page_cap`` 0 means
    no cap. ``applied_error_status`` is the status a proxy answers after the API applied a write.

    ``rate_limit_rps`` (0: off) is a token bucket per API key, as real rate
    limiters are: it refills at that many requests per second and holds up to
    ``rate_limit_burst`` (0: one second's worth). A request that finds it empty
    is answered 429 at once with ``Retry-After`` (whole seconds, at least 1).
    """

    fail_rate: float = 0.0
    throttle_rate: float = 0.0
    ambiguous_rate: float = 0.0
    latency_ms: float = 0.0
    retry_after_s: int = 1
    retry_after_http_date: bool = False
    api_key: str | None = None
    rate_limit_rps: float = 0.0
    rate_limit_burst: float = 0.0
    late_rate: float = 0.0
    late_commit_s: float = 0.0
    applied_error_rate: float = 0.0
    applied_error_status: int = 503
    page_cap: int = 0
    clock_offset_s: float = 0.0
    echo_write_only: bool = False

    def __post_init__(self) -> None:
        rates = self.rates()
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("fault rates must be between 0 and 1")
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError("the fault rates (fail, throttle, ambiguous, late, applied_error) must not exceed 1 together")
        if self.latency_ms < 0 or self.retry_after_s < 0 or self.late_commit_s < 0 or self.page_cap < 0:
            raise ValueError("latency_ms, retry_after_s, late_commit_s and page_cap must not be negative")
        if self.applied_error_status not in GATEWAY_STATUSES:
            raise ValueError(f"applied_error_status must be one of {sorted(GATEWAY_STATUSES)}")
        if self.rate_limit_rps < 0 or self.rate_limit_burst < 0:
            raise ValueError("rate_limit_rps and rate_limit_burst must not be negative")

    @property
    def burst(self) -> float:
        return self.rate_limit_burst or max(1.0, self.rate_limit_rps)

    def rates(self) -> tuple[float, ...]:
        """The drawn fault rates, in the order they split [0, 1)."""
        return (self.fail_rate, self.throttle_rate, self.ambiguous_rate, self.late_rate, self.applied_error_rate)

    def changed(self, changes: dict[str, Any]) -> FaultConfig:
        """A copy with ``changes`` applied; unknown names or bad values raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FaultInjector:
    """Draws the fault for each API request and counts what happened.

    Counters: ``faults`` (per fault name), ``requests`` (per ``METHOD /route``),
    ``in_flight``/``max_in_flight`` and a bounded request ``log`` whose entries
    are ``{"t", "method", "path", "route", "fault", "status"}`` (``t`` is POSIX
    seconds at arrival; ``status`` is what was or would have been answered).
    """

    def __init__(self, config: FaultConfig | None = None, seed: int | None = None) -> None:
        self.config = config or FaultConfig()
        self.seed = seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Zero every counter and restart the random sequence (from ``seed`` if given)."""
        if seed is not None:
            self.seed = seed
        self._rng = random.Random(self.seed)
        self.faults: Counter[str] = Counter(dict.fromkeys(_DRAWN, 0))  # + RATE_LIMIT once one happens
        self._buckets: dict[str | None, tuple[float, float]] = {}  # API key -> (tokens, when counted)
        self._throttle_left = 0
        self.requests: Counter[str] = Counter()
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.in_flight = 0
        self.max_in_flight = 0

    def reseed(self, seed: int | None) -> None:
        """Restart the random sequence from ``seed``; the counters are kept."""
        self.seed = seed
        self._rng = random.Random(seed)

    def throttle_next(self, count: int) -> None:
        """Answer exactly the next ``count`` API requests 429, whatever the rates (a deterministic 429)."""
        self._throttle_left = count

    def draw(self, method: str) -> str | None:
        """The fault for this request, or ``None`` to serve it normally."""
        if self._throttle_left > 0:
            self._throttle_left -= 1
            return THROTTLE
        rates = self.config.rates()
        if not any(rates):
            return None
        roll, bound = self._rng.random(), 0.0
        for name, rate in zip(_DRAWN, rates):
            bound += rate
            if roll < bound:
                return name if name in _ANY_METHOD or method in WRITE_METHODS else None
        return None

    def rate_limited(self, key: str | None, now: float | None = None) -> float | None:
        """Take a token from ``key``'s bucket: None if there was one, else seconds until the next."""
        cfg = self.config
        if not cfg.rate_limit_rps:
            return None
        now = time.monotonic() if now is None else now
        tokens, then = self._buckets.get(key, (cfg.burst, now))
        tokens = min(cfg.burst, tokens + (now - then) * cfg.rate_limit_rps)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / cfg.rate_limit_rps

    def begin(self, method: str, path: str, route: str) -> dict[str, Any]:
        """Count a request in; the returned log entry is completed by :meth:`end`."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.requests[f"{method} {route}"] += 1
        entry = {"t": time.time(), "method": method, "path": path, "route": route, "fault": None, "status": None}
        self.log.append(entry)
        return entry

    def end(self, entry: dict[str, Any]) -> None:
        self.in_flight -= 1
        if entry["fault"]:
            self.faults[entry["fault"]] += 1

    def snapshot(self, with_log: bool = True) -> dict[str, Any]:
        """The counters as JSON-ready values."""
        out: dict[str, Any] = {
            "config": self.config.as_dict(),
            "seed": self.seed,
            "faults": dict(self.faults),
            "requests": dict(self.requests),
            "inFlight": self.in_flight,
            "maxInFlight": self.max_in_flight,
        }
        if with_log:
            out["log"] = list(self.log)
        return out
