"""Campaign reports (orchestrator/reports): text, HTML, JUnit XML and JSON from a record.

Three records: ``pair-result.json``, a campaign of today's shape with two kernels (one a
patched build), a redone run, a run refused before any node ran, a failing critical
criterion, an invalid warning and a skipped run; ``smoke-old-result.json``, a real
record written before figures, series and kernel_info existed, kept untouched; and
``ab-result.json``, the real record of the e2e A/B campaign (tests/e2e/test_regression.py,
2026-11-29, kept untouched): one kernel, variants base, same and pc0 (vm.page-cluster=0)
run interleaved, baseline base, primary figure swap_in_mibps; pc0 regressed (-58.6 %),
same did not change.
"""

from __future__ import annotations

import base64
import copy
import io
import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from PIL import Image

from model.result import Campaign, Settings
from orchestrator.reports import FILES, FORMATS, RecordError, plots, render, write_reports
from orchestrator.reports.html import render_html
from orchestrator.reports.junit import render_junit
from orchestrator.reports.tables import settings_lines
from orchestrator.reports.text import render_text
from orchestrator.reports.view import (
    Reference,
    baseline_references,
    campaign_of,
    distribution,
    figure_specs,
    fmt_figure,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NEW = FIXTURES / "results" / "pair-result.json"
OLD = FIXTURES / "results" / "smoke-old-result.json"
AB = FIXTURES / "results" / "ab-result.json"
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
    assert "console said this" in text  # the whole sequence goes, not only its ESC


def test_an_attempt_above_one_is_marked_even_without_recorded_reasons() -> None:
    record = load(OLD)
    record["runs"][0]["attempt"] = 2
    text = render_text(record)
    assert "pass (attempt 2)" in text
    assert "attempt 2: redone; why the earlier attempt(s) ended was not recorded" in flat(text)


def test_settings_read_the_contract_and_the_campaign_shape_of_nfs() -> None:
    contract = {"nfs": {"version": "4.1", "options": "hard,timeo=600", "backend": "ganesha"}, "swap_mib": 512}
    campaign = {"nfs": {"version": "4.2", "mount_options": ["soft", "timeo=50"]}, "sysctl": {"vm.swappiness": 60}}
    assert settings_lines(Settings.model_validate(contract)) == (
        "NFS 4.1 (ganesha), options hard,timeo=600",
        "swap file 512 MiB",
    )
    assert settings_lines(Settings.model_validate(campaign)) == (
        "NFS 4.2, options soft,timeo=50",
        "sysctl vm.swappiness=60",
    )


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


def test_a_record_of_the_oldest_shape_loads_and_renders(schema: xmlschema.XMLSchema) -> None:
    """No figures, series, kernel_info, redone, reproduce or window; a run refused before any
    node ran (``nodes: []``): every format renders it from the schema's defaults."""
    record = load(OLD)
    refused = {"run_id": "r002", "kernel": "r002 linux-image-amd64 / overcommit #2", "verdict": "invalid"}
    record["runs"].append(refused | {"exit_code": 4, "nodes": [], "reasons": ["no node was free"]})
    for absent in ("figures", "series", "kernel_info", "redone", "reproduce"):
        assert absent not in json.dumps(record), absent
    outputs = {fmt: render(record, fmt) for fmt in FORMATS}
    text = flat(outputs["text"])
    assert "6.1.0-57-amd64 (runs r001, r002)" in text  # the refused run joins its kernel by name
    assert "r002 6.1.0-57-amd64 overcommit #2: invalid, exit 4 (invalid) no node was free no node ran" in text
    assert "none recorded (this record predates figures)" in text
    schema.validate(outputs["junit"])
    assert junit_counts(outputs["junit"]) == {"testsuite": 2, "testcase": 2, "failure": 0, "error": 1, "skipped": 0}
    assert "no node ran" in outputs["html"] and plots_in(outputs["html"]) == []
    assert json.loads(outputs["json"]) == record


def partial_records() -> list[dict[str, Any]]:
    """Records with every optional part missing, null or empty, as an older swaplab or a
    run refused early leaves them: the schema gives them their defaults."""
    full = load(NEW)
    node = copy.deepcopy(full["runs"][0]["nodes"][0])
    node["figures"] = {"swap_out_mibps": {"value": None, "unit": "MiB/s"}, "psi_full_share": {"value": math.nan}}
    node["series"] = {"t": [0.0, 1.0, 2.0], "swap_out_mibps": [1.0, None, 3.0], "mem_free_mib": []}
    node["criteria"] = [{"name": "c", "outcome": "fail", "value": None, "threshold": None}]
    empty_series = copy.deepcopy(node) | {"node": "node2", "series": {key: [] for key in node["series"]}}
    return [
        {"campaign_id": "c", "runs": []},
        {"campaign_id": "c", "runs": [], "skipped_runs": None, "verdict": None, "reproduce": None},
        {"campaign_id": "c", "runs": [{"run_id": "r001", "nodes": [], "window": None, "verdict": "invalid"}]},
        {
            "campaign_id": "c",
            "runs": [{"run_id": "r001", "nodes": [node, empty_series], "window": None, "redone": [{}], "attempt": 2}],
        },
        {
            "campaign_id": "c",
            "runs": [
                {
                    "run_id": "r001",
                    "nodes": [{"node": "n"}],
                    "kernel_info": {"patches": None},
                    "settings": {"nfs": None},
                }
            ],
            "skipped_runs": [{"run_id": "r002"}],
        },
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("partial", partial_records(), ids=lambda r: f"keys:{','.join(sorted(r))}")
def test_partial_records_render_without_crashing(
    partial: dict[str, Any], fmt: str, schema: xmlschema.XMLSchema
) -> None:
    out = render(partial, fmt)
    assert out.endswith("\n")
    if fmt == "junit":
        schema.validate(out)
    if fmt == "text":
        assert max(len(line) for line in out.splitlines()) <= 80


def test_a_non_finite_figure_reads_as_missing() -> None:
    """A schema-valid float may be NaN or infinite: the reports show no such number."""
    record = load(OLD)
    record["runs"][0]["nodes"][0]["figures"] = {"swap_out_mibps": {"value": math.inf}, "swap_in_mibps": {"value": 5.0}}
    text = render_text(record)
    assert re.search(r"^r001  node1  6\.1\.0-57-amd64  pass +- +5$", text, re.M) and "inf" not in text
    assert [values for _, values, _ in distribution(campaign_of(record), "swap_out_mibps")] == []


def malformed_records() -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """Records the schema refuses, each with the fields its error must name."""
    old = load(OLD)
    node = old["runs"][0]["nodes"][0]
    bad_figure = copy.deepcopy(old)
    bad_figure["runs"][0]["nodes"][0] = node | {"figures": {"new_figure": {"value": "x"}}}
    bad_series = copy.deepcopy(old)
    bad_series["runs"][0]["nodes"][0] = node | {"series": {"t": [0.0], "psi_full_avg10": None}}
    return [
        ({}, ("record: ", "campaign_id: Field required", "runs: Field required")),
        ({"campaign_id": "c", "runs": None}, ("runs: Field required",)),
        (bad_figure, ("runs.0.nodes.0.figures.new_figure.value",)),
        (bad_series, ("runs.0.nodes.0.series.psi_full_avg10",)),
        ({"campaign_id": "c", "runs": [{"nodes": [{}]}]}, ("runs.0.run_id", "runs.0.nodes.0.node")),
        (old | {"runs": [old["runs"][0] | {"attempt": "second"}]}, ("runs.0.attempt",)),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("record", "fields"), malformed_records(), ids=lambda v: ",".join(v) if isinstance(v, tuple) else None
)
def test_a_record_the_schema_refuses_is_refused_naming_each_wrong_field(
    record: dict[str, Any], fields: tuple[str, ...], fmt: str
) -> None:
    with pytest.raises(RecordError) as refused:
        render(record, fmt)
    message = str(refused.value)
    assert "does not match result.json's schema" in message
    for field in fields:
        assert field.removeprefix("record: ") in message, field


def test_write_reports_refuses_a_malformed_record_before_writing(tmp_path: Path) -> None:
    record = load(OLD)
    record["runs"][0]["nodes"][0]["figures"] = {"swap_out_mibps": {"value": "fast"}}
    with pytest.raises(RecordError, match=r"smoke-20261129-231308-3f6f .*runs\.0\.nodes\.0\.figures\.swap_out_mibps"):
        write_reports(record, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_not_a_json_object_is_refused() -> None:
    with pytest.raises(RecordError, match="expected a JSON object, got list"):
        render_text([])  # type: ignore[arg-type]


def test_a_validated_campaign_renders_as_its_mapping_does() -> None:
    record = load(NEW)
    campaign = Campaign.model_validate(record)
    for fmt in ("text", "junit"):
        assert render(campaign, fmt) == render(record, fmt)
    assert json.loads(render(campaign, "json")) == campaign.model_dump(mode="json")


def test_write_reports_writes_every_format_atomically(tmp_path: Path) -> None:
    record = load(OLD)
    written = write_reports(record, tmp_path / "results")
    assert written == {fmt: tmp_path / "results" / FILES[fmt] for fmt in FORMATS}
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(FILES.values())  # no temp file left
    assert written["text"].read_text() == render_text(record)
    assert json.loads(written["json"].read_text()) == record
    assert written["html"].stat().st_mode & 0o044 == 0o044  # readable by a web server or CI agent


def test_records_without_comparisons_show_none_of_their_parts(record: dict[str, Any], text: str, page: str) -> None:
    titles = [line for line, under in itertools.pairwise(text.splitlines()) if set(under) == {"-"}]
    assert titles == ["Kernels", "Setup", "Figures", "Verdicts", "Skipped runs", "Reproduce"]
    assert not re.search(r"^why ", text, re.M)
    assert 'id="comparison"' not in page and "baseline-dist-" not in page and "v-regression" not in page
    assert "Figures per kernel</h2>" in page
    assert "comparison" not in render_junit(record)


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        render({}, "pdf")


# -- a comparison campaign --------------------------------------------------------------


@pytest.fixture(scope="module")
def ab() -> dict[str, Any]:
    return load(AB)


@pytest.fixture(scope="module")
def ab_text(ab: dict[str, Any]) -> str:
    return render_text(ab)


@pytest.fixture(scope="module")
def ab_page(ab: dict[str, Any]) -> str:
    """The HTML report of the comparison campaign, rendered once (~2 s of plots)."""
    return render_html(ab)


def comparison_entry(record: dict[str, Any], candidate: str) -> dict[str, Any]:
    """The record's comparison of ``candidate`` (exactly one)."""
    found: list[dict[str, Any]] = [c for c in record["comparisons"] if c["candidate"] == candidate]
    [entry] = found
    return entry


def primary_of(entry: dict[str, Any]) -> dict[str, Any]:
    """The comparison's figure that decided its verdict."""
    found: list[dict[str, Any]] = [f for f in entry["figures"] if f["figure"] == entry["primary"]]
    [figure] = found
    return figure


def test_text_has_a_comparison_section_after_the_figures(ab: dict[str, Any], ab_text: str) -> None:
    lines = ab_text.splitlines()
    assert lines.index("Figures") < lines.index("Comparison") < lines.index("Verdicts")
    assert "pc0 vs base (small): REGRESSION (decided by swap_in_mibps)" in lines
    assert "same vs base (small): NO CHANGE (decided by swap_in_mibps)" in lines
    section = flat(ab_text[ab_text.index("Comparison\n") : ab_text.index("Verdicts\n")])
    pc0 = comparison_entry(ab, "pc0")
    assert f"REGRESSION (decided by swap_in_mibps) {primary_of(pc0)['summary']} reported only" in section
    for figure in pc0["figures"]:  # every other figure with its outcome, marked reported only
        assert figure["summary"] in section, figure["figure"]
    assert section.count("reported only, not deciding the verdict:") == 2
    assert "Rule: the verdict is swap_in_mibps's outcome alone" in section


def test_text_gives_the_campaign_reasons_by_its_verdict(ab: dict[str, Any], ab_text: str) -> None:
    [reason] = ab["reasons"]
    header = flat(ab_text[: ab_text.index("\nid ")])
    assert header.endswith(f"verdict FAIL, exit 3 (criteria fail) why {reason}")


def too_wide(text: str) -> list[str]:
    """Lines over 80 columns, but for one the report may not break: a label and a path or
    hash longer than the width (kept whole, and greppable)."""
    return [line for line in text.splitlines() if len(line) > 80 and len(line.split()) > 2]


def test_comparison_text_fits_a_mail_reply(ab: dict[str, Any], ab_text: str) -> None:
    section = ab_text[ab_text.index("Comparison\n") : ab_text.index("Verdicts\n")]
    assert max(len(line) for line in section.splitlines()) <= 80
    # The only wider line: this record's results directory, a pytest tmp path of 79 characters.
    assert too_wide(ab_text) == []
    assert [line for line in ab_text.splitlines() if len(line) > 80] == [f"results   {ab['result_dir']}"]
    assert "\t" not in ab_text and ab_text.endswith("\n") and not ab_text.endswith("\n\n")


def test_a_variant_campaign_runs_one_kernel_on_sides_by_variant(ab: dict[str, Any], ab_text: str) -> None:
    assert "6.1.0-57-amd64 (runs r001, r002, r003, r004, r005, r006, r007, r008, r009)" in ab_text
    assert re.search(r"^r003  node1  6\.1\.0-57-amd64 \[pc0\] +pass ", ab_text, re.M)
    sides = distribution(campaign_of(ab), "swap_in_mibps")
    # Named as the comparisons name them: the kernel as the campaign does, then the variant.
    assert [side for side, _, _ in sides] == [("linux-image-amd64", name) for name in ("base", "same", "pc0")]
    assert [(len(passed), others) for _, passed, others in sides] == [(3, [])] * 3


def test_html_tabulates_each_comparison_figure_by_figure(ab: dict[str, Any], ab_page: str) -> None:
    section = ab_page[ab_page.index('<section id="comparison">') : ab_page.index('<section id="distributions">')]
    assert ab_page.index('<section id="figures">') < ab_page.index('<section id="comparison">')
    assert len(re.findall(r"<tr><td", section)) == 2 * 9  # two comparisons x nine figures
    pc0 = primary_of(comparison_entry(ab, "pc0"))
    low, high = ((pc0[key] - 1) * 100 for key in ("ci_low", "ci_high"))
    row = (
        '<tr><td class="text">pc0</td><td class="text">base</td><td class="text">small</td>'
        '<td><span class="badge v-regression">regression</span></td>'
        '<td class="text">swap_in_mibps (decides)</td>'
        f'<td class="number">{fmt_figure(pc0["median_a"])} \u2192 {fmt_figure(pc0["median_b"])} MiB/s</td>'
        f'<td class="number">{pc0["change_pct"]:+.1f} %</td><td class="number">{low:+.1f} .. {high:+.1f} %</td>'
        '<td><span class="badge v-regression">regression</span></td>'
    )
    assert row in section
    verdicts = [entry["verdict"] for entry in ab["comparisons"]]
    outcomes = verdicts + [figure["outcome"] for entry in ab["comparisons"] for figure in entry["figures"]]
    for outcome, css in (("no change", "v-no"), ("improvement", "v-improvement"), ("regression", "v-regression")):
        assert section.count(f'class="badge {css}">{outcome}</span>') == outcomes.count(outcome) > 0
    assert escape(ab["reasons"][0]) in ab_page[: ab_page.index("</header>")]


def test_html_draws_each_baseline_median_across_the_plots(ab: dict[str, Any], ab_page: str) -> None:
    ids = plots_in(ab_page)
    assert len(ids) == len(set(ids)) == 2 * 9 + 9  # swap + memory per run's node, one per figure: none added
    assert "Figures per kernel and variant</h2>" in ab_page and "Dashed lines: each baseline's median" in ab_page
    pc0 = comparison_entry(ab, "pc0")
    for figure in pc0["figures"]:  # beside each plot, the line's name and value
        legend = re.search(rf'<ul class="refs" id="baseline-dist-{figure["figure"]}">(.*?)</ul>', ab_page)
        assert legend is not None, figure["figure"]
        assert f"baseline base: {fmt_figure(figure['median_a'])} {figure['unit']}</li>" in legend.group(1)
    assert baseline_references(campaign_of(ab), "swap_in_mibps") == [
        Reference("baseline base", primary_of(pc0)["median_a"])
    ]
    # The dashed line runs across the plot; the same plot without a baseline has none.
    assert orange_line_width(png_of(ab_page, "plot-dist-swap_in_mibps")) > 0.6
    [spec] = [spec for spec in figure_specs(campaign_of(ab)) if spec.name == "swap_in_mibps"]
    bare = plots.distribution_plot(spec, distribution(campaign_of(ab), "swap_in_mibps"))
    assert bare is not None and orange_line_width(bare) == 0


def test_a_kernel_comparison_names_its_sides_as_its_comparisons_do(record: dict[str, Any]) -> None:
    """``baseline: {kernel: ...}``: the plots' sides and the baseline line carry the campaign's
    names for the kernels (a record without ``kernel_label`` gives them in its run labels)."""
    entry: dict[str, Any] = {"baseline": "linux-image-amd64", "candidate": "build swaplab-nfs-swap", "axis": "kernel"}
    entry |= {"workload": "overcommit", "verdict": "no change", "primary": "swap_out_mibps"}
    entry["figures"] = [{"figure": "swap_out_mibps", "median_a": 10.8, "median_b": 12.9, "outcome": "no change"}]
    compared = record | {"comparisons": [entry]}
    sides = [side for side, _, _ in distribution(campaign_of(compared), "swap_out_mibps")]
    assert sides == [("linux-image-amd64",), ("build swaplab-nfs-swap",)]
    assert baseline_references(campaign_of(compared), "swap_out_mibps") == [
        Reference("baseline linux-image-amd64", 10.8)
    ]
    assert baseline_references(campaign_of(compared), "swap_in_mibps") == []  # no baseline median for it: no line
    assert "build swaplab-nfs-swap vs linux-image-amd64 (overcommit): NO CHANGE" in render_text(compared)


def test_an_instance_comparison_draws_the_other_campaigns_median(ab: dict[str, Any]) -> None:
    """``baseline: last-pass``: the baseline is another campaign, only its medians are known."""
    record = copy.deepcopy(ab)
    entry = comparison_entry(record, "pc0") | {"axis": "instance", "candidate": record["campaign_id"]}
    entry["baseline"] = "ab-20261129-230000-1a2b"
    del entry["kernel"]
    record["comparisons"] = [entry]
    record["runs"] = [run | {"nodes": [run["nodes"][0] | {"series": {}}]} for run in record["runs"][2::3]]
    median = primary_of(entry)["median_a"]
    assert baseline_references(campaign_of(record), "swap_in_mibps") == [
        Reference("baseline ab-20261129-230000-1a2b", median)
    ]
    text = render_text(record)
    assert f"{record['campaign_id']} vs ab-20261129-230000-1a2b (small): REGRESSION" in flat(text)
    assert too_wide(text) == []
    page = render_html(record)
    assert f"baseline ab-20261129-230000-1a2b: {fmt_figure(median)} MiB/s</li>" in page
    assert orange_line_width(png_of(page, "plot-dist-swap_in_mibps")) > 0.6


def test_several_cells_name_their_baseline_lines(ab: dict[str, Any]) -> None:
    """Comparisons in two workloads: one line per workload's baseline, each named by it."""
    record = copy.deepcopy(ab)
    other = copy.deepcopy(comparison_entry(record, "pc0")) | {"workload": "large"}
    for figure in other["figures"]:
        figure["median_a"] = None if figure["median_a"] is None else figure["median_a"] * 2
    record["comparisons"].append(other)
    labels = [reference.label for reference in baseline_references(campaign_of(record), "swap_in_mibps")]
    assert labels == ["baseline base (small)", "baseline base (large)"]


# -- JUnit of a comparison campaign -----------------------------------------------------


def test_junit_has_a_comparison_suite_valid_against_jenkins_schema(
    ab: dict[str, Any], schema: xmlschema.XMLSchema
) -> None:
    xml = render_junit(ab)
    schema.validate(xml)
    assert junit_counts(xml) == {"testsuite": 9 + 1, "testcase": 9 + 2, "failure": 1, "error": 0, "skipped": 0}
    suite = ET.fromstring(xml).find("testsuite[@name='ab-page-cluster.comparison']")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failure = suite.find("testcase[@name='pc0 vs base (small)']/failure")
    assert failure is not None and failure.get("type") == "regression"
    pc0 = comparison_entry(ab, "pc0")
    assert failure.get("message") == f"decided by {primary_of(pc0)['summary']}"
    lines = (failure.text or "").splitlines()
    assert len(lines) == 9 and all(line.startswith("reported only: ") for line in lines[1:])
    passed = suite.find("testcase[@name='same vs base (small)']")
    assert passed is not None and passed.find("failure") is None and passed.find("error") is None
    assert "no change" in (passed.findtext("system-out") or "")
    assert ET.fromstring(xml).find(".//testcase[@name='6.1.0-57-amd64 [pc0] on node1']") is not None


def test_junit_insufficient_data_is_an_error(ab: dict[str, Any], schema: xmlschema.XMLSchema) -> None:
    record = copy.deepcopy(ab)
    for entry in record["comparisons"]:
        entry["verdict"] = "insufficient data"
    xml = render_junit(record)
    schema.validate(xml)
    suite = ET.fromstring(xml).find("testsuite[@name='ab-page-cluster.comparison']")
    assert suite is not None and (suite.get("failures"), suite.get("errors")) == ("0", "2")
    error = suite.find("testcase/error")
    assert error is not None and error.get("type") == "insufficient data"


def test_a_comparison_record_without_its_comparisons_renders_as_before_them(ab: dict[str, Any]) -> None:
    record = {key: value for key, value in ab.items() if key not in ("comparisons", "reasons")}
    text, junit = render_text(record), render_junit(record)
    assert "Comparison" not in text and "\nwhy " not in text and "comparison" not in junit


def partial_comparisons() -> list[dict[str, Any]]:
    """Comparison parts missing, null or empty, as an older or a future record may have them."""
    return [
        {"comparisons": None, "reasons": None},
        {"comparisons": [{}], "reasons": ["", 3]},
        {
            "comparisons": [
                {"figures": None, "method": None, "verdict": "regression"},
                {"figures": [{"figure": "x", "ci_low": 0.5, "ci_high": None, "change_pct": math.nan}], "primary": "x"},
                {"figures": [{"figure": "y", "scale": "difference", "difference": 0.2, "ci_low": -0.1}]},
            ]
        },
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("partial", partial_comparisons())
def test_partial_comparisons_render_without_crashing(
    partial: dict[str, Any], fmt: str, schema: xmlschema.XMLSchema
) -> None:
    out = render(load(OLD) | partial, fmt)
    if fmt == "junit":
        schema.validate(out)
    if fmt == "text":
        assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.parametrize(
    ("partial", "field"),
    [
        ({"comparisons": [{}, None]}, "comparisons.1: Input should be a valid dictionary"),
        ({"comparisons": ["x"]}, "comparisons.0: Input should be a valid dictionary"),
        ({"reasons": ["", None]}, "reasons.1: Input should be a valid string"),
        ({"comparisons": [{"figures": [{}]}]}, "comparisons.0.figures.0.figure: Field required"),
        ({"comparisons": [{"figures": [{"figure": "x", "change_pct": "a"}]}]}, "comparisons.0.figures.0.change_pct"),
    ],
)
def test_malformed_comparisons_are_refused_naming_the_field(partial: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError, match=re.escape(field)):
        render(load(OLD) | partial, "text")


def png_of(page: str, ident: str) -> bytes:
    found = re.search(rf'id="{ident}"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert found is not None, ident
    return base64.b64decode(found.group(1))


def orange_line_width(png: bytes) -> float:
    """The widest horizontal run of the baseline line's orange (anti-aliased: a blend of
    ORANGE and white), as a share of the image's width."""
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        pixels = rgb.load()
        assert pixels is not None
        rows = [[x for x in range(width) if _orange(pixels[x, y])] for y in range(height)]
    spans = [row[-1] - row[0] for row in rows if len(row) > 20]
    return max(spans, default=0) / width


def _orange(pixel: Any) -> bool:
    """ORANGE (#E69F00), alone or blended with up to about a third of white."""
    red, green, blue = pixel[:3]
    return bool(red > 200 and 140 <= green <= 200 and blue < 110)


def test_a_bisection_step_says_which_bisection_ran_it(record: dict[str, Any]) -> None:
    step = {**copy.deepcopy(record), "bisection": "bisect-pc-20261205-033926-a7ac"}
    said = "a step of bisect-pc-20261205-033926-a7ac (swaplab bisect --status bisect-pc-20261205-033926-a7ac)"
    assert said in flat(render_text(step))
    assert escape(said) in render_html(step)
    assert "a step of" not in flat(render_text(record))  # a campaign of its own says nothing
