"""The HTML report in a real browser: Debian's Chromium, headless, offline.

The reports of two fixture records, the two-kernel campaign and the comparison campaign
(variants against a baseline: its Comparison table, and the baseline's median drawn
across the per-figure plots with its name beside them), are written with
``write_reports`` and each opened from disk twice: once to dump the DOM after load, with
a probe script (added to a copy, never to the report) that records each image's decoded
width, so a PNG the browser could not decode shows as 0; once for a screenshot, kept in
the test's tmp_path, printed and attached to the test's ``user_properties`` for a person
to look at."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from orchestrator.reports import write_reports
from tests.conftest import require_tools

pytestmark = pytest.mark.integration

RESULTS = Path(__file__).resolve().parents[1] / "fixtures" / "results"
# Each record and how many plots its page holds.
RECORDS = {
    "pair": ("pair-result.json", 21),  # 6 nodes x (swap, memory) + 9 figures per kernel
    "ab": ("ab-result.json", 27),  # 9 nodes x (swap, memory) + 9 figures per kernel and variant
}
WIDTH, HEIGHT = 1280, 2400
PROBE = (
    "<script>window.addEventListener('load', () => { for (const img of document.images)"
    " img.dataset.decoded = String(img.naturalWidth); });</script>"
)


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run on its own profile (no state shared with another run)."""
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each record's HTML report on disk, written once."""
    require_tools(("chromium",))
    return {
        name: write_reports(json.loads((RESULTS / file).read_text()), tmp_path_factory.mktemp(f"report-{name}"))["html"]
        for name, (file, _) in RECORDS.items()
    }


@pytest.fixture(params=sorted(RECORDS))
def report(request: pytest.FixtureRequest, written: dict[str, Path]) -> tuple[Path, int]:
    """One record's HTML report, and how many plots it holds."""
    return written[request.param], RECORDS[request.param][1]


def test_chromium_decodes_every_plot(report: tuple[Path, int], tmp_path: Path) -> None:
    page, count = report
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    # The virtual-time budget lets the page finish loading (and the probe run) before the dump.
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    plots = re.findall(r'<img class="plot[^"]*" id="([^"]+)"[^>]*data-decoded="(\d+)"', dom)
    assert len(plots) == count, dom[:2000]
    assert all(int(width) > 300 for _, width in plots), plots
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', dom):
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_the_comparison_table_and_baseline_legends_reach_the_browser(written: dict[str, Path], tmp_path: Path) -> None:
    """The comparison campaign's table and its baseline legends are in the DOM Chromium built."""
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", written["ab"].as_uri()).stdout
    assert '<section id="comparison">' in dom and "badge v-regression" in dom
    assert re.search(r'<ul class="refs" id="baseline-dist-swap_in_mibps"><li>.*?baseline base: ', dom)


def test_screenshot_of_the_report(report: tuple[Path, int], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    page, _ = report
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri())
    print(f"screenshot of the HTML report: {shot}")
    request.node.user_properties.append(("screenshot", str(shot)))
    assert shot.stat().st_size > 50_000
    with Image.open(shot) as image:
        assert image.size == (WIDTH, HEIGHT)
        # A blank or error page has a handful of colours; the report's plots have hundreds.
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 200
        # Content all the way down the first screen: no band of the page is one colour.
        for top in range(0, HEIGHT, HEIGHT // 4):
            band = image.crop((0, top, WIDTH, top + HEIGHT // 4)).convert("L")
            assert ImageStat.Stat(band).stddev[0] > 10, f"the band at y={top} is flat"
