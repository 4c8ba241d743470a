"""Node steps that set up swap over NFS: the node's swap file on the lab's server, the
node's clock offset, sysctls, the NFS mount, swapon, and the sampler.

On a node that outlives the run (``ctx.persistent``) every cleanup puts back what its
step changed; a booted node is powered off instead, so only swapoff and an unmount (which
hands the server back its NFSv4 state) are done there.
"""

from __future__ import annotations

import contextlib
import shlex
import time

from model.figures import figures_over, node_series, window_between
from model.runspec import NfsServerInfo
from workers.coordination.streams import SamplerStream
from workers.lab.nfs import NfsServerError, make_nfs_server
from workers.node_ssh import NodeUnreachable
from workers.pipeline import evidence
from workers.pipeline.context import MOUNT_POINT, NodeContext
from workers.pipeline.step import KernelFault, LabFault, Step

SAMPLER_FIRST_TICK_S = 15.0
# The server's log written during a node's run, kept with its result: its last MiB at most.
SERVER_LOG_MAX = 1 << 20
CLOCK_ALIVE_PROBE_S = 10.0
# A node that cannot unmount in this time is powered off anyway (the server then waits out
# its lease before removing its swap file).
UMOUNT_BOOTED_TIMEOUT_S = 20.0  # clock-serve went silent: does the node still answer at all?


SWAP_FILE_TIMEOUT_S = 900.0


class SwapFileStep(Step[NodeContext]):
    """The node's swap file on the lab's NFS server (which the run's setup made sure serves)."""

    provides = frozenset({"nfs"})
    name = "swap-file"
    phase = "nfs"

    def __init__(self) -> None:
        self.log_offset = 0

    def describe(self, ctx: NodeContext) -> str:
        return f"{ctx.spec.swap_mib} MiB swap file on the {ctx.lab.nfs_backend} server of lab {ctx.lab.name}"

    def timeout_s(self, ctx: NodeContext) -> float:
        # A knfsd server VM under TCG allocates and mkswaps the file over SSH (up to 10 min).
        return SWAP_FILE_TIMEOUT_S

    def cleanup_timeout_s(self, ctx: NodeContext) -> float:
        # ... and reads it back to count the pages the node wrote.
        return SWAP_FILE_TIMEOUT_S

    def run(self, ctx: NodeContext, deadline: float) -> None:
        try:
            ctx.nfs = make_nfs_server(ctx.lab.nfs_backend, ctx.lab.name, ctx.lab.nfs_settings)
            if not ctx.nfs.is_serving():
                raise LabFault(f"the NFS server of lab {ctx.lab.name} is not serving")
            self.log_offset = ctx.nfs.log_end()
            # Figures depend on the way there (relay, addresses): the result says which it was.
            ctx.result.data_path = ctx.nfs.data_path(ctx.name)
            ctx.result.nfs_server = NfsServerInfo.model_validate(ctx.nfs.describe_server(ctx.name))
            ctx.nfs.create_swap_file(ctx.name, ctx.swap_name, ctx.spec.swap_mib)
        except (NfsServerError, OSError) as err:
            raise LabFault(f"NFS server: {err}") from err

    def cleanup(self, ctx: NodeContext) -> None:
        if ctx.nfs is None:
            return
        try:
            # Evidence from the server's side: the node's pages really landed there. The
            # node is root in its export: a file it replaced is refused unread.
            ctx.result.swap_file_nonzero_pages = ctx.nfs.written_pages(ctx.name, ctx.swap_name, ctx.spec.swap_mib)
        finally:
            ctx.nfs.remove_swap_file(ctx.name, ctx.swap_name)
            _keep_server_log(ctx, self.log_offset)


class ClockStep(Step[NodeContext]):
    """The node's clock offset from the host, measured over the open session."""

    needs = frozenset({"shell"})
    name = "clock"
    phase = "clock"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None
        try:
            offset = ctx.shell.clock_offset(ctx.tool, timeout_s=max(1.0, deadline - time.monotonic()))
        except NodeUnreachable as err:
            if ctx.shell.is_alive(timeout=CLOCK_ALIVE_PROBE_S):
                raise LabFault(f"clock: {err}") from err  # the node answers, its tool did not
            raise evidence.stopped_answering(ctx) from err
        ctx.result.clock_offset_ns, ctx.result.clock_uncertainty_ns = offset


class SysctlStep(Step[NodeContext]):
    """The campaign's vm.*/kernel.* tunables; a node that outlives the run gets its own back."""

    needs = frozenset({"shell"})
    name = "sysctl"
    phase = "mount"

    def __init__(self) -> None:
        self.saved: dict[str, str] = {}

    def describe(self, ctx: NodeContext) -> str:
        return f"NFS {ctx.spec.nfs.version}, swap {ctx.spec.swap_mib} MiB"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None
        for name, value in ctx.spec.sysctl.items():
            if ctx.persistent:
                old = ctx.shell.run(f"sysctl -n {shlex.quote(name)}", timeout=30)
                if not old.ok:
                    raise LabFault(f"sysctl {name} cannot be read: {(old.stderr or old.stdout).strip()}")
                self.saved[name] = old.stdout.strip()
            done = ctx.shell.run(f"sysctl -w {shlex.quote(f'{name}={int(value)}')}", timeout=30)
            if not done.ok:
                raise LabFault(f"sysctl {name}={value} failed: {(done.stderr or done.stdout).strip()}")

    def cleanup(self, ctx: NodeContext) -> None:
        for name, old in self.saved.items():
            done = ctx.remote(f"sysctl -w {shlex.quote(f'{name}={old}')}")
            if done is not None and not done.ok:
                raise RuntimeError(f"sysctl {name} not restored to {old}: {(done.stderr or done.stdout).strip()}")


