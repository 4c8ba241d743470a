"""Shared test setup: the e2e/integration tool check that fails in CI instead of skipping."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest
from hypothesis import settings

from workers.loopback import free_tcp_port

# Property-based tests: CI explores the same examples every run (a failure reproduces) and
# bounds their number to keep the suite's time; a developer's run explores new ones.
settings.register_profile("ci", derandomize=True, max_examples=400, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("SWAPLAB_REQUIRE_E2E") else "dev")

# Whatever the tests run (workers, `swaplab run`) stores its campaigns in a database of
# this test session, never in the user's history (~/.cache/swaplab/results.db).
os.environ.setdefault("SWAPLAB_DB_URL", f"sqlite:///{tempfile.mkdtemp(prefix='swaplab-tests-')}/results.db")

E2E_TOOLS = (
    "qemu-system-x86_64",
    "ganesha.nfsd",
    "busybox",
    "dropbear",
    "dropbearkey",
    "mkswap",
    "gcc",
    "apt-get",
    "dpkg-deb",
    "depmod",
)


def require_tools(tools: tuple[str, ...] = E2E_TOOLS) -> None:
    """Skip on a developer machine without the lab's tools; fail when CI demands them."""
    missing = [tool for tool in tools if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]
    if not missing:
        return
    unavailable(f"missing tools for the real lab: {', '.join(missing)} (run scripts/setup)")


def unavailable(message: str) -> None:
    """A real component the test needs is missing: skip on a developer machine, fail in CI."""
    if os.environ.get("SWAPLAB_REQUIRE_E2E"):
        pytest.fail(message)
    pytest.skip(message)


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 right now (a simulated BMC's IPMI-over-LAN port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (never Redis's default 6379)."""
    while True:
        port = free_tcp_port()
        if port != 6379:
            return port
