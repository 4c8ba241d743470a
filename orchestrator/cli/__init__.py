"""The ``swaplab`` command: one module per command group, assembled here."""

from __future__ import annotations

import logging

import click

from orchestrator.cli.campaign_cmds import run, validate
from orchestrator.cli.nfs_cmds import nfs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swaplab")
def main() -> None:
    """swaplab: test Linux kernels on diskless nodes that swap over NFS."""
    # While a node boots, QEMU's port forward accepts TCP before sshd listens; paramiko
    # logs each refused handshake as an error with a traceback. That is expected noise.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


main.add_command(validate)
main.add_command(run)
main.add_command(nfs)
