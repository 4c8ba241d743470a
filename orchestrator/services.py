"""The services ``swaplab run`` starts for the embedded default lab when none are
configured: a redis-server (AOF on, on a Unix socket in a private directory), a
Prometheus (127.0.0.1, its own port, believed only when its listener is proven ours,
scraping every local worker through file_sd) and a Celery worker.

``SWAPLAB_REDIS_URL`` set means "services are configured": nothing is started then.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlparse

import redis
import yaml

from model.lab import Lab
from model.paths import UnsafePath, cache_dir, private_dir, private_file
from model.state import BUILD_QUEUE, CONTROL_QUEUE, embedded_redis_dir, lab_queue
from orchestrator.listeners import our_process, stranger_on
from orchestrator.prometheus import PrometheusApi, prometheus_url
from orchestrator.service_users import ServiceUsers
from workers.exporter import targets_dir
from workers.lab.nfs import NfsServer, NfsServerError, make_nfs_server
from workers.process import cmdline, owner_uid, pid_alive, start_ticks

# A judged run is counted a few seconds after its verdict (workers.exporter.count_run).
METRICS_FLUSH_S = 5.0
_SUN_PATH_MAX = 107  # a Unix socket's path, in bytes, without its terminating NUL
RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules"


class ServiceError(RuntimeError):
    """A local service did not start."""


class LocalRedis:
    """redis-server with an append-only file, so state survives a restart, listening only
    on a Unix socket in a 0700 directory of the user's cache, with a generated password.

    No other user of the host can connect to it, nor bind its address first and pose as
    it to collect the password (which a TCP port on 127.0.0.1 allows). The password lives
    in ``<data_dir>/password`` (0600), where the CLI and the workers of the same user read
    it (model.state.redis_url); the server reads it from its own 0600 config file, never
    from its command line.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir or embedded_redis_dir()
        self.socket = self.data_dir / "redis.sock"
        self.password_file = self.data_dir / "password"
        self.pid_file = self.data_dir / "redis.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        if len(os.fsencode(self.socket)) > _SUN_PATH_MAX:
            raise ServiceError(f"redis socket path {self.socket} is too long for a Unix socket; set SWAPLAB_CACHE shorter")

    def where(self) -> str:
        return f"unix socket {self.socket}"

    @property
    def password(self) -> str:
        """This server's password, generated on first use."""
        private_dir(self.data_dir)
        if not self.password_file.exists():
            private_file(self.password_file, secrets.token_urlsafe(32) + "\n")
        return self.password_file.read_text().strip()

    @property
    def url(self) -> str:
        """The URL redis-py clients use, password included (never print it: model.state.redacted)."""
        return f"unix://:{quote(self.password, safe='')}@{self.socket}?db=0"

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password, **options)

    def ping(self) -> bool:
        if not self.socket.is_socket():
            return False
        try:
            return bool(self.client(socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def pid(self) -> int | None:
        """The running server's pid, when its pid file names a live redis-server of ours on our socket."""
        pid = our_process(self.pid_file, "redis-server")
        return pid if pid is not None and f"unixsocket:{self.socket}" in " ".join(cmdline(pid)) else None

    def start(self, timeout_s: float = 10.0) -> None:
        private_dir(self.data_dir)
        self.socket.unlink(missing_ok=True)  # a stale socket of ours from a killed server
        config = self.data_dir / "redis.conf"
        private_file(config, self._config())
        try:
            self.proc = subprocess.Popen(
                ["redis-server", str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
            )
        except FileNotFoundError:
            raise ServiceError("redis-server not found: run scripts/setup (Debian package redis-server)") from None
        _wait_for(self.ping, timeout_s, lambda: f"redis-server did not answer on {self.socket} (log: {self.data_dir / 'redis.log'})")

    def _config(self) -> str:
        settings = {
            "port": "0",  # no TCP listener at all
            "unixsocket": str(self.socket),
            "unixsocketperm": "700",
            "pidfile": str(self.pid_file),
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": '""',
            "logfile": str(self.data_dir / "redis.log"),
            "requirepass": self.password,
        }
        return "# written by swaplab for its embedded redis-server (mode 0600: it holds the password)\n" + "".join(
            f"{key} {value}\n" for key, value in settings.items()
        )

    def stop(self) -> None:
        """SHUTDOWN (flushes the AOF), then make sure the process is gone."""
        pid = self.proc.pid if self.proc is not None else self.pid()
        with contextlib.suppress(redis.RedisError):
            self.client(socket_timeout=5).shutdown(nosave=False)
        if pid is not None and not _wait_gone(pid, self.proc, timeout_s=10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, self.proc, timeout_s=5)


class LocalPrometheus:
    """Prometheus on 127.0.0.1 (Debian's package), its TSDB in the cache so a finished
    campaign can be judged again later; scrapes every 1 s the workers that announced
    themselves in the file_sd directory, and loads the recording rules of deploy/.

    Prometheus cannot listen on a Unix socket, and any user may bind its port first: what
    answers there is believed only when the kernel says the listening socket belongs to
    the process this class started (its pid file, this user, our config on its command
    line).
    """

    def __init__(
        self, url: str | None = None, data_dir: Path | None = None, targets: Path | None = None, admin_api: bool = False
    ) -> None:
        parsed = urlparse(url or prometheus_url())
        # Off by default: with it, any user of the host could delete the series a later
        # `swaplab check` judges from. Only a command that needs it turns it on for itself.
        self.admin_api = admin_api
        self.targets = targets or targets_dir()
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 19090
        self.api = PrometheusApi(f"http://{self.host}:{self.port}")
        self.data_dir = data_dir or cache_dir("prometheus", str(self.port))
        self.pid_file = self.data_dir / "prometheus.pid"
        self.config_file = self.data_dir / "prometheus.yml"
        self.proc: subprocess.Popen[bytes] | None = None

    def where(self) -> str:
        return self.api.url

    def ready(self) -> bool:
        """Our Prometheus answers (a stranger on the port is not ready: see ``squatter``)."""
        return self.squatter() is None and self.pid() is not None and self.api.ready()

    def pid(self) -> int | None:
        """The running server's pid, when its pid file names a live Prometheus of ours on our config."""
        pid = our_process(self.pid_file, "prometheus")
        return pid if pid is not None and f"--config.file={self.config_file}" in cmdline(pid) else None

    def squatter(self) -> str | None:
        """Who holds the port if it is not our Prometheus (None when it is ours, or free)."""
        return stranger_on(self.port, self.pid())

    def config(self) -> dict[str, object]:
        """The configuration it runs with (scrape_timeout may not exceed the interval)."""
        return {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES_DIR / "*.yml")],
            "scrape_configs": [
                {
                    "job_name": "swaplab-workers",
                    "file_sd_configs": [{"files": [str(self.targets / "*.json")], "refresh_interval": "5s"}],
                }
            ],
        }

    def start(self, timeout_s: float = 30.0) -> None:
        if self.host != "127.0.0.1":
            raise ServiceError(f"will only start prometheus on 127.0.0.1, not {self.host}")
        squatter = self.squatter()
        if squatter is not None:
            raise PortTaken(self.port, squatter)
        private_dir(self.data_dir)
        self.config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.targets.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "prometheus.log"
        argv = [
            "prometheus", f"--config.file={self.config_file}", f"--storage.tsdb.path={self.data_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=30d",
            *(["--web.enable-admin-api"] if self.admin_api else []),
        ]  # fmt: skip
        try:
            with log_file.open("ab") as log:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
        except FileNotFoundError:
            raise ServiceError("prometheus not found: run scripts/setup (Debian package prometheus)") from None
        private_file(self.pid_file, f"{self.proc.pid}\n")
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                holder = stranger_on(self.port, None)
                where = f"; 127.0.0.1:{self.port} is held by {holder}" if holder else ""
                raise ServiceError(f"prometheus exited at start (log: {log_file}){where}")
            return self.ready()

        _wait_for(
            ready, timeout_s, lambda: f"prometheus did not become ready on 127.0.0.1:{self.port} (log: {log_file})"
        )

    def stop(self) -> None:
        pid = self.proc.pid if self.proc is not None else self.pid()
        if pid is None or (self.proc is not None and self.proc.poll() is not None):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # flushes the head block's WAL
        if not _wait_gone(pid, self.proc, timeout_s=30):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, self.proc, timeout_s=10)
        self.pid_file.unlink(missing_ok=True)


