"""The control plane's Celery tasks, on the ``control`` queue: scheduling steps and run
evaluation. Data-plane tasks are sent by name to a lab's queue (nothing of ``workers``'
task code is called from here).

Every scheduler step runs under the campaign's Redis lock, which is held only for quick
decisions: a run's evaluation queries Prometheus outside it, under a claim (see
orchestrator.scheduler), so a slow or absent Prometheus never outlives the lock.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from celery import chord, signals

from model import protocol
from model.campaign import Campaign
from model.paths import results_root
from model.runspec import BuildMessage, NodeResult, NodeRunSpec, RunSetupSpec
from model.state import (
    BUILD_QUEUE,
    CONTROL_QUEUE,
    RECORD_CHAIN_KEY,
    REDBEAT_PREFIX,
    TERMINAL,
    as_text,
    bisection_key,
    campaign_key,
    campaign_lock_key,
    lab_queue,
    redis_url,
)
from orchestrator import bisector, notify, sinks, timetable
from orchestrator.planner import new_campaign_id, plan_runs
from orchestrator.results import start_skew_ms
from orchestrator.scheduler import Scheduler
from orchestrator.store import CampaignStore
from workers.app import app
from workers.exporter import START_SKEW, count_run

log = logging.getLogger(__name__)
TICK_S = 2.0
# Longest a scheduler step may hold a campaign's lock; every step is quick (no network
# calls but Redis), so this only bounds how long a crashed step blocks the next.
CAMPAIGN_LOCK_S = 60.0
RECORD_RETRY_S = 30.0
T = TypeVar("T")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(redis_url(), socket_timeout=10, health_check_interval=5)


@contextmanager
def campaign_lock(client: redis.Redis, cid: str, timeout_s: float | None = None) -> Iterator[None]:
    """One scheduler step at a time per campaign."""
    with client.lock(campaign_lock_key(cid), timeout=timeout_s or CAMPAIGN_LOCK_S, blocking_timeout=30):
        yield


class CeleryDispatch:
    """Sends the scheduler's work by task name: builds to the build queue, setups and node
    tasks to the lab's queue."""

    def build(self, cid: str, rid: str, attempt: int, message: BuildMessage) -> None:
        app.send_task(protocol.BUILD_KERNEL, (message.model_dump(mode="json"), cid, rid, attempt), queue=BUILD_QUEUE)

    def prepare(self, cid: str, rid: str, attempt: int, spec: RunSetupSpec) -> None:
        app.send_task(
            protocol.PREPARE_RUN, (spec.model_dump(mode="json"), cid, rid, attempt), queue=lab_queue(spec.lab)
        )

    def run(self, cid: str, rid: str, attempt: int, specs: list[NodeRunSpec]) -> None:
        queue = lab_queue(specs[0].lab)
        header = [
            app.signature(protocol.RUN_NODE, (spec.model_dump(mode="json"), cid, rid, attempt), queue=queue)
            for spec in specs
        ]
        chord(header)(evaluate_run.s(cid, rid, attempt).set(queue=CONTROL_QUEUE))

    def evaluate(self, cid: str, rid: str, attempt: int) -> None:
        evaluate_run.apply_async(([], cid, rid, attempt), queue=CONTROL_QUEUE)


class _MeasuredScheduler(Scheduler):
    """The scheduler, counting judged runs and start skews in this worker's /metrics."""

    def on_judged(self, campaign: Campaign, entry: dict[str, Any], results: list[NodeResult]) -> None:
        kver = next((r.kernel["kver"] for r in results if r.kernel.get("kver")), str(entry["kernel"]))
        count_run(campaign.lab.name, kver, entry["workload"], entry["verdict"])
        if any(r.workload.started_host_ns is not None for r in results):
            skew_ms = start_skew_ms(results) or 0.0  # None for a single node: no spread
            START_SKEW.labels(campaign.lab.name, entry["workload"]).set(skew_ms / 1e3)

    def on_finished(self, cid: str) -> None:
        record_results.apply_async(queue=CONTROL_QUEUE)  # its sinks (orchestrator.sinks)


def scheduler(client: redis.Redis) -> Scheduler:
    """The scheduler the control worker runs."""
    return _MeasuredScheduler(client, CeleryDispatch(), results_root())


