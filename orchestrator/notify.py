"""An optional webhook told of every finished campaign: its summary and its text report.

``SWAPLAB_WEBHOOK_URL`` (http:// or https://; unset or empty: no webhook) names the
endpoint. Each finished campaign is POSTed there once as JSON (:func:`payload`: campaign,
verdict, exit code, each run's kernel release, variant and verdict, the comparisons'
verdicts, the campaign's reasons, and ``text``, the text report), ``Content-Type:
application/json``, ``User-Agent: swaplab``. Credentials in the URL (``https://user:token@
host/...``) are sent as HTTP Basic authentication and never shown: logs, errors and the
record only carry :func:`masked` URLs, which hide the credentials and the path too
(Slack-, Teams- or Discord-style webhooks keep their secret in the path). Redirects are
not followed, so the credentials never go to a host the URL did not name.

A notification is only news: the result is already in result.json and on its way to the
results database, and nothing here touches either. A delivery has ``TIMEOUT_S`` in all
(connect, send, the answer's status line and headers): the socket is shut down when that
passes, so an endpoint that trickles its answer a byte at a time cannot hold a delivery
longer. At most ``MAX_IN_FLIGHT`` deliveries run at once in a process (the control worker's
threads also serve runs); one that finds no room is not attempted and stays due. A
delivery that fails (no connection, no answer within the timeout, any status but 2xx) is
recorded in Redis and retried:

=====================  ==========================================================
Redis key              what
=====================  ==========================================================
``notify_key(cid)``    hash: ``status`` (pending, delivered, given up), ``attempts``,
                       ``first_attempt_at``, ``last_attempt_at``, ``last_status``
                       (HTTP status or empty), ``last_reason``, ``next_attempt_at``,
                       ``delivered_at`` or ``given_up_at``, ``url`` (masked)
``NOTIFY_DUE_KEY``     zset: pending campaigns by when their next attempt is due
``notify_claim_key``   lock: one process delivers a campaign at a time
``NOTIFY_WAKEUP_KEY``  string: the due time a retry task is already planned for
=====================  ==========================================================

Retries come 30 s, 2 min and 10 min after the first three failed attempts, then hourly;
an attempt that would come more than 24 h after the first is not made: the notification
is given up (an error in the log, ``status: given up`` in the record). Delivered and
given-up records expire after 30 days. Delivery is at least once: an endpoint that took
the POST but whose answer never arrived gets it again; ``campaign_id`` identifies it.

Plain functions for the control worker's ``swaplab.record_results`` task: :func:`enqueue`
when a campaign finishes (quick: a Redis script, fit for the campaign's lock),
:func:`retry_due` to deliver whatever is due (outside any lock), :func:`plan_wakeup` to
know whether to send one more task and when; :func:`notify` attempts one campaign now.
A bad ``SWAPLAB_WEBHOOK_URL`` fails each attempt with a recorded reason, so campaigns stay
pending until the environment is fixed; :func:`webhook_url` says so at start-up.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import pydantic
import redis

from model import result as result_schema
from model.state import NOTIFY_DUE_KEY, NOTIFY_WAKEUP_KEY, as_text, encode_fields, notify_claim_key, notify_key
from orchestrator.reports import render
from orchestrator.reports.view import clean, number

log = logging.getLogger(__name__)

ENV = "SWAPLAB_WEBHOOK_URL"
TIMEOUT_S = 10.0  # one delivery, all of it
MAX_IN_FLIGHT = 2  # deliveries at once in one process
RETRY_DELAYS_S = (30.0, 120.0, 600.0)  # after the 1st, 2nd and 3rd failed attempt
RETRY_EVERY_S = 3600.0  # after any later one
GIVE_UP_AFTER_S = 24 * 3600.0  # counted from the first attempt
RETRY_BUDGET_S = 30.0  # retry_due starts no attempt after this long: its caller holds a 60 s key
KEEP_S = 30 * 86400  # how long a delivered or given-up record stays in Redis
PENDING, DELIVERED, GIVEN_UP = "pending", "delivered", "given up"
_REASON_MAX = 300
_BODY_SNIPPET = 160

Clock = Callable[[], float]
Loader = Callable[[str], Mapping[str, Any] | None]
_IN_FLIGHT = threading.BoundedSemaphore(MAX_IN_FLIGHT)

# Mark a campaign pending once: a campaign already pending, delivered or given up is left alone.
_ENQUEUE = """
if redis.call('HSETNX', KEYS[1], 'status', ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'campaign_id', ARGV[1], 'queued_at', ARGV[2], 'attempts', '0')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""
# Plan one wake-up (a time to run a retry task) for the soonest due notification, at
# max(due, now + ARGV[3]): none when a wake-up still to come is planned no later, so retry
# tasks never multiply. The marker outlives its time by ARGV[2] s; a wake-up whose time
# has passed no longer counts (it ran, or is running and plans again when it ends).
_PLAN_WAKEUP = """
local due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
if not due then return false end
local now = tonumber(ARGV[1])
local wake = math.max(tonumber(due), now + tonumber(ARGV[3]))
local planned = tonumber(redis.call('GET', KEYS[2]) or '')
if planned and planned > now and planned <= wake then return false end
wake = string.format('%.17g', wake)  -- tostring keeps 14 digits: a wake-up later than its due time
redis.call('SET', KEYS[2], wake, 'PX', math.floor((tonumber(wake) - now + tonumber(ARGV[2])) * 1000))
return wake
"""
_WAKEUP_SLACK_S = 300.0
_WAKEUP_MIN_S = 1.0


