"""The ``knfsd`` backend: the kernel's NFS server in the lab's server VM, on the lab network.

The lab-scope work (network, VM, provisioning) is ``workers.lab.labbox``; this backend is
what a run does with the server once it is up, as operations over SSH on the VM's
management path: a node's swap file made, inspected and removed, the server's log read,
whether it serves. No playbook runs per run or per node (Ansible costs 30-60 s under TCG).

The node is root in its export (``no_root_squash``): it may leave a link, a directory or
a fifo where its swap file was. The server-side script therefore opens everything
relative to the node's directory with ``O_NOFOLLOW``, reads a swap file only within its
size and removes what is there without following it — the same rules the ganesha
backend keeps on this host.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from typing import Any

from model.lab import NFS_PORT, NfsRoute
from workers.lab import labbox
from workers.lab.labbox import Box, LabBoxError
from workers.lab.network import LabNetworkError
from workers.lab.nfs import register_backend
from workers.lab.nfs.base import NfsExport, NfsServerError
from workers.lab.nfs.ganesha import validate_swap_name
from workers.lab.provision import ProvisionError
from workers.lab.server_image import ServerImageError
from workers.lab.server_vm import ServerVm, ServerVmError
from workers.node_ssh import NodeUnreachable

SWAP_TIMEOUT_S = 600.0  # fallocate + mkswap, or reading a swap file back, under TCG
# Kernel messages and nfs's daemons (mountd says whom it refused), from this boot.
_LOG_COMMAND = (
    "journalctl -b --no-pager -o short-monotonic _TRANSPORT=kernel + SYSLOG_IDENTIFIER=rpc.mountd"
    " + _SYSTEMD_UNIT=nfs-server.service + _SYSTEMD_UNIT=nfs-mountd.service"
)
# Run by the server's python3: one operation on one node's directory, never following links.
_SWAP_SCRIPT = r"""
import json, os, shutil, stat, subprocess, sys
op, root, node, name, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
PAGE = 4096
flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
top = os.open(root, flags)
folder = os.open(node, flags, dir_fd=top)
def kind(st):
    for test, word in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a file")):
        if test(st.st_mode):
            return word
    return "a special file"
def remove():
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=folder)
    else:
        os.unlink(name, dir_fd=folder)
if op == "create":
    remove()
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
    os.posix_fallocate(fd, 0, size)  # every block allocated: never a sparse swap file
    os.fsync(fd)
    made = subprocess.run(["mkswap", "/proc/self/fd/%d" % fd], pass_fds=(fd,), capture_output=True, text=True)
    if made.returncode != 0:
        sys.exit("mkswap: " + made.stderr.strip())
    os.fsync(fd)
    st = os.fstat(fd)
    print(json.dumps({"bytes": st.st_size, "allocated": st.st_blocks * 512}))
elif op == "pages":
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except FileNotFoundError:
        print(json.dumps({"pages": None})); sys.exit(0)
    except OSError:
        print(json.dumps({"refused": kind(os.stat(name, dir_fd=folder, follow_symlinks=False))})); sys.exit(0)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        print(json.dumps({"refused": kind(st)})); sys.exit(0)
    zero, pages, left = bytes(PAGE), 0, size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        left -= len(chunk)
        pages += sum(1 for at in range(0, len(chunk), PAGE) if chunk[at:at + PAGE] != zero[:len(chunk) - at])
    print(json.dumps({"pages": pages}))
elif op == "remove":
    remove()
    print(json.dumps({"removed": True}))
