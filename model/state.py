"""Where swaplab's live state lives: every Redis key name and Celery queue name, in one place.

Both planes read and write the same Redis (the control plane: campaigns, runs, leases,
scheduling; the data plane: its node's state, progress events, leases it renews, guest
records). Neither builds a key itself: they call these functions, so the layout below is
the whole contract.

| key | type | what |
|---|---|---|
| ``swaplab:campaigns`` | zset | campaign ids by creation time |
| ``swaplab:campaign:<cid>`` | hash | the campaign (spec, status, result) |
| ``swaplab:run:<cid>:<rid>`` | hash | one run of it (status, attempt, nodes, result) |
| ``swaplab:node:<cid>:<rid>:<node>`` | hash | one node of a run (owner, phase, result) |
| ``swaplab:events:<cid>`` | stream | progress events (``swaplab watch``) |
| ``swaplab:lock:campaign:<cid>`` | lock | one scheduler step at a time per campaign |
| ``swaplab:lock:build:<hash>`` | lock | one build of a kernel's inputs at a time |
| ``swaplab:lease:<lab>:<node>`` | string | the holder of a node, with a TTL |
| ``swaplab:lab-exclusive:<lab>`` | string | the holder that has the whole lab (a run with faults), with a TTL |
| ``swaplab:health:<lab>:<node>`` | hash | boot health of a node |
| ``swaplab:barrier:<cid>:<rid>:<attempt>`` | prefix | the run's start barrier |
| ``swaplab:guest:<lab>:<node>`` | string | the guest a node task started (orphan clean-up) |
| ``swaplab:worker:<hostname>`` | string | a live worker's queues and slots, with a TTL |
| ``swaplab:results:outbox`` | hash | the database sink's outbox: finished campaigns not yet in the results database (cid → pending, or set aside with its error) |
| ``swaplab:sink:<sink>`` | hash | the outbox of the ``reports`` and ``changes`` sinks, as the database's |
| ``swaplab:results:recording`` | string (TTL) | held while a ``swaplab.record_results`` task runs the sinks |
| ``swaplab:notify:campaign:<cid>`` | hash | the webhook notification of a finished campaign (status, attempts, last status and reason, delivered or given up at) |
| ``swaplab:notify:due`` | zset | campaigns whose notification awaits a retry, by when it is due |
| ``swaplab:notify:sending:<cid>`` | lock (TTL) | held while one process delivers a campaign's notification |
| ``swaplab:notify:wakeup`` | string (TTL) | when the next ``swaplab.record_results`` is planned to retry notifications (one planned wake-up) |
| ``swaplab:schedules`` | set | names of the scheduled campaigns |
| ``swaplab:schedule:<name>`` | hash | a scheduled campaign (stored spec, cron, time zone, missed policy, last instance) |
| ``swaplab:schedule-log:<name>`` | list | what each firing did: fired, skipped, missed, duplicate (newest first, capped) |
| ``swaplab:schedule-fired:<name>:<due>`` | string (TTL) | one firing per due minute, whichever beat or tick gets there first |
| ``swaplab:redbeat:*`` | RedBeat | celery beat's schedule and its lock (one beat sends at a time) |
| ``swaplab:bisections`` | zset | bisection ids by creation time |
| ``swaplab:bisection:<bid>`` | hash | a bisection (its campaign, series, state, what its runs said, its steps, the child campaign running, result) |
| ``swaplab:lock:bisection:<bid>`` | lock | one step of a bisection at a time |
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlparse, urlunparse

from model.paths import cache_root
from model.protocol import TERMINAL as TERMINAL  # re-exported: the key layout's users read it here
from model.protocol import CampaignStatus, RunStatus

CONTROL_QUEUE = "control"
BUILD_QUEUE = "build"  # kernel builds: any worker with a toolchain may serve it beside its labs
_LAB_QUEUE_PREFIX = "lab."

CAMPAIGN_STATES = tuple(CampaignStatus)
RUN_STATES = tuple(RunStatus)

CAMPAIGNS_KEY = "swaplab:campaigns"
BISECTIONS_KEY = "swaplab:bisections"
EVENTS_MAXLEN = 20000  # a campaign's progress stream keeps about this many events
LEASE_PREFIX = "swaplab:lease"
EXCLUSIVE_PREFIX = "swaplab:lab-exclusive"
HEALTH_PREFIX = "swaplab:health"
GUEST_PREFIX = "swaplab:guest"
WORKER_PREFIX = "swaplab:worker"
RESULTS_OUTBOX_KEY = "swaplab:results:outbox"  # the database sink's outbox (orchestrator.sinks)
SINK_OUTBOX_PREFIX = "swaplab:sink"  # the other sinks' outboxes
RECORD_CHAIN_KEY = "swaplab:results:recording"  # one swaplab.record_results at a time
NOTIFY_KEY = "swaplab:notify"  # orchestrator.notify: the webhook's notifications
NOTIFY_DUE_KEY = "swaplab:notify:due"  # campaign id -> when its next delivery attempt is due
NOTIFY_WAKEUP_KEY = "swaplab:notify:wakeup"  # the due time a retry task is already planned for
SCHEDULES_KEY = "swaplab:schedules"
REDBEAT_PREFIX = "swaplab:redbeat:"


def redis_url() -> str:
    """The Redis that serves as broker, result backend and state store, with its password,
    in redis-py's form (``redis://``, ``rediss://`` or ``unix://``).

    ``SWAPLAB_REDIS_URL`` when set (a TCP or ``unix://`` URL of the lab's Redis); else the
    embedded redis-server, which listens only on a Unix socket in a 0700 directory of the
    user's cache: no other user of the host can reach it, or take its place to collect
    the password and answer in its name. The password, when the URL has none, comes from
    ``SWAPLAB_REDIS_PASSWORD``, the file named by ``SWAPLAB_REDIS_PASSWORD_FILE``, or the
    embedded server's own file (mode 0600). Never from a command line: argv is what every
    user of the host can read.
    """
    url = os.environ.get("SWAPLAB_REDIS_URL") or f"unix://{embedded_redis_socket()}?db=0"
    parsed = urlparse(url)
    if parsed.password:
        return url
    password = _redis_password()
    if not password:
        return url
    netloc = f"{quote(parsed.username or '', safe='')}:{quote(password, safe='')}@{parsed.hostname or ''}"
    netloc += f":{parsed.port}" if parsed.port else ""
    return urlunparse(parsed._replace(netloc=netloc))


def celery_url(url: str | None = None) -> str:
    """The same Redis as ``redis_url()`` in the form Celery, kombu and the result backend
    read: ``unix://…?db=N`` becomes ``redis+socket://…?virtual_host=N``."""
    url = url or redis_url()
    parsed = urlparse(url)
    if parsed.scheme != "unix":
        return url
    query = dict(parse_qsl(parsed.query))
    db = query.pop("db", "0")
    return urlunparse(parsed._replace(scheme="redis+socket", query=urlencode({**query, "virtual_host": db})))


def embedded_redis_dir() -> Path:
    """The embedded redis-server's directory: socket, password, config, pid file, AOF."""
    return cache_root() / "redis"


def embedded_redis_socket() -> Path:
    """The Unix socket the embedded redis-server listens on (its only listener)."""
    return embedded_redis_dir() / "redis.sock"


def _redis_password() -> str | None:
    if os.environ.get("SWAPLAB_REDIS_PASSWORD"):
        return os.environ["SWAPLAB_REDIS_PASSWORD"]
    named = os.environ.get("SWAPLAB_REDIS_PASSWORD_FILE")
    path = Path(named) if named else embedded_redis_dir() / "password"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    netloc = f"{parsed.username or ''}:***@{parsed.hostname or ''}" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))


