"""A private PostgreSQL server for tests that stop and restart it (never the shared one the other tests use).

:class:`PrivateServer` runs ``initdb`` into a temporary directory and ``postgres`` on a free port of
127.0.0.1, as a subprocess; ``stop(mode)`` ends it as ``pg_ctl stop -m fast`` / ``-m immediate`` do
(SIGINT / SIGQUIT to the postmaster) and ``start()`` starts it again on the same port and data.

The binaries come from ``$LOGSTORE_TEST_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``,
else ``pg_config --bindir``; :func:`find_binaries` says why there are none. PostgreSQL refuses to
run as root: as root the server runs as the ``postgres`` user (its directory is handed to it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import psycopg

INITDB_FLAGS = ("--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
SETTINGS = ("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50")
"""The server's settings: no fsync (the tests stop the server, never the machine), few connections."""
START_WAIT = 60.0
"""Seconds a start or a stop may take before the test fails."""


def find_binaries() -> tuple[str | None, str]:
    """The directory of ``initdb`` and ``postgres``, or None and why not."""
    candidates = []
    if os.environ.get("LOGSTORE_TEST_PG_BIN"):
        candidates.append(os.environ["LOGSTORE_TEST_PG_BIN"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, name), os.X_OK) for name in ("initdb", "postgres")):
            return bindir, ""
    return None, (
        "a private PostgreSQL server needs initdb and postgres: none in $LOGSTORE_TEST_PG_BIN,"
        f" /usr/lib/postgresql/*/bin or pg_config --bindir (looked in {candidates or 'nothing'})"
    )


def _run_as() -> tuple[str | None, str]:
    """The user to run the server as (None: this one), or None and why it cannot run."""
    if os.geteuid() != 0:
        return None, ""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None, "PostgreSQL refuses to run as root and there is no postgres user to run it as"
    return "postgres", ""


def why_not() -> str:
    """Why a private server cannot run here ('' if it can)."""
    bindir, reason = find_binaries()
    if bindir is None:
        return reason
    return _run_as()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateServer:
    """A PostgreSQL server of the test's own: ``url`` reaches its ``postgres`` database."""

    def __init__(self) -> None:
        bindir, reason = find_binaries()
        assert bindir is not None, reason
        self._bindir = bindir
        self._user, _ = _run_as()
        self.dir = tempfile.mkdtemp(prefix="logstore-pg-")
        self.data = os.path.join(self.dir, "data")
        self.sockets = os.path.join(self.dir, "sockets")
        os.mkdir(self.sockets)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for path in (self.dir, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = os.path.join(self.dir, "server.log")
        subprocess.run(
            [os.path.join(bindir, "initdb"), "-D", self.data, "-U", "postgres", *INITDB_FLAGS],
            check=True,
            capture_output=True,
            **self._as_user(),
        )

    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        entry = pwd.getpwnam(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        assert self._proc is None or self._proc.poll() is not None
        argv = [os.path.join(self._bindir, "postgres"), "-D", self.data, "-p", str(self.port), "-k", self.sockets]
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                [*argv, *SETTINGS],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as_user(),
            )
        deadline = time.monotonic() + START_WAIT
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the private server did not start:\n{self.log()}") from None
                time.sleep(0.05)  # polling the new server until it accepts connections: no event to wait on

    def stop(self, mode: str = "fast") -> None:
        """Stop the server as ``pg_ctl stop -m fast`` (ends sessions, checkpoints) or ``-m immediate`` (no cleanup)."""
        proc = self._proc
        assert proc is not None
        proc.send_signal({"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])
        try:
            proc.wait(START_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the private server did not stop ({mode}):\n{self.log()}") from None

    def log(self) -> str:
        with open(self._log, errors="replace") as f:
            return f.read()[-4000:]

    def close(self) -> None:
        """Stop the server (immediately) if it runs, and remove its directory."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
