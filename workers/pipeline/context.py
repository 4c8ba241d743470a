"""What the steps of one node session share: the spec, the result being filled in, the
collaborators (progress, barrier, cancel check), and what earlier steps set up for later
ones (driver, shell, NFS server, sampler, metric series)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from model.lab import Lab, NodeConfig
from model.runspec import NodeResult, NodeRunSpec
from workers.collab import Barrier, CancelCheck, Progress
from workers.console_log import ConsoleLog, read_head_tail
from workers.coordination.streams import ConsoleTail, SamplerStream
from workers.drivers.base import MachineState, NodeAccess
from workers.exporter import BOOT_SECONDS, NODES, NodeSeries
from workers.image import NodeImage
from workers.lab.nfs import NfsServer
from workers.node_ssh import CommandResult, NodeShell
from workers.pipeline.step import Aborted, Cancelled, LabFault
from workers.samples import Record

MOUNT_POINT = "/mnt/swaplab"
# Where a booted node's image has the tool; nodes that run already get a copy here.
IMAGE_TOOL = "/usr/bin/swaplab-node"
COPIED_TOOL_DIR = "/run/swaplab"


@dataclass
class NodeContext:
    """The state of one node session, passed to every step."""

    spec: NodeRunSpec
    progress: Progress
    barrier: Barrier
    cancel: CancelCheck
    # The lab and node as this worker's own inventory describes them (never the message).
    lab: Lab
    node: NodeConfig
    driver: NodeAccess
    result: NodeResult
    dir: Path
    # The node outlives the run (it is not ours to power off): leave it as found.
    persistent: bool = False
    phase: str = "start"
    image: NodeImage | None = None
    nfs: NfsServer | None = None
    shell: NodeShell | None = None
    tool: str = IMAGE_TOOL
    ram_mib: int | None = None
    workload_mib: int | None = None
    sampler: SamplerStream | None = None
    series: NodeSeries | None = None
    passed_barrier: bool = False
    start_at_ns: int | None = None
    # Set once the node stopped answering: cleanups then skip commands on it.
    unreachable: bool = False
    # Until when (epoch s) this session's own faults excuse a node that makes no progress;
    # and the run's server faults another session injects (it tells this one).
    faults_quiet_until: float = 0.0
    observed_quiet_until: float = 0.0
    console_tail: ConsoleTail = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ConsoleLog.forget(self.console)  # a console of an earlier session here is not this one's
        self.console_tail = ConsoleTail(self.console)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def swap_name(self) -> str:
        # Unique per campaign, run and node: runs of several campaigns share the export.
        return f"swap.{self.spec.campaign}.{self.spec.run_id}.{self.name}"

    @property
    def swap_path(self) -> str:
        return f"{MOUNT_POINT}/{self.swap_name}"

    def note(self, text: str) -> None:
        """A progress line under the current phase."""
        self.progress.phase(self.name, self.phase, text)

    def console_text(self) -> str:
        """The console as text, never the whole of a big one: its first and last 2 MiB
        (console.log is kept smaller than that on disk anyway)."""
        return read_head_tail(self.console)

    def machine_running(self) -> bool:
        """False only when the lab knows the machine is gone (unknown counts as running)."""
        return self.driver.machine_state() is not MachineState.STOPPED

    def check_stop(self) -> None:
        """Raise Cancelled or Aborted when the run must stop (checked between steps and while waiting)."""
        if self.cancel():
            raise Cancelled("cancelled")
        broken = None if self.passed_barrier else self.barrier.broken()
        if broken:
            raise Aborted(f"run aborted before the start: {broken}")

    def keep_waiting(self) -> bool:
        """While booting or connecting: the machine runs, nobody cancelled, no node failed."""
        return self.machine_running() and not self.cancel() and self.barrier.broken() is None

    def quiet_until(self) -> float:
        """Until when (epoch s) a fault excuses a node that is silent or makes no progress."""
        return max(self.faults_quiet_until, self.observed_quiet_until)

    def output(self, command: str) -> str:
        """stdout of a command that must work on any node; LabFault otherwise."""
        assert self.shell is not None
        done = self.shell.run(command, timeout=30)
        if not done.ok:
            raise LabFault(f"`{command}` failed on the node: {(done.stderr or done.stdout).strip()}")
        return done.stdout.strip()

    def remote(self, command: str, timeout: float = 30.0) -> CommandResult | None:
        """Run a command on the node for a cleanup; None when the node is known unreachable."""
        if self.shell is None or self.unreachable:
            return None
        return self.shell.run(command, timeout=timeout)

    # -- metrics ---------------------------------------------------------------------------
    def begin_metrics(self, kver: str) -> None:
        """The node's series, born at zero before the node runs anything of the test.

        Prometheus scrapes the baseline, so even an OOM kill in the workload's first second
        is an increase of the counter.
        """
        labels = {"lab": self.lab.name, "node": self.name, "kernel": kver, "scenario": self.spec.workload.name}
        self.series = NODES.begin(**labels)
        BOOT_SECONDS.labels(self.lab.name, self.name, kver)  # its buckets, at zero, before the first boot
        self.series.phase = self.phase
        self.result.metrics_labels = labels
        self.result.metrics_from = time.time()

    def on_sample(self, record: Record) -> None:
        if self.series is not None:
            self.series.update_sample(record)
            self.count_console()

    def count_console(self, final: bool = False) -> None:
        if self.series is None:
            return
        for kind, count in self.console_tail.new_counts(final).items():
            self.series.console[kind.value] += count
