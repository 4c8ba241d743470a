"""The node pipeline with plain fakes: steps stop at the first failure, cleanups run in
reverse order whatever happens, every failure is typed by whose fault it is, and a
driver's abilities choose the steps."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from model.campaign import NfsSpec
from model.faults import FaultTimes
from model.kernel import KernelSource
from model.lab import Lab, NfsRoute, NodeConfig
from model.runspec import BootRecord, NodeResult, NodeRunSpec, PreparedKernel, WorkloadRef
from workers import labs, node_session
from workers.drivers import register_driver
from workers.drivers.base import BootSpec, ConsoleSpec, MachineState
from workers.image import NodeImage
from workers.lab.nfs import register_backend
from workers.lab.nfs.base import NfsExport
from workers.node_session import NodeSession
from workers.node_ssh import NodeUnreachable, SshTarget
from workers.pipeline import boot_steps, evidence
from workers.pipeline import step as step_module
from workers.pipeline.context import NodeContext
from workers.pipeline.run_setup import run_setup_pipeline
from workers.pipeline.step import (
    Aborted,
    Cancelled,
    InputFault,
    KernelFault,
    LabFault,
    Pipeline,
    PipelineHooks,
    PipelineOrderError,
    Step,
    StepFailure,
    StepTimedOut,
)
from workers.pipeline.strategy import AttachStrategy, BootStrategy, node_pipeline, strategy_for
from workers.pipeline.workload_steps import hog_command, wait_until

REPO = Path(__file__).resolve().parents[2]

# -- the generic pipeline ------------------------------------------------------------------


class Recorder(PipelineHooks[list[str]]):
    def __init__(self) -> None:
        self.cleanup_errors: list[str] = []

    def cleanup_failed(self, step: Step[list[str]], error: Exception) -> None:
        self.cleanup_errors.append(f"{step.name}: {error}")


class _Noting(Step[list[str]]):
    fail: Exception | None = None
    cleanup_fails = False

    def run(self, ctx: list[str], deadline: float) -> None:
        ctx.append(f"run {self.name}")
        if self.fail is not None:
            raise self.fail

    def cleanup(self, ctx: list[str]) -> None:
        ctx.append(f"cleanup {self.name}")
        if self.cleanup_fails:
            raise RuntimeError("stuck")


def Noting(
    name: str, fail: Exception | None = None, cleanup_fails: bool = False, base: type[_Noting] = _Noting
) -> _Noting:
    """A step that notes its calls, with its own class name (step names are class-level)."""
    step_class = type(f"Noting_{name}", (base,), {"name": name, "fail": fail, "cleanup_fails": cleanup_fails})
    return step_class()


def test_a_failing_step_stops_the_later_ones_and_started_steps_clean_up_in_reverse() -> None:
    calls: list[str] = []
    pipeline = Pipeline([Noting("a"), Noting("b", fail=LabFault("nfs down")), Noting("c")])
    with pytest.raises(LabFault, match="nfs down"):
        pipeline.run(calls, Recorder())
    assert calls == ["run a", "run b", "cleanup b", "cleanup a"]


def test_a_failing_cleanup_does_not_skip_the_others() -> None:
    calls: list[str] = []
    hooks = Recorder()
    Pipeline([Noting("power", cleanup_fails=False), Noting("mount", cleanup_fails=True)]).run(calls, hooks)
    assert calls == ["run power", "run mount", "cleanup mount", "cleanup power"]
    assert hooks.cleanup_errors == ["mount: stuck"]


class _Blocking(_Noting):
    """A step whose run (or cleanup) ignores its deadline: it blocks until released."""

    release: threading.Event
    block_cleanup = False

    def timeout_s(self, ctx: list[str]) -> float:
        return 0.2

    def cleanup_timeout_s(self, ctx: list[str]) -> float:
        return 0.3

    def run(self, ctx: list[str], deadline: float) -> None:
        ctx.append(f"run {self.name}")
        if not self.block_cleanup:
            self.release.wait(60)

    def cleanup(self, ctx: list[str]) -> None:
        ctx.append(f"cleanup {self.name}")
        if self.block_cleanup:
            self.release.wait(60)


def Blocking(name: str, release: threading.Event, block_cleanup: bool = False) -> _Blocking:
    attrs = {"name": name, "release": release, "block_cleanup": block_cleanup}
    return type(f"Blocking_{name}", (_Blocking,), attrs)()  # type: ignore[no-any-return]


def test_a_step_that_blocks_past_its_timeout_is_abandoned_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_module, "STEP_GRACE_S", 0.3)
    calls: list[str] = []
    release = threading.Event()
    pipeline = Pipeline([Noting("boot"), Blocking("mount", release), Noting("workload")])
    began = time.monotonic()
    try:
        with pytest.raises(StepTimedOut, match=r"step mount did not end within its 0 s .*abandoned") as caught:
            pipeline.run(calls, Recorder())
    finally:
        release.set()
    assert time.monotonic() - began < 5  # the pipeline did not wait on the stuck thread
    assert caught.value.cause == "infra"
    assert calls[:2] == ["run boot", "run mount"] and "run workload" not in calls
    assert calls[-2:] == ["cleanup mount", "cleanup boot"]  # the cleanups (power off!) ran


def test_a_cleanup_that_outlives_its_budget_does_not_keep_the_others_from_running() -> None:
    calls: list[str] = []
    hooks = Recorder()
    release = threading.Event()
    try:
        Pipeline([Noting("power"), Blocking("mount", release, block_cleanup=True)]).run(calls, hooks)
    finally:
        release.set()
    assert calls == ["run power", "run mount", "cleanup mount", "cleanup power"]
    assert hooks.cleanup_errors == ["mount: did not end within its 0 s: abandoned"]


def test_a_pipelines_budget_is_every_steps_timeout_grace_and_cleanup_budget() -> None:
    release = threading.Event()
    pipeline = Pipeline([Noting("a"), Blocking("b", release)])
    expected = (60 + step_module.STEP_GRACE_S + 120) + (0.2 + step_module.STEP_GRACE_S + 0.3)
    assert pipeline.budget_s([]) == pytest.approx(expected)


def test_an_unexpected_error_becomes_the_steps_own_cause() -> None:
    class KernelSide(_Noting):
        unexpected = KernelFault

    with pytest.raises(LabFault, match=r"a: ZeroDivisionError"):
        Pipeline([Noting("a", fail=ZeroDivisionError("x"))]).run([], Recorder())
    with pytest.raises(KernelFault):
        Pipeline([Noting("k", fail=ValueError("y"), base=KernelSide)]).run([], Recorder())


def test_a_stop_between_steps_runs_the_cleanups() -> None:
    calls: list[str] = []

    class StopAfterFirst(Recorder):
        def check_stop(self) -> None:
            if calls:
                raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        Pipeline([Noting("a"), Noting("b")]).run(calls, StopAfterFirst())
    assert calls == ["run a", "cleanup a"]


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        (KernelFault, "kernel"),
        (LabFault, "infra"),
        (InputFault, "input"),
        (Cancelled, "cancelled"),
        (Aborted, "aborted"),
    ],
)
def test_each_failure_type_names_its_cause(failure: type[StepFailure], cause: str) -> None:
    assert failure("x").cause == cause


# -- fakes for the node session ------------------------------------------------------------------


@dataclass
class FakeBarrier:
    aborted: list[str] = field(default_factory=list)
    faults: dict[int, FaultTimes] = field(default_factory=dict)

    def arrive_and_wait(self, node: str, timeout_s: float) -> int:
        raise AssertionError("not reached in these tests")

    def abort(self, node: str, reason: str) -> None:
        self.aborted.append(reason)

    def broken(self) -> str | None:
        return None

    def note_fault(self, index: int, times: FaultTimes) -> bool:
        self.faults[index] = times
        return True

    def fault_times(self) -> dict[int, FaultTimes]:
        return dict(self.faults)


@dataclass
class FakeProgress:
    phases: list[tuple[str, str]] = field(default_factory=list)

    def phase(self, node: str, phase: str, detail: str = "") -> None:
        self.phases.append((phase, detail))

    def swap(self, node: str, out_mib: float, in_mib: float, note: str = "") -> None:
        pass


class FakeNfs:
    calls: list[str] = []  # noqa: RUF012  (one record shared by every instance a test makes)
    serving = True

    def __init__(self, lab: str, settings: dict[str, Any]) -> None:
        self.dir = Path(str(settings["dir"]))

    def ensure_serving(self, progress: Any = None) -> None: ...

    def is_serving(self) -> bool:
        return FakeNfs.serving

    def describe_server(self, node: str) -> dict[str, str]:
        return {"backend": "fake", "address": "10.0.2.100:2049"}

    def export(self) -> NfsExport:
        return NfsExport("10.0.2.100", 2049, "/export")

    def node_export(self, node: str) -> NfsExport:
        return NfsExport("10.0.2.100", 2049, f"/export/{node}")

    def data_path(self, node: str) -> str:
        return "fake"

    def create_swap_file(self, node: str, name: str, size_mib: int) -> str:
        FakeNfs.calls.append("create swap file")
        return str(self.dir / name)

    def written_pages(self, node: str, name: str, size_mib: int) -> int | None:
        return None

    def remove_swap_file(self, node: str, name: str) -> None:
        FakeNfs.calls.append("remove swap file")

    def log_end(self) -> int:
        return 0

    def read_log(self, offset: int, limit: int) -> bytes:
        return b""

    def describe_log(self) -> str:
        return "nowhere"

    def stop(self) -> None: ...


class FakeMachine:
    """A PowerControl driver whose machine prints ``console`` when powered on."""

    console = ""
    calls: list[str] = []  # noqa: RUF012

    def __init__(self, node: NodeConfig, workdir: Path) -> None:
        self.node = node
        self.on = False

    def kernel_console_args(self) -> str:
        return "console=ttyS0"

    def boot_record(self) -> BootRecord:
        return BootRecord(path="fake")

    def power_on(self, boot: BootSpec, console_log: Path) -> None:
        FakeMachine.calls.append("power on")
        console_log.write_text(FakeMachine.console)
        self.on = True

    def power_off(self) -> None:
        FakeMachine.calls.append("power off")
        self.on = False

    def ssh_address(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    def machine_state(self) -> MachineState:
        return MachineState.RUNNING if self.on else MachineState.STOPPED

    def exit_reason(self) -> str | None:
        return None if self.on else "exit code 1"


class FakeHost:
    """An AlreadyRunning driver."""

    def __init__(self, node: NodeConfig, workdir: Path) -> None:
        self.node = node

    def machine_state(self) -> MachineState:
        return MachineState.UNKNOWN

    def exit_reason(self) -> str | None:
        return None

    def ssh_target(self) -> SshTarget:
        return SshTarget("127.0.0.1", 1)

    def console(self) -> ConsoleSpec:
        return ConsoleSpec()


register_driver("fake-machine")(FakeMachine)
register_driver("fake-host")(FakeHost)
register_backend("fake")(FakeNfs)


CID = "c1-20261129-120000-abcd"


def spec(prepared: bool = True) -> NodeRunSpec:
    return NodeRunSpec(
        campaign=CID,
        run_id="r001",
        attempt=1,
        lab="lab",
        node="node1",
        ram_mib=256,
        cpus=1,
        kernel=KernelSource(package="linux-image-amd64"),
        prepared=PreparedKernel(package="p", version="v", kver="6.1.0-1-amd64", source="s", image_hash="0" * 64)
        if prepared
        else None,
        nfs=NfsSpec(version="4.1", mount_options=[]),
        swap_mib=64,
        workload=WorkloadRef(name="w", mib=384, passes=1, timeout_s=60, seed=1),
        planned_overcommit_mib=128,
        boot_timeout_s=5,
    )


def fake_lab(tmp_path: Path, driver: str = "fake-machine") -> tuple[Lab, NodeConfig]:
    """The worker's own inventory of the lab, as admission would hand it over."""
    node = NodeConfig("node1", "lab", driver, 256, 1, "127.0.0.1", 1, {})
    return Lab("lab", tmp_path / "lab.yml", "fake", {"dir": str(tmp_path)}, (node,)), node


