"""A real SSH server for tests that play a node: dropbear on 127.0.0.1, logging in as root
with a key made here, run in a private mount namespace whose /root is a fresh tmpfs (the
authorized key goes there, the host's /root is never touched).

Commands run on this host as root, so a test's "node tool" is a script in its tmp dir.
Use the fixture by importing it into a test module (it registers as ``local_sshd``)::

    from tests.integration.local_sshd import LocalSshd, local_sshd_fixture  # noqa: F401
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import free_port, unavailable
from workers.node_ssh import NodeShell, SshTarget

_SERVE = """set -e
mount -t tmpfs -o mode=0700,size=1m swaplab-test /root
mkdir -m 0700 /root/.ssh
cp {public} /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
exec {dropbear} -F -E -s -p 127.0.0.1:{port} -r {host_key} -P {pid_file}
"""


@dataclass
class LocalSshd:
    """The running server: where to log in, and its log."""

    target: SshTarget
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        """End the server and what it started (its process group: ours)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def start_sshd(workdir: Path) -> LocalSshd:
    dropbear, dropbearkey, unshare = (shutil.which(tool) for tool in ("dropbear", "dropbearkey", "unshare"))
    if not (dropbear and dropbearkey and unshare):
        unavailable("dropbear, dropbearkey and unshare are needed for a local SSH server (scripts/setup)")
    if os.geteuid() != 0:
        unavailable("a local SSH server logging in as root needs root (a private mount namespace)")
    assert dropbear and dropbearkey and unshare
    workdir.mkdir(parents=True, exist_ok=True)
    client, public, host_key = workdir / "client", workdir / "client.pub", workdir / "host_key"
    key = Ed25519PrivateKey.generate()
    client.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    client.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    subprocess.run([dropbearkey, "-t", "ed25519", "-f", str(host_key)], check=True, capture_output=True)
    shown = subprocess.run([dropbearkey, "-y", "-f", str(host_key)], check=True, capture_output=True, text=True)
    host_public = next(line for line in shown.stdout.splitlines() if line.startswith("ssh-ed25519 "))
    port = free_port()
    script = _SERVE.format(
        public=shlex.quote(str(public)),
        dropbear=shlex.quote(dropbear),
        port=port,
        host_key=shlex.quote(str(host_key)),
        pid_file=shlex.quote(str(workdir / "dropbear.pid")),
    )
    log = workdir / "dropbear.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LocalSshd(SshTarget("127.0.0.1", port, "root", key_file=client, host_key=host_public), log, proc)
    deadline = time.monotonic() + 10
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"dropbear did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return server


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
            probe.settimeout(1)
            return probe.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@pytest.fixture(scope="module", name="local_sshd")
def local_sshd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(name="node_shell")
def node_shell_fixture(local_sshd: LocalSshd) -> Iterator[NodeShell]:
    """A swaplab NodeShell logged in to the local sshd, closed after the test."""
    shell = NodeShell.connect(local_sshd.target)
    yield shell
    shell.close()
