"""A real, throw-away redis-server for tests: own port on 127.0.0.1, own dir, no persistence.

Use the fixture by importing it into a test module (it registers as ``redis_server``)::

    from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401

or build a ``RedisServer(tmp_path)`` by hand; ``kill()``/``start()``/``restart()`` simulate
a crash and a restart on the same port (the data is gone: persistence is off).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis

from tests.conftest import free_port, unavailable

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """One redis-server process bound to 127.0.0.1 on its own port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_path = workdir / f"redis-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, ready_timeout_s: float = 10.0) -> None:
        command = [
            REDIS_SERVER,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready(ready_timeout_s)

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a host or container failure would."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client with timeouts, so a dead server fails calls instead of hanging them."""
        options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, **kwargs}
        return redis.Redis(host=self.host, port=self.port, **options)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        probe = redis.Redis(host=self.host, port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._proc.returncode}: {self._log_tail()}")
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            probe.close()
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout_s} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped afterwards."""
    if not os.path.exists(REDIS_SERVER):
        unavailable("redis-server is not installed")
    with RedisServer(tmp_path) as server:
        yield server
