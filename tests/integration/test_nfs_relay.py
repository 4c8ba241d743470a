"""The NFS relay as QEMU's guestfwd runs it: its own command line, the guest's connection as
stdin/stdout/stderr, a real server socket on 127.0.0.1."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port
from workers.lab.nfs.relay import relay_command

pytestmark = pytest.mark.integration


@contextmanager
def relay(source: str, port: int, log: Path) -> Iterator[tuple[socket.socket, subprocess.Popen[bytes]]]:
    """The relay started for one guest connection; yields the guest's end and the process."""
    with socket.create_server(("127.0.0.1", 0)) as pair:
        guest = socket.create_connection(pair.getsockname())
        handed_over, _ = pair.accept()  # libslirp hands the relay one end of a TCP pair
    argv = shlex.split(relay_command(sys.executable, source, "127.0.0.1", port, log))
    proc = subprocess.Popen(argv, stdin=handed_over, stdout=handed_over, stderr=handed_over)
    handed_over.close()
    guest.settimeout(10)
    try:
        yield guest, proc
    finally:
        guest.close()
        proc.kill()
        proc.wait()


def test_the_relay_connects_from_the_nodes_address_and_a_reserved_port(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with relay("127.0.0.7", port, tmp_path / "relay.log") as (guest, proc):
            conn, (peer, peer_port) = server.accept()
            with conn:
                assert peer == "127.0.0.7" and peer_port < 1024
                guest.sendall(b"call")
                assert conn.recv(100) == b"call"
                conn.sendall(b"reply" * 1000)
                got = b""
                while len(got) < 5000:
                    got += guest.recv(65536)
                assert got == b"reply" * 1000
            # The server went away (a restart): the guest sees the connection end.
            assert guest.recv(100) == b""
            assert proc.wait(timeout=5) == 0
    assert f"127.0.0.7:{peer_port} -> 127.0.0.1:{port}" in (tmp_path / "relay.log").read_text()


def test_the_relay_waits_for_a_restarting_server(tmp_path: Path) -> None:
    port = free_port()
    with relay("127.0.0.8", port, tmp_path / "relay.log") as (guest, proc):
        guest.sendall(b"queued while the server is down")
        time.sleep(1.0)  # nothing listens yet: the relay keeps trying
        assert proc.poll() is None
        with socket.create_server(("127.0.0.1", port)) as server:
            conn, (peer, _) = server.accept()
            with conn:
                assert peer == "127.0.0.8"
                assert conn.recv(100) == b"queued while the server is down"


def test_the_relay_never_writes_to_the_guest_on_failure(tmp_path: Path) -> None:
    # stderr is the guest's connection: an error must reach the log, not the NFS client.
    with relay("192.0.2.1", free_port(), tmp_path / "relay.log") as (guest, proc):  # not an address of this host
        assert proc.wait(timeout=10) == 1
        assert guest.recv(100) == b""
    assert "cannot bind 192.0.2.1:" in (tmp_path / "relay.log").read_text()
