"""``swaplab bisect``, run by the control plane: which patch of a series (or commit of a
git range) made it worse.

A bisection lives in Redis (``swaplab:bisection:<bid>``): the campaign it was submitted
with, the state of ``model.bisection.Bisection`` (its log), what the runs said so far per
prefix (``orchestrator.bisect_steps.Gathered``), the question being asked and the child
campaign asking it. ``swaplab.advance_bisection`` moves it one question at a time: while
the child campaign runs it only looks again later; once the child is finished it reads
the answer from the child's record, records it, and submits the next question's child
campaign, or stores the result. Every step is a whole campaign of the usual kind (built,
run, judged, stored in the results database), named after the bisection. A control worker
that starts picks up every bisection not finished, so a restart loses nothing but the
time it was down; a bisection cancelled cancels its running child.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import redis

from model.bisection import Ask, Bisection, Outcome, Step
from model.campaign import Campaign, CampaignSpec, campaign_from_json, campaign_to_json
from model.hashes import BisectionHash
from model.kernel import BuildSpec
from model.result import campaign_of
from model.state import BISECTIONS_KEY, TERMINAL, as_text, bisection_key, bisection_lock_key
from orchestrator import sinks
from orchestrator.bisect_steps import (
    Gathered,
    On,
    Reused,
    base_spec,
    child_spec,
    judge,
    prefix_build,
    reusable,
    settings_key,
)
from orchestrator.bisect_steps import Series as Series  # what the CLI hands to create()
from orchestrator.stats import Policy, compare_figure, resolve_policies
from orchestrator.store import CampaignStore

log = logging.getLogger(__name__)
ACTIVE = "running"
FINISHED = ("done", "cancelled", "failed")
SHOWN = {
    "id",
    "name",
    "status",
    "created_at",
    "finished_at",
    "on",
    "figure",
    "child",
    "asked",
    "error",
    "steps",
    "series",
    "result",
}
LOCK_S = 60.0


def new_bisection_id(name: str) -> str:
    return f"bisect-{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def create(
    client: redis.Redis, campaign: Campaign, series: Series, on: On, max_repeats: int, digests: list[str] | None = None
) -> str:
    """Store a new bisection (all of it or nothing); its id. The caller kicks it. ``digests``:
    each prefix's build hash, so a step can take stored runs of its kernel."""
    bid = new_bisection_id(campaign.spec.name)
    state = Bisection(len(series.subjects), repeats=campaign.spec.repeats, max_repeats=max_repeats)
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        bisection_key(bid),
        mapping={
            "id": bid,
            "name": campaign.spec.name,
            "status": ACTIVE,
            "created_at": now,
            "campaign": json.dumps(campaign_to_json(campaign)),
            "on": on,
            "figure": campaign.spec.compare.primary,
            "series": json.dumps(series.to_json()),
            "state": json.dumps(state.to_json()),
            "gathered": json.dumps(Gathered().to_json()),
            "steps": "[]",
            "child": "",
            "digests": json.dumps(digests or []),
        },
    )
    pipe.zadd(BISECTIONS_KEY, {bid: now})
    pipe.execute()
    return bid


def active(client: redis.Redis, limit: int = 200) -> list[str]:
    """The bisections not finished, oldest first (a control worker that starts resumes them)."""
    found = []
    for raw in client.zrange(BISECTIONS_KEY, -limit, -1):
        bid = as_text(raw)
        if as_text(client.hget(bisection_key(bid), "status") or b"") == ACTIVE:
            found.append(bid)
    return found


def read(client: redis.Redis, bid: str) -> dict[str, Any] | None:
    """A bisection as ``--status`` shows it; None when there is none (CorruptHash when it
    does not read as swaplab wrote it)."""
    found = BisectionHash.read(bisection_key(bid), client.hgetall(bisection_key(bid)))
    return None if found is None else shown_of(found)


def shown_of(found: BisectionHash) -> dict[str, Any]:
    """What ``--status``, ``--json`` and the results database keep of a bisection."""
    shown = found.model_dump(include=SHOWN)
    shown["campaigns"] = [step.campaign for step in found.steps]
    return shown


