"""The services ``swaplab run`` starts for the embedded default lab when none are
configured: a redis-server (AOF on, 127.0.0.1, its own port), a Prometheus (127.0.0.1,
its own port, scraping every local worker through file_sd) and a Celery worker.

``SWAPLAB_REDIS_URL`` set means "services are configured": nothing is started then.
"""

from __future__ import annotations

import contextlib
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
from model.paths import cache_dir, private_file
from model.state import BUILD_QUEUE, CONTROL_QUEUE, DEFAULT_REDIS_URL, lab_queue, redis_url
from orchestrator.prometheus import PrometheusApi, prometheus_url
from workers.exporter import targets_dir
from workers.nfs import NfsServer, NfsServerError, make_nfs_server

# A judged run is counted a few seconds after its verdict (workers.exporter.count_run).
METRICS_FLUSH_S = 5.0
RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules"


class ServiceError(RuntimeError):
    """A local service did not start."""


class LocalRedis:
    """redis-server on 127.0.0.1 with an append-only file, so state survives a restart, and
    a generated password: any other user of the host may reach 127.0.0.1, so without one
    anybody could read or rewrite every campaign (and what the workers run for it).

    The password lives in ``<data_dir>/password`` (0600, in a 0700 directory), where the
    CLI and the workers of the same user read it (model.state.redis_url); the server reads
    it from its own 0600 config file, never from its command line.
    """

    def __init__(self, url: str = DEFAULT_REDIS_URL, data_dir: Path | None = None) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 16379
        self.data_dir = data_dir or cache_dir("redis", str(self.port))
        self.password_file = self.data_dir / "password"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        """This server's password, generated on first use."""
        if not self.password_file.exists():
            private_file(self.password_file, secrets.token_urlsafe(32) + "\n")
        return self.password_file.read_text().strip()

    @property
    def url(self) -> str:
        """The URL clients use, password included (never print it: see model.state.redacted)."""
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password, **options)

    def ping(self) -> bool:
        try:
            return bool(self.client(socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def start(self, timeout_s: float = 10.0) -> None:
        if self.host != "127.0.0.1":
            raise ServiceError(f"will only start redis on 127.0.0.1, not {self.host}")
        config = self.data_dir / "redis.conf"
        private_file(config, self._config())
        try:
            self.proc = subprocess.Popen(
                ["redis-server", str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
            )
        except FileNotFoundError:
            raise ServiceError("redis-server not found: run scripts/setup (Debian package redis-server)") from None
        _wait_for(
            self.ping,
            timeout_s,
            lambda: f"redis-server did not answer on 127.0.0.1:{self.port} (log: {self.data_dir / 'redis.log'})",
        )

    def _config(self) -> str:
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": '""',
            "protected-mode": "yes",
            "logfile": str(self.data_dir / "redis.log"),
            "requirepass": self.password,
        }
        return "# written by swaplab for its embedded redis-server (mode 0600: it holds the password)\n" + "".join(
            f"{key} {value}\n" for key, value in settings.items()
        )

    def stop(self) -> None:
        """SHUTDOWN (flushes the AOF), then make sure the process is gone."""
        with contextlib.suppress(redis.RedisError):
            self.client(socket_timeout=5).shutdown(nosave=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LocalPrometheus:
    """Prometheus on 127.0.0.1 (Debian's package), its TSDB in the cache so a finished
    campaign can be judged again later; scrapes every 1 s the workers that announced
    themselves in the file_sd directory, and loads the recording rules of deploy/."""

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
        self.proc: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        return self.api.ready()

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
        config = self.data_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.targets.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "prometheus.log"
        argv = [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.data_dir / 'data'}",
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
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise ServiceError(f"prometheus exited at start (log: {log_file})")
            return self.ready()

        _wait_for(
            ready, timeout_s, lambda: f"prometheus did not become ready on 127.0.0.1:{self.port} (log: {log_file})"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # flushes the head block's WAL
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


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
    ) -> None:
        self.queues = queues
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
        prefix = f"swaplab:worker:{self.name}-{token}@"

        def registered() -> bool:
            if proc.poll() is not None:
                raise ServiceError(f"celery worker exited at start (log: {self.log_file})")
            return any(key.decode().startswith(prefix) for key in client.scan_iter("swaplab:worker:*"))

        _wait_for(registered, timeout_s, lambda: f"celery worker did not become ready (log: {self.log_file})")

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
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class LocalStores:
    """redis-server and Prometheus, each started unless one already answers; ``stop``
    stops only what ``start`` started. Nothing at all when services are configured."""

    def __init__(self, note: Callable[[str], None] = lambda _text: None) -> None:
        self.note = note
        self.redis = LocalRedis(redis_url())
        self.prometheus = LocalPrometheus()
        self.started_redis = False
        self.started_prometheus = False
        self.configured = "SWAPLAB_REDIS_URL" in os.environ

    def start(self) -> None:
        if self.configured:
            return
        if not self.redis.ping():
            self.redis.start()
            self.started_redis = True
            self.note(
                f"started redis-server on 127.0.0.1:{self.redis.port} (append-only file, and its password "
                f"readable by you only, in {self.redis.data_dir})"
            )
        if not self.prometheus.ready():
            self.prometheus.start()
            self.started_prometheus = True
            self.note(f"started prometheus on {self.prometheus.api.url} (TSDB in {self.prometheus.data_dir})")

    def stop(self) -> None:
        if self.started_prometheus:
            self.prometheus.stop()
        if self.started_redis:
            self.redis.stop()


class LocalServices:
    """Context manager: start what is missing for ``lab`` (stores and a worker), stop what
    it started, and say what stays up.

    The lab's NFS server is long-lived and shared by every run of the lab: one that was
    serving before is left serving (and said so); one that this command's run started is
    stopped with the other services.
    """

    def __init__(self, lab: Lab, concurrency: int, log_dir: Path, note: Callable[[str], None] = lambda _text: None) -> None:
        self.note = note
        self.stores = LocalStores(note)
        # The worker serves this lab from its own copy of the inventory, never from messages.
        env = {**os.environ, "SWAPLAB_LABS": str(lab.inventory)}
        # It builds the campaign's `build` kernels too (scripts/setup installs a toolchain).
        queues = [CONTROL_QUEUE, lab_queue(lab.name), BUILD_QUEUE]
        self.worker = LocalWorker(queues, concurrency, log_dir / "worker.log", env=env)
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
            self.worker.start(redis.Redis.from_url(self.stores.redis.url))
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
        if self.stores.started_prometheus:
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
                f"`swaplab nfs stop -i {self.lab.inventory}` stops it)"
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
