"""OpenIPMI's ``ipmi_sim`` as the BMC of one lab-in-a-box machine.

Debian's openipmi ships no sample configuration; this writes one per machine in a
directory only root reads (the BMC's password is in it, as in a real BMC's flash): a LAN
channel on one address and port (above 1024, so no privilege is needed to bind it),
RMCP+ with MD5 for users, one admin user, no anonymous one, and the chassis handed to
``workers.bmc.chassis`` (power and boot device). ipmi_sim's argv holds paths only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workers.bmc.base import BmcCredentials, BmcError
from workers.bmc.chassis import power_off, running_pid
from workers.loopback import free_tcp_port, tcp_listening
from workers.process import start_ticks

# IPMI 2.0 limits a user name to 16 bytes and a password to 20; ipmi_sim's configuration
# reads them as quoted words.
_USER = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
_PASSWORD = re.compile(r"^[A-Za-z0-9._~-]{1,20}$")
_START_TIMEOUT_S = 10.0

# The BMC itself: one management controller at the usual address, no sensors.
EMU = """\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
mc_enable 0x20
"""


@dataclass(frozen=True)
class SimulatedBmc:
    """Where one machine's simulated BMC listens, its user, and its directory."""

    name: str
    host: str
    port: int
    credentials: BmcCredentials
    workdir: Path
    # Where the machine's serial port connects (QEMU as a TCP client that reconnects after
    # each power on): a serial hub listening there passes its output to the BMC, which
    # serves it as Serial-over-LAN.
    serial_port: int | None = None
    # Where it listens for the machine's in-band interface: QEMU's ipmi-bmc-extern device
    # (a KCS BMC the machine's kernel sees, as a server's own) connects there.
    vm_port: int | None = None

    @property
    def machine_dir(self) -> Path:
        return self.workdir / "machine"


def lan_conf(bmc: SimulatedBmc, hub_port: int | None = None) -> str:
    """ipmi_sim's configuration for ``bmc`` (it contains the password); its SOL reads the
    serial hub listening on ``hub_port``."""
    user, password = bmc.credentials.user, bmc.credentials.password
    if not _USER.match(user) or not _PASSWORD.match(password):
        raise ValueError("a simulated BMC's user is 1-16 and its password 1-20 of [A-Za-z0-9._~-]")
    chassis = f"{sys.executable} -m workers.bmc.chassis {bmc.machine_dir}"
    # This ipmi_sim (2.0.33) connects to a "telnet:" serial port; a "tcp:" one it never opens.
    sol = f'  sol "telnet:127.0.0.1:{hub_port}" 115200\n' if hub_port else ""
    vm = f"  serial kcs 127.0.0.1 {bmc.vm_port} codec VM\n" if bmc.vm_port else ""
    return f"""\
name "swaplab-{bmc.name}"
set_working_mc 0x20
  startlan 1
    addr {bmc.host} {bmc.port}
    priv_limit admin
    allowed_auths_callback none
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid {os.urandom(16).hex()}
  endlan
  chassis_control "{chassis}"
{vm}{sol}  user 1 false "" "" user 1 none
  user 2 true "{user}" "{password}" admin 4 md5
"""


