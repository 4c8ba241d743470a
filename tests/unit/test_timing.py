"""Guest time: a campaign's ``timing: guest`` reaches QEMU as a fixed instruction counter,
is refused on a lab that cannot run it, is recorded with the run, and keeps its figures
apart from host-time ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.campaign import load_campaign
from model.figures import GUEST_ICOUNT_SHIFT, GUEST_PACE_MAX, HUNG_TASK_TIMEOUT_S, timing_label
from model.lab import NodeConfig
from model.result import Campaign
from model.runspec import WorkloadOutcome
from model.yamlpos import SpecError
from orchestrator.baselines import comparable
from orchestrator.planner import node_specs, plan_runs
from workers.drivers.base import BootSpec
from workers.drivers.qemu import QemuDriver

REPO = Path(__file__).resolve().parents[2]
SMOKE = (REPO / "campaigns" / "smoke.yaml").read_text()


def _campaign(tmp_path: Path, timing: str, lab: Path | None = None) -> Path:
    text = SMOKE.replace("lab: ../inventory/local.yml", f"lab: {lab or REPO / 'inventory' / 'local.yml'}")
    path = tmp_path / "timed.yaml"
    path.write_text(f"{text.rstrip()}\ntiming: {timing}\n")
    return path


def test_guest_time_reaches_every_nodes_spec(tmp_path: Path) -> None:
    campaign = load_campaign(_campaign(tmp_path, "guest"))
    assert campaign.spec.timing == "guest"
    run = plan_runs(campaign)[0]
    specs = node_specs(campaign, "smoke-20261202-000000-abcd", run, 1, ["node1"])
    assert [spec.timing for spec in specs] == ["guest"]
    assert load_campaign(REPO / "campaigns" / "smoke.yaml").spec.timing == "host"  # the default


def test_on_guest_time_the_hung_task_timer_is_stretched_by_the_guests_pace(tmp_path: Path) -> None:
    # 120 guest seconds may be 24 host seconds on a busy guest: the report would fire sooner.
    stretched = {"kernel.hung_task_timeout_secs": HUNG_TASK_TIMEOUT_S * GUEST_PACE_MAX}
    for timing, sysctl in (("guest", stretched), ("host", {})):
        campaign = load_campaign(_campaign(tmp_path, timing))
        [spec] = node_specs(campaign, "smoke-20261202-000000-abcd", plan_runs(campaign)[0], 1, ["node1"])
        assert spec.sysctl == {**sysctl, **campaign.spec.node.sysctl}
    # The campaign's own setting wins.
    own = tmp_path / "own.yaml"
    own.write_text(
        _campaign(tmp_path, "guest").read_text().replace("sysctl: {", "sysctl: {kernel.hung_task_timeout_secs: 30, ")
    )
    campaign = load_campaign(own)
    [spec] = node_specs(campaign, "smoke-20261202-000000-abcd", plan_runs(campaign)[0], 1, ["node1"])
    assert spec.sysctl["kernel.hung_task_timeout_secs"] == 30


def test_a_lab_whose_nodes_are_not_qemu_guests_refuses_guest_time(tmp_path: Path) -> None:
    lab = tmp_path / "ssh-lab.yml"
    lab.write_text(
        "all:\n  vars: {swaplab_lab: metal}\n  children:\n"
        "    nfs_server:\n      hosts:\n        localhost: {swaplab_nfs: ganesha}\n"
        "    nodes:\n      vars: {swaplab_driver: ssh}\n      hosts:\n        m1: {ansible_host: 192.0.2.5}\n"
    )
    text = _campaign(tmp_path, "guest", lab).read_text()
    text = text.replace("  - package: linux-image-amd64", "  - running: any")
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("node:", "  ram_mib", "  sysctl")))
    path = tmp_path / "metal.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SpecError) as caught:
        load_campaign(path)
    [issue] = caught.value.issues
    assert issue.field == "timing" and "cannot run its nodes on guest time" in issue.message
    assert issue.line == text.splitlines().index("timing: guest") + 1


def test_an_unknown_timing_is_refused_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_campaign(_campaign(tmp_path, "icount"))
    assert [issue.field for issue in caught.value.issues] == ["timing"]


def _argv(tmp_path: Path, shift: int | None) -> list[str]:
    driver = QemuDriver(NodeConfig("a", "t", "qemu", 256, 1, "127.0.0.1", 47001, {}), tmp_path)
    boot = BootSpec(tmp_path / "k", tmp_path / "i", "console=ttyS0", 256, 1, shift)
    return driver.argv(boot, tmp_path / "console.log", "qemu-system-x86_64")


def test_qemu_counts_instructions_with_a_fixed_shift_and_real_time_while_idle(tmp_path: Path) -> None:
    argv = _argv(tmp_path, GUEST_ICOUNT_SHIFT)
    # Fixed, never "auto" (that follows the host's speed again); sleep=on: an idle guest
    # waiting on NFS sees real time pass rather than jumping over the wait.
    assert argv[argv.index("-icount") + 1] == f"shift={GUEST_ICOUNT_SHIFT},sleep=on"
    assert "-icount" not in _argv(tmp_path, None)


def _record(timing: str | None) -> Campaign:
    settings = {"node_ram_mib": 256, "workload": {"name": "small", "mib": 320}}
    if timing is not None:
        settings["timing"] = timing
    run = {"run_id": "r001", "verdict": "pass", "settings": settings, "nodes": []}
    return Campaign.model_validate({"campaign_id": "c", "runs": [run]})


def test_guest_time_figures_are_never_compared_with_host_time_ones() -> None:
    guest, host, older = _record(timing_label("guest")), _record("host"), _record(None)
    assert timing_label("guest") == f"guest-icount{GUEST_ICOUNT_SHIFT}"
    assert comparable(guest, _record(timing_label("guest")))
    assert not comparable(guest, host) and not comparable(host, guest)
    assert comparable(host, older)  # a record from before the mode was kept ran on host time


def test_on_guest_time_the_workload_is_placed_by_when_the_worker_saw_it() -> None:
    # The node's clock ran 2.4 times as fast as the host's: 305 node seconds took 127 host
    # seconds. Start + elapsed would put the end 3 minutes after the run; the worker's own
    # receive times place it.
    seen = {"started_seen_host_ns": 1_000 * 10**9, "done_seen_host_ns": 1_127 * 10**9}
    outcome = WorkloadOutcome(done=True, started_host_ns=1_000 * 10**9, elapsed_s=305.0, **seen)
    assert outcome.host_window_s(guest_clock=True) == (1000.0, 1127.0)
    assert outcome.host_window_s(guest_clock=False) == (1000.0, 1305.0)
    assert WorkloadOutcome(done=False, started_seen_host_ns=1).host_window_s(guest_clock=True) is None
