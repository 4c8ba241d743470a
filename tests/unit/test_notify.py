"""The webhook's payload and its URL (orchestrator/notify.py), without a network or Redis.

The payload is built from the three stored records the report tests use: ``ab-result.json``
(a comparison campaign: variants, comparisons, a regression among the reasons),
``pair-result.json`` (two kernels, a refused run, a skipped run) and ``smoke-old-result.json``
(a record from before kernel_info existed).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator import notify
from orchestrator.notify import WebhookUrlError, masked, parse_webhook, payload, webhook_url
from orchestrator.reports import render

RESULTS = Path(__file__).resolve().parents[1] / "fixtures" / "results"
SECRET = "s3cr3t-Pa55"


def _record(name: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((RESULTS / name).read_text())
    return record


# -- payload ----------------------------------------------------------------------------


def test_payload_of_a_comparison_campaign() -> None:
    record = _record("ab-result.json")
    body = payload(record)
    assert (body["campaign_id"], body["campaign"]) == (record["campaign_id"], record["campaign"])
    assert (body["verdict"], body["exit_code"]) == (record["verdict"], record["exit_code"]) == ("fail", 3)
    assert body["summary"] == f"swaplab: campaign {record['campaign']}: FAIL (exit 3)"
    assert body["finished_at"] == record["finished_at"]
    assert body["finished_at_utc"].endswith("+00:00")
    assert len(body["runs"]) == len(record["runs"])
    assert {run["kernel_release"] for run in body["runs"]} == {"6.1.0-57-amd64"}
    assert {run["variant"] for run in body["runs"]} == {"base", "same", "pc0"}
    assert [run["verdict"] for run in body["runs"]] == [run["verdict"] for run in record["runs"]]
    verdicts = {(c["candidate"], c["baseline"]): c["verdict"] for c in body["comparisons"]}
    assert verdicts == {("same", "base"): "no change", ("pc0", "base"): "regression"}
    assert body["reasons"] == record["reasons"]
    assert body["text"] == render(record, "text")
    json.dumps(body, allow_nan=False)  # what deliver() sends: plain JSON


def test_payload_of_a_campaign_with_a_refused_and_a_skipped_run() -> None:
    body = payload(_record("pair-result.json"))
    by_run = {run["run_id"]: run for run in body["runs"]}
    assert by_run["r001"] == {
        "run_id": "r001",
        "kernel_release": "6.1.0-57-amd64",
        "variant": "",
        "workload": "overcommit",
        "verdict": "pass",
    }
    assert by_run["r002"]["kernel_release"] == "6.1.192-swaplab+"
    assert by_run["r003"]["verdict"] == "infra-error"  # refused before any node ran: no release
    assert body["skipped_runs"] == [
        {"run_id": "r005", "reason": "not started: a critical criterion failed in run r004"}
    ]
    assert body["comparisons"] == [] and body["reasons"] == []


def test_payload_of_an_old_record_takes_the_release_from_its_nodes() -> None:
    body = payload(_record("smoke-old-result.json"))
    assert [run["kernel_release"] for run in body["runs"]] == ["6.1.0-57-amd64"]
    assert body["summary"] == "swaplab: campaign smoke: PASS (exit 0)"
    assert "campaign smoke: PASS" in body["text"]


def test_payload_of_a_broken_record_is_still_sent_with_what_is_wrong() -> None:
    body = payload({"campaign_id": "x\x1b[2J", "runs": [None, {"verdict": 3}], "exit_code": float("nan")})
    assert body["campaign_id"] == "x"  # no escape sequence reaches the receiver (model.display)
    assert body["exit_code"] is None and body["finished_at"] is None
    assert body["summary"] == "swaplab: campaign x: its record does not match result.json's schema"
    assert "runs.0" in body["record_problems"] and "runs.1.run_id: Field required" in body["record_problems"]
    assert "runs" not in body  # nothing made up from a record the schema refuses
    json.dumps(body, allow_nan=False)


def test_payload_of_a_record_with_nulls_and_unknown_fields_reads_like_the_schema() -> None:
    record = _record("pair-result.json")
    record.update(reasons=None, comparisons=None, lab=None, from_a_newer_swaplab={"x": 1})
    body = payload(record)
    assert body["reasons"] == [] and body["comparisons"] == [] and body["lab"] == ""
    assert [run["run_id"] for run in body["runs"]] == [run["run_id"] for run in record["runs"]]


# -- the URL ----------------------------------------------------------------------------


def test_no_webhook_when_the_variable_is_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(notify.ENV, raising=False)
    assert webhook_url() is None
    monkeypatch.setenv(notify.ENV, "  ")
    assert webhook_url() is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://hooks.example.org/services/T0/B0/XYZ",
        "HTTPS://Example.org",
        f"https://bot:{SECRET}@example.org/notify?channel=swap",
        "http://[::1]:9000/",
    ],
)
def test_good_urls(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv(notify.ENV, f" {url} ")
    assert webhook_url() == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"ftp://bot:{SECRET}@example.org/x", "not an http:// or https:// URL"),
        (f"bot:{SECRET}@example.org/hook", "not an http:// or https:// URL"),
        (f"https://bot:{SECRET}@/hook", "no host"),
        (f"https://bot:{SECRET}@[::1/hook", "not a valid URL"),
        ("http://example.org:99999/", "the port is not a number"),
        (f"http://bot:{SECRET}@example.org:http/", "the port is not a number"),
        (f"http://bot:{SECRET}@example.org/a b", "spaces or control characters"),
        (f"http://bot:{SECRET}@example.org/a\x7fb", "spaces or control characters"),
        (f"https://bot:{SECRET[:3]}/{SECRET[3:]}@example.org/", "'@' outside the host part"),
    ],
)
def test_bad_urls_are_refused_clearly_without_their_credentials(
    monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    monkeypatch.setenv(notify.ENV, url)
    with pytest.raises(WebhookUrlError) as caught:
        webhook_url()
    message = str(caught.value)
    assert message.startswith(f"{notify.ENV}: ") and why in message
    assert SECRET not in message and SECRET[3:] not in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://hooks.example.org/services/T0/B0/XYZ", "https://hooks.example.org/…"),
        ("https://example.org?token=abc", "https://example.org/…"),
        (f"https://bot:{SECRET}@example.org/notify", "https://***@example.org/…"),
        (f"https://{SECRET}@example.org", "https://***@example.org"),
        (f"https://bot:{SECRET[:3]}/{SECRET[3:]}@example.org/", "https://***@example.org"),
        ("example.org/hook", "(not a URL: no scheme://host)"),
    ],
)
def test_masked_urls_show_where_never_the_secrets(url: str, shown: str) -> None:
    assert masked(url) == shown


def test_credentials_become_basic_authentication_and_stay_out_of_repr() -> None:
    hook = parse_webhook(f"https://bot%40lab:{SECRET}%2F1@Example.org:8443/notify?x=1#frag")
    assert hook.endpoint == "https://example.org:8443/notify?x=1"  # no credentials, no fragment
    assert hook.authorization == "Basic " + base64.b64encode(f"bot@lab:{SECRET}/1".encode()).decode()
    assert hook.shown == "https://***@Example.org:8443/…"
    assert SECRET not in repr(hook) and "notify" not in repr(hook)


def test_a_url_without_credentials_sends_no_authorization() -> None:
    hook = parse_webhook("http://[::1]:9000")
    assert (hook.endpoint, hook.authorization) == ("http://[::1]:9000/", None)


def test_deliver_to_a_bad_url_is_a_failure_not_an_exception() -> None:
    delivery = notify.deliver(_record("smoke-old-result.json"), f"gopher://bot:{SECRET}@example.org/")
    assert not delivery.ok and delivery.status is None
    assert "not an http:// or https:// URL" in delivery.reason and SECRET not in delivery.reason


# -- the retry schedule -----------------------------------------------------------------


def test_retries_come_after_30_s_2_min_10_min_then_hourly() -> None:
    assert [notify.retry_delay(n) for n in range(1, 7)] == [30.0, 120.0, 600.0, 3600.0, 3600.0, 3600.0]


def test_a_notification_is_given_up_24_h_after_its_first_attempt() -> None:
    first = at = 1_000_000.0
    attempts = 1
    while (due := notify.next_attempt_at(first, at, attempts)) is not None:
        at, attempts = due, attempts + 1
    assert at - first <= 24 * 3600 < at + 3600 - first  # the last attempt, within the day
    assert attempts == 4 + ((24 * 3600 - 750) // 3600)  # 3 quick retries, then hourly
