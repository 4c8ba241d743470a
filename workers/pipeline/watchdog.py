"""The progress watchdog: a node that answers but makes no progress is *stalled*.

Some swap-over-NFS livelocks print nothing on the console: the node answers SSH, its
sampler ticks, but neither swap counter moves and the workload reports nothing new. Left
alone such a node ends only at the workload's timeout. The watchdog watches the swap
counters (pages in + out) and the workload's last progress line; when neither changed for
``stalled_after_s`` it says so, with when progress stopped and what the counters did —
except while a fault disturbs the NFS path (its window and grace), where standing still
is what the fault does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from workers.samples import PAGE_SIZE, Record

MIB = 2**20


@dataclass
class ProgressWatchdog:
    """Fed every tick of the workload step; ``stalled()`` is why the node is stalled, or None."""

    stalled_after_s: float
    # Until when (epoch s) a fault excuses standing still; 0: no fault.
    quiet_until: Callable[[], float] = lambda: 0.0
    clock: Callable[[], float] = time.time
    _signature: tuple[float, str] | None = None
    _since: float = field(default=0.0)
    _counters: Record = field(default_factory=dict)

    def observe(self, latest: Record | None, last_line: str) -> None:
        """The node's latest sample and the workload's last line, as they are now."""
        moved = float((latest or {}).get("pswpin", 0)) + float((latest or {}).get("pswpout", 0))
        signature = (moved, last_line)
        now = self.clock()
        if signature != self._signature or now < self.quiet_until():
            self._signature, self._since, self._counters = signature, now, dict(latest or {})

    def stalled(self) -> str | None:
        """Why the node counts as stalled now, or None."""
        now = self.clock()
        if self._signature is None or now < self.quiet_until() or now - self._since < self.stalled_after_s:
            return None
        out = float(self._counters.get("pswpout", 0)) * PAGE_SIZE / MIB
        into = float(self._counters.get("pswpin", 0)) * PAGE_SIZE / MIB
        when = time.strftime("%H:%M:%S", time.localtime(self._since))
        return (
            f"stalled: no progress for {now - self._since:.0f} s since {when} while the node answered "
            f"(swap counters flat at {out:.1f} MiB out, {into:.1f} MiB in; "
            f"the workload's last report {self._signature[1]!r})"
        )