class MountStep(Step[NodeContext]):
    """Mount the lab's export on the node."""

    needs = frozenset({"shell", "nfs"})
    provides = frozenset({"mount"})
    name = "mount"
    phase = "mount"

    def __init__(self) -> None:
        self.mounted = False

    def timeout_s(self, ctx: NodeContext) -> float:
        return 120.0

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None
        mounted = ctx.shell.run(self._command(ctx), timeout=120)
        if not mounted.ok:
            # The kernel's NFS client may be at fault, but a mount that never worked is
            # most often the lab's network or server: do not blame the kernel.
            raise LabFault(f"mount failed: {(mounted.stderr or mounted.stdout).strip()}")
        self.mounted = True

    def cleanup(self, ctx: NodeContext) -> None:
        if not self.mounted:
            return
        if not ctx.persistent:
            # Powered off next, but unmounted first: the client hands back its NFSv4
            # delegation of the swap file and ends its session. Powered off holding it, the
            # server (knfsd) waits out the client's lease, 90 s, before the file can go.
            with contextlib.suppress(NodeUnreachable):
                ctx.remote(f"umount {MOUNT_POINT}", timeout=UMOUNT_BOOTED_TIMEOUT_S)
            return
        done = ctx.remote(
            f"umount {MOUNT_POINT}; rmdir {MOUNT_POINT} 2>/dev/null; ! grep -qF ' {MOUNT_POINT} ' /proc/mounts",
            timeout=60,
        )
        if done is not None and not done.ok:
            raise RuntimeError(f"umount {MOUNT_POINT} failed: {(done.stderr or done.stdout).strip()}")

    @staticmethod
    def _command(ctx: NodeContext) -> str:
        assert ctx.nfs is not None
        export = ctx.nfs.node_export(ctx.name)
        options = [
            f"vers={ctx.spec.nfs.version}",
            "proto=tcp",
            f"port={export.port}",
            f"addr={export.server}",
            *ctx.spec.nfs.mount_options,
        ]
        source = f"{export.server}:{export.path}"
        return (
            f"mkdir -p {MOUNT_POINT} && mount -t nfs4 -o {shlex.quote(','.join(options))} "
            f"{shlex.quote(source)} {MOUNT_POINT}"
        )


class SwaponStep(Step[NodeContext]):
    """Swap on the NFS file; a refusal is the kernel's (the file is fine: the lab made it)."""

    needs = frozenset({"shell", "mount"})
    provides = frozenset({"swap"})
    name = "swapon"
    phase = "mount"

    def __init__(self) -> None:
        self.on = False

    def timeout_s(self, ctx: NodeContext) -> float:
        return 120.0

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None
        swapon = ctx.shell.run(f"swapon {shlex.quote(ctx.swap_path)}", timeout=120)
        if not swapon.ok:
            console = " | ".join(evidence.kernel_failure_lines(ctx.console_text()))
            raise KernelFault(f"kernel refused swapon: {swapon.stderr.strip()} {console}".strip())
        self.on = True

    def cleanup(self, ctx: NodeContext) -> None:
        if not self.on:
            return
        done = ctx.remote(f"swapoff {shlex.quote(ctx.swap_path)}", timeout=180)
        if done is not None and not done.ok:
            raise RuntimeError(f"swapoff failed: {(done.stderr or done.stdout).strip()}")


class SamplerStep(Step[NodeContext]):
    """The node's own counters every second, streamed to samples.jsonl and the exporter."""

    needs = frozenset({"shell"})
    provides = frozenset({"sampler"})
    name = "sampler"
    phase = "mount"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None
        ctx.sampler = SamplerStream(
            ctx.shell.open_channel(f"exec {ctx.tool} sample"), ctx.dir / "samples.jsonl", on_record=ctx.on_sample
        )
        if not ctx.sampler.wait_for_first(timeout_s=SAMPLER_FIRST_TICK_S):
            raise LabFault(f"the node's sampler sent nothing within {SAMPLER_FIRST_TICK_S:.0f} s")

    def cleanup(self, ctx: NodeContext) -> None:
        if ctx.sampler is None:
            return
        ctx.sampler.close()
        ctx.result.samples = ctx.sampler.count
        ctx.result.counters_first = ctx.sampler.first() or {}
        ctx.result.counters_last = ctx.sampler.latest() or {}
        samples = ctx.sampler.records()
        workload = ctx.result.workload
        ran = workload.host_window_s(guest_clock=ctx.spec.timing == "guest")
        window = window_between(samples, *ran) if ran is not None else None
        ctx.result.figures = figures_over(window, workload.elapsed_s)
        if window is not None:
            ctx.result.figures_from, ctx.result.figures_to = window.start, window.end
        ctx.result.series = node_series(samples, ran[0] if ran is not None else None)
        if ctx.series is not None:
            ctx.series.last_sample = None  # the sampler stopped on purpose: no age to report


def _keep_server_log(ctx: NodeContext, offset: int) -> None:
    assert ctx.nfs is not None
    with contextlib.suppress(NfsServerError, OSError):  # the server's log is evidence, not a requirement
        (ctx.dir / "nfs-server.log").write_bytes(ctx.nfs.read_log(offset, SERVER_LOG_MAX))
