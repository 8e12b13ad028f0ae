"""systemd's notify protocol in plain Python: datagrams to ``$NOTIFY_SOCKET``.

No libsystemd, no C extension: the protocol is one ``AF_UNIX`` datagram of
``KEY=VALUE`` lines. ``$NOTIFY_SOCKET`` is a path, or an abstract socket
written with a leading ``@``. Without it (not run by systemd) every call is a
no-op, so the daemon calls these unconditionally.

What the daemon sends: ``READY=1`` once the store is open and migrated and the
pusher lock is held; ``STATUS=...`` after passes; ``WATCHDOG=1`` every
:meth:`Notifier.watchdog_interval` seconds while passes make progress;
``STOPPING=1`` when a stop begins.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("galtea_local.daemon")


def socket_address(value: str) -> str | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or None when unusable."""
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not for a unit like ours


class Notifier:
    """Sends notifications when run under systemd (``Type=notify``); silent otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = _watchdog_interval(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when off."""
        return self._watchdog_s if self.enabled else None

    def notify(self, *lines: str) -> bool:
        """Send one datagram; True when sent. A failure is logged, never raised: systemd is optional."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout, as sd_watchdog_enabled(3) advises; None when no watchdog is set for us."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None  # the watchdog is meant for another process (e.g. our parent)
    return usec / 2 / 1_000_000
