"""A scheduler Dispatch for tests: records what the scheduler would send, sends nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.runspec import BuildMessage, NodeRunSpec, RunSetupSpec


@dataclass
class RecordingDispatch:
    builds: list[BuildMessage] = field(default_factory=list)
    prepared: list[str] = field(default_factory=list)
    setups: list[RunSetupSpec] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)

    def build(self, cid: str, rid: str, attempt: int, message: BuildMessage) -> None:
        self.builds.append(message)

    def prepare(self, cid: str, rid: str, attempt: int, spec: RunSetupSpec) -> None:
        self.prepared.append(rid)
        self.setups.append(spec)

    def run(self, cid: str, rid: str, attempt: int, specs: list[NodeRunSpec]) -> None:
        self.started.append(rid)

    def evaluate(self, cid: str, rid: str, attempt: int) -> None:
        self.evaluations.append(rid)
