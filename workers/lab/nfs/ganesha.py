"""nfs-ganesha in user space as a lab's NFS server (the embedded local lab).

One ganesha.nfsd per lab, NFSv4 only, bound to 127.0.0.1 on its own port with its own
config, log, pid file and recovery directory under the lab's state dir. Several runs, in
several processes, share it: ``ensure_serving`` is serialized by an fcntl lock and never
restarts a live server (a changed node list is loaded with SIGHUP).

Each node of the lab has an export of its own: a directory ``<export_dir>/<node>``, pseudo
path ``<pseudo>/<node>``, closed to everyone but the node's client address (its route,
``model.lab.NfsRoute``: 127.0.0.N from the QEMU relay, which also needs a port below 1024).
The guests are root there (No_Root_Squash: swap files are root's), so the host never
follows what a guest leaves in its export: swap files are opened without following links,
read only when they are plain files, and never past their planned size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from model.lab import NfsRoute
from model.paths import cache_dir
from workers.lab.nfs import register_backend
from workers.lab.nfs.base import NfsExport, NfsServerError
from workers.process import cmdline, pid_alive

DEFAULT_PORT = 12049
DEFAULT_BIND = "127.0.0.1"
DEFAULT_GUEST_ADDRESS = "10.0.2.100"
DEFAULT_PSEUDO = "/export"

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
# An old instance takes 1.5-3 s to exit; starting before it is gone fails "Error binding".
OLD_INSTANCE_TIMEOUT_S = 10.0
POLL_S = 0.05

SWAP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
MIN_SWAP_MIB = 1
MIB = 1024 * 1024
PAGE_SIZE = 4096
# What the config quotes: a directory with one of these would end the string early.
_CONFIG_UNSAFE = set('"\\\n;{}#')

# statfs f_type magic numbers (linux/magic.h).
_FS_OK = {0xEF53: "ext2/ext3/ext4", 0x58465342: "xfs", 0x9123683E: "btrfs"}
_FS_REFUSED = {
    0x01021994: "tmpfs",
    0x794C7630: "overlayfs",
    0x858458F6: "ramfs",
    0x6969: "nfs",
    0x65735546: "fuse",
}

# Ganesha does not exit on some fatal start-up errors (a config parse error leaves it
# idling without listening), so the log is watched for these to fail fast.
# An export with a config error is left out and the daemon serves on without it.
_FATAL_LOG_MARKERS = (
    ":FATAL :",
    "Error (token scan)",
    "Error binding",
    "Fatal error",
    "config_errs_to_log :CONFIG :CRIT",
)
_RELOADED_MARKER = "Reread exports complete"
RELOAD_TIMEOUT_S = 5.0
# The grace period after a restart fault: no longer than the lease (30 s), in which every
# live client renews and so can reclaim; ganesha ends it sooner once all have.
RESTART_GRACE_S = 30


def filesystem_problem(path: Path, f_type: int) -> str | None:
    """Why ``path`` (of statfs type ``f_type``) cannot be exported, or None when it can.

    FSAL VFS needs persistent file handles (name_to_handle_at); tmpfs, overlayfs and
    ramfs lose or lack them, and re-exporting NFS/FUSE is not supported.
    """
    if f_type in _FS_OK:
        return None
    fs = _FS_REFUSED.get(f_type, f"unknown filesystem 0x{f_type:x}")
    supported = ", ".join(_FS_OK.values())
    return (
        f"export dir {path} is on {fs}: nfs-ganesha FSAL VFS needs a filesystem with "
        f"persistent file handles ({supported}); set swaplab_nfs_export_dir elsewhere"
    )


def statfs_type(path: Path) -> int:
    """The statfs f_type of ``path`` (os.statvfs does not expose it)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on every arch
    if libc.statfs(os.fsencode(str(path)), buf) != 0:
        err = ctypes.get_errno()
        raise NfsServerError(f"statfs {path}: {os.strerror(err)}")
    # f_type is the first field, a native long (__fsword_t) on Linux.
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def node_pseudo(pseudo: str, node: str) -> str:
    """The pseudo path of ``node``'s own export."""
    return f"{pseudo.rstrip('/')}/{node}"


