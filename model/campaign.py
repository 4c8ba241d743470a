"""Campaign files: the YAML a lab engineer writes, its model, and its validation.

A campaign is validated completely before anything is touched (LAVA's habit): the model
checks types and ranges, then the plan is checked against the lab (node count, RAM limits,
memory that cannot fit). Every problem names the file, the line and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.criteria import BUILTIN_CRITERION_NAMES, CriterionSpec
from model.faults import FAULTS_MAX, LINK_KINDS, FaultSpec, check_fault_order
from model.figures import FIGURE_NAMES, Timing, guest_clock_sysctl
from model.kernel import KernelSource
from model.lab import Lab, LabRef, NodeConfig, load_lab
from model.limits import HOG_MIB_MAX, HOG_MIB_MIN, HOG_PASSES_MAX, HOG_PASSES_MIN
from model.yamlpos import LocatedYaml, SpecError, SpecIssue, field_name, load_located

_SYSCTL_NAME = re.compile(r"(vm|kernel)\.[a-z0-9_][a-z0-9_-]{0,63}")  # vm.page-cluster has a hyphen
_MOUNT_OPTION = re.compile(r"[a-z][a-z0-9_]*(=[A-Za-z0-9_.:-]+)?")
# Set by swaplab itself from the lab's NFS server and the campaign's `version`; a campaign
# overriding them (in any of mount.nfs's spellings) would break the mount in ways that look
# like a kernel fault, or silently test another protocol than the one reported.
_RESERVED_MOUNT_OPTIONS = {
    "vers", "nfsvers", "minorversion", "v2", "v3", "v4",
    "port", "addr", "clientaddr", "proto", "udp", "tcp", "rdma",
    "mountport", "mountproto", "mountvers", "mounthost", "mountaddr",
}  # fmt: skip
SUPPORTED_NFS_VERSIONS = ("4.1", "4.2")
MAX_RUNS = 1000  # kernels x workloads x repeats
STALLED_AFTER_S = 120  # a TCG guest's slowest healthy swap still moves pages every few seconds
_INT64 = 2**63 - 1


def check_sysctl(values: dict[str, int]) -> dict[str, int]:
    """vm.*/kernel.* names and 64-bit values only: they reach a shell on the node."""
    for name, value in values.items():
        if not _SYSCTL_NAME.fullmatch(name):
            raise ValueError(f"sysctl name {name!r} must look like 'vm.min_free_kbytes' (vm.* or kernel.*)")
        if not -_INT64 - 1 <= value <= _INT64:
            raise ValueError(f"sysctl {name} = {value} does not fit a kernel integer (64 bits)")
    return values


# The fewest runs a side with which a comparison's 95 % interval exists (orchestrator.stats:
# three a side differ completely by chance 10 % of the time), and what README recommends.
COMPARISON_MIN_REPEATS = 4
COMPARISON_RECOMMENDED_REPEATS = 5


class _Strict(BaseModel):
    # strict: YAML's guesses never change a meaning (`true` is not 1, "3" is not 3).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NodeSize(_Strict):
    """The size a campaign asks for each VM node (within the inventory's limit)."""

    ram_mib: int | None = Field(default=None, gt=0)
    cpus: int | None = Field(default=None, gt=0, le=64)
    # Kernel tunables set on the node before swapon (e.g. vm.min_free_kbytes), recorded
    # with the result; names and values are validated because they reach a shell.
    sysctl: dict[str, int] = Field(default_factory=dict)

    _safe_sysctl = field_validator("sysctl")(check_sysctl)


def nfs_version_text(value: Any) -> Any:
    """YAML reads ``version: 4.1`` as a float; the campaign means the text as written (the
    loader keeps it: ``4.10`` must not become "4.1")."""
    if isinstance(value, bool):
        return value
    return getattr(value, "source", str(value)) if isinstance(value, int | float) else value


def check_nfs_version(value: str | None) -> str | None:
    """An NFS version swaplab can mount over the lab's server (None: the campaign's)."""
    if value is None:
        return None
    if value in ("3", "3.0"):
        raise ValueError(
            "NFSv3 needs rpcbind and a fixed mount port, which the ganesha backend does not run yet; use 4.1 or 4.2"
        )
    if value not in SUPPORTED_NFS_VERSIONS:
        raise ValueError(f"unknown NFS version {value!r}; allowed: 4.1, 4.2")
    return value


class NfsSpec(_Strict):
    """NFS protocol version and extra client mount options."""

    version: str = "4.1"
    mount_options: list[str] = Field(default_factory=lambda: ["hard", "timeo=600"])

    _text = field_validator("version", mode="before")(nfs_version_text)
    _known = field_validator("version")(check_nfs_version)

    @field_validator("mount_options")
    @classmethod
    def _safe_options(cls, options: list[str]) -> list[str]:
        for option in options:
            if not _MOUNT_OPTION.fullmatch(option):
                raise ValueError(f"mount option {option!r} must look like 'name' or 'name=value'")
            if option.split("=", 1)[0] in _RESERVED_MOUNT_OPTIONS:
                raise ValueError(
                    f"mount option {option!r} is set by swaplab from the lab and nfs.version "
                    f"(reserved: {', '.join(sorted(_RESERVED_MOUNT_OPTIONS))})"
                )
        return options


class SwapSpec(_Strict):
    """The swap file each node gets on the NFS export."""

    size_mib: int = Field(gt=0, le=1 << 20)


class WorkloadSpec(_Strict):
    """Memory pressure: how much memory to touch, how often, for how long at most."""

    name: str = Field(default="pressure", pattern=r"^[a-z][a-z0-9_-]{0,30}$")
    # `swaplab-node hog --mib` takes HOG_MIB_MIN..HOG_MIB_MAX (model.limits): checked here,
    # not found out on the node (where a refusal would read as a kernel failure).
    mib: int | None = Field(default=None, ge=HOG_MIB_MIN, le=HOG_MIB_MAX)
    ram_ratio: float | None = Field(default=None, gt=0, le=64)
    passes: int = Field(default=1, ge=HOG_PASSES_MIN, le=min(1000, HOG_PASSES_MAX))
    timeout_s: int = Field(default=600, gt=0, le=7 * 24 * 3600)
    allow_oom: bool = False
    # The progress watchdog: a node that answers but neither swaps nor reports progress
    # for this long (outside a fault's window) is stalled, a kernel fail.
    stalled_after_s: int = Field(default=STALLED_AFTER_S, ge=10, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _one_size(self) -> WorkloadSpec:
        if (self.mib is None) == (self.ram_ratio is None):
            raise ValueError("give exactly one of 'mib' (MiB to touch) or 'ram_ratio' (x node RAM)")
        return self

    def touch_mib(self, ram_mib: int) -> int:
        """MiB this workload touches on a node with ``ram_mib`` of RAM."""
        return self.mib if self.mib is not None else round(self.ram_ratio * ram_mib)  # type: ignore[operator]


class Variant(_Strict):
    """One value of the campaign's settings axis: its runs add these sysctls to
    ``node.sysctl`` and may use another NFS version. A comparison names one as baseline."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,30}$")
    sysctl: dict[str, int] = Field(default_factory=dict)
    nfs_version: str | None = None

    _safe_sysctl = field_validator("sysctl")(check_sysctl)

    _text = field_validator("nfs_version", mode="before")(nfs_version_text)
    _known = field_validator("nfs_version")(check_nfs_version)


LAST_PASS = "last-pass"


class BaselineSide(_Strict):
    """The side every other one is compared with: one of the campaign's kernels (by its
    label, e.g. ``linux-image-amd64``) or one of its variants (by name)."""

    kernel: str | None = None
    variant: str | None = None

    @model_validator(mode="after")
    def _one(self) -> BaselineSide:
        if (self.kernel is None) == (self.variant is None):
            raise ValueError("name exactly one of 'kernel' (a kernel label) or 'variant' (a variant name)")
        return self


class FigurePolicySpec(_Strict):
    """A campaign's own tolerance or minimum repeats for one figure."""

    tolerance: float | None = Field(default=None, gt=0, le=10)
    min_repeats: int | None = Field(default=None, ge=3, le=MAX_RUNS)


class CompareSpec(_Strict):
    """How a comparison decides: the figure that decides the verdict, and per-figure policies."""

    primary: str = "swap_out_mibps"
    figures: dict[str, FigurePolicySpec] = Field(default_factory=dict)

    @field_validator("primary")
    @classmethod
    def _known_primary(cls, value: str) -> str:
        return _known_figure(value)

    @field_validator("figures")
    @classmethod
    def _known_figures(cls, value: dict[str, FigurePolicySpec]) -> dict[str, FigurePolicySpec]:
        for name in value:
            _known_figure(name)
        return value


def _known_figure(name: str) -> str:
    if name not in FIGURE_NAMES:
        raise ValueError(f"unknown figure {name!r}; known: {', '.join(FIGURE_NAMES)}")
    return name


_CRON_FIELD = re.compile(r"(\*|[0-9]{1,2}(-[0-9]{1,2})?)(/[0-9]{1,2})?(,(\*|[0-9]{1,2}(-[0-9]{1,2})?)(/[0-9]{1,2})?)*")
# minute, hour, day of month, month, day of week: the ranges crontab(5) allows.
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def check_cron(value: str) -> str:
    """A five-field cron expression of numbers, ranges, steps and lists (no names)."""
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(f"cron {value!r} must have 5 fields: minute hour day-of-month month day-of-week")
    for field, (low, high), what in zip(
        fields, _CRON_RANGES, ("minute", "hour", "day of month", "month", "day of week"), strict=True
    ):
        if not _CRON_FIELD.fullmatch(field):
            raise ValueError(f"cron {what} {field!r}: use numbers, ranges (1-5), steps (*/15) and lists (1,3)")
        numbers = [int(n) for n in re.findall(r"(?<![/0-9])[0-9]+", field)]
        if any(not low <= n <= high for n in numbers):
            raise ValueError(f"cron {what} {field!r}: values must lie in {low}..{high}")
    return " ".join(fields)


def check_timezone(value: str) -> str:
    """An IANA time zone name this host knows (Europe/Berlin, UTC)."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin") from None
    return value


class ScheduleSpec(_Strict):
    """When a campaign runs by itself: a cron expression in a time zone, and what to do
    with a firing missed while beat was down (run it once when beat is back, or skip it)."""

    cron: str
    timezone: str = "UTC"
    missed: Literal["run-once", "skip"] = "run-once"

    _cron = field_validator("cron")(check_cron)
    _tz = field_validator("timezone")(check_timezone)


class CampaignSpec(_Strict):
    """A whole campaign file."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,40}$")
    description: str = ""
    lab: str = "../inventory/local.yml"
    kernels: list[KernelSource] = Field(min_length=1, max_length=MAX_RUNS)
    nodes: int = Field(default=1, ge=1, le=1000)
    node: NodeSize = Field(default_factory=NodeSize)
    nfs: NfsSpec = Field(default_factory=NfsSpec)
    swap: SwapSpec
    workloads: list[WorkloadSpec] = Field(min_length=1, max_length=MAX_RUNS)
    repeats: int = Field(default=1, ge=1, le=MAX_RUNS)
    boot_timeout_s: int = Field(default=240, gt=0, le=3600)
    # The nodes' clock (model.figures.Timing): "guest" makes the figures independent of
    # how busy the host is, on labs whose nodes are QEMU guests.
    timing: Timing = "host"
    # PromQL thresholds judged over each run's window, on top of the built-in set.
    criteria: list[CriterionSpec] = Field(default_factory=list, max_length=200)
    # Settings axis of the matrix (kernels x variants x workloads x repeats).
    variants: list[Variant] = Field(default_factory=list, max_length=50)
    # A comparison campaign: one side (a kernel or a variant) every other is compared
    # with, or "last-pass": the last passing instance of this campaign (same workload,
    # node size and NFS settings) from the results database.
    baseline: Literal["last-pass"] | BaselineSide | None = None
    compare: CompareSpec = Field(default_factory=CompareSpec)
    # Nightly and other scheduled runs (`swaplab schedule add FILE`).
    schedule: ScheduleSpec | None = None
    # Disturbances of the NFS path while the workload swaps (model.faults).
    faults: list[FaultSpec] = Field(default_factory=list, max_length=FAULTS_MAX)

    def sysctl_of(self, variant: Variant | None) -> dict[str, int]:
        """The sysctls a run's nodes get: the clock's own, the node's, the variant's (later wins)."""
        return {**guest_clock_sysctl(self.timing), **self.node.sysctl, **(variant.sysctl if variant else {})}


