"""The ``swaplab`` command: one module per command group, assembled here."""

from __future__ import annotations

import sys
from typing import Any

import click

from model.display import printable
from model.exitcode import ExitCode
from model.hashes import CorruptHash
from orchestrator.cli.bisect_cmds import bisect
from orchestrator.cli.build_cmds import build, kernels
from orchestrator.cli.campaign_cmds import run, validate
from orchestrator.cli.check_cmds import check
from orchestrator.cli.distributed_cmds import cancel, results, status, submit, watch
from orchestrator.cli.history_cmds import compare, history, report, show
from orchestrator.cli.lab_cmds import lab
from orchestrator.cli.nfs_cmds import nfs
from orchestrator.cli.schedule_cmds import schedule


class _Main(click.Group):
    """The command group: live state that does not read as swaplab wrote it is a clear
    error (exit 2), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorruptHash as err:
            click.echo(printable(f"error: {err}"), err=True)
            sys.exit(ExitCode.BAD_INPUT_OR_INFRA)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swaplab")
def main() -> None:
    """swaplab: test Linux kernels on diskless nodes that swap over NFS."""


for command in (
    validate,
    run,
    submit,
    status,
    watch,
    cancel,
    results,
    check,
    history,
    show,
    report,
    compare,
    build,
    kernels,
    bisect,
    lab,
    nfs,
    schedule,
):
    main.add_command(command)
