"""The Celery app of a worker that runs the control plane too: the data plane's app with
the control tasks (scheduling, evaluation) registered on it.

    celery -A orchestrator.app worker -Q control,lab.local -P threads -c 6

A worker near a lab that only runs node tasks uses ``workers.app`` and never loads this.
"""

from __future__ import annotations

from orchestrator import tasks as _control_tasks  # noqa: F401  (registers the control tasks)
from workers.app import app

__all__ = ["app"]
