"""Node steps for nodes that run already (kdevops, a provisioning system, a person installed
the kernel): log in, capture a console, read the kernel back, check the node is fit and
sized for the workload, and put ``swaplab-node`` on it. The node outlives the run: every
step's cleanup leaves it as it was found, and FitnessStep checks that at the end.
"""

from __future__ import annotations

import hashlib
import shlex
import time

from model.limits import HOG_MIB_MAX, HOG_MIB_MIN
from workers.console_capture import CommandCapture, ConsoleCapture, FileFollower, KmsgCapture
from workers.drivers.base import AlreadyRunning
from workers.image import node_tool_binary
from workers.node_ssh import NodeShell, NodeUnreachable
from workers.pipeline.context import COPIED_TOOL_DIR, MOUNT_POINT, NodeContext
from workers.pipeline.step import InputFault, LabFault, Step

CONNECT_S = 60.0
TOOL_ARCH = "x86_64"  # swaplab-node is built static for the worker's own architecture


class ConnectStep(Step[NodeContext]):
    """Log in with the node's own credentials; an unknown host key is refused."""

    provides = frozenset({"shell"})
    name = "connect"
    phase = "connect"

    def __init__(self, driver: AlreadyRunning) -> None:
        self.driver = driver

    def timeout_s(self, ctx: NodeContext) -> float:
        return CONNECT_S

    def describe(self, ctx: NodeContext) -> str:
        return f"ssh {self.driver.ssh_target().where}"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        try:
            ctx.shell = NodeShell.wait_ready(self.driver.ssh_target(), deadline, ctx.keep_waiting)
        except NodeUnreachable as err:
            ctx.check_stop()
            # Nobody can power-cycle it: the node is out of the pool until a person says.
            raise LabFault(f"node does not answer: {err}", takes_node_out=True) from err

    def cleanup(self, ctx: NodeContext) -> None:
        if ctx.shell is not None:
            ctx.shell.close()


class ConsoleStep(Step[NodeContext]):
    """Capture the lab's console for the node, else its kernel log over SSH."""

    needs = frozenset({"shell"})
    name = "console"
    phase = "connect"

    def __init__(self, driver: AlreadyRunning) -> None:
        self.driver = driver
        self.capture: ConsoleCapture | None = None

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None
        spec = self.driver.console()
        if spec.file is not None:
            self.capture = FileFollower(spec.file, ctx.console)
        elif spec.command:
            self.capture = CommandCapture(spec.command, ctx.console)
        else:
            self.capture = KmsgCapture(ctx.shell, ctx.console)
        ctx.result.console_source = self.capture.source
        ctx.note(f"console: {self.capture.source}")

    def cleanup(self, ctx: NodeContext) -> None:
        if self.capture is not None:
            time.sleep(0.5)  # the last lines of a failing node are the ones that matter
            self.capture.stop()


class IdentifyKernelStep(Step[NodeContext]):
    """Read the running kernel back and check it is the one the campaign expects."""

    needs = frozenset({"shell"})
    name = "kernel"
    phase = "connect"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None
        release = ctx.output("uname -r")
        version = ctx.output("uname -v")
        ctx.result.kernel = {
            "package": "running",
            "version": version,
            "kver": release,
            "source": "running on the node",
            "uname_r": release,
            "uname_v": version,
            "proc_version": ctx.output("cat /proc/version"),
        }
        ctx.note(f"runs {release} ({version})")
        if not ctx.spec.kernel.accepts_release(release):
            raise InputFault(f"node runs kernel {release}; the campaign expects {ctx.spec.kernel.running}")
        ctx.begin_metrics(release)


