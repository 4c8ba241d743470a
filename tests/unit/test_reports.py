"""Campaign reports (orchestrator/reports): text, HTML, JUnit XML and JSON from a record.

Two records: ``pair-result.json``, a campaign of today's shape with two kernels (one a
patched build), a redone run, a run refused before any node ran, a failing critical
criterion, an invalid warning and a skipped run; and ``smoke-old-result.json``, a real
record written before figures, series and kernel_info existed, kept untouched.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path
from typing import Any

import pytest
import xmlschema

from orchestrator.reports import FILES, FORMATS, render, write_reports
from orchestrator.reports.html import render_html
from orchestrator.reports.junit import render_junit
from orchestrator.reports.tables import settings_lines
from orchestrator.reports.text import render_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NEW = FIXTURES / "results" / "pair-result.json"
OLD = FIXTURES / "results" / "smoke-old-result.json"
XSD = FIXTURES / "junit" / "jenkins-junit.xsd"
REDONE = "attempt 2: worker lost during attempt 1: node task(s) for node1 stopped renewing their lease"
PATCHES = (
    "mm: swap: say when swap is activated",
    "nfs: direct: retry a swap-out write that failed with -ENOMEM instead of failing the page",
)


def load(path: Path) -> dict[str, Any]:
    """A fresh copy of a fixture record (tests may change it)."""
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def flat(text: str) -> str:
    """The text with its wrapping undone: one space between words."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    return load(NEW)


@pytest.fixture(scope="module")
def text(record: dict[str, Any]) -> str:
    return render_text(record)


@pytest.fixture(scope="module")
def page(record: dict[str, Any]) -> str:
    """The HTML report of the new record, rendered once (its plots take about a second)."""
    return render_html(record)


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(XSD)


# -- text -------------------------------------------------------------------------------


def test_text_names_the_kernels_their_source_artifact_and_patches(text: str) -> None:
    assert "6.1.0-57-amd64 (runs r001, r003)" in text
    assert "6.1.192-swaplab+ (runs r002, r004)" in text
    assert "package linux-image-amd64" in text
    assert "artifact  3f2a9c1b0d4e\n" in text  # the short hash, not all 64 digits
    for number, subject in enumerate(PATCHES, 1):
        assert f"{number}/2 {subject}" in flat(text)


def test_text_tabulates_every_run_and_nodes_figures_with_a_legend(text: str) -> None:
    rows = [line for line in text.splitlines() if re.match(r"r00[124]  node[12]  ", line)]
    assert len(rows) == 12  # 6 run x node rows, in the two blocks of the split table
    assert re.search(r"^r001  node1  6\.1\.0-57-amd64 +pass +10\.8 +6\.98 +33\.3$", text, re.M)
    assert re.search(r"^r002  node1  6\.1\.192-swaplab\+ +pass \(redone\)", text, re.M)
    assert "out MiB/s: swap-out throughput (MiB/s), higher is better" in text
    assert "wall s: workload wall time (s), lower is better" in text
    assert "8.39!" in text and "Prometheus' differ" in text  # the one figure that disagrees


def test_text_gives_verdicts_with_their_evidence(text: str) -> None:
    flat_text = flat(text)
    assert "verdict FAIL, exit 3 (criteria fail)" in flat_text
    assert "r004 6.1.192-swaplab+ overcommit #2: fail, exit 3 (criteria fail)" in flat_text
    assert "criterion psi_full_limit (critical): fail: got 41.7, wanted <= 35; 41.7 <= 35 is false" in flat_text
    assert "criterion nfs_retrans_low (warning): invalid: got no data, wanted < 10" in flat_text
    assert "r003 6.1.0-57-amd64 overcommit #2: infra-error, exit 2 (bad input or infra)" in flat_text
    assert "node2 failed its health check (ssh: connection refused)" in flat_text
    assert "r005 linux-image-amd64 / overcommit #3 not started: a critical criterion failed in run r004" in flat_text
    # The judge's own wording of a criterion's reason is not repeated above its numbers.
    assert "psi_full_limit (critical): 41.7" not in flat_text


def test_text_never_shows_a_redone_run_as_a_plain_pass(text: str) -> None:
    assert REDONE in flat(text)
    assert "r002  6.1.192-swaplab+  overcommit #1: pass (attempt 2), exit 0" in text.splitlines()
    assert f"redone r002 {REDONE}" in flat(text)  # in the header too