class BmcSimulator:
    """One running ``ipmi_sim`` and the machine its chassis powers."""

    def __init__(self, bmc: SimulatedBmc, machine_argv: list[str], detach: bool = False) -> None:
        self.bmc = bmc
        self.machine_argv = machine_argv
        # Detached: in a session of its own, outliving this process (a lab brought up by
        # one command and used by others); its pids are recorded for ``stop_recorded``.
        self.detach = detach
        self.proc: subprocess.Popen[bytes] | None = None
        self.hub: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Write the configuration and start the simulator; return once it answers."""
        work = self.bmc.workdir
        (work / "state").mkdir(parents=True, exist_ok=True)
        self.bmc.machine_dir.mkdir(exist_ok=True)
        os.chmod(work, 0o700)
        (self.bmc.machine_dir / "machine.json").write_text(json.dumps({"argv": self.machine_argv}))
        # The chassis program and the hub run swaplab's own modules: from the repository,
        # whatever the caller's cwd.
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        hub_port = self._start_hub(env) if self.bmc.serial_port else None
        _write_private(work / "lan.conf", lan_conf(self.bmc, hub_port))
        (work / "bmc.emu").write_text(EMU)
        argv = ["ipmi_sim", "-c", str(work / "lan.conf"), "-f", str(work / "bmc.emu"), "-s", str(work / "state"), "-n"]
        with open(work / "ipmi_sim.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=work,
                start_new_session=self.detach,
            )  # fmt: skip
        self._wait_bound()
        _record(work, [proc for proc in (self.proc, self.hub) if proc is not None])

    def _start_hub(self, env: dict[str, str]) -> int:
        """The serial hub, listening before ipmi_sim starts (which connects to it once)."""
        assert self.bmc.serial_port is not None
        hub_port = free_tcp_port()
        argv = [sys.executable, "-m", "workers.bmc.serial_hub", str(hub_port), str(self.bmc.serial_port)]
        with open(self.bmc.workdir / "serial_hub.log", "ab") as log:
            self.hub = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=self.detach
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not (tcp_listening(hub_port) and tcp_listening(self.bmc.serial_port)):
            if self.hub.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BmcError(
                    f"the serial hub of {self.bmc.name} did not listen on {hub_port} and {self.bmc.serial_port}"
                )
            time.sleep(0.05)
        return hub_port

    def _wait_bound(self) -> None:
        """Until the simulator's UDP port is bound (or it exited)."""
        assert self.proc is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _udp_bound(self.bmc.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.bmc.workdir / "ipmi_sim.log").read_text(errors="replace")[-500:]
                self.stop()
                raise BmcError(f"ipmi_sim for {self.bmc.name} did not start on {self.bmc.host}:{self.bmc.port}: {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the simulator and pull its machine's plug (no machine outlives its BMC)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.bmc.machine_dir.exists():
            power_off(self.bmc.machine_dir)
        if self.hub is not None and self.hub.poll() is None:
            self.hub.terminate()
            self.hub.wait(10)

    def machine_pid(self) -> int | None:
        """The machine's pid while its power is on."""
        return running_pid(self.bmc.machine_dir)

    def actions(self) -> list[str]:
        """Every chassis command the machine got, oldest first (``power 1``, ``boot pxe``)."""
        try:
            lines = (self.bmc.machine_dir / "actions.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [line.split(" ", 1)[1] for line in lines]


def _record(workdir: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """pid and start time of the simulator's processes: a later process finds and stops them."""
    lines = [f"{proc.pid} {start_ticks(proc.pid) or 0}" for proc in procs]
    (workdir / "pids").write_text("\n".join(lines) + "\n")


def recorded_alive(workdir: Path) -> list[int]:
    """The recorded processes of the simulator in ``workdir`` that still run (not recycled pids)."""
    try:
        lines = (workdir / "pids").read_text().split("\n")
    except OSError:
        return []
    alive = []
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            pid = int(fields[0])
            if start_ticks(pid) == int(fields[1]):
                alive.append(pid)
    return alive


def stop_recorded(workdir: Path) -> bool:
    """Stop a simulator another process started (and its machine); True when one ran."""
    pids = recorded_alive(workdir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while recorded_alive(workdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in recorded_alive(workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    machine = workdir / "machine"
    running = bool(pids) or running_pid(machine) is not None
    if machine.exists():
        power_off(machine)
    (workdir / "pids").unlink(missing_ok=True)
    return running


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _udp_bound(port: int) -> bool:
    """Some socket on this host's namespace has UDP ``port`` bound (IPv4)."""
    suffix = f":{port:04X}"
    with open("/proc/net/udp") as table:
        return any(line.split()[1].endswith(suffix) for line in list(table)[1:])