"""


class KnfsdServer:
    """The kernel NFS server of one lab, in its server VM (``workers.lab.labbox``)."""

    def __init__(self, lab: str, settings: dict[str, Any]) -> None:
        self.lab_name = lab
        try:
            self.box = Box.of(lab, settings)
        except ValueError as err:  # pydantic's: settings that did not come from load_lab
            raise NfsServerError(f"lab {lab}: knfsd settings: {err}") from err
        self.routes: dict[str, NfsRoute] = self.box.routes
        self.export_dir = self.box.settings.export_dir
        self._vm: ServerVm | None = None

    # -- the lab ---------------------------------------------------------------------------------

    def ensure_serving(self, progress: labbox.Progress = lambda line: None) -> None:
        """Bring the lab up (network, server VM, provisioning) unless it is; then check it serves."""
        try:
            labbox.up(self.box, progress)
        except (LabBoxError, LabNetworkError, ServerVmError, ServerImageError, ProvisionError, OSError) as err:
            raise NfsServerError(f"lab {self.lab_name}: {err}") from err
        if not self.is_serving():
            # A restart fault's worker may have died with knfsd stopped: start it once.
            self._run("systemctl start nfs-server", "starting knfsd")
        # A latency fault's worker may have died with the delay on: a run starting here has
        # the lab to itself or has no faults, so no live delay is lost.
        self._run(clear_delays_script(self._server_address), "clearing leftover delays")
        if not self.is_serving():
            raise NfsServerError(f"lab {self.lab_name}: knfsd in the server VM does not serve after provisioning")

    def is_serving(self) -> bool:
        """The VM runs, was provisioned since it booted, and knfsd has threads."""
        try:
            if not labbox.is_up(self.box):
                return False
            done = self._server().run('test "$(cat /proc/fs/nfsd/threads)" -gt 0', timeout=30)
        except (NfsServerError, NodeUnreachable, ServerVmError, OSError):
            return False
        return done.ok

    def stop(self) -> None:
        """Take the lab down: the VM powered off, the network removed."""
        labbox.down(self.box)

    def stop_for_restart(self) -> None:
        """Stop knfsd in the server VM (its client records stay with nfsdcld)."""
        self._run("systemctl stop nfs-server", "stopping knfsd")

    def start_after_restart(self) -> None:
        """Start knfsd again: it begins in its grace period, in which the clients reclaim."""
        self._run("systemctl start nfs-server", "starting knfsd")
        if not self.is_serving():
            raise NfsServerError(f"lab {self.lab_name}: knfsd did not serve again after its restart")

    def delay_to(self, address: str, ms: float) -> None:
        """netem in the server VM's own kernel, on its lab NIC, for frames to ``address`` only."""
        self._run(delay_script(self._server_address, address, ms), f"delaying what reaches {address}")

    def undelay_to(self, address: str) -> None:
        """Remove ``address``'s filter; the prio root and its netem go with the last one."""
        self._run(undelay_script(self._server_address, address), f"ending the delay to {address}")

    def serving_pid(self) -> int | None:
        """The server VM's QEMU: stopping it pauses the whole VM, knfsd with it."""
        vm = labbox.server_vm(self.box)
        return vm.pid if vm is not None else None

    def _server(self) -> ServerVm:
        if self._vm is None:
            self._vm = labbox.server_vm(self.box)
            if self._vm is None:
                raise NfsServerError(f"lab {self.lab_name}: its server VM is not running (swaplab lab up)")
        return self._vm

    def _run(self, command: str, what: str, timeout: float = 60.0, stdin: bytes | None = None) -> str:
        try:
            done = self._server().run(command, timeout=timeout, stdin=stdin)
        except (NodeUnreachable, ServerVmError, OSError) as err:
            raise NfsServerError(f"lab {self.lab_name}: {what}: the server VM does not answer: {err}") from err
        if not done.ok:
            raise NfsServerError(f"lab {self.lab_name}: {what} failed: {(done.stderr or done.stdout).strip()[-800:]}")
        return done.stdout

    # -- where -----------------------------------------------------------------------------------

    def _route(self, node: str) -> NfsRoute:
        route = self.routes.get(node)
        if route is None:
            raise NfsServerError(f"lab {self.lab_name} has no export for node {node!r}")
        return route

    def where(self) -> str:
        return f"knfsd in the server VM of lab {self.lab_name} at {self._server_address}:{NFS_PORT} (lab network)"

    def export(self) -> NfsExport:
        return NfsExport(self._server_address, NFS_PORT, self.export_dir)

    @property
    def _server_address(self) -> str:
        """The server's lab address (every node's route names the same one)."""
        return next(iter(self.routes.values())).server_address if self.routes else ""

    def node_export(self, node: str) -> NfsExport:
        route = self._route(node)
        return NfsExport(route.server_address, route.server_port, f"{self.export_dir}/{node}")

    def data_path(self, node: str) -> str:
        route = self._route(node)
        return (
            f"lab network {route.lab_subnet}: {route.client_address} (tap-{node}) -> "
            f"knfsd {route.server_address}:{route.server_port}"
        )

    def exports_listed(self) -> str:
        """What ``exportfs -v`` in the server VM lists (each export with its client and options)."""
        return self._run("exportfs -v", "exportfs -v")

    def describe_server(self, node: str) -> dict[str, str]:
        """Which server served ``node``: backend, address, kernel and the export's options."""
        route = self._route(node)
        kernel = self._run("uname -r", "uname").strip()
        listed = self.exports_listed()
        return {
            "backend": "knfsd",
            "address": f"{route.server_address}:{route.server_port}",
            "kernel": kernel,
            "export": f"{self.export_dir}/{node}",
            "export_options": export_options(listed, f"{self.export_dir}/{node}"),
        }

    # -- swap files ------------------------------------------------------------------------------

    def _swap_op(self, op: str, node: str, name: str, size_mib: int = 0) -> dict[str, Any]:
        validate_swap_name(name)
        self._route(node)  # a node of this lab: its name is one the model accepted
        argv = ["python3", "-", op, self.export_dir, node, name, str(size_mib << 20)]
        out = self._run(shlex.join(argv), f"swap file {op} for {node}", SWAP_TIMEOUT_S, _SWAP_SCRIPT.encode())
        try:
            answer = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError) as err:
            raise NfsServerError(f"lab {self.lab_name}: swap file {op}: unreadable answer {out[-200:]!r}") from err
        if not isinstance(answer, dict):
            raise NfsServerError(f"lab {self.lab_name}: swap file {op}: unexpected answer {answer!r}")
        return answer

    def create_swap_file(self, node: str, name: str, size_mib: int) -> str:
        made = self._swap_op("create", node, name, size_mib)
        if made.get("allocated", 0) < size_mib << 20:
            raise NfsServerError(f"lab {self.lab_name}: swap file for {node} is not fully allocated: {made}")
        return f"{self.export_dir}/{node}/{name} on the server VM of lab {self.lab_name}"

    def written_pages(self, node: str, name: str, size_mib: int) -> int | None:
        answer = self._swap_op("pages", node, name, size_mib)
        if "refused" in answer:
            raise NfsServerError(f"{node}'s swap file {name} is now {answer['refused']}: not read")
        pages = answer.get("pages")
        return pages if isinstance(pages, int) else None

    def remove_swap_file(self, node: str, name: str) -> None:
        self._swap_op("remove", node, name)

    # -- the log ---------------------------------------------------------------------------------

    def _log(self) -> bytes:
        return self._run(_LOG_COMMAND, "reading the server's journal").encode()

    def log_end(self) -> int:
        return len(self._log())

    def read_log(self, offset: int, limit: int) -> bytes:
        return self._log()[offset:][-limit:]

    def describe_log(self) -> str:
        return f"the server VM's journal (kernel, rpc.mountd, nfs-server) of lab {self.lab_name}"


