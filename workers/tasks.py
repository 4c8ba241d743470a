"""Celery tasks: the node task on a lab's queue, and the control tasks that schedule,
evaluate and close campaigns. Thin wrappers: the work is in node_session and scheduler."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import chord, signals

from orchestrator.campaign import Campaign
from orchestrator.report import start_skew_ms
from orchestrator.scheduler import LEASE_TTL_S, Scheduler, holder_id
from orchestrator.store import TERMINAL, CampaignStore
from workers.app import CONTROL_QUEUE, app, lab_queue, redis_url
from workers.drivers import NodeConfig, make_driver
from workers.exporter import LEASES_HELD, START_SKEW, count_run, start_metrics_server
from workers.health import NodeHealth
from workers.lease import LeaseBook, LeaseKeeper
from workers.node_session import run_node_session
from workers.redis_barrier import RedisBarrier
from workers.runspec import NodeResult, NodeRunSpec

log = logging.getLogger(__name__)
TICK_S = 2.0
WORKER_TTL_S = 60


def _redis() -> redis.Redis:
    return redis.Redis.from_url(redis_url(), socket_timeout=10, health_check_interval=5)


def results_root() -> Path:
    """Where workers write result directories (shared with the CLI on one host)."""
    return Path(os.environ.get("SWAPLAB_RESULTS", "results")).resolve()


def _dispatch(cid: str, rid: str, attempt: int, specs: list[NodeRunSpec]) -> None:
    queue = lab_queue(specs[0].node.lab)
    header = [run_node.s(spec.model_dump(mode="json"), cid, rid, attempt).set(queue=queue) for spec in specs]
    chord(header)(evaluate_run.s(cid, rid, attempt).set(queue=CONTROL_QUEUE))


class _MeasuredScheduler(Scheduler):
    """The scheduler, counting judged runs and start skews in this worker's /metrics."""

    def on_judged(self, campaign: Campaign, entry: dict[str, Any], results: list[NodeResult]) -> None:
        kver = next((r.kernel["kver"] for r in results if r.kernel.get("kver")), str(entry["kernel"]))
        count_run(campaign.lab.name, kver, entry["workload"], entry["verdict"])
        if any(r.workload.started_host_ns is not None for r in results):
            skew_ms = start_skew_ms(results) or 0.0  # None for a single node: no spread
            START_SKEW.labels(campaign.lab.name, entry["workload"]).set(skew_ms / 1e3)


def _scheduler(client: redis.Redis) -> Scheduler:
    return _MeasuredScheduler(client, _dispatch, results_root())


# -- control tasks -------------------------------------------------------------------------
def kick(cid: str, countdown: float = 0.0) -> None:
    """Start a new scheduling chain for ``cid`` (the previous one stops at its next tick)."""
    token = secrets.token_hex(8)
    _redis().hset(f"swaplab:campaign:{cid}", "tick", token)
    advance_campaign.apply_async((cid, token), countdown=countdown, queue=CONTROL_QUEUE)


@app.task(name="swaplab.advance_campaign", ignore_result=True)
def advance_campaign(cid: str, token: str) -> None:
    """One scheduling step; re-schedules itself while the campaign is active."""
    client = _redis()
    current: Any = client.hget(f"swaplab:campaign:{cid}", "tick")
    if current is not None and current.decode() != token:
        return  # a newer chain took over
    try:
        with client.lock(f"swaplab:lock:campaign:{cid}", timeout=60, blocking_timeout=30):
            active = _scheduler(client).advance(cid)
    except Exception:
        # The chain must outlive any one failed step (Redis restarting, a bug): log, retry.
        log.exception("advancing campaign %s failed; retrying", cid)
        active = True
    if active:
        advance_campaign.apply_async((cid, token), countdown=TICK_S, queue=CONTROL_QUEUE)


@app.task(name="swaplab.evaluate_run", ignore_result=True)
def evaluate_run(_results: list[Any], cid: str, rid: str, attempt: int) -> None:
    """Chord body: judge the run from the node results stored in Redis, then move on."""
    client = _redis()
    with client.lock(f"swaplab:lock:campaign:{cid}", timeout=60, blocking_timeout=30):
        scheduler = _scheduler(client)
        scheduler.evaluate_run(cid, rid, attempt)
        scheduler.advance(cid)