@dataclass(frozen=True)
class Campaign:
    """A validated campaign together with its lab and the sizes it resolved."""

    path: Path
    spec: CampaignSpec
    lab: LabRef
    # The VM size of nodes swaplab boots; None on labs of running nodes (their own RAM,
    # read at run time).
    ram_mib: int | None
    cpus: int | None

    def planned_overcommit_mib(self, workload: WorkloadSpec) -> int | None:
        """MiB the workload must push past RAM: what swap has to carry at least."""
        if self.ram_mib is None:
            return None
        return workload.touch_mib(self.ram_mib) - self.ram_mib


_Model = TypeVar("_Model", bound=BaseModel)


def _load_model(path: Path, model: type[_Model], expected: str) -> tuple[LocatedYaml, _Model]:
    doc = load_located(path)
    if not isinstance(doc.data, dict):
        raise SpecError([doc.issue((), expected)])
    try:
        return doc, model.model_validate(doc.data)
    except ValidationError as err:
        raise SpecError([_issue_from_pydantic(doc, error) for error in err.errors()]) from None


def load_campaign(path: Path) -> Campaign:
    """Parse and fully validate a campaign file (raises SpecError)."""
    doc, spec = _load_model(path, CampaignSpec, "a campaign file is a YAML mapping (name, lab, kernels ...)")
    spec = _resolve_paths(doc, spec)
    lab = _load_campaign_lab(doc, spec)
    return _check_plan(doc, spec, lab)


