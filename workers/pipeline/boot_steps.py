"""Node steps for nodes swaplab boots: take the image the run prepared, power on, wait for SSH."""

from __future__ import annotations

import time

from model.figures import GUEST_ICOUNT_SHIFT
from workers.drivers.base import BootSpec, DriverError, PowerControl
from workers.exporter import BOOT_SECONDS
from workers.image import cached_image, lab_keys
from workers.lab import network
from workers.node_ssh import NodeShell, NodeUnreachable, SshTarget
from workers.pipeline import evidence
from workers.pipeline.context import NodeContext
from workers.pipeline.step import LabFault, Step


class PreparedImageStep(Step[NodeContext]):
    """The node image the run's setup built (kernel + initramfs), from this host's cache."""

    provides = frozenset({"image", "sizes"})
    name = "image"
    phase = "image"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        prepared = ctx.spec.prepared
        if prepared is None:
            raise LabFault("the run was not prepared: no node image to boot")
        image = cached_image(prepared.image_hash)
        if image is None:
            # Images are per host: a node task on a host other than the one that prepared the
            # run does not find it (multi-host labs share the cache directory, or prepare per host).
            raise LabFault(f"node image {prepared.image_hash[:12]} is not in this worker's cache")
        ctx.image = image
        ctx.result.kernel = {
            "package": prepared.package,
            "version": prepared.version,
            "kver": prepared.kver,
            "source": prepared.source,
        }
        ctx.result.image_hash = prepared.image_hash
        if ctx.spec.ram_mib is None:
            raise LabFault("a node swaplab boots needs a RAM size in its run spec")
        ctx.ram_mib = ctx.result.ram_mib = ctx.spec.ram_mib
        ctx.workload_mib = ctx.spec.workload.touch_mib(ctx.spec.ram_mib)
        ctx.result.planned_overcommit_mib = ctx.spec.planned_overcommit_mib
        ctx.begin_metrics(prepared.kver)


class BootStep(Step[NodeContext]):
    """Power the node on with the image and wait until its sshd answers; power off at cleanup."""

    needs = frozenset({"image"})
    provides = frozenset({"shell"})
    name = "boot"
    phase = "boot"

    def __init__(self, driver: PowerControl) -> None:
        self.driver = driver
        self.powered = False

    def timeout_s(self, ctx: NodeContext) -> float:
        return float(ctx.spec.boot_timeout_s)

    def describe(self, ctx: NodeContext) -> str:
        kver = ctx.image.kver if ctx.image else "?"
        return f"{kver}, {ctx.spec.ram_mib} MiB RAM"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        ctx.result.console_source = "serial console (captured by the driver)"
        try:
            powered_on = time.monotonic()
            self.powered = True
            self.driver.power_on(self._boot_spec(ctx), ctx.console)
        except DriverError as err:
            raise LabFault(str(err)) from err
        finally:
            ctx.result.boot = self.driver.boot_record()
        target = self._ssh_target(ctx)
        try:
            ctx.shell = NodeShell.wait_ready(target, deadline, ctx.keep_waiting)
        except NodeUnreachable as err:
            raise evidence.boot_failure(ctx, str(err)) from err
        BOOT_SECONDS.labels(ctx.lab.name, ctx.name, ctx.result.kernel.get("kver", "")).observe(
            time.monotonic() - powered_on
        )

    def cleanup(self, ctx: NodeContext) -> None:
        if ctx.shell is not None:
            ctx.shell.close()
        if self.powered:
            self.driver.power_off()

    def _boot_spec(self, ctx: NodeContext) -> BootSpec:
        assert ctx.image is not None and ctx.spec.ram_mib is not None and ctx.spec.cpus is not None
        node_id = f"swaplab-{ctx.lab.name}-{ctx.name}-{ctx.spec.run_id}"
        cmdline = (
            f"{self.driver.kernel_console_args()} printk.time=1 mitigations=off zswap.enabled=0 "
            f"swaplab.hostname={ctx.name} swaplab.nfs4_id={node_id}"
        )
        shift = GUEST_ICOUNT_SHIFT if ctx.spec.timing == "guest" else None
        return BootSpec(ctx.image.kernel, ctx.image.initrd, cmdline, ctx.spec.ram_mib, ctx.spec.cpus, shift)

    def _ssh_target(self, ctx: NodeContext) -> SshTarget:
        # The lab generated the node's host key and login key itself: pin both.
        keys = lab_keys(ctx.lab.name)
        host, port = self.driver.ssh_address()
        return SshTarget(host, port, "root", key_file=keys.client_private, host_key=keys.host_public)


class BootedKernelStep(Step[NodeContext]):
    """Proof of what booted: the node's own ``uname -r``, ``uname -v`` and /proc/version,
    checked against the image it was given. Anything else booted is the lab's fault."""

    needs = frozenset({"shell"})
    name = "booted"
    phase = "boot"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None and ctx.spec.prepared is not None
        said = _read_back(ctx, deadline)
        ctx.result.kernel.update(said)
        prepared = ctx.spec.prepared
        if prepared.artifact:
            ctx.result.kernel["artifact"] = prepared.artifact
        if said["uname_r"] != prepared.kver:
            raise LabFault(f"the node booted {said['uname_r']!r}, not the image's {prepared.kver!r}")
        if prepared.uts_version is not None and said["uname_v"] != prepared.uts_version:
            raise LabFault(
                f"the node booted version {said['uname_v']!r}, not the build's {prepared.uts_version!r} "
                f"(artifact {str(prepared.artifact)[:12]})"
            )


READ_BACK = {"uname_r": "uname -r", "uname_v": "uname -v", "proc_version": "cat /proc/version"}


def _read_back(ctx: NodeContext, deadline: float) -> dict[str, str]:
    """READ_BACK in one command (one line each). A node that just came up on a busy host
    may not start a command within the connect timeout: that is retried until ``deadline``."""
    command = "; ".join(READ_BACK.values())
    while True:
        try:
            lines = ctx.output(command).splitlines()
            break
        except NodeUnreachable:
            if time.monotonic() + 1.0 >= deadline:
                raise
            time.sleep(1.0)
    if len(lines) != len(READ_BACK):
        raise LabFault(f"`{command}` printed {len(lines)} line(s), not {len(READ_BACK)}: {lines!r}"[:500])
    return dict(zip(READ_BACK, (line.strip() for line in lines), strict=True))


class LabLinkStep(Step[NodeContext]):
    """The node's NIC on the lab network (found by the MAC QEMU gave it) takes the node's
    lab address; its NFS traffic goes over it, its SSH stays on the management NIC."""

    needs = frozenset({"shell"})
    name = "lab-link"
    phase = "boot"

    def describe(self, ctx: NodeContext) -> str:
        route = ctx.driver.node.nfs_route
        return f"lab network address {route.client_address if route else '?'}"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None
        route = ctx.driver.node.nfs_route
        if route is None or route.lab_subnet is None:
            raise LabFault(f"node {ctx.name} is not on a lab network")
        port, net = network.node_port(ctx.lab.name, route)
        command = network.guest_link_command(port.mac, f"{port.address}/{net.subnet.prefixlen}")
        done = ctx.shell.run(command, timeout=max(5.0, deadline - time.monotonic()))
        if not done.ok:
            raise LabFault(f"lab network: {(done.stderr or done.stdout).strip()}")