# -- the node task ---------------------------------------------------------------------------
@app.task(name="swaplab.run_node", bind=True)
def run_node(self: Any, spec: dict[str, Any], cid: str, rid: str, attempt: int) -> dict[str, Any]:
    """Run one node of one run attempt; idempotent under redelivery."""
    client = _redis()
    store = CampaignStore(client)
    run_spec = NodeRunSpec.model_validate(spec)
    node = run_spec.node.name
    run = store.run(cid, rid)
    state = store.node(cid, rid, node)
    if int(run.get("attempt", 0)) != attempt or run.get("status") in TERMINAL:
        return {"skipped": "stale attempt"}
    if state.get("status") == "done" and state.get("result"):
        return dict(state["result"])  # redelivered after it finished
    if state.get("owner") and int(state.get("attempt", 0)) == attempt and state.get("status") != "queued":
        return {"skipped": f"already run by {state['owner']}"}  # never a second guest
    return _run_owned_node(client, store, run_spec, cid, rid, attempt)


def _run_owned_node(
    client: redis.Redis, store: CampaignStore, spec: NodeRunSpec, cid: str, rid: str, attempt: int
) -> dict[str, Any]:
    node, lab = spec.node.name, spec.node.lab
    store.set_node(
        cid, rid, node, owner=f"{socket.gethostname()}:{os.getpid()}", status="starting", started_at=time.time()
    )
    _clean_orphan(client, lab, node)
    client.set(
        _guest_key(lab, node),
        json.dumps(
            {"holder": holder_id(cid, rid, attempt), "workdir": spec.result_dir, "node": spec.node.model_dump()}
        ),
    )
    book = LeaseBook(client, lab, ttl_s=LEASE_TTL_S)
    lost = threading.Event()
    keeper = LeaseKeeper(book, holder_id(cid, rid, attempt), [node], on_lost=lambda _nodes: lost.set())
    keeper.start()
    LEASES_HELD.labels(lab).inc()
    try:
        run = store.run(cid, rid)
        barrier = RedisBarrier(client, f"swaplab:barrier:{cid}:{rid}:{attempt}", parties=len(run.get("nodes") or []))
        cancel = _CancelCheck(store, cid, rid, attempt, lost)
        result = run_node_session(spec.model_dump(mode="json"), _RedisProgress(store, cid, rid), barrier, cancel)
    finally:
        keeper.stop()
        LEASES_HELD.labels(lab).dec()
    _record_health(client, lab, node, NodeResult.model_validate(result))
    store.set_node(cid, rid, node, status="done", result=result, finished_at=time.time())
    book.release(holder_id(cid, rid, attempt), [node])
    client.delete(_guest_key(lab, node))
    return result


def _record_health(client: redis.Redis, lab: str, node: str, result: NodeResult) -> None:
    # Only the lab's own failures at boot count against a node: a bad kernel must not
    # take good nodes out of the pool.
    health = NodeHealth(client, lab)
    failure = result.failure
    if failure is not None and failure.phase == "boot" and failure.cause == "infra":
        health.record_boot(node, ok=False, reason=failure.reason)
    elif "boot" in result.phases and (failure is None or failure.phase != "boot"):
        health.record_boot(node, ok=True)


class _CancelCheck:
    """Cancelled by the user, by a lost lease, or by the scheduler giving up on the attempt."""

    def __init__(self, store: CampaignStore, cid: str, rid: str, attempt: int, lost: threading.Event) -> None:
        self.store, self.cid, self.rid, self.attempt, self.lost = store, cid, rid, attempt, lost
        self._checked = 0.0
        self._answer = False

    def __call__(self) -> bool:
        if self.lost.is_set() or self._answer:
            return True
        if time.monotonic() - self._checked > 1.0:
            self._checked = time.monotonic()
            try:
                run = self.store.run(self.cid, self.rid)
                aborted = run.get("aborted_attempt") == str(self.attempt)
                self._answer = aborted or self.store.cancel_requested(self.cid)
            except redis.RedisError:
                pass  # Redis restarting: keep going, ask again in a second
        return self._answer