class FitnessStep(Step[NodeContext]):
    """The node is fit for the run (no other swap, an NFSv4 client, no leftovers), its RAM
    sizes the workload; at cleanup, check it is left as found."""

    needs = frozenset({"shell"})
    provides = frozenset({"sizes"})
    name = "fitness"
    phase = "connect"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        cleaned = _clean_leftovers(ctx)
        if cleaned:
            ctx.note(f"cleaned up after an earlier run: {', '.join(cleaned)}")
        other_swap = [line.split()[0] for line in ctx.output("cat /proc/swaps").splitlines()[1:] if line.strip()]
        if other_swap:
            raise LabFault(f"node is not fit: other swap is active ({', '.join(other_swap)})")
        if not ctx.shell or not ctx.shell.run("grep -qw nfs4 /proc/filesystems || modprobe nfsv4", timeout=30).ok:
            raise LabFault("node is not fit: no NFSv4 client (nfs4 not in /proc/filesystems, modprobe nfsv4 failed)")
        self._size_workload(ctx)

    def cleanup(self, ctx: NodeContext) -> None:
        if ctx.unreachable:
            raise RuntimeError("node stopped answering: it may hold swaplab's swap, mount or processes")
        left = _leftovers(ctx)
        if left:
            raise RuntimeError(f"left on the node: {', '.join(left)}")

    @staticmethod
    def _size_workload(ctx: NodeContext) -> None:
        mem_kib = int(ctx.output("grep MemTotal /proc/meminfo").split()[1])
        ram = mem_kib // 1024
        work = ctx.spec.workload
        touch = work.touch_mib(ram)
        overcommit = touch - ram
        ctx.ram_mib, ctx.workload_mib = ram, touch
        ctx.result.ram_mib, ctx.result.planned_overcommit_mib = ram, overcommit
        if not HOG_MIB_MIN <= touch <= HOG_MIB_MAX:
            raise InputFault(
                f"workload touches {touch} MiB; the node's workload tool takes {HOG_MIB_MIN}..{HOG_MIB_MAX}"
            )
        if overcommit <= 0:
            raise InputFault(f"workload touches {touch} MiB, which fits in the node's {ram} MiB: nothing would swap")
        if overcommit > ctx.spec.swap_mib and not work.allow_oom:
            raise InputFault(
                f"workload touches {touch} MiB on a node with {ram} MiB: {overcommit} MiB beyond RAM does not fit in "
                f"{ctx.spec.swap_mib} MiB of swap (allow_oom is off)"
            )


class InstallToolStep(Step[NodeContext]):
    """Copy the static ``swaplab-node`` to the node and check it by hash; remove it at the end."""

    needs = frozenset({"shell"})
    name = "tool"
    phase = "connect"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        arch = ctx.output("uname -m")
        if arch != TOOL_ARCH:
            raise LabFault(f"node is {arch}; swaplab-node is built for {TOOL_ARCH}")
        binary = node_tool_binary().read_bytes()
        digest = hashlib.sha256(binary).hexdigest()
        target = f"{COPIED_TOOL_DIR}/swaplab-node"
        assert ctx.shell is not None
        copied = ctx.shell.run(
            f"mkdir -p {COPIED_TOOL_DIR} && cat > {target}.part && chmod 755 {target}.part && mv {target}.part {target}",
            timeout=60,
            stdin=binary,
        )
        if not copied.ok:
            raise LabFault(f"copying swaplab-node failed: {(copied.stderr or copied.stdout).strip()}")
        remote = ctx.output(f"sha256sum {target}").split()[0]
        if remote != digest:
            raise LabFault(f"swaplab-node on the node has sha256 {remote[:16]}…, expected {digest[:16]}…")
        ctx.tool = target
        ctx.note(f"swaplab-node copied ({len(binary) // 1024} KiB, sha256 {digest[:12]} checked)")

    def cleanup(self, ctx: NodeContext) -> None:
        ctx.remote(f"pkill -x swaplab-node; sleep 0.5; pkill -9 -x swaplab-node; rm -rf {COPIED_TOOL_DIR}; true")


def _leftovers(ctx: NodeContext) -> list[str]:
    """What an earlier run of swaplab may have left: its swap, its mount, its processes, its tool."""
    assert ctx.shell is not None
    probe = (
        f"grep -F {shlex.quote(MOUNT_POINT + '/')} /proc/swaps | cut -d' ' -f1; "
        f"grep -F ' {MOUNT_POINT} ' /proc/mounts | cut -d' ' -f2; "
        "pgrep -x swaplab-node | sed 's/^/pid /'; "
        f"test -e {COPIED_TOOL_DIR} && echo {COPIED_TOOL_DIR}; true"
    )
    return [line.strip() for line in ctx.shell.run(probe, timeout=30).stdout.splitlines() if line.strip()]


def _clean_leftovers(ctx: NodeContext) -> list[str]:
    left = _leftovers(ctx)
    if not left:
        return []
    assert ctx.shell is not None
    ctx.shell.run(
        "pkill -9 -x swaplab-node; "
        f"for f in $(grep -F {shlex.quote(MOUNT_POINT + '/')} /proc/swaps | cut -d' ' -f1); do swapoff $f; done; "
        f"grep -qF ' {MOUNT_POINT} ' /proc/mounts && umount {MOUNT_POINT}; rm -rf {COPIED_TOOL_DIR}; true",
        timeout=180,
    )
    still = _leftovers(ctx)
    if still:
        raise LabFault(f"node is not fit: an earlier run left {', '.join(still)} and it could not be removed")
    return left
