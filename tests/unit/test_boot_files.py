"""Publishing a run's boot files for one pxe node, against a boot server that is a temporary
directory run by a real shell: what lands where, the second-boot refusal, withdrawal that
never touches another run's script, and leftovers of a dead worker."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from workers.lab import boot_files
from workers.lab.boot_files import BootFilesError, Ran

MAC = "52:54:00:aa:00:01"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "boot"
    (root / "www" / "mac").mkdir(parents=True)
    (root / "www" / "runs").mkdir()
    monkeypatch.setattr(boot_files, "JOURNAL_DIR", tmp_path / "journal")
    return root


def shell(command: str, stdin: bytes | None, timeout: float) -> Ran:
    done = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, timeout=timeout)
    return Ran(done.returncode == 0, done.stdout.decode(), done.stderr.decode())


def _publish(server: Path, tmp_path: Path, run_id: str = "c1.r001") -> boot_files.Publication:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel bytes")
    initrd.write_bytes(b"initrd bytes")
    return boot_files.publish(
        shell, "hw", "node1", MAC, str(server), "http://10.77.0.1:8069", run_id, kernel, initrd,
        "console=ttyS0,115200n8 panic=0 swaplab.hostname=node1",
    )  # fmt: skip


def test_a_publication_serves_the_runs_kernel_to_that_mac_only(server: Path, tmp_path: Path) -> None:
    pub = _publish(server, tmp_path)
    script = (server / "www" / "mac" / "52-54-00-aa-00-01.ipxe").read_text()
    base = f"http://10.77.0.1:8069/runs/{pub.token}"
    assert script.startswith("#!ipxe\n")
    assert f"kernel {base}/vmlinuz initrd=initrd.img console=ttyS0,115200n8 panic=0" in script
    assert f"initrd {base}/initrd.img\nboot\n" in script
    assert (server / "www" / "runs" / pub.token / "vmlinuz").read_bytes() == b"kernel bytes"
    assert pub.kernel_sha256 == hashlib.sha256(b"kernel bytes").hexdigest()
    assert json.loads(pub.journal.read_text())["token"] == pub.token


def test_a_second_run_cannot_publish_for_a_machine_another_run_holds(server: Path, tmp_path: Path) -> None:
    _publish(server, tmp_path)
    with pytest.raises(BootFilesError, match="has a publication of another run"):
        _publish(server, tmp_path, "c2.r001")


def test_after_the_fetch_the_script_refuses_a_second_boot(server: Path, tmp_path: Path) -> None:
    pub = _publish(server, tmp_path)
    boot_files.refuse_second_boot(shell, pub)
    script = (server / "www" / "mac" / "52-54-00-aa-00-01.ipxe").read_text()
    assert "a second boot is refused" in script and "kernel " not in script and "goto wait" in script


def test_withdrawal_removes_the_runs_files_and_leaves_another_runs_script(server: Path, tmp_path: Path) -> None:
    pub = _publish(server, tmp_path)
    boot_files.withdraw(shell, pub)
    assert not (server / "www" / "mac" / "52-54-00-aa-00-01.ipxe").exists()
    assert not (server / "www" / "runs" / pub.token).exists() and not pub.journal.exists()
    later = _publish(server, tmp_path, "c2.r001")
    boot_files.withdraw(shell, pub)  # the first run's again: the later run's script stays
    assert later.token in (server / "www" / "mac" / "52-54-00-aa-00-01.ipxe").read_text()


def test_a_dead_workers_publication_is_withdrawn_at_the_next_start(server: Path, tmp_path: Path) -> None:
    pub = _publish(server, tmp_path)
    assert boot_files.withdraw_leftovers(lambda lab: shell) == []  # its worker (this process) lives
    entry = json.loads(pub.journal.read_text())
    pub.journal.write_text(json.dumps({**entry, "owner_start": entry["owner_start"] + 1}))  # another process
    assert boot_files.withdraw_leftovers(lambda lab: shell) == [f"node1 of lab hw (run {pub.token})"]
    assert not (server / "www" / "mac" / "52-54-00-aa-00-01.ipxe").exists() and not pub.journal.exists()


def _dead_owner(pub: boot_files.Publication) -> None:
    entry = json.loads(pub.journal.read_text())
    pub.journal.write_text(json.dumps({**entry, "owner_start": entry["owner_start"] + 1}))


def test_a_leftover_of_a_lab_that_is_down_is_only_forgotten(server: Path, tmp_path: Path) -> None:
    pub = _publish(server, tmp_path)
    _dead_owner(pub)
    assert boot_files.withdraw_leftovers(lambda lab: None) == [f"node1 of lab hw (run {pub.token})"]
    assert not pub.journal.exists()


def test_a_leftover_this_worker_cannot_reach_stays_for_one_that_can(server: Path, tmp_path: Path) -> None:
    pub = _publish(server, tmp_path)
    _dead_owner(pub)

    def unreachable(lab: str) -> boot_files.Runner | None:
        raise BootFilesError(f"this worker does not serve lab {lab!r}")

    assert boot_files.withdraw_leftovers(unreachable) == []
    assert pub.journal.exists() and (server / "www" / "mac" / "52-54-00-aa-00-01.ipxe").exists()


def test_a_command_line_cannot_smuggle_ipxe_syntax(server: Path, tmp_path: Path) -> None:
    pub = _publish(server, tmp_path)
    for cmdline in ("a\nshell", "x=${net0/ip}"):
        with pytest.raises(BootFilesError):
            boot_files.boot_script(pub, cmdline)