def render_config(
    *,
    port: int,
    bind: str,
    export_dir: Path,
    pseudo: str,
    recovery_root: Path,
    routes: Iterable[NfsRoute],
    grace: bool = False,
) -> str:
    """The ganesha.conf text: NFSv4 only, one export per node; no grace period unless
    ``grace`` (the start after a restart fault, when the run's clients reclaim their state)."""
    exports = "".join(_render_export(route, export_dir, pseudo) for route in routes)
    if grace:
        grace_lines = f"""    # A restart fault: the run's clients reclaim their open swap files (recorded in the
    # recovery directory, which every start keeps) before new state is granted.
    Graceless = false;
    Grace_Period = {RESTART_GRACE_S};"""
    else:
        grace_lines = """    # No grace period: a lab's start serves at once (its guests are new: nothing to reclaim).
    Graceless = true;"""
    return f"""\
# Generated by swaplab; rewritten by every ensure_serving().
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {port};
    Bind_addr = {bind};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}

NFSV4 {{
{grace_lines}
    Lease_Lifetime = 30;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery_root}";
}}
{exports}"""


def _render_export(route: NfsRoute, export_dir: Path, pseudo: str) -> str:
    # A relay binds a port below 1024, which only root on the host can: no local user
    # can pose as the node from its address.
    privileged = "\n        PrivilegedPort = true;" if route.relayed else ""
    return f"""
EXPORT {{
    # Node {route.node}: its own directory, open to its client address alone.
    Export_Id = {route.export_id};
    Path = "{export_dir / route.node}";
    Pseudo = "{node_pseudo(pseudo, route.node)}";
    Protocols = 4;
    Transports = TCP;
    Access_Type = None;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL {{
        Name = VFS;
    }}
    CLIENT {{
        Clients = {route.client_address};
        Protocols = 4;
        Access_Type = RW;{privileged}
    }}
}}
"""


def count_written_pages(fd: int, size: int, page_size: int = PAGE_SIZE) -> int:
    """Pages of the open swap file ``fd`` past the header page that are not all zeros.

    mkswap writes only the first page, so any other non-zero page was written by a node.
    Reads at most ``size`` bytes (the planned size), whatever the file has grown to.
    """
    chunk_size = page_size * 256
    zero_chunk = bytes(chunk_size)
    zero_page = bytes(page_size)
    count = 0
    offset = page_size
    while offset < size:
        chunk = os.pread(fd, min(chunk_size, size - offset), offset)
        if not chunk:
            break
        offset += len(chunk)
        if chunk == zero_chunk[: len(chunk)]:
            continue  # fast path: most of a swap file is usually untouched
        for off in range(0, len(chunk), page_size):
            if chunk[off : off + page_size] != zero_page[: len(chunk) - off]:
                count += 1
    return count


