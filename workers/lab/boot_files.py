"""What a run publishes on the lab's boot server for one pxe node, and its withdrawal.

The boot server (``playbooks/pxe_server.yml``) serves ``<root>/www`` over HTTP. For a
node of a run, swaplab uploads the run's kernel and initrd to ``runs/<token>/`` and writes
``mac/<mac>.ipxe``, the script the node's iPXE chains to from ``boot.ipxe``: boot exactly
that kernel with that command line. Once the node has fetched its initrd the script is
replaced by one that refuses a second boot of the run (a node that reboots — a panic on
hardware without QEMU's ``-no-reboot`` — waits instead of booting again and looking
alive). Withdrawing removes both, and only if the MAC's script is still this publication's
(a later run's is never touched).

Every publication is journalled on the worker's host with its owner process; a worker
start withdraws what a dead worker left (``withdraw_leftovers``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from model.paths import private_dir
from workers.journal import JournalEntry, orphaned_entries, owner

log = logging.getLogger(__name__)
JOURNAL_DIR = Path("/run/swaplab/boot")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9.-]{0,120}")
HTTP_UNIT = "swaplab-boot-http"


class BootFilesError(RuntimeError):
    """The boot server did not take or give up a publication: an infra-error."""


@dataclass(frozen=True)
class Ran:
    """What a command on the boot server did."""

    ok: bool
    stdout: str
    stderr: str


# Runs a shell command on the boot server as root: (command, stdin, timeout) -> Ran.
Runner = Callable[[str, bytes | None, float], Ran]


class Publication(JournalEntry):
    """One node's boot files of one run, as journalled (nothing secret in it)."""

    lab: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    node: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    mac: str = Field(pattern=_MAC.pattern)
    token: str = Field(pattern=_TOKEN.pattern)
    root: str = Field(pattern=r"^/[A-Za-z0-9._/-]{1,100}$")
    url: str = Field(pattern=r"^http://[0-9.]+:[0-9]{1,5}$")
    kernel_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def script(self) -> str:
        return f"{self.root}/www/mac/{self.mac.replace(':', '-')}.ipxe"

    @property
    def files(self) -> str:
        return f"{self.root}/www/runs/{self.token}"

    @property
    def journal(self) -> Path:
        return JOURNAL_DIR / f"{self.lab}-{self.node}.json"


def boot_script(pub: Publication, cmdline: str) -> str:
    """The iPXE script that boots the publication's kernel with ``cmdline``."""
    if "\n" in cmdline or "${" in cmdline:
        raise BootFilesError("a kernel command line for iPXE must be one line without ${...}")
    base = f"{pub.url}/runs/{pub.token}"
    return (
        "#!ipxe\n"
        f"echo swaplab: {pub.node} boots run {pub.token}\n"
        f"kernel {base}/vmlinuz initrd=initrd.img {cmdline}\n"
        f"initrd {base}/initrd.img\n"
        "boot\n"
    )


def refusal_script(pub: Publication) -> str:
    """What the node gets once it has booted its run: no second boot, a wait instead."""
    return (
        "#!ipxe\n"
        f"echo swaplab: {pub.node} booted run {pub.token} already; a second boot is refused\n"
        ":wait\nsleep 60\ngoto wait\n"
    )


def publish(
    run: Runner, lab: str, node: str, mac: str, root: str, url: str, run_id: str,
    kernel: Path, initrd: Path, cmdline: str,
) -> Publication:  # fmt: skip
    """Upload the run's kernel and initrd for ``node`` and point its MAC's script at them."""
    token = re.sub(r"[^a-z0-9.-]", "-", f"{run_id}-{node}-{secrets.token_hex(3)}".lower())[:120]
    kernel_bytes = kernel.read_bytes()
    pid, started = owner()
    pub = Publication(
        lab=lab, node=node, mac=mac, token=token, root=root, url=url,
        kernel_sha256=hashlib.sha256(kernel_bytes).hexdigest(), owner_pid=pid, owner_start=started,
    )  # fmt: skip
    files = shlex.quote(pub.files)
    # Two runs never publish for one machine: a script there is another run's (or a dead
    # worker's, until a worker start withdraws it).
    _run(run, f"test ! -e {shlex.quote(pub.script)}", None,
         f"{node}'s MAC {mac} has a publication of another run ({pub.script})")  # fmt: skip
    _journal(pub)
    _run(run, f"umask 022 && mkdir -p {files}", None, "creating the run's directory")
    _run(run, f"cat > {files}/vmlinuz", kernel_bytes, "uploading the kernel")
    _run(run, f"cat > {files}/initrd.img", initrd.read_bytes(), "uploading the initrd")
    _write(run, pub.script, boot_script(pub, cmdline))
    return pub


def fetched(run: Runner, pub: Publication) -> bool:
    """The node's iPXE asked the HTTP service for this publication's initrd."""
    done = run(f"journalctl -q -o cat -u {HTTP_UNIT} --no-pager | grep -c 'GET /runs/{pub.token}/initrd.img' || true",
               None, 30.0)  # fmt: skip
    return done.ok and done.stdout.strip() not in ("", "0")


def refuse_second_boot(run: Runner, pub: Publication) -> None:
    _write(run, pub.script, refusal_script(pub))


def withdraw(run: Runner, pub: Publication) -> None:
    """Remove the publication's files, and its MAC's script if it is still this one's."""
    script, token = shlex.quote(pub.script), shlex.quote(pub.token)
    _run(run, f"if grep -q -- {token} {script} 2>/dev/null; then rm -f {script}; fi; rm -rf {shlex.quote(pub.files)}",
         None, "withdrawing the run's boot files")  # fmt: skip
    pub.journal.unlink(missing_ok=True)


def withdraw_leftovers(runner_for: Callable[[str], Runner | None]) -> list[str]:
    """Withdraw the publications of workers that died (a live worker's stay): what was withdrawn.

    ``runner_for(lab)`` reaches that lab's boot server, or None when the lab is down (its
    boot server, and what it served, are gone with it)."""
    withdrawn = []
    for path, pub in orphaned_entries(JOURNAL_DIR, Publication, "boot journal entry"):
        try:
            run = runner_for(pub.lab)
            if run is not None:
                withdraw(run, pub)
        except BootFilesError as err:
            log.error("could not withdraw %s: %s", path.name, err)
            continue
        path.unlink(missing_ok=True)
        withdrawn.append(f"{pub.node} of lab {pub.lab} (run {pub.token})")
    return withdrawn


def _write(run: Runner, path: str, text: str) -> None:
    # Atomic: a node's iPXE never reads half a script.
    quoted = shlex.quote(path)
    _run(run, f"umask 022 && cat > {quoted}.tmp && mv -f {quoted}.tmp {quoted}", text.encode(), f"writing {path}")


def _run(run: Runner, command: str, stdin: bytes | None, what: str) -> None:
    done = run(command, stdin, 120.0)
    if not done.ok:
        raise BootFilesError(f"boot server: {what}: {(done.stderr or done.stdout).strip()[-300:]}")


def _journal(pub: Publication) -> None:
    directory = private_dir(JOURNAL_DIR)
    tmp = directory / f".{pub.journal.name}.tmp"
    tmp.write_text(json.dumps(pub.model_dump(mode="json")))
    tmp.replace(pub.journal)
