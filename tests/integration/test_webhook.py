"""The webhook (orchestrator/notify.py) against a local HTTP server made here and a real
Redis: delivered; a failing endpoint (HTTP 500, a closed port, no answer) recorded and
retried when due — time moved by an injected clock, never slept — until delivered once;
given up after a day; a URL with a password never in a log or in Redis.

The campaign is set up as the scheduler leaves a finished one (its record in Redis and in
result.json) and read back with ``orchestrator.sinks.finished_record``, as the control
worker does."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from model.state import NOTIFY_DUE_KEY, NOTIFY_WAKEUP_KEY, as_text, campaign_key, notify_claim_key, notify_key
from orchestrator import notify
from orchestrator.reports import render
from orchestrator.sinks import finished_record
from orchestrator.store import CampaignStore
from tests.conftest import free_port
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "pair-result.json"
T0 = 1_796_040_400.123456  # not a whole second: times go through Redis as text
PASSWORD = "n1ght-Hook-Pw"


@dataclass
class Received:
    path: str
    headers: Message
    body: bytes
    answered: int


class HookServer(ThreadingHTTPServer):
    """An HTTP endpoint on 127.0.0.1 that records every POST and answers ``status``."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.status = 200
        self.location = ""
        self.received: list[Received] = []

    def url(self, path: str = "/hooks/nightly", userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server_address[1]}{path}"

    def delivered(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.answered < 300]


class _Handler(BaseHTTPRequestHandler):
    server: HookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = self.server.status
        self.server.received.append(Received(self.path, self.headers, body, status))
        reply = b"" if status < 300 else b"broken on purpose"
        self.send_response(status)
        if self.server.location:
            self.send_header("Location", self.server.location)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Clock:
    """The time notify sees: moved by the test."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    server = HookServer(free_port())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as connection:
        yield connection


@pytest.fixture
def finished(tmp_path: Path, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A finished campaign as the scheduler leaves it: its record in Redis and in result.json."""
    monkeypatch.setenv("SWAPLAB_RESULTS", str(tmp_path / "results"))
    record: dict[str, Any] = json.loads(RECORD.read_text())
    folder = tmp_path / "results" / record["campaign_id"]
    folder.mkdir(parents=True)
    record["result_dir"] = str(folder)
    (folder / "result.json").write_text(json.dumps(record))
    client.hset(
        campaign_key(record["campaign_id"]),
        mapping={"id": record["campaign_id"], "status": "done", "result": json.dumps(record)},
    )
    return record


def _load(client: redis.Redis) -> notify.Loader:
    store = CampaignStore(client)
    return lambda cid: finished_record(store, cid)


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hooks/nightly"  # nothing listens there


