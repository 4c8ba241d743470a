"""The JUnit XML report, for CI systems (Jenkins, GitLab, GitHub test reporters).

Layout, valid against Jenkins' JUnit schema (xunit-plugin ``junit-10.xsd``):

- ``<testsuites name=CAMPAIGN_ID>`` holds one ``<testsuite>`` per run, named
  ``CAMPAIGN.RUN`` (``pair.r002``): a run is where the kernel, its artifact and the
  attempts are known, and that schema allows ``<properties>`` on a suite only, so the
  kernel's release, source, artifact and patches are the suite's properties.
- One ``<testcase>`` per run x node: ``classname`` ``CAMPAIGN.RUN``, ``name`` ``KERNEL on
  NODE``, ``time`` the node's workload seconds. A fail is a ``<failure>``, invalid or
  infra-error an ``<error>``, each with the evidence lines as text; the case's
  ``<system-out>`` says when the run was redone and why, and lists the node's figures.
- A run refused before any node ran is one ``<testcase>`` named ``KERNEL (no node ran)``
  with an ``<error>``; a skipped run is one with ``<skipped>``.
- A comparison campaign adds one suite ``CAMPAIGN.comparison`` with a ``<testcase>`` per
  comparison, named ``CANDIDATE vs BASELINE (WORKLOAD)``: a regression of the figure that
  decides is a ``<failure>``, "insufficient data" an ``<error>`` (nothing was shown, so
  nothing passed), "no change" and "improvement" pass; the figures' lines are its text
  (or its ``<system-out>`` when it passed). A variant's run is named ``KERNEL [VARIANT] on
  NODE`` and has a ``variant`` property.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from model.result import Campaign, Node, Run, SkippedRun
from orchestrator.reports.tables import ComparisonSummary, comparison_summaries, node_summary
from orchestrator.reports.view import (
    Kernel,
    campaign_of,
    clean,
    figures,
    fmt_figure,
    kernel_by_run,
    kernel_cell,
    number,
    recorded_attempt,
    redone_lines,
    run_id,
    run_label,
    texts,
    variant,
)

# What each verdict becomes; anything else a newer swaplab invents is an error, not a pass.
OUTCOME = {"pass": None, "fail": "failure", "skipped": "skipped", "cancelled": "skipped"}
# What each comparison verdict becomes; again, anything unknown is an error.
COMPARISON_OUTCOME = {"no change": None, "improvement": None, "regression": "failure"}


def render_junit(source: Mapping[str, Any] | Campaign) -> str:
    """The campaign record as JUnit XML (UTF-8, with the XML declaration). Raises
    RecordError when the record does not match result.json's schema."""
    record = campaign_of(source)
    campaign = clean(record.campaign) or "campaign"
    by_run = kernel_by_run(record)
    suites = [_run_suite(record, campaign, run, by_run.get(run_id(run))) for run in record.runs]
    suites += [_skipped_suite(campaign, entry) for entry in record.skipped_runs]
    if record.comparisons:
        suites.append(_comparison_suite(record, campaign))
    root = ET.Element("testsuites", name=clean(record.campaign_id) or campaign)
    root.extend(suites)
    _count_all(root)
    wall = number(record.wall_s)
    if wall is not None:
        root.set("time", f"{wall:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _run_suite(record: Campaign, campaign: str, run: Run, kernel: Kernel | None) -> ET.Element:
    rid = run_id(run)
    suite = _suite(f"{campaign}.{rid}", run.started_at)
    suite.append(_properties(record, run, kernel))
    name = kernel_cell(kernel.name if kernel else "?", run)
    notes = redone_lines(run)
    cases = [_node_case(f"{campaign}.{rid}", name, node, notes) for node in run.nodes]
    if not cases:  # refused before any node ran: still one case, so CI counts it
        reasons = texts(run.reasons)
        case = ET.Element("testcase", name=f"{name} (no node ran)", classname=f"{campaign}.{rid}", time="0.000")
        _outcome(case, clean(run.verdict) or "invalid", notes + reasons)
        cases = [case]
    suite.extend(cases)
    _count(suite)
    return suite


def _skipped_suite(campaign: str, entry: SkippedRun) -> ET.Element:
    rid = run_id(entry)
    suite = _suite(f"{campaign}.{rid}", None)
    case = ET.SubElement(suite, "testcase", name=run_label(entry), classname=f"{campaign}.{rid}", time="0.000")
    ET.SubElement(case, "skipped", message=clean(entry.reason) or "not started")
    _count(suite)
    return suite


def _suite(name: str, started_at: float | None) -> ET.Element:
    suite = ET.Element("testsuite", name=name)
    start = number(started_at)
    if start is not None:  # JUnit's timestamp: ISO 8601 without a zone, taken as UTC
        suite.set("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)))
    return suite


def _properties(record: Campaign, run: Run, kernel: Kernel | None) -> ET.Element:
    """The run's kernel (release, version, source, artifact, each patch) and workload."""
    known = (
        []
        if kernel is None
        else [
            ("kernel.release", kernel.release),
            ("kernel.version", kernel.version),
            ("kernel.source", kernel.source),
            ("kernel.artifact", kernel.artifact or ""),
            *((f"kernel.patch.{n}", subject) for n, subject in enumerate(kernel.patches, 1)),
        ]
    )
    pairs = [
        ("campaign_id", clean(record.campaign_id)),
        ("run", run_id(run)),
        ("attempt", clean(recorded_attempt(run))),
        *known,
        ("variant", variant(run)),
        ("workload", clean(run.workload)),
    ]
    props = ET.Element("properties")
    for name, value in pairs:
        if value and value != "-":
            ET.SubElement(props, "property", name=name, value=value)
    return props


def _node_case(classname: str, kernel: str, node: Node, notes: list[str]) -> ET.Element:
    """One run x node: its outcome with the evidence; redone notes and figures as output."""
    summary = node_summary(node)
    case = ET.Element("testcase", name=f"{kernel} on {summary.node}", classname=classname)
    case.set("time", f"{_workload_seconds(node):.3f}")
    _outcome(case, summary.verdict, list(summary.evidence))
    out = notes + _figure_lines(node)
    if out:
        ET.SubElement(case, "system-out").text = "\n".join(out) + "\n"
    return case


def _comparison_suite(record: Campaign, campaign: str) -> ET.Element:
    """One case per comparison: failed by a regression, in error without enough data."""
    classname = f"{campaign}.comparison"
    suite = _suite(classname, record.finished_at)
    for summary in comparison_summaries(record):
        case = ET.SubElement(suite, "testcase", name=summary.title, classname=classname, time="0.000")
        lines = _comparison_lines(summary)
        _outcome(case, summary.verdict, lines, COMPARISON_OUTCOME)
        if COMPARISON_OUTCOME.get(summary.verdict, "error") is None:
            ET.SubElement(case, "system-out").text = "\n".join(lines) + "\n"
    _count(suite)
    return suite


def _comparison_lines(summary: ComparisonSummary) -> list[str]:
    """The figure that decided the verdict (the failure's message), then each figure reported only."""
    decided = summary.decided.summary if summary.decided else f"{summary.primary}: not in the record"
    reported = [f"reported only: {change.summary}" for change in summary.reported]
    return [f"decided by {decided}", *reported]


def _outcome(case: ET.Element, verdict: str, evidence: list[str], outcomes: Mapping[str, str | None] = OUTCOME) -> None:
    """The case's failure, error or skipped element, with the evidence as its text."""
    tag = outcomes.get(verdict, "error")
    if tag is None:
        return
    message = evidence[0] if evidence else verdict
    element = ET.SubElement(case, tag, type=verdict, message=message[:500])
    element.text = "\n".join(evidence) + "\n" if evidence else None


def _figure_lines(node: Node) -> list[str]:
    """``swap_out_mibps = 12.9 MiB/s (higher is better)``, one line per figure of the node."""
    return [
        f"{name} = {fmt_figure(figure.value)} {clean(figure.unit)} ({clean(figure.better) or '?'} is better)"
        for name, figure in figures(node).items()
    ]


def _workload_seconds(node: Node) -> float:
    """How long the node's workload ran (its phase time, else the tool's own count)."""
    seconds = number(node.phases_s.get("workload"))
    if seconds is None:
        seconds = number(node.workload.elapsed_s)
    return seconds or 0.0


def _count(suite: ET.Element) -> None:
    """A suite's tests, failures, errors, skipped and time, from its cases."""
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    for attribute, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
        suite.set(attribute, str(sum(1 for case in cases if case.find(tag) is not None)))
    suite.set("time", f"{sum(float(case.get('time', '0')) for case in cases):.3f}")


def _count_all(root: ET.Element) -> None:
    """The document's totals (the schema has no skipped count on <testsuites>)."""
    suites = root.findall("testsuite")
    for attribute in ("tests", "failures", "errors"):
        root.set(attribute, str(sum(int(suite.get(attribute, "0")) for suite in suites)))
