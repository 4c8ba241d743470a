"""What a guest under test can reach, tried from inside a real one.

One QEMU guest booted by swaplab's own driver (its restricted user network and guestfwd
relay, as a campaign gets them) on a two-node lab with a real nfs-ganesha. From inside it
the test does what a hostile kernel's root would: connect to a host service on 127.0.0.1
(a listener standing in for Redis or Prometheus) and to ganesha's real port, mount the
other node's export; then it swaps over NFS and restarts ganesha in the middle of it.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.kernel import KernelSource
from model.lab import Lab, load_lab
from tests.conftest import free_port, require_tools
from tests.e2e.guests import Guest, booted_guest
from workers.image import LabKeys, NodeImage, build_node_image, lab_keys
from workers.kernel import fetch_kernel
from workers.lab.nfs import make_nfs_server
from workers.lab.nfs.ganesha import GaneshaServer, filesystem_problem, statfs_type

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
# The e2e lab's keys: its node image is cached already by the other e2e modules.
KEYS_OF = "e2e"
RAM_MIB = 192
BOOT_TIMEOUT_S = 120
SWAP = "swap.guestnet"
# Kernel lines that would mean the restart cost the guest pages or its swap.
SWAP_TROUBLE = ("Write-error", "Read-error", "I/O error", "BUG", "Oops", "reclaim failed", "unhandled error")


@pytest.fixture(scope="module")
def keys() -> LabKeys:
    require_tools()
    return lab_keys(KEYS_OF)


@pytest.fixture(scope="module")
def image(keys: LabKeys) -> NodeImage:
    return build_node_image(fetch_kernel(KernelSource(package="linux-image-amd64")), keys)


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Scratch space on a filesystem ganesha can export (/tmp may be tmpfs)."""
    path = tmp_path_factory.mktemp("guestnet")
    if filesystem_problem(path, statfs_type(path)) is None:
        yield path
        return
    path = REPO / ".cache" / f"test-guestnet-{os.getpid()}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(lab_dir: Path) -> Lab:
    inventory = lab_dir / "guestnet.yml"
    inventory.write_text(
        f"""\
all:
  vars: {{swaplab_lab: guestnet}}
  children:
    nfs_server:
      hosts:
        localhost: {{swaplab_nfs: ganesha, swaplab_nfs_port: {free_port()},
                     swaplab_nfs_export_dir: {lab_dir / "export"}, swaplab_nfs_state_dir: {lab_dir / "state"}}}
    nodes:
      vars: {{swaplab_driver: qemu, swaplab_ram_mib: {RAM_MIB}, swaplab_cpus: 1, ansible_host: 127.0.0.1}}
      hosts:
        guest1: {{ansible_port: {free_port()}}}
        guest2: {{ansible_port: {free_port()}}}
"""
    )
    return load_lab(inventory)


@pytest.fixture(scope="module")
def server(lab: Lab) -> Iterator[GaneshaServer]:
    srv = make_nfs_server(lab.nfs_backend, lab.name, lab.nfs_settings)
    assert isinstance(srv, GaneshaServer)
    srv.ensure_serving()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def guest(lab: Lab, server: GaneshaServer, image: NodeImage, keys: LabKeys, lab_dir: Path) -> Iterator[Guest]:
    with booted_guest(lab.node("guest1"), image, keys, lab_dir / "guest1", RAM_MIB) as the_guest:
        yield the_guest