def test_text_says_how_to_reproduce(text: str) -> None:
    assert "campaign file: campaigns/pair-patched.yaml" in text
    assert "  swaplab run campaigns/pair-patched.yaml" in text.splitlines()  # whole, pasteable


def test_text_fits_a_mail_reply(text: str) -> None:
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\t" not in text and "\x1b" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_text_strips_terminal_escapes_and_tabs_from_the_record() -> None:
    record = load(OLD)
    record["runs"][0]["nodes"][0]["verdict"] = "fail"
    record["runs"][0]["nodes"][0]["reasons"] = ["console\x1b[31m said\tthis\x07"]
    text = render_text(record)
    assert "\x1b" not in text and "\t" not in text and "\x07" not in text
    assert "console [31m said this" in text


def test_an_attempt_above_one_is_marked_even_without_recorded_reasons() -> None:
    record = load(OLD)
    record["runs"][0]["attempt"] = 2
    text = render_text(record)
    assert "pass (attempt 2)" in text
    assert "attempt 2: redone; why the earlier attempt(s) ended was not recorded" in flat(text)


def test_settings_read_the_contract_and_the_campaign_shape_of_nfs() -> None:
    contract = {"nfs": {"version": "4.1", "options": "hard,timeo=600", "backend": "ganesha"}, "swap_mib": 512}
    campaign = {"nfs": {"version": "4.2", "mount_options": ["soft", "timeo=50"]}, "sysctl": {"vm.swappiness": 60}}
    assert settings_lines(contract) == ("NFS 4.1 (ganesha), options hard,timeo=600", "swap file 512 MiB")
    assert settings_lines(campaign) == ("NFS 4.2, options soft,timeo=50", "sysctl vm.swappiness=60")


# -- JUnit ------------------------------------------------------------------------------


def junit_counts(xml: str) -> dict[str, int]:
    root = ET.fromstring(xml)
    return {tag: len(root.findall(f".//testcase/{tag}")) for tag in ("failure", "error", "skipped")} | {
        "testcase": len(root.findall(".//testcase")),
        "testsuite": len(root.findall("testsuite")),
    }


def test_junit_is_valid_against_jenkins_schema(record: dict[str, Any], schema: xmlschema.XMLSchema) -> None:
    xml = render_junit(record)
    schema.validate(xml)
    assert junit_counts(xml) == {"testsuite": 5, "testcase": 8, "failure": 1, "error": 1, "skipped": 1}
    root = ET.fromstring(xml)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("8", "1", "1")
    skipped = sum(int(suite.get("skipped", "0")) for suite in root.findall("testsuite"))
    assert skipped == 1


def test_junit_cases_are_run_x_node_with_evidence_kernel_and_redone_note(record: dict[str, Any]) -> None:
    root = ET.fromstring(render_junit(record))
    case = root.find(".//testcase[@name='6.1.192-swaplab+ on node2'][@classname='pair-patched.r004']")
    assert case is not None
    assert case.get("time") == f"{record['runs'][3]['nodes'][1]['phases_s']['workload']:.3f}"
    failure = case.find("failure")
    assert failure is not None and failure.get("type") == "fail"
    assert "criterion psi_full_limit (critical): fail: got 41.7, wanted <= 35" in (failure.text or "")
    redone = root.find(".//testcase[@classname='pair-patched.r002']/system-out")
    assert redone is not None and REDONE in (redone.text or "")
    suite = root.find("testsuite[@name='pair-patched.r002']")
    assert suite is not None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["kernel.release"] == "6.1.192-swaplab+"
    assert props["kernel.artifact"] == record["runs"][1]["kernel_info"]["artifact"]
    assert props["kernel.patch.2"] == PATCHES[1]
    refused = root.find(".//testcase[@classname='pair-patched.r003']")
    assert refused is not None and refused.get("name") == "6.1.0-57-amd64 (no node ran)"


# -- HTML -------------------------------------------------------------------------------


def plots_in(page: str) -> list[str]:
    return re.findall(r'<img class="plot[^"]*" id="([^"]+)"', page)


def test_html_is_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links)
    assert "<script" not in page and "@import" not in page and "url(" not in page


