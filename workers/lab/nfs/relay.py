"""The relay QEMU starts for each connection a guest opens to its NFS address (guestfwd cmd:).

QEMU's user networking hands the guest's connection to this process as stdin and stdout
(and stderr: nothing may ever be printed). The relay connects to the lab's NFS server
from the node's own loopback address (127.0.0.N) and a port below 1024, which only root
on the host can bind: the server's per-node export admits that address and a reserved
port, so a node can mount only its own export and no local user can pose as a node. Then
it copies bytes both ways until either side closes.

One process per connection is what makes a restarted server reachable again: QEMU's
``guestfwd=tcp:`` form connects once at start and never again. While the server is down
(a restart), the relay keeps trying for ``CONNECT_WAIT_S`` instead of dropping the guest's
connection at once, so the NFS client does not back off for minutes.

Run as a script with ``python -I -S``: the standard library only, nothing from the
environment or site-packages decides what runs here.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import random
import select
import shlex
import socket
import sys
import time
from pathlib import Path

# bindresvport's range: below 512 are well-known services.
RESERVED_PORTS = range(600, 1024)
CONNECT_WAIT_S = 60.0
RETRY_S = 0.25
CHUNK = 256 * 1024
LOG_MAX_BYTES = 256 * 1024
# Only these characters reach QEMU's command parser (a shell or g_shell_parse_argv):
# nothing that quotes, expands or separates, and no ',' (QEMU's option separator).
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./+-:=@")


class RelayError(RuntimeError):
    """The relay cannot be started or cannot reach the server."""


def relay_command(python: str, source: str, server: str, port: int, log: Path) -> str:
    """The ``cmd:`` of a guestfwd: this script run by ``python`` for one connection.

    Every word is checked against a small safe alphabet (and quoted anyway): QEMU passes
    the text to a command parser, and a ',' would end the option early.
    """
    words = [
        python, "-I", "-S", str(Path(__file__).resolve()),
        "--source", str(ipaddress.ip_address(source)),
        "--server", f"{ipaddress.ip_address(server)}:{int(port)}",
        "--log", str(log),
    ]  # fmt: skip
    for word in words:
        if not word or not set(word) <= _SAFE:
            raise RelayError(f"relay command word {word!r} has characters QEMU's command line cannot carry")
    return " ".join(shlex.quote(word) for word in words)


def connect_from(source: str, server: str, port: int, deadline: float) -> socket.socket:
    """A connection to ``server:port`` from ``source`` and a reserved port, retried until ``deadline``."""
    last: OSError | None = None
    while True:
        try:
            return _connect_once(source, server, port)
        except ConnectionRefusedError as err:  # the server is (re)starting
            last = err
        if time.monotonic() >= deadline:
            raise RelayError(f"{server}:{port} did not accept a connection: {last}")
        time.sleep(RETRY_S)


def _connect_once(source: str, server: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(server).version == 6 else socket.AF_INET
    start = random.randrange(len(RESERVED_PORTS))
    for i in range(len(RESERVED_PORTS)):
        local = RESERVED_PORTS[(start + i) % len(RESERVED_PORTS)]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((source, local))
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRINUSE:
                continue
            raise RelayError(f"cannot bind {source}:{local}: {err.strerror}") from err
        try:
            sock.connect((server, port))
        except OSError as err:
            sock.close()
            # This 4-tuple may still be in TIME_WAIT from an earlier connection: the next port.
            if err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                continue
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise RelayError(f"no free reserved port on {source}")


def pump(guest_in: int, guest_out: int, server: socket.socket) -> None:
    """Copy both ways until either side closes or fails."""
    server_fd = server.fileno()
    while True:
        readable, _, _ = select.select([guest_in, server_fd], [], [])
        for fd in readable:
            try:
                data = os.read(fd, CHUNK)
            except OSError:
                return
            if not data:
                return
            try:
                _write_all(server_fd if fd == guest_in else guest_out, data)
            except OSError:
                return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _log(path: Path, line: str) -> None:
    """One line of evidence in the node's relay log (bounded; never through a link)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size < LOG_MAX_BYTES:
            os.write(fd, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n".encode())
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """Relay stdin/stdout (the guest's connection) to the server; the exit code says why it ended."""
    # stderr is the guest's connection too: a traceback must never reach the NFS client.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--source", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--log", required=True, type=Path)
    args = parser.parse_args(argv)
    host, _, port = args.server.rpartition(":")
    try:
        server = connect_from(args.source, host, int(port), time.monotonic() + CONNECT_WAIT_S)
    except (OSError, RelayError) as err:
        _log(args.log, f"relay from {args.source} to {args.server}: {err}")
        return 1
    _log(args.log, f"relay {server.getsockname()[0]}:{server.getsockname()[1]} -> {args.server}")
    with server:
        pump(0, 1, server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