def test_a_finished_campaign_is_delivered(
    client: redis.Redis, finished: dict[str, Any], hook_server: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = finished["campaign_id"]
    monkeypatch.setenv(notify.ENV, hook_server.url())
    clock = Clock()
    assert notify.enqueue(client, cid, now=clock)
    assert notify.pending_notifications(client) == [cid] and notify.next_retry_in(client, clock) == 0.0

    assert notify.retry_due(client, _load(client), now=clock) == (1, 0)

    [got] = hook_server.received
    assert got.path == "/hooks/nightly"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "swaplab"
    assert got.headers["Authorization"] is None
    body = json.loads(got.body)
    assert body == notify.payload(finished)
    assert (body["campaign_id"], body["verdict"], body["exit_code"]) == (cid, "fail", 3)
    assert [run["kernel_release"] for run in body["runs"]][:2] == ["6.1.0-57-amd64", "6.1.192-swaplab+"]
    assert body["text"] == render(finished, "text") and "swaplab report: campaign pair-patched" in body["text"]
    record = notify.notification(client, cid)
    assert record["status"] == notify.DELIVERED and record["attempts"] == "1"
    assert (record["last_status"], float(record["delivered_at"])) == ("200", T0)
    assert notify.pending_notifications(client) == [] and notify.next_retry_in(client, clock) is None
    # Delivered is final: neither a second enqueue nor a direct attempt sends it again.
    assert not notify.enqueue(client, cid, now=clock)
    assert notify.notify(client, cid, finished, now=clock) is None
    assert len(hook_server.received) == 1


def test_a_failing_endpoint_is_recorded_and_retried_until_delivered_once(
    client: redis.Redis, finished: dict[str, Any], hook_server: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, clock, load = finished["campaign_id"], Clock(), _load(client)
    result_before = client.hget(campaign_key(cid), "result")
    monkeypatch.setenv(notify.ENV, hook_server.url())
    hook_server.status = 500

    delivery = notify.notify(client, cid, finished, now=clock)
    assert delivery is not None and not delivery.ok and delivery.status == 500
    assert delivery.reason == "HTTP 500 Internal Server Error: broken on purpose"
    record = notify.notification(client, cid)
    assert (record["status"], record["attempts"], record["last_status"]) == (notify.PENDING, "1", "500")
    assert record["last_reason"] == delivery.reason and float(record["next_attempt_at"]) == T0 + 30
    assert notify.pending_notifications(client) == [cid] and notify.next_retry_in(client, clock) == 30.0

    clock.t = T0 + 29  # not due yet: nothing is attempted
    assert notify.retry_due(client, load, now=clock) == (0, 1)
    assert len(hook_server.received) == 1

    monkeypatch.setenv(notify.ENV, _closed_port_url())  # the endpoint is gone altogether
    clock.t = T0 + 30
    assert notify.retry_due(client, load, now=clock) == (0, 1)
    record = notify.notification(client, cid)
    assert (record["attempts"], record["last_status"]) == ("2", "")
    assert record["last_reason"].endswith(": Connection refused")
    assert float(record["next_attempt_at"]) == T0 + 30 + 120

    monkeypatch.setenv(notify.ENV, hook_server.url())
    hook_server.status = 204
    clock.t = T0 + 30 + 120
    assert notify.retry_due(client, load, now=clock) == (1, 0)
    record = notify.notification(client, cid)
    assert (record["status"], record["attempts"], record["last_status"]) == (notify.DELIVERED, "3", "204")
    assert float(record["first_attempt_at"]) == T0 and float(record["delivered_at"]) == T0 + 150

    clock.t += 3 * 3600  # later passes find nothing to do
    assert notify.retry_due(client, load, now=clock) == (0, 0)
    assert [r.answered for r in hook_server.received] == [500, 204]
    assert len(hook_server.delivered()) == 1
    assert json.loads(hook_server.delivered()[0].body) == notify.payload(finished)
    # The result itself was never touched by the failures.
    assert client.hget(campaign_key(cid), "result") == result_before
    assert json.loads((Path(finished["result_dir"]) / "result.json").read_text()) == finished


def test_a_notification_is_given_up_after_a_day_of_failures(
    client: redis.Redis, finished: dict[str, Any], hook_server: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, clock, load = finished["campaign_id"], Clock(), _load(client)
    monkeypatch.setenv(notify.ENV, hook_server.url())
    hook_server.status = 503
    notify.enqueue(client, cid, now=clock)
    while (wait := notify.next_retry_in(client, clock)) is not None:
        clock.t += wait
        notify.retry_due(client, load, now=clock)
    record = notify.notification(client, cid)
    assert record["status"] == notify.GIVEN_UP and record["last_status"] == "503"
    assert float(record["given_up_at"]) - T0 <= 24 * 3600
    # At 0, 30 s, 2.5 min, 12.5 min, then hourly up to 23 h 12.5 min: 27 attempts.
    assert int(record["attempts"]) == len(hook_server.received) == 27
    assert 0 < client.ttl(notify_key(cid)) <= notify.KEEP_S  # kept a while, then forgotten
    clock.t += 7 * 86400
    hook_server.status = 200
    assert notify.retry_due(client, load, now=clock) == (0, 0)
    assert notify.notify(client, cid, finished, now=clock) is None
    assert len(hook_server.received) == 27


def test_an_endpoint_that_never_answers_times_out(
    client: redis.Redis, finished: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never accepts nor answers
        monkeypatch.setenv(notify.ENV, f"http://127.0.0.1:{silent.getsockname()[1]}/")
        delivery = notify.notify(client, finished["campaign_id"], finished, now=Clock(), timeout_s=0.3)
    assert delivery is not None and not delivery.ok and delivery.status is None
    assert delivery.reason.endswith(": no answer within 0.3 s") and delivery.elapsed_s < 5
    assert notify.notification(client, finished["campaign_id"])["status"] == notify.PENDING


def test_a_redirect_is_not_followed(
    client: redis.Redis, finished: dict[str, Any], hook_server: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(notify.ENV, hook_server.url(userinfo=f"bot:{PASSWORD}@"))
    hook_server.status, hook_server.location = 307, hook_server.url("/elsewhere")
    delivery = notify.notify(client, finished["campaign_id"], finished, now=Clock())
    assert delivery is not None and not delivery.ok and delivery.status == 307
    assert "redirects are not followed" in delivery.reason
    assert [r.path for r in hook_server.received] == ["/hooks/nightly"]


def test_a_url_with_a_password_is_never_logged_nor_recorded(
    client: redis.Redis,
    finished: dict[str, Any],
    hook_server: HookServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cid, clock, load = finished["campaign_id"], Clock(), _load(client)
    secret_path = "/hooks/T0D0/s3cretpath"
    closed_port = free_port()
    steps = [  # (URL, the server's answer, seconds later): refused, nothing listening, delivered
        (hook_server.url(secret_path, userinfo=f"bot:{PASSWORD}@"), 500, 0),
        (f"http://bot:{PASSWORD}@127.0.0.1:{closed_port}{secret_path}", 200, 30),
        (hook_server.url(secret_path, userinfo=f"bot:{PASSWORD}@"), 200, 120),
    ]
    monkeypatch.setenv(notify.ENV, steps[0][0])
    assert notify.enqueue(client, cid, now=clock)
    stored = []
    for url, status, later in steps:
        monkeypatch.setenv(notify.ENV, url)
        hook_server.status, clock.t = status, clock.t + later
        notify.retry_due(client, load, now=clock)
        stored.append(_everything_in(client))

    assert notify.notification(client, cid)["status"] == notify.DELIVERED
    [got] = hook_server.delivered()
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(f"bot:{PASSWORD}".encode()).decode()
    assert got.path == secret_path
    assert notify.notification(client, cid)["url"] == f"http://***@127.0.0.1:{hook_server.server_address[1]}/…"
    assert "HTTP 500" in stored[0] and "Connection refused" in stored[1]  # what Redis held after each step
    assert f"webhook: campaign {cid} not delivered to http://***@127.0.0.1:{closed_port}/…" in caplog.text
    for secret in (PASSWORD, "s3cretpath"):
        assert secret not in caplog.text
        assert not any(secret in text for text in stored)


def test_one_process_delivers_a_campaign_at_a_time(
    client: redis.Redis, finished: dict[str, Any], hook_server: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = finished["campaign_id"]
    monkeypatch.setenv(notify.ENV, hook_server.url())
    claim = client.lock(notify_claim_key(cid), timeout=30)
    assert claim.acquire(blocking=False)  # another control process is delivering it
    assert notify.notify(client, cid, finished, now=Clock()) is None
    claim.release()
    assert hook_server.received == []
    delivery = notify.notify(client, cid, finished, now=Clock())
    assert delivery is not None and delivery.ok


def test_one_wakeup_is_planned_per_due_time(
    client: redis.Redis, finished: dict[str, Any], hook_server: HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, clock, load = finished["campaign_id"], Clock(), _load(client)
    monkeypatch.setenv(notify.ENV, hook_server.url())
    assert notify.plan_wakeup(client, clock) is None  # nothing pending
    hook_server.status = 500
    notify.enqueue(client, cid, now=clock)
    assert notify.plan_wakeup(client, clock) == 1.0  # due now: a task in a second
    clock.t += 0.5
    assert notify.plan_wakeup(client, clock) is None  # that one is planned already

    clock.t = T0 + 1
    assert notify.retry_due(client, load, now=clock) == (0, 1)  # the planned task: fails, due at T0 + 31
    assert notify.plan_wakeup(client, clock) == 30.0  # its wake-up has passed: it plans the next
    assert notify.plan_wakeup(client, clock) is None
    clock.t = T0 + 10  # other record_results tasks (the database's retries) plan nothing more
    assert notify.plan_wakeup(client, clock) is None
    assert 0 < client.pttl(NOTIFY_WAKEUP_KEY) <= (30 + 300) * 1000  # set at T0 + 1: its time, and slack

    other = "pair-patched-20261130-130000-0a0a"  # finished meanwhile, due now: sooner than planned
    notify.enqueue(client, other, now=clock)
    assert notify.plan_wakeup(client, clock) == 1.0
    assert notify.plan_wakeup(client, clock) is None
    assert notify.pending_notifications(client) == [other, cid]


def test_nothing_happens_without_a_webhook(
    client: redis.Redis, finished: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(notify.ENV, raising=False)
    cid = finished["campaign_id"]
    assert not notify.enqueue(client, cid)
    assert notify.notify(client, cid, finished) is None
    assert notify.retry_due(client, _load(client)) == (0, 0)
    assert not client.exists(notify_key(cid), NOTIFY_DUE_KEY)


class Trickler:
    """An endpoint that takes the POST, then answers one byte of its headers every 0.3 s."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.ended_after: float | None = None  # when the client ended the connection
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hooks/nightly"

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        started = time.monotonic()
        with conn:
            conn.settimeout(5)
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(100):  # 30 s, far past any per-read timeout
                    conn.sendall(b"X")
                    time.sleep(0.3)
                    conn.settimeout(0)
                    with suppress(BlockingIOError):
                        if conn.recv(1) == b"":
                            break  # the client hung up
                    conn.settimeout(5)
            except OSError:
                pass
        self.ended_after = time.monotonic() - started

    def close(self, timeout_s: float = 5) -> None:
        self._thread.join(timeout_s)
        self.server.close()


def test_a_trickling_endpoint_is_cut_at_the_deadline(
    client: redis.Redis, finished: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    trickler = Trickler()
    monkeypatch.setenv(notify.ENV, trickler.url)
    started = time.monotonic()
    delivery = notify.notify(client, finished["campaign_id"], finished, now=Clock(), timeout_s=1.5)
    assert time.monotonic() - started < 2.5  # not the minutes a timeout per read allows
    assert delivery is not None and not delivery.ok and delivery.status is None
    assert delivery.reason.endswith(": no answer within 1.5 s")
    trickler.close()
    assert trickler.ended_after is not None and trickler.ended_after < 2.5  # the connection ended too
    state = notify.notification(client, finished["campaign_id"])
    assert state["status"] == notify.PENDING and state["attempts"] == "1"  # retried later, as any failure


def test_deliveries_in_flight_are_bounded(
    client: redis.Redis, finished: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    connected, most, lock = 0, 0, threading.Lock()
    held: list[socket.socket] = []

    def hold() -> None:  # accepts every connection, answers none, counts them at once
        nonlocal connected, most
        while True:
            try:
                conn, _ = silent.accept()
            except OSError:
                return
            with lock:
                held.append(conn)
                connected = sum(1 for c in held if _open(c))
                most = max(most, connected)

    silent = socket.create_server(("127.0.0.1", 0), backlog=16)
    threading.Thread(target=hold, daemon=True).start()
    monkeypatch.setenv(notify.ENV, f"http://127.0.0.1:{silent.getsockname()[1]}/")
    cids = [f"{finished['campaign_id']}-{n}" for n in range(6)]
    for cid in cids:
        assert notify.enqueue(client, cid, now=Clock())
    start = threading.Barrier(len(cids))
    outcomes: dict[str, notify.Delivery | None] = {}

    def attempt(cid: str) -> None:
        start.wait()
        outcomes[cid] = notify.notify(client, cid, finished, now=Clock(), timeout_s=1.5)

    threads = [threading.Thread(target=attempt, args=(cid,)) for cid in cids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    silent.close()
    attempted = [cid for cid, outcome in outcomes.items() if outcome is not None]
    assert len(outcomes) == len(cids) and len(attempted) == notify.MAX_IN_FLIGHT
    assert most <= notify.MAX_IN_FLIGHT
    for cid in set(cids) - set(attempted):  # not attempted: still due, nothing counted against it
        assert notify.notification(client, cid)["attempts"] == "0"
        assert client.zscore(NOTIFY_DUE_KEY, cid) == T0
    for conn in held:
        conn.close()


def _open(conn: socket.socket) -> bool:
    """The client end of ``conn`` is still connected."""
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _everything_in(client: redis.Redis) -> str:
    """Every key and value in Redis, as one text to search."""
    parts = []
    for key in client.scan_iter():
        kind = as_text(client.type(key))
        value: Any = None
        if kind == "hash":
            value = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            value = client.get(key)
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)
