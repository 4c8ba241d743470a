"""The Celery app: Redis broker and result backend, JSON only, at-least-once delivery.

This app knows the data plane's tasks (the node task). A worker near a lab serves that
lab's queue::

    celery -A workers.app worker -Q lab.local -P threads -c 5

and a worker that also runs the control plane (scheduling, evaluation) is started from
``orchestrator.app``, which adds the control tasks to this same app::

    celery -A orchestrator.app worker -Q control,lab.local -P threads -c 6

``-P threads``: a node task spends minutes waiting on a guest (SSH, barrier), so threads
are the right pool; ``-c`` must exceed the nodes of the largest run (the scheduler refuses
a run the lab's workers cannot hold at once, rather than deadlocking at the barrier).
"""

from __future__ import annotations

from celery import Celery

from model.state import CONTROL_QUEUE, celery_url

# Longest run we expect (boot + workload + collect) with a wide margin: a message is only
# redelivered by Redis after this, so worker loss is detected by node leases instead.
VISIBILITY_TIMEOUT_S = 6 * 3600

app = Celery("swaplab", broker=celery_url(), backend=celery_url(), include=["workers.tasks", "workers.bench_tasks"])
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
