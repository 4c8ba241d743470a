"""What a node's sampler and workload may send, bounded: ticks at a sane rate and a bounded
number kept, a garbled ``done`` line never read as a verdict, corrupt lines capped."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.runspec import WorkloadOutcome
from workers.coordination import streams
from workers.coordination.streams import MAX_CORRUPT_LINES, TICK_BURST, SamplerStream, parse_workload_line

TICK = b"@@ %d 2\n## /proc/vmstat\npswpout %d\n@@end\n"


class FloodChannel:
    """A channel whose node sends ``ticks`` ticks at once, then ends."""

    def __init__(self, ticks: int) -> None:
        self._data = b"".join(TICK % (n, n) for n in range(ticks))

    def recv(self, size: int) -> bytes:
        data, self._data = self._data[:size], self._data[size:]
        return data

    def close(self) -> None: ...


def _sampled(ticks: int, tmp_path: Path) -> SamplerStream:
    stream = SamplerStream(FloodChannel(ticks), tmp_path / "samples.jsonl")  # type: ignore[arg-type]
    stream.close()
    return stream


def test_a_node_flooding_ticks_gets_its_burst_and_no_more(tmp_path: Path) -> None:
    stream = _sampled(5000, tmp_path)
    assert TICK_BURST <= stream.count < TICK_BURST + 10 and stream.refused == 5000 - stream.count
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == stream.count


def test_the_ticks_kept_in_memory_are_thinned_first_and_last_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "MAX_TICKS_KEPT", 16)
    monkeypatch.setattr(streams, "TICK_BURST", 1000)
    stream = _sampled(100, tmp_path)
    kept = [int(record["pswpout"]) for record in stream.records()]
    assert stream.count == 100 and len(kept) <= 17
    assert kept[0] == 0 and kept[-1] == 99 and kept == sorted(kept)


@pytest.mark.parametrize("line", ["done pages=3 bad=x elapsed_ns=1", "done pages=3 bad=0 elapsed_ns=" + "9" * 30])
def test_a_garbled_done_line_is_no_verdict_on_the_pages(line: str) -> None:
    outcome = WorkloadOutcome()
    parse_workload_line(line, outcome)
    assert not outcome.done and outcome.bad_pages == 0


def test_corrupt_lines_are_capped() -> None:
    outcome = WorkloadOutcome()
    for page in range(1000):
        parse_workload_line(f"corrupt page={page} pass=1 " + "z" * 10_000, outcome)
    assert len(outcome.corrupt) == MAX_CORRUPT_LINES and all(len(line) <= 500 for line in outcome.corrupt)
