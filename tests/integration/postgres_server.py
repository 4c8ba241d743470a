"""A real, throw-away PostgreSQL server for tests: own port on 127.0.0.1, own directory, a password.

Debian's server binaries (``/usr/lib/postgresql/<version>/bin``, or ``$SWAPLAB_PG_BINDIR``)
run ``initdb`` into a temporary directory, then ``postgres`` with password authentication
(scram-sha-256, a generated password for the superuser ``swaplab``), TCP on 127.0.0.1 only
and its unix socket in that directory. PostgreSQL refuses to run as root: as root, the
directory belongs to the ``postgres`` user and both run through ``runuser -u postgres --``.

Use the fixture by importing it into a test module (it registers as ``postgres_server``,
one server per module: initdb takes a second)::

    from tests.integration.postgres_server import PostgresServer, postgres_server_fixture  # noqa: F401

``create_database()`` gives a test its own empty database. ``stop()``/``kill()``/``start()``
take the server away and bring it back on the same port with the same data, as a database
host going down and up would.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_port, unavailable

SUPERUSER = "swaplab"
SERVICE_USER = "postgres"  # who runs the server when the tests run as root
# Durability is not what these tests test: a throw-away server need not fsync.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "16MB"}


def find_bindir() -> Path | None:
    """Where initdb and postgres are: $SWAPLAB_PG_BINDIR, else Debian's newest version."""
    explicit = os.environ.get("SWAPLAB_PG_BINDIR")
    candidates = [Path(explicit)] if explicit else sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version)
    usable = [d for d in candidates if (d / "initdb").is_file() and (d / "postgres").is_file()]
    return usable[-1] if usable else None


def missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql, or set SWAPLAB_PG_BINDIR)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return f"running as root and there is no {SERVICE_USER!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1, its data in a fresh temporary directory."""

    def __init__(self, port: int | None = None, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError(missing() or "no PostgreSQL binaries")
        self.bindir = found
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = SUPERUSER
        self.password = secrets.token_urlsafe(18)
        self.base = Path(tempfile.mkdtemp(prefix="swaplab-pg-"))
        self.data = self.base / "data"
        self.log_path = self.base / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._initdb()

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) for ``database``, with the credentials."""
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        """An autocommit psycopg connection, for administration."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=2,
            autocommit=True,
        )

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing whatever sessions still use it."""
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def start(self, ready_timeout_s: float = 30.0) -> None:
        """Start the server (on the same port and data as before, after a stop or kill)."""
        settings = {
            **FAST_SETTINGS,
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.base),
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*self._as_service_user(), str(self.bindir / "postgres"), "-D", str(self.data), *options],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                start_new_session=True,
            )
        self._wait_ready(ready_timeout_s)

    def is_running(self) -> bool:
        """Whether the server started by ``start()`` is still up."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Shut down cleanly ("fast": open sessions are disconnected)."""
        self._end(signal.SIGINT)

    def kill(self) -> None:
        """Crash the server and its backends (SIGKILL), as a host failure would."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop cleanly and start again (same port, same data)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _initdb(self) -> None:
        password_file = self.base / "password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVICE_USER)
            for path in (self.base, password_file):
                os.chown(path, account.pw_uid, account.pw_gid)
        command = [
            *self._as_service_user(),
            str(self.bindir / "initdb"),
            "-D", str(self.data),
            "-U", self.user,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        try:
            proc = subprocess.run(command, capture_output=True, text=True, cwd=self.base, timeout=120)
        finally:
            password_file.unlink(missing_ok=True)
        if proc.returncode != 0:
            shutil.rmtree(self.base, ignore_errors=True)
            raise RuntimeError(f"initdb failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")

    def _as_service_user(self) -> list[str]:
        return ["runuser", "-u", SERVICE_USER, "--"] if os.geteuid() == 0 else []

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        pid = self._postmaster_pid()
        if pid is None:
            os.killpg(proc.pid, signal.SIGKILL)  # not up yet: nothing to shut down cleanly
        elif sig == signal.SIGKILL:
            # A crash takes the backends too (a live one would keep the old shared memory
            # busy and stop the next start). runuser survives to reap the postmaster: a
            # zombie postmaster would still "own" postmaster.pid.
            for victim in (pid, *_children(pid)):
                _signal(victim, sig)
        else:
            _signal(pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                with self.connect():
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"postgres on port {self.port} not ready after {timeout_s} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"


@pytest.fixture(name="postgres_server", scope="module")
def postgres_server_fixture() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test module, deleted afterwards.

    Skipped on a developer machine without the binaries; a failure when CI demands the real
    components (``SWAPLAB_REQUIRE_E2E``).
    """
    problem = missing()
    if problem:
        unavailable(problem)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the postmaster's backends and workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The fields after the command (which may hold spaces) start with state, ppid.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, sig)


def _version(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bindir.parent.name.split(".") if part.isdigit())