def validate_swap_name(name: str) -> None:
    """Refuse names that could escape the export dir or confuse a shell on the node."""
    if not SWAP_NAME_RE.fullmatch(name):
        raise NfsServerError(
            f"invalid swap file name {name!r}: use letters, digits, '.', '_', '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )


def _port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(POLL_S)
    return not pid_alive(pid)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class GaneshaServer:
    """The user-space nfs-ganesha server of one lab."""

    def __init__(self, lab: str, settings: dict[str, Any]) -> None:
        self.lab = lab
        self.port = int(settings.get("port", DEFAULT_PORT))
        self.bind = str(settings.get("bind", DEFAULT_BIND))
        self.guest_address = str(settings.get("guest_address", DEFAULT_GUEST_ADDRESS))
        self.pseudo = str(settings.get("pseudo", DEFAULT_PSEUDO))
        export_dir = settings.get("export_dir")
        state_dir = settings.get("state_dir")
        # Absolute paths: the daemon chdirs to / and would not find relative ones.
        self.export_dir = (Path(export_dir) if export_dir else cache_dir("labs", lab, "export")).absolute()
        self.state_dir = (Path(state_dir) if state_dir else cache_dir("labs", lab, "ganesha")).absolute()
        if self.bind == "0.0.0.0":
            raise NfsServerError(f"lab {lab}: refusing to bind NFS on 0.0.0.0; use 127.0.0.1")
        for path in (self.export_dir, self.state_dir):
            if set(str(path)) & _CONFIG_UNSAFE:
                raise NfsServerError(f"lab {lab}: {path} has a character ganesha's config cannot quote")
        # One export per node, from the lab model (load_lab); none without an inventory.
        routes = settings.get("routes", {})
        self.routes: dict[str, NfsRoute] = {
            name: route for name, route in routes.items() if isinstance(route, NfsRoute) and NODE_NAME_RE.match(name)
        }

    # -- files -------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.state_dir / "ganesha.conf"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "ganesha.pid"

    @property
    def recovery_root(self) -> Path:
        return self.state_dir / "recovery"

    def log_path(self) -> Path:
        """The server's log file (kept across restarts; ganesha appends)."""
        return self.state_dir / "ganesha.log"

    def log_end(self) -> int:
        """The log file's size now (0 when there is none yet)."""
        try:
            return self.log_path().stat().st_size
        except OSError:
            return 0

    def read_log(self, offset: int, limit: int) -> bytes:
        """The log from ``offset`` on, at most its last ``limit`` bytes; b"" when it is gone."""
        try:
            with self.log_path().open("rb") as log:
                end = log.seek(0, os.SEEK_END)
                start = offset if offset <= end else 0  # a log shorter than the offset was started anew
                log.seek(max(start, end - limit))
                return log.read(limit)
        except OSError:
            return b""

    def describe_log(self) -> str:
        """The log file's path."""
        return str(self.log_path())

    def where(self) -> str:
        """The daemon and its address."""
        return f"nfs-ganesha on {self.bind}:{self.port}"

    def export(self) -> NfsExport:
        """The root of the lab's exports as nodes address it (each node mounts its own below)."""
        return NfsExport(server=self.guest_address, port=self.port, path=self.pseudo)

    def node_export(self, node: str) -> NfsExport:
        """Where ``node`` mounts its own export from, as the node sees the server."""
        route = self._route(node)
        return NfsExport(server=route.mount_address, port=route.mount_port, path=node_pseudo(self.pseudo, node))

    def data_path(self, node: str) -> str:
        """How ``node``'s swap traffic reaches the server, for its result."""
        route = self._route(node)
        server = f"nfs-ganesha {self.bind}:{self.port}"
        if route.relayed:
            return (
                f"user-mode net, restrict=on, guestfwd {route.mount_address}:{route.mount_port} "
                f"-> relay from {route.client_address} -> {server}"
            )
        return f"direct, {route.mount_address}:{route.mount_port} from {route.client_address} -> {server}"

    def describe_server(self, node: str) -> dict[str, str]:
        """Which server serves ``node``: nfs-ganesha in user space on this host."""
        route = self._route(node)
        access = "RW, No_Root_Squash, NFSv4/TCP" + (", privileged port" if route.relayed else "")
        return {
            "backend": "ganesha",
            "address": f"{self.bind}:{self.port}",
            "kernel": f"{os.uname().release} (host; the server runs in user space)",
            "export": str(self.export_dir / route.node),
            "export_options": f"{route.client_address}({access})",
        }

    def swap_file_path(self, node: str, name: str) -> Path:
        """Host path of swap file ``name`` in ``node``'s export (for people: never opened by path)."""
        validate_swap_name(name)
        return self.export_dir / self._route(node).node / name

    def _route(self, node: str) -> NfsRoute:
        try:
            return self.routes[node]
        except KeyError:
            raise NfsServerError(f"lab {self.lab}: node {node!r} has no export on {self.where()}") from None

    # -- server lifecycle ----------------------------------------------------------------

    def ensure_serving(self, progress: Callable[[str], None] = lambda line: None) -> None:
        """Start ganesha unless this lab's instance already serves; wait until it does."""
        self._check_prerequisites()
        with self._lock():
            changed = self._write_config()
            if self.is_serving():
                if changed:
                    self._reload()
                return
            self._clear_old_instance()
            # A graceless start reclaims nothing: the clients recorded by earlier starts
            # (guests killed without unmounting) would only hold a later restart's grace
            # period open to its end.
            shutil.rmtree(self.recovery_root, ignore_errors=True)
            self.recovery_root.mkdir(parents=True, exist_ok=True)
            self._start()
            self._loaded()

    def stop_for_restart(self) -> None:
        """Kill our ganesha at once, as a crash or a power cut would (a clean exit takes
        seconds, in which the nodes fill their memory); its recovery directory stays."""
        with self._lock():
            pid = self._our_pid()
            if pid is None:
                raise NfsServerError(f"lab {self.lab}: ganesha.nfsd is not running: nothing to restart")
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, STOP_TIMEOUT_S):
                raise NfsServerError(f"lab {self.lab}: ganesha.nfsd {pid} outlived SIGKILL for {STOP_TIMEOUT_S:.0f} s")
            self.pid_path.unlink(missing_ok=True)

    def start_after_restart(self) -> None:
        """Start ganesha again with a grace period: the run's clients reclaim their state."""
        self._check_prerequisites()
        with self._lock():
            self._write_config(grace=True)
            self._clear_old_instance()
            self._start()
            # The grace config is what runs now: the next ensure_serving reloads the plain one.
            self._loaded()

    def delay_to(self, address: str, ms: float) -> None:
        """Refused: ganesha answers on this host's loopback, where no delay may be added."""
        raise NfsServerError(f"lab {self.lab}: latency needs a lab network and its server VM (knfsd)")

    def undelay_to(self, address: str) -> None:
        """Nothing to end: ganesha is never delayed."""

    def is_serving(self) -> bool:
        """Our ganesha process is alive and its port accepts connections."""
        pid = self._our_pid()
        return pid is not None and _port_accepts(self.bind, self.port)

    def stop(self) -> None:
        """SIGTERM our ganesha, SIGKILL after STOP_TIMEOUT_S; no-op when none runs."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._terminate(STOP_TIMEOUT_S)

    def _check_prerequisites(self) -> None:
        if shutil.which("ganesha.nfsd") is None:
            raise NfsServerError("ganesha.nfsd not found: install the Debian packages nfs-ganesha and nfs-ganesha-vfs")
        self.export_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        problem = filesystem_problem(self.export_dir, statfs_type(self.export_dir))
        if problem:
            raise NfsServerError(f"lab {self.lab}: {problem}")
        for node in self.routes:
            os.close(self._node_dir_fd(node, create=True))

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive across processes: two runs must not start two servers on one port."""
        with (self.state_dir / "ganesha.lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _write_config(self, grace: bool = False) -> bool:
        """Write the config; True when it differs from the one the server last loaded."""
        self.recovery_root.mkdir(parents=True, exist_ok=True)
        text = render_config(
            port=self.port,
            bind=self.bind,
            export_dir=self.export_dir,
            pseudo=self.pseudo,
            recovery_root=self.recovery_root,
            routes=sorted(self.routes.values(), key=lambda route: route.export_id),
            grace=grace,
        )
        # Atomic replace: a concurrent reader never sees half a config.
        tmp = self.config_path.with_suffix(".conf.tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)
        try:
            return self._loaded_config_path.read_text() != text
        except OSError:
            return True

    @property
    def _loaded_config_path(self) -> Path:
        return self.state_dir / "ganesha.conf.loaded"

    def _loaded(self) -> None:
        """Remember the config the server now runs with."""
        shutil.copyfile(self.config_path, self._loaded_config_path)

    def _reload(self) -> None:
        """Make a running server load a changed node list (ganesha re-reads its exports on SIGHUP)."""
        pid = self._our_pid()
        if pid is None:
            return
        log_offset = self.log_path().stat().st_size if self.log_path().exists() else 0
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            if fatal := self._fatal_log_line(log_offset):
                raise NfsServerError(
                    f"lab {self.lab}: the running ganesha.nfsd refused the lab's new exports ({fatal}); "
                    "stop it (swaplab nfs stop) when no run uses it, and it starts with them"
                )
            if self._log_has(log_offset, _RELOADED_MARKER):
                self._loaded()
                return
            time.sleep(POLL_S)
        raise NfsServerError(f"lab {self.lab}: ganesha.nfsd did not reload its exports within {RELOAD_TIMEOUT_S:.0f} s")

    def serving_pid(self) -> int | None:
        """The lab's ganesha.nfsd (checked to be ours, not a recycled pid)."""
        return self._our_pid()

    def _our_pid(self) -> int | None:
        """The pid in the pid file if it is a live ganesha.nfsd using our config."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        # Guard against a recycled pid: the process must be ganesha with our config.
        args = cmdline(pid)
        if not pid_alive(pid) or str(self.config_path) not in args:
            return None
        return pid

    def _clear_old_instance(self) -> None:
        """Let an exiting (or hung, not serving) old instance go before starting anew."""
        pid = self._our_pid()
        if pid is not None and not _wait_gone(pid, OLD_INSTANCE_TIMEOUT_S):
            self._terminate(STOP_TIMEOUT_S)
        if _port_accepts(self.bind, self.port):
            raise NfsServerError(
                f"lab {self.lab}: port {self.bind}:{self.port} is held by another program "
                "(not this lab's ganesha); set swaplab_nfs_port to a free port"
            )

    def _start(self) -> None:
        self.pid_path.unlink(missing_ok=True)
        log_offset = self.log_path().stat().st_size if self.log_path().exists() else 0
        argv = [
            "ganesha.nfsd",
            "-f", str(self.config_path),
            "-L", str(self.log_path()),
            "-p", str(self.pid_path),
            "-N", "NIV_EVENT",
        ]  # fmt: skip
        # ganesha.nfsd daemonizes itself; its own session keeps a Ctrl-C in the CLI from
        # reaching the shared server. Output goes to a file, never a pipe we would wait on.
        with (self.state_dir / "ganesha.stderr").open("ab") as err:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise NfsServerError(
                f"lab {self.lab}: ganesha.nfsd exited with {result.returncode}:\n" + _tail(self.log_path())
            )
        self._wait_until_serving(log_offset)

    def _wait_until_serving(self, log_offset: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.is_serving():
                return
            if self._fatal_log_line(log_offset) or self._started_and_died():
                break
            time.sleep(POLL_S)
        reason = "failed to start" if time.monotonic() < deadline else "did not serve"
        # Do not leave a half-started daemon behind (it may idle without listening).
        self._terminate(STOP_TIMEOUT_S)
        raise NfsServerError(
            f"lab {self.lab}: ganesha.nfsd {reason} on {self.bind}:{self.port} "
            f"(timeout {START_TIMEOUT_S:.0f} s); log {self.log_path()}:\n" + _tail(self.log_path())
        )

    def _started_and_died(self) -> bool:
        """The daemon wrote its pid and that process is gone.

        ganesha creates its pid file before it writes the pid into it: an empty or partial
        file means "still starting", never "dead" (reading it as dead killed a healthy
        daemon in about one start out of ten).
        """
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return False
        return not pid_alive(pid)

    def _fatal_log_line(self, offset: int) -> str | None:
        for line in self._log_since(offset).splitlines():
            if any(marker in line for marker in _FATAL_LOG_MARKERS):
                return line
        return None

    def _log_has(self, offset: int, marker: str) -> bool:
        return marker in self._log_since(offset)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path().open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _terminate(self, timeout: float) -> None:
        pid = self._our_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not _wait_gone(pid, timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            _wait_gone(pid, 5.0)
        # ganesha removes its pid file on a clean exit, not after SIGKILL.
        self.pid_path.unlink(missing_ok=True)

    # -- swap files ----------------------------------------------------------------------

    def create_swap_file(self, node: str, name: str, size_mib: int) -> str:
        """A fully allocated, mkswap'ed swap file in ``node``'s export; its host path, for people."""
        path = self.swap_file_path(node, name)
        if size_mib < MIN_SWAP_MIB:
            raise NfsServerError(f"swap file {name}: size {size_mib} MiB is too small")
        mkswap = shutil.which("mkswap")
        if mkswap is None:
            raise NfsServerError("mkswap not found: install the Debian package util-linux")
        self.export_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dir_fd = self._node_dir_fd(node, create=True)
        try:
            _remove_entry(dir_fd, name)  # whatever a guest left under that name, unfollowed
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                _fill_swap_file(fd, size_mib * MIB, mkswap, path)
            except BaseException:
                _remove_entry(dir_fd, name)
                raise
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
        return str(path)

    def written_pages(self, node: str, name: str, size_mib: int) -> int | None:
        """Non-zero pages past the header of ``node``'s swap file ``name``; None when it is gone.

        The node is root in its export and may have replaced the file: anything but the
        plain file swaplab made (a link, a FIFO, a device, a directory, a hard link) is
        refused unread (NfsServerError), and at most ``size_mib`` MiB are read.
        """
        validate_swap_name(name)
        try:
            dir_fd = self._node_dir_fd(node, create=False)
        except FileNotFoundError:
            return None
        try:
            try:
                fd = _open_plain_file(dir_fd, name)
            except FileNotFoundError:
                return None
            try:
                return count_written_pages(fd, size_mib * MIB)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def remove_swap_file(self, node: str, name: str) -> None:
        """Remove swap file ``name`` of ``node`` (whatever it has become, never following it); idempotent."""
        validate_swap_name(name)
        try:
            dir_fd = self._node_dir_fd(node, create=False)
        except FileNotFoundError:
            return
        try:
            _remove_entry(dir_fd, name)
        finally:
            os.close(dir_fd)

    def _node_dir_fd(self, node: str, create: bool) -> int:
        """An fd of ``node``'s export directory: ours, 0700, no link (FileNotFoundError if missing)."""
        path = self.export_dir / self._route(node).node
        if create:
            with suppress(FileExistsError):
                os.mkdir(path, 0o700)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as err:
            raise NfsServerError(f"{path} is not a directory (a link or a file left there?): {err}") from err
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise NfsServerError(f"{path} belongs to uid {st.st_uid}, not to this server's user: refused")
        os.fchmod(fd, 0o700)
        return fd


def _open_plain_file(dir_fd: int, name: str) -> int:
    """``name`` in ``dir_fd`` opened for reading if it is a plain file with one link; else refused unopened."""
    # O_PATH opens nothing: no FIFO blocks, no device driver runs, a link is not followed.
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise NfsServerError(f"{name} is {_kind(st)}, not the swap file swaplab made: not read")
        # Reopening the O_PATH descriptor opens that very inode, whatever the name is now.
        return os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(path_fd)


def _kind(st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        return f"a file with {st.st_nlink} links"
    kinds = {
        stat.S_IFLNK: "a symbolic link",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFDIR: "a directory",
        stat.S_IFSOCK: "a socket",
    }
    return kinds.get(stat.S_IFMT(st.st_mode), "not a plain file")


def _remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` from ``dir_fd`` whatever it is; a link goes, its target stays."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based: no link inside it is followed


def _fill_swap_file(fd: int, size: int, mkswap: str, path: Path) -> None:
    """Allocate every block of the new file ``fd`` (the kernel refuses holes) and mkswap it."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise NfsServerError(f"cannot allocate swap file {path}: {exc}") from exc
        _write_zeros(fd, size)
    os.fchmod(fd, 0o600)  # mkswap and swapon warn about anything wider
    os.fsync(fd)
    # mkswap writes through our descriptor, never through a name a guest could replace.
    result = subprocess.run(
        [mkswap, f"/proc/self/fd/{fd}"], pass_fds=(fd,), capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise NfsServerError(f"mkswap {path} failed: {result.stderr.strip()}")
    allocated = os.fstat(fd).st_blocks * 512
    if allocated < size:
        raise NfsServerError(
            f"swap file {path} is sparse ({allocated} of {size} bytes allocated): "
            "the node's swapon would fail with 'swapfile has holes'"
        )


def _write_zeros(fd: int, size: int) -> None:
    chunk = bytes(MIB)
    written = 0
    while written < size:
        written += os.write(fd, chunk[: min(len(chunk), size - written)])


@register_backend("ganesha")
def _make_ganesha(lab: str, settings: dict[str, Any]) -> GaneshaServer:
    return GaneshaServer(lab, settings)