def lab_queue(lab: str) -> str:
    """The queue a lab's workers consume node tasks from."""
    return f"{_LAB_QUEUE_PREFIX}{lab}"


def lab_of_queue(queue: str) -> str | None:
    """The lab a ``lab.<name>`` queue serves, or None for other queues."""
    return queue[len(_LAB_QUEUE_PREFIX) :] if queue.startswith(_LAB_QUEUE_PREFIX) else None


def campaign_key(cid: str) -> str:
    return f"swaplab:campaign:{cid}"


def run_key(cid: str, rid: str) -> str:
    return f"swaplab:run:{cid}:{rid}"


def run_keys_pattern(cid: str) -> str:
    return f"swaplab:run:{scan_escape(cid)}:*"


def node_key(cid: str, rid: str, node: str) -> str:
    return f"swaplab:node:{cid}:{rid}:{node}"


def node_keys_pattern(cid: str) -> str:
    return f"swaplab:node:{scan_escape(cid)}:*"


def events_key(cid: str) -> str:
    return f"swaplab:events:{cid}"


def campaign_lock_key(cid: str) -> str:
    return f"swaplab:lock:campaign:{cid}"


def bisection_key(bid: str) -> str:
    return f"swaplab:bisection:{bid}"


def bisection_lock_key(bid: str) -> str:
    return f"swaplab:lock:bisection:{bid}"


