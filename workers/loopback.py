"""Ports on this host's loopback: the lab's daemons (QEMU forwards, BMCs, relays) listen
on 127.0.0.1 only, on ports picked free at their start and probed until they answer."""

from __future__ import annotations

import socket


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's choice; it can be taken before
    its user binds it, so starters retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """True when 127.0.0.1:``port`` can be listened on (as QEMU's hostfwd will)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option slirp sets, so a TIME_WAIT leftover does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tcp_listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0
