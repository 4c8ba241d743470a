"""``swaplab bisect FILE``: which patch of a series (or commit of a git range) made swap
over NFS worse.

FILE is a campaign whose one kernel is a ``build:`` with a patch series, or a git source
with a ``good`` commit (its ``ref`` the bad one: the range must be linear); its workloads,
node settings, repeats and ``compare:`` say what "worse" means (the primary figure and its
tolerance), or ``--on verdict``: the whole series fails where the base passes. The control
plane runs the bisection (``orchestrator.bisector``); this command submits it and follows
it, or shows (``--status``) or cancels (``--cancel``) one. Exit 3 when a culprit was found,
0 when there is nothing to bisect, 4 when it could not decide, 2 on bad input.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from model.campaign import Campaign
from model.display import printable
from model.exitcode import ExitCode
from model.kernel import BuildSpec, GitSource
from model.yamlpos import SpecError, load_located
from orchestrator import bisector, sinks
from orchestrator.bisect_steps import prefix_build
from orchestrator.cli.campaign_cmds import SINK_WAIT_S
from orchestrator.cli.common import CAMPAIGN_FILE, load_lab_or_exit, load_or_exit
from orchestrator.cli.distributed_cmds import connect
from orchestrator.cli.history_cmds import query_db
from orchestrator.services import LocalServices, ServiceError
from workers.kbuild import git_range, patches
from workers.kbuild.build import inputs_digest

POLL_S = 2.0
EXIT = {"culprit": ExitCode.CRITERIA_FAIL, "nothing": ExitCode.PASS, "range": ExitCode.INVALID}


@click.command()
@click.argument("campaign_file", type=CAMPAIGN_FILE, required=False)
@click.option(
    "--on",
    "on",
    type=click.Choice(["figure", "verdict"]),
    default="figure",
    show_default=True,
    help="What regressed: the campaign's primary figure, or the verdict (the whole fails, the base passes).",
)
@click.option(
    "--max-repeats",
    type=click.IntRange(1, 50),
    help="Cap on repeats for an undecided step (default: twice the campaign's).",
)
@click.option("--validate", is_flag=True, help="Check FILE as a bisection, run nothing.")
@click.option("--status", "status_id", metavar="ID", help="Show bisection ID: its steps and its answer.")
@click.option("--cancel", "cancel_id", metavar="ID", help="Cancel bisection ID (and its running campaign).")
@click.option("--json", "as_json", is_flag=True, help="Print the bisection as JSON on stdout.")
def bisect(
    campaign_file: Path | None,
    on: str,
    max_repeats: int | None,
    validate: bool,
    status_id: str | None,
    cancel_id: str | None,
    as_json: bool,
) -> None:
    """Find the patch of CAMPAIGN_FILE's series (or the commit of its git range good..ref) that made
    it worse (exit 3 with it)."""
    if status_id or cancel_id:
        _status_or_cancel(status_id, cancel_id, as_json)
        return
    if campaign_file is None:
        raise click.UsageError("a campaign FILE, or --status ID / --cancel ID")
    campaign = load_or_exit(campaign_file, as_json)
    series = _series_or_exit(campaign_file, campaign, as_json)
    if validate:
        _say_valid(campaign_file, campaign, series, as_json)
        return
    lab = load_lab_or_exit(Path(campaign.lab.inventory), as_json)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.environ.setdefault("SWAPLAB_RESULTS", str(Path("results").resolve()))
    try:
        with LocalServices(lab, len(lab.nodes) + 1, Path(os.environ["SWAPLAB_RESULTS"]) / "services", _note):
            shown = _submit_and_follow(campaign, series, on, max_repeats or 2 * campaign.spec.repeats)
            _await_stored(str(shown.get("id")))
    except ServiceError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    _finish(shown, as_json)


def _series_or_exit(path: Path, campaign: Campaign, as_json: bool) -> bisector.Series:
    """The series of the campaign's one ``build:`` kernel, each patch described, or its git
    range, each commit described; or exit 2 naming the file, line and field."""
    doc = load_located(path)
    kernels = campaign.spec.kernels
    build = kernels[0].build if len(kernels) == 1 else None
    problem = None
    if build is None or (build.patches is None and _good(build) is None):
        problem = (
            "a bisection needs exactly one kernel: a `build:` with a patch series (`patches:`) "
            "or a git source with a `good:` commit"
        )
    elif build.patches is not None and _good(build) is not None:
        problem = "a bisection runs over a patch series or a git range, not both: drop `patches:` or `good:`"
    elif build.patches_upto is not None:
        problem = "a bisection takes the whole series: no `patches_upto`"
    elif campaign.spec.baseline is not None or campaign.spec.schedule is not None:
        problem = "a bisection compares the series with its own base: no `baseline:` or `schedule:`"
    if problem is not None or build is None:
        _refuse(SpecError([doc.issue(("kernels",), problem or "no series")]), as_json)
    try:
        return _patch_series(build) if build.patches is not None else _git_range(build)
    except git_range.RangeError as err:
        _refuse(SpecError([doc.issue(("kernels", 0, "build", "source", err.field), str(err))]), as_json)
    except patches.PatchError as err:
        _refuse(SpecError([doc.issue(("kernels", 0, "build", "patches"), str(err))]), as_json)


def _good(build: BuildSpec) -> str | None:
    return build.source.good if isinstance(build.source, GitSource) else None


def _patch_series(build: BuildSpec) -> bisector.Series:
    assert build.patches is not None
    messages = patches.messages(patches.read_series(build.patches), str(build.patches))
    if not messages:
        raise patches.PatchError(f"patch series {build.patches} holds no patch")
    described = [patches.describe(message) for message in messages]
    return bisector.Series(*(list(column) for column in zip(*described, strict=True)))


def _git_range(build: BuildSpec) -> bisector.Series:
    """The commits of ``good..ref``, read by this process (the submitter's) and kept by id."""
    source = build.source
    assert isinstance(source, GitSource) and source.good is not None
    found = git_range.read_range(source.git, source.good, source.ref)
    subjects = [entry.subject for entry in found.commits]
    authors = [entry.author for entry in found.commits]
    stats = [entry.stat for entry in found.commits]
    return bisector.Series(subjects, authors, stats, commits=found.prefixes)


def _refuse(err: SpecError, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"valid": False, "issues": [issue.__dict__ for issue in err.issues]}, indent=2))
    else:
        for issue in err.issues:
            click.echo(f"error: {issue}", err=True)
    sys.exit(ExitCode.BAD_INPUT_OR_INFRA)


