"""Blame under faults: which console messages a run's faults explain, and what became of
each fault (recovered, hit nothing, never started).

During a fault and for its grace after it, the messages the fault causes are expected:
``nfs: server … not responding`` and ``… OK``, and hung tasks unless the campaign said
``hung_task: fail`` — and only a hung task the fault can explain: "blocked for more than N
seconds" (N is the node's ``kernel.hung_task_timeout_secs``) with N no longer than the
fault lasted plus its grace. The same messages outside every window still fail the kernel. A
message is placed in time by when the worker read it (``host_time_s``); one without that
time (parsed from a file afterwards) is never excused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from model.console import EventKind
from model.faults import FaultRecord
from orchestrator.criteria import CriterionResult, Outcome

# Messages a disturbed NFS path causes whatever the kernel does right.
_ALWAYS_EXPECTED = frozenset({EventKind.NFS_NOT_RESPONDING.value, EventKind.NFS_OK.value})
# The built-in criterion counting a kind in Prometheus, excused like the console check.
_CONSOLE_CRITERIA = {"no_hung_task": EventKind.HUNG_TASK.value}
_BLOCKED_FOR = re.compile(r"blocked for more than (\d+) seconds")


def excused_by(event: dict[str, Any], faults: Sequence[FaultRecord]) -> FaultRecord | None:
    """The fault whose window explains ``event`` (a console event as a result keeps it), or None."""
    kind, seen = event.get("kind"), event.get("host_time_s")
    if not isinstance(seen, int | float):
        return None
    for fault in faults:
        window = fault.window()
        if window is None or not window[0] <= seen <= window[1]:
            continue
        if kind == EventKind.HUNG_TASK.value and fault.hung_task != "expected":
            continue
        if kind in _ALWAYS_EXPECTED or (kind == EventKind.HUNG_TASK.value and _fault_explains_hang(event, window)):
            return fault
    return None


def _fault_explains_hang(event: dict[str, Any], window: tuple[float, float]) -> bool:
    """A task blocked longer than the fault and its grace lasted was not blocked by it alone."""
    blocked = _BLOCKED_FOR.search(str(event.get("text", "")))
    return blocked is None or int(blocked.group(1)) <= window[1] - window[0]


def unexcused(events: Sequence[dict[str, Any]], faults: Sequence[FaultRecord]) -> list[dict[str, Any]]:
    """The events no fault explains."""
    return [event for event in events if excused_by(event, faults) is None]


def excuse_criteria(
    criteria: list[CriterionResult],
    events: Sequence[dict[str, Any]],
    counts: dict[str, int],
    faults: Sequence[FaultRecord],
) -> list[CriterionResult]:
    """Built-in console criteria that failed only on messages the faults explain, passed.

    Prometheus counts every message; the node's own events say when each was read. Only
    when every counted message was kept (none dropped) and each lies in a window is the
    failure excused — otherwise it stands.
    """
    if not faults:
        return criteria
    judged = []
    for criterion in criteria:
        kind = _CONSOLE_CRITERIA.get(criterion.name)
        if kind is None or not criterion.builtin or criterion.outcome is not Outcome.FAIL:
            judged.append(criterion)
            continue
        of_kind = [event for event in events if event.get("kind") == kind]
        if len(of_kind) == counts.get(kind, 0) and of_kind and not unexcused(of_kind, faults):
            detail = f"{len(of_kind)} message(s), each within a fault's window: expected"
            criterion = replace(criterion, outcome=Outcome.PASS, detail=detail)
        judged.append(criterion)
    return judged


def fault_outcome(fault: FaultRecord, node: str) -> tuple[Outcome, str]:
    """What became of one fault, as a check of ``node``: invalid when it did not start or
    hit nothing (the run proved nothing about it), pass with its recovery otherwise."""
    if fault.missed:
        return Outcome.INVALID, f"{fault.planned}: did not start ({fault.missed})"
    if not fault.hit and fault.measured_on:
        # The injecting node's own record says whether the run's fault hit anything.
        return Outcome.PASS, f"{fault.planned}: swap-out was not under way on this node when it began"
    if not fault.hit:
        return Outcome.INVALID, (
            f"{fault.planned}: the fault hit nothing (swap-out was not in progress when it began on {fault.node})"
        )
    where = "" if fault.measured_by == node else f" (measured on {fault.measured_by})"
    if fault.recovery_s is not None:
        return Outcome.PASS, f"{fault.planned}: recovered {fault.recovery_s:.1f} s after its end{where}"
    return Outcome.PASS, f"{fault.planned}: survived; {fault.recovery_note or 'recovery not measured'}{where}"
