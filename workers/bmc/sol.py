"""A machine's serial console over IPMI Serial-over-LAN, as a stream of bytes for its console log.

pyghmi's ``Console`` opens an RMCP+ session, activates SOL and hands every chunk of the
serial port's output to a callback; its session loop is driven here from a thread of our
own. What the BMC says about the session (activated, lost, refused) is kept as
``state``; the bytes go to ``sink`` (the node's ``ConsoleLog``), in order. A console
that cannot be had is not a failure of the node: the node's kernel log is then read over
SSH, as for any node without a lab console.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from pyghmi.ipmi import console as pyghmi_console

from workers.bmc.base import BmcCredentials

_POLL_S = 0.5


class SolConsole:
    """The serial output of one machine, over its BMC, while ``start``ed."""

    def __init__(self, host: str, port: int, credentials: BmcCredentials, sink: Callable[[bytes], None]) -> None:
        self.host, self.port = host, port
        self._credentials = credentials
        self._sink = sink
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._console: Any = None
        self.state = "not started"
        self.bytes_received = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Activate SOL and follow it in a thread until ``stop``."""
        creds = self._credentials
        # pyghmi hands out an already logged-in session to anyone asking for the same BMC,
        # user, password and K_G, and a console given a power command's session never hears
        # that it logged on. K_G equal to the password is what RMCP+ uses when the BMC has
        # no key of its own (IPMI 2.0, 13.31); naming it makes this console's session its own.
        self._console = pyghmi_console.Console(
            self.host, creds.user, creds.password, self._received, port=self.port, force=True, kg=creds.password
        )
        self.state = "activating"
        self._thread = threading.Thread(target=self._follow, name=f"sol {self.address}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Deactivate SOL and stop following; what came is in the sink."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._console is not None:
            with contextlib.suppress(Exception):  # a session already gone has nothing to close
                self._console.close()
        self.state = "stopped"

    def _follow(self) -> None:
        while not self._stop.is_set():
            pyghmi_console.Console.wait_for_rsp(_POLL_S)

    def _received(self, data: Any) -> None:
        """pyghmi's callback: console bytes, or a dict saying what happened to the session."""
        if isinstance(data, bytes | bytearray):
            self.state = "active"
            self.bytes_received += len(data)
            self._sink(bytes(data))
        elif isinstance(data, str):
            self.state = "active"
            encoded = data.encode(errors="replace")
            self.bytes_received += len(encoded)
            self._sink(encoded)
        elif isinstance(data, dict):
            # {'error': ...} or {'info': ...}: never carries the password (pyghmi's own text).
            self.state = "; ".join(f"{key}: {value}" for key, value in data.items())[:300]
