"""Where a node's kernel comes from, as a campaign says it: a Debian package (metapackages
resolve at fetch time), a local ``.deb``, a local build (``vmlinuz`` + ``modules``), or
``running``: whatever kernel a node that swaplab does not boot runs (an expected release,
or ``any``), read back from the node and recorded.

Only the description lives here; fetching is the data plane's job (``workers.kernel``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import pydantic

# Debian package names are [a-z0-9][a-z0-9+.-]*; we further insist on a kernel image
# package because the name ends up in apt's argv.
PACKAGE_RE = re.compile(r"^linux-image-[a-z0-9][a-z0-9+.-]{0,100}$")
_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
# `uname -r` of a kernel: what `running:` may expect (or "any").
_RELEASE_RE = re.compile(r"^[0-9][0-9A-Za-z.+_~-]{0,99}$")
ANY_RELEASE = "any"


_GIT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}")
_SOURCE_PACKAGE = re.compile(r"linux-source-[0-9]+\.[0-9]+")
CONFIG_TARGETS = ("tinyconfig", "defconfig", "allnoconfig")
# A path read from YAML text (strict models refuse str for Path otherwise).
LaxPath = Annotated[Path, pydantic.Strict(False)]


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)


class GitSource(_Strict):
    """A git repository of the submitter's and the branch, tag or commit to build."""

    git: Path = pydantic.Field(strict=False)
    ref: str = "HEAD"
    # The last good commit, for `swaplab bisect`: `ref` is then the bad one. A build
    # builds `ref` alone, whatever `good` says.
    good: str | None = None

    @pydantic.field_validator("ref", "good")
    @classmethod
    def _check_ref(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        if value is not None and (not _GIT_REF.fullmatch(value) or ".." in value):
            raise ValueError(f"{info.field_name} {value!r} is not a branch, tag or commit name")
        return value


class TarballSource(_Strict):
    """A kernel source tarball (patches apply to it in a throwaway git repository)."""

    tarball: Path = pydantic.Field(strict=False)


class DebianSource(_Strict):
    """Debian's kernel source package (``linux-source-6.1``): fetched, never installed."""

    debian: str = pydantic.Field(pattern=f"^{_SOURCE_PACKAGE.pattern}$")


class ConfigSpec(_Strict):
    """The build's config: a base (a make target or a file) plus fragments, in order.

    swaplab's own fragment for a diskless NFS-swap node is merged last, and the result is
    checked before anything compiles.
    """

    base: str = "tinyconfig"
    fragments: list[LaxPath] = pydantic.Field(default_factory=list, max_length=20)

    @property
    def base_file(self) -> Path | None:
        """The base config file, when the base is one (not a make target)."""
        return None if self.base in CONFIG_TARGETS else Path(self.base)


class BuildSpec(_Strict):
    """A kernel built from a tree, a patch series (mbox or format-patch directory) and a config."""

    source: GitSource | TarballSource | DebianSource
    patches: Path | None = pydantic.Field(default=None, strict=False)
    # Only the series' first N patches (0: none, the tree as it is): what a bisection builds.
    patches_upto: int | None = pydantic.Field(default=None, ge=0, le=10_000)
    config: ConfigSpec = pydantic.Field(default_factory=ConfigSpec)

    @pydantic.model_validator(mode="after")
    def _upto_needs_a_series(self) -> BuildSpec:
        if self.patches_upto is not None and self.patches is None:
            raise ValueError("'patches_upto' takes the first patches of a series: 'patches' names none")
        return self

    def prefix(self, count: int) -> BuildSpec:
        """The same build with only the series' first ``count`` patches."""
        return self.model_copy(update={"patches_upto": count})

    def label(self) -> str:
        source = self.source
        if isinstance(source, GitSource):
            name = f"{source.git.name}@{source.ref}"
        elif isinstance(source, TarballSource):
            name = source.tarball.name
        else:
            name = source.debian
        upto = f"[:{self.patches_upto}]" if self.patches_upto is not None else ""
        return f"build:{name}" + (f"+{self.patches.name}{upto}" if self.patches else "")

    def local_paths(self) -> dict[tuple[str | int, ...], Path]:
        """Every file or directory of the submitter's this build reads, by field."""
        paths: dict[tuple[str | int, ...], Path] = {}
        if isinstance(self.source, GitSource):
            paths[("source", "git")] = self.source.git
        elif isinstance(self.source, TarballSource):
            paths[("source", "tarball")] = self.source.tarball
        if self.patches is not None:
            paths[("patches",)] = self.patches
        if self.config.base_file is not None:
            paths[("config", "base")] = self.config.base_file
        for index, fragment in enumerate(self.config.fragments):
            paths[("config", "fragments", index)] = fragment
        return paths


class KernelSource(pydantic.BaseModel):
    """Where a kernel comes from: a Debian package, a local .deb, a local build, a build
    swaplab makes from a tree + patches + config, or the kernel a node already runs."""

    # strict: YAML's guesses never change a meaning; paths are read from text.
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    package: str | None = None
    suite: str | None = None
    deb: Path | None = pydantic.Field(default=None, strict=False)
    vmlinuz: Path | None = pydantic.Field(default=None, strict=False)
    modules: Path | None = pydantic.Field(default=None, strict=False)
    build: BuildSpec | None = None
    running: str | None = None

    @pydantic.field_validator("package")
    @classmethod
    def _check_package(cls, value: str | None) -> str | None:
        if value is not None and not PACKAGE_RE.fullmatch(value):
            raise ValueError(
                f"package {value!r} is not a Debian kernel image package name "
                "(expected e.g. linux-image-amd64 or linux-image-6.1.0-28-amd64)"
            )
        return value

    @pydantic.field_validator("suite")
    @classmethod
    def _check_suite(cls, value: str | None) -> str | None:
        if value is not None and not _SUITE_RE.fullmatch(value):
            raise ValueError(f"suite {value!r} is not a Debian suite name (e.g. bookworm)")
        return value

    @pydantic.field_validator("running")
    @classmethod
    def _check_running(cls, value: str | None) -> str | None:
        if value is not None and value != ANY_RELEASE and not _RELEASE_RE.fullmatch(value):
            raise ValueError(f"running {value!r} is not a kernel release (as `uname -r` prints it) nor 'any'")
        return value

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> KernelSource:
        given = [n for n in ("package", "deb", "vmlinuz", "build", "running") if getattr(self, n) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of package, deb, vmlinuz, build, running (got {got})")
        if self.suite is not None and self.package is None:
            raise ValueError("suite only applies to package")
        if (self.vmlinuz is None) != (self.modules is None):
            raise ValueError("vmlinuz and modules go together: give both or neither")
        return self

    def label(self) -> str:
        """A short human name, e.g. ``linux-image-amd64@trixie``, ``local:bzImage``, ``running:any``."""
        if self.package is not None:
            return f"{self.package}@{self.suite}" if self.suite else self.package
        if self.deb is not None:
            return f"deb:{self.deb.name}"
        if self.running is not None:
            return f"running:{self.running}"
        if self.build is not None:
            return self.build.label()
        assert self.vmlinuz is not None
        return f"local:{self.vmlinuz.name}"

    @property
    def booted_by_swaplab(self) -> bool:
        """True for kernels swaplab boots a node with; False for ``running``."""
        return self.running is None

    def accepts_release(self, release: str) -> bool:
        """Whether a node running ``release`` is what this ``running`` kernel expects."""
        return self.running in (ANY_RELEASE, release)

    def local_paths(self) -> dict[tuple[str | int, ...], Path]:
        """Every file or directory of the submitter's this kernel reads, by field."""
        if self.build is not None:
            return {("build", *field): path for field, path in self.build.local_paths().items()}
        return {(name,): path for name in ("deb", "vmlinuz", "modules") if (path := getattr(self, name)) is not None}

    def with_local_paths(self, paths: dict[tuple[str | int, ...], Path]) -> KernelSource:
        """A copy with the local paths replaced (resolved), field by field."""
        data = self.model_dump()
        for field, path in paths.items():
            parent: Any = data
            for part in field[:-1]:
                parent = parent[part]
            parent[field[-1]] = str(path)  # text: every path field reads it, and so does config.base
        return KernelSource.model_validate(data)