class _RedisProgress:
    """Progress into the campaign's event stream and the node's state hash."""

    def __init__(self, store: CampaignStore, cid: str, rid: str) -> None:
        self.store, self.cid, self.rid = store, cid, rid
        self._last_swap: dict[str, float] = {}

    def phase(self, node: str, phase: str, detail: str = "") -> None:
        def record() -> None:
            # "done" is set by the task itself once the node's result is stored.
            self.store.set_node(self.cid, self.rid, node, status=phase if phase != "done" else "finishing")
            if phase == "workload" and self.store.run(self.cid, self.rid).get("status") == "provisioning":
                self.store.set_run_status(self.cid, self.rid, "running")
            self.store.event(self.cid, kind="phase", run=self.rid, node=node, phase=phase, detail=detail)

        self._safely(record)

    def swap(self, node: str, out_mib: float, in_mib: float, note: str = "") -> None:
        if time.monotonic() - self._last_swap.get(node, 0.0) < 2.0:
            return
        self._last_swap[node] = time.monotonic()
        self._safely(
            lambda: self.store.event(
                self.cid,
                kind="swap",
                run=self.rid,
                node=node,
                out_mib=round(out_mib, 1),
                in_mib=round(in_mib, 1),
                detail=note,
            )
        )

    @staticmethod
    def _safely(action: Callable[[], None]) -> None:
        try:
            action()
        except redis.RedisError as err:  # progress is best effort; the run goes on
            log.warning("progress not recorded: %s", err)


# -- worker start: registry and orphan cleanup -----------------------------------------------
def _guest_key(lab: str, node: str) -> str:
    return f"swaplab:guest:{lab}:{node}"


def _clean_orphan(client: redis.Redis, lab: str, node: str) -> None:
    """Power off a guest left by a dead worker for ``node`` (found via its record)."""
    raw = client.get(_guest_key(lab, node))
    if not raw:
        return
    record = json.loads(raw)
    config = NodeConfig(**record["node"])
    make_driver(config, Path(record["workdir"])).power_off()
    client.delete(_guest_key(lab, node))
    log.warning("powered off orphaned guest of %s/%s (%s)", lab, node, record["holder"])


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    client = _redis()
    queues = sorted(sender.app.amqp.queues.consume_from or []) if sender is not None else []
    hostname = getattr(sender, "hostname", socket.gethostname())
    pool = type(getattr(sender, "pool", None)).__module__
    if "prefork" in pool:
        # Node series live in the process that runs the task: prefork children would each
        # hold theirs where the main process's /metrics cannot see them.
        log.error("swaplab workers need -P threads (or solo): node metrics are not exported from prefork children")
    start_metrics_server(hostname)
    concurrency = int(getattr(getattr(sender, "pool", None), "limit", 0) or app.conf.worker_concurrency or 1)
    _register_worker(client, hostname, queues, concurrency)
    for queue in queues:
        if queue.startswith("lab."):
            for key in client.scan_iter(f"swaplab:guest:{queue[4:]}:*"):
                holder = json.loads(client.get(key) or "{}").get("holder", "")
                node = key.decode().rsplit(":", 1)[1]
                if LeaseBook(client, queue[4:], ttl_s=LEASE_TTL_S).holders().get(node) != holder:
                    _clean_orphan(client, queue[4:], node)
    for cid in CampaignStore(client).campaign_ids(limit=200):
        if CampaignStore(client).campaign(cid).get("status") not in TERMINAL:
            kick(cid)


def _register_worker(client: redis.Redis, hostname: str, queues: list[str], concurrency: int) -> None:
    key = f"swaplab:worker:{hostname}"
    info = json.dumps({"queues": queues, "concurrency": concurrency, "pid": os.getpid()})

    def beat() -> None:
        while True:
            try:
                client.set(key, info, ex=WORKER_TTL_S)
            except redis.RedisError as err:
                log.warning("worker registry: %s", err)
            time.sleep(WORKER_TTL_S / 3)

    threading.Thread(target=beat, name="swaplab-registry", daemon=True).start()
