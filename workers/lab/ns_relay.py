"""A TCP relay from this host's loopback to one address inside a lab's network namespace.

How the worker reaches a lab-in-a-box machine's sshd: the machine has one NIC, on the
lab's bridge, and nothing of the lab network is routed from this host. The relay listens
on ``127.0.0.1:LISTEN_PORT`` in the host's namespace, then enters the lab's namespace, so
every connection it makes starts there — to ``ADDRESS:PORT`` and nowhere else. Nothing is
added to this host's network (no veth, no route, no address), and no other host process
gains a way onto the lab network.

    python -m workers.lab.ns_relay LISTEN_PORT NAMESPACE ADDRESS PORT
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_NAMESPACE = re.compile(r"swaplab-[a-z0-9][a-z0-9-]{0,31}")
CONNECT_TIMEOUT_S = 10.0
CHUNK = 65536


def enter_namespace(name: str) -> None:
    """Move this process's network namespace to ``name`` (sockets made before stay where they were)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):  # the other side closed first
                sock.shutdown(how)


def _serve(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT_S)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    listen_port, namespace, address, port = int(argv[0]), argv[1], argv[2], int(argv[3])
    if not _NAMESPACE.fullmatch(namespace) or not (1024 <= listen_port <= 65535) or not (1 <= port <= 65535):
        print(f"ns_relay: refused arguments {argv!r}", file=sys.stderr)
        return 2
    target = (str(ipaddress.IPv4Address(address)), port)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(16)
    enter_namespace(namespace)  # from here on, new sockets are the lab network's
    while True:
        client, _peer = listener.accept()
        threading.Thread(target=_serve, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
