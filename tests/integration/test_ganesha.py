"""The ganesha backend against a real user-space nfs-ganesha on 127.0.0.1: its lifecycle,
each node's export open to that node's relay address alone (asked over raw NFSv4 RPC, as a
guest or a local user would), and swap files a guest replaced, never followed nor read."""

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
from types import SimpleNamespace

import pytest

from model.lab import NfsRoute
from model.runspec import NodeResult
from tests.conftest import free_port, require_tools
from tests.integration.nfs_probe import NFS4_OK, REFUSALS, lookup_status
from workers.lab.nfs.base import NfsServerError
from workers.lab.nfs.ganesha import GaneshaServer, filesystem_problem, statfs_type
from workers.pipeline.swap_steps import SwapFileStep

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


def routes(port: int, count: int = 2) -> dict[str, NfsRoute]:
    """What load_lab gives a lab of ``count`` QEMU nodes: node1 from 127.0.0.2, node2 from .3 ..."""
    return {
        f"node{i}": NfsRoute(f"node{i}", i, "10.0.2.100", 2049, f"127.0.0.{i + 1}", "127.0.0.1", port, True)
        for i in range(1, count + 1)
    }


def settings_of(lab_dir: Path, port: int, count: int = 2) -> dict[str, object]:
    return {
        "port": port,
        "export_dir": str(lab_dir / "export"),
        "state_dir": str(lab_dir / "state"),
        "routes": routes(port, count),
    }


@pytest.fixture
def server(lab_dir: Path) -> Iterator[GaneshaServer]:
    srv = GaneshaServer("itest", settings_of(lab_dir, free_port()))
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
    # The log as operations: from an offset, bounded to its last bytes.
    end = server.log_end()
    assert end == server.log_path().stat().st_size > 0
    assert b"NFS SERVER INITIALIZED" in server.read_log(0, end)
    assert server.read_log(end, 1 << 20) == b""
    assert server.read_log(0, 10) == server.log_path().read_bytes()[-10:]
    assert server.describe_log() == str(server.log_path())
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
        "import sys; from workers.lab.nfs.ganesha import GaneshaServer; "
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
    path = Path(server.create_swap_file("node1", "swap.node1", 16))
    assert path == server.swap_file_path("node1", "swap.node1") == server.export_dir / "node1" / "swap.node1"
    st = path.stat()
    assert st.st_size == 16 * 1024 * 1024
    assert st.st_blocks * 512 >= st.st_size  # no holes: swapon would refuse them
    assert st.st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    with path.open("rb") as f:
        assert f.read(4096)[4086:4096] == b"SWAPSPACE2"
    assert server.written_pages("node1", "swap.node1", 16) == 0
    with path.open("r+b") as f:  # what a node's swap-out looks like on the server
        f.seek(7 * 4096 + 100)
        f.write(b"page")
        f.seek(16 * 1024 * 1024 + 4096)  # past the planned size: never read
        f.write(b"grown")
    assert server.written_pages("node1", "swap.node1", 16) == 1
    server.remove_swap_file("node1", "swap.node1")
    assert not path.exists()
    assert server.written_pages("node1", "swap.node1", 16) is None
    server.remove_swap_file("node1", "swap.node1")  # idempotent


def test_swap_file_name_cannot_escape_the_export(server: GaneshaServer) -> None:
    with pytest.raises(NfsServerError, match="invalid swap file name"):
        server.create_swap_file("node1", "../evil", 1)
    assert not (server.export_dir / "evil").exists()


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


# -- each node's export admits that node alone -------------------------------------------------
def test_each_node_reaches_its_own_export_and_nobody_else_does(server: GaneshaServer) -> None:
    server.ensure_serving()
    secret = server.export_dir / "node2" / "secret"
    secret.write_bytes(b"node2's pages")
    where = ("127.0.0.1", server.port)
    # Each relay address (127.0.0.N, from a port below 1024) reaches its own node's export.
    assert lookup_status(where, "export/node1", "127.0.0.2") == NFS4_OK
    assert lookup_status(where, "export/node2/secret", "127.0.0.3") == NFS4_OK
    # node1's guest asking for node2's export: not there for it.
    assert lookup_status(where, "export/node2/secret", "127.0.0.2") in REFUSALS
    # A local user can use node2's address, but only from a port above 1023.
    assert lookup_status(where, "export/node2/secret", "127.0.0.3", reserved=False) in REFUSALS
    # Anyone on 127.0.0.1, the one way in for every guest before.
    assert lookup_status(where, "export/node2/secret", "127.0.0.1") in REFUSALS
    assert secret.read_bytes() == b"node2's pages"