class _CriteriaFile(BaseModel):
    # A campaign file or a file of criteria only: the other keys are not read here.
    model_config = ConfigDict(extra="ignore", frozen=True)

    criteria: list[CriterionSpec] = Field(min_length=1)


def load_criteria(path: Path) -> list[CriterionSpec]:
    """The ``criteria:`` list of a YAML file, fully validated (raises SpecError)."""
    doc, parsed = _load_model(path, _CriteriaFile, "expected a YAML mapping with a 'criteria:' list")
    issues = _check_criteria_names(doc, parsed.criteria)
    if issues:
        raise SpecError(issues)
    return parsed.criteria


def _resolve_paths(doc: LocatedYaml, spec: CampaignSpec) -> CampaignSpec:
    """Local kernel files made absolute (relative to the campaign file) and checked to be what they say."""
    kernels, issues = [], []
    for index, kernel in enumerate(spec.kernels):
        paths = {}
        for field, value in kernel.local_paths().items():
            resolved, problem = _resolved(doc.path.parent / value)
            problem = problem or _kernel_file_problem(field, resolved)
            if problem:
                issues.append(doc.issue(("kernels", index, *field), problem))
            paths[field] = resolved
        kernels.append(kernel.with_local_paths(paths) if paths else kernel)
    if issues:
        raise SpecError(issues)
    return spec.model_copy(update={"kernels": kernels})