class Listener:
    """A host service on 127.0.0.1 (as Redis or Prometheus are): counts who got in."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[tuple[str, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer)
            conn.close()


def test_the_guest_reaches_no_host_service_only_its_nfs_relay(guest: Guest, server: GaneshaServer) -> None:
    service = Listener()
    targets = {
        f"10.0.2.2 {service.port}": False,  # the host's 127.0.0.1 service, the old way in
        f"10.0.2.2 {server.port}": False,  # ganesha's real port
        f"10.0.2.100 {service.port}": False,  # the NFS address, another port: no forward
        "10.0.2.100 2049": True,  # the forward, the one way out
    }
    script = "".join(
        f"(nc -w 3 {target} </dev/null >/dev/null 2>&1 && echo '{target} open' || echo '{target} closed') &\n"
        for target in targets
    )
    _code, out = guest.sh(f"{script}wait")
    seen = {line.rsplit(" ", 1)[0]: line.endswith(" open") for line in out.splitlines()}
    assert seen == targets, out
    service.sock.close()
    assert service.accepted == []  # checked from outside: nothing reached the host service


def test_the_guest_cannot_mount_another_nodes_export(guest: Guest, server: GaneshaServer) -> None:
    other = server.export_dir / "guest2"
    (other / "secret").write_bytes(b"guest2's pages")
    before = sorted(p.name for p in other.iterdir())
    options = "vers=4.1,proto=tcp,port=2049,soft,timeo=50,retrans=1"
    _code, out = guest.sh(
        f"mkdir -p /mnt/other /mnt/root; mount -t nfs4 -o {options} 10.0.2.100:/export/guest2 /mnt/other 2>&1; "
        f"echo rc=$?; mount -t nfs4 -o {options} 10.0.2.100:/export /mnt/root && "
        "{ echo ls=$(ls /mnt/root); cat /mnt/root/guest2/secret; echo cat=$?; umount /mnt/root; }",
        timeout=120,
    )
    assert "failed: No such file or directory" in out and "rc=0" not in out, out  # not there for guest1
    assert "ls=guest1\n" in out, out  # the lab's exports as guest1 sees them: its own alone
    assert "guest2's pages" not in out and "cat=1" in out, out
    # Checked from outside: node2's export is as it was.
    assert sorted(p.name for p in other.iterdir()) == before
    assert (other / "secret").read_bytes() == b"guest2's pages"


def _wait_for(guest: Guest, command: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, out = guest.sh(command)
        if code == 0:
            return out
        assert time.monotonic() < deadline, f"{command!r} never succeeded; console:\n{guest.console_text()[-3000:]}"
        time.sleep(1)


def _vmstat(guest: Guest) -> dict[str, int]:
    _code, out = guest.sh("grep -E '^pswp(in|out) ' /proc/vmstat")
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_swap_over_nfs_survives_a_ganesha_restart(guest: Guest, server: GaneshaServer, lab: Lab) -> None:
    server.create_swap_file("guest1", SWAP, 512)
    code, out = guest.sh(
        "sysctl -w vm.min_free_kbytes=16384 >/dev/null && mkdir -p /mnt/swaplab && "
        "mount -t nfs4 -o vers=4.1,proto=tcp,port=2049,hard,timeo=600 10.0.2.100:/export/guest1 /mnt/swaplab && "
        f"swapon /mnt/swaplab/{SWAP} && cat /proc/swaps",
        timeout=120,
    )
    assert code == 0 and SWAP in out, out
    # 32 MiB more than the guest has free: pages go out before the restart, come back after.
    _code, available = guest.sh("awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo")
    hog = f"swaplab-node hog --mib {int(available) + 32}"
    guest.sh(f"setsid sh -c '{hog} >/tmp/hog.out 2>&1; echo $? >/tmp/hog.rc' </dev/null &")
    _wait_for(guest, "awk '/^pswpout / {exit !($2 > 1024)}' /proc/vmstat", timeout=120)
    relay_log = Path(guest.driver.workdir) / "nfs-relay.log"
    relays_before, old_pid = relay_log.read_text(), server.pid_path.read_text()

    server.stop()  # what `swaplab nfs stop` does, with the guest's swap in use
    server.ensure_serving()
    at_restart = _vmstat(guest)
    _wait_for(guest, "test -s /tmp/hog.rc", timeout=240)

    _code, out = guest.sh("cat /tmp/hog.rc; tail -n 1 /tmp/hog.out")
    assert out.startswith("0\n") and " bad=0 " in out, out + guest.console_text()[-3000:]  # every page verified
    after = _vmstat(guest)
    assert at_restart["pswpout"] * 4096 > 4 * 2**20  # pages the old server took ...
    assert (after["pswpin"] - at_restart["pswpin"]) * 4096 > 16 * 2**20  # ... read back from the new one
    assert server.pid_path.read_text() != old_pid
    after_boot = guest.console_text().split("swaplab: ready")[-1]
    assert not [bad for bad in SWAP_TROUBLE if bad in after_boot], after_boot[-3000:]
    # The guest's next connection got a new relay, from its own address, to the new server.
    route = lab.node("guest1").nfs_route
    assert route is not None
    assert f"relay {route.client_address}:" in relay_log.read_text().removeprefix(relays_before)
    assert server.written_pages("guest1", SWAP, 512)
