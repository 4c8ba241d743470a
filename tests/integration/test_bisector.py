"""The control plane's bisection against a real redis-server: a child campaign per question,
the answers read back from their records, a base run between steps, resumable at any step,
cancellable, and ended as failed (never left waiting) when a child's record is not one.

The child campaigns are stored as the scheduler stores any campaign; their runs are
written as finished records here (a whole bisection with guests is the e2e's), with patch
3 of 4 making swap-in 58 % slower.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model.campaign import Campaign, load_campaign
from model.result import schema_problems
from model.state import bisection_key
from orchestrator import bisector, sinks
from orchestrator.history.db import ResultsDb
from orchestrator.planner import new_campaign_id, plan_runs
from orchestrator.scheduler import Scheduler
from orchestrator.store import CampaignStore
from tests.integration.dispatch import RecordingDispatch
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[2]
SERIES = bisector.Series(
    ["mm: a log line", "mm: a comment", "mm: swap: read swap back one page at a time", "mm: another comment"],
    ["Swap Tester <swap@example.org>"] * 4,
    ["mm/swapfile.c | 1 +", "mm/swap.c | 1 +", "mm/swap.c | 4 ++--", "mm/page_io.c | 1 +"],
)
_RUNS = itertools.count(1)


def _campaign(tmp_path: Path) -> Campaign:
    series = tmp_path / "series.mbox"
    series.write_text("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n")
    lab = tmp_path / "lab.yml"
    text = (REPO / "inventory" / "local.yml").read_text()
    lab.write_text(text.replace("swaplab_lab: local", f"swaplab_lab: local\n    swaplab_kernel_dirs: [{tmp_path}]", 1))
    path = tmp_path / "pc.yaml"
    path.write_text(
        f"""\
name: pc
lab: {lab}
kernels:
  - build: {{source: {{debian: linux-source-6.1}}, patches: {series}}}
node: {{ram_mib: 256}}
swap: {{size_mib: 512}}
workloads: [{{name: small, mib: 320}}]
repeats: 4
compare: {{primary: swap_in_mibps, figures: {{swap_in_mibps: {{tolerance: 0.25}}}}}}
"""
    )
    return load_campaign(path)


def series_prefix(label: str) -> int:
    """The prefix a series' kernel label names (``...series.mbox[:3]``)."""
    return int(label.rsplit("[:", 1)[1].rstrip("]"))


class Lab:
    """Stores each child campaign as submitted, and finishes it with runs on demand: prefix
    3 and later swap in 58 % slower."""

    def __init__(
        self,
        store: CampaignStore,
        prefix_of: Callable[[str], int] = series_prefix,
        built: list[str] | None = None,
        db: ResultsDb | None = None,
    ) -> None:
        self.store = store
        self.prefix_of = prefix_of
        self.submitted: list[str] = []
        self.noise = random.Random(3)
        self.built = built  # the build hash of each prefix's kernel, as the runs record it
        self.db = db  # where finished records are stored, as the database sink would

    def submit(self, store: CampaignStore, campaign: Campaign, bisection: str) -> str:
        cid = new_campaign_id(campaign.spec.name)
        store.create(cid, campaign, plan_runs(campaign), bisection)
        self.submitted.append(cid)
        return cid

    def finish(self, cid: str) -> list[str]:
        """The child's runs, each with its kernel's swap-in rate; the labels it ran."""
        campaign = self.store.campaign_model(cid)
        runs = []
        for plan in plan_runs(campaign):
            label = plan.kernel.label()
            prefix = self.prefix_of(label)
            rate = (6.0 if prefix >= 3 else 14.0) * self.noise.gauss(1, 0.03)
            runs.append(_run(label, rate, self.built[prefix] if self.built else None))
        info = self.store.campaign(cid)
        record = {"campaign_id": cid, "wall_s": 42.0, "runs": runs, "bisection": getattr(info, "bisection", None)}
        self.store.set_campaign_status(cid, "done", result=json.dumps(record))
        if self.db is not None:
            self.db.store(record)
        return [plan.kernel.label() for plan in plan_runs(campaign)]


def _run(label: str, swap_in: float, artifact: str | None = None) -> dict[str, Any]:
    return {
        "run_id": f"r{next(_RUNS):03d}",
        "kernel_label": label,
        "kernel_info": {"artifact": artifact},
        "verdict": "pass",
        "nodes": [{"node": "node1", "figures": {"swap_in_mibps": {"value": swap_in}}}],
    }