def _resolved(path: Path) -> tuple[Path, str | None]:
    """``path`` made absolute with its links followed, or why it cannot be."""
    try:
        return path.resolve(strict=True), None
    except FileNotFoundError:
        return path, f"{path} does not exist"
    except (OSError, RuntimeError) as err:  # a symlink loop: RuntimeError before 3.13, OSError after
        return path, f"{path} cannot be resolved: {err}"


# What each kind of kernel file must look like: a .deb is an ar archive whose first member
# is debian-binary; a bzImage has "HdrS" at 0x202 (the x86 boot protocol header).
_MAGIC = {"deb": (0, b"!<arch>\ndebian-binary"), "vmlinuz": (0x202, b"HdrS")}
_WHAT = {"deb": "a Debian package (.deb)", "vmlinuz": "an x86 kernel image (bzImage)"}
_DIRECTORIES = {"modules": "the build's modules directory", "git": "a git repository"}


def _kernel_file_problem(field: tuple[str | int, ...], path: Path) -> str | None:
    name = str(field[-1]) if isinstance(field[-1], str) else str(field[-2])
    if name in _DIRECTORIES:
        return None if path.is_dir() else f"{path} is not a directory ({_DIRECTORIES[name]})"
    if name == "patches":
        return None if path.is_file() or path.is_dir() else f"{path} is neither an mbox nor a directory of patches"
    if not path.is_file():
        return f"{path} is not a regular file"
    if name not in _MAGIC:
        return None
    offset, magic = _MAGIC[name]
    try:
        with path.open("rb") as file:
            file.seek(offset)
            head = file.read(len(magic))
    except OSError as err:
        return f"{path} cannot be read: {err.strerror}"
    return None if head == magic else f"{path} is not {_WHAT[name]}"


