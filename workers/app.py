"""The Celery app: Redis broker and result backend, JSON only, at-least-once delivery.

Start a worker for a lab with, e.g.::

    celery -A workers.app worker -Q control,lab.local -P threads -c 6

``-P threads``: a node task spends minutes waiting on a guest (SSH, barrier), so threads
are the right pool; ``-c`` must exceed the nodes of the largest run (the scheduler refuses
a run the lab's workers cannot hold at once, rather than deadlocking at the barrier).
"""

from __future__ import annotations

import os

from celery import Celery

DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"
# Longest run we expect (boot + workload + collect) with a wide margin: a message is only
# redelivered by Redis after this, so worker loss is detected by node leases instead.
VISIBILITY_TIMEOUT_S = 6 * 3600
CONTROL_QUEUE = "control"


def redis_url() -> str:
    """The Redis that serves as broker, result backend and state store."""
    return os.environ.get("SWAPLAB_REDIS_URL", DEFAULT_REDIS_URL)


def lab_queue(lab: str) -> str:
    """The queue a lab's workers consume node tasks from."""
    return f"lab.{lab}"


app = Celery("swaplab", broker=redis_url(), backend=redis_url(), include=["workers.tasks", "workers.bench_tasks"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Threads by default: node tasks wait on guests, and the node metrics live in the
    # process that serves /metrics (prefork children would hide them; see workers.exporter).
    worker_pool="threads",
    task_default_queue=CONTROL_QUEUE,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    broker_connection_retry_on_startup=True,
    result_expires=7 * 24 * 3600,
    worker_hijack_root_logger=False,
    task_track_started=True,
    # Ride out a Redis restart (AOF keeps the state): keep retrying a publish for ~30 s.
    task_publish_retry_policy={"max_retries": 60, "interval_start": 0.5, "interval_step": 0, "interval_max": 0.5},
)
