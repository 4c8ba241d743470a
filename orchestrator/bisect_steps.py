"""The campaigns a bisection runs and what it reads back from them.

Every question the bisection asks (``model.bisection.Ask``: a prefix of the series, with
a number of repeats) becomes one child campaign: the bisection's own campaign with its
kernels replaced — by the base (the series' first 0 patches) and the whole series for the
ends, by the asked prefix for a step — and one base run between two steps, so the base's
pool follows the host's drift without the base being repeated at every step. What comes back
is read through result.json's schema: per prefix, the primary figure of each passing run
(the median of its nodes, as a comparison takes it) and each run's verdict.

A step is judged on the figure by ``orchestrator.bisect_judge`` with the base pooled over
every step so far; on the verdict (``--on verdict``) a prefix is bad when one of its runs
failed, good when all passed, skipped when it could not be built (its runs invalid), and
undecided when the lab could not tell (infra-errors).

A bisection over a git range (``good..ref``) has the same prefixes: prefix k is the
range's k-th commit (0: ``good``, n: ``ref``), built by its commit id, which the
bisection keeps (``Series.commits``) so a branch that moves meanwhile changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from model.bisection import Ask, Step
from model.campaign import BaselineSide, CampaignSpec
from model.kernel import BuildSpec, GitSource, KernelSource
from model.result import Run, campaign_of
from orchestrator.baselines import cell_of, run_value
from orchestrator.bisect_judge import judge_ends, judge_step
from orchestrator.stats import Policy

On = Literal["figure", "verdict"]


@dataclass(frozen=True)
class Series:
    """What a bisection shows of each patch of its series, or each commit of its range
    (1-based: patch k is prefix k's last), and for a range the commit of every prefix."""

    subjects: list[str]
    authors: list[str]
    stats: list[str]  # git's diff stat of each patch
    # A git range's commit per prefix: good first, then the range's, oldest first (n + 1).
    commits: list[str] | None = None

    def __post_init__(self) -> None:
        sizes = {len(self.subjects), len(self.authors), len(self.stats)}
        if self.commits is not None:
            sizes.add(len(self.commits) - 1)
        if len(sizes) != 1:
            raise ValueError(f"a series' subjects, authors, stats and commits do not agree in number ({self})")

    @property
    def unit(self) -> str:
        """What a prefix adds: a patch or a commit."""
        return "patch" if self.commits is None else "commit"

    def to_json(self) -> dict[str, Any]:
        kept: dict[str, Any] = {"subjects": self.subjects, "authors": self.authors, "stats": self.stats}
        return kept | ({"commits": self.commits} if self.commits is not None else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Series:
        subjects, authors, stats = ([str(item) for item in data[key]] for key in ("subjects", "authors", "stats"))
        commits = data.get("commits")
        return cls(subjects, authors, stats, None if commits is None else [str(commit) for commit in commits])


def prefix_build(build: BuildSpec, series: Series, prefix: int) -> BuildSpec:
    """What prefix ``prefix`` builds: the series' first patches, or the range's commit (by
    its id: a label of its own, and what the build resolves whatever the branch does since)."""
    if series.commits is None:
        return build.prefix(prefix)
    assert isinstance(build.source, GitSource)
    source = GitSource(git=build.source.git, ref=series.commits[prefix])
    return build.model_copy(update={"source": source})


def child_spec(spec: CampaignSpec, build: BuildSpec, series: Series, ask: Ask, name: str) -> CampaignSpec:
    """The campaign of one question, ``ask.repeats`` runs a kernel: for the ends the base
    and the whole series (a comparison: interleaved, A B B A), for a step the asked prefix
    alone."""
    prefixes = [0, ask.prefix] if ask.ends else [ask.prefix]
    kernels = [KernelSource(build=prefix_build(build, series, k)) for k in prefixes]
    # The ends are a comparison of their own: its baseline is what interleaves the sides.
    baseline = BaselineSide(kernel=kernels[0].label()) if ask.ends else None
    update = {"name": name, "kernels": kernels, "repeats": ask.repeats, "schedule": None, "baseline": baseline}
    return spec.model_copy(update=update)


def base_spec(spec: CampaignSpec, build: BuildSpec, series: Series, name: str) -> CampaignSpec:
    """One run of the base, between two steps."""
    kernels = [KernelSource(build=prefix_build(build, series, 0))]
    return spec.model_copy(update={"name": name, "kernels": kernels, "repeats": 1, "schedule": None})


@dataclass
class Gathered:
    """What the runs of a bisection said, per prefix: figure values (passing runs) and verdicts."""

    values: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    verdicts: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, record: Mapping[str, Any], prefixes: Mapping[str, int], figure: str) -> None:
        """A finished child campaign's runs, by the prefix their kernel label names."""
        for run in campaign_of(record).runs:
            prefix = prefixes.get(run.kernel_label or "")
            if prefix is not None:
                self.add_run(prefix, run, figure)

    def add_run(self, prefix: int, run: Run, figure: str) -> None:
        """One run of ``prefix``: its verdict, and its figure when it passed."""
        self.verdicts[prefix].append(run.verdict or "infra-error")
        value = run_value(run).get(figure) if run.verdict == "pass" else None
        if value is not None:
            self.values[prefix].append(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "values": {str(k): v for k, v in self.values.items()},
            "verdicts": {str(k): v for k, v in self.verdicts.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gathered:
        found = cls()
        for key, values in data.get("values", {}).items():
            found.values[int(key)] = [float(v) for v in values]
        for key, verdicts in data.get("verdicts", {}).items():
            found.verdicts[int(key)] = [str(v) for v in verdicts]
        return found


def settings_key(run: Run) -> str:
    """What a stored run must share with the bisection's own to stand in for one of its runs:
    the comparison's cell (variant, workload, NFS, sysctls, sizes, clock, faults)."""
    return "|".join(cell_of(run))


def reusable(records: Iterable[Mapping[str, Any]], artifact: str, settings: str, bisection: str) -> Reused:
    """The stored runs of the kernel built as ``artifact`` under ``settings``, from
    campaigns that are not this bisection's own (those are gathered already)."""
    found = Reused([], [])
    for record in records:
        stored = campaign_of(record)
        if stored.bisection == bisection:
            continue
        runs = [r for r in stored.runs if r.kernel_info.artifact == artifact and settings_key(r) == settings]
        if runs:
            found.runs.extend(runs)
            found.campaigns.append(stored.campaign_id)
    return found


@dataclass(frozen=True)
class Reused:
    """Stored runs a step takes instead of running them again, and the campaigns they come from."""

    runs: list[Run]
    campaigns: list[str]


def judge(ask: Ask, patches: int, gathered: Gathered, on: On, figure: str, policy: Policy | None) -> tuple[Step, str]:
    """The answer to ``ask`` from everything gathered so far, and a line saying why."""
    if on == "verdict":
        return _by_verdict(gathered.verdicts.get(ask.prefix, []), gathered.verdicts.get(0, []), ask.ends)
    base, whole = gathered.values.get(0, []), gathered.values.get(patches, [])
    if ask.ends:
        step, found = judge_ends(figure, base, whole, policy)
        return step, f"the whole series against the base: {found.summary()}"
    if not gathered.values.get(ask.prefix) and _all_invalid(gathered.verdicts.get(ask.prefix, [])):
        return Step.SKIP, "its runs are invalid: the prefix did not build"
    judged = judge_step(figure, base, whole, gathered.values.get(ask.prefix, []), policy)
    return judged.step, judged.summary().removeprefix(f"{judged.step.value}: ")


def _all_invalid(verdicts: list[str]) -> bool:
    return bool(verdicts) and all(verdict == "invalid" for verdict in verdicts)


def _by_verdict(verdicts: list[str], base: list[str], ends: bool) -> tuple[Step, str]:
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in sorted(set(verdicts))) or "no runs"
    if ends and any(v != "pass" for v in base):
        return Step.UNDECIDED, f"the base did not pass every run ({', '.join(base)}): nothing to compare with"
    if _all_invalid(verdicts):
        return Step.SKIP, "its runs are invalid: the prefix did not build"
    if "fail" in verdicts:
        return Step.BAD, f"a run failed ({counts})"
    if verdicts and all(v == "pass" for v in verdicts):
        return Step.GOOD, f"every run passed ({counts})"
    return Step.UNDECIDED, f"the lab could not tell ({counts})"
