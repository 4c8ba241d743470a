"""The embedded services are ours before we trust them, and what a dead command left is
adopted or ended, and said.

The attacker is another local user (``nobody``) who starts a redis-server and a small
HTTP server first, on the ports the embedded services used to take (16379, 19090). The
fake Prometheus answers ``/-/ready`` and says yes to every query: believed, it would
make every criterion pass. Then a ``swaplab run`` that dies by SIGKILL leaves its
redis-server, Prometheus and Celery worker running: the next command adopts the stores
(and stops them at its end) and ends the orphaned worker, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.listeners import loopback_listeners
from orchestrator.prometheus import PrometheusApi, PrometheusUnreachable
from orchestrator.services import LocalPrometheus
from tests.conftest import free_port, require_tools
from workers.process import cmdline, pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parents[2]
SWAPLAB = Path(sys.executable).with_name("swaplab")
REDIS_PORT, PROMETHEUS_PORT = 16379, 19090

FAKE_PROMETHEUS = """
import http.server, json, sys
class Yes(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(sys.argv[2], "a") as log:
            log.write(self.path + "\\n")
        body = b"ready" if self.path.startswith("/-/ready") else json.dumps(
            {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "0"]}]}}
        ).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Yes).serve_forever()
"""


def _as_nobody(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["runuser", "-u", "nobody", "--", *argv], cwd=cwd, start_new_session=True)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while not loopback_listeners(port):
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.1)


@pytest.fixture
def squatters() -> Iterator[Path]:
    """nobody's redis-server and fake Prometheus on the embedded services' ports."""
    if os.geteuid() != 0:
        pytest.skip("running a server as another user needs root")
    require_tools(("redis-server", "runuser"))
    # An earlier test's `swaplab run` killed by its timeout leaves the embedded Prometheus
    # (ours, by its pid file) on the port: end it, as the next command would adopt it.
    LocalPrometheus().stop()
    for port in (REDIS_PORT, PROMETHEUS_PORT):
        if loopback_listeners(port):
            pytest.fail(f"127.0.0.1:{port} is already in use: this test needs it free")
    home = Path(tempfile.mkdtemp(prefix="swaplab-squatter-"))  # pytest's tmp is root's only
    home.chmod(0o755)
    os.chown(home, 65534, 65534)
    (home / "fake.py").write_text(FAKE_PROMETHEUS)
    procs = [
        _as_nobody(["redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--save", "", "--dir", str(home), "--logfile", str(home / "redis.log")], home),
        _as_nobody(["/usr/bin/python3", str(home / "fake.py"), str(PROMETHEUS_PORT), str(home / "asked.log")], home),
    ]
    try:
        _wait_listening(REDIS_PORT)
        _wait_listening(PROMETHEUS_PORT)
        yield home
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 10  # runuser's child goes a moment after it
        while (loopback_listeners(REDIS_PORT) or loopback_listeners(PROMETHEUS_PORT)) and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(home, ignore_errors=True)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWAPLAB_REDIS", "SWAPLAB_PROMETHEUS"))}
    return {**env, "SWAPLAB_CACHE": str(tmp_path / "cache"), "SWAPLAB_RESULTS": str(tmp_path / "results"), **extra}


def test_a_squatted_prometheus_port_is_refused_and_nothing_reaches_the_squatters(
    squatters: Path, tmp_path: Path
) -> None:
    run = subprocess.run(
        [str(SWAPLAB), "run", str(REPO / "campaigns" / "smoke.yaml")],
        capture_output=True, text=True, timeout=120, env=_env(tmp_path),
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "127.0.0.1:19090 is held by pid" in run.stderr and "user nobody (uid 65534)" in run.stderr
    assert "fake.py" in run.stderr  # the holder's command line, to find it
    assert not (squatters / "asked.log").exists()  # not one request reached the fake Prometheus
    keys = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "dbsize"], capture_output=True, text=True, timeout=10)
    assert keys.stdout.strip() == "0"  # nobody's Redis never heard from swaplab
    # What the refused command started, it stopped: no redis-server of ours is left.
    assert not _ours(str(tmp_path / "cache" / "redis"))


def test_the_control_plane_never_asks_a_squatter_for_a_verdict(
    squatters: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWAPLAB_PROMETHEUS_URL", raising=False)
    with pytest.raises(PrometheusUnreachable, match=r"held by pid \d+ \(user nobody"):
        PrometheusApi().query("swaplab_node_oom_kills_total", time.time())
    assert not (squatters / "asked.log").exists()


LEFT_BEHIND = """
import sys, time
from pathlib import Path
from model.lab import load_lab
from orchestrator.services import LocalServices
lab = load_lab(Path(sys.argv[1]))
with LocalServices(lab, 2, Path(sys.argv[2]), lambda text: print(text, flush=True)):
    print("READY", flush=True)
    if sys.argv[3] == "hang":
        time.sleep(600)
"""


def _services(tmp_path: Path, mode: str, env: dict[str, str]) -> subprocess.Popen[str]:
    lab = REPO / "tests" / "fixtures" / "labs" / "e2e.yml"
    argv = [sys.executable, "-c", LEFT_BEHIND, str(lab), str(tmp_path / mode), mode]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def _ours(pattern: str) -> list[int]:
    """Live processes whose command line holds ``pattern``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)) and pattern in " ".join(cmdline(int(entry.name))):
            found.append(int(entry.name))
    return found


@pytest.fixture
def nothing_left(tmp_path: Path) -> Iterator[Callable[[], None]]:
    """Whatever the test leaves running under its cache (a failed assertion mid-way) is killed."""
    workers: set[int] = set()

    def note_workers() -> None:
        for record in (tmp_path / "cache" / "services" / "workers").glob("*.json"):
            workers.add(int(json.loads(record.read_text())["pid"]))

    yield note_workers
    note_workers()
    for pid in {*_ours(str(tmp_path)), *workers}:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_what_a_killed_run_left_is_adopted_or_ended_and_said(
    tmp_path: Path, nothing_left: Callable[[], None]
) -> None:
    require_tools(("redis-server", "prometheus"))
    env = _env(tmp_path, SWAPLAB_PROMETHEUS_URL=f"http://127.0.0.1:{free_port()}", SWAPLAB_PROMETHEUS_SD_DIR=str(tmp_path / "sd"))
    cache = tmp_path / "cache"
    first = _services(tmp_path, "hang", env)
    assert first.stdout is not None
    lines = [first.stdout.readline()]
    while lines[-1] and lines[-1].strip() != "READY":
        lines.append(first.stdout.readline())
    assert lines[-1].strip() == "READY", lines
    records = list((cache / "services" / "workers").glob("*.json"))
    [orphan_worker] = [json.loads(path.read_text())["pid"] for path in records]
    nothing_left()  # remembered, to be killed if the test fails before it is ended
    first.send_signal(signal.SIGKILL)  # no clean-up at all
    first.wait()
    assert _ours(str(cache / "redis")) and pid_alive(orphan_worker)

    second = _services(tmp_path, "exit", env)
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out
    assert "adopted the redis-server" in out and "adopted the prometheus" in out and "it stops with this one" in out
    assert f"stopped a celery worker (pid {orphan_worker}) that an ended swaplab run (pid {first.pid})" in out
    deadline = time.monotonic() + 60  # the orphan's warm shutdown
    while pid_alive(orphan_worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pid_alive(orphan_worker), "the orphaned worker is still running"
    assert not _ours(str(cache / "redis")) and not _ours(str(cache / "prometheus")), "an adopted store was not stopped"
    assert oct((cache / "redis").stat().st_mode & 0o777) == "0o700"
