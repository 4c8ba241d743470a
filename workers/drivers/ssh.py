"""``ssh``: a node that runs already (its kernel installed by kdevops, a provisioning system
or a person); swaplab logs in, drives the test and leaves it clean. No power control: a
node that stops answering stays out of the pool until ``swaplab lab back`` says it is back.

Inventory (beside ``ansible_host``, ``ansible_port`` (22), ``ansible_user`` (root)):

- ``swaplab_ssh_key``: the private key file (else the SSH agent);
- ``swaplab_known_hosts``: the known_hosts file with the node's host key (default
  ``~/.ssh/known_hosts``); an unknown host key is refused, never learnt;
- ``swaplab_console_file`` or ``swaplab_console_command``: the lab's console for the node
  (a file its console server writes; a command such as ``ipmitool ... sol activate``);
  neither: the kernel log over SSH.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from model.lab import NodeConfig
from workers.drivers import register_driver
from workers.drivers.base import ConsoleSpec, MachineState
from workers.node_ssh import SshTarget


class SshDriver:
    """A running host reached over SSH."""

    def __init__(self, node: NodeConfig, workdir: Path) -> None:
        self.node = node
        self.workdir = workdir

    def machine_state(self) -> MachineState:
        """Unknown: without power control only the node's own answers say anything."""
        return MachineState.UNKNOWN

    def exit_reason(self) -> str | None:
        return None

    def ssh_target(self) -> SshTarget:
        """The node's address, user, key (or agent) and known_hosts from the inventory."""
        options = self.node.options
        key = options.get("ssh_key")
        known_hosts = options.get("known_hosts", str(Path.home() / ".ssh" / "known_hosts"))
        return SshTarget(
            self.node.ssh_host,
            self.node.ssh_port,
            self.node.ssh_user,
            key_file=Path(str(key)) if key else None,
            allow_agent=key is None,
            known_hosts=Path(str(known_hosts)),
        )

    def console(self) -> ConsoleSpec:
        """The lab's console for the node, from the inventory, if any."""
        options = self.node.options
        if options.get("console_file"):
            return ConsoleSpec(file=Path(str(options["console_file"])))
        if options.get("console_command"):
            return ConsoleSpec(command=tuple(shlex.split(str(options["console_command"]))))
        return ConsoleSpec()


@register_driver("ssh")
def _make_ssh(node: NodeConfig, workdir: Path) -> SshDriver:
    return SshDriver(node, workdir)
