"""Whose fault is it? The rules that turn what a session saw into a typed failure, in one
place (docs/ARCHITECTURE.md, "Verdicts and exit codes"): by cause, never by timing.

- A crash (panic, oops, BUG) on the console is the kernel's, at boot or later.
- The machine gone (QEMU exited) without crash evidence is the lab's.
- The NFS server gone is the lab's.
- A node that stops answering while the lab can see its machine run and the NFS server
  serves is hung: the kernel's, with the last console line and the last sample time.
- A node that stops answering where the lab cannot see the machine (no power control):
  the kernel's only with console evidence (hung task, crash); otherwise the lab's, and the
  node leaves the pool until a person says it is back.
"""

from __future__ import annotations

import time

from model.console import KERNEL_FAILURE_KINDS, ConsoleEvent, EventKind, parse_console
from workers.drivers.base import MachineState
from workers.pipeline.context import NodeContext
from workers.pipeline.step import KernelFault, LabFault, StepFailure

READY_MARKER = "swaplab: ready"
IMAGE_ERROR_MARKER = "swaplab: ERROR"
CRASH_KINDS = frozenset({EventKind.PANIC, EventKind.OOPS})
HANG_KINDS = frozenset({EventKind.HUNG_TASK, *CRASH_KINDS})


def first_event(text: str, kinds: frozenset[EventKind]) -> ConsoleEvent | None:
    """The first console event of one of ``kinds``."""
    return next((event for event in parse_console(text) if event.kind in kinds), None)


def kernel_failure_lines(text: str) -> list[str]:
    """Console lines of every kernel health event (panic, oops, OOM, swap errors ...)."""
    return [event.text for event in parse_console(text) if event.kind in KERNEL_FAILURE_KINDS]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing on the console)"


def boot_failure(ctx: NodeContext, ssh_error: str) -> StepFailure:
    """Why a booted node never answered SSH within its boot timeout."""
    text = ctx.console_text()
    crash = first_event(text, CRASH_KINDS)
    if crash is not None:
        return KernelFault(f"kernel crashed while booting: {crash.text}")
    ctx.check_stop()  # cancelled or aborted: that, not a verdict on the boot
    if ctx.driver.machine_state() is MachineState.STOPPED:
        return LabFault(f"node machine stopped while booting: {ctx.driver.exit_reason()}")
    image_errors = [line.strip() for line in text.splitlines() if IMAGE_ERROR_MARKER in line]
    if image_errors:
        return LabFault(f"node image failed at boot: {image_errors[0]}")
    if READY_MARKER in text:
        return LabFault(f"node is up but SSH fails (keys, network?): {ssh_error}")
    return KernelFault(
        f"kernel did not reach userspace within {ctx.spec.boot_timeout_s} s; console went silent at: {last_line(text)!r}"
    )


def machine_or_server_gone(ctx: NodeContext) -> StepFailure | None:
    """The failure when the node's machine or the lab's NFS server is gone, else None."""
    if ctx.driver.machine_state() is MachineState.STOPPED:
        crash = first_event(ctx.console_text(), CRASH_KINDS)
        if crash is not None:
            return KernelFault(f"kernel crashed: {crash.text}")
        return LabFault(f"node machine stopped: {ctx.driver.exit_reason()}")
    if ctx.nfs is not None and not ctx.nfs.is_serving():
        return LabFault("the lab's NFS server stopped serving during the run")
    return None


def stopped_answering(ctx: NodeContext) -> StepFailure:
    """The node no longer answers SSH: decide, from the machine and the console, whose fault."""
    ctx.unreachable = True
    gone = machine_or_server_gone(ctx)
    if gone is not None:
        return gone
    text = ctx.console_text()
    when = _last_sample_time(ctx)
    link = _link_probe(ctx)
    if ctx.driver.machine_state() is MachineState.RUNNING and link is not False:
        return KernelFault(
            "node stopped answering while its machine and the NFS server were up (hang); "
            f"last sample at {when}; last console line: {last_line(text)!r}"
        )
    # No power control, or a machine whose link did not answer either (a switch or cable
    # can fail where QEMU's cannot): nothing but the console can say it was the kernel.
    evidence = first_event(text, HANG_KINDS)
    if evidence is not None:
        return KernelFault(
            f"node stopped answering (last sample at {when}); its console shows: {evidence.text}", takes_node_out=True
        )
    return LabFault(
        f"node stopped answering (last sample at {when}) and nothing on its console blames the kernel "
        f"[console: {ctx.result.console_source or 'none'}]; it is out of the pool until `swaplab lab back {ctx.name}`",
        takes_node_out=True,
    )


def _link_probe(ctx: NodeContext) -> bool | None:
    """Whether the node's link answered a probe from the lab's side (a machine's driver
    probes it); None when the driver has no such probe (a QEMU guest's link cannot fail)."""
    probe = getattr(ctx.driver, "link_alive", None)
    return None if probe is None else bool(probe())


def _last_sample_time(ctx: NodeContext) -> str:
    """When the node last sent a sample, and how long it has been silent since."""
    last = ctx.sampler.last_host_time() if ctx.sampler is not None else None
    if not last:
        return "before the first sample"
    return f"{time.strftime('%H:%M:%S', time.localtime(last))}, silent for {time.time() - last:.0f} s"
