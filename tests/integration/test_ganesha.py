"""The ganesha backend against a real user-space nfs-ganesha on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require_tools
from workers.nfs.base import NfsServerError
from workers.nfs.ganesha import (
    GaneshaServer,
    filesystem_problem,
    nonzero_pages_after_header,
    statfs_type,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _lab_tools() -> None:
    # Skips on a bare developer machine; fails in CI (scripts/test sets SWAPLAB_REQUIRE_E2E).
    require_tools(("ganesha.nfsd",))


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    """A scratch dir on a filesystem ganesha can export (/tmp may be tmpfs)."""
    if filesystem_problem(tmp_path, statfs_type(tmp_path)) is None:
        yield tmp_path
        return
    base = REPO / ".cache" / "test-ganesha"
    base.mkdir(parents=True, exist_ok=True)
    path = base / f"{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(lab_dir: Path) -> Iterator[GaneshaServer]:
    settings = {
        "port": free_port(),
        "export_dir": str(lab_dir / "export"),
        "state_dir": str(lab_dir / "state"),
    }
    srv = GaneshaServer("itest", settings)
    try:
        yield srv
    finally:
        srv.stop()  # even when the test failed half-way


def _pid(srv: GaneshaServer) -> int:
    return int(srv.pid_path.read_text())


def _alive(pid: int) -> bool:
    """Alive and not a zombie (init here reaps orphans lazily)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_start_is_idempotent_and_stop_keeps_the_log(server: GaneshaServer) -> None:
    assert not server.is_serving()
    t0 = time.monotonic()
    server.ensure_serving()
    assert time.monotonic() - t0 < 5
    assert server.is_serving()
    pid = _pid(server)
    server.ensure_serving()  # a second run on the same lab must not restart it
    assert _pid(server) == pid
    with socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass
    server.stop()
    assert not server.is_serving()
    assert not _alive(pid)
    assert "NFS SERVER INITIALIZED" in server.log_path().read_text()
    server.stop()  # idempotent


def test_restart_right_after_stop_and_after_a_crash(server: GaneshaServer) -> None:
    server.ensure_serving()
    server.stop()
    server.ensure_serving()  # must not trip over the old instance ("Error binding")
    assert server.is_serving()
    pid = _pid(server)
    os.kill(pid, signal.SIGKILL)  # a crash leaves a stale pid file behind
    while _alive(pid):
        time.sleep(0.05)
    assert not server.is_serving()
    server.ensure_serving()
    assert server.is_serving() and _pid(server) != pid


def test_concurrent_processes_share_one_server(server: GaneshaServer) -> None:
    code = (
        "import sys; from workers.nfs.ganesha import GaneshaServer; "
        "s = GaneshaServer('itest', {'port': int(sys.argv[1]), 'export_dir': sys.argv[2], "
        "'state_dir': sys.argv[3]}); s.ensure_serving(); print(open(s.pid_path).read())"
    )
    argv = [sys.executable, "-c", code, str(server.port), str(server.export_dir),
            str(server.state_dir)]  # fmt: skip
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    pids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert pids == {str(_pid(server))}


def test_swap_file_is_allocated_and_formatted(server: GaneshaServer) -> None:
    path = server.create_swap_file("swap.node1", 16)
    assert path == server.swap_file_path("swap.node1") == server.export_dir / "swap.node1"
    st = path.stat()
    assert st.st_size == 16 * 1024 * 1024
    assert st.st_blocks * 512 >= st.st_size  # no holes: swapon would refuse them
    assert st.st_mode & 0o777 == 0o600
    with path.open("rb") as f:
        assert f.read(4096)[4086:4096] == b"SWAPSPACE2"
    assert nonzero_pages_after_header(path) == 0
    with path.open("r+b") as f:  # what a node's swap-out looks like on the server
        f.seek(7 * 4096 + 100)
        f.write(b"page")
    assert nonzero_pages_after_header(path) == 1
    server.remove_swap_file("swap.node1")
    assert not path.exists()
    server.remove_swap_file("swap.node1")  # idempotent


def test_swap_file_name_cannot_escape_the_export(server: GaneshaServer) -> None:
    with pytest.raises(NfsServerError, match="invalid swap file name"):
        server.create_swap_file("../evil", 1)
    assert not (server.export_dir.parent / "evil").exists()


def test_port_held_by_another_program_is_reported(server: GaneshaServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", server.port))
        sock.listen()
        with pytest.raises(NfsServerError, match=str(server.port)):
            server.ensure_serving()


def test_tmpfs_export_is_refused(lab_dir: Path) -> None:
    mnt = lab_dir / "tmpfs"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount tmpfs here; the pure verdict is covered by unit tests")
    try:
        srv = GaneshaServer("itest", {"port": free_port(), "export_dir": str(mnt),
                                      "state_dir": str(lab_dir / "state")})  # fmt: skip
        with pytest.raises(NfsServerError, match=rf"{mnt}.*tmpfs"):
            srv.ensure_serving()
        assert not srv.pid_path.exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
