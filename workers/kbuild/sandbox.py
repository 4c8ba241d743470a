"""Where a build's commands run: as the build user, with no network, in a private view.

A ``build:`` kernel runs the submitter's code — its Makefiles, Kconfig's ``$(shell)``,
its scripts — and so does git on a repository of theirs. None of it runs as root:

- the user is ``swaplab-build`` (``BUILD_USER``: a system user without a login shell,
  created by ``scripts/setup``); root switches to it with ``setpriv`` (real and effective
  ids, no supplementary groups, ``no_new_privs``, no capabilities, empty bounding set).
  A host set up before builds dropped root has no such user: that is an infra-error
  naming ``scripts/setup``, never a build as root. A worker that is not root builds as
  itself (in a user namespace of its own, whose files are its own);
- root first makes new mount, network, PID, IPC and UTS namespaces (``unshare``): the
  network namespace holds only a loopback that is down; the PID namespace ends every
  process the build started when its first one exits; a tmpfs over ``/run`` holds the
  build's private ``HOME`` and, under ``INSIDE``, only the directories bound in for it
  (``nosuid``, ``nodev``; the lineage's own directory read-write, inputs read-only);
- the environment is the build's own: nothing of the worker's (its Redis URL holds a
  password) reaches it, and no file descriptor but its output.

The build user sees the rest of the host as any local user does (world-readable files,
``/tmp``). What it leaves behind is read by root only through workers.untrusted.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from workers.kernel import KernelError

BUILD_USER = "swaplab-build"
INSIDE = PurePosixPath("/run/swaplab-build")
HOME = INSIDE / "home"
GIT_CONFIG = INSIDE / "gitconfig"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OUTPUT_MAX = 4 << 20  # what run() keeps of a command's stdout and of its stderr
_READY = b"ready\n"

# Run by root as PID 1 of the new namespaces. Its stderr is the "ready" pipe and its stdin
# the build's stderr, until both are put in their places (fds 0-2 only: dash takes no
# other). Arguments: uid, gid, whether to switch user (1) or stay (0: a non-root worker in
# its user namespace), the directory to start in ("" for HOME), then
# (ro|rw SOURCE NAME)... -- COMMAND...
_SETUP = r"""
set -u
uid=$1 gid=$2 switch=$3 dir=$4
shift 4
fail() { echo "$*" >&2; exit 97; }
mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m swaplab-build /run || fail "cannot mount a tmpfs on /run"
mkdir -m 0755 /run/swaplab-build && mkdir -m 0700 /run/swaplab-build/home || fail "cannot make the build's home"
printf '[safe]\n\tdirectory = *\n[gc]\n\tauto = 0\n[core]\n\thooksPath = /dev/null\n' >/run/swaplab-build/gitconfig \
  || fail "cannot write the build's git configuration"
if [ "$switch" = 1 ]; then chown "$uid:$gid" /run/swaplab-build/home || fail "cannot give the home to $uid"; fi
while [ "$1" != "--" ]; do
  mkdir -p "/run/swaplab-build/$3" || fail "cannot make /run/swaplab-build/$3"
  mount --bind "$2" "/run/swaplab-build/$3" || fail "cannot bind $2"
  mount -o "remount,bind,nosuid,nodev,$1" "/run/swaplab-build/$3" || fail "cannot make $3 $1"
  shift 3
done
shift
cd "${dir:-/run/swaplab-build/home}" || fail "no directory $dir"
ulimit -p 4096 || fail "cannot limit the build's processes"  # per user: a fork bomb stays small
echo ready >&2
exec 2>&0 0</dev/null
if [ "$switch" = 1 ]; then
  exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
fi
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
"""


class SandboxError(KernelError):
    """The build could not be started as the build user (the host's fault: infra)."""


@dataclass(frozen=True)
class Account:
    """Who builds: the build user (``switch``), or a non-root worker itself."""

    uid: int
    gid: int
    switch: bool


@dataclass(frozen=True)
class Bind:
    """A directory of the host the build sees at ``INSIDE/name`` (read-only unless ``writable``)."""

    source: Path
    name: str
    writable: bool = False

    @property
    def inside(self) -> PurePosixPath:
        return INSIDE / self.name


def account() -> Account:
    """The account builds run as; SandboxError when root has no build user to switch to."""
    if os.geteuid() != 0:
        return Account(os.geteuid(), os.getegid(), switch=False)
    try:
        entry = pwd.getpwnam(BUILD_USER)
    except KeyError:
        raise SandboxError(
            f"the build user {BUILD_USER!r} does not exist on this host: run scripts/setup "
            "(kernel builds run the submitter's code, never as root)"
        ) from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise SandboxError(f"the build user {BUILD_USER!r} has uid or gid 0: it must be an unprivileged user")
    return Account(entry.pw_uid, entry.pw_gid, switch=True)


class Sandbox:
    """Commands run as ``account()`` with ``binds`` under ``INSIDE`` and ``env`` added."""

    def __init__(self, binds: Sequence[Bind] = (), env: Mapping[str, str] | None = None) -> None:
        self.binds = list(binds)
        self.env = dict(env or {})
        self.account = account()

    def run(self, argv: Sequence[str], cwd: PurePosixPath | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to its end; its output captured (bounded)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            with self.started(argv, out, err, cwd) as proc:
                proc.wait()
            out.seek(0)
            err.seek(0)
            stdout = out.read(_OUTPUT_MAX).decode(errors="replace")
            stderr = err.read(_OUTPUT_MAX).decode(errors="replace")
        return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)

    @contextmanager
    def started(
        self, argv: Sequence[str], out: IO[bytes], err: IO[bytes], cwd: PurePosixPath | None = None
    ) -> Iterator[subprocess.Popen[bytes]]:
        """``argv`` started, writing to ``out`` and ``err`` (files of ours); killed if left early."""
        ready_r, ready_w = os.pipe()
        try:
            proc = subprocess.Popen(
                self._argv(argv, cwd),
                stdin=err.fileno(),
                stdout=out.fileno(),
                stderr=ready_w,
                env=self._environment(),
                start_new_session=True,
            )
        finally:
            os.close(ready_w)
        try:
            _await_ready(ready_r, proc)
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()  # unshare --kill-child takes the whole namespace with it
                proc.wait()

    def _argv(self, argv: Sequence[str], cwd: PurePosixPath | None) -> list[str]:
        who = self.account
        namespaces = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts"]
        if not who.switch:
            namespaces = ["--user", "--map-root-user", *namespaces]
        binds = [arg for bind in self.binds for arg in ("rw" if bind.writable else "ro", str(bind.source), bind.name)]
        setup = [str(who.uid), str(who.gid), "1" if who.switch else "0", str(cwd or "")]
        return ["unshare", *namespaces, "--", "/bin/sh", "-c", _SETUP, "swaplab-sandbox", *setup, *binds, "--", *argv]

    def _environment(self) -> dict[str, str]:
        base = {
            "PATH": _PATH,
            "HOME": str(HOME),
            "USER": BUILD_USER,
            "LOGNAME": BUILD_USER,
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(GIT_CONFIG),
        }
        return {**base, **self.env}


def _await_ready(ready_fd: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait for the setup to say it is done; SandboxError with its words if it is not."""
    said = b""
    with os.fdopen(ready_fd, "rb") as ready:
        while line := ready.readline(4096):
            if line == _READY:
                return
            said += line
            if len(said) > 16384:
                break
    code = proc.wait()
    words = said.decode(errors="replace").strip() or f"exit {code}"
    raise SandboxError(f"the build sandbox could not be set up (unshare, mount, setpriv as root): {words}")