def request_cancel(client: redis.Redis, bid: str) -> None:
    client.hset(bisection_key(bid), "cancel", "1")


def fail(client: redis.Redis, bid: str, reason: str) -> None:
    client.hset(bisection_key(bid), mapping={"status": "failed", "error": reason[:2000], "finished_at": time.time()})
    sinks.enqueue_bisection(client, bid)


def build_of(campaign: Campaign) -> BuildSpec:
    """The one ``build:`` kernel with a patch series (or a git range) a bisection campaign names."""
    [kernel] = campaign.spec.kernels
    assert kernel.build is not None
    return kernel.build


def advance(client: redis.Redis, store: CampaignStore, bid: str, submit: Any) -> bool:
    """One step of the bisection; whether it is still active (look again later)."""
    with client.lock(bisection_lock_key(bid), timeout=LOCK_S, blocking_timeout=30):
        found = BisectionHash.read(bisection_key(bid), client.hgetall(bisection_key(bid)))
        if found is None or found.status != ACTIVE:
            return False
        if found.cancel:
            _cancel(client, store, bid, found.child)
            return False
        if found.child and store.status(found.child) not in TERMINAL:
            return True
        return _next_question(client, store, bid, found, submit)


def _cancel(client: redis.Redis, store: CampaignStore, bid: str, child: str) -> None:
    if child:
        store.request_cancel(child)
    client.hset(bisection_key(bid), mapping={"status": "cancelled", "finished_at": time.time()})
    sinks.enqueue_bisection(client, bid)


def _next_question(client: redis.Redis, store: CampaignStore, bid: str, found: BisectionHash, submit: Any) -> bool:
    """Take the finished child's answer, answer what stored runs can, then submit the next
    child campaign (True) or store the result (False)."""
    progress = _Progress.of(found)
    record, took_step = progress.take_child(store)
    digests = _checked_digests(bid, found, record, progress.build)
    reuse = _Reuse(bid, found, digests, _settings(found, record, progress.build), list(found.reused))
    ask = reuse.answer_from_stored(progress.campaign, progress.state, progress.gathered, progress.steps)
    update = progress.update(reuse, digests)
    if ask is None:
        update |= {"status": "done", "child": "", "finished_at": time.time()}
        update["result"] = json.dumps(result_of(found, progress.state, progress.gathered))
        client.hset(bisection_key(bid), mapping=update)
        sinks.enqueue_bisection(client, bid)
        return False
    spec, update["asked"] = progress.next_spec(ask, base_run=took_step and found.on == "figure")
    update["child"] = submit(store, replace(progress.campaign, spec=spec), bid)
    client.hset(bisection_key(bid), mapping=update)
    log.info("bisection %s: %s in campaign %s", bid, update["asked"], update["child"])
    return True


