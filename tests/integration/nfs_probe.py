"""A tiny NFSv4.0 client speaking raw RPC, as a local attacker or a guest would.

It sends one COMPOUND (PUTROOTFH, then a LOOKUP per path component, then GETFH) with
AUTH_SYS credentials claiming root, over a TCP connection made from a chosen source
address and port, and returns the compound's status. Enough to ask a real nfs-ganesha
"would you let this client into that export?" without a kernel NFS client.
"""

from __future__ import annotations

import socket
import struct
import time

from workers.lab.nfs.relay import connect_from

NFS4_OK = 0
NFS4ERR_PERM = 1
NFS4ERR_NOENT = 2  # ganesha's answer: an export a client may not use is not there for it
NFS4ERR_ACCESS = 13
NFS4ERR_WRONGSEC = 10016
REFUSALS = {NFS4ERR_PERM, NFS4ERR_NOENT, NFS4ERR_ACCESS, NFS4ERR_WRONGSEC}

_NFS_PROGRAM, _NFS_V4, _COMPOUND = 100003, 4, 1
_AUTH_NONE, _AUTH_SYS = 0, 1
_OP_GETFH, _OP_LOOKUP, _OP_PUTROOTFH = 10, 15, 24


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _opaque(data: bytes) -> bytes:
    return _u32(len(data)) + data + b"\0" * (-len(data) % 4)


def compound_lookup(path: str, xid: int = 1) -> bytes:
    """One record-marked RPC call: PUTROOTFH, LOOKUP each component of ``path``, GETFH."""
    cred = _u32(0) + _opaque(b"probe") + _u32(0) + _u32(0) + _u32(0)  # stamp, machine, uid 0, gid 0, no gids
    ops = _u32(_OP_PUTROOTFH)
    for part in path.strip("/").split("/"):
        ops += _u32(_OP_LOOKUP) + _opaque(part.encode())
    ops += _u32(_OP_GETFH)
    count = 2 + len(path.strip("/").split("/"))
    body = (
        _u32(xid) + _u32(0) + _u32(2) + _u32(_NFS_PROGRAM) + _u32(_NFS_V4) + _u32(_COMPOUND)
        + _u32(_AUTH_SYS) + _opaque(cred) + _u32(_AUTH_NONE) + _opaque(b"")
        + _opaque(b"") + _u32(0) + _u32(count) + ops
    )  # fmt: skip
    return _u32(0x80000000 | len(body)) + body


def read_reply(sock: socket.socket) -> int:
    """The COMPOUND status of the reply on ``sock`` (RPC-level refusals raise)."""
    header = _read_exactly(sock, 4)
    (mark,) = struct.unpack(">I", header)
    body = _read_exactly(sock, mark & 0x7FFFFFFF)
    _xid, msg_type, reply_stat = struct.unpack(">III", body[:12])
    if msg_type != 1 or reply_stat != 0:
        raise ConnectionError(f"RPC call denied (reply_stat {reply_stat})")
    _flavor, verf_len = struct.unpack(">II", body[12:20])
    offset = 20 + verf_len + (-verf_len % 4)
    (accept_stat,) = struct.unpack(">I", body[offset : offset + 4])
    if accept_stat != 0:
        raise ConnectionError(f"RPC call not accepted (accept_stat {accept_stat})")
    (status,) = struct.unpack(">I", body[offset + 4 : offset + 8])
    return int(status)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def lookup_status(server: tuple[str, int], path: str, source: str, reserved: bool = True) -> int:
    """Connect from ``source`` and ask for ``path``'s file handle.

    ``reserved``: from a port below 1024 as the relay does (root only); else from the
    unprivileged port any local user gets.
    """
    if reserved:
        sock = connect_from(source, *server, deadline=time.monotonic())
    else:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(server)
    with sock:
        assert (sock.getsockname()[1] < 1024) == reserved
        sock.settimeout(10)
        sock.sendall(compound_lookup(path))
        return read_reply(sock)
