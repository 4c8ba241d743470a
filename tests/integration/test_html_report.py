"""The HTML report in a real browser: Debian's Chromium, headless, offline.

The report of the two-kernel fixture record is written with ``write_reports`` and opened
from disk twice: once to dump the DOM after load, with a probe script (added to a copy,
never to the report) that records each image's decoded width, so a PNG the browser could
not decode shows as 0; once for a screenshot, kept in the test's tmp_path, printed and
attached to the test's ``user_properties`` for a person to look at.
"""

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

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "pair-result.json"
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
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools(("chromium",))
    out = tmp_path_factory.mktemp("report")
    return write_reports(json.loads(RECORD.read_text()), out)["html"]


def test_chromium_decodes_every_plot(report: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    # The virtual-time budget lets the page finish loading (and the probe run) before the dump.
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    plots = re.findall(r'<img class="plot[^"]*" id="([^"]+)"[^>]*data-decoded="(\d+)"', dom)
    assert len(plots) == 21, dom[:2000]  # 6 nodes x (swap, memory) + 9 figures per kernel
    assert all(int(width) > 300 for _, width in plots), plots
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', dom):
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_screenshot_of_the_report(report: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", report.as_uri())
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
