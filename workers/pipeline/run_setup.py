"""Setup done once per run, before any of its nodes is leased: the lab's long-lived NFS
server (lab scope: started if it is not serving, never stopped by a run) and the run's
kernel and node image (run scope: shared by every node of the run, cached by content).

A failure here ends the run before it holds any node: infra-error (or invalid for an
input the lab cannot serve), with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from model.lab import DEFAULT_NIC_DRIVERS, Lab
from model.runspec import PreparedKernel, RunSetupSpec
from workers.admission import admit_setup
from workers.image import ImageError, build_node_image, lab_keys
from workers.kbuild import artifacts
from workers.kernel import KernelArtifacts, KernelError, KernelInputError, fetch_kernel
from workers.lab.nfs import NfsServerError, make_nfs_server
from workers.pipeline.step import InputFault, LabFault, Pipeline, PipelineHooks, Scope, Step

Note = Callable[[str, str], None]  # (phase, text)


@dataclass
class RunContext:
    """What the run-scope steps share."""

    spec: RunSetupSpec
    lab: Lab  # this worker's own inventory of the lab the message names
    note: Note
    kernel: KernelArtifacts | None = None
    prepared: PreparedKernel | None = None


class EnsureNfsServerStep(Step[RunContext]):
    """The lab's NFS server serves (started now if it did not); shared by every run of the lab."""

    provides = frozenset({"nfs-server"})
    name = "nfs-server"
    phase = "nfs"
    scope = Scope.LAB

    def describe(self, ctx: RunContext) -> str:
        return f"{ctx.lab.nfs_backend} server of lab {ctx.lab.name}"

    def timeout_s(self, ctx: RunContext) -> float:
        # A lab-in-a-box's first start builds the server image, boots it under TCG and
        # provisions it: minutes, once per lab start.
        return 1800.0

    def run(self, ctx: RunContext, deadline: float) -> None:
        try:
            server = make_nfs_server(ctx.lab.nfs_backend, ctx.lab.name, ctx.lab.nfs_settings)
            server.ensure_serving(lambda text: ctx.note(self.phase, text))
        except (NfsServerError, OSError) as err:
            raise LabFault(f"NFS server: {err}") from err


class FetchKernelStep(Step[RunContext]):
    """The run's kernel in this host's cache (metapackages resolved now, once per run)."""

    provides = frozenset({"kernel"})
    name = "kernel"
    phase = "kernel"
    scope = Scope.RUN

    def timeout_s(self, ctx: RunContext) -> float:
        return 1800.0

    def describe(self, ctx: RunContext) -> str:
        return ctx.spec.kernel.label()

    def run(self, ctx: RunContext, deadline: float) -> None:
        try:
            if ctx.spec.kernel.build is not None:
                ctx.kernel = self._built(ctx)
            else:
                ctx.kernel = fetch_kernel(ctx.spec.kernel, progress=lambda text: ctx.note(self.phase, text))
        except KernelInputError as err:
            raise InputFault(f"kernel files: {err}") from err
        except (KernelError, OSError) as err:
            raise LabFault(f"kernel artifacts: {err}") from err

    @staticmethod
    def _built(ctx: RunContext) -> KernelArtifacts:
        """The artifact the run's build made, from this host's cache (shared across hosts)."""
        artifact = artifacts.find(ctx.spec.artifact) if ctx.spec.artifact else None
        if artifact is None or not artifact.ok:
            raise LabFault(f"kernel build {str(ctx.spec.artifact)[:12]} is not in this worker's cache")
        artifacts.touch(artifact)
        ctx.note("kernel", f"built kernel {artifact.summary()}")
        return KernelArtifacts(
            package=f"build:{artifact.hash[:12]}",
            version=str(artifact.meta["uts_version"]),
            kver=str(artifact.meta["release"]),
            vmlinuz=artifact.bzimage,
            modules_dir=artifact.modules_dir,
            source=ctx.spec.kernel.label(),
        )


class BuildImageStep(Step[RunContext]):
    """The node image every node of the run boots (kernel, modules, tools, the lab's keys)."""

    needs = frozenset({"kernel"})
    provides = frozenset({"prepared"})
    name = "image"
    phase = "image"
    scope = Scope.RUN

    def timeout_s(self, ctx: RunContext) -> float:
        return 600.0

    def run(self, ctx: RunContext, deadline: float) -> None:
        assert ctx.kernel is not None
        try:
            image = build_node_image(
                ctx.kernel,
                lab_keys(ctx.lab.name),
                progress=lambda text: ctx.note(self.phase, text),
                nic_modules=nic_modules(ctx.lab),
            )
        except (ImageError, KernelError, OSError) as err:
            raise LabFault(f"node image build: {err}") from err
        built = ctx.spec.kernel.build is not None
        ctx.prepared = PreparedKernel(
            package=ctx.kernel.package,
            version=ctx.kernel.version,
            kver=ctx.kernel.kver,
            source=ctx.kernel.source,
            image_hash=image.image_hash,
            artifact=ctx.spec.artifact if built else None,
            uts_version=ctx.kernel.version if built else None,
        )


def run_setup_pipeline(lab: Lab) -> Pipeline[RunContext]:
    """Lab scope first, then run scope; nodes that run already need no kernel or image."""
    steps: list[Step[RunContext]] = [EnsureNfsServerStep()]
    if lab.boots_kernels:
        steps += [FetchKernelStep(), BuildImageStep()]
    return Pipeline(steps)


class _NoteHooks(PipelineHooks[RunContext]):
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def enter(self, step: Step[RunContext]) -> None:
        self.ctx.note(step.phase, step.describe(self.ctx))


def prepare_run(spec: RunSetupSpec, note: Note) -> PreparedKernel | None:
    """Do the run's setup on this worker's own lab; the prepared kernel (None for nodes
    that run already).

    Raises a StepFailure (typed by whose fault; InputFault when the message does not fit
    this worker's lab) when it cannot.
    """
    lab = admit_setup(spec)
    ctx = RunContext(spec, lab, note)
    run_setup_pipeline(lab).run(ctx, _NoteHooks(ctx))
    return ctx.prepared


def nic_modules(lab: Lab) -> tuple[str, ...]:
    """The NIC drivers a lab's machines need beyond virtio: those its pxe nodes name, else a
    common set (a QEMU node's virtio_net is always in the image)."""
    wanted: list[str] = []
    for node in lab.nodes:
        if not node.kind.boots_from_network:
            continue
        named = node.options.get("nic_drivers")
        for module in named if isinstance(named, list) and named else DEFAULT_NIC_DRIVERS:
            if module not in wanted:
                wanted.append(str(module))
    return tuple(wanted)
