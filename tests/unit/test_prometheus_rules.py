"""deploy/prometheus stays valid and in step with the exporter: the real promtool checks the
config and the recording rules and runs the rules' unit tests, and every metric the rules
read is one that workers.exporter exports (a rename in the exporter fails here, not on a
dashboard that silently goes blank)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.metric_names import exported_metrics, promtool
from workers import exporter

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules" / "swaplab.rules.yml"
RULE_TESTS = PROMETHEUS / "tests" / "swaplab.rules.test.yml"

# A raw metric name: not part of a recorded name such as lab_node:swaplab_x:rate10s.
METRIC_NAME = re.compile(r"(?<![a-zA-Z0-9_:])swaplab_[a-z0-9_]+(?![a-zA-Z0-9_:])")
# level:metric:operations (https://prometheus.io/docs/practices/rules/).
RECORD_NAME = re.compile(r"^[a-z_]+:swaplab_[a-z0-9_]+:[a-z0-9_]+$")
NODE_LABELS = set(exporter.NODE_LABELS)


def run_promtool(*args: str) -> str:
    result = subprocess.run([promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} exited {result.returncode}:\n{output}"
    return output


def recording_rules() -> list[dict[str, str]]:
    data = yaml.safe_load(RULES.read_text())
    assert isinstance(data, dict) and data.get("groups"), f"{RULES} has no rule groups"
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    assert rules, f"{RULES} has no rules"
    return rules


def referenced_metrics(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metrics()


def test_promtool_accepts_the_config() -> None:
    # The file_sd glob matches no file in the repo: promtool only warns about it.
    output = run_promtool("check", "config", str(CONFIG.relative_to(REPO)))
    assert "SUCCESS" in output, output


def test_promtool_accepts_the_rules() -> None:
    output = run_promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert f"SUCCESS: {len(recording_rules())} rules found" in output, output


def test_promtool_rule_unit_tests_pass() -> None:
    output = run_promtool("test", "rules", str(RULE_TESTS.relative_to(REPO)))
    assert "SUCCESS" in output and "FAILED" not in output, output


def test_config_loads_the_rules_and_scrapes_the_workers() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "1s"
    assert config["global"]["evaluation_interval"] == "1s"
    matched = {path.resolve() for pattern in config["rule_files"] for path in CONFIG.parent.glob(pattern)}
    assert RULES.resolve() in matched, config["rule_files"]
    assert RULE_TESTS.resolve() not in matched, "the rules' unit tests must not be loaded as rules"
    (job,) = (job for job in config["scrape_configs"] if job["job_name"] == "swaplab-workers")
    assert ["worker:9464"] in [static["targets"] for static in job["static_configs"]]
    assert any("targets/*.json" in sd["files"] for sd in job["file_sd_configs"])


def test_rules_read_only_metrics_the_exporter_exports(exported: set[str]) -> None:
    unknown: dict[str, list[str]] = {}
    for rule in recording_rules():
        names = referenced_metrics(rule["expr"])
        assert names, f"{rule['record']} reads no swaplab_ metric: {rule['expr']}"
        if names - exported:
            unknown[rule["record"]] = sorted(names - exported)
    assert not unknown, f"rules read metrics that workers.exporter does not export: {unknown}"


def test_exported_names_come_from_the_exporter(exported: set[str]) -> None:
    # Guards the check above from passing vacuously.
    assert "swaplab_node_swap_out_bytes_total" in exported
    assert "swaplab_node_memory_available_bytes" in exported
    assert {"swaplab_runs_total", "swaplab_node_boot_seconds_bucket", "swaplab_leases_held"} <= exported
    assert "swaplab_node_swap_out_byte_total" not in exported


def test_metric_name_parsing_skips_recorded_names() -> None:
    expr = (
        "sum without (instance, job) (rate(swaplab_node_nfs_rpc_calls_total[30s]))"
        " / lab_node:swaplab_node_major_faults:rate10s > 0 and on() swaplab_leases_held{lab='x'}"
    )
    assert referenced_metrics(expr) == {"swaplab_node_nfs_rpc_calls_total", "swaplab_leases_held"}


def test_record_names_follow_the_convention_and_are_unique() -> None:
    records = [rule["record"] for rule in recording_rules()]
    assert len(records) == len(set(records)), records
    for record in records:
        assert RECORD_NAME.match(record), f"{record} is not level:metric:operations"
        assert not record.split(":")[1].endswith("_total"), f"{record}: drop _total from a rate's name"


def test_rules_keep_the_node_labels() -> None:
    # Aggregations may drop the scrape's labels (instance, job), never a node label.
    for rule in recording_rules():
        for kind, labels in re.findall(r"\b(by|without)\s*\(([^)]*)\)", rule["expr"]):
            listed = {label.strip() for label in labels.split(",") if label.strip()}
            dropped = NODE_LABELS - listed if kind == "by" else NODE_LABELS & listed
            assert not dropped, f"{rule['record']} drops node labels {sorted(dropped)}: {rule['expr']}"


def test_every_recording_rule_has_a_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tested = {case["expr"].split("{", 1)[0].strip() for group in tests["tests"] for case in group["promql_expr_test"]}
    untested = {rule["record"] for rule in recording_rules()} - tested
    assert not untested, f"recording rules without a promql_expr_test: {sorted(untested)}"