# A prio root whose default priomap uses bands 1-3 only: band 4 (with the netem) gets
# what a node's filter sends it, nothing else.
_PRIO = "prio bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1"


def _lab_nic(server_address: str) -> str:
    ipaddress.IPv4Address(server_address)  # only an address reaches the shell
    return (
        f"dev=$(ip -o -4 addr show | awk '$4 ~ /^{re.escape(server_address)}\\//{{print $2; exit}}')\n"
        '[ -n "$dev" ] || { echo "no lab NIC" >&2; exit 1; }\n'
    )


def _filter_prio(address: str) -> int:
    """A filter priority of the node's own (1..255: the last octet of its address)."""
    return int(ipaddress.IPv4Address(address)) & 0xFF or 1


def delay_script(server_address: str, address: str, ms: float) -> str:
    """Shell lines for the server VM: delay what its lab NIC sends ``address`` by ``ms``."""
    ipaddress.IPv4Address(address)
    return (
        "set -e\n"
        + _lab_nic(server_address)
        + f'tc qdisc show dev "$dev" | grep -q "qdisc prio 5e:" || tc qdisc add dev "$dev" root handle 5e: {_PRIO}\n'
        + f'tc qdisc replace dev "$dev" parent 5e:4 handle 5f: netem delay {float(ms):g}ms limit 100000\n'
        + f'tc filter add dev "$dev" parent 5e: protocol ip prio {_filter_prio(address)} '
        + f"u32 match ip dst {address}/32 flowid 5e:4\n"
    )


def undelay_script(server_address: str, address: str) -> str:
    """Shell lines for the server VM: end the delay to ``address`` (idempotent)."""
    ipaddress.IPv4Address(address)
    return (
        _lab_nic(server_address)
        + f'tc filter del dev "$dev" parent 5e: protocol ip prio {_filter_prio(address)} 2>/dev/null || true\n'
        + 'tc filter show dev "$dev" parent 5e: | grep -q . || tc qdisc del dev "$dev" root handle 5e: 2>/dev/null || true\n'
    )


def clear_delays_script(server_address: str) -> str:
    """Shell lines for the server VM: remove every latency fault's qdisc (idempotent)."""
    return _lab_nic(server_address) + 'tc qdisc del dev "$dev" root handle 5e: 2>/dev/null || true\n'


def export_options(exportfs_v: str, path: str) -> str:
    """The options ``exportfs -v`` lists for ``path`` ("10.77.0.11/32(sync,wdelay,...)")."""
    words = exportfs_v.split()
    for at, word in enumerate(words):
        if word == path and at + 1 < len(words):
            return words[at + 1]
    return ""


@register_backend("knfsd")
def _make_knfsd(lab: str, settings: dict[str, Any]) -> KnfsdServer:
    return KnfsdServer(lab, settings)