def _load_campaign_lab(doc: LocatedYaml, spec: CampaignSpec) -> Lab:
    inventory, problem = _resolved(doc.path.parent / spec.lab)
    if problem is None and not inventory.is_file():
        problem = f"{inventory} is not a file"
    if problem:
        raise SpecError([doc.issue(("lab",), f"inventory {spec.lab!r}: {problem}")])
    return load_lab(inventory)


def _check_plan(doc: LocatedYaml, spec: CampaignSpec, lab: Lab) -> Campaign:
    issues: list[SpecIssue] = []
    if spec.nodes > len(lab.nodes):
        issues.append(doc.issue(("nodes",), f"asks for {spec.nodes} nodes; lab {lab.name!r} has {len(lab.nodes)}"))
    issues += _check_matrix(doc, spec) + _check_kernels_fit_lab(doc, spec, lab)
    ram, cpus = None, None
    if spec.timing == "guest" and not lab.guest_time:
        issues.append(doc.issue(("timing",), f"lab {lab.name!r} cannot run its nodes on guest time (QEMU nodes can)"))
    if lab.boots_kernels:
        ram, cpus, size_issues = _vm_size(doc, spec, lab)
        issues += size_issues
        for index, workload in enumerate(spec.workloads):
            issues += _check_workload_fits(doc, spec, index, workload, ram)
        issues += _check_squeezes_fit(doc, spec, ram)
    else:
        # A running node has the RAM it has: the workload is checked against it at run time.
        issues += [
            doc.issue(("node", key), f"lab {lab.name!r} runs its nodes already: swaplab cannot size them")
            for key in ("ram_mib", "cpus")
            if getattr(spec.node, key) is not None
        ]
    issues += _check_criteria_names(doc, spec.criteria) + _check_variants(doc, spec) + _check_baseline(doc, spec)
    issues += _check_faults(doc, spec, lab)
    if issues:
        raise SpecError(issues)
    return Campaign(doc.path, spec, LabRef.of(lab), ram, cpus)


