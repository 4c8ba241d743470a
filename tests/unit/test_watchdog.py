"""The progress watchdog: flat counters and a silent workload for its bound make a node
stalled; any progress, or a fault's window, keeps it quiet."""

from __future__ import annotations

from workers.pipeline.watchdog import ProgressWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_flat_counters_and_no_new_report_for_the_bound_is_stalled_naming_when_and_what() -> None:
    clock = Clock()
    dog = ProgressWatchdog(60, clock=clock)
    dog.observe({"pswpout": 25600, "pswpin": 512}, "progress write 1 96")
    clock.now += 59
    dog.observe({"pswpout": 25600, "pswpin": 512}, "progress write 1 96")
    assert dog.stalled() is None
    clock.now += 2
    why = dog.stalled()
    assert why is not None and why.startswith("stalled: no progress for 61 s since ")
    assert "100.0 MiB out, 2.0 MiB in" in why and "'progress write 1 96'" in why


def test_any_progress_restarts_the_count() -> None:
    clock = Clock()
    dog = ProgressWatchdog(60, clock=clock)
    for step in range(10):  # the counters move a page every 50 s: slow, not stalled
        dog.observe({"pswpout": step, "pswpin": 0}, "")
        clock.now += 50
        assert dog.stalled() is None
    dog.observe({"pswpout": 9, "pswpin": 0}, "progress verify 1 32")  # a new report counts too
    clock.now += 50
    assert dog.stalled() is None


def test_a_faults_window_keeps_the_watchdog_quiet_and_counts_from_its_end() -> None:
    clock, quiet = Clock(), [float("inf")]
    dog = ProgressWatchdog(60, quiet_until=lambda: quiet[0], clock=clock)
    for _ in range(10):
        dog.observe({"pswpout": 7}, "")
        clock.now += 30
        assert dog.stalled() is None
    quiet[0] = clock.now + 30  # the fault ended; its grace is 30 s
    dog.observe({"pswpout": 7}, "")
    clock.now += 31
    dog.observe({"pswpout": 7}, "")
    assert dog.stalled() is None  # 31 s of flat counters after the grace began: not yet
    clock.now += 60
    assert dog.stalled() is not None