@dataclass
class _Progress:
    """A bisection as read from its hash, while one question's answer is taken in."""

    found: BisectionHash
    campaign: Campaign
    state: Bisection
    gathered: Gathered
    steps: list[dict[str, Any]]
    build: BuildSpec
    series: Series

    @classmethod
    def of(cls, found: BisectionHash) -> _Progress:
        campaign = campaign_from_json(found.campaign)
        return cls(
            found,
            campaign,
            Bisection.from_json(found.state),
            Gathered.from_json(found.gathered),
            [step.model_dump() for step in found.steps],
            build_of(campaign),
            Series.from_json(found.series.model_dump()),
        )

    def take_child(self, store: CampaignStore) -> tuple[dict[str, Any], bool]:
        """The finished child's record (empty when there was none) and whether it answered a
        step between the ends (after which a figure bisection runs the base once)."""
        child = self.found.child
        if not child:
            return {}, False
        if self.found.asked == "base":
            return self._take_base_run(store, child), False
        return self._take_answer(store, child), not self.steps[-1]["ends"]

    def _take_base_run(self, store: CampaignStore, child: str) -> dict[str, Any]:
        record = store.record(child) or {}
        if record:
            base = prefix_build(self.build, self.series, 0)
            self.gathered.add(record, {base.label(): 0}, self.found.figure)
        self.steps.append(_logged(0, 1, False, "base", "a base run between steps", child, record, self.gathered))
        return record

    def _take_answer(self, store: CampaignStore, child: str) -> dict[str, Any]:
        found, gathered = self.found, self.gathered
        prefix, repeats, ends = json.loads(found.asked)
        ask = Ask(int(prefix), int(repeats), bool(ends))
        record = store.record(child) or {}
        labels = {prefix_build(self.build, self.series, k).label(): k for k in (0, ask.prefix)}
        if record:
            gathered.add(record, labels, found.figure)
        policy = _policy(self.campaign, found.figure)
        step, why = judge(ask, self.state.patches, gathered, found.on, found.figure, policy)
        if not record:
            step, why = Step.UNDECIDED, f"campaign {child} ended without a record ({store.status(child)})"
        self.state.answer(ask, step)
        self.steps.append(_logged(ask.prefix, ask.repeats, ask.ends, step.value, why, child, record, gathered))
        return record

    def update(self, reuse: _Reuse, digests: list[str]) -> dict[Any, Any]:
        """The hash's fields this question changed."""
        return {
            "state": json.dumps(self.state.to_json()),
            "gathered": json.dumps(self.gathered.to_json()),
            "steps": json.dumps(self.steps),
            "settings": reuse.settings,
            "reused": json.dumps(reuse.prefixes),
            "digests": json.dumps(digests),
        }

    def next_spec(self, ask: Ask, base_run: bool) -> tuple[CampaignSpec, str]:
        """The next child campaign's spec and the question it asks (its ``asked`` field)."""
        name = self.campaign.spec.name
        if base_run:
            # A base run between two steps: the base's pool follows the host's drift (a
            # verdict does not drift: none there).
            return base_spec(self.campaign.spec, self.build, self.series, f"{name}-base"[:41]), "base"
        spec = child_spec(self.campaign.spec, self.build, self.series, ask, f"{name}-p{ask.prefix}"[:41])
        return spec, json.dumps([ask.prefix, ask.repeats, ask.ends])


def _logged(
    prefix: int,
    repeats: int,
    ends: bool,
    step: str,
    why: str,
    child: str,
    record: dict[str, Any],
    gathered: Gathered,
    reused: list[str] | None = None,
) -> dict[str, Any]:
    wall = record.get("wall_s")
    runs = [run for run in record.get("runs", []) if isinstance(run, dict)]
    run_s = sum(float(run.get("finished_at") or 0) - float(run.get("started_at") or 0) for run in runs)
    return {
        "prefix": prefix,
        "repeats": repeats,
        "ends": ends,
        "step": step,
        "why": why,
        "campaign": child,
        "lab_s": round(float(wall), 1) if isinstance(wall, int | float) else None,  # its builds included
        "runs_s": round(run_s, 1),  # the lab time its runs took, one after the other
        "values": gathered.values.get(prefix, []),
        "verdicts": gathered.verdicts.get(prefix, []),
        "reused": reused or [],
    }


def _settings(found: BisectionHash, record: Mapping[str, Any], build: BuildSpec) -> str:
    """The bisection's own runs' settings (``settings_key``): kept, or read from the base's
    runs of the first child campaign (the ends)."""
    if found.settings or not record:
        return found.settings
    base = prefix_build(build, Series.from_json(found.series.model_dump()), 0).label()
    runs = [run for run in campaign_of(record).runs if run.kernel_label == base]
    return settings_key(runs[0]) if runs else ""