def _check_faults(doc: LocatedYaml, spec: CampaignSpec, lab: Lab) -> list[SpecIssue]:
    """Faults fit the lab and the run: a link to disturb, a node that exists, no overlap."""
    issues = [doc.issue(("faults", index, "at_s"), message) for index, message in check_fault_order(spec.faults)]
    for index, fault in enumerate(spec.faults):
        if fault.kind in LINK_KINDS and not lab.lab_network:
            message = (
                f"{fault.kind} disturbs a node's link on a lab network; lab {lab.name!r} has none "
                "(its nodes reach the server through this host)"
            )
            issues.append(doc.issue(("faults", index, "kind"), message))
        elif fault.kind in LINK_KINDS and any(node.kind.lab_network_only for node in lab.nodes):
            # A machine has one NIC: its link carries SSH and samples too, so a link fault
            # would have to select NFS by port, which swaplab does not do yet.
            message = f"{fault.kind} on lab {lab.name!r}: its pxe nodes' one NIC carries SSH too (not supported yet)"
            issues.append(doc.issue(("faults", index, "kind"), message))
        node = fault.node_index
        if node is not None and node >= spec.nodes:
            issues.append(doc.issue(("faults", index, "target"), f"the run has {spec.nodes} node(s)"))
    for index, criterion in enumerate(spec.criteria):
        if criterion.fault is not None and criterion.fault > len(spec.faults):
            message = f"the campaign has {len(spec.faults)} fault(s): 'fault' numbers one of them, from 1"
            issues.append(doc.issue(("criteria", index, "fault"), message))
    return issues


def _check_variants(doc: LocatedYaml, spec: CampaignSpec) -> list[SpecIssue]:
    """Variant names say which run is which: unique."""
    seen: dict[str, int] = {}
    issues = []
    for index, variant in enumerate(spec.variants):
        if variant.name in seen:
            issues.append(
                doc.issue(("variants", index, "name"), f"{variant.name!r} is already variants[{seen[variant.name]}]")
            )
        seen.setdefault(variant.name, index)
    return issues


def _check_baseline(doc: LocatedYaml, spec: CampaignSpec) -> list[SpecIssue]:
    """A baseline names a side the campaign has, there is something to compare it with, and
    enough runs a side that a comparison can decide at all."""
    side = spec.baseline
    if side is not None and spec.repeats < COMPARISON_MIN_REPEATS:
        return [
            doc.issue(
                ("repeats",),
                f"a comparison needs at least {COMPARISON_MIN_REPEATS} runs a side for a 95 % interval "
                f"({spec.repeats} can never tell a change from chance); {COMPARISON_RECOMMENDED_REPEATS} "
                "are recommended",
            )
        ]
    if side is None or side == LAST_PASS or not isinstance(side, BaselineSide):
        return []
    if side.kernel is not None:
        labels = [kernel.label() for kernel in spec.kernels]
        if side.kernel not in labels:
            return [doc.issue(("baseline", "kernel"), f"{side.kernel!r} is none of the kernels: {', '.join(labels)}")]
        if len(set(labels)) != len(labels):
            return [
                doc.issue(
                    ("kernels",),
                    "a baseline kernel needs kernels with distinct labels (compare the same kernel twice with variants)",
                )
            ]
        if len(labels) < 2:
            return [doc.issue(("baseline", "kernel"), "needs a second kernel to compare with")]
        return []
    names = [variant.name for variant in spec.variants]
    if side.variant not in names:
        return [
            doc.issue(
                ("baseline", "variant"), f"{side.variant!r} is none of the variants: {', '.join(names) or '(none)'}"
            )
        ]
    if len(names) < 2:
        return [doc.issue(("baseline", "variant"), "needs a second variant to compare with")]
    return []


def _check_matrix(doc: LocatedYaml, spec: CampaignSpec) -> list[SpecIssue]:
    """Workload names say which run is which: unique; and a bounded number of runs."""
    issues = []
    seen: dict[str, int] = {}
    for index, workload in enumerate(spec.workloads):
        if workload.name in seen:
            issues.append(
                doc.issue(
                    ("workloads", index, "name"), f"{workload.name!r} is already workloads[{seen[workload.name]}]"
                )
            )
        seen.setdefault(workload.name, index)
    variants = max(1, len(spec.variants))
    runs = len(spec.kernels) * variants * len(spec.workloads) * spec.repeats
    if runs > MAX_RUNS:
        axis = f" x {variants} variants" if spec.variants else ""
        message = (
            f"{len(spec.kernels)} kernels{axis} x {len(spec.workloads)} workloads x {spec.repeats} repeats = {runs} runs; "
            f"a campaign has at most {MAX_RUNS}"
        )
        issues.append(doc.issue(("repeats",), message))
    return issues


