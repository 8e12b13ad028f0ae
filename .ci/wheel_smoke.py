#!/usr/bin/env python3
"""Test what users install: the wheel, in a fresh venv, run from outside the checkout.

1. Build the wheel from the repository (`pip wheel .`).
2. A venv with the wheel and no extras: the library logs turns; `--help`, `status`,
   `dead list` and `config check` work; `sync` and `emulator` name the missing extra in
   one line and exit non-zero; a read-only command on a missing store creates nothing.
3. The same venv with `[daemon]`: the emulator, then `sync` pushes every turn, `status`
   says so.
Nothing here imports from the checkout: every step runs in a temporary folder.
Exit 0 when every check holds; otherwise the first failing check is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY = "gsk_smoke_0123456789"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok and result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(map(str, args))} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def check(condition: bool, what: str, detail: object = "") -> None:
    if not condition:
        sys.exit(f"FAILED: {what}\n{detail}")
    print(f"ok  {what}")


LIBRARY = """
from galtea_local import Galtea
with Galtea(store="store.db") as galtea:
    session = galtea.sessions.create(version_id="v-smoke", custom_id="smoke-1")
    for n in range(5):
        galtea.inference_results.create(session_id=session.id, input=f"q{n}", output=f"a{n}", latency=1.5)
    print(len(galtea.inference_results.list(session_id=session.id)))
"""


def bare_checks(venv: Path, work: Path, env: dict[str, str]) -> None:
    cli = venv / "bin" / "galtea-local"
    out = run(venv / "bin" / "python", "-c", LIBRARY, cwd=work, env=env).stdout.strip()
    check(out == "5", "the library logs turns with no extras", out)
    check("export" in run(cli, "--help", cwd=work, env=env).stdout, "--help with no extras")
    status = json.loads(run(cli, "status", "--json", "--store", "store.db", cwd=work, env=env).stdout)
    check(status["queued"] == 5, "status --json with no extras", status)
    run(cli, "dead", "list", "--store", "store.db", cwd=work, env=env)
    check(True, "dead list with no extras")
    run(cli, "config", "check", cwd=work, env=env)
    check(True, "config check with no extras")
    for command in (["sync", "--store", "store.db"], ["emulator"], ["demo"]):
        result = run(cli, *command, cwd=work, env=env, ok=False)
        message = result.stderr.strip()
        check(result.returncode != 0 and "pip install 'galtea-local[daemon]'" in message
              and "Traceback" not in message and len(message.splitlines()) == 1,
              f"`{command[0]}` without [daemon] names the extra in one line", message)
    result = run(cli, "status", "--store", "postgresql://127.0.0.1/none", cwd=work, env=env, ok=False)
    check(result.returncode != 0 and "pip install 'galtea-local[postgres]'" in result.stderr
          and "Traceback" not in result.stderr, "a postgresql:// store without [postgres] names the extra",
          result.stderr)
    missing = work / "nowhere" / "x.db"
    result = run(cli, "status", "--store", missing, cwd=work, env=env, ok=False)
    check(result.returncode != 0 and str(missing) in result.stderr and not missing.parent.exists(),
          "status on a missing store fails, names it and creates nothing", result.stderr)


def import_ms(venv: Path, work: Path, env: dict[str, str]) -> float:
    """``import galtea_local`` in the installed wheel: best of 5, minus a bare interpreter start."""
    def best(code: str) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            run(venv / "bin" / "python", "-c", code, cwd=work, env=env)
            times.append(time.perf_counter() - started)
        return min(times)
    return (best("import galtea_local") - best("pass")) * 1e3


def daemon_checks(venv: Path, work: Path, env: dict[str, str]) -> None:
    cli = venv / "bin" / "galtea-local"
    emulator = subprocess.Popen([cli, "emulator", "--port", "0", "--api-key", KEY], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = emulator.stdout.readline().strip() if emulator.stdout else ""
        check(line.startswith("listening on "), "the emulator starts from the installed wheel", line)
        url = line.removeprefix("listening on ")
        sync_env = {**env, "GALTEA_API_KEY": KEY, "GALTEA_API_URL": url}
        started = time.monotonic()
        result = run(cli, "sync", "--store", "store.db", cwd=work, env=sync_env, ok=False)
        status = json.loads(run(cli, "status", "--json", "--store", "store.db", cwd=work, env=env).stdout)
        check(result.returncode == 0 and status["synced"] == 5 and status["queued"] == 0,
              f"sync with [daemon] pushes every turn ({time.monotonic() - started:.1f}s)",
              f"{result.stdout}\n{result.stderr}\n{status}")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="galtea-local-wheel-") as tmp:
        tmp_path = Path(tmp)
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "wheel", REPO, cwd=tmp_path)
        wheel = next((tmp_path / "wheel").glob("galtea_local-*.whl"))
        venv, work = tmp_path / "venv", tmp_path / "work"
        work.mkdir()
        run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
        run(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp_path)
        # Nothing from the checkout: no PYTHONPATH, no config or store from the environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GALTEA", "PYTHON", "VIRTUAL_ENV"))}
        env["HOME"] = str(work)
        print(f"wheel {wheel.name} installed with no extras ({time.monotonic() - started:.0f}s)")
        shipped = [venv / "share" / "galtea-local" / "galtea-local.service", venv / "share" / "doc" / "galtea-local" / "daemon.md"]
        check(all(path.is_file() for path in shipped), "the unit file and docs are installed under the venv's share/")
        bare_checks(venv, work, env)
        print(f"figure  import galtea_local: {import_ms(venv, work, env):.0f} ms (installed wheel, best of 5)")
        run(venv / "bin" / "pip", "install", "-q", f"{wheel}[daemon]", cwd=tmp_path)
        print(f"[daemon] extra installed ({time.monotonic() - started:.0f}s)")
        daemon_checks(venv, work, env)
    print(f"wheel smoke test passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
