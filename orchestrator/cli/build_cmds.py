"""``swaplab build FILE`` and ``swaplab kernels``: a campaign's ``build`` kernels built (or
found in the cache) without running anything, and the cache of built kernels."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from model.display import printable
from model.exitcode import ExitCode
from orchestrator.cli.common import CAMPAIGN_FILE, load_or_exit
from workers.kbuild import artifacts
from workers.kbuild.build import BuildError, build_kernel
from workers.kernel import KernelError


class _ProgressLine:
    """One live line on a terminal (stage, elapsed, make target); plain lines otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.began = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        line = printable(f"[{time.monotonic() - self.began:5.0f} s] {self.label}: {text}")
        if self.tty:
            click.echo(f"\r\033[K{line[:150]}", err=True, nl=False)
        else:
            click.echo(line, err=True)

    def done(self) -> None:
        if self.tty:
            click.echo("", err=True)


@click.command()
@click.argument("campaign_file", type=CAMPAIGN_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print each kernel's artifact as JSON on stdout.")
@click.option(
    "--fresh",
    is_flag=True,
    help="Build in a fresh checkout and build directory instead of the last build's of the same "
    "tree and files (make then recompiles everything; a cached artifact still answers).",
)
def build(campaign_file: Path, as_json: bool, fresh: bool) -> None:
    """Build (or find in the cache) CAMPAIGN_FILE's `build` kernels; run nothing else."""
    campaign = load_or_exit(campaign_file, as_json)
    kernels = [kernel for kernel in campaign.spec.kernels if kernel.build is not None]
    if not kernels:
        click.echo(f"{campaign_file}: no `build` kernels to build", err=True)
    rows = [_build_one(kernel.label(), kernel.build, fresh) for kernel in kernels if kernel.build is not None]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    failed = [row for row in rows if row["status"] != "ok"]
    sys.exit(ExitCode.BAD_INPUT_OR_INFRA if failed else ExitCode.PASS)


def _build_one(label: str, spec: Any, fresh: bool) -> dict[str, Any]:
    progress = _ProgressLine(label)
    try:
        artifact = build_kernel(spec, progress, fresh=fresh)
    except BuildError as err:
        progress.done()
        click.echo(f"{label}: FAILED ({err.cause}) at {err.stage}:\n{err.reason}", err=True)
        return {"kernel": label, "status": "failed", "cause": err.cause, "stage": err.stage, "error": err.reason}
    except KernelError as err:
        progress.done()
        click.echo(f"{label}: FAILED (infra): {err}", err=True)
        return {"kernel": label, "status": "failed", "cause": "infra", "error": str(err)}
    progress.done()
    click.echo(printable(f"{label}: {artifact.summary()}"), err=True)
    for index, patch in enumerate(artifact.meta.get("patches", []), 1):
        click.echo(printable(f"    {index}. {patch['subject']} ({patch['author']})"), err=True)
    return {"kernel": label, "status": "ok", "hash": artifact.hash, **_public(artifact.meta)}


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("release", "uts_version", "compiler", "patches", "size_bytes", "build_seconds", "incremental", "last_used")
    return {key: meta.get(key) for key in keys}


@click.command()
@click.option("--json", "as_json", is_flag=True)
def kernels(as_json: bool) -> None:
    """The built kernels in the cache (hash, release, patches, size, last used) and the disk they use."""
    rows = [
        {"hash": a.hash, "status": a.meta.get("status"), "label": a.meta.get("label"), **_public(a.meta)}
        for a in artifacts.listing()
    ]
    usage = artifacts.disk_usage()
    if as_json:
        click.echo(json.dumps({"kernels": rows, "disk_bytes": usage, "cap_bytes": artifacts.cap_bytes()}, indent=2))
        return
    for artifact in artifacts.listing():
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(artifact.meta.get("last_used", 0))))
        click.echo(printable(f"{artifact.summary()}  last used {used}  {artifact.meta.get('label', '')}"))
    parts = ", ".join(f"{name} {size / 2**30:.2f} GiB" for name, size in usage.items())
    click.echo(f"disk: {parts} (artifacts capped at {artifacts.cap_bytes() / 2**30:.0f} GiB, SWAPLAB_KBUILD_MAX_GB)")
