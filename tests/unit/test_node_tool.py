"""swaplab-node, compiled for the host, keeps the output contract the orchestrator parses."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.image import mlockall_library, node_tool_binary

SAMPLED = [
    "/proc/vmstat",
    "/proc/meminfo",
    "/proc/pressure/memory",
    "/proc/net/rpc/nfs",
    "/proc/net/netstat",
    "/proc/net/snmp",
]


@pytest.fixture(scope="module")
def tool() -> Path:
    return node_tool_binary()


def _run(tool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=60)


def test_binary_is_cached_by_source_hash(tool: Path) -> None:
    assert node_tool_binary() == tool
    assert tool.stat().st_size > 0


def test_clock_prints_realtime_ns(tool: Path) -> None:
    before = time.time_ns()
    out = _run(tool, "clock")
    after = time.time_ns()
    assert out.returncode == 0
    assert re.fullmatch(r"\d+\n", out.stdout)
    assert before <= int(out.stdout) <= after


def test_hog_writes_and_verifies_every_page(tool: Path) -> None:
    out = _run(tool, "hog", "--mib", "8", "--passes", "2", "--seed", "7")
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"started \d+", lines[0])
    assert lines[1:5] == [
        "progress write 1 8",
        "progress verify 1 8",
        "progress write 2 8",
        "progress verify 2 8",
    ]
    assert re.fullmatch(r"done mib=8 passes=2 pages=4096 bad=0 elapsed_ns=\d+", lines[-1])


def test_hog_reports_progress_every_16_mib(tool: Path) -> None:
    out = _run(tool, "hog", "--mib", "40")
    writes = [ln for ln in out.stdout.splitlines() if ln.startswith("progress write")]
    assert writes == ["progress write 1 16", "progress write 1 32", "progress write 1 40"]


@pytest.mark.parametrize(
    "args",
    [[], ["nope"], ["hog"], ["hog", "--mib", "x"], ["hog", "--mib", "4", "--passes", "0"]],
)
def test_usage_errors_exit_2(tool: Path, args: list[str]) -> None:
    out = _run(tool, *args)
    assert out.returncode == 2
    assert "usage" in out.stderr


def test_sample_ticks_with_every_section(tool: Path) -> None:
    proc = subprocess.Popen(
        [str(tool), "sample", "--interval-ms", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(0.35)
    proc.terminate()
    stdout, _ = proc.communicate(timeout=5)
    ticks = stdout.split("@@end\n")
    complete = [t for t in ticks if t.startswith("@@ ")]
    assert len(complete) >= 3
    for tick in complete:
        head = tick.splitlines()[0]
        assert re.fullmatch(r"@@ \d+ \d+", head)
        headers = [ln[3:] for ln in tick.splitlines() if ln.startswith("## ")]
        assert headers == SAMPLED
        assert "nr_free_pages" in tick and "MemTotal:" in tick


def test_start_at_wakes_on_time(tool: Path) -> None:
    start_at = time.time_ns() + 300_000_000
    out = _run(tool, "hog", "--mib", "1", "--start-at", str(start_at))
    assert out.returncode == 0
    started = int(out.stdout.splitlines()[0].split()[1])
    assert start_at <= started < start_at + 20_000_000


# ---------------------------------------------------------------- libmlockall

_LOCK_PROBE = """
import os, sys
def vmlck(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    return -1
print("parent", vmlck(os.getpid()), os.environ.get("LD_PRELOAD", "unset"))
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    print("child", vmlck(os.getpid()))
    sys.stdout.flush()
    # After execve the locks (and MCL_FUTURE) are gone and LD_PRELOAD is not passed on.
    os.execv("/bin/sh", ["sh", "-c", 'echo exec $(grep VmLck /proc/$$/status | tr -dc 0-9) "${LD_PRELOAD:-unset}"'])
os.waitpid(pid, 0)
"""


def _may_lock_a_python() -> bool:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY


def test_mlockall_library_is_cached_and_shared() -> None:
    lib = mlockall_library()
    assert mlockall_library() == lib
    assert lib.read_bytes()[:4] == b"\x7fELF"
    assert lib.name.endswith(".so")


@pytest.mark.skipif(not _may_lock_a_python(), reason="needs root or an unlimited RLIMIT_MEMLOCK")
def test_mlockall_preload_locks_process_and_forked_children_but_not_exec() -> None:
    lib = mlockall_library()
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(lib)}
    out = subprocess.run(
        [sys.executable, "-c", _LOCK_PROBE], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    parent_kib, parent_env = lines["parent"].split()
    assert int(parent_kib) > 0  # constructor locked the process
    assert parent_env == "unset"  # and dropped LD_PRELOAD from its environment
    assert int(lines["child"]) > 0  # locks are not inherited: the atfork handler relocked
    exec_kib, exec_env = lines["exec"].split()
    assert int(exec_kib) == 0 and exec_env == "unset"
