"""What the tests compare the deploy/ files against: the metric names the worker's
exporter can expose, and the real promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workers import exporter

REPO = Path(__file__).resolve().parents[1]

# Run in a child process: collecting the live REGISTRY counts as a scrape of the node
# collector, which would make NODES.finish() wait for Prometheus in later tests.
_COLLECT = """
import json
from workers.exporter import REGISTRY

families = []
for family in REGISTRY.collect():
    families.append({"name": family.name, "type": family.type, "samples": [s.name for s in family.samples]})
print(json.dumps(families))
"""
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("_count", "_sum"),
}


def promtool() -> str:
    """The real promtool (Debian's prometheus package): missing is a failure, never a skip."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: it is needed to validate deploy/prometheus "
            "(install it with `apt-get install prometheus`, Debian's package ships /usr/bin/promtool)"
        )
    return path


def exported_metrics() -> set[str]:
    """Every sample name the worker's exporter can expose, from its constants and its registry."""
    names = {f"{name}_total" for name in exporter.NODE_COUNTERS}
    names |= set(exporter.NODE_GAUGES)
    names |= {f"{exporter.CONSOLE_EVENTS}_total", f"{exporter.SAMPLES}_total"}
    names |= {exporter.SAMPLE_AGE, exporter.WORKLOAD_PROGRESS, exporter.WORKLOAD_DONE, exporter.PHASE}
    result = subprocess.run(
        [sys.executable, "-c", _COLLECT], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"collecting workers.exporter.REGISTRY failed:\n{result.stderr}"
    for family in json.loads(result.stdout):
        # A labelled metric without children has no samples yet: derive its sample names.
        names.add(family["name"])
        names |= {family["name"] + suffix for suffix in _SUFFIXES.get(family["type"], ())}
        names |= set(family["samples"])
    return names