def _say_valid(path: Path, campaign: Campaign, series: bisector.Series, as_json: bool) -> None:
    if as_json:
        shown: dict[str, Any] = {"valid": True, "campaign": campaign.spec.name, "patches": series.subjects}
        if series.commits is not None:
            shown["commits"] = series.commits  # the good one first
        click.echo(json.dumps(shown, indent=2))
        return
    click.echo(
        f"{path}: valid — bisection of {_count(series)} on lab {campaign.lab.name!r}, "
        f"figure {campaign.spec.compare.primary}, {campaign.spec.repeats} repeat(s) a step"
    )
    if series.commits is not None:
        click.echo(f"  0. {series.commits[0][:12]} (good)")
    for index, subject in enumerate(series.subjects, 1):
        commit = f"{series.commits[index][:12]} " if series.commits is not None else ""
        click.echo(printable(f"  {index}. {commit}{subject}"))


def _count(series: bisector.Series) -> str:
    """``4 patch(es)``, or ``4 commit(s) after <good>`` for a git range."""
    if series.commits is None:
        return f"{len(series.subjects)} patch(es)"
    return f"{len(series.subjects)} commit(s) after {series.commits[0][:12]}"


def _digests(campaign: Campaign, series: bisector.Series) -> list[str] | None:
    """Each prefix's build hash, computed here as ``swaplab build`` would (the source tree,
    the patches, the config, the toolchain), so a step can take stored runs of its kernel;
    None, said, when they cannot be (the lab then runs every step)."""
    build = bisector.build_of(campaign)
    try:
        return [
            inputs_digest(prefix_build(build, series, k), lambda _text: None) for k in range(len(series.subjects) + 1)
        ]
    except Exception as err:  # reuse is a saving, never a reason not to bisect
        _note(f"every step runs in the lab: its kernel's hash could not be computed here ({err})")
        return None


