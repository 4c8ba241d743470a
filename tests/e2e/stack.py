"""The services an end-to-end module runs its campaigns on: its own redis-server (AOF),
its own Prometheus scraping only its workers, one supervised Celery worker, and the real
``swaplab`` CLI pointed at them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from orchestrator.services import LocalPrometheus, LocalRedis, LocalWorker
from tests.conftest import free_port

SWAPLAB = Path(sys.executable).with_name("swaplab")


class Lab:
    """The services of this module and helpers to drive the CLI against them."""

    def __init__(self, tmp: Path, queues: list[str], labs: list[Path]) -> None:
        self.queues = queues
        self.redis_server = LocalRedis(data_dir=tmp / "redis")
        self.url = f"unix://{self.redis_server.socket}?db=0"
        # Its own Prometheus, scraping only this module's workers (their file_sd directory).
        prometheus_url = f"http://127.0.0.1:{free_port()}"
        (tmp / "prometheus").mkdir()
        self.prometheus = LocalPrometheus(prometheus_url, data_dir=tmp / "prometheus", targets=tmp / "targets")
        self.env = {
            **os.environ,
            "SWAPLAB_REDIS_URL": self.url,
            "SWAPLAB_RESULTS": str(tmp / "results"),
            "SWAPLAB_PROMETHEUS_URL": prometheus_url,
            "SWAPLAB_PROMETHEUS_SD_DIR": str(tmp / "targets"),
            # Its own results database: never the user's history in the cache.
            "SWAPLAB_DB_URL": f"sqlite:///{tmp / 'results.db'}",
            # The worker's own inventories: the labs it serves, whatever a message says.
            "SWAPLAB_LABS": os.pathsep.join(str(lab) for lab in labs),
            # The CLI and the worker read the test redis' generated password from here.
            "SWAPLAB_REDIS_PASSWORD_FILE": str(tmp / "redis" / "password"),
        }
        self.tmp = tmp
        self.worker: LocalWorker | None = None

    @property
    def client(self) -> redis.Redis:
        return self.redis_server.client(decode_responses=True)

    def start_worker(self) -> LocalWorker:
        worker = LocalWorker(self.queues, concurrency=5, log_file=self.tmp / "worker.log", name="e2e", env=self.env)
        worker.start(self.redis_server.client())
        self.worker = worker
        return worker

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(SWAPLAB), *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        sys.stderr.write(proc.stderr)
        return proc

    def submit(self, campaign: Path) -> str:
        proc = self.cli("submit", "--json", str(campaign))
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["campaign_id"])

    def node_state(self, cid: str, node: str = "node1") -> dict[str, str]:
        return self.client.hgetall(f"swaplab:node:{cid}:r001:{node}")

    def wait_for_phase(self, cid: str, phase: str, timeout: float = 240, node: str = "node1") -> None:
        deadline = time.monotonic() + timeout
        while self.node_state(cid, node).get("status") != phase:
            assert time.monotonic() < deadline, f"{node} never reached {phase}: {self.node_state(cid, node)}"
            time.sleep(0.5)

    def leases(self, lab: str = "e2e") -> list[str]:
        return list(self.client.scan_iter(f"swaplab:lease:{lab}:*"))

    def start(self) -> None:
        self.redis_server.start()
        self.prometheus.start()
        self.start_worker()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.prometheus.stop()
        self.redis_server.stop()