def test_html_has_the_expected_plots(record: dict[str, Any], page: str) -> None:
    sampled = [(run["run_id"], node["node"]) for run in record["runs"] for node in run["nodes"] if node["series"]["t"]]
    ids = plots_in(page)
    assert len(ids) == len(set(ids)) == 2 * len(sampled) + 9  # swap + memory per node, one per figure
    for run_id, node in sampled:
        assert {f"plot-swap-{run_id}-{node}", f"plot-memory-{run_id}-{node}"} <= set(ids)
    assert "plot-dist-swap_out_mibps" in ids and "plot-dist-tcp_retrans_per_s" in ids
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        png = base64.b64decode(data, validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_html_holds_the_same_tables_as_the_text(page: str) -> None:
    for expected in (
        "6.1.192-swaplab+",
        "3f2a9c1b0d4e",
        *PATCHES,
        REDONE,
        "criterion psi_full_limit (critical): fail: got 41.7, wanted <= 35",
        "not started: a critical criterion failed in run r004",
        "swaplab run campaigns/pair-patched.yaml",
        "out MiB/s: swap-out throughput (MiB/s), higher is better",
    ):
        assert escape(expected) in page, expected
    assert 'class="badge v-pass redone">pass (attempt 2)' in page


def test_html_escapes_every_string_of_the_record() -> None:
    record = load(OLD)
    hostile = "<script>alert(1)</script>"
    record["campaign"] = f"smoke{hostile}"
    record["runs"][0]["nodes"][0]["node"] = 'node1"><img src=x onerror=alert(1)>'
    record["runs"][0]["nodes"][0]["verdict"] = "fail"
    record["runs"][0]["nodes"][0]["reasons"] = [f"console line 7: {hostile}"]
    page = render_html(record)
    assert "<script" not in page and "<img src=x" not in page
    assert f"console line 7: {escape(hostile)}" in page


# -- old and partial records, every format --------------------------------------------


def test_the_old_record_renders_in_every_format(schema: xmlschema.XMLSchema) -> None:
    record = load(OLD)
    outputs = {fmt: render(record, fmt) for fmt in FORMATS}
    assert "none recorded (this record predates figures)" in outputs["text"]
    assert "6.1.0-57-amd64 (runs r001)" in outputs["text"]
    assert "  swaplab run campaigns/smoke.yaml" in outputs["text"].splitlines()
    schema.validate(outputs["junit"])
    assert junit_counts(outputs["junit"])["testcase"] == 1
    assert plots_in(outputs["html"]) == [] and "no samples recorded" in outputs["html"]
    assert json.loads(outputs["json"]) == record


def partial_records() -> list[dict[str, Any]]:
    """Records with every optional part missing, null or odd, as a hand-edited file has."""
    full = load(NEW)
    node = copy.deepcopy(full["runs"][0]["nodes"][0])
    node["figures"] = {"swap_out_mibps": {"value": None, "unit": "MiB/s"}, "new_figure": {"value": "x"}}
    node["series"] = {
        "t": [0.0, 1.0, 2.0],
        "swap_out_mibps": [1.0, None, 3.0],
        "mem_free_mib": [],
        "psi_full_avg10": None,
    }
    node["criteria"] = [{"name": "c", "outcome": "fail", "value": None, "threshold": None}]
    empty_series = copy.deepcopy(node) | {"series": {key: [] for key in node["series"]}}
    return [
        {},
        {"runs": None, "skipped_runs": None, "verdict": None, "reproduce": None},
        {"runs": [{"run_id": "r001", "nodes": [], "window": None, "verdict": "invalid", "exit_code": 4}]},
        {"runs": [{"run_id": "r001", "nodes": [node, empty_series], "window": None, "redone": [{}], "attempt": 2}]},
        {"runs": [{"nodes": [{}], "kernel_info": {"patches": None}, "settings": {"nfs": None}}], "skipped_runs": [{}]},
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("partial", partial_records(), ids=lambda r: f"keys:{','.join(sorted(r)) or 'none'}")
def test_partial_records_render_without_crashing(
    partial: dict[str, Any], fmt: str, schema: xmlschema.XMLSchema
) -> None:
    out = render(partial, fmt)
    assert out.endswith("\n")
    if fmt == "junit":
        schema.validate(out)
    if fmt == "text":
        assert max(len(line) for line in out.splitlines()) <= 80


def test_write_reports_writes_every_format_atomically(tmp_path: Path) -> None:
    record = load(OLD)
    written = write_reports(record, tmp_path / "results")
    assert written == {fmt: tmp_path / "results" / FILES[fmt] for fmt in FORMATS}
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(FILES.values())  # no temp file left
    assert written["text"].read_text() == render_text(record)
    assert json.loads(written["json"].read_text()) == record
    assert written["html"].stat().st_mode & 0o044 == 0o044  # readable by a web server or CI agent


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        render({}, "pdf")
