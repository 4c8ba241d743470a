"""The serial line between a lab-in-a-box machine and its simulated BMC.

ipmi_sim opens the serial port it serves as Serial-over-LAN once, when it starts: a port
that is not listening then is never read. A machine's QEMU comes and goes with its power.
So this small process stands between them for as long as the BMC runs: it listens for the
BMC on one port and for the machine on another (QEMU connects as a client and reconnects
after each power on) and copies what the machine writes to the BMC. The console is read
only: what the BMC sends (telnet negotiation, keystrokes) is not passed on, so nothing
reaches the machine's kernel through it.

    python -m workers.bmc.serial_hub BMC_PORT MACHINE_PORT      (both on 127.0.0.1)
"""

from __future__ import annotations

import selectors
import signal
import socket
import sys

CHUNK = 65536


class SerialHub:
    """One BMC side and one machine side, each replaced when a new connection comes."""

    def __init__(self, bmc_port: int, machine_port: int) -> None:
        self.listeners = {
            "bmc": socket.create_server(("127.0.0.1", bmc_port)),
            "machine": socket.create_server(("127.0.0.1", machine_port)),
        }
        self.peers: dict[str, socket.socket] = {}
        self.selector = selectors.DefaultSelector()
        for side, listener in self.listeners.items():
            self.selector.register(listener, selectors.EVENT_READ, ("accept", side))
        self.running = True

    def serve(self) -> None:
        while self.running:
            for key, _mask in self.selector.select(timeout=1.0):
                action, side = key.data
                if action == "accept":
                    self._accept(side)
                else:
                    self._read(side)

    def _accept(self, side: str) -> None:
        conn, _ = self.listeners[side].accept()
        self._drop(side)
        self.peers[side] = conn
        self.selector.register(conn, selectors.EVENT_READ, ("read", side))

    def _read(self, side: str) -> None:
        try:
            data = self.peers[side].recv(CHUNK)
        except OSError:
            data = b""
        if not data:
            self._drop(side)
            return
        bmc = self.peers.get("bmc")
        if side == "machine" and bmc is not None:
            try:
                bmc.sendall(data)
            except OSError:
                self._drop("bmc")

    def _drop(self, side: str) -> None:
        conn = self.peers.pop(side, None)
        if conn is not None:
            self.selector.unregister(conn)
            conn.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m workers.bmc.serial_hub BMC_PORT MACHINE_PORT", file=sys.stderr)
        return 2
    hub = SerialHub(int(argv[0]), int(argv[1]))

    def stop(_signum: int, _frame: object) -> None:
        hub.running = False

    signal.signal(signal.SIGTERM, stop)
    hub.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