@pytest.fixture(autouse=True)
def results(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("SWAPLAB_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results" / CID / "r001" / "node1"


@pytest.fixture
def worker_lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(node_session, "admit_node", lambda _spec: fake_lab(tmp_path))


@pytest.fixture
def booting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, worker_lab: None) -> None:
    image = NodeImage(tmp_path / "vmlinuz", tmp_path / "initrd", "6.1.0-1-amd64", "p", "v", "0" * 64)
    monkeypatch.setattr(boot_steps, "cached_image", lambda _hash: image)

    def unreachable(*_args: Any, **_kw: Any) -> Any:
        raise NodeUnreachable("no banner")

    monkeypatch.setattr(boot_steps.NodeShell, "wait_ready", unreachable)  # type: ignore[attr-defined]
    FakeMachine.calls, FakeNfs.calls, FakeNfs.serving = [], [], True


def run_session(the_spec: NodeRunSpec) -> tuple[NodeResult, FakeBarrier, FakeProgress]:
    barrier, progress = FakeBarrier(), FakeProgress()
    result = NodeSession(the_spec, progress, barrier, lambda: False).run()
    return result, barrier, progress


def test_a_kernel_that_panics_at_boot_is_the_kernels_fault_and_everything_is_undone(
    booting: None, results: Path
) -> None:
    FakeMachine.console = "[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n"
    result, barrier, progress = run_session(spec())
    assert result.failure is not None
    assert (result.failure.cause, result.failure.phase) == ("kernel", "boot")
    assert "Kernel panic" in result.failure.reason
    # Powered off before the swap file is removed: cleanups in reverse order.
    assert FakeMachine.calls == ["power on", "power off"]
    assert FakeNfs.calls == ["create swap file", "remove swap file"]
    assert barrier.aborted  # the run's other nodes stop at once
    assert progress.phases[-1] == ("done", "(kernel)")
    assert (results / "node-result.json").exists()


def test_a_silent_boot_with_the_image_reporting_an_error_is_the_labs_fault(booting: None, tmp_path: Path) -> None:
    FakeMachine.console = "swaplab: ERROR udhcpc on eth0 got no lease\n"
    result, _, _ = run_session(spec())
    assert result.failure is not None and result.failure.cause == "infra"
    assert "udhcpc" in result.failure.reason


def test_a_server_that_does_not_serve_stops_the_node_before_it_boots(booting: None, tmp_path: Path) -> None:
    FakeNfs.serving = False
    result, _, _ = run_session(spec())
    assert result.failure is not None
    assert (result.failure.cause, result.failure.phase) == ("infra", "nfs")
    assert FakeMachine.calls == []  # never powered on


def test_a_run_that_was_not_prepared_boots_nothing(booting: None, tmp_path: Path) -> None:
    result, _, _ = run_session(spec(prepared=False))
    assert result.failure is not None and (result.failure.cause, result.failure.phase) == ("infra", "image")
    assert FakeMachine.calls == [] and FakeNfs.calls == []


def test_an_unknown_driver_is_a_lab_fault_not_a_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(node_session, "admit_node", lambda _spec: fake_lab(tmp_path, driver="no-such-driver"))
    result, barrier, _ = run_session(spec())
    assert result.failure is not None and result.failure.cause == "infra"
    assert "unknown driver" in result.failure.reason and barrier.aborted


def test_a_node_the_worker_does_not_serve_runs_nothing_and_is_the_inputs_fault(
    monkeypatch: pytest.MonkeyPatch, results: Path
) -> None:
    monkeypatch.setenv("SWAPLAB_LABS", str(REPO / "inventory" / "local.yml"))
    labs.served_labs.cache_clear()
    result, barrier, _ = run_session(spec())  # lab "lab" is not the worker's
    labs.served_labs.cache_clear()
    assert result.failure is not None and result.failure.cause == "input"
    assert "does not serve lab 'lab'" in result.failure.reason and barrier.aborted
    assert (results / "node-result.json").exists() and not (results / "console.log").exists()


# -- strategies -------------------------------------------------------------------------------------


def _node(driver: str) -> NodeConfig:
    return NodeConfig("n", "lab", driver, 256, 1, "127.0.0.1", 22, {})


def test_the_driver_decides_the_steps() -> None:
    machine = FakeMachine(_node("fake-machine"), Path("."))
    host = FakeHost(_node("fake-host"), Path("."))
    assert isinstance(strategy_for(machine), BootStrategy)
    assert isinstance(strategy_for(host), AttachStrategy)
    boot = [s.name for s in BootStrategy().steps(machine)]
    attach = [s.name for s in AttachStrategy().steps(host)]
    assert boot[:4] == ["image", "swap-file", "boot", "booted"]
    assert attach[:5] == ["connect", "console", "kernel", "fitness", "tool"]
    # From the clock on, both run the same test steps.
    assert boot[boot.index("clock") :] == attach[attach.index("clock") :]
    assert not BootStrategy.persistent and AttachStrategy.persistent


def test_every_strategy_and_the_run_setup_assemble_in_an_order_that_feeds_each_step() -> None:
    route = NfsRoute("n", 1, "10.77.0.1", 2049, "10.77.0.11", "10.77.0.1", 2049, False, "10.77.0.0/24")
    on_lab_network = FakeMachine(replace(_node("fake-machine"), nfs_route=route), Path("."))
    for driver in (
        FakeMachine(_node("fake-machine"), Path(".")),
        on_lab_network,
        FakeHost(_node("fake-host"), Path(".")),
    ):
        pipeline, _strategy = node_pipeline(driver)  # a misplaced step would raise here
        assert pipeline.names[-1] == "collect"
    assert "lab-link" in node_pipeline(on_lab_network)[0].names
    for boots in (True, False):
        lab = SimpleNamespace(boots_kernels=boots)
        assert run_setup_pipeline(lab).names[0] == "nfs-server"  # type: ignore[arg-type]


def test_a_step_before_what_it_needs_is_refused_when_the_pipeline_is_assembled() -> None:
    machine = FakeMachine(_node("fake-machine"), Path("."))
    steps = BootStrategy().steps(machine)
    mount = next(step for step in steps if step.name == "mount")
    misplaced = [mount, *(step for step in steps if step is not mount)]
    with pytest.raises(PipelineOrderError) as refused:
        Pipeline(misplaced)
    message = str(refused.value)
    assert message.startswith("step mount needs nfs (provided by swap-file, later); shell (provided by boot, later)")
    without = [step for step in steps if step.name != "swap-file"]
    with pytest.raises(PipelineOrderError, match="needs nfs \\(provided by no step\\)"):
        Pipeline(without)


def test_a_driver_no_strategy_accepts_is_refused() -> None:
    class Neither:
        node = _node("x")

    with pytest.raises(LookupError, match="no node strategy"):
        strategy_for(Neither())  # type: ignore[arg-type]


# -- whose fault a node that stopped answering is ---------------------------------------------------------


def _context(tmp_path: Path, driver: Any, console: str, nfs_serving: bool = True) -> NodeContext:
    ctx = NodeContext(
        spec(),
        FakeProgress(),
        FakeBarrier(),
        lambda: False,
        *fake_lab(tmp_path),
        driver,
        NodeResult(run_id="r", node="n"),
        tmp_path,
    )
    ctx.console.write_text(console)
    FakeNfs.serving = nfs_serving
    ctx.nfs = FakeNfs("lab", {"dir": str(tmp_path)})
    return ctx


HUNG = "[  242.1] INFO: task kworker/u2:1:57 blocked for more than 120 seconds.\n"


def test_a_machine_that_runs_but_stops_answering_is_hung(tmp_path: Path) -> None:
    machine = FakeMachine(_node("fake-machine"), tmp_path)
    machine.on = True
    failure = evidence.stopped_answering(_context(tmp_path, machine, "quiet\n"))
    assert isinstance(failure, KernelFault) and "hang" in failure.reason and not failure.takes_node_out


def test_a_running_machine_whose_link_is_silent_is_hung_only_with_console_evidence(tmp_path: Path) -> None:
    # Bare metal: a switch or cable can fail where QEMU's tap cannot. Power on and a server
    # that serves are not enough; the link must answer, or the console must blame the kernel.
    machine = FakeMachine(_node("fake-machine"), tmp_path)
    machine.on = True
    machine.link_alive = lambda: False  # type: ignore[attr-defined]
    silent = evidence.stopped_answering(_context(tmp_path, machine, "quiet\n"))
    assert isinstance(silent, LabFault) and "nothing on its console blames the kernel" in silent.reason
    hung = evidence.stopped_answering(_context(tmp_path, machine, HUNG))
    assert isinstance(hung, KernelFault) and "blocked for more than" in hung.reason
    machine.link_alive = lambda: True  # type: ignore[attr-defined]
    answered = evidence.stopped_answering(_context(tmp_path, machine, "quiet\n"))
    assert isinstance(answered, KernelFault) and "hang" in answered.reason


def test_a_machine_that_exited_is_the_labs_unless_the_console_shows_a_crash(tmp_path: Path) -> None:
    machine = FakeMachine(_node("fake-machine"), tmp_path)
    assert isinstance(evidence.stopped_answering(_context(tmp_path, machine, "quiet\n")), LabFault)
    crashed = evidence.stopped_answering(_context(tmp_path, machine, "[ 9.0] Oops: 0000 [#1] SMP\n"))
    assert isinstance(crashed, KernelFault)


def test_a_dead_nfs_server_is_the_labs_fault(tmp_path: Path) -> None:
    machine = FakeMachine(_node("fake-machine"), tmp_path)
    machine.on = True
    failure = evidence.stopped_answering(_context(tmp_path, machine, HUNG, nfs_serving=False))
    assert isinstance(failure, LabFault) and "NFS server" in failure.reason


def test_a_host_without_power_control_is_blamed_only_on_console_evidence(tmp_path: Path) -> None:
    host = FakeHost(_node("fake-host"), tmp_path)
    silent = evidence.stopped_answering(_context(tmp_path, host, "nothing\n"))
    assert isinstance(silent, LabFault) and silent.takes_node_out
    hung = evidence.stopped_answering(_context(tmp_path, host, HUNG))
    assert isinstance(hung, KernelFault) and hung.takes_node_out and "blocked for more than" in hung.reason


# -- past validation, a refused argument is the input's fault ---------------------------------------------


class ExitedChannel:
    """A channel whose command already exited with ``status`` after writing ``stderr``."""

    def __init__(self, status: int, stderr: bytes) -> None:
        self.status, self._stderr = status, stderr

    def recv_ready(self) -> bool:
        return False

    def recv_stderr_ready(self) -> bool:
        return bool(self._stderr)

    def recv_stderr(self, _size: int) -> bytes:
        data, self._stderr = self._stderr, b""
        return data

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return self.status


class RefusingShell:
    def open_channel(self, command: str) -> ExitedChannel:
        return ExitedChannel(2, b"swaplab-node: --mib needs an integer in 1..1048576, got '2000000'\n")


class QuietSampler:
    def latest(self) -> dict[str, float]:
        return {}


def test_the_node_tool_refusing_its_arguments_is_an_input_fault_not_a_kernel_fail(tmp_path: Path) -> None:
    from workers.pipeline.workload_steps import WorkloadStep

    machine = FakeMachine(_node("fake-machine"), tmp_path)
    machine.on = True
    ctx = _context(tmp_path, machine, "quiet\n")
    ctx.shell, ctx.sampler = RefusingShell(), QuietSampler()  # type: ignore[assignment]
    ctx.start_at_ns, ctx.workload_mib = time.time_ns(), 2_000_000
    with pytest.raises(InputFault, match=r"refused its arguments: swaplab-node: --mib needs"):
        WorkloadStep().run(ctx, time.monotonic() + 10)


# -- the workload's start instant ---------------------------------------------------------
def test_on_host_time_the_node_waits_for_the_start_on_its_own_clock() -> None:
    assert hog_command("/t", 192, 1, 7, 123) == "/t hog --mib 192 --passes 1 --start-at 123 --seed 7"
    # Guest time: the start instant is kept by the worker; the node starts at once.
    assert hog_command("/t", 192, 1, 7, None) == "/t hog --mib 192 --passes 1 --seed 7"


def test_on_guest_time_the_worker_sleeps_until_the_start_on_the_hosts_clock() -> None:
    instant = time.time_ns() + 300_000_000
    wait_until(instant, lambda: False)
    assert time.time_ns() >= instant
    began = time.monotonic()
    wait_until(time.time_ns() + 60 * 10**9, lambda: True)  # a cancel ends the wait at once
    assert time.monotonic() - began < 1
