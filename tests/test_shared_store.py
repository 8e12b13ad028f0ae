"""The documented shared-store setup, with two real OS users (docs/daemon.md, "Apps on the same box").

A daemon user and an app user share a group. The store folder belongs to the
daemon user, group-writable (what systemd's ``StateDirectoryMode=0770`` makes),
and both sides use ``file_mode = 0660``, ``dir_mode = 0770`` and a umask of 022
(the usual login default, narrower than the unit's ``UMask=0007``). Each side
runs in a forked child that drops to its user, so the kernel checks every open.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from galtea_local import Galtea, StoreOpenError
from galtea_local.store import Store

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create the two users of the shared-store setup",
)


@pytest.fixture
def users() -> Iterator[tuple[str, str, str]]:
    """(daemon user, app user, shared group), created for the test and removed after."""
    tag = secrets.token_hex(3)
    group, daemon, app = f"glg{tag}", f"gld{tag}", f"gla{tag}"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(["useradd", "--system", "--no-create-home", "-g", group, daemon], check=True)
    subprocess.run(["useradd", "--no-create-home", "-G", group, app], check=True)  # own primary group
    try:
        yield daemon, app, group
    finally:
        for user in (daemon, app):
            subprocess.run(["userdel", user], check=False)
        subprocess.run(["groupdel", app], check=False, capture_output=True)
        subprocess.run(["groupdel", group], check=False)


@pytest.fixture
def state_dir(users: tuple[str, str, str]) -> Iterator[Path]:
    """A /var/lib/galtea-local stand-in: owned by the daemon user, mode 0770, reachable by all."""
    base = Path(tempfile.mkdtemp(prefix="gl-shared-", dir="/tmp"))
    base.chmod(0o755)
    folder = base / "galtea-local"
    folder.mkdir(mode=0o770)
    folder.chmod(0o770)
    daemon, _, group = users
    os.chown(folder, pwd.getpwnam(daemon).pw_uid, grp.getgrnam(group).gr_gid)
    yield folder
    shutil.rmtree(base)


def as_user(user: str, work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child that has become ``user`` (its groups too), umask 022."""
    entry = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups(os.getgrouplist(user, entry.pw_gid))
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.umask(0o022)
            work()
            code = 0
        except BaseException as exc:  # report and exit: a child must never return into pytest
            os.write(2, f"as {user}: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the {user} side failed (its error is on stderr above)"


def log_turns(path: Path, count: int) -> Callable[[], None]:
    def work() -> None:
        with Galtea(store=path) as galtea:
            session = galtea.sessions.create(version_id="v1")
            for n in range(count):
                galtea.inference_results.create(session_id=session.id, input=f"turn {n}", output="ok")
    return work


def open_shared(path: Path) -> Store:
    return Store(str(path), file_mode=0o660, dir_mode=0o770)


def test_daemon_and_app_users_share_one_store(users, state_dir: Path, monkeypatch) -> None:
    daemon, app, group = users
    store_path = state_dir / "store.db"
    monkeypatch.setenv("GALTEA_LOCAL_CONFIG", str(_shared_config(state_dir.parent)))

    def daemon_side() -> None:
        store = open_shared(store_path)  # the daemon starts first and creates the store
        store.close()

    as_user(daemon, daemon_side)
    assert state_dir.stat().st_mode & stat.S_ISGID, "the shared folder is made setgid"
    as_user(app, log_turns(store_path, 5))  # the app is the last to close: it removes -wal/-shm
    as_user(app, log_turns(store_path, 5))  # and recreates them on its next open

    def daemon_reads_and_writes() -> None:
        store = open_shared(store_path)
        count = store.read(lambda conn: conn.execute("SELECT COUNT(*) FROM inference_results").fetchone()[0])
        assert count == 10, count
        store.transaction(lambda conn: conn.execute("UPDATE meta SET value = value"))
        store.close()

    as_user(daemon, daemon_reads_and_writes)
    gid = grp.getgrnam(group).gr_gid
    for path in state_dir.iterdir():
        assert path.stat().st_gid == gid, f"{path.name} keeps the folder's group"


def test_a_folder_the_app_cannot_write_is_named_with_the_fix(users, state_dir: Path) -> None:
    daemon, app, _ = users
    store_path = state_dir / "store.db"
    as_user(daemon, lambda: open_shared(store_path).close())
    state_dir.chmod(0o2750)  # StateDirectoryMode=0750: the group may read but not create -wal/-shm

    def app_side() -> None:
        with pytest.raises(StoreOpenError, match="cannot create files in .*group-writable"):
            Galtea(store=store_path)

    as_user(app, app_side)


def _shared_config(folder: Path) -> Path:
    config = folder / "config.toml"
    config.write_text('[store]\nfile_mode = "0660"\ndir_mode = "0770"\n')
    config.chmod(0o644)
    return config
