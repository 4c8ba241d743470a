"""IPMI power control against a real BMC peer: OpenIPMI's ipmi_sim over RMCP+ on loopback.

The machine behind the simulated BMC is a real process (a stand-in for a QEMU node):
power on starts it, power off kills it, the next boot device reaches the chassis. A
wrong password and a BMC that does not answer are clear errors within the timeout, and
the password is in no process's argv, no log the simulator writes and no error.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, free_udp_port, require_tools
from workers.bmc import chassis
from workers.bmc.base import BmcCredentials, BmcError, BmcUnreachable, BootDevice, PowerState
from workers.bmc.ipmi import IpmiBmc
from workers.bmc.simulator import BmcSimulator, SimulatedBmc
from workers.bmc.sol import SolConsole
from workers.process import start_ticks

MACHINE = ["sleep", "1000"]


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[BmcSimulator]:
    require_tools(("ipmi_sim",))
    creds = BmcCredentials("swaplab", secrets.token_urlsafe(12))
    sim = BmcSimulator(SimulatedBmc("node1", "127.0.0.1", free_udp_port(), creds, tmp_path / "bmc"), MACHINE)
    sim.start()
    yield sim
    sim.stop()


def bmc_of(sim: BmcSimulator, password: str | None = None, timeout_s: float = 20.0) -> IpmiBmc:
    creds = sim.bmc.credentials
    return IpmiBmc(sim.bmc.host, BmcCredentials(creds.user, password or creds.password), sim.bmc.port, timeout_s)


def test_power_on_starts_the_machine_and_power_off_kills_it(simulator: BmcSimulator) -> None:
    bmc = bmc_of(simulator)
    assert bmc.power_state() is PowerState.OFF and simulator.machine_pid() is None
    bmc.boot_next(BootDevice.PXE)
    bmc.power_on()
    pid = simulator.machine_pid()
    assert pid is not None and bmc.power_state() is PowerState.ON
    bmc.power_off()
    assert bmc.power_state() is PowerState.OFF and start_ticks(pid) is None
    assert simulator.actions() == ["boot pxe", "power 1", "power 0"]


def test_a_power_cycle_is_a_new_machine(simulator: BmcSimulator) -> None:
    bmc = bmc_of(simulator)
    bmc.power_on()
    first = simulator.machine_pid()
    bmc.power_cycle()
    second = simulator.machine_pid()
    assert first is not None and second is not None and second != first and start_ticks(first) is None


def test_stopping_the_bmc_pulls_its_machines_plug(simulator: BmcSimulator) -> None:
    bmc_of(simulator).power_on()
    pid = simulator.machine_pid()
    assert pid is not None
    simulator.stop()
    assert start_ticks(pid) is None


def test_a_bmc_that_forgot_its_sessions_still_answers_the_next_command(simulator: BmcSimulator) -> None:
    # A worker's driver outlives many BMC sessions: the BMC times an idle one out (ipmi_sim
    # after about a minute) or restarts. pyghmi would hand the dead session to the next
    # command, which then never got an answer: a false "BMC unreachable" on a healthy BMC.
    bmc = bmc_of(simulator, timeout_s=10)
    assert bmc.power_state() is PowerState.OFF
    simulator.stop()
    simulator.start()  # the same address and port, no session of anyone's
    assert bmc.power_state() is PowerState.OFF


def test_a_wrong_password_is_refused_naming_the_bmc_and_user_only(simulator: BmcSimulator) -> None:
    wrong = secrets.token_urlsafe(12)
    bmc = bmc_of(simulator, password=wrong)
    with pytest.raises(BmcError, match=r"refused user 'swaplab'") as caught:
        bmc.power_state()
    assert not isinstance(caught.value, BmcUnreachable) and bmc.address in str(caught.value)
    assert wrong not in str(caught.value) and simulator.bmc.credentials.password not in str(caught.value)


def test_a_bmc_that_does_not_answer_is_unreachable_within_its_timeout() -> None:
    bmc = IpmiBmc("127.0.0.1", BmcCredentials("swaplab", "x"), free_udp_port(), timeout_s=3.0)
    started = time.monotonic()
    with pytest.raises(BmcUnreachable, match="did not answer 'get power'"):
        bmc.power_state()
    assert time.monotonic() - started < 8.0


def test_the_password_is_in_no_argv_and_no_log(simulator: BmcSimulator) -> None:
    bmc = bmc_of(simulator)
    bmc.power_on()
    password = simulator.bmc.credentials.password.encode()
    argvs = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argvs.append(cmdline.read_bytes())
        except OSError:
            continue  # gone meanwhile
    assert argvs and not [argv for argv in argvs if password in argv]
    logs = [p for p in simulator.bmc.workdir.rglob("*") if p.is_file() and p.name != "lan.conf"]
    assert logs and not [p for p in logs if password in p.read_bytes()]
    conf = simulator.bmc.workdir / "lan.conf"
    assert conf.stat().st_mode & 0o077 == 0 and simulator.bmc.workdir.stat().st_mode & 0o077 == 0


class SerialPort:
    """A machine's serial port as QEMU's is: a TCP client of the BMC's serial hub, one line every 0.1 s."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        while not self.stop.is_set():
            try:
                conn = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                break
            except OSError:
                time.sleep(0.1)  # the hub is not listening yet
        else:
            return
        number = 0
        while not self.stop.is_set():
            try:
                conn.sendall(f"[ {number}.000] kernel line {number}\r\n".encode())
            except OSError:
                return
            number += 1
            time.sleep(0.1)


def test_the_serial_console_comes_over_sol(tmp_path: Path) -> None:
    require_tools(("ipmi_sim",))
    creds = BmcCredentials("swaplab", secrets.token_urlsafe(12))
    sim = BmcSimulator(
        SimulatedBmc("node1", "127.0.0.1", free_udp_port(), creds, tmp_path / "bmc", free_port()), MACHINE
    )
    sim.start()
    assert sim.bmc.serial_port is not None
    serial = SerialPort(sim.bmc.serial_port)  # the machine comes up after its BMC
    received: list[bytes] = []
    sol = SolConsole(sim.bmc.host, sim.bmc.port, creds, received.append)
    try:
        sol.start()
        deadline = time.monotonic() + 20
        while b"".join(received).count(b"\n") < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sol.stop()
        serial.stop.set()
        sim.stop()
    lines = b"".join(received).decode().splitlines()
    assert len(lines) >= 10 and sol.state == "stopped", (sol.state, lines)
    numbers = [int(line.split("kernel line ")[1]) for line in lines[1:-1] if "kernel line " in line]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # in order, none lost


def test_a_recycled_pid_is_not_the_machine(tmp_path: Path) -> None:
    machine = tmp_path / "machine"
    machine.mkdir()
    (machine / "machine.json").write_text('{"argv": ["sleep", "1000"]}')
    chassis.power_on(machine)
    pid = chassis.running_pid(machine)
    assert pid is not None and chassis.get(machine, ["power", "boot"]) == "power:1\nboot:default\n"
    started = (machine / "pid").read_text().split()[1]
    (machine / "pid").write_text(f"{pid} {int(started) + 1}\n")  # same pid, another process's start
    assert chassis.running_pid(machine) is None and chassis.get(machine, ["power"]) == "power:0\n"
    (machine / "pid").write_text(f"{pid} {started}\n")
    chassis.apply(machine, ["boot", "pxe", "boot", "floppy", "power", "0"])  # an unknown device is ignored
    assert chassis.get(machine, ["boot", "power"]) == "boot:pxe\npower:0\n" and start_ticks(pid) is None
