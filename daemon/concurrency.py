"""Adaptive concurrency: find the request rate the API allows and hold it.

The engine used to stop every session for the Retry-After of any 429. Under a
real rate limiter (a token bucket per key) a client that does that spends most
of its time idle: one soak saw the daemon idle 785 s of 899 s at a 2% rate of
429s. Here a 429 slows the sending rate instead, and only the request it
answered waits out its Retry-After.

:class:`AdaptiveLimit` paces request starts at a rate it adapts, and caps the
requests in flight at ``rate x srtt`` (Little's law, with headroom) and at
``sync.concurrency``. The control law:

- **Slow start.** The rate starts at 20/s and doubles every round trip until 429s
  make 5% of the answers (``SLOW_START_EXIT``), or latency rises.
- **Decrease** on a 429 (or the smoothed latency passing ``LATENCY_TOLERANCE``
  times the lowest seen, a queue building up in front of the API). The new
  rate is ``BETA`` x the least of the old one and what the API accepted (goodput:
  answers other than 429 over the last second), and at least half the old one.
  Leaving slow start, the overshoot can be many times the allowed rate and the
  last second's goodput holds a token bucket's burst: the rate is cut to half
  the least of the two, and probed up from there. A 429 answering a request
  sent before the decrease is not counted again.
- **Increase** (CUBIC's window curve, with a plateau): back to just under the
  rate before the decrease (``HOLD_SHARE``) along a concave curve over
  ``RECOVERY_S``, held there for ``HOLD_S`` (each probe above a token bucket's
  rate costs 429s: rare probes keep them under 1%; the hold doubles, up to
  ``HOLD_MAX_S``, while each probe finds the limit where the last one did), then beyond the old rate
  linearly (``PROBE_SLOPE``: a bucket's burst hides its limit until the probe
  has overdrawn it, so the probe must be only a little above the limit when the
  429s start), accelerating after ``PROBE_LINEAR_S``, so a raised rate limit is
  still found (within about a minute).
- **Sporadic vs systematic.** While clearly below the rate that drew the last
  429s, the API has no reason to refuse us: the share of 429s seen there is a
  *background* of sporadic ones. Above it, a 429 decreases only when the share
  since the last decrease passes ``BACKGROUND_MARGIN`` x that background (plus
  a little); many 429s at once (``SYSTEMATIC_*``) decrease at any time. Under a
  real limiter the background is about 0 and every 429 above the old rate counts.
  Without this, no fixed law serves both cases: at a rate ``r`` the decrease per
  round trip from 2% sporadic 429s grows like ``r²``, while any increase small
  enough to keep a real limiter's 429s under 1% is far smaller.

Retry-After (:class:`ThrottleGate`): the request that got it is not retried
before it passes (the engine stores it as the operation's ``not_before``). All
sending pauses for it only when it clearly applies to everything: a run of
429s and no other answer for a whole second (a limiter lets its rate through;
only an API that refuses everything answers nothing but 429s). A pause
is capped at ``sync.max_retry_after_s``, shown in ``status``, and an operator
can end it (``galtea-local throttle clear``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from galtea_local.errors import NotSentError, RetryLaterError, UpstreamError

BETA = 0.9  # a decrease keeps at most this share of the rate
SLOW_START_CUT = 0.5  # leaving slow start keeps this share of the least of the rate and the goodput
RATE_FLOOR = 1.0  # requests/s: never slower, so a refusing API is still probed
HEADROOM = 1.5  # in-flight cap = rate x srtt x this (+1): the pacing binds, not the cap
RECOVERY_S = 2.0  # time to climb back to the rate before a decrease; only systematic 429s cut it short
# Then hold just under that rate this long before probing above it: under a token bucket each
# probe above the limit costs a few 429s, so probes must be rare to keep 429s under 1%
# (probing at once after each recovery gave 4-6%). Below BACKGROUND_BELOW: the hold counts
# toward the background of sporadic 429s, which a real limiter does not send at this rate.
HOLD_SHARE = 0.93
HOLD_S = 8.0
# Each probe that finds the limit where the last one did (within STABLE_LIMIT) doubles the hold,
# up to HOLD_MAX_S: a limit that does not move needs few probes, and each costs 429s (1.3% of all
# requests against a bucket with the hold fixed at 8 s). A limit found elsewhere starts over at HOLD_S.
HOLD_MAX_S = 32.0
STABLE_LIMIT = 0.1
LEVEL_MIN_429 = 3  # 429s since the climb ended before their share is judged (one early 429 is no share)
SYSTEMATIC_SHARE = 0.05  # more 429s than background + this share of the answers since the last decrease...
SYSTEMATIC_MIN = 5  # ... and at least this many (a few early 429s are no share): decrease at once
BACKGROUND_MARGIN = 1.5  # after the hold-off, decrease when the 429 share passes 1.5 x the background...
BACKGROUND_SLACK = 0.002  # ... plus this
BACKGROUND_MIN_ANSWERS = 50  # fewer answers seen while recovering say nothing about the background
BACKGROUND_MAX = 0.05  # more than this is not taken for background, whatever a recovery saw
BACKGROUND_BELOW = 0.95  # answers count toward the background only below this share of the old rate
BACKGROUND_DECAY = 0.998  # per answer counted: the background follows the last ~500 of them
MIN_RTT_WINDOW_S = 10.0  # the lowest round trip is forgotten after this: a slower API is not a queue forever
LATENCY_TOLERANCE = 4.0
LATENCY_SLACK_S = 0.25  # plus this: a starved CPU here (GIL, a busy box) is not a queue at the API
SLOW_START_EXIT = (10, 0.05)  # leave slow start at this many 429s making this share: a limit, not sporadic ones
# Past the hold the probe grows linearly by PROBE_SLOPE of the old rate per second: a token bucket's
# burst hides its limit until the probe has overdrawn it, so a fast probe is far above the limit
# when the 429s start (a cubic one reached 1.7x, and each probe cost dozens of 429s). After
# PROBE_LINEAR_S it accelerates (+PROBE_GROWTH of the old rate RECOVERY_S later, x8 after twice
# that), so a limit raised far above the old rate is still found.
PROBE_SLOPE = 0.02
PROBE_LINEAR_S = 10.0
PROBE_GROWTH = 0.03
GOODPUT_WINDOW_S = 1.0
APP_LIMITED = 2.0  # the rate grows to at most this many times what was actually sent over the last second
# ... and after slow start, to at most this many: a rate grown far past what the lanes could send
# (each waiting out a Retry-After) let a burst through the bucket when they caught up.
APP_LIMITED_AFTER = 1.25
INITIAL_RTT_S = 0.05
BURST = 2.0  # requests a late thread may start back to back (pacing credit)
WAIT_POLL_S = 0.05  # a waiting request looks again at least this often (a stop, a higher rate)

OK, THROTTLED, FAILED = "ok", "throttled", "failed"


class AdaptiveLimit:
    """The request rate and the requests in flight, moved by the answers (thread-safe).

    The law runs on the rate (requests/s, paced), and the in-flight cap follows it
    (``rate x srtt``, Little's law): a rate limiter counts requests per second, so a
    rate is what can be held just under it, where a whole number of requests in
    flight cannot (at 100/s and 30 ms, 3 in flight is 100/s and 4 is 133/s), and
    it does not swing with the round trip's noise on a busy box.
    """

    def __init__(self, max_limit: int, *, side_slots: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        # The lanes may have ``max_limit`` requests in flight; the side path (createdAt stamps,
        # sent beside each lane's next create) up to ``side_slots`` more. The law paces them all.
        self.max_limit = max_limit + side_slots
        self.lane_limit = max_limit
        self.lanes_in_flight = 0
        self.clock = clock
        # One lock; the lanes and the side path wait on their own conditions, and each event wakes
        # one waiter of each (a slot freed or taken, see _wake). Waking every waiter on every
        # answer cost each of 32 threads the lock and the GIL to find no slot: under a token
        # bucket, a third of the daemon's CPU (docs/benchmarks-soak.md §10).
        lock = threading.RLock()
        self._cond, self._side_cond = threading.Condition(lock), threading.Condition(lock)
        self.rate = 1 / INITIAL_RTT_S
        self.in_flight = 0
        self.slow_start = True
        self.srtt: float | None = None
        self.min_rtt: float | None = None
        self._min_rtt_since = -math.inf
        self._w_max = self.rate  # the rate the API accepted just before the last decrease
        self._r0 = self.rate  # the rate just after it
        self._decreased_at = -math.inf
        self._since_decrease = [0, 0]  # answers, 429s since the last decrease
        self._at_level = [0, 0]  # answers, 429s since the climb back ended (the hold, then the probe)
        self._next_start = -math.inf
        self._pacer: object | None = None  # the one waiter timing its sleep to the pacing gap
        self._goodput: deque[float] = deque()  # when answers other than 429 came, over the last second
        self._sent: deque[float] = deque()  # when any answer came (429s too): what we actually sent
        self._run_of_429 = 0
        self._recovery = [0.0, 0.0]  # answers, 429s while climbing back after clean decreases (decayed)
        self._recovery_valid = False  # the last decrease was a clean one (see _note_recovery)
        self.hold_s = HOLD_S
        self.decreases = 0

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        rtt = self.srtt or INITIAL_RTT_S
        return max(1, min(self.max_limit, math.ceil(self.rate * rtt * HEADROOM) + 1))

    # -- admission ------------------------------------------------------------

    def acquire(self, stop: threading.Event | None = None, *, side: bool = False) -> None:
        """Wait for a slot in flight and the pacing gap; :class:`NotSentError` on a stop request
        (the request never leaves: a stopping daemon must not flush its queue unpaced).

        One waiter at a time (the pacer) sleeps until the next pacing gap ends; the others wait
        to be woken. Every waiter timing its own sleep to the same gap woke all of them at
        each gap, to find one slot: under a token bucket, 16 stamp threads used a third of a
        core that way (docs/benchmarks-soak.md §10).
        """
        me = object()
        with self._cond:
            try:
                self._wait_for_slot(me, stop, side)
            finally:
                if self._pacer is me:
                    self._pacer = None
            self.in_flight += 1
            if not side:
                self.lanes_in_flight += 1
            gap = 1 / self.rate
            self._next_start = max(self.clock() - BURST * gap, self._next_start) + gap
            self._wake()  # the next waiters: another slot may be free, and the next pacing gap is theirs

    def _wait_for_slot(self, me: object, stop: threading.Event | None, side: bool) -> None:
        waiting = self._side_cond if side else self._cond
        while True:
            if stop is not None and stop.is_set():
                raise NotSentError("not sent: the daemon is stopping")
            full = self.in_flight >= self.limit or (not side and self.lanes_in_flight >= self.lane_limit)
            wait = WAIT_POLL_S if full else self._next_start - self.clock()
            if wait <= 0:
                return
            if full and self._pacer is me:  # no slot for us after all: another kind may pace
                self._pacer = None
                self._wake()
            elif not full and self._pacer in (None, me):
                self._pacer = me
            elif not full:
                wait = WAIT_POLL_S  # another waiter has this gap; it wakes the next when it goes
            waiting.wait(min(wait, WAIT_POLL_S))  # a freed slot wakes it sooner

    def release(self, started: float, outcome: str, *, side: bool = False) -> None:
        """One answer: ``OK`` (any answer but a 429), ``THROTTLED`` (a 429), ``FAILED`` (no answer)."""
        self.note(started, outcome)
        self.free(side=side)

    def note(self, started: float, outcome: str) -> None:
        """Count an answer without freeing its slot yet (see :class:`LimitedClient`)."""
        with self._cond:
            now = self.clock()
            if outcome == OK:
                self._on_answer(now, now - started)
            elif outcome == THROTTLED:
                self._on_throttled(now, started)

    def free(self, *, side: bool = False) -> None:
        with self._cond:
            self.in_flight -= 1
            if not side:
                self.lanes_in_flight -= 1
            self._wake()

    def _wake(self) -> None:
        """Wake one waiting lane and one waiting side request (the lock is held). One that finds no
        slot waits again, and each that takes one wakes the next: the slots fill one after another,
        where every answer used to wake every waiter."""
        self._cond.notify()
        self._side_cond.notify()

    # -- the control law ------------------------------------------------------------

    def _note_recovery(self, now: float, throttled: bool) -> None:
        """Count answers while climbing back below the rate that drew the last 429s.

        Down there the API has no reason to refuse us, so the 429s that still come are
        a background (sporadic 429s), not our rate: they raise the bar for a decrease.
        Under a real limiter this share is about 0 and every 429 counts. Only after a
        clean decrease (made once back at the hold or probing beyond it): a cut on
        leaving slow start, on systematic 429s or on latency may leave us above the limit.
        """
        # Clearly below: within a few percent of the old rate, a limiter's bucket can still be dry.
        if self._recovery_valid and self.rate <= BACKGROUND_BELOW * self._w_max:
            answers, refused = self._recovery
            self._recovery = [answers * BACKGROUND_DECAY + 1, refused * BACKGROUND_DECAY + int(throttled)]

    @property
    def background(self) -> float:
        """The share of 429s that come whatever our rate (0 until enough answers were seen)."""
        answers, refused = self._recovery
        return min(BACKGROUND_MAX, refused / answers) if answers >= BACKGROUND_MIN_ANSWERS else 0.0

    def _count(self, times: deque[float], now: float) -> int:
        times.append(now)
        while times[0] < now - GOODPUT_WINDOW_S:
            times.popleft()
        return len(times)

    def _on_answer(self, now: float, rtt: float) -> None:
        self._note_recovery(now, False)
        self._run_of_429 = 0
        self._since_decrease[0] += 1
        self._at_level[0] += self._climbed(now)
        self._count(self._goodput, now)
        sent = self._count(self._sent, now) / GOODPUT_WINDOW_S
        self.srtt = rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt
        if self.min_rtt is None or rtt < self.min_rtt or now - self._min_rtt_since > MIN_RTT_WINDOW_S:
            self.min_rtt, self._min_rtt_since = rtt, now
        queue_building = self.srtt > LATENCY_TOLERANCE * self.min_rtt + LATENCY_SLACK_S
        # Beyond the first the in-flight cap binds anyway; beyond the second we are not using
        # the rate (too few lanes, a starved CPU), and a rate grown unused would burst later.
        growth = APP_LIMITED if self.slow_start else APP_LIMITED_AFTER
        ceiling = min(self.max_limit / self.min_rtt, max(self._w_max, 1 / INITIAL_RTT_S, growth * sent))
        if queue_building and now - self._decreased_at >= RECOVERY_S:
            self._decrease(now, clean=False, cut=self.rate * BETA)  # a queue is building up in front of the API
        elif self.slow_start:
            self.rate = min(ceiling, self.rate + 1 / self.srtt)  # x2 per round trip
        else:
            self.rate = min(ceiling, max(self.rate, self._curve(now - self._decreased_at)))

    def _curve(self, t: float) -> float:
        """CUBIC's shape with a plateau: concave up to just under the old rate within RECOVERY_S,
        held there for HOLD_S, then convex beyond the old rate."""
        hold = max(self._r0, HOLD_SHARE * self._w_max)
        if t < RECOVERY_S:
            return hold - (hold - self._r0) * (1 - t / RECOVERY_S) ** 3
        probe = t - RECOVERY_S - self.hold_s
        if probe < 0:
            return hold
        accelerating = PROBE_GROWTH * (max(0.0, probe - PROBE_LINEAR_S) / RECOVERY_S) ** 3
        return max(hold, self._w_max * (HOLD_SHARE + PROBE_SLOPE * probe + accelerating))

    def _climbed(self, now: float) -> bool:
        """Back at the hold's level or probing beyond it (not in slow start, not still climbing)."""
        return not self.slow_start and now - self._decreased_at >= RECOVERY_S

    def _on_throttled(self, now: float, started: float) -> None:
        self._run_of_429 += 1
        self._count(self._sent, now)
        if started < self._decreased_at:
            return  # sent before the last decrease: that decrease already answered it
        self._note_recovery(now, True)
        self._since_decrease[0] += 1
        self._since_decrease[1] += 1
        answers, throttled = self._since_decrease
        share = throttled / answers
        systematic = throttled >= SYSTEMATIC_MIN and share > self.background + SYSTEMATIC_SHARE
        climbed = self._climbed(now)
        if climbed:
            self._at_level[0] += 1
            self._at_level[1] += 1
        # Judged on the answers since the climb back ended, not during it (the bucket may still
        # be dry from the overshoot). In the hold, 429s above the background mean the old rate
        # was overestimated (a bucket's burst inflates goodput); in the probe, that it was passed.
        level_answers, level_429s = self._at_level
        above_background = level_429s >= LEVEL_MIN_429 and \
            level_429s / level_answers > BACKGROUND_MARGIN * self.background + BACKGROUND_SLACK
        if self.slow_start:
            if throttled >= SLOW_START_EXIT[0] and share > SLOW_START_EXIT[1]:
                self._decrease(now, clean=False)
        elif systematic or (climbed and above_background):
            # Clean (the recovery below it learns the background) unless many 429s came at once:
            # in the hold too, or sporadic 429s that keep cutting it there never teach it theirs.
            self._decrease(now, clean=climbed and not systematic)

    def _decrease(self, now: float, *, clean: bool, cut: float | None = None) -> None:
        """Cut the rate to ``BETA`` x the least of it and what the API accepted over the last second
        (``cut`` if given), at most by half. Leaving slow start, to half of that least, and that
        is the rate to probe up from: the last second's goodput then holds a token bucket's
        burst (up to a second's worth on top of its rate), so it says little about the limit,
        and holding just under it drew a cascade of 429s."""
        self._recovery_valid = clean
        goodput = len(self._goodput) / GOODPUT_WINDOW_S
        if self.slow_start:
            new = max(RATE_FLOOR, SLOW_START_CUT * min(self.rate, goodput if cut is None else cut))
            self._w_max = new
        else:
            new = max(RATE_FLOOR, self.rate * 0.5, min(self.rate * BETA, BETA * goodput if cut is None else cut))
            found = max(new, min(self.rate, goodput))
            stable = clean and abs(found - self._w_max) <= STABLE_LIMIT * self._w_max
            self.hold_s = min(HOLD_MAX_S, 2 * self.hold_s) if stable else HOLD_S
            self._w_max = found
        self.rate = self._r0 = new
        self.slow_start = False
        self._decreased_at = now
        self._since_decrease = [0, 0]
        self._at_level = [0, 0]
        self.decreases += 1

    # -- Retry-After's reach ---------------------------------------------------------

    def refused_by_all(self) -> bool:
        """A 429 clearly applies to every request: several in a row, and no other answer for a second.

        A rate limiter lets its rate through, so answers keep coming between its 429s;
        sporadic 429s leave most requests answered. Only an API that refuses everything
        (a quota spent, maintenance) answers nothing else.
        """
        with self._cond:
            now = self.clock()
            while self._goodput and self._goodput[0] < now - GOODPUT_WINDOW_S:
                self._goodput.popleft()
            return self._run_of_429 >= 3 and not self._goodput


def outcome_of(error: BaseException | None) -> str:
    if error is None:
        return OK
    if isinstance(error, RetryLaterError) and error.status == 429:
        return THROTTLED
    if isinstance(error, UpstreamError) and error.status is not None:
        return OK  # any other HTTP answer came back: it measures the round trip, not our rate
    return FAILED


class LimitedClient:
    """The upstream client with every request passed through an :class:`AdaptiveLimit`.

    ``wait_gate()`` runs once a slot is ours, right before the request: a pause of all
    sending may have begun while we queued for the slot. ``on_throttled(error)`` runs
    on a 429 before its slot is freed, so a pause it starts is in force before any
    request queued behind it can leave. ``side``: the requests take the limit's side slots.
    """

    def __init__(self, client: Any, limit: AdaptiveLimit, stop: threading.Event | None = None, *,
                 wait_gate: Callable[[], None] = lambda: None,
                 on_throttled: Callable[[BaseException], None] = lambda error: None, side: bool = False) -> None:
        self._side = side
        self._client = client
        self._limit = limit
        self._stop = stop
        self._wait_gate = wait_gate
        self._on_throttled = on_throttled

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or name in ("close",) or not callable(attr):
            return attr

        def limited(*args: Any, **kwargs: Any) -> Any:
            self._limit.acquire(self._stop, side=self._side)
            try:
                self._wait_gate()
                started = self._limit.clock()
                try:
                    result = attr(*args, **kwargs)
                except BaseException as error:
                    outcome = outcome_of(error)
                    self._limit.note(started, outcome)
                    if outcome == THROTTLED:
                        self._on_throttled(error)
                    raise
                self._limit.note(started, OK)
                return result
            finally:
                self._limit.free(side=self._side)

        return limited


class ThrottleGate:
    """A pause of all sending, for a Retry-After that applies to everything; capped; clearable.

    ``until`` is wall-clock time (it goes to the store, for ``status`` and for the
    next daemon). :meth:`sync_from` adopts the store's value when someone else
    changed it: an operator cleared it, or another daemon set it.
    """

    def __init__(self, max_retry_after_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_retry_after_s = max_retry_after_s
        self.clock = clock
        self.until = 0.0
        self._written: float | None = None  # the value we last wrote to the store
        self._lock = threading.Lock()

    def capped(self, retry_after: float | None) -> float | None:
        """Retry-After within ``[0, max_retry_after_s]`` (a 400-digit value is infinite, then capped)."""
        if retry_after is None or math.isnan(retry_after):
            return None
        return min(max(0.0, retry_after), self.max_retry_after_s)

    def pause(self, retry_after: float) -> float | None:
        """Pause all sending for ``retry_after`` (capped); the new ``until`` to store, or None if unchanged."""
        until = self.clock() + (self.capped(retry_after) or 0.0)
        with self._lock:
            if until <= self.until:
                return None
            self.until = self._written = until
        return until

    def sync_from(self, stored: float | None) -> float | None:
        """Adopt the store's value if someone else wrote it. A value past the cap (an older
        release stored any Retry-After) is cut to it: returns the value to store back then."""
        now = self.clock()
        with self._lock:
            if stored == self._written:
                return None
            self.until = min(stored or 0.0, now + self.max_retry_after_s)
            self._written = self.until if stored is not None and self.until < stored else stored
            return self._written if self._written != stored else None

    def remaining(self) -> float:
        return self.until - self.clock()
