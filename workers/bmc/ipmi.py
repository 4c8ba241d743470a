"""A BMC over IPMI-over-LAN (RMCP+, lanplus), through pyghmi: no ipmitool, no password in argv.

Every command runs in a thread the caller waits for at most the BMC's timeout (set per
node in the inventory, 90 s by default): a BMC that does not answer is ``BmcUnreachable``
within it, whatever the library's own retries do. The session is opened on first use and
again after an error.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pyghmi import exceptions as pyghmi_exceptions
from pyghmi.ipmi import command

from workers.bmc.base import BmcCredentials, BmcError, BmcUnreachable, BootDevice, PowerState

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 90.0
IPMI_PORT = 623
# pyghmi's names for the boot device selector.
_BOOT_DEVICES = {BootDevice.PXE: "network", BootDevice.DISK: "hd", BootDevice.DEFAULT: "default"}
# What pyghmi says when the BMC refused the user or password (wording varies by step).
_REFUSALS = ("password", "unauthorized name", "unauthorized role", "insufficient privilege")
_POLL_S = 0.5


class IpmiBmc:
    """One machine's BMC over IPMI-over-LAN."""

    def __init__(
        self, host: str, credentials: BmcCredentials, port: int = IPMI_PORT, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._credentials = credentials
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def power_state(self) -> PowerState:
        reply = self._call("get power", lambda ipmi: ipmi.get_power())
        return PowerState(reply["powerstate"])

    def power_on(self) -> None:
        self._set_power(PowerState.ON)

    def power_off(self) -> None:
        self._set_power(PowerState.OFF)

    def power_cycle(self) -> None:
        # IPMI's "power cycle" is optional for a BMC and pyghmi does not send it: off, then on.
        self._set_power(PowerState.OFF)
        self._set_power(PowerState.ON)

    def boot_next(self, device: BootDevice) -> None:
        self._call(
            f"set next boot device {device}", lambda ipmi: ipmi.set_bootdev(_BOOT_DEVICES[device], persist=False)
        )

    def _set_power(self, state: PowerState) -> None:
        """Ask for ``state``, then wait until the BMC reports it (within the timeout)."""
        deadline = time.monotonic() + self.timeout_s
        self._call(f"power {state}", lambda ipmi: ipmi.set_power(str(state)))
        while self.power_state() != state:
            if time.monotonic() >= deadline:
                raise BmcError(
                    f"BMC {self.address}: power {state} asked, the machine still reports otherwise after {self.timeout_s:.0f} s"
                )
            time.sleep(_POLL_S)

    def _call(self, what: str, operation: Callable[[Any], T]) -> T:
        """``operation`` on a session, bounded by the timeout, its errors as BmcError."""
        outcome: dict[str, Any] = {}

        def attempt() -> None:
            try:
                with self._lock:
                    session = self._login()
                    try:
                        outcome["value"] = operation(session)
                    finally:
                        # One session per command: a session left open dies when the BMC
                        # times it out or restarts, and pyghmi hands a dead one to the next
                        # command, which then never gets an answer.
                        _end_session(session.ipmi_session)
            except BaseException as exc:  # carried to the caller's thread
                outcome["error"] = exc

        worker = threading.Thread(target=attempt, name=f"ipmi {self.address}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            raise BmcUnreachable(f"BMC {self.address} did not answer {what!r} within {self.timeout_s:.0f} s")
        if "error" in outcome:
            raise self._translate(what, outcome["error"]) from None
        return outcome["value"]  # type: ignore[no-any-return]

    def _login(self) -> Any:
        creds = self._credentials
        return command.Command(
            bmc=self.host, port=self.port, userid=creds.user, password=creds.password, keepalive=False
        )

    def _translate(self, what: str, exc: BaseException) -> BmcError:
        # A library's message quoting what it sent must not carry the password onwards.
        text = str(exc).replace(self._credentials.password, "***")
        if isinstance(exc, pyghmi_exceptions.IpmiException) and any(word in text.lower() for word in _REFUSALS):
            return BmcError(f"BMC {self.address} refused user {self._credentials.user!r} ({text}) on {what!r}")
        if isinstance(exc, pyghmi_exceptions.IpmiException) and text in ("None", "", "timeout"):
            # pyghmi gives up on a silent BMC with an empty IpmiException.
            return BmcUnreachable(f"BMC {self.address} did not answer {what!r}")
        return BmcError(f"BMC {self.address}: {what!r} failed: {type(exc).__name__}: {text}"[:500])


def _end_session(ipmi_session: Any) -> None:
    """Log out and make pyghmi forget the session: its ``_mark_broken`` logs out and drops
    it from most of pyghmi's caches, but misses the one of sessions being set up (that
    cache's key does not match the one it builds), from which the next command would get
    it back, broken."""
    with contextlib.suppress(Exception):
        ipmi_session._mark_broken()
    cache = getattr(type(ipmi_session), "initting_sessions", None)
    if isinstance(cache, dict):
        for key, value in list(cache.items()):
            if value is ipmi_session:
                cache.pop(key, None)