def submit(store: CampaignStore, campaign: Campaign, bisection: str = "") -> str:
    """Store a validated campaign and start scheduling it; on failure nothing stays
    (``bisection``: the bisection it is a step of)."""
    cid = new_campaign_id(campaign.spec.name)
    store.create(cid, campaign, plan_runs(campaign), bisection)
    try:
        kick(cid)
    except Exception:
        store.delete(cid)
        raise
    return cid


def kick(cid: str, countdown: float = 0.0) -> None:
    """Start a new scheduling chain for ``cid`` (the previous one stops at its next tick)."""
    token = secrets.token_hex(8)
    _redis().hset(campaign_key(cid), "tick", token)
    advance_campaign.apply_async((cid, token), countdown=countdown, queue=CONTROL_QUEUE)


@app.task(name=protocol.ADVANCE_CAMPAIGN, ignore_result=True)
def advance_campaign(cid: str, token: str) -> None:
    """One scheduling step; re-schedules itself while the campaign is active."""
    client = _redis()
    current: Any = client.hget(campaign_key(cid), "tick")
    if current is not None and current.decode() != token:
        return  # a newer chain took over
    try:
        sched = scheduler(client)
        sched.prefetch_last_pass(cid)  # the slow database lookup, before the lock
        with campaign_lock(client, cid):
            active = sched.advance(cid)
    except Exception:
        # The chain must outlive any one failed step (Redis restarting, a bug): log, retry.
        log.exception("advancing campaign %s failed; retrying", cid)
        active = True
    if active:
        advance_campaign.apply_async((cid, token), countdown=TICK_S, queue=CONTROL_QUEUE)


def kick_bisection(bid: str, countdown: float = 0.0) -> None:
    """Start a new chain of steps for bisection ``bid`` (the previous one stops at its next)."""
    token = secrets.token_hex(8)
    _redis().hset(bisection_key(bid), "tick", token)
    advance_bisection.apply_async((bid, token), countdown=countdown, queue=CONTROL_QUEUE)


@app.task(name=protocol.ADVANCE_BISECTION, ignore_result=True)
def advance_bisection(bid: str, token: str) -> None:
    """One step of a bisection; re-schedules itself while it is active. A step that raises
    ends the bisection as failed with the reason: it never waits forever on a lost chain."""
    client = _redis()
    current = client.hget(bisection_key(bid), "tick")
    if current is None or as_text(current) != token:
        return  # a newer chain took over
    try:
        active = bisector.advance(client, CampaignStore(client), bid, submit)
    except Exception as exc:
        log.exception("bisection %s failed", bid)
        bisector.fail(client, bid, f"{type(exc).__name__}: {exc}")
        active = False
    if active:
        advance_bisection.apply_async((bid, token), countdown=TICK_S, queue=CONTROL_QUEUE)
    else:  # ended: into the results database (its outbox), with the campaigns' sinks
        record_results.apply_async(queue=CONTROL_QUEUE)


@app.task(name=protocol.EVALUATE_RUN, ignore_result=True)
def evaluate_run(_results: list[Any], cid: str, rid: str, attempt: int) -> None:
    """Chord body: claim the run's evaluation, judge it outside the lock, commit, move on."""
    judge_and_advance(_redis(), cid, rid, attempt)


def judge_and_advance(client: redis.Redis, cid: str, rid: str, attempt: int, sched: Scheduler | None = None) -> bool:
    """Claim under the lock, judge without it, commit under it; True if this call judged the run."""
    sched = sched or scheduler(client)
    with campaign_lock(client, cid):
        token = sched.claim_evaluation(cid, rid, attempt)
    if token is None:
        return False  # not due, or another evaluator holds the claim
    entry, results = sched.judge(cid, rid)
    with campaign_lock(client, cid):
        committed = sched.commit_evaluation(cid, rid, token, entry, results)
    sched.prefetch_last_pass(cid)  # the last run judged: the baseline, before the lock again
    with campaign_lock(client, cid):
        sched.advance(cid)
    return committed


