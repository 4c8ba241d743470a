"""Where a node's kernel comes from, as a campaign says it: a Debian package (metapackages
resolve at fetch time), a local ``.deb``, a local build (``vmlinuz`` + ``modules``), or
``running``: whatever kernel a node that swaplab does not boot runs (an expected release,
or ``any``), read back from the node and recorded.

Only the description lives here; fetching is the data plane's job (``workers.kernel``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pydantic

# Debian package names are [a-z0-9][a-z0-9+.-]*; we further insist on a kernel image
# package because the name ends up in apt's argv.
PACKAGE_RE = re.compile(r"^linux-image-[a-z0-9][a-z0-9+.-]{0,100}$")
_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
# `uname -r` of a kernel: what `running:` may expect (or "any").
_RELEASE_RE = re.compile(r"^[0-9][0-9A-Za-z.+_~-]{0,99}$")
ANY_RELEASE = "any"


class KernelSource(pydantic.BaseModel):
    """Where a kernel comes from: a Debian package, a local .deb, or a local build."""

    # strict: YAML's guesses never change a meaning; paths are read from text.
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    package: str | None = None
    suite: str | None = None
    deb: Path | None = pydantic.Field(default=None, strict=False)
    vmlinuz: Path | None = pydantic.Field(default=None, strict=False)
    modules: Path | None = pydantic.Field(default=None, strict=False)
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
        given = [n for n in ("package", "deb", "vmlinuz", "running") if getattr(self, n) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of package, deb, vmlinuz, running (got {got})")
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
        assert self.vmlinuz is not None
        return f"local:{self.vmlinuz.name}"

    @property
    def booted_by_swaplab(self) -> bool:
        """True for kernels swaplab boots a node with; False for ``running``."""
        return self.running is None

    def accepts_release(self, release: str) -> bool:
        """Whether a node running ``release`` is what this ``running`` kernel expects."""
        return self.running in (ANY_RELEASE, release)