class WebhookUrlError(ValueError):
    """A webhook URL that cannot be used; the message shows it masked, never its credentials."""


@dataclass(frozen=True)
class Webhook:
    """A validated webhook URL: where to POST, how to show it, how to authenticate."""

    endpoint: str = field(repr=False)  # the URL without credentials (its path may be a secret too)
    shown: str  # masked(url): safe in logs, errors and the record
    authorization: str | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # scrubbed from any error text


@dataclass(frozen=True)
class Delivery:
    """One attempt: delivered (a 2xx answer) or not, and why."""

    ok: bool
    status: int | None  # the HTTP status, when the server answered
    reason: str  # "HTTP 204" when delivered; what went wrong otherwise
    elapsed_s: float = 0.0


# -- the URL ----------------------------------------------------------------------------


def webhook_url() -> str | None:
    """``SWAPLAB_WEBHOOK_URL``, validated; None when unset or empty. Raises WebhookUrlError."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    parse_webhook(value, source=ENV)
    return value


def masked(url: str) -> str:
    """``url`` as it may be shown: ``https://***@host:port/…``, no credentials, no path."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return "(not a URL: no scheme://host)"
    # Anything before the last "@" may be credentials (even with an unencoded "/" in them).
    creds = "***@" if "@" in rest else ""
    rest = rest.rpartition("@")[2]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    tail = "/…" if rest[cut:] not in ("", "/") else ""
    return f"{scheme}://{creds}{rest[:cut]}{tail}"


def parse_webhook(url: str, source: str = "webhook URL") -> Webhook:
    """A webhook from ``url``: http or https, a host, a valid port; credentials allowed."""
    shown = masked(url)
    parts = _split(url, source, shown)
    netloc = f"[{parts.hostname}]" if ":" in str(parts.hostname) else str(parts.hostname)
    netloc += f":{parts.port}" if parts.port is not None else ""
    endpoint = urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))
    authorization = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    secrets = (endpoint, urlunsplit(("", "", parts.path, parts.query, "")), parts.username, parts.password)
    found = {s for s in secrets if s and len(s) > 3} | {unquote(s) for s in secrets if s and len(s) > 3}
    return Webhook(endpoint, shown, authorization, tuple(sorted(found, key=len, reverse=True)))