@app.task(name=protocol.RECORD_RESULTS, ignore_result=True)
def record_results() -> None:
    """Run the sinks of the finished campaigns (orchestrator.sinks): reports, database,
    change points, webhook. What the database could not take yet stays in its outbox and
    this task tries again every RECORD_RETRY_S; the webhook plans its own retries."""
    client = _redis()
    if not client.set(RECORD_CHAIN_KEY, "1", nx=True, ex=int(RECORD_RETRY_S * 2)):
        return  # another record task is at work or waiting; it will see these too
    try:
        before = sinks.waiting(client)
        _run_sinks(client)
        after = sinks.waiting(client)
    finally:
        client.delete(RECORD_CHAIN_KEY)
    for (sink, cid), error in sinks.set_aside(client).items():
        log.error("campaign %s is set aside by the %s sink: %s", cid, sink, error)
    # Waiting before and after the pass: a sink could not take it (the database is down, no
    # record yet), try again later. Only after: enqueued while it ran (its own task returned
    # early), at once.
    if after:
        record_results.apply_async(countdown=RECORD_RETRY_S if before & after else 1.0, queue=CONTROL_QUEUE)
    # Planned after the key is released: a planned task that found it held has returned early.
    wake = notify.plan_wakeup(client)
    if wake is not None:
        record_results.apply_async(countdown=wake, queue=CONTROL_QUEUE)


def _run_sinks(client: redis.Redis) -> None:
    """One pass over every sink, each failure its own."""
    _guarded("reports", lambda: sinks.deliver_reports(client))
    stored = _guarded("database", lambda: _store(client))
    if stored:
        log.info("stored %d finished campaign(s) in the results database", stored)
    notified = _guarded("webhook", lambda: sinks.deliver_notifications(client))
    if notified and any(notified):
        log.info("webhook: %d notification(s) delivered, %d waiting for a retry", *notified)


def _store(client: redis.Redis) -> int:
    """The database and change-points sinks: how many campaigns the database took."""
    from orchestrator.history.db import ResultsDb  # SQLAlchemy only where it is used

    with ResultsDb() as db:
        stored = sinks.deliver_to_database(client, db)[sinks.DATABASE].stored
        sinks.deliver_bisections(client, db)
        return stored


def _guarded(sink: str, deliver: Callable[[], T]) -> T | None:
    """A sink's pass; its error is logged and a later task tries again, nothing else is lost."""
    try:
        return deliver()
    except Exception:
        log.exception("the %s sink failed; retrying later", sink)
        return None


@app.task(name=protocol.SCHEDULE_TICK, ignore_result=True)
def schedule_tick() -> None:
    """Sent by celery beat every few seconds: fire the scheduled campaigns that are due."""
    client = _redis()
    store = CampaignStore(client)
    for firing in timetable.tick(client, lambda campaign: submit(store, campaign)):
        log.info("schedule %s: %s %s %s", firing.name, firing.kind, firing.campaign_id, firing.detail)


# celery beat with RedBeat: the schedule and its lock in Redis, one beat sending at a time
# (`celery -A orchestrator.app beat -S redbeat.RedBeatScheduler`). Its only entry is the
# tick; the campaigns' own crons are evaluated by the tick (orchestrator.timetable).
app.conf.update(
    redbeat_redis_url=redis_url(),
    redbeat_key_prefix=REDBEAT_PREFIX,
    redbeat_lock_timeout=60,
    beat_max_loop_interval=5,
    beat_schedule={
        "swaplab-schedule-tick": {
            "task": protocol.SCHEDULE_TICK,
            "schedule": timetable.tick_seconds(),
            "options": {"queue": CONTROL_QUEUE, "expires": timetable.tick_seconds()},
        }
    },
)


@signals.worker_ready.connect
def _resume_campaigns(sender: Any = None, **_: Any) -> None:
    """A control worker that starts picks up every campaign that is not finished."""
    queues = sender.app.amqp.queues.consume_from or [] if sender is not None else []
    if CONTROL_QUEUE not in queues:
        return
    client = _redis()
    # Whatever finished, or failed to notify, while no control worker ran.
    if sinks.pending(client):
        record_results.apply_async(queue=CONTROL_QUEUE)
    try:
        notify.webhook_url()
    except notify.WebhookUrlError as exc:  # masked: never the URL's credentials
        log.error("%s; webhook notifications stay pending until it is fixed", exc)
    store = CampaignStore(client)
    for cid in store.campaign_ids(limit=200):
        if store.status(cid) not in TERMINAL:
            kick(cid)
    for bid in bisector.active(client):
        kick_bisection(bid)