class PortTaken(ServiceError):
    """Another program holds the port of an embedded service."""

    def __init__(self, port: int, holder: str) -> None:
        super().__init__(
            f"127.0.0.1:{port} is held by {holder}, not by the Prometheus swaplab started: refusing to "
            "judge runs by its answers. Stop that program, or set SWAPLAB_PROMETHEUS_URL to your Prometheus"
        )


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.pid == pid:
            if proc.poll() is not None:  # our child: reap it
                return True
        elif not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


class LocalWorker:
    """A Celery worker process (threads pool) for the given queues, restarted if it dies.

    Supervision is what systemd or compose's ``restart:`` give a deployed worker: a worker
    lost mid-run (OOM, SIGKILL, or Celery giving up on a broker connection after a Redis
    restart) comes back, cleans up its orphaned guests and resumes the campaigns.
    """

    def __init__(
        self,
        queues: list[str],
        concurrency: int,
        log_file: Path,
        name: str = "swaplab-local",
        env: dict[str, str] | None = None,
        records: Path | None = None,
    ) -> None:
        self.queues = queues
        # Where each spawned worker is recorded with the command that owns it, so a later
        # command can find one whose owner died (``end_orphan_workers``).
        self.records = records
        self.env = dict(env if env is not None else os.environ)  # every restart gets the same
        self.concurrency = concurrency
        self.log_file = log_file
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self, client: redis.Redis, timeout_s: float = 60.0) -> None:
        """Start the worker, wait until it registered, then keep it running."""
        self._spawn(client, timeout_s)
        self._supervisor = threading.Thread(
            target=self._supervise, args=(client,), name="swaplab-worker-supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self, client: redis.Redis, timeout_s: float) -> None:
        token = secrets.token_hex(3)  # a fresh worker name: an old one's registry entry lingers
        argv = [
            sys.executable, "-m", "celery", "-A", "orchestrator.app", "worker", "-Q", ",".join(self.queues),
            "-P", "threads", "-c", str(self.concurrency), "-n", f"{self.name}-{token}@%h",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=self.env
            )
        self.proc = proc
        self._record(proc.pid)
        prefix = f"swaplab:worker:{self.name}-{token}@"

        def registered() -> bool:
            if proc.poll() is not None:
                raise ServiceError(f"celery worker exited at start (log: {self.log_file})")
            return any(key.decode().startswith(prefix) for key in client.scan_iter("swaplab:worker:*"))

        _wait_for(registered, timeout_s, lambda: f"celery worker did not become ready (log: {self.log_file})")

    def _record(self, pid: int) -> None:
        if self.records is None:
            return
        private_dir(self.records)
        for stale in self.records.glob(f"*.owner-{os.getpid()}.json"):
            stale.unlink(missing_ok=True)  # the worker this one replaces
        owner = {"pid": pid, "name": self.name, "owner": os.getpid(), "owner_start": start_ticks(os.getpid())}
        private_file(self.records / f"{pid}.owner-{os.getpid()}.json", json.dumps(owner) + "\n")

    def _supervise(self, client: redis.Redis) -> None:
        while not self._stopping.wait(1.0):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            with self.log_file.open("a") as log:
                print(f"swaplab: worker exited ({proc.returncode}); starting a new one", file=log)
            try:
                self._spawn(client, timeout_s=60.0)
                self.restarts += 1
            except (ServiceError, redis.RedisError, OSError) as err:
                with self.log_file.open("a") as log:
                    print(f"swaplab: worker restart failed: {err}; retrying", file=log)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not go; no restart after this."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=70.0)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.records is not None:
            for record in self.records.glob(f"*.owner-{os.getpid()}.json"):
                record.unlink(missing_ok=True)


def end_orphan_workers(records: Path) -> list[str]:
    """Warm-stop the workers an ended ``swaplab run`` left serving its lab's queues (they
    finish the tasks they are running, then exit); what was done, one line each."""
    done = []
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        try:
            info = json.loads(path.read_text())
            pid, name, owner = int(info["pid"]), str(info["name"]), int(info["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if start_ticks(owner) == info.get("owner_start"):
            continue  # its command still runs: its worker, not an orphan
        path.unlink(missing_ok=True)
        if not _is_our_worker(pid, name):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        done.append(
            f"stopped a celery worker (pid {pid}) that an ended swaplab run (pid {owner}) left serving the lab's "
            "queues; it finishes the tasks it is running, then exits"
        )
    return done


def _is_our_worker(pid: int, name: str) -> bool:
    args = cmdline(pid)
    return (
        pid_alive(pid)
        and owner_uid(pid) == os.geteuid()
        and "celery" in args
        and any(arg.startswith(f"{name}-") for arg in args)
    )


class LocalStores:
    """The embedded redis-server and Prometheus, shared by the swaplab commands that use
    them (``orchestrator.service_users``): each is started unless it runs, adopted when an
    ended command left it running, and stopped by the last command to leave. Nothing at
    all when services are configured (``SWAPLAB_REDIS_URL``)."""

    def __init__(self, note: Callable[[str], None] = lambda _text: None) -> None:
        self.note = note
        self.configured = "SWAPLAB_REDIS_URL" in os.environ
        self.redis = LocalRedis()
        self.prometheus = LocalPrometheus()
        self._joined: list[tuple[str, LocalRedis | LocalPrometheus, ServiceUsers]] = []

    def start(self) -> None:
        if self.configured:
            return
        try:
            self._join("redis-server", self.redis, self.redis.data_dir, self._redis_up)
            self._join("prometheus", self.prometheus, self.prometheus.data_dir, self._prometheus_up)
        except UnsafePath as err:
            raise ServiceError(str(err)) from None

    def _redis_up(self) -> int | None:
        return self.redis.pid() if self.redis.ping() else None

    def _prometheus_up(self) -> int | None:
        squatter = self.prometheus.squatter()
        if squatter is not None:
            raise PortTaken(self.prometheus.port, squatter)
        pid = self.prometheus.pid()
        if pid is not None:
            _wait_for(self.prometheus.ready, 30.0, lambda: f"prometheus (pid {pid}) does not answer")
        return pid

    def _join(
        self, name: str, service: LocalRedis | LocalPrometheus, directory: Path, running: Callable[[], int | None]
    ) -> None:
        users = ServiceUsers(private_dir(directory))
        with users.locked():
            others = users.live()
            users.add()
            self._joined.append((name, service, users))
            pid = running()
            if pid is not None:
                if not others:
                    self.note(
                        f"adopted the {name} on {service.where()} (pid {pid}) that an ended swaplab command left "
                        "running; it stops with this one"
                    )
                return
            service.start()
        self.note(f"started {name} on {service.where()} ({_STARTED[name].format(dir=directory)})")

    def stop(self) -> None:
        while self._joined:
            name, service, users = self._joined.pop()
            with users.locked():
                users.remove()
                others = users.live()
                if not others:
                    service.stop()
                    continue
            pids = ", ".join(map(str, others))
            self.note(f"{name} on {service.where()} stays up: swaplab (pid {pids}) still uses it and stops it at its end")


_STARTED = {
    "redis-server": "append-only file; socket and password reachable by you only, in {dir}",
    "prometheus": "TSDB in {dir}",
}


class LocalServices:
    """Context manager: start what is missing for ``lab`` (stores and a worker), stop what
    it started, and say what stays up.

    A worker that an ended ``swaplab run`` left serving the lab's queues is warm-stopped
    (said), so no forgotten worker serves the lab beside ours. The lab's NFS server is
    long-lived and shared by every run of the lab: one that was serving before is left
    serving (and said so); one that this command's run started is stopped with the other
    services.
    """

    def __init__(self, lab: Lab, concurrency: int, log_dir: Path, note: Callable[[str], None] = lambda _text: None) -> None:
        self.note = note
        self.stores = LocalStores(note)
        # The worker serves this lab from its own copy of the inventory, never from messages.
        env = {**os.environ, "SWAPLAB_LABS": str(lab.inventory)}
        # It builds the campaign's `build` kernels too (scripts/setup installs a toolchain).
        queues = [CONTROL_QUEUE, lab_queue(lab.name), BUILD_QUEUE]
        self.records = cache_dir("services", "workers")
        self.worker = LocalWorker(queues, concurrency, log_dir / "worker.log", env=env, records=self.records)
        self.lab = lab
        self.nfs_was_serving = False

    def _nfs(self) -> NfsServer | None:
        try:
            return make_nfs_server(self.lab.nfs_backend, self.lab.name, self.lab.nfs_settings)
        except NfsServerError:
            return None  # the run will say what is wrong with it

    def __enter__(self) -> LocalServices:
        if self.stores.configured:
            return self
        nfs = self._nfs()
        self.nfs_was_serving = nfs is not None and nfs.is_serving()
        try:
            self.stores.start()
            for line in end_orphan_workers(self.records):
                self.note(line)
            self.worker.start(self.stores.redis.client())
            self.note(f"started a celery worker for {', '.join(self.worker.queues)} (log: {self.worker.log_file})")
        except BaseException:
            self.stores.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.stores.configured:
            return
        self.note("stopping the local services")
        time.sleep(METRICS_FLUSH_S)  # let Prometheus scrape the worker's last figures
        self.worker.stop()
        self.stores.stop()
        self._settle_nfs()

    def _settle_nfs(self) -> None:
        nfs = self._nfs()
        if nfs is None or not nfs.is_serving():
            return
        if self.nfs_was_serving:
            self.note(
                f"lab {self.lab.name}'s {nfs.where()} stays up as it was (shared by every run of the lab; "
                f"`swaplab lab down -i {self.lab.inventory}` takes it down)"
            )
            return
        nfs.stop()
        self.note(f"stopped lab {self.lab.name}'s {nfs.where()} (this run started it)")


def _wait_for(ready: Callable[[], bool], timeout_s: float, message: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise ServiceError(message())