def _split(url: str, source: str, shown: str) -> SplitResult:
    """urlsplit(url) after the checks that make a usable webhook, else WebhookUrlError."""

    def bad(why: str) -> WebhookUrlError:
        return WebhookUrlError(f"{source}: {shown}: {why}")

    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise bad("spaces or control characters in the URL")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket ...
        raise bad("not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise bad("not an http:// or https:// URL (e.g. https://host/path)")
    if not parts.hostname:
        raise bad("no host")
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:
        raise bad("'@' outside the host part: percent-encode '/', '?', '#' and '@' in credentials")
    try:
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    return parts


# -- the payload ------------------------------------------------------------------------


def payload(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the webhook receives for a finished campaign ``record``, read through
    result.json's schema (model.result); a record that does not match it is still sent,
    with what is wrong with it and its text report."""
    try:
        parsed = result_schema.Campaign.model_validate(record)
    except pydantic.ValidationError as err:
        return _unreadable(record, result_schema.described(err))
    name, verdict = clean(parsed.campaign), clean(parsed.verdict)
    code, finished = number(parsed.exit_code), number(parsed.finished_at)
    return {
        "event": "campaign finished",
        "campaign_id": clean(parsed.campaign_id),
        "campaign": name,
        "summary": f"swaplab: campaign {name or '?'}: {verdict.upper() or '?'} (exit {_code_text(code)})",
        "verdict": verdict,
        "exit_code": None if code is None else int(code),
        "finished_at": finished,
        "finished_at_utc": None if finished is None else datetime.fromtimestamp(finished, UTC).isoformat(),
        "lab": clean(parsed.lab),
        "runs": [_run_summary(run) for run in parsed.runs],
        "skipped_runs": [{"run_id": clean(r.run_id), "reason": clean(r.reason)} for r in parsed.skipped_runs],
        "comparisons": [_comparison_summary(entry) for entry in parsed.comparisons],
        "reasons": [text for text in map(clean, parsed.reasons) if text],
        "text": _text_report(parsed),
    }


def _unreadable(record: Mapping[str, Any], problems: str) -> dict[str, Any]:
    """The notification of a record that does not match the schema: news all the same."""
    cid = clean(record.get("campaign_id"))
    return {
        "event": "campaign finished",
        "campaign_id": cid,
        "summary": f"swaplab: campaign {cid or '?'}: its record does not match result.json's schema",
        "verdict": "",
        "exit_code": None,
        "finished_at": None,
        "record_problems": clean(problems)[:2000],
        "text": "(no text report: the reports render only records that match the schema)\n",
    }


def _code_text(code: float | None) -> str:
    return "?" if code is None else str(int(code))


def _run_summary(run: result_schema.Run) -> dict[str, Any]:
    return {
        "run_id": clean(run.run_id),
        "kernel_release": clean(run.release()),
        "variant": clean(run.variant),
        "workload": clean(run.workload),
        "verdict": clean(run.verdict),
    }


def _comparison_summary(entry: result_schema.Comparison) -> dict[str, Any]:
    keys = ("baseline", "candidate", "axis", "workload", "kernel", "primary", "verdict")
    return {key: clean(getattr(entry, key)) for key in keys}


def _text_report(record: result_schema.Campaign) -> str:
    try:
        return render(record, "text")
    except Exception as exc:  # a report that cannot be drawn must not cost the notification
        log.exception("webhook: text report of %s not rendered", clean(record.campaign_id))
        return f"(the text report could not be rendered: {type(exc).__name__})\n"


# -- one attempt ------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects end the attempt: following one would carry the Authorization header along."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Deadline:
    """The whole time of one delivery: every socket it opened is shut down when it passes.
    (A socket timeout counts per read: a byte every 2 s would never reach it.)"""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return max(0.001, self.at - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def connections(self, http_class: Any) -> Callable[..., http.client.HTTPConnection]:
        """``http_class`` whose sockets this deadline watches from their creation (before
        any TLS handshake, which a server could trickle too)."""

        def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
            conn: http.client.HTTPConnection = http_class(*args, **kwargs)
            create = conn._create_connection  # type: ignore[attr-defined]

            def watched(address: tuple[str, int], timeout: float, *rest: Any) -> socket.socket:
                sock: socket.socket = create(address, min(timeout, self.left()), *rest)
                self.watch(sock)
                return sock

            conn._create_connection = watched  # type: ignore[attr-defined]
            return conn

        return make


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _HttpWithin(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> http.client.HTTPResponse:
        return super().do_open(self._deadline.connections(http_class), req, **kwargs)


class _HttpsWithin(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> http.client.HTTPResponse:
        return super().do_open(self._deadline.connections(http_class), req, **kwargs)


@contextmanager
def _slot() -> Iterator[bool]:
    """One of the MAX_IN_FLIGHT delivery slots of this process, if one is free (never waits)."""
    free = _IN_FLIGHT.acquire(blocking=False)
    try:
        yield free
    finally:
        if free:
            _IN_FLIGHT.release()


def deliver(record: Mapping[str, Any], url: str, timeout_s: float = TIMEOUT_S) -> Delivery:
    """POST the record's :func:`payload` to ``url`` once: delivered on a 2xx answer; any
    other answer, no connection, no complete answer within ``timeout_s`` (in all) or a bad
    URL is a failure with its reason. Never raises for any of these."""
    started = time.monotonic()
    try:
        hook = parse_webhook(url)
    except WebhookUrlError as exc:
        return Delivery(False, None, str(exc))
    status, reason = _post(hook, json.dumps(payload(record), allow_nan=False).encode(), timeout_s)
    return Delivery(status is not None and 200 <= status < 300, status, reason, time.monotonic() - started)


def _post(hook: Webhook, body: bytes, timeout_s: float) -> tuple[int | None, str]:
    """(HTTP status or None, reason) of one POST of ``body`` to the webhook."""
    headers = {"Content-Type": "application/json", "User-Agent": "swaplab"}
    if hook.authorization:
        headers["Authorization"] = hook.authorization
    request = urllib.request.Request(hook.endpoint, data=body, headers=headers, method="POST")
    deadline = _Deadline(timeout_s)
    # An opener per call: proxy settings are read from the environment when it is built.
    opener = urllib.request.build_opener(_NoRedirect, _HttpWithin(deadline), _HttpsWithin(deadline))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            cut, status = deadline.expired, response.status
        if cut:  # the headers were cut short at the deadline (an end of input reads as their end)
            return None, f"{hook.shown}: {_why(TimeoutError(), deadline)}"
        return status, f"HTTP {status}"
    except urllib.error.HTTPError as exc:
        return exc.code, _scrub(_http_reason(exc), hook)
    except urllib.error.URLError as exc:
        return None, f"{hook.shown}: {_scrub(_why(exc.reason, deadline), hook)}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, f"{hook.shown}: {_scrub(_why(exc, deadline), hook)}"
    finally:
        deadline.cancel()


def _http_reason(exc: urllib.error.HTTPError) -> str:
    """``HTTP 500 Internal Server Error: <the start of the body>``."""
    try:
        snippet = clean(exc.read(_BODY_SNIPPET).decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException):
        snippet = ""
    finally:
        exc.close()
    reason = f"HTTP {exc.code} {clean(exc.reason)}".rstrip()
    if 300 <= exc.code < 400:
        reason += " (redirects are not followed)"
    return f"{reason}: {snippet}" if snippet else reason


def _why(error: object, deadline: _Deadline) -> str:
    """Why no answer came: the deadline, a refused connection, a TLS error ..."""
    if deadline.expired or isinstance(error, TimeoutError):
        return f"no answer within {deadline.seconds:g} s"  # or only part of one
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _scrub(text: str, hook: Webhook) -> str:
    """``text`` on one line, bounded, without any part of the URL that may be secret."""
    for secret in hook.secrets:
        text = text.replace(secret, "***")
    text = clean(text)
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


# -- retries and records ----------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds from the ``attempts``-th failed attempt to the next one."""
    return RETRY_DELAYS_S[attempts - 1] if 1 <= attempts <= len(RETRY_DELAYS_S) else RETRY_EVERY_S


def next_attempt_at(first_at: float, failed_at: float, attempts: int) -> float | None:
    """When to try again after the ``attempts``-th failure, or None: give up."""
    due = failed_at + retry_delay(attempts)
    return due if due - first_at <= GIVE_UP_AFTER_S else None


def _webhook_target(url: str | None) -> str:
    """The URL to use: ``url``, else ``SWAPLAB_WEBHOOK_URL`` as it is (validated at delivery,
    so a bad value is a recorded, retried failure that a fixed environment clears)."""
    return url if url is not None else os.environ.get(ENV, "").strip()


def enqueue(client: redis.Redis, cid: str, *, url: str | None = None, now: Clock = time.time) -> bool:
    """Mark finished campaign ``cid`` for notification, due now (quick: one Redis script).
    False when no webhook is configured, or ``cid`` is already pending, delivered or given up."""
    if not cid:
        raise ValueError("enqueue: empty campaign id")
    if not _webhook_target(url):
        return False
    return bool(client.eval(_ENQUEUE, 2, notify_key(cid), NOTIFY_DUE_KEY, cid, repr(now()), PENDING))


def notification(client: redis.Redis, cid: str) -> dict[str, str]:
    """What is recorded of ``cid``'s notification (empty: none)."""
    return {as_text(k): as_text(v) for k, v in client.hgetall(notify_key(cid)).items()}


def pending_notifications(client: redis.Redis) -> list[str]:
    """The campaigns whose notification is still to be delivered, the soonest due first."""
    return [as_text(cid) for cid in client.zrange(NOTIFY_DUE_KEY, 0, -1)]


def next_retry_in(client: redis.Redis, now: Clock = time.time) -> float | None:
    """Seconds until the next pending notification is due (0: now), or None: none pending."""
    first = client.zrange(NOTIFY_DUE_KEY, 0, 0, withscores=True)
    return max(0.0, float(first[0][1]) - now()) if first else None


def plan_wakeup(client: redis.Redis, now: Clock = time.time) -> float | None:
    """The countdown (at least 1 s) for one task that retries the soonest due notification,
    or None: nothing pending, or a task is already planned to run no later. Whoever gets a
    countdown must send that task; every caller may ask, one gets it. Ask after releasing
    whatever lock the planned task needs: a wake-up that found it held has passed, so the
    asker plans another."""
    at = now()
    args = (repr(at), repr(_WAKEUP_SLACK_S), repr(_WAKEUP_MIN_S))
    wake = client.eval(_PLAN_WAKEUP, 2, NOTIFY_DUE_KEY, NOTIFY_WAKEUP_KEY, *args)
    return None if wake is None else max(_WAKEUP_MIN_S, float(as_text(wake)) - at)


def notify(
    client: redis.Redis,
    cid: str,
    record: Mapping[str, Any],
    *,
    url: str | None = None,
    now: Clock = time.time,
    timeout_s: float = TIMEOUT_S,
) -> Delivery | None:
    """Attempt to deliver ``cid``'s notification now and record the outcome; a failure
    leaves it pending, due again after :func:`retry_delay`. None when nothing was attempted:
    no webhook configured, already delivered or given up, another process delivering it,
    or MAX_IN_FLIGHT deliveries running in this one (it stays due)."""
    target = _webhook_target(url)
    if not target:
        return None
    with _slot() as free:
        if not free:
            log.info("webhook: %d deliveries in flight; campaign %s stays due", MAX_IN_FLIGHT, cid)
            return None
        return _attempt(client, cid, target, timeout_s, now, lambda: deliver(record, target, timeout_s))


def retry_due(
    client: redis.Redis,
    load: Loader,
    *,
    url: str | None = None,
    now: Clock = time.time,
    timeout_s: float = TIMEOUT_S,
    budget_s: float = RETRY_BUDGET_S,
) -> tuple[int, int]:
    """Attempt every pending notification that is due, its record from ``load(cid)``:
    (how many were delivered, how many are still pending). With no webhook configured
    nothing is attempted and the pending ones stay as they are. Attempts (one at a time, in
    one of the MAX_IN_FLIGHT slots, or none when they are taken) stop after ``budget_s``
    (the rest stay due for the next call)."""
    target = _webhook_target(url)
    delivered = 0
    started = time.monotonic()
    with _slot() as free:
        for cid in _due(client, now()) if target and free else []:
            if time.monotonic() - started >= budget_s:
                break
            send = partial(_deliver_loaded, cid, load, target, timeout_s)
            outcome = _attempt(client, cid, target, timeout_s, now, send)
            delivered += bool(outcome and outcome.ok)
    return delivered, len(pending_notifications(client))


def _due(client: redis.Redis, at: float) -> list[str]:
    return [as_text(cid) for cid in client.zrangebyscore(NOTIFY_DUE_KEY, "-inf", at)]


def _deliver_loaded(cid: str, load: Loader, url: str, timeout_s: float) -> Delivery:
    """Deliver ``cid`` with the record ``load`` finds; a missing record is a failed attempt."""
    try:
        record = load(cid)
    except ValueError as exc:
        return Delivery(False, None, clean(f"unreadable record of campaign {cid}: {exc}")[:_REASON_MAX])
    if record is None:
        return Delivery(False, None, f"no record of campaign {cid} to send (not in Redis, no result.json on this host)")
    return deliver(record, url, timeout_s)


def _attempt(
    client: redis.Redis, cid: str, url: str, timeout_s: float, now: Clock, send: Callable[[], Delivery]
) -> Delivery | None:
    """``send()`` once under ``cid``'s claim unless its notification is over; record the outcome."""
    claim = client.lock(notify_claim_key(cid), timeout=max(60.0, 4 * timeout_s), blocking=False)
    if not claim.acquire():
        return None  # another process is delivering it: it records the outcome
    try:
        state = notification(client, cid)
        if state.get("status") in (DELIVERED, GIVEN_UP):
            client.zrem(NOTIFY_DUE_KEY, cid)
            return None
        delivery = send()
        _record(client, cid, state, delivery, now(), masked(url))
        return delivery
    finally:
        with suppress(redis.exceptions.LockError):  # expired during a very slow attempt: nothing to release
            claim.release()


def _record(client: redis.Redis, cid: str, state: dict[str, str], delivery: Delivery, at: float, shown: str) -> None:
    """Write one attempt's outcome: delivered, pending with its next attempt, or given up."""
    attempts = int(state.get("attempts") or 0) + 1
    first = float(state.get("first_attempt_at") or at)
    fields: dict[str, Any] = {
        "campaign_id": cid,
        "url": shown,
        "attempts": attempts,
        "first_attempt_at": repr(first),
        "last_attempt_at": repr(at),
        "last_status": delivery.status,
        "last_reason": delivery.reason,
        "next_attempt_at": "",
    }
    due = None if delivery.ok else next_attempt_at(first, at, attempts)
    if delivery.ok:
        fields.update(status=DELIVERED, delivered_at=repr(at))
    elif due is None:
        fields.update(status=GIVEN_UP, given_up_at=repr(at))
    else:
        fields.update(status=PENDING, next_attempt_at=repr(due))
    pipe = client.pipeline()
    pipe.hset(notify_key(cid), mapping=encode_fields(fields))
    if due is None:
        pipe.zrem(NOTIFY_DUE_KEY, cid)
        pipe.expire(notify_key(cid), KEEP_S)
    else:
        pipe.zadd(NOTIFY_DUE_KEY, {cid: due})
    pipe.execute()
    _log_outcome(cid, fields, delivery)


def _log_outcome(cid: str, fields: Mapping[str, Any], delivery: Delivery) -> None:
    where, attempt = fields["url"], fields["attempts"]
    if fields["status"] == DELIVERED:
        log.info("webhook: campaign %s delivered to %s (attempt %s, %s)", cid, where, attempt, delivery.reason)
    elif fields["status"] == GIVEN_UP:
        log.error("webhook: campaign %s given up after %s attempt(s) to %s: %s", cid, attempt, where, delivery.reason)
    else:
        retry_at = datetime.fromtimestamp(float(fields["next_attempt_at"]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        log.warning(
            "webhook: campaign %s not delivered to %s (attempt %s): %s; next at %s",
            cid,
            where,
            attempt,
            delivery.reason,
            retry_at,
        )
