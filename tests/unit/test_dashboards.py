"""The Grafana provisioning and dashboards stay consistent with what the workers export:
every dashboard loads, every panel queries the provisioned data source, every metric it
names is one workers.exporter exports, and every query, once its variables are rendered,
is PromQL that the real promtool parses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dashboards import (
    ALL,
    ALL_VALUE,
    DATASOURCE_UID,
    REPO,
    SCRAPE_INTERVAL_S,
    dashboard_files,
    dashboard_queries,
    datasource_scrape_interval_s,
    duration_s,
    intervals,
    iter_panels,
    label_values_selector,
    load,
    render,
    variables,
)
from tests.metric_names import exported_metrics, promtool

GRAFANA = REPO / "deploy" / "grafana"
PANEL_TYPES = {"timeseries", "stat", "bargauge"}
# Values like the ones a real run produces, with regex metacharacters in them.
SAMPLE_VALUES: dict[str, str | list[str]] = {"lab": "local", "node": ["n1", "n2"], "kernel": "6.1.0-18+deb12-amd64"}
RANGE_S = 3600


def panel_items() -> list[tuple[Path, dict[str, object]]]:
    return [
        (path, panel) for path in dashboard_files() for panel in iter_panels(load(path)) if panel.get("type") != "row"
    ]


def all_queries() -> list[tuple[Path, str, str]]:
    return [(path, title, expr) for path in dashboard_files() for title, expr in dashboard_queries(path)]


def check_rules(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    rules = {
        "groups": [
            {
                "name": "dashboard-check",
                "rules": [{"record": f"dashboard:check:{n}", "expr": expr} for n, expr in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_the_dashboards_exist() -> None:
    assert [path.name for path in dashboard_files()] == ["swaplab-campaigns.json", "swaplab-node.json"]


def test_every_dashboard_loads_with_a_unique_uid_and_title() -> None:
    dashboards = [load(path) for path in dashboard_files()]
    uids = [d.get("uid") for d in dashboards]
    titles = [d.get("title") for d in dashboards]
    assert all(uids) and len(set(uids)) == len(uids), uids
    assert all(titles) and len(set(titles)) == len(titles), titles
    for dashboard in dashboards:
        assert dashboard.get("schemaVersion") == 38, dashboard["uid"]
        assert dashboard.get("id") is None, "provisioned dashboards carry no database id"


def test_the_node_dashboard_has_lab_node_and_kernel_variables() -> None:
    node = load(GRAFANA / "dashboards" / "swaplab-node.json")
    assert [v["name"] for v in variables(node)] == ["lab", "node", "kernel"]


def test_every_variable_is_a_multi_value_label_values_query_on_the_data_source() -> None:
    # render() formats variables the way Grafana does for multi-value/"All" variables.
    for path in dashboard_files():
        for variable in variables(load(path)):
            where = f"{path.name} ${variable['name']}"
            assert variable["type"] == "query", where
            assert variable["datasource"]["uid"] == DATASOURCE_UID, where
            assert variable["multi"] is True and variable["includeAll"] is True, where
            assert variable["allValue"] == ALL_VALUE, where


def test_variables_are_only_used_in_regex_matchers() -> None:
    # A multi-value variable renders to a regex: it belongs after =~ (or !~), never after =.
    reference = re.compile(r"\$\{?(?!__)\w+|\[\[\w+")
    in_regex = re.compile(r'[=!]~"[^"]*$')
    for path, title, expr in all_queries():
        for match in reference.finditer(expr):
            assert in_regex.search(expr[: match.start()]), f"{path.name} {title}: {expr}"


def test_every_panel_queries_the_provisioned_data_source() -> None:
    panels = panel_items()
    assert len(panels) >= 10
    for path, panel in panels:
        where = f"{path.name}: {panel.get('title')}"
        assert panel.get("type") in PANEL_TYPES, where
        assert panel.get("title"), where
        assert isinstance(panel.get("datasource"), dict), where
        assert panel["datasource"]["uid"] == DATASOURCE_UID, where  # type: ignore[index]
        targets = panel.get("targets")
        assert isinstance(targets, list) and targets, where
        assert any(isinstance(t.get("expr"), str) and t["expr"].strip() for t in targets), where
        for target in targets:
            assert target.get("expr", "").strip(), where
            assert target["datasource"]["uid"] == DATASOURCE_UID, where


def test_the_node_dashboard_marks_faults_from_the_workers_fault_series() -> None:
    node = load(GRAFANA / "dashboards" / "swaplab-node.json")
    [faults] = [a for a in node["annotations"]["list"] if a.get("name") == "Faults"]
    assert faults["datasource"] == {"type": "prometheus", "uid": "swaplab-prometheus"} and faults["enable"]
    assert "swaplab_fault_active" in faults["expr"] and "{{kind}}" in faults["titleFormat"]
    titles = [title for title, _ in dashboard_queries(GRAFANA / "dashboards" / "swaplab-node.json")]
    assert "annotation Faults" in titles  # so the checks of every query (exported, parses) cover it


def test_rows_nested_panels_are_walked() -> None:
    node = load(GRAFANA / "dashboards" / "swaplab-node.json")
    collapsed = [p for p in node["panels"] if p.get("type") == "row" and p.get("collapsed")]
    assert collapsed and collapsed[0]["panels"]
    titles = {title for title, _ in dashboard_queries(GRAFANA / "dashboards" / "swaplab-node.json")}
    assert {p["title"] for p in collapsed[0]["panels"]} <= titles


def test_panel_ids_are_unique_per_dashboard() -> None:
    for path in dashboard_files():
        ids = [p.get("id") for p in iter_panels(load(path))]
        assert len(ids) == len(set(ids)), path.name


def test_no_expr_hides_missing_data_behind_a_constant() -> None:
    for path, title, expr in all_queries():
        assert "or vector(" not in expr, f"{path.name} {title}: {expr}"
        assert not re.search(r"\bor\s+vector\s*\(", expr), f"{path.name} {title}: {expr}"


def test_range_selectors_use_grafanas_intervals() -> None:
    # A hard-coded [1m] breaks when the scrape interval changes; $__rate_interval does not.
    for path, title, expr in all_queries():
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in ("$__rate_interval", "$__range"), f"{path.name} {title}: {expr}"


def test_every_swaplab_metric_used_is_exported_by_the_workers() -> None:
    exported = exported_metrics()
    assert "swaplab_node_swap_out_bytes_total" in exported
    assert "swaplab_node_boot_seconds_bucket" in exported
    assert "swaplab_runs_total" in exported
    used = set()
    for path, title, expr in all_queries():
        for name in re.findall(r"\bswaplab_[A-Za-z0-9_]+", expr):
            assert name in exported, f"{path.name} {title}: {name} is not exported by workers.exporter"
            used.add(name)
    assert "swaplab_node_swap_in_bytes_total" in used and "swaplab_runs_total" in used


def test_render_produces_promql_without_grafana_syntax() -> None:
    for path, title, expr in all_queries():
        rendered = render(expr, SAMPLE_VALUES, RANGE_S)
        assert "$" not in rendered and "[[" not in rendered, f"{path.name} {title}: {rendered}"
        assert "label_values" not in rendered


def test_every_rendered_expr_parses_with_promtool(tmp_path: Path) -> None:
    exprs = [render(expr, SAMPLE_VALUES, RANGE_S) for _, _, expr in all_queries()]
    exprs += [render(expr, {"lab": ALL, "node": ALL, "kernel": ALL}, 300) for _, _, expr in all_queries()]
    proc = check_rules(tmp_path, exprs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(exprs)} rules found" in proc.stdout, proc.stdout


def test_promtool_check_rejects_invalid_promql(tmp_path: Path) -> None:
    # The check above is not vacuous: an unrendered Grafana variable is a parse error.
    proc = check_rules(tmp_path, ['rate(swaplab_node_samples_total{lab=~"x"}[$__rate_interval])'])
    assert proc.returncode != 0


def test_render_substitutes_every_variable_syntax() -> None:
    values: dict[str, str | list[str]] = {"lab": "local", "node": ["n1", "n.2"], "kernel": "6.1.0+deb"}
    expr = 'x{lab=~"$lab", node=~"${node}", kernel=~"[[kernel]]", k2=~"${kernel:regex}", r="${kernel:raw}"}'
    assert render(expr, values, 600) == (
        'x{lab=~"local", node=~"(n1|n\\\\.2)", kernel=~"6\\\\.1\\\\.0\\\\+deb", '
        'k2=~"6\\\\.1\\\\.0\\\\+deb", r="6.1.0+deb"}'
    )
    assert render('x{node=~"$node"}', {"node": ALL}, 600) == 'x{node=~".*"}'
    assert render('x{node=~"${node:pipe}"}', {"node": ["a", "b"]}, 600) == 'x{node=~"a|b"}'


def test_render_substitutes_grafanas_time_builtins() -> None:
    expr = "rate(x[$__rate_interval]) + increase(x[$__range]) + x offset $__interval + $__range_s"
    assert render(expr, {}, 600, scrape_interval_s=15) == "rate(x[60s]) + increase(x[600s]) + x offset 15s + 600"
    assert render(expr, {}, 600, scrape_interval_s=1) == "rate(x[4s]) + increase(x[600s]) + x offset 1s + 600"
    # Grafana: $__interval = max(scrape interval, range / max data points);
    # $__rate_interval = max($__interval + scrape interval, 4 x scrape interval).
    week = intervals(7 * 24 * 3600, scrape_interval_s=15)
    assert (week["__interval"], week["__rate_interval"]) == ("605s", "620s")
    assert duration_s("1m") == 60 and duration_s("1s") == 1


def test_render_refuses_unknown_variables() -> None:
    with pytest.raises(KeyError):
        render('x{lab=~"$lab"}', {}, 600)
    with pytest.raises(ValueError):
        render('x{lab=~"${lab:lucene}"}', {"lab": "a"}, 600)


def test_label_values_queries_become_series_selectors() -> None:
    query = 'label_values(swaplab_node_samples_total{lab=~"$lab"}, node)'
    assert label_values_selector(query) == ('swaplab_node_samples_total{lab=~"$lab"}', "node")
    assert render(query, {"lab": "local"}, 600) == 'swaplab_node_samples_total{lab=~"local"}'
    assert label_values_selector("sum(x)") is None
    with pytest.raises(ValueError):
        label_values_selector("label_values(node)")


def test_grafana_provisioning_points_at_the_dashboards_and_the_data_source() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and source["isDefault"] is True
    assert source["jsonData"]["timeInterval"] == f"{SCRAPE_INTERVAL_S}s"
    assert datasource_scrape_interval_s() == SCRAPE_INTERVAL_S
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "swaplab.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_data_source_scrape_interval_is_prometheus_scrape_interval() -> None:
    # Grafana derives $__rate_interval from it: were it shorter than the real scrape
    # interval, rate() windows would hold fewer than two samples and panels go blank.
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert duration_s(str(config["global"]["scrape_interval"])) == SCRAPE_INTERVAL_S


def test_the_history_dashboard_queries_the_provisioned_results_database() -> None:
    """The history dashboard reads the results database (PostgreSQL), not Prometheus: it lives
    in dashboards/history/, out of dashboard_files() and the PromQL checks above (Grafana's
    provider reads subdirectories too), and tests/integration/test_history_dashboard.py runs
    its SQL against a real PostgreSQL. Here: it loads, its uid and title are its own, every
    panel, target, variable and SQL annotation names the provisioned PostgreSQL data source,
    and Grafana gets that data source's password from the environment compose gives it."""
    path = GRAFANA / "dashboards" / "history" / "swaplab-history.json"
    history = load(path)
    assert path not in dashboard_files()
    others = [load(p) for p in dashboard_files()]
    assert history["uid"] == "swaplab-history" and history["uid"] not in {d["uid"] for d in others}
    assert history["title"] and history["title"] not in {d["title"] for d in others}
    assert history.get("schemaVersion") == 38 and history.get("id") is None

    ref = {"type": "grafana-postgresql-datasource", "uid": "swaplab-results"}
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "results.yml").read_text())
    (source,) = sources["datasources"]
    assert {"type": source["type"], "uid": source["uid"]} == ref
    assert (source["url"], source["user"], source["jsonData"]["database"]) == ("postgres:5432", "swaplab", "swaplab")
    # Grafana refuses two default data sources in one organization: Prometheus is it.
    assert source.get("isDefault") is not True
    assert source["secureJsonData"]["password"] == "${SWAPLAB_DB_PASSWORD}"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana_env = compose["services"]["grafana"]["environment"]
    assert grafana_env["SWAPLAB_DB_PASSWORD"] == "${SWAPLAB_DB_PASSWORD:?set SWAPLAB_DB_PASSWORD}"

    panels = list(iter_panels(history))
    assert len({p["id"] for p in panels}) == len(panels) >= 3
    assert {p["type"] for p in panels} <= {"timeseries", "state-timeline", "table"}
    for panel in panels:
        assert panel["title"] and panel["datasource"] == ref, panel.get("title")
        assert panel.get("repeat") in (None, *(v["name"] for v in variables(history))), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ref and target["rawSql"].strip(), panel["title"]
            assert target["format"] in ("time_series", "table") and "expr" not in target, panel["title"]
    assert [v["name"] for v in variables(history)] == ["campaign", "figure", "workload"]
    for variable in variables(history):
        assert variable["type"] == "query" and variable["datasource"] == ref, variable["name"]
    sql_annotations = [a for a in history["annotations"]["list"] if not a.get("builtIn")]
    assert [a["name"] for a in sql_annotations] == ["Regressions", "Change points"]
    for annotation in sql_annotations:
        assert annotation["datasource"] == ref and annotation["target"]["rawSql"].strip(), annotation["name"]