def test_a_node_added_to_the_inventory_is_served_without_a_restart(server: GaneshaServer, lab_dir: Path) -> None:
    one_node = GaneshaServer("itest", settings_of(lab_dir, server.port, count=1))
    one_node.ensure_serving()
    pid = _pid(one_node)
    where = ("127.0.0.1", server.port)
    assert lookup_status(where, "export/node2", "127.0.0.3") in REFUSALS
    server.ensure_serving()  # the same lab, its inventory now with node2: SIGHUP, no restart
    assert _pid(server) == pid
    assert lookup_status(where, "export/node2", "127.0.0.3") == NFS4_OK
    assert lookup_status(where, "export/node1", "127.0.0.2") == NFS4_OK


def test_a_planted_link_as_a_node_directory_is_refused(server: GaneshaServer, lab_dir: Path) -> None:
    elsewhere = lab_dir / "elsewhere"
    elsewhere.mkdir()
    server.export_dir.mkdir(parents=True)
    (server.export_dir / "node1").symlink_to(elsewhere)  # left by a guest of the old, shared export
    with pytest.raises(NfsServerError, match="not a directory"):
        server.ensure_serving()
    with pytest.raises(NfsServerError, match="not a directory"):
        server.create_swap_file("node1", "swap.x", 1)
    assert not server.is_serving()
    assert list(elsewhere.iterdir()) == []


# -- what a guest makes of its swap file is neither followed nor read ---------------------------------
def _stat_of(path: Path) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns


@pytest.fixture
def root_file(lab_dir: Path) -> Path:
    """A root-only file outside every export, as /etc/shadow is."""
    target = lab_dir / "shadow"
    target.write_bytes(b"root:$6$secret\n")
    target.chmod(0o600)
    return target


@pytest.fixture
def canary_fifo(lab_dir: Path) -> Iterator[tuple[Path, int]]:
    """A FIFO outside the exports holding a canary: whoever reads it takes the canary."""
    fifo = lab_dir / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer and a reader: opening never blocks
    os.write(fd, b"canary")
    yield fifo, fd
    os.close(fd)


REPLACEMENTS = ["link to a root file", "link to a FIFO", "a FIFO", "link to /dev/zero", "hard link", "directory"]


def _replace(path: Path, how: str, root_file: Path, fifo: Path) -> None:
    """What a guest (root in its export) can make of its swap file over NFS."""
    path.unlink()
    if how == "link to a root file":
        path.symlink_to(root_file)
    elif how == "link to a FIFO":
        path.symlink_to(fifo)
    elif how == "a FIFO":
        os.mkfifo(path)
    elif how == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif how == "hard link":
        os.link(root_file, path)  # a file handle a guest forged can be linked in
    else:
        path.mkdir()
        (path / "inner").symlink_to(root_file)


@pytest.mark.timeout(30)  # a FIFO or /dev/zero read would hang here, not pass
@pytest.mark.parametrize("how", REPLACEMENTS)
def test_a_replaced_swap_file_is_neither_followed_nor_read_and_cleanup_finishes(
    server: GaneshaServer, root_file: Path, canary_fifo: tuple[Path, int], how: str, tmp_path: Path
) -> None:
    fifo, fifo_fd = canary_fifo
    name = "swap.c1-20260101-000000-abcd.r001.node1"
    path = Path(server.create_swap_file("node1", name, 4))
    _replace(path, how, root_file, fifo)
    before = {target: _stat_of(target) for target in (root_file, fifo)}
    # The node's cleanup, as the pipeline runs it: inspect, then remove, whatever happens.
    ctx = SimpleNamespace(
        nfs=server, name="node1", swap_name=name, spec=SimpleNamespace(swap_mib=4),
        result=NodeResult(run_id="r001", node="node1"), dir=tmp_path,
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(NfsServerError, match="not the swap file swaplab made: not read"):
        SwapFileStep().cleanup(ctx)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 5
    assert ctx.result.swap_file_nonzero_pages is None
    assert not os.path.lexists(path)  # removed: the link, never its target
    assert {target: _stat_of(target) for target in (root_file, fifo)} == before
    assert root_file.read_bytes() == b"root:$6$secret\n"
    assert os.read(fifo_fd, 100) == b"canary"  # nobody read the FIFO


def test_a_link_planted_under_the_next_swap_files_name_is_replaced_not_followed(
    server: GaneshaServer, root_file: Path
) -> None:
    (server.export_dir / "node1").mkdir(parents=True)
    planted = server.export_dir / "node1" / "swap.next"
    planted.symlink_to(root_file)
    before = _stat_of(root_file)
    path = Path(server.create_swap_file("node1", "swap.next", 4))
    assert not path.is_symlink() and path.stat().st_size == 4 * 1024 * 1024
    assert _stat_of(root_file) == before and root_file.read_bytes() == b"root:$6$secret\n"
