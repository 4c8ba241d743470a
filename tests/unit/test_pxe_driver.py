"""The pxe driver's sequence with a BMC that records what it is told and a boot server that
is a directory: publish, boot from the network once, power, wait for the node's fetch;
what a BMC that does not answer and a node that never asks end as, each named; withdrawal
at power off."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from model.lab import NodeConfig
from workers.bmc.base import BmcUnreachable, BootDevice, PowerState
from workers.drivers import make_driver
from workers.drivers.base import BootSpec, DriverError, MachineState, PowerControl
from workers.drivers.pxe import PxeDriver
from workers.lab import boot_files, boot_server
from workers.lab.boot_files import Ran

OPTIONS = {
    "mac": "52:54:00:aa:00:01",
    "bmc_address": "127.0.0.1",
    "bmc_port": 19623,
    "bmc_credentials": "env",
    "boot_timeout_s": 5,
    "console": "none",
}


class FakeBmc:
    """A BMC that keeps a log; ``answers=False`` is one that never replies."""

    def __init__(self, answers: bool = True, on: bool = False) -> None:
        self.answers, self.on, self.log = answers, on, []  # type: ignore[var-annotated]

    @property
    def address(self) -> str:
        return "127.0.0.1:19623"

    def _check(self) -> None:
        if not self.answers:
            raise BmcUnreachable("127.0.0.1:19623: no answer to get power within 5 s")

    def power_state(self) -> PowerState:
        self._check()
        return PowerState.ON if self.on else PowerState.OFF

    def power_on(self) -> None:
        self._check()
        self.on = True
        self.log.append("on")

    def power_off(self) -> None:
        self._check()
        self.on = False
        self.log.append("off")

    def power_cycle(self) -> None:
        self.power_off()
        self.power_on()

    def boot_next(self, device: BootDevice) -> None:
        self._check()
        self.log.append(f"next {device}")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    served = tmp_path / "boot"
    (served / "www" / "mac").mkdir(parents=True)
    (served / "www" / "runs").mkdir()
    (served / "http.log").write_text("")
    monkeypatch.setattr(boot_files, "JOURNAL_DIR", tmp_path / "journal")
    # fetched() asks the HTTP unit's journal; here the "journal" is a file the test writes.
    monkeypatch.setattr(boot_files, "HTTP_UNIT", "x")

    def run(command: str, stdin: bytes | None, timeout: float) -> Ran:
        command = command.replace("journalctl -q -o cat -u x --no-pager", f"cat {served}/http.log")
        done = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, timeout=timeout)
        return Ran(done.returncode == 0, done.stdout.decode(), done.stderr.decode())

    monkeypatch.setattr(boot_server, "access", lambda lab: (run, str(served), "http://10.77.0.1:8069"))
    return served


def _node() -> NodeConfig:
    return NodeConfig("node1", "hw", "pxe", 192, None, "10.77.0.11", 22, dict(OPTIONS))


def _boot(tmp_path: Path) -> BootSpec:
    (tmp_path / "vmlinuz").write_bytes(b"k")
    (tmp_path / "initrd.img").write_bytes(b"i")
    return BootSpec(tmp_path / "vmlinuz", tmp_path / "initrd.img", "console=ttyS0,115200n8 panic=0", 192, 1)


def test_the_driver_is_registered_and_has_power_control(tmp_path: Path) -> None:
    driver = make_driver(_node(), tmp_path)
    assert isinstance(driver, PxeDriver) and isinstance(driver, PowerControl)
    assert driver.ssh_address() == ("10.77.0.11", 22) and "panic=0" in driver.kernel_console_args()


def test_a_node_that_fetches_its_files_is_booted_once_and_withdrawn_at_power_off(root: Path, tmp_path: Path) -> None:
    bmc = FakeBmc(on=True)
    driver = PxeDriver(_node(), tmp_path / "work", bmc)
    boot = _boot(tmp_path)
    # The node asks as soon as it is powered: the HTTP log has its GET once "on" is sent.
    original = bmc.power_on

    def power_on() -> None:
        original()
        pub = driver.publication
        assert pub is not None
        (root / "http.log").write_text(f'10.77.0.11 - - "GET /runs/{pub.token}/initrd.img HTTP/1.1" 200 -\n')

    bmc.power_on = power_on  # type: ignore[method-assign]
    driver.power_on(boot, tmp_path / "console.log")
    assert bmc.log == ["next pxe", "off", "on"]  # it was on: cycled
    assert driver.bmc_actions == ["next boot: network (PXE)", "power cycle"]
    assert driver.machine_state() is MachineState.RUNNING
    script = root / "www" / "mac" / "52-54-00-aa-00-01.ipxe"
    assert "a second boot is refused" in script.read_text()
    driver.power_off()
    assert bmc.log[-1] == "off" and not script.exists() and not list((root / "www" / "runs").iterdir())


def test_a_node_that_never_asks_is_the_labs_fault_naming_its_mac(root: Path, tmp_path: Path) -> None:
    bmc = FakeBmc()
    driver = PxeDriver(_node(), tmp_path / "work", bmc)
    with pytest.raises(
        DriverError, match=r"never asked the boot server for its boot files within 5 s \(MAC 52:54:00:aa:00:01"
    ):
        driver.power_on(_boot(tmp_path), tmp_path / "console.log")
    driver.power_off()
    assert not (root / "www" / "mac" / "52-54-00-aa-00-01.ipxe").exists()  # nothing stays published


def test_a_bmc_that_does_not_answer_is_named_and_nothing_is_published(root: Path, tmp_path: Path) -> None:
    driver = PxeDriver(_node(), tmp_path / "work", FakeBmc(answers=False))
    with pytest.raises(DriverError, match=r"BMC 127\.0\.0\.1 did not give the power state: .*no answer"):
        driver.power_on(_boot(tmp_path), tmp_path / "console.log")
    assert driver.machine_state() is MachineState.UNKNOWN
    assert not list((root / "www" / "mac").iterdir())
