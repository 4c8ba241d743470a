"""The relay from this host's loopback into a lab namespace, against a real namespace: it
reaches the one address it was given there, which this host itself cannot reach."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration
NS = "swaplab-relaytest"


@pytest.fixture
def namespace() -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", NS, "addr", "add", "10.99.0.1/32", "dev", "lo"], check=True)
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def _started(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_the_relay_reaches_its_address_inside_the_namespace_only(namespace: str) -> None:
    server = _started(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "http.server", "--bind", "10.99.0.1", "8000"]
    )
    port = free_port()
    relay = _started([sys.executable, "-m", "workers.lab.ns_relay", str(port), namespace, "10.99.0.1", "8000"])
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline and relay.poll() is None, relay.stderr
                time.sleep(0.2)
        assert b"Directory listing" in body
        # The host itself has no way there: the address exists only in the namespace.
        with pytest.raises(OSError):
            urllib.request.urlopen("http://10.99.0.1:8000/", timeout=2)
    finally:
        for proc in (relay, server):
            proc.kill()
            proc.wait(10)


def test_the_relay_refuses_a_namespace_that_is_not_a_labs(namespace: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workers.lab.ns_relay", str(free_port()), "other", "10.99.0.1", "22"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "refused arguments" in done.stderr
