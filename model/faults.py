"""Faults a campaign injects while its workload swaps, and what a run records of them.

A fault disturbs the NFS path only — the server, or a node's link on the lab network —
never the management path the worker uses for SSH and samples, so a loss is never
mistaken for a hang. Each starts a stated time after the workload began, or once the node
has swapped out a stated amount (under TCG a fixed time sometimes misses swap-out), lasts
``for_s`` and is undone. During it and for ``grace_s`` after it, the messages it causes
(``nfs: server … not responding``, hung tasks unless the campaign says otherwise) are
expected, not kernel failures.

Who injects: the run's first node session injects the server's faults; each node session
injects the faults of its own link (``node-N`` names the run's N-th node, ``all-nodes``
every node's).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.limits import HOG_MIB_MAX, HOG_MIB_MIN

FaultKind = Literal["server-stall", "server-restart", "loss", "bandwidth", "latency", "link-down", "memory-squeeze"]
SERVER_KINDS = frozenset({"server-stall", "server-restart"})
LINK_KINDS = frozenset({"loss", "bandwidth", "latency", "link-down"})
# Faults on the node itself (any lab): a second burst of memory pressure.
NODE_KINDS = frozenset({"memory-squeeze"})
SERVER_TARGET = "server"
ALL_NODES = "all-nodes"
_NODE_TARGET = re.compile(r"node-([1-9][0-9]{0,2})")
FAULTS_MAX = 20
DEFAULT_GRACE_S = 30.0
# The swap-out rate before a fault is measured over this many seconds before its start.
BEFORE_WINDOW_S = 10.0


class FaultSpec(BaseModel):
    """One fault of a campaign's ``faults:`` list."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: FaultKind
    # When: seconds after the workload began, or once the node swapped out this many MiB.
    at_s: float | None = Field(default=None, ge=0, le=24 * 3600)
    after_swapped_mib: int | None = Field(default=None, ge=1, le=HOG_MIB_MAX)
    for_s: float = Field(gt=0, le=3600)
    target: str = Field(default=SERVER_TARGET, pattern=rf"^({SERVER_TARGET}|{ALL_NODES}|{_NODE_TARGET.pattern})$")
    # loss: the share of packets dropped, in percent.
    percent: float | None = Field(default=None, gt=0, le=100)
    # bandwidth: the link's rate while the fault lasts, in Mbit/s (shaped, not dropped).
    mbit: float | None = Field(default=None, ge=0.1, le=10_000)
    # latency: what the server sends the node waits this long (its round trip grows by it).
    ms: float | None = Field(default=None, ge=0.1, le=10_000)
    # link-down: flapping — down this long, up as long, again and again while it lasts.
    flap_s: float | None = Field(default=None, ge=0.1, le=600)
    # memory-squeeze: MiB a second hog writes and verifies beside the workload (it ends
    # when done, or at the fault's end).
    mib: int | None = Field(default=None, ge=HOG_MIB_MIN, le=HOG_MIB_MAX)
    # Link faults: "out" is what the node sends (its swap-out), "in" what it receives
    # (its swap-in), "both" either.
    direction: Literal["out", "in", "both"] = "both"
    # After the fault's end, how long its messages are still expected.
    grace_s: float = Field(default=DEFAULT_GRACE_S, ge=0, le=3600)
    # Hung-task messages in the fault's window: expected (the stall blocks tasks), or a
    # kernel failure as anywhere else.
    hung_task: Literal["expected", "fail"] = "expected"

    @model_validator(mode="after")
    def _consistent(self) -> FaultSpec:
        if (self.at_s is None) == (self.after_swapped_mib is None):
            raise ValueError("give exactly one of 'at_s' (seconds after the workload began) or 'after_swapped_mib'")
        if self.kind in SERVER_KINDS and self.target != SERVER_TARGET:
            raise ValueError(f"{self.kind} targets the run's NFS server: target must be {SERVER_TARGET!r}")
        if self.kind in LINK_KINDS | NODE_KINDS and self.target == SERVER_TARGET:
            where = "a node's link" if self.kind in LINK_KINDS else "a node"
            raise ValueError(f"{self.kind} disturbs {where}: target 'node-N' (the run's N-th node) or {ALL_NODES!r}")
        if (self.kind == "loss") != (self.percent is not None):
            raise ValueError("'percent' is the loss's share of packets: required for loss, and only for it")
        if (self.kind == "bandwidth") != (self.mbit is not None):
            raise ValueError("'mbit' is the link's rate in Mbit/s: required for bandwidth, and only for it")
        if (self.kind == "latency") != (self.ms is not None):
            raise ValueError("'ms' is the delay added to the node's round trip: required for latency, and only for it")
        if self.kind == "latency" and self.direction != "both":
            raise ValueError("latency delays what the server sends the node (its round trip): no 'direction'")
        if self.flap_s is not None and self.kind != "link-down":
            raise ValueError("'flap_s' makes a link-down flap: for link-down only")
        if (self.kind == "memory-squeeze") != (self.mib is not None):
            raise ValueError("'mib' is what the squeeze allocates: required for memory-squeeze, and only for it")
        if self.kind not in LINK_KINDS and self.direction != "both":
            raise ValueError("'direction' is for link faults only")
        return self

    @property
    def node_index(self) -> int | None:
        """The run's node (0-based) a ``node-N`` target names; None for the others."""
        match = _NODE_TARGET.fullmatch(self.target)
        return int(match.group(1)) - 1 if match else None

    def injected_by(self, index: int) -> bool:
        """Whether the run's node session ``index`` (0-based) injects this fault."""
        if self.target == SERVER_TARGET:
            return index == 0
        return self.target == ALL_NODES or self.node_index == index

    def describe(self) -> str:
        """The fault as people read it: "server-stall of the server at +10 s for 5 s"."""
        when = f"at +{self.at_s:g} s" if self.at_s is not None else f"after {self.after_swapped_mib} MiB swapped out"
        what: str = self.kind
        if self.percent is not None:
            what = f"loss {self.percent:g} % ({self.direction})"
        if self.mbit is not None:
            what = f"bandwidth {self.mbit:g} Mbit/s ({self.direction})"
        if self.mib is not None:
            what = f"memory-squeeze of {self.mib} MiB"
        if self.ms is not None:
            what = f"latency +{self.ms:g} ms"
        if self.kind == "link-down":
            what += f" ({self.direction})" if self.direction != "both" else ""
            what += f" flapping every {self.flap_s:g} s" if self.flap_s is not None else ""
        return f"{what} on {self.target} {when} for {self.for_s:g} s"


