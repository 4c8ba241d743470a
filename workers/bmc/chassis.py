"""The chassis of a lab-in-a-box machine: what ``ipmi_sim`` runs for power and boot commands.

OpenIPMI's simulator hands chassis commands to an external program (its
``chassis_control``) as ``PROGRAM get power boot`` and ``PROGRAM set power "1"``, through a
shell; a ``get`` answers ``name:value`` lines. This is that program for one machine, kept
in a directory of its own (0700, root's):

- ``machine.json``: ``{"argv": [...]}``, the command that *is* the machine (a QEMU node
  through swaplab's wrapper); power on starts it in a session of its own, its output to
  ``machine.log``, never to the simulator's pipe (which it would hold open);
- ``pid``: the running machine's pid and start time (a recycled pid is not the machine);
- ``boot``: the next boot device; ``actions.log``: every power and boot command, in order.

Power off is a machine pulled from the wall: SIGKILL, and the pid file gone once it is.

    python -m workers.bmc.chassis MACHINE_DIR get power boot
    python -m workers.bmc.chassis MACHINE_DIR set power 1 [boot pxe]
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.process import record_pid, recorded_pid, stop_recorded_pid

BOOT_DEVICES = ("none", "pxe", "default", "cdrom", "bios")
KILL_WAIT_S = 10.0


def running_pid(machine: Path) -> int | None:
    """The machine's pid while it runs (the recorded process, not a recycled pid)."""
    return recorded_pid(machine / "pid")


def power_on(machine: Path) -> None:
    """Start the machine unless it runs."""
    if running_pid(machine) is not None:
        return
    argv = json.loads((machine / "machine.json").read_text())["argv"]
    with open(machine / "machine.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=machine
        )
    record_pid(machine / "pid", proc.pid)


def power_off(machine: Path) -> None:
    """Kill the machine (no orderly shutdown) and wait until it is gone."""
    stop_recorded_pid(machine / "pid", signal.SIGKILL, KILL_WAIT_S)


def next_boot(machine: Path) -> str:
    try:
        device = (machine / "boot").read_text().strip()
    except OSError:
        return "default"
    return device if device in BOOT_DEVICES else "default"


def get(machine: Path, names: list[str]) -> str:
    """``name:value`` lines for what the simulator asked."""
    values = {"power": "1" if running_pid(machine) is not None else "0", "boot": next_boot(machine)}
    return "".join(f"{name}:{values[name]}\n" for name in names if name in values)


def apply(machine: Path, settings: list[str]) -> None:
    """``name value`` pairs from the simulator, in order; every one recorded."""
    for name, value in zip(settings[::2], settings[1::2], strict=True):
        with open(machine / "actions.log", "a") as log:
            log.write(f"{time.time():.3f} {name} {value}\n")
        if name == "power":
            (power_on if value == "1" else power_off)(machine)
        elif name == "boot" and value in BOOT_DEVICES:
            (machine / "boot").write_text(value + "\n")
        elif name == "reset":
            power_off(machine)
            power_on(machine)
        # shutdown and identify: a machine without an OS agent or a lamp ignores them.


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("get", "set", "check"):
        print("usage: python -m workers.bmc.chassis MACHINE_DIR get|set|check NAME [VALUE] ...", file=sys.stderr)
        return 2
    machine, op, rest = Path(argv[0]), argv[1], argv[2:]
    if op == "get":
        sys.stdout.write(get(machine, rest))
    elif op == "set":
        apply(machine, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