def _submit_and_follow(campaign: Campaign, series: bisector.Series, on: str, max_repeats: int) -> dict[str, Any]:
    from orchestrator.tasks import kick_bisection  # imported late: the Celery app reads its config here

    client = connect().redis
    digests = _digests(campaign, series)
    bid = bisector.create(client, campaign, series, "verdict" if on == "verdict" else "figure", max_repeats, digests)
    kick_bisection(bid)
    click.echo(f"bisection {bid}: {_count(series)} on lab {campaign.lab.name}", err=True)
    seen, child = 0, ""
    try:
        while True:
            shown = bisector.read(client, bid) or {}
            for step in shown.get("steps", [])[seen:]:
                click.echo(printable(f"  {_step_line(step)}"), err=True)
            seen = len(shown.get("steps", []))
            if shown.get("child") and shown["child"] != child:
                child = shown["child"]
                click.echo(
                    printable(f"  ... {_asked(shown.get('asked', ''))}: campaign {child} (swaplab watch {child})"),
                    err=True,
                )
            if shown.get("status") != bisector.ACTIVE:
                return shown
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        bisector.request_cancel(client, bid)
        click.echo(f"interrupted: bisection {bid} cancelled", err=True)
        sys.exit(ExitCode.INTERRUPTED)


def _asked(asked: str) -> str:
    if asked == "base":
        return "a base run between steps"
    prefix, repeats, ends = json.loads(asked) if asked else (0, 0, False)
    return f"the ends (base and whole series) x{repeats}" if ends else f"prefix {prefix} x{repeats}"


def _step_line(step: dict[str, Any]) -> str:
    what = "the ends (base and whole series)" if step["ends"] else f"prefix {step['prefix']}"
    lab = f", {step['lab_s']:.0f} s" if step.get("lab_s") is not None else ""
    if step.get("runs_s") is not None and step["campaign"]:
        lab += f" of which runs {step['runs_s']:.0f} s"
    values = ", ".join(f"{value:.2f}" for value in step.get("values", []))
    where = step["campaign"] or f"no lab time: stored runs of {', '.join(step.get('reused', []))}"
    return f"{what} x{step['repeats']}: {step['step']} — {step['why']} [{values}] ({where}{lab})"


def _await_stored(bid: str, wait_s: float = SINK_WAIT_S) -> None:
    """Wait (up to ``wait_s``) for the control worker to store the ended bisection in the
    results database (its outbox, as a campaign's record); say whether it did."""
    client = connect().redis
    deadline = time.monotonic() + wait_s
    while (waiting := (sinks.BISECTIONS, bid) in sinks.waiting(client)) and time.monotonic() < deadline:
        time.sleep(0.5)
    refused = sinks.set_aside(client).get((sinks.BISECTIONS, bid))
    if refused:
        _note(f"bisection not stored in the results database: {refused}")
    elif waiting:
        _note("results database not reached yet: the bisection waits in Redis and is stored when it is back")
    else:
        _note(f"stored in the results database (swaplab history --bisection {bid}; swaplab history --bisections)")


def _status_or_cancel(status_id: str | None, cancel_id: str | None, as_json: bool) -> None:
    client = connect().redis
    bid = cancel_id or status_id or ""
    shown = bisector.read(client, bid)
    if shown is None and status_id:  # Redis forgot it (or never had it): the results database may not
        shown = query_db(lambda db: db.bisection(bid))
    if shown is None:
        click.echo(f"error: no bisection {bid!r}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    if cancel_id:
        bisector.request_cancel(client, bid)
        click.echo(f"bisection {bid}: cancel requested", err=True)
        return
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    click.echo(f"bisection {bid}: {shown['status']}")
    for step in shown["steps"]:
        click.echo(printable(f"  {_step_line(step)}"))
    if shown["result"]:
        click.echo(printable(_answer_lines(shown)))


def _answer_lines(shown: dict[str, Any]) -> str:
    result = shown["result"]
    lines = [result["describe"]]
    culprit = result.get("culprit")
    if culprit:
        what = (
            f"commit {culprit['position']} {culprit['commit'][:12]}"
            if "commit" in culprit
            else f"patch {culprit['position']}"
        )
        lines.append(f"  {what}: {culprit['subject']} ({culprit['author']})")
        lines += [f"    {line}" for line in culprit["stat"].splitlines()]
        if result.get("change"):
            lines.append(f"  before it -> with it: {result['change']}")
    return "\n".join(lines)


def _finish(shown: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(shown, indent=2))
    if shown.get("status") != "done":
        click.echo(f"bisection {shown.get('id')}: {shown.get('status')} {shown.get('error', '')}".rstrip(), err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA if shown.get("status") == "failed" else ExitCode.INTERRUPTED)
    if not as_json:
        click.echo(_answer_lines(shown))
    sys.exit(EXIT.get(shown["result"]["outcome"], ExitCode.INVALID))


def _note(text: str) -> None:
    click.echo(f"swaplab: {text}", err=True)