def check_fault_order(faults: list[FaultSpec]) -> list[tuple[int, str]]:
    """Faults given by time must not overlap (their windows are judged one by one): the
    problems as (index, message)."""
    problems = []
    previous: tuple[int, float] | None = None
    for index, fault in enumerate(faults):
        if fault.at_s is None:
            continue
        if previous is not None and fault.at_s < previous[1]:
            problems.append(
                (index, f"starts at +{fault.at_s:g} s, before faults[{previous[0]}] ends (+{previous[1]:g} s)")
            )
        previous = (index, fault.at_s + fault.for_s)
    return problems


class FaultRecord(BaseModel):
    """What happened to one fault in one node session: when it really began and ended
    (host epoch seconds), whether swap-out was in progress when it began, how long swap-out
    took to come back, and why it did not happen if it did not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0, lt=FAULTS_MAX)
    kind: str = Field(max_length=40)
    target: str = Field(max_length=40)
    node: str = Field(max_length=40)  # the node session that injected it
    # The node session that measured it when another one injected it (a server's fault, on
    # the run's other nodes): its own swap-out before and its own recovery. Empty: the
    # injecting session measured it itself.
    measured_on: str = Field(default="", max_length=40)
    planned: str = Field(max_length=200)
    started_at: float | None = None
    ended_at: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    hung_task: Literal["expected", "fail"] = "expected"
    # Swap-out (MiB/s) over BEFORE_WINDOW_S before the start; in progress means above zero.
    swap_out_mibps_before: float | None = None
    # From the fault's end to swap-out back at half its rate before (None: it never was).
    recovery_s: float | None = None
    recovery_note: str = Field(default="", max_length=300)
    # Why the fault did not start (the workload ended first), empty when it did.
    missed: str = Field(default="", max_length=300)

    @property
    def hit(self) -> bool:
        """The fault began while the node was swapping out."""
        return self.started_at is not None and (self.swap_out_mibps_before or 0.0) > 0.0

    def window(self) -> tuple[float, float] | None:
        """When its messages are expected: from its start to its end plus the grace."""
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else self.started_at
        return self.started_at, end + self.grace_s

    def affects(self, node: str) -> bool:
        """The server's faults affect every node of the run; a link's only its node."""
        return self.target == SERVER_TARGET or self.node == node

    @property
    def measured_by(self) -> str:
        """The node session whose samples its figures come from."""
        return self.measured_on or self.node


def faults_of(node: str, records: list[FaultRecord]) -> list[FaultRecord]:
    """The run's faults that disturbed ``node``, one record each: the one measured on
    ``node`` itself where there is one (and it learnt when the fault began: a Redis outage
    at that moment leaves it untold), the injecting session's otherwise."""
    chosen: dict[int, FaultRecord] = {}

    def rank(record: FaultRecord) -> tuple[bool, bool]:
        return record.started_at is not None, record.measured_by == node

    for record in records:
        if not record.affects(node) or (record.measured_on and record.measured_on != node):
            continue
        known = chosen.get(record.index)
        if known is None or rank(record) > rank(known):
            chosen[record.index] = record
    return [chosen[index] for index in sorted(chosen)]


class FaultTimes(BaseModel):
    """When one of the run's faults began and ended, as its injecting session tells the
    run's other sessions (through the run's barrier, in Redis: checked on the way in)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    node: str = Field(max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    started_at: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    ended_at: float | None = Field(default=None, ge=0, allow_inf_nan=False)
