"""One node, one run: boot diskless, swap over NFS, run the workload, collect evidence.

``run_node_session`` takes a JSON-able run spec and returns a JSON-able node result. Its
collaborators (progress, barrier, cancel check) are injected, so the same function runs in
the CLI's process or inside a Celery task. It never judges pass/fail: it classifies *why*
it had to stop (kernel, infra, aborted, cancelled) and hands the evidence on.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from orchestrator.console import KERNEL_FAILURE_KINDS, EventKind, parse_console
from workers.collab import Barrier, BarrierBroken, CancelCheck, Progress
from workers.drivers import DriverError, NodeConfig, NodeDriver, make_driver
from workers.drivers.base import BootSpec
from workers.exporter import BOOT_SECONDS, NODES, NodeSeries
from workers.image import LabKeys, NodeImage, build_node_image, lab_keys
from workers.kernel import fetch_kernel
from workers.nfs import NfsServer, NfsServerError, make_nfs_server
from workers.nfs.ganesha import nonzero_pages_after_header
from workers.node_ssh import NodeShell, NodeUnreachable
from workers.runspec import Failure, FailureCause, NodeResult, NodeRunSpec
from workers.samples import Record
from workers.streams import ConsoleTail, SamplerStream, WorkloadStream, workload_progress

MOUNT_POINT = "/mnt/swaplab"
READY_MARKER = "swaplab: ready"
IMAGE_ERROR_MARKER = "swaplab: ERROR"
BARRIER_TIMEOUT_S = 600.0


class SessionFailure(Exception):
    """Stop the session: ``cause`` says whose fault it is, ``reason`` what happened."""

    def __init__(self, cause: FailureCause, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason


def run_node_session(spec: dict[str, Any], progress: Progress, barrier: Barrier, cancel: CancelCheck) -> dict[str, Any]:
    """Run one node of one run end to end; JSON in, JSON out."""
    session = NodeSession(NodeRunSpec.model_validate(spec), progress, barrier, cancel)
    return session.run().model_dump(mode="json")


class NodeSession:
    """The steps of one node session; each method is one phase."""

    def __init__(self, spec: NodeRunSpec, progress: Progress, barrier: Barrier, cancel: CancelCheck) -> None:
        self.spec = spec
        self.name = spec.node.name
        self.progress = progress
        self.barrier = barrier
        self.cancel = cancel
        self.dir = Path(spec.result_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.result = NodeResult(run_id=spec.run_id, node=self.name)
        self.console = self.dir / "console.log"
        self.phase_name = "start"
        self.passed_barrier = False
        self.keys: LabKeys | None = None
        self.image: NodeImage | None = None
        self.nfs: NfsServer | None = None
        self.nfs_log_offset = 0
        self.driver: NodeDriver | None = None
        self.shell: NodeShell | None = None
        self.sampler: SamplerStream | None = None
        self.series: NodeSeries | None = None
        self.console_tail = ConsoleTail(self.console)

    # -- the whole session -------------------------------------------------------------
    def run(self) -> NodeResult:
        self.result.started_at = time.time()
        try:
            self._prepare()
            self._boot()
            self._mount()
            start_at = self._meet_at_barrier()
            self._run_workload(start_at)
            self._collect()
        except SessionFailure as failure:
            self._fail(failure.cause, failure.reason)
        except BarrierBroken as broken:
            self._fail("aborted", f"run aborted before the start: {broken}")
        except Exception as err:  # a bug or an unforeseen lab fault: never a hang, never a pass
            self._fail("infra", f"{type(err).__name__}: {err}")
        finally:
            self._teardown()
        return self.result

    def _fail(self, cause: FailureCause, reason: str) -> None:
        self.result.failure = Failure(cause=cause, phase=self.phase_name, reason=reason)
        self.progress.phase(self.name, self.phase_name, f"stopped ({cause}): {reason}")
        if not self.passed_barrier:
            self.barrier.abort(self.name, reason)

    @contextmanager
    def _phase(self, name: str, detail: str = "") -> Iterator[None]:
        self._check_stop()
        self.phase_name = name
        if self.series is not None:
            self.series.phase = name
        self.progress.phase(self.name, name, detail)
        started = time.monotonic()
        try:
            yield
        finally:
            self.result.phases[name] = round(time.monotonic() - started, 3)

    def _check_stop(self) -> None:
        if self.cancel():
            raise SessionFailure("cancelled", "cancelled")
        broken = None if self.passed_barrier else self.barrier.broken()
        if broken:
            raise SessionFailure("aborted", f"run aborted before the start: {broken}")

    def _keep_booting(self) -> bool:
        return self._driver_running() and not self.cancel() and (self.barrier.broken() is None)

    # -- phases ------------------------------------------------------------------------
    def _prepare(self) -> None:
        with self._phase("kernel", self.spec.kernel.label()):
            try:
                kernel = fetch_kernel(self.spec.kernel, progress=self._note)
            except Exception as err:
                raise SessionFailure("infra", f"kernel artifacts: {err}") from err
            self.result.kernel = {
                "package": kernel.package,
                "version": kernel.version,
                "kver": kernel.kver,
                "source": kernel.source,
            }
        self._begin_metrics(kernel.kver)
        with self._phase("image"):
            try:
                self.keys = lab_keys(self.spec.node.lab)
                self.image = build_node_image(kernel, self.keys, progress=self._note)
            except Exception as err:
                raise SessionFailure("infra", f"node image build: {err}") from err
            self.result.image_hash = self.image.image_hash
        with self._phase("nfs", f"{self.spec.nfs_backend} for lab {self.spec.node.lab}"):
            self._ensure_nfs()

    def _begin_metrics(self, kver: str) -> None:
        # Born at zero before the node boots: Prometheus scrapes the baseline, so even an
        # OOM kill in the workload's first second is an increase of the counter.
        labels = {"lab": self.spec.node.lab, "node": self.name, "kernel": kver, "scenario": self.spec.workload.name}
        self.series = NODES.begin(**labels)
        BOOT_SECONDS.labels(self.spec.node.lab, self.name, kver)  # its buckets, at zero, before the first boot
        self.series.phase = self.phase_name
        self.result.metrics_labels = labels
        self.result.metrics_from = time.time()

    def _on_sample(self, record: Record) -> None:
        if self.series is not None:
            self.series.update_sample(record)
            self._count_console()

    def _count_console(self, final: bool = False) -> None:
        if self.series is None:
            return
        for kind in self.console_tail.new_events(final):
            self.series.console[kind.value] += 1

    def _ensure_nfs(self) -> None:
        try:
            self.nfs = make_nfs_server(self.spec.nfs_backend, self.spec.node.lab, self.spec.nfs_settings)
            self.nfs.ensure_serving()
            self.nfs_log_offset = _file_size(self.nfs.log_path())
            self.nfs.create_swap_file(self._swap_name(), self.spec.swap_mib)
        except (NfsServerError, OSError) as err:
            raise SessionFailure("infra", f"NFS server: {err}") from err

    def _swap_name(self) -> str:
        # Unique per campaign, run and node: runs of several campaigns share the export.
        return f"swap.{self.spec.campaign}.{self.spec.run_id}.{self.name}"

    def _boot(self) -> None:
        assert self.image is not None and self.keys is not None
        with self._phase("boot", f"{self.image.kver}, {self.spec.ram_mib} MiB RAM"):
            node = self.spec.node
            config = NodeConfig(
                node.name,
                node.lab,
                node.driver,
                self.spec.ram_mib,
                self.spec.cpus,
                node.ssh_host,
                node.ssh_port,
                dict(node.options),
            )
            try:
                self.driver = make_driver(config, self.dir)
                powered_on = time.monotonic()
                self.driver.power_on(self._boot_spec(), self.console)
            except DriverError as err:
                raise SessionFailure("infra", str(err)) from err
            self._wait_for_ssh()
            BOOT_SECONDS.labels(node.lab, node.name, self.image.kver).observe(time.monotonic() - powered_on)

    def _boot_spec(self) -> BootSpec:
        assert self.image is not None
        node_id = f"swaplab-{self.spec.node.lab}-{self.name}-{self.spec.run_id}"
        cmdline = (
            "console=ttyS0 panic=-1 printk.time=1 mitigations=off zswap.enabled=0 "
            f"swaplab.hostname={self.name} swaplab.nfs4_id={node_id}"
        )
        return BootSpec(self.image.kernel, self.image.initrd, cmdline, self.spec.ram_mib, self.spec.cpus)

    def _wait_for_ssh(self) -> None:
        assert self.driver is not None and self.keys is not None
        host, port = self.driver.ssh_address()
        deadline = time.monotonic() + self.spec.boot_timeout_s
        try:
            self.shell = NodeShell.wait_ready(host, port, self.keys, deadline, self._keep_booting)
        except NodeUnreachable as err:
            raise self._boot_failure(str(err)) from err

    def _boot_failure(self, ssh_error: str) -> SessionFailure:
        assert self.driver is not None
        text = _read_text(self.console)
        fatal = [e for e in parse_console(text) if e.kind in (EventKind.PANIC, EventKind.OOPS)]
        if fatal:
            return SessionFailure("kernel", f"kernel crashed while booting: {fatal[0].text}")
        try:
            self._check_stop()
        except SessionFailure as stop:
            return stop
        if not self.driver.is_running():
            return SessionFailure("infra", f"node machine stopped while booting: {self.driver.exit_reason()}")
        image_errors = [line for line in text.splitlines() if IMAGE_ERROR_MARKER in line]
        if image_errors:
            return SessionFailure("infra", f"node image failed at boot: {image_errors[0].strip()}")
        if READY_MARKER in text:
            return SessionFailure("infra", f"node is up but SSH fails (keys, network?): {ssh_error}")
        last = _last_line(text)
        return SessionFailure(
            "kernel",
            f"kernel did not reach userspace within {self.spec.boot_timeout_s} s; console went silent at: {last!r}",
        )

    def _mount(self) -> None:
        assert self.shell is not None and self.nfs is not None
        with self._phase("clock"):
            self.result.clock_offset_ns, self.result.clock_uncertainty_ns = self.shell.clock_offset()
        with self._phase("mount", f"NFS {self.spec.nfs_version}, swap {self.spec.swap_mib} MiB"):
            self._apply_sysctl()
            mounted = self.shell.run(self._mount_command(), timeout=120)
            if not mounted.ok:
                reason = f"mount failed: {(mounted.stderr or mounted.stdout).strip()}"
                # The kernel's NFS client may be at fault, but a mount that never worked
                # is most often the lab's network or server: do not blame the kernel.
                raise SessionFailure("infra", reason)
            swap_path = f"{MOUNT_POINT}/{self._swap_name()}"
            swapon = self.shell.run(f"swapon {shlex.quote(swap_path)}", timeout=120)
            if not swapon.ok:
                console = [e.text for e in parse_console(_read_text(self.console)) if e.kind in KERNEL_FAILURE_KINDS]
                raise SessionFailure(
                    "kernel", f"kernel refused swapon: {swapon.stderr.strip()} {' | '.join(console)}".strip()
                )
        self.sampler = SamplerStream(
            self.shell.open_channel("exec swaplab-node sample"), self.dir / "samples.jsonl", on_record=self._on_sample
        )
        if not self.sampler.wait_for_first(timeout_s=15.0):
            raise SessionFailure("infra", "the node's sampler sent nothing within 15 s")

    def _apply_sysctl(self) -> None:
        assert self.shell is not None
        for name, value in self.spec.sysctl.items():
            done = self.shell.run(f"sysctl -w {shlex.quote(f'{name}={int(value)}')}", timeout=30)
            if not done.ok:
                raise SessionFailure("infra", f"sysctl {name}={value} failed: {(done.stderr or done.stdout).strip()}")

    def _mount_command(self) -> str:
        assert self.nfs is not None
        export = self.nfs.export()
        options = [
            f"vers={self.spec.nfs_version}",
            "proto=tcp",
            f"port={export.port}",
            f"addr={export.server}",
            *self.spec.mount_options,
        ]
        source = f"{export.server}:{export.path}"
        return (
            f"mkdir -p {MOUNT_POINT} && mount -t nfs4 -o {shlex.quote(','.join(options))} "
            f"{shlex.quote(source)} {MOUNT_POINT}"
        )

    def _meet_at_barrier(self) -> int:
        with self._phase("barrier", "waiting for every node of the run"):
            start_at = self.barrier.arrive_and_wait(self.name, BARRIER_TIMEOUT_S)
            self.passed_barrier = True
            return start_at

    def _run_workload(self, start_at_host_ns: int) -> None:
        assert self.shell is not None and self.sampler is not None
        work = self.spec.workload
        offset = self.result.clock_offset_ns or 0
        with self._phase("workload", f"touch {work.mib} MiB x {work.passes} pass(es)"):
            command = (
                f"swaplab-node hog --mib {work.mib} --passes {work.passes} "
                f"--start-at {start_at_host_ns + offset} --seed {work.seed}"
            )
            stream = WorkloadStream(self.shell.open_channel(command), self.dir / "workload.log")
            baseline = self.sampler.latest()
            finished = stream.wait(
                deadline=time.monotonic() + work.timeout_s + (start_at_host_ns - time.time_ns()) / 1e9,
                on_tick=lambda: self._report_swap(baseline, stream.last_line),
                stop=lambda: self.cancel() or not self._driver_running(),
            )
            self.result.workload = stream.outcome(start_at_host_ns, offset)
            outcome = self.result.workload
            if self.series is not None and outcome.done and outcome.bad_pages == 0 and outcome.exit_status == 0:
                self.series.progress, self.series.done = 1.0, 1.0
            if not finished:
                raise self._workload_stopped()
            if self.result.workload.exit_status is None or self.result.workload.exit_status < 0:
                self._check_node_still_there()

    def _report_swap(self, baseline: dict[str, float] | None, note: str) -> None:
        assert self.sampler is not None
        fraction = workload_progress(note, self.spec.workload.mib, self.spec.workload.passes)
        if self.series is not None and fraction is not None:
            self.series.progress = fraction
        latest = self.sampler.latest()
        if baseline is None or latest is None:
            return
        out = (latest.get("pswpout", 0) - baseline.get("pswpout", 0)) * 4096 / 2**20
        into = (latest.get("pswpin", 0) - baseline.get("pswpin", 0)) * 4096 / 2**20
        self.progress.swap(self.name, out, into, note)

    def _driver_running(self) -> bool:
        return self.driver is not None and self.driver.is_running()

    def _workload_stopped(self) -> SessionFailure:
        if self.cancel():
            return SessionFailure("cancelled", "cancelled")
        self._check_node_still_there()
        assert self.shell is not None
        if not self.shell.is_alive():
            return self._hang_failure()
        return SessionFailure(
            "kernel",
            f"workload did not finish within {self.spec.workload.timeout_s} s (last report: {self.result.workload.last_line!r})",
        )

    def _check_node_still_there(self) -> None:
        """Raise the right failure when the node's machine or the NFS server is gone."""
        assert self.driver is not None and self.nfs is not None
        if not self.driver.is_running():
            fatal = [e for e in parse_console(_read_text(self.console)) if e.kind in (EventKind.PANIC, EventKind.OOPS)]
            if fatal:
                raise SessionFailure("kernel", f"kernel crashed: {fatal[0].text}")
            raise SessionFailure("infra", f"node machine stopped: {self.driver.exit_reason()}")
        if not self.nfs.is_serving():
            raise SessionFailure("infra", "the lab's NFS server stopped serving during the run")

    def _hang_failure(self) -> SessionFailure:
        assert self.sampler is not None
        text = _read_text(self.console)
        last_sample = self.sampler.last_host_time()
        silent = time.strftime("%H:%M:%S", time.localtime(last_sample)) if last_sample else "before the first sample"
        return SessionFailure(
            "kernel",
            f"node stopped answering while its machine and the NFS server were up (hang); "
            f"last sample at {silent}; last console line: {_last_line(text)!r}",
        )

    def _collect(self) -> None:
        assert self.shell is not None and self.sampler is not None
        with self._phase("collect"):
            self.sampler.wait_for_more(2, timeout_s=5.0)
            swapoff = self.shell.run(f"swapoff {shlex.quote(MOUNT_POINT + '/' + self._swap_name())}", timeout=180)
            if not swapoff.ok:
                self._note(f"swapoff failed (ignored): {swapoff.stderr.strip()}")

    # -- always --------------------------------------------------------------------------
    def _teardown(self) -> None:
        self.phase_name = "teardown"
        if self.sampler is not None:
            self.sampler.close()
            self.result.samples = self.sampler.count
            self.result.counters_first = self.sampler.first() or {}
            self.result.counters_last = self.sampler.latest() or {}
        self._finish_metrics_before_power_off()
        if self.shell is not None:
            with suppress(Exception):
                self.shell.close()
        if self.driver is not None:
            self.driver.power_off()
        self._release_swap_file()
        self._record_console()
        self._finish_metrics()
        self.result.finished_at = time.time()
        self.result.files = {
            name: name
            for name in ("console.log", "samples.jsonl", "workload.log", "nfs-server.log")
            if (self.dir / name).exists()
        }
        (self.dir / "node-result.json").write_text(json.dumps(self.result.model_dump(mode="json"), indent=2))
        self.progress.phase(self.name, "done", "" if self.result.failure is None else f"({self.result.failure.cause})")

    def _finish_metrics_before_power_off(self) -> None:
        if self.series is not None:
            self.series.last_sample = None  # the sampler stopped on purpose: no age to report

    def _finish_metrics(self) -> None:
        if self.series is None:
            return
        self._count_console(final=True)
        self.series.phase = "done"
        NODES.finish(self.series)  # returns once Prometheus scraped the final values
        self.result.metrics_to = time.time()

    def _release_swap_file(self) -> None:
        if self.nfs is None:
            return
        with suppress(OSError):
            path = self.nfs.swap_file_path(self._swap_name())
            if path.exists():
                # Evidence from the server's side: the guest's pages really landed there.
                self.result.swap_file_nonzero_pages = nonzero_pages_after_header(path)
        with suppress(OSError):
            self.nfs.remove_swap_file(self._swap_name())
        with suppress(OSError):
            _copy_tail(self.nfs.log_path(), self.nfs_log_offset, self.dir / "nfs-server.log")

    def _record_console(self) -> None:
        text = _read_text(self.console)
        self.result.console_events = [event.to_json() for event in parse_console(text)]
        self.result.console_tail = text.splitlines()[-40:]

    def _note(self, text: str) -> None:
        self.progress.phase(self.name, self.phase_name, text)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing on the console)"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _copy_tail(source: Path, offset: int, target: Path) -> None:
    with source.open("rb") as src:
        src.seek(offset)
        target.write_bytes(src.read())
