"""sd_notify in plain Python: addresses, datagrams, the watchdog interval."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from galtea_local_daemon.sdnotify import Notifier, socket_address

UNIT = Path(__file__).parent.parent / "daemon" / "galtea-local.service"


def test_addresses():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == "\0abstract/name"
    assert socket_address("") is None
    assert socket_address("vsock:2:1234") is None


def test_without_notify_socket_everything_is_a_no_op():
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_datagrams_reach_an_abstract_socket():
    name = f"@galtea-sdnotify-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name[1:])
    receiver.settimeout(2)
    notifier = Notifier(env={"NOTIFY_SOCKET": name})
    assert notifier.ready("pushing")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=pushing"
    assert notifier.stopping()
    assert receiver.recv(4096) == b"STOPPING=1"
    notifier.close()
    receiver.close()


def test_a_missing_socket_is_logged_not_raised(tmp_path):
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled and notifier.ready() is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_us():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier(env=env).watchdog_interval() == 15.0
    assert Notifier(env={**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15.0
    assert Notifier(env={**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval() is None
    assert Notifier(env={**env, "WATCHDOG_USEC": "junk"}).watchdog_interval() is None


def test_unit_file_has_notify_watchdog_credential_and_hardening():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "StateDirectory=galtea-local",
                 "Environment=GALTEA_LOCAL_STORE=%S/galtea-local/store.db",
                 "LoadCredential=galtea-api-key:/etc/galtea-local/api-key", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                 "SystemCallFilter=@system-service", "SystemCallArchitectures=native", "ProtectHome=yes"):
        assert line in text, line
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split()[1:] == ["daemon"]  # the program itself, no shell wrapper