def build_lock_key(digest: str) -> str:
    """One build of a kernel's inputs at a time, across every build worker."""
    return f"swaplab:lock:build:{digest}"


def lease_key(lab: str, node: str) -> str:
    """The key whose value is the holder of ``node``."""
    return f"{LEASE_PREFIX}:{lab}:{node}"


def exclusive_key(lab: str) -> str:
    """The key whose value is the holder that has all of ``lab`` to itself (its faults
    must disturb no other run)."""
    return f"{EXCLUSIVE_PREFIX}:{lab}"


def health_key(lab: str, node: str) -> str:
    """The hash holding one node's health."""
    return f"{HEALTH_PREFIX}:{lab}:{node}"


def barrier_key(cid: str, rid: str, attempt: int) -> str:
    return f"swaplab:barrier:{cid}:{rid}:{attempt}"


def guest_key(lab: str, node: str) -> str:
    return f"{GUEST_PREFIX}:{lab}:{node}"


def worker_key(hostname: str) -> str:
    return f"{WORKER_PREFIX}:{hostname}"


def schedule_key(name: str) -> str:
    return f"swaplab:schedule:{name}"


def schedule_log_key(name: str) -> str:
    return f"swaplab:schedule-log:{name}"


def schedule_fired_key(name: str, due: int) -> str:
    return f"swaplab:schedule-fired:{name}:{due}"


def sink_outbox_key(sink: str) -> str:
    """The outbox hash of a post-campaign sink (orchestrator.sinks)."""
    return f"{SINK_OUTBOX_PREFIX}:{sink}"


def notify_key(cid: str) -> str:
    """The hash recording a campaign's webhook notification."""
    return f"{NOTIFY_KEY}:campaign:{cid}"


def notify_claim_key(cid: str) -> str:
    """Held while one process delivers a campaign's notification."""
    return f"{NOTIFY_KEY}:sending:{cid}"


def holder_id(cid: str, rid: str, attempt: int) -> str:
    """Who holds a run's node leases: one attempt of one run."""
    return f"{cid}:{rid}:{attempt}"


def scan_escape(text: str) -> str:
    """``text`` with SCAN MATCH's glob characters escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def scan_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for keys starting with ``prefix``."""
    return scan_escape(prefix) + "*"


def as_text(value: Any) -> str:
    """A Redis reply as str, whether or not the client was built with decode_responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


# Hash fields holding JSON (everything else is text).
_JSON_FIELDS = frozenset(
    {
        "campaign",
        "runs",
        "kernel",
        "workload",
        "nodes",
        "result",
        "verdicts",
        "prepared",
        "prepare_failure",
        "built",
        "build_failure",
        "variant",
        "series",
        "state",
        "gathered",
        "steps",
        "digests",
        "reused",
    }
)


def encode_fields(fields: dict[str, Any]) -> dict[Any, Any]:
    """Python values as Redis hash fields: JSON for containers, "" for None, 0/1 for bools."""
    out: dict[Any, Any] = {}
    for key, value in fields.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, dict | list):
            out[key] = json.dumps(value)
        elif value is None:
            out[key] = ""
        else:
            out[key] = value
    return out


def decode_fields(raw: dict[Any, Any]) -> dict[str, Any]:
    """The inverse of encode_fields for a whole HGETALL reply (ValueError naming a JSON
    field that does not parse)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name, text = as_text(key), as_text(value)
        try:
            out[name] = json.loads(text) if name in _JSON_FIELDS and text else text
        except ValueError as err:
            raise ValueError(f"{name}: not JSON ({err})") from None
    return out
