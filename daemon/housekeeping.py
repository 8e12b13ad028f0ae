"""Housekeeping the daemon runs between sync passes: retention, the size cap, WAL checkpoints.

Policy (``[retention]``; docs/daemon.md has the operator's view):

- Records confirmed upstream are deleted ``synced_days`` after they synced.
  Nothing unsynced is ever deleted (see :mod:`galtea_local.retention`).
- ``max_store_mb`` caps the bytes the database's pages hold (0: no cap). At the
  cap, ``when_full = "refuse"`` makes ``create()`` raise ``StoreFullError``
  until space frees up (retention, or an operator); ``"drop_synced"`` first
  deletes the oldest synced records and refuses only when unsynced records
  alone fill the cap. The cap is checked after each pass, so apps can overshoot
  it by what they write in between.
- The WAL is checkpointed (``TRUNCATE``) when no pass has moved anything for
  ``checkpoint_idle_s``. Under a steady load SQLite's own automatic
  checkpoints can starve (some reader always holds an older snapshot, so the
  WAL never restarts and keeps growing); :meth:`Housekeeper.bound_wal`, run by
  the daemon's scheduler every :data:`WAL_CHECK_EVERY_S`, then runs a ``PASSIVE``
  checkpoint (it never blocks a writer) as soon as the file passes
  :data:`WAL_LIMIT_BYTES`, and a ``TRUNCATE`` that waits for readers at most
  :data:`TRUNCATE_BUSY_MS` (writers wait for it: the copy of the few frames left
  plus that) when that one could not copy every frame; :data:`CHECKPOINT_BUSY_MS`
  past :data:`WAL_FORCE_BYTES`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass

from galtea_local import blobs, retention, span_retention
from galtea_local.batching import batched
from galtea_local.config import RetentionSettings
from galtea_local.outbox import ownership
from galtea_local.store import Store

log = logging.getLogger("galtea_local.housekeeping")

DAY_S = 86_400.0
WAL_LIMIT_BYTES = 8 * 1024 * 1024  # 2x SQLite's auto-checkpoint size: past it, readers starved the checkpoints
WAL_FORCE_BYTES = 2 * WAL_LIMIT_BYTES  # passive checkpoints did not keep up: block writers to truncate
RETENTION_EVERY_S = 60.0  # an age limit in days needs no finer clock
CHECKPOINT_BUSY_MS = 50  # wait this long for readers, then give up until the next try
TRUNCATE_BUSY_MS = 5  # the same under a load, after a passive checkpoint: apps wait while it holds the lock
CHECKPOINT_TRIES = 5
WAL_CHECK_EVERY_S = 0.1  # under a heavy load the WAL can grow by megabytes per second
DROP_BATCH = 500
FORGET_OWNED_EVERY_S = 3600.0


@dataclass
class HousekeepingReport:
    expired: int = 0
    dropped_for_space: int = 0
    store_full: bool = False
    checkpointed: bool = False


class Housekeeper:
    """Runs on the daemon's scheduler thread, between passes (never during one)."""

    def __init__(self, store: Store, settings: RetentionSettings, clock=time.time,
                 idle_clock=time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.idle_clock = idle_clock  # measures checkpoint_idle_s
        self._last_retention = float("-inf")
        self._last_forget = clock()  # hourly, from the start
        self._last_activity = self.idle_clock()
        self._checkpointed_since_activity = False
        self._full: bool | None = None  # None: not known yet, so the first check writes the flag either way

    def note_activity(self) -> None:
        """A pass moved something: the idle clock restarts."""
        self._last_activity = self.idle_clock()
        self._checkpointed_since_activity = False

    def run(self, now: float | None = None) -> HousekeepingReport:
        now = self.clock() if now is None else now
        report = HousekeepingReport()
        if now - self._last_retention >= RETENTION_EVERY_S:
            self._last_retention = now
            report.expired = self.expire(now)
        if self.settings.max_store_mb:
            report.dropped_for_space, report.store_full = self.enforce_cap()
        else:
            self._set_full(None)  # a cap removed from the config must not keep refusing
        report.checkpointed = self._maybe_checkpoint()
        return report

    # -- retention -------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Delete synced records older than ``synced_days``; return how many."""
        total = self._delete_settled(now - self.settings.synced_days * DAY_S)
        span_retention.delete_settled(self.store, now - self.settings.synced_days * DAY_S)  # spans, evaluations
        self._forget_owned(now)
        self.sweep_blobs(now)
        if total:
            log.info("retention: deleted %d synced record(s) older than %g day(s)", total, self.settings.synced_days)
        return total

    def _forget_owned(self, now: float) -> int:
        """Forget owned remote ids no reconciliation can reach any more (they outlive the rows by design).

        Hourly, read-only unless something is due, then in short batches.
        """
        if now - self._last_forget < FORGET_OWNED_EVERY_S:
            return 0
        self._last_forget = now
        cutoff = self.store.read(ownership.forget_before, now)
        total = 0
        while self.store.read(ownership.any_before, cutoff):
            total += self.store.transaction(ownership.prune, cutoff)
        return total

    def _delete_settled(self, cutoff: float, limit: int | None = None) -> int:
        """Walk the settled records oldest first, deleting those settled before ``cutoff`` (at most ``limit``).

        Candidates are found in read transactions, a page at a time, and deleted in
        write transactions of :data:`retention.DELETE_BATCH` records that re-check each
        one: the write lock is held for a few milliseconds at a time, whatever the
        store holds, so ``create()`` in the apps never waits long behind retention.
        """
        total, after = 0, {}
        while after is not None and (limit is None or total < limit):
            page = self.store.read(retention.deletable_page, after, cutoff)
            seqs = page.seqs if limit is None else page.seqs[:limit - total]
            for batch in batched(seqs, retention.DELETE_BATCH):
                total += self._delete_with_blobs(batch, cutoff)
            after = page.next_after
        return total

    def _delete_with_blobs(self, seqs: list[int], cutoff: float) -> int:
        """Delete a batch, then the blob copies of the files whose rows went with it (after the commit)."""
        held = self.store.read(retention.blobs_of, seqs)
        deleted = self.store.transaction(retention.delete_verified, seqs, cutoff)
        if held:
            kept = self.store.read(retention.blobs_of, seqs)  # records re-checked and kept keep theirs
            blobs.remove(blobs.blob_dir(self.store), sorted(held - kept))
        return deleted

    def sweep_blobs(self, now: float) -> int:
        """Remove blob copies no row names (a create() that died before its commit, an interrupted delete)."""
        return blobs.sweep(blobs.blob_dir(self.store), self.store.read(retention.blobs_known), now)

    # -- size cap --------------------------------------------------------------

    def enforce_cap(self) -> tuple[int, bool]:
        """Apply ``when_full``; return (records dropped, whether new records are now refused)."""
        cap = self.settings.max_store_mb * 1024 * 1024
        dropped = 0
        used = self.store.read(retention.used_bytes)
        if used > cap and self.settings.when_full == "drop_synced":
            while used > cap:
                batch = self._drop_batch(used - cap)
                deleted = self._delete_settled(float("inf"), batch)
                deleted += span_retention.delete_settled(self.store, float("inf"), batch)
                if not deleted:
                    break  # only unsynced records left: those are never dropped
                dropped += deleted
                used = self.store.read(retention.used_bytes)
            if dropped:
                log.warning("store at its %d MiB cap: dropped the %d oldest synced record(s)",
                            self.settings.max_store_mb, dropped)
        reason = None
        if used > cap:
            reason = (f"the store {self.store.path} is full ({used / 1048576:.1f} MiB used, cap "
                      f"retention.max_store_mb = {self.settings.max_store_mb}); new records are refused until "
                      "queued ones are pushed and retention frees space")
        self._set_full(reason)
        return dropped, reason is not None

    def _drop_batch(self, excess: int) -> int:
        """How many records to drop next: about the excess at the average record size, so few go too many."""
        count, used = self.store.read(lambda conn: (
            conn.execute("SELECT COUNT(*) FROM inference_results").fetchone()[0], retention.used_bytes(conn)))
        per_record = max(1, used // max(1, count))
        return max(1, min(DROP_BATCH, -(-excess // per_record)))

    def _set_full(self, reason: str | None) -> None:
        full = reason is not None
        if full == self._full:
            return  # the flag already says so: no write per pass
        self.store.transaction(retention.set_store_full, reason)
        if full:
            log.error("%s", reason)
        elif self._full is not None:
            log.info("store below its size cap again: new records are accepted")
        self._full = full

    # -- WAL -------------------------------------------------------------------

    def wal_bytes(self) -> int:
        if self.store.dialect != "sqlite":
            return 0  # PostgreSQL manages its own WAL
        try:
            return os.path.getsize(f"{self.store.path}-wal")
        except OSError:
            return 0

    def _maybe_checkpoint(self) -> bool:
        idle = self.idle_clock() - self._last_activity >= self.settings.checkpoint_idle_s
        if idle and not self._checkpointed_since_activity:
            self._checkpointed_since_activity = True
            return self.checkpoint()
        return False

    def bound_wal(self) -> bool:
        """Checkpoint now if the WAL passed its limit (cheap when it has not: one ``stat``).

        Run every :data:`WAL_CHECK_EVERY_S` alongside the passes, not after them: one
        pass can last many seconds under load. A ``PASSIVE`` checkpoint first: it never
        blocks a writer, and once it has copied every frame the next write starts the
        WAL over and cuts the file to ``journal_size_limit``. Under a steady load writers
        add frames while it copies, so it rarely ends: a ``TRUNCATE`` then copies what is
        left (a few frames, just after the passive one) with the write lock held, waiting
        for readers at most :data:`TRUNCATE_BUSY_MS` (an app's ``create()`` waits with
        it), and gives up until the next check when they are slower. Past
        :data:`WAL_FORCE_BYTES` it waits :data:`CHECKPOINT_BUSY_MS`.
        """
        size = self.wal_bytes()
        if size <= WAL_LIMIT_BYTES:
            return False
        if self.checkpoint(mode="PASSIVE"):
            return True
        return self.checkpoint(busy_ms=TRUNCATE_BUSY_MS if size <= WAL_FORCE_BYTES else CHECKPOINT_BUSY_MS)

    def checkpoint(self, tries: int = CHECKPOINT_TRIES, mode: str = "TRUNCATE",
                   busy_ms: int = CHECKPOINT_BUSY_MS) -> bool:
        """``wal_checkpoint(mode)`` on a private connection; True when every frame was copied."""
        if self.store.dialect != "sqlite":
            return False  # PostgreSQL checkpoints by itself
        conn = sqlite3.connect(self.store.path, timeout=busy_ms / 1000, isolation_level=None)
        try:
            # A short busy wait: a checkpoint is worth less than a writer's progress.
            conn.execute(f"PRAGMA busy_timeout={busy_ms}")
            for _ in range(tries):
                busy, frames, done = self._checkpoint_once(conn, mode)
                if frames != -1:
                    break
                # -1: another connection's automatic checkpoint holds the checkpointer
                # lock (SQLite does not wait for it); it ends within milliseconds.
                time.sleep(0.01)
        except sqlite3.Error as exc:
            log.debug("WAL checkpoint skipped: %s", exc)
            return False
        finally:
            conn.close()
        log.debug("WAL checkpoint: busy=%s frames=%s checkpointed=%s", busy, frames, done)
        return not busy and frames == done

    def _checkpoint_once(self, conn: sqlite3.Connection, mode: str) -> tuple[int, int, int]:
        if mode == "PASSIVE":
            return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        with self.store.write_turn():  # it takes the write lock: a daemon write, after the apps'
            began = time.perf_counter()
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            self._note_write(time.perf_counter() - began, f"wal_checkpoint({mode})")
        return row

    def _note_write(self, seconds: float, name: str) -> None:
        stats = getattr(self.store, "write_stats", None)
        if stats is not None:
            stats.note(seconds, name)