def _vm_size(doc: LocatedYaml, spec: CampaignSpec, lab: Lab) -> tuple[int, int, list[SpecIssue]]:
    ram_limit = min(node.ram_mib or 0 for node in lab.nodes)
    cpu_limit = min(node.cpus or 0 for node in lab.nodes)
    ram = spec.node.ram_mib or ram_limit
    cpus = spec.node.cpus or cpu_limit
    issues = []
    if ram > ram_limit:
        issues.append(doc.issue(("node", "ram_mib"), f"{ram} MiB is above the lab's node limit of {ram_limit} MiB"))
    if cpus > cpu_limit:
        issues.append(doc.issue(("node", "cpus"), f"{cpus} CPUs is above the lab's node limit of {cpu_limit}"))
    return ram, cpus, issues


def _check_kernels_fit_lab(doc: LocatedYaml, spec: CampaignSpec, lab: Lab) -> list[SpecIssue]:
    return [
        doc.issue(("kernels", index, *field), message)
        for index, kernel in enumerate(spec.kernels)
        for field, message in kernel_refusals(kernel, lab)
    ]


Refusal = tuple[tuple[str | int, ...], str]  # (field below the kernel, message)


def kernel_refusals(kernel: KernelSource, lab: Lab) -> list[Refusal]:
    """Why ``kernel`` cannot run on ``lab``: its kind, or local files outside the lab's kernel dirs.

    The same rules on both sides: ``swaplab validate`` against the inventory the submitter
    names, and a worker against its own inventory before it touches anything.
    """
    if lab.boots_kernels and not kernel.booted_by_swaplab:
        return [(("running",), f"lab {lab.name!r} boots its nodes: name a kernel to boot (package, deb or vmlinuz)")]
    if not lab.boots_kernels and kernel.booted_by_swaplab:
        message = (
            f"lab {lab.name!r} runs its nodes already (driver {lab.nodes[0].driver}): swaplab cannot boot "
            f"{kernel.label()} there; use 'running: <release>' or 'running: any'"
        )
        return [((), message)]
    return [
        (field, refused) for field, path in kernel.local_paths().items() if (refused := lab.kernel_file_refused(path))
    ]


def size_refusal(ram_mib: int | None, cpus: int | None, node: NodeConfig) -> str | None:
    """Why a VM of this size cannot be one of ``node``'s, or None."""
    if node.ram_mib is None or node.cpus is None:
        return None if ram_mib is None and cpus is None else f"node {node.name} runs already: swaplab cannot size it"
    if ram_mib is None or cpus is None:
        return f"node {node.name} is booted by swaplab: it needs a RAM size and CPUs"
    if ram_mib > node.ram_mib:
        return f"{ram_mib} MiB is above node {node.name}'s limit of {node.ram_mib} MiB"
    if cpus > node.cpus:
        return f"{cpus} CPUs is above node {node.name}'s limit of {node.cpus}"
    return None


def _check_criteria_names(doc: LocatedYaml, criteria: list[CriterionSpec]) -> list[SpecIssue]:
    builtin = set(BUILTIN_CRITERION_NAMES)
    taken = set(builtin)
    issues = []
    for index, criterion in enumerate(criteria):
        if criterion.name in taken:
            kind = "a built-in criterion" if criterion.name in builtin else "another criterion"
            issues.append(doc.issue(("criteria", index, "name"), f"{criterion.name!r} is already the name of {kind}"))
        taken.add(criterion.name)
    return issues