@dataclass
class _Reuse:
    """A step answered from stored runs of its kernel (its build hash) under the same settings,
    from other campaigns than this bisection's, when there are as many as it asks for; each
    prefix takes them once. Never the ends (a comparison of their own, interleaved) nor the
    base (run in this bisection, never taken from another day)."""

    bid: str
    found: BisectionHash
    digests: list[str]
    settings: str
    prefixes: list[int]

    def answer_from_stored(
        self, campaign: Campaign, state: Bisection, gathered: Gathered, steps: list[dict[str, Any]]
    ) -> Ask | None:
        """Answer what can be answered from stored runs; what is left to ask the lab."""
        ask = state.ask()
        while ask is not None and not ask.ends and ask.prefix not in self.prefixes:
            stored = self._stored(ask.prefix)
            if stored is None or len(stored.runs) < ask.repeats:
                break
            for run in stored.runs:
                gathered.add_run(ask.prefix, run, self.found.figure)
            self.prefixes.append(ask.prefix)
            policy = _policy(campaign, self.found.figure)
            step, why = judge(ask, state.patches, gathered, self.found.on, self.found.figure, policy)
            state.answer(ask, step)
            why = f"{why} (from {len(stored.runs)} stored run(s) of the same kernel and settings)"
            steps.append(_logged(ask.prefix, ask.repeats, False, step.value, why, "", {}, gathered, stored.campaigns))
            ask = state.ask()
        return ask

    def _stored(self, prefix: int) -> Reused | None:
        digests = self.digests
        if not self.settings or len(digests) <= prefix:
            return None
        from orchestrator.history.db import ResultsDb  # SQLAlchemy only where it is used

        try:
            with ResultsDb() as db:
                records = db.records_with_artifact(digests[prefix], not_of=self.bid)
            return reusable(records, digests[prefix], self.settings, self.bid)
        except Exception as err:  # the database is down or a record unreadable: the lab runs it
            log.warning("bisection %s: no stored runs of prefix %d taken: %s", self.bid, prefix, err)
            return None


def _checked_digests(bid: str, found: BisectionHash, record: Mapping[str, Any], build: BuildSpec) -> list[str]:
    """The digests, or none once a child's kernel was built under another hash than its
    digest said (another toolchain or source on the build host): nothing is reused then."""
    digests = list(found.digests)
    if not digests or not record:
        return digests
    series = Series.from_json(found.series.model_dump())
    labels = {prefix_build(build, series, k).label(): k for k in range(len(digests))}
    for run in campaign_of(record).runs:
        prefix = labels.get(run.kernel_label or "")
        built = run.kernel_info.artifact
        if prefix is not None and built and built != digests[prefix]:
            log.warning(
                "bisection %s: prefix %d was built as %s, not %s: no stored runs taken",
                bid,
                prefix,
                built,
                digests[prefix],
            )
            return []
    return digests


def _policy(campaign: Campaign, figure: str) -> Policy | None:
    overrides = {name: spec.model_dump(exclude_none=True) for name, spec in campaign.spec.compare.figures.items()}
    return resolve_policies(overrides).get(figure)


def result_of(found: BisectionHash, state: Bisection, gathered: Gathered) -> dict[str, Any]:
    """The answer as stored and shown: outcome, the culprit with its subject, author and
    diff stat (and commit id, in a git range), the figure before and after it, and the sentence."""
    result = state.result()
    assert result is not None
    series = Series.from_json(found.series.model_dump())
    answer: dict[str, Any] = {
        "outcome": result.outcome.value,
        "last_good": result.last_good,
        "first_bad": result.first_bad,
        "describe": result.describe(series.unit),
    }
    if series.commits is not None:
        answer["commits"] = {
            "last_good": series.commits[result.last_good],
            "first_bad": series.commits[result.first_bad],
        }
    if result.outcome is Outcome.CULPRIT:
        index = result.first_bad - 1
        answer["culprit"] = {
            "position": result.first_bad,
            "subject": series.subjects[index],
            "author": series.authors[index],
            "stat": series.stats[index],
        }
        if series.commits is not None:
            answer["culprit"]["commit"] = series.commits[result.first_bad]
        before, after = gathered.values.get(result.last_good, []), gathered.values.get(result.first_bad, [])
        answer["before"], answer["after"] = before, after
        if before and after:
            policy = _policy(campaign_from_json(found.campaign), found.figure)
            answer["change"] = compare_figure(found.figure, before, after, policy).summary()
    return answer