DIGESTS = [f"{k:064x}" for k in range(5)]


def _bisect(
    client: Any, store: CampaignStore, lab: Lab, tmp_path: Path, on: str = "figure", digests: list[str] | None = DIGESTS
) -> str:
    """A whole bisection on the fake lab, each child finished as soon as it is submitted."""
    bid = bisector.create(client, _campaign(tmp_path), SERIES, on, max_repeats=8, digests=digests)  # type: ignore[arg-type]
    while bisector.advance(client, store, bid, lab.submit):
        lab.finish(lab.submitted[-1])
    return bid


def test_a_bisection_asks_campaign_after_campaign_and_names_the_patch(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    lab = Lab(store)
    bid = bisector.create(client, _campaign(tmp_path), SERIES, "figure", max_repeats=8)
    assert bisector.active(client) == [bid]

    asked: list[list[str]] = []
    while bisector.advance(client, store, bid, lab.submit):
        child = lab.submitted[-1]
        assert bisector.advance(client, store, bid, lab.submit)  # still running: nothing changes
        assert lab.submitted[-1] == child
        asked.append(lab.finish(child))

    shown = bisector.read(client, bid)
    assert shown is not None and shown["status"] == "done" and bisector.active(client) == []
    result = shown["result"]
    assert (result["outcome"], result["first_bad"]) == ("culprit", 3), shown
    assert result["culprit"]["subject"] == "mm: swap: read swap back one page at a time"
    assert result["describe"] == "patch 3 is the first bad one"
    # The figure before the culprit (its last good prefix) and with it, by the comparison's statistics.
    assert result["change"].startswith("swap_in_mibps: ") and result["change"].endswith("regression"), result
    base, whole, two, three = (f"build:linux-source-6.1+series.mbox[:{k}]" for k in (0, 4, 2, 3))
    # The ends interleaved (a comparison: A B B A ...), then prefix 2, a base run, prefix 3.
    assert asked == [[base, whole, whole, base, base, whole, whole, base], [two] * 4, [base], [three] * 4]
    assert [step["step"] for step in shown["steps"]] == ["bad", "good", "base", "bad"]
    assert all(step["lab_s"] == 42.0 for step in shown["steps"])
    assert len(shown["steps"][-2]["values"]) == 5  # the base's pool: 4 from the ends, 1 between steps
    # Each child campaign knows it is a step of the bisection (its record will say so).
    assert all(getattr(store.campaign(cid), "bisection", None) == bid for cid in lab.submitted)
    assert shown["campaigns"] == lab.submitted


def test_an_ended_bisection_goes_into_the_results_database_through_its_outbox(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    lab = Lab(store)
    bid = _bisect(client, store, lab, tmp_path, digests=None)  # no digests: no database asked while it runs
    assert sinks.waiting(client) >= {(sinks.BISECTIONS, bid)}
    with ResultsDb(f"sqlite:///{tmp_path / 'results.db'}") as db:
        assert sinks.deliver_bisections(client, db) == sinks.Delivered(1, 0)
        assert (sinks.BISECTIONS, bid) not in sinks.waiting(client)
        assert db.bisection(bid) == bisector.read(client, bid)
        [listed] = db.bisections()
        assert (listed["id"], listed["outcome"], listed["culprit"]) == (bid, "culprit", 3)
        assert listed["describe"] == "patch 3 is the first bad one" and listed["campaigns"] == lab.submitted


def test_a_bisection_resumes_from_redis_alone_and_a_cancel_reaches_its_child(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    lab = Lab(store)
    bid = bisector.create(client, _campaign(tmp_path), SERIES, "figure", max_repeats=8)
    bisector.advance(client, store, bid, lab.submit)
    lab.finish(lab.submitted[-1])
    # A control worker that starts now knows nothing but Redis: the bisection goes on.
    assert bisector.active(client) == [bid]
    assert bisector.advance(client, store, bid, Lab(store).submit)
    child = store.campaign_ids(limit=1)[0]
    assert json.loads(client.hget(bisection_key(bid), "asked") or "") == [2, 4, False]

    bisector.request_cancel(client, bid)
    assert bisector.advance(client, store, bid, lab.submit) is False
    assert store.cancel_requested(child)
    shown = bisector.read(client, bid)
    assert shown is not None and shown["status"] == "cancelled" and bisector.active(client) == []


def test_a_child_record_that_is_not_one_ends_the_bisection_as_failed(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    lab = Lab(store)
    bid = bisector.create(client, _campaign(tmp_path), SERIES, "figure", max_repeats=8)
    bisector.advance(client, store, bid, lab.submit)
    store.set_campaign_status(lab.submitted[-1], "done", result=json.dumps({"campaign_id": 7, "runs": "many"}))
    with pytest.raises(ValueError, match="schema"):
        bisector.advance(client, store, bid, lab.submit)
    bisector.fail(client, bid, "RecordError: the record does not match result.json's schema")
    shown = bisector.read(client, bid)
    assert shown is not None and shown["status"] == "failed" and "schema" in shown["error"]
    assert bisector.active(client) == []


def test_a_step_campaigns_record_and_its_stored_row_name_the_bisection(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    store = CampaignStore(redis_server.client())
    campaign, cid, bid = _campaign(tmp_path), "pc-p2-20261205-000000-beef", "bisect-pc-20261205-000000-cafe"
    runs = plan_runs(campaign)
    store.create(cid, campaign, runs, bid)
    for run in runs:
        judged = {"run_id": run.run_id, "kernel": "k", "verdict": "pass", "exit_code": 0, "nodes": []}
        store.set_run_status(cid, run.run_id, "done", verdict="pass", result=judged)
    assert Scheduler(store.redis, RecordingDispatch(), tmp_path / "results").advance(cid) is False
    written = json.loads((tmp_path / "results" / cid / "result.json").read_text())
    assert written["bisection"] == bid and schema_problems(written) is None
    with ResultsDb(f"sqlite:///{tmp_path / 'results.db'}") as db:
        db.store(written)
        [row] = db.history(bisection=bid)
        assert (row["campaign_id"], row["bisection"]) == (cid, bid)
        assert db.history(bisection="bisect-another-20261205-000000-cafe") == []


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A results database of the test's own, the one the control plane asks."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    monkeypatch.setenv("SWAPLAB_DB_URL", url)
    return url


def test_a_step_takes_stored_runs_of_its_kernel_and_settings_instead_of_the_lab(
    redis_server: RedisServer, tmp_path: Path, database: str
) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    with ResultsDb(database) as db:
        first = Lab(store, built=DIGESTS, db=db)
        _bisect(client, store, first, tmp_path)
        assert len(first.submitted) == 4  # the ends, prefix 2, a base run, prefix 3
        # The same series again (on the verdict, say): the ends in the lab, the steps from storage.
        again = Lab(store, built=DIGESTS, db=db)
        bid = _bisect(client, store, again, tmp_path, "verdict")
    shown = bisector.read(client, bid)
    assert (
        shown is not None
        and shown["result"]["describe"] == "nothing to bisect: the whole series is not worse than the base"
    )
    assert len(again.submitted) == 1  # only the ends: every run passed, as the figure's did

    with ResultsDb(database) as db:
        figure = Lab(store, built=DIGESTS, db=db)
        bid = _bisect(client, store, figure, tmp_path)
    shown = bisector.read(client, bid)
    assert shown is not None and shown["result"]["culprit"]["position"] == 3
    assert len(figure.submitted) == 1  # the ends: the base is never taken from another campaign
    _ends, two, three = shown["steps"]
    assert (two["prefix"], two["step"], two["campaign"], two["runs_s"]) == (2, "good", "", 0.0)
    assert two["reused"] == [first.submitted[1]] and three["reused"] == [first.submitted[3]]
    assert "from 4 stored run(s) of the same kernel and settings" in three["why"]


def test_a_kernel_built_under_another_hash_than_its_digest_turns_reuse_off(
    redis_server: RedisServer, tmp_path: Path, database: str
) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    with ResultsDb(database) as db:
        _bisect(client, store, Lab(store, built=DIGESTS, db=db), tmp_path)
        elsewhere = Lab(store, built=[f"{k + 7:064x}" for k in range(5)], db=db)  # another toolchain, say
        bid = _bisect(client, store, elsewhere, tmp_path)
    assert len(elsewhere.submitted) == 4  # every step in the lab
    assert client.hget(bisection_key(bid), "digests") in (b"[]", "[]")