def _check_workload_fits(
    doc: LocatedYaml, spec: CampaignSpec, index: int, workload: WorkloadSpec, ram: int
) -> list[SpecIssue]:
    size_field = "mib" if workload.mib is not None else "ram_ratio"
    loc = ("workloads", index, size_field)
    touch = workload.touch_mib(ram)
    if not HOG_MIB_MIN <= touch <= HOG_MIB_MAX:
        return [doc.issue(loc, f"touches {touch} MiB; the node's workload tool takes {HOG_MIB_MIN}..{HOG_MIB_MAX} MiB")]
    overcommit = touch - ram
    if overcommit <= 0:
        return [
            doc.issue(
                loc,
                f"touches {touch} MiB, which fits in the node's {ram} MiB of RAM: nothing would swap; touch more than RAM",
            )
        ]
    if overcommit > spec.swap.size_mib and not workload.allow_oom:
        return [
            doc.issue(
                ("swap", "size_mib"),
                f"{spec.swap.size_mib} MiB of swap is smaller than the planned overcommit of "
                f"workloads[{index}] ({touch} MiB touched - {ram} MiB RAM = {overcommit} MiB): it cannot fit "
                "in RAM + swap; enlarge the swap, shrink the workload, or set 'allow_oom: true' on "
                "the workload if the test wants the OOM killer",
            )
        ]
    return []


def _check_squeezes_fit(doc: LocatedYaml, spec: CampaignSpec, ram: int) -> list[SpecIssue]:
    """A memory squeeze beside the largest workload must still fit in RAM + swap, unless
    the workloads opted into the OOM killer."""
    if not spec.workloads or any(workload.allow_oom for workload in spec.workloads):
        return []
    touch = max(workload.touch_mib(ram) for workload in spec.workloads)
    issues = []
    for index, fault in enumerate(spec.faults):
        if fault.mib is not None and touch + fault.mib > ram + spec.swap.size_mib:
            message = (
                f"{fault.mib} MiB squeezed beside a workload of {touch} MiB exceeds the node's {ram} MiB of RAM "
                f"+ {spec.swap.size_mib} MiB of swap: the OOM killer would end the run; squeeze less, or set "
                "'allow_oom: true' on the workloads"
            )
            issues.append(doc.issue(("faults", index, "mib"), message))
    return issues


def _issue_from_pydantic(doc: LocatedYaml, error: Any) -> SpecIssue:
    loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part))
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc[:-1])) or "none"
        return doc.issue(loc, f"unknown key; allowed here: {allowed}")
    if kind == "missing":
        return doc.issue(loc, "required field is missing")
    message = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind not in ("model_type", "value_error"):
        message += f" (got {error['input']!r})"
    return doc.issue(loc, message)


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    model: Any = CampaignSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def campaign_to_json(campaign: Campaign) -> dict[str, Any]:
    """A validated campaign as plain JSON with what it needs of its lab (what submit stores)."""
    return {
        "path": str(campaign.path),
        "spec": campaign.spec.model_dump(mode="json"),
        "lab": campaign.lab.model_dump(mode="json"),
        "ram_mib": campaign.ram_mib,
        "cpus": campaign.cpus,
    }


class _StoredCampaign(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    path: str
    spec: dict[str, Any]
    lab: dict[str, Any]
    ram_mib: int | None
    cpus: int | None


def campaign_from_json(data: Any, where: str = "stored campaign") -> Campaign:
    """Inverse of campaign_to_json, validated again: what is read from Redis is input.

    Raises SpecError (file ``where``, the field, no line) for anything ``swaplab validate``
    would not have let through, or anything more than a campaign may say.
    """
    try:
        stored = _StoredCampaign.model_validate(data)
        spec = CampaignSpec.model_validate(stored.spec)
        lab = LabRef.model_validate(stored.lab)
    except ValidationError as err:
        raise SpecError([_stored_issue(where, error) for error in err.errors()]) from None
    if stored.ram_mib is None and lab.boots_kernels:
        raise SpecError(
            [SpecIssue(where, None, "ram_mib", "a campaign on a lab that boots its nodes needs a RAM size")]
        )
    return Campaign(Path(stored.path), spec, lab, stored.ram_mib, stored.cpus)


def _stored_issue(where: str, error: Any) -> SpecIssue:
    message = str(error["msg"]).removeprefix("Value error, ")
    return SpecIssue(where, None, field_name([part for part in error["loc"] if isinstance(part, str | int)]), message)
