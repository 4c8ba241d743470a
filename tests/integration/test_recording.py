"""A finished campaign reaches the results database and gets its reports, through a real
Redis outbox and a real SQLite file; `swaplab show/history/report` answer from the
database once Redis has forgotten the campaign."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from model.state import campaign_key
from orchestrator import sinks
from orchestrator.cli import main
from orchestrator.history.db import ResultsDb
from orchestrator.store import CampaignStore
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401

pytestmark = pytest.mark.integration
RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "pair-result.json"


@pytest.fixture
def finished(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A finished campaign as the scheduler leaves it: in Redis, result.json on disk, in the outbox."""
    monkeypatch.setenv("SWAPLAB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SWAPLAB_REDIS_URL", redis_server.url)
    monkeypatch.setenv("SWAPLAB_DB_URL", f"sqlite:///{tmp_path / 'results.db'}")
    record = json.loads(RECORD.read_text())
    folder = tmp_path / "results" / record["campaign_id"]
    folder.mkdir(parents=True)
    record["result_dir"] = str(folder)
    (folder / "result.json").write_text(json.dumps(record))
    client = redis.Redis.from_url(redis_server.url)
    client.hset(
        campaign_key(record["campaign_id"]),
        mapping={"id": record["campaign_id"], "status": "done", "result": json.dumps(record)},
    )
    sinks.enqueue(client, record["campaign_id"])
    return record


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=dict(os.environ))
    return result.exit_code, result.output


def test_a_finished_campaign_is_stored_and_reported(finished: dict[str, Any]) -> None:
    client = redis.Redis.from_url(os.environ["SWAPLAB_REDIS_URL"])
    with ResultsDb() as db:
        assert sinks.deliver(client, db)[sinks.DATABASE] == sinks.Delivered(1, 0)
        assert db.campaign(finished["campaign_id"]) is not None
    folder = Path(finished["result_dir"])
    for name in ("report.txt", "report.html", "junit.xml", "report.json"):
        assert (folder / name).stat().st_size > 0


def test_show_history_and_report_answer_after_redis_forgot(finished: dict[str, Any], tmp_path: Path) -> None:
    client = redis.Redis.from_url(os.environ["SWAPLAB_REDIS_URL"])
    with ResultsDb() as db:
        sinks.deliver(client, db)
    CampaignStore(client).delete(finished["campaign_id"])
    code, shown = _cli("show", finished["campaign_id"])
    assert code == 0 and finished["campaign_id"] in shown
    code, listed = _cli("history", finished["campaign"], "--json")
    assert code == 0 and [row["campaign_id"] for row in json.loads(listed)] == [finished["campaign_id"]]
    code, _ = _cli("report", finished["campaign_id"], "--format", "junit", "-o", str(tmp_path / "j.xml"))
    assert code == 0 and (tmp_path / "j.xml").read_text().startswith("<?xml")
    code, _ = _cli("show", "no-such-campaign")
    assert code == 2


def test_a_record_redis_forgot_is_stored_from_its_result_json(finished: dict[str, Any]) -> None:
    client = redis.Redis.from_url(os.environ["SWAPLAB_REDIS_URL"])
    CampaignStore(client).delete(finished["campaign_id"])  # the outbox entry outlives it
    with ResultsDb() as db:
        assert sinks.deliver(client, db)[sinks.DATABASE] == sinks.Delivered(1, 0)
        assert db.campaign(finished["campaign_id"]) is not None


def test_history_with_the_database_down_is_a_clear_error(
    finished: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A port nothing listens on (the test's own Redis port is taken by Redis, not PostgreSQL).
    monkeypatch.setenv("SWAPLAB_DB_URL", "postgresql+psycopg://u:p@127.0.0.1:1/none?connect_timeout=2")
    code, output = _cli("history")
    assert code == 2 and "results database cannot answer" in output


def test_a_record_the_schema_refuses_is_set_aside_by_the_reports_and_named_by_report(
    finished: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its reports are set aside with every wrong field named (no traceback in the log), and
    `swaplab report` answers with the same, exit 2: no report is made up from it."""
    cid = finished["campaign_id"]
    broken = finished | {"runs": [finished["runs"][0] | {"attempt": "second"}, *finished["runs"][1:]]}
    client = redis.Redis.from_url(os.environ["SWAPLAB_REDIS_URL"])
    client.hset(campaign_key(cid), "result", json.dumps(broken))
    with caplog.at_level("ERROR"):
        assert sinks.deliver_reports(client) == sinks.Delivered(0, 0)
    error = sinks.refused(client, cid)[sinks.REPORTS]
    assert "does not match result.json's schema" in error and "runs.0.attempt" in error
    assert all(record.exc_info is None for record in caplog.records)
    assert not (Path(finished["result_dir"]) / "report.txt").exists()
    code, output = _cli("report", cid, "--format", "html", "-o", str(tmp_path / "r.html"))
    assert code == 2 and "runs.0.attempt" in output and "Traceback" not in output
    assert not (tmp_path / "r.html").exists()
