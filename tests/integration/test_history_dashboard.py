"""Every SQL query of the history dashboard, run against a real PostgreSQL holding real nights.

The dashboard (``deploy/grafana/dashboards/history/swaplab-history.json``) reads the results
database through Grafana's PostgreSQL data source. Grafana runs a query in three steps, and
``render`` mirrors each of them the way ``tests/dashboards.py`` mirrors the Prometheus data
source:

1. the frontend substitutes the dashboard variables (``templateSrv.replace`` with
   ``SqlDatasource.interpolateVariable``): a value of a multi-value or "Include All" variable
   is quoted as a SQL literal (``'a','b'``; "All" is every option, or the variable's
   ``allValue`` as is); a value of a single-value variable only has its quotes doubled, so
   the SQL must quote it (``'$campaign'``);
2. the backend's ``sqleng.Interpolate``: ``$__interval``, ``$__unixEpochFrom()``,
   ``$__unixEpochTo()``;
3. the PostgreSQL macro engine (``macros.go``): ``$__timeFilter(col)`` ->
   ``col BETWEEN '<from>' AND '<to>'`` (RFC 3339), ``$__unixEpochFilter(col)`` ->
   ``col >= <from> AND col <= <to>`` (epoch seconds), ``$__timeFrom()`` ... Its pattern is
   ``\\$name\\(([^)]*)\\)``: a macro's argument cannot hold a parenthesis, so
   ``$__timeFilter(to_timestamp(x))`` breaks there and here alike. The results database keeps
   epoch seconds, hence ``$__unixEpochFilter`` on the column itself (its index serves it).

The database is built the way the stack builds it (``ResultsDb.upgrade()``, campaigns stored
by ``ResultsDb.store``) from the real records in ``tests/fixtures/results``, as nights of one
campaign with their kernel release varied, one of them with a comparison that found a
regression, and change points stored in issue 14's ``change_points`` table (migration 0002).

Every SQL string in the JSON must be one of the queries ``EXPECTED`` names: a query added to the
dashboard fails here until it is given the columns Grafana needs from it.
"""

from __future__ import annotations

import copy
import json
import math
import re
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from orchestrator.history.db import ResultsDb
from tests.integration.postgres_server import PostgresServer, postgres_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "history" / "swaplab-history.json"
DATASOURCE = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "results.yml"
DATASOURCE_UID = "swaplab-results"
RESULTS = REPO / "tests" / "fixtures" / "results"

ALL = "$__all"  # Grafana's "All" option
DAY = 86400.0
NIGHT0 = datetime(2026, 11, 20, 2, 30, tzinfo=UTC).timestamp()
# The dashboard's time range in these tests: nights 0..3 are in it, night -40 is not.
RANGE = (datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC))
CAMPAIGN = "nightly"
QUOTED = "o'neil nightly"  # a campaign name that needs SQL quoting

TIMESTAMPTZ_OID = 1184
Json = dict[str, Any]


# -- what Grafana needs from each query ---------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """The result a query must give Grafana.

    ``kind``: "variable" (the first column is the option), "time_series" (a ``time``
    timestamptz column sorted ascending, ``metric`` naming the series, every other column
    numeric), "table" or "annotation" (a ``time`` column, ``text``, optional ``tags``).
    ``columns``: the exact column names, in order. ``times``/``numbers``: columns that must
    be timestamptz / numeric (or NULL, in a table).
    """

    kind: str
    columns: tuple[str, ...] = ()
    times: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()


EXPECTED: dict[str, Shape] = {
    "variable campaign": Shape("variable"),
    "variable figure": Shape("variable"),
    "variable workload": Shape("variable"),
    "panel Verdict per night": Shape("table", ("time", "verdict"), times=("time",)),
    "panel $figure per kernel release": Shape("time_series", ("time", "metric", "value"), ("time",), ("value",)),
    "panel Last nights": Shape(
        "table",
        ("night", "campaign id", "verdict", "kernel", "primary figure", "primary value", "comparison"),
        times=("night",),
        numbers=("primary value",),
    ),
    "annotation Regressions": Shape("annotation", ("time", "text", "tags"), times=("time",)),
    "annotation Change points": Shape("annotation", ("time", "text", "tags"), times=("time",)),
}


# -- the dashboard's queries ---------------------------------------------------------------
@dataclass(frozen=True)
class SqlQuery:
    """One SQL query of the dashboard: where it is, its text, the format Grafana asks for,
    and the variable its panel is repeated by (Grafana renders one copy per value)."""

    where: str
    sql: str
    format: str
    repeat: str | None = None


def load_dashboard() -> Json:
    """The history dashboard, as parsed JSON."""
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(dashboard: Json) -> Iterator[Json]:
    """Every panel, the panels nested in rows included."""

    def walk(items: list[Json]) -> Iterator[Json]:
        for panel in items:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def variables(dashboard: Json) -> list[Json]:
    """The dashboard's templating variables."""
    return list(dashboard.get("templating", {}).get("list", []))


def variable_sql(variable: Json) -> str | None:
    """A query variable's SQL (Grafana stores it as a string or, newer, in an object)."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("rawSql") or query.get("query")
    return query if isinstance(query, str) and query.strip() else None


def annotation_sql(annotation: Json) -> str | None:
    """An annotation's SQL: ``target.rawSql``, or the pre-Grafana-9 ``rawQuery`` string."""
    target = annotation.get("target")
    if isinstance(target, dict) and isinstance(target.get("rawSql"), str) and target["rawSql"].strip():
        return str(target["rawSql"])
    legacy = annotation.get("rawQuery")
    return legacy if isinstance(legacy, str) and legacy.strip() else None


def sql_queries(dashboard: Json) -> list[SqlQuery]:
    """Every SQL query of the dashboard: panel targets, query variables, annotations."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if isinstance(target.get("rawSql"), str) and target["rawSql"].strip():
                fmt = str(target.get("format", "time_series"))  # Grafana's default format
                found.append(SqlQuery(f"panel {panel.get('title')}", target["rawSql"], fmt, panel.get("repeat")))
    for variable in variables(dashboard):
        if variable.get("type") == "query" and (text := variable_sql(variable)) is not None:
            found.append(SqlQuery(f"variable {variable['name']}", text, "variable"))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if (text := annotation_sql(annotation)) is not None:
            found.append(SqlQuery(f"annotation {annotation['name']}", text, "annotation"))
    return found


def sql_strings(node: Any, key: str | None = None) -> list[str]:
    """Every string anywhere in the JSON under a key Grafana keeps SQL in: independent of
    ``sql_queries``, so a query it does not know where to look for is still counted."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in sql_strings(v, k)]
    if isinstance(node, list):
        return [s for item in node for s in sql_strings(item, key)]
    if isinstance(node, str) and key in ("rawSql", "rawQuery", "query", "definition") and node.strip():
        return [node]
    return []


def query_at(where: str) -> SqlQuery:
    """The dashboard's query at ``where`` ("panel TITLE", "variable NAME", "annotation NAME")."""
    (query,) = [q for q in sql_queries(load_dashboard()) if q.where == where]
    return query


# -- Grafana's rendering, mirrored ---------------------------------------------------------
# ${var} / ${var:format}, [[var]] / [[var:format]], $var: templateSrv's variable syntaxes.
_REFERENCE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")
# macros.go: sExpr = `\$` + `([_a-zA-Z0-9]+)` + `\(([^\)]*)\)`.
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")

Values = Mapping[str, str | list[str]]


def quote_literal(value: str) -> str:
    """PostgresQueryModel.quoteLiteral."""
    return "'" + value.replace("'", "''") + "'"


def rfc3339nano(moment: datetime) -> str:
    """Go's time.RFC3339Nano of ``moment`` in UTC: fraction without trailing zeros."""
    moment = moment.astimezone(UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def interpolate_variable(variable: Json, value: str | list[str], options: Sequence[str]) -> str:
    """One variable's value as SqlDatasource.interpolateVariable writes it into the SQL."""
    if value == ALL or value == [ALL]:
        if not variable.get("includeAll"):
            raise ValueError(f"${variable['name']} has no All option")
        if variable.get("allValue"):
            return str(variable["allValue"])  # templateSrv: a custom all value goes in as is
        value = list(options)
    if isinstance(value, str):
        if variable.get("multi") or variable.get("includeAll"):
            return quote_literal(value)
        return value.replace("'", "''")
    return ",".join(quote_literal(v) for v in value)


def render(
    sql: str,
    dashboard: Json,
    values: Values,
    options: Mapping[str, Sequence[str]],
    time_range: tuple[datetime, datetime] = RANGE,
) -> str:
    """``sql`` as Grafana sends it to PostgreSQL, for these variable values and time range.

    ``values``: each variable's current value (``ALL`` for "All"); ``options``: each
    variable's options, which "All" stands for. A variable missing from ``values``, a format
    or a macro not mirrored here is an error, never left in the SQL.
    """
    declared = {v["name"]: v for v in variables(dashboard)}
    start, end = time_range

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3) or match.group(5)
        fmt = match.group(2) or match.group(4)
        if name.startswith("__"):
            return match.group(0)  # a built-in or a macro: the backend's, below
        if name not in declared:
            raise KeyError(f"${name} is not a variable of the dashboard")
        if name not in values:
            raise KeyError(f"no value for ${name}")
        if fmt not in (None, "raw"):
            raise ValueError(f"variable format {fmt!r} of ${name} is not mirrored here")
        value = values[name]
        if fmt == "raw":
            return value if isinstance(value, str) else ",".join(value)
        return interpolate_variable(declared[name], value, options.get(name, ()))

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339nano(start)}' AND '{rfc3339nano(end)}'"
        if name == "__timeFrom":
            return f"'{rfc3339nano(start)}'"
        if name == "__timeTo":
            return f"'{rfc3339nano(end)}'"
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
        raise ValueError(f"macro ${name} is not mirrored here")

    text = _REFERENCE.sub(substitute, sql)
    # sqleng.Interpolate, before the macro engine.
    text = text.replace("$__unixEpochFrom()", str(int(start.timestamp())))
    text = text.replace("$__unixEpochTo()", str(int(end.timestamp())))
    if "$__interval" in text:
        raise ValueError("$__interval is not mirrored here")
    text = _MACRO.sub(macro, text)
    if re.search(r"\$\w|\[\[\w", text):
        raise ValueError(f"Grafana syntax left in the SQL: {text}")
    return text


# -- running it ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """A query's columns (name, type OID) and rows."""

    columns: list[tuple[str, int]]
    rows: list[tuple[Any, ...]]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def column(self, name: str) -> list[Any]:
        index = self.names.index(name)
        return [row[index] for row in self.rows]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, row, strict=True)) for row in self.rows]


def run(conn: psycopg.Connection, sql: str) -> Result:
    """Run one rendered query. Without parameters psycopg sends the text as it is (a ``%``
    in it stays); as bytes, because its typing takes only literal strings as queries."""
    with conn.cursor() as cur:
        cur.execute(sql.encode())
        assert cur.description is not None, f"not a query that returns rows: {sql}"
        columns = [(c.name, c.type_code) for c in cur.description]
        rows = cur.fetchall()
    return Result(columns, rows)


def is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool) and math.isfinite(float(value))


def check_shape(where: str, shape: Shape, result: Result) -> None:
    """What Grafana needs from ``where``'s result (see ``Shape``)."""
    if shape.kind == "variable":
        assert all(isinstance(row[0], str) and row[0] for row in result.rows), (where, result.rows)
        return
    assert result.names == shape.columns, (where, result.names)
    types = dict(result.columns)
    for name in shape.times:
        assert types[name] == TIMESTAMPTZ_OID, f"{where}: {name} must be timestamptz"
        assert all(isinstance(v, datetime) and v.tzinfo is not None for v in result.column(name)), where
    for name in shape.numbers:
        values = result.column(name)
        assert all(v is None or is_number(v) for v in values), (where, name, values)
    if shape.kind == "time_series":
        # sqleng's LongToWide refuses a long frame not sorted ascending by time.
        times = result.column("time")
        assert times == sorted(times), f"{where}: rows not sorted by time"
        assert all(isinstance(v, str) and v for v in result.column("metric")), where
        for name in set(shape.columns) - {"time", "metric"}:
            assert all(is_number(v) for v in result.column(name)), (where, name)
    if shape.kind == "annotation":
        assert all(isinstance(v, str) and v for v in result.column("text")), where
        assert all(isinstance(v, str) for v in result.column("tags")), where


# -- the nights ----------------------------------------------------------------------------
def fixture_record(name: str) -> Json:
    """A result.json from tests/fixtures/results."""
    data = json.loads((RESULTS / name).read_text())
    assert isinstance(data, dict)
    return data


def night(
    base: str,
    cid: str,
    finished_at: float,
    *,
    name: str = CAMPAIGN,
    releases: Mapping[str, str] | None = None,
    **fields: Any,
) -> Json:
    """A fixture record as another instance: id, campaign name, finish time, kernel releases
    renamed (``releases``: old release -> new), other top-level fields replaced."""
    record = {**copy.deepcopy(fixture_record(base)), "campaign_id": cid, "campaign": name, "finished_at": finished_at}
    record.update(fields)
    for run_record in record["runs"]:
        info = run_record.get("kernel_info") or {}
        if releases and info.get("release") in releases:
            info["release"] = releases[info["release"]]
    return record


NIGHTS: list[Json] = [
    # Night 0: two kernels, one failed run, one infra-error run: the campaign failed.
    night("pair-result.json", "nightly-n0", NIGHT0),
    # Night 1: the distribution kernel moved on; everything passed.
    night(
        "pair-result.json", "nightly-n1", NIGHT0 + DAY, releases={"6.1.0-57-amd64": "6.1.0-58-amd64"}, verdict="pass"
    ),
    # Night 2: a comparison that found a regression (and a reason saying so).
    night("ab-result.json", "nightly-n2", NIGHT0 + 2 * DAY),
    # Night 3: an old record without figures; comparisons and reasons null, not lists.
    night("smoke-old-result.json", "nightly-n3", NIGHT0 + 3 * DAY, comparisons=None, reasons=None),
    # Out of the time range.
    night("pair-result.json", "nightly-old", NIGHT0 - 40 * DAY),
    # Other campaigns, in range.
    night("pair-result.json", "other-n1", NIGHT0 + DAY, name="other"),
    night("ab-result.json", "quoted-n1", NIGHT0 + DAY, name=QUOTED),
]

# (campaign, figure, workload, campaign_id, at, release_before, release_after, before, after, change_pct, worse)
N2 = ("nightly-n2", NIGHT0 + 2 * DAY, "6.1.0-58-amd64", "6.1.0-57-amd64")
CHANGE_POINTS: list[tuple[Any, ...]] = [
    (CAMPAIGN, "swap_in_mibps", "small", *N2, 8.35, 5.91, -29.2, True),
    (CAMPAIGN, "swap_out_mibps", "overcommit", *N2, 12.85, 25.0, 94.6, False),
    # The campaign's only workload (none named); releases and change unknown.
    (CAMPAIGN, "swap_out_mibps", None, "nightly-n1", NIGHT0 + DAY, None, None, 10.56, 12.85, None, False),
    # Out of the time range, and of another campaign: never shown.
    (CAMPAIGN, "swap_in_mibps", None, "nightly-old", NIGHT0 - 40 * DAY, "a", "b", 1.0, 2.0, 100.0, False),
    ("other", "swap_in_mibps", None, "other-n1", NIGHT0 + DAY, "a", "b", 1.0, 2.0, 100.0, True),
]


def create_schema(server: PostgresServer) -> str:
    """A new database with the results schema, as the stack creates it (``ResultsDb.upgrade``)."""
    name = server.create_database()
    with ResultsDb(server.url(name)) as db:
        db.upgrade()
    with server.connect(name) as conn:
        assert conn.execute("SELECT to_regclass('change_points') IS NOT NULL").fetchone() == (True,)
    return name


@pytest.fixture(scope="module")
def history(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of the nights above: its name on the module's server."""
    name = create_schema(postgres_server)
    with pytest.MonkeyPatch.context() as patch:
        # A retention set in this environment would prune the older nights.
        patch.delenv("SWAPLAB_DB_RETENTION_DAYS", raising=False)
        with ResultsDb(postgres_server.url(name)) as db:
            for record in NIGHTS:
                db.store(record)
    with postgres_server.connect(name) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO change_points (campaign, figure, workload, campaign_id, at, release_before,"
            " release_after, median_before, median_after, change_pct, worse, detected_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(*row, NIGHT0 + 10 * DAY) for row in CHANGE_POINTS],
        )
    yield name
    postgres_server.drop_database(name)


@pytest.fixture()
def conn(postgres_server: PostgresServer, history: str) -> Iterator[psycopg.Connection]:
    """A read-only session on the nights: the dashboard only reads."""
    with postgres_server.connect(history) as connection:
        read_only(connection)
        yield connection


def read_only(connection: psycopg.Connection) -> None:
    """Make every statement of the (autocommit) session read-only: a dashboard query that
    writes fails here as it should fail under a read-only Grafana user."""
    connection.execute("SET default_transaction_read_only = on")


def options_for(conn: psycopg.Connection, dashboard: Json, campaign: str) -> dict[str, list[str]]:
    """Each variable's options as Grafana lists them once $campaign is ``campaign``."""
    options = {}
    for variable in variables(dashboard):
        text = variable_sql(variable)
        assert text is not None
        result = run(conn, render(text, dashboard, {"campaign": campaign}, {}))
        options[variable["name"]] = [str(row[0]) for row in result.rows]
    return options


Scenario = tuple[dict[str, str | list[str]], bool]


def scenarios(query: SqlQuery, options: Mapping[str, list[str]], campaign: str) -> list[Scenario]:
    """(variable values, whether the nightly campaign must give rows) to render ``query``
    with: "All", and one value of each variable; a repeated panel once per value of its
    variable (a string, as Grafana scopes a repeated copy), each with every workload."""
    every: dict[str, str | list[str]] = {"campaign": campaign, "figure": ALL, "workload": ALL}
    one: dict[str, str | list[str]] = {
        "campaign": campaign,
        "figure": options["figure"][:1],
        "workload": options["workload"][-1:],
    }
    if query.repeat is None:
        return [(every, True), (one, False)]
    copies: list[Scenario] = [({**every, query.repeat: value}, True) for value in options[query.repeat]]
    return [*copies, ({**one, query.repeat: options[query.repeat][0]}, False)]


# -- the tests -----------------------------------------------------------------------------
def test_every_sql_query_of_the_dashboard_is_one_this_test_runs() -> None:
    dashboard = load_dashboard()
    queries = sql_queries(dashboard)
    assert sorted(q.where for q in queries) == sorted(EXPECTED), "a query without its expected shape in EXPECTED"
    assert len({q.where for q in queries}) == len(queries), "two queries at the same place: name them apart"
    # Every SQL text anywhere in the JSON is one of them (a variable's "definition" repeats its query).
    assert set(sql_strings(dashboard)) == {q.sql for q in queries}
    assert len(sql_strings(dashboard)) == len(queries) + sum(1 for v in variables(dashboard) if v.get("definition"))
    for query in queries:
        kind = EXPECTED[query.where].kind
        assert query.format == {"variable": "variable", "annotation": "annotation"}.get(kind, kind), query.where


def test_every_query_names_the_provisioned_data_source() -> None:
    dashboard = load_dashboard()
    (source,) = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "grafana-postgresql-datasource"
    refs = [v["datasource"] for v in variables(dashboard)]
    refs += [a["datasource"] for a in dashboard["annotations"]["list"] if annotation_sql(a)]
    for panel in panels(dashboard):
        refs += [panel["datasource"], *(t["datasource"] for t in panel.get("targets", []))]
    assert refs and all(ref == {"type": source["type"], "uid": DATASOURCE_UID} for ref in refs), refs


def test_the_variables_list_what_is_stored(conn: psycopg.Connection) -> None:
    dashboard = load_dashboard()
    options = options_for(conn, dashboard, CAMPAIGN)
    assert options["campaign"] == sorted(["nightly", "other", QUOTED])
    assert set(options["figure"]) == set(fixture_record("pair-result.json")["runs"][0]["nodes"][0]["figures"])
    assert options["workload"] == ["overcommit", "small"]
    # A campaign name with a quote in it: Grafana doubles it inside the SQL's own quotes.
    assert options_for(conn, dashboard, QUOTED)["workload"] == ["small"]


@pytest.mark.parametrize("where", sorted(EXPECTED))
def test_every_query_runs_and_gives_grafana_its_columns(conn: psycopg.Connection, where: str) -> None:
    dashboard = load_dashboard()
    query = query_at(where)
    shape = EXPECTED[where]
    for campaign in (CAMPAIGN, QUOTED):
        options = options_for(conn, dashboard, campaign)
        for values, must_have_rows in scenarios(query, options, campaign):
            result = run(conn, render(query.sql, dashboard, values, options))
            check_shape(where, shape, result)
            if campaign == CAMPAIGN and must_have_rows:
                assert result.rows, f"{where}: no rows for {values}"


def expected_means(figure: str) -> dict[tuple[str, str], float]:
    """(night id, "release / workload") -> the mean of ``figure`` over the nodes of the
    night's passing runs, from the records themselves, for the nights in range."""
    groups: dict[tuple[str, str], list[float]] = {}
    for record in NIGHTS:
        in_range = RANGE[0].timestamp() <= record["finished_at"] <= RANGE[1].timestamp()
        if record["campaign"] != CAMPAIGN or not in_range:
            continue
        for run_record in record["runs"]:
            if run_record.get("verdict") != "pass":
                continue
            # A run without kernel_info (an old record) has no figures either.
            label = f"{(run_record.get('kernel_info') or {}).get('release')} / {run_record['workload']}"
            for node in run_record.get("nodes", []):
                value = (node.get("figures") or {}).get(figure, {}).get("value")
                if value is not None:
                    groups.setdefault((record["campaign_id"], label), []).append(value)
    return {key: statistics.fmean(values) for key, values in groups.items()}


def test_a_figure_is_the_mean_over_the_passing_nodes_per_night_and_release(conn: psycopg.Connection) -> None:
    dashboard = load_dashboard()
    query = query_at("panel $figure per kernel release")
    options = options_for(conn, dashboard, CAMPAIGN)
    finished = {record["campaign_id"]: record["finished_at"] for record in NIGHTS}
    for figure in ("swap_out_mibps", "swap_in_mibps"):
        values = {"campaign": CAMPAIGN, "figure": figure, "workload": ALL}
        got = run(conn, render(query.sql, dashboard, values, options)).dicts()
        want = expected_means(figure)
        assert len(got) == len(want)
        for (cid, label), mean in want.items():
            (row,) = [r for r in got if r["metric"] == label and r["time"].timestamp() == pytest.approx(finished[cid])]
            assert float(row["value"]) == pytest.approx(mean)
    # Night 0's failed run (6.1.192-swaplab+, one node at 7.66 MiB/s) does not pull its release down.
    night0 = expected_means("swap_out_mibps")[("nightly-n0", "6.1.192-swaplab+ / overcommit")]
    assert night0 == pytest.approx((12.94 + 12.76) / 2)
    # One workload: only its series.
    values = {"campaign": CAMPAIGN, "figure": "swap_out_mibps", "workload": "small"}
    small = run(conn, render(query.sql, dashboard, values, options)).dicts()
    assert {row["metric"] for row in small} == {"6.1.0-57-amd64 / small"}


def test_the_verdict_timeline_has_every_night_in_range(conn: psycopg.Connection) -> None:
    dashboard = load_dashboard()
    options = options_for(conn, dashboard, CAMPAIGN)
    values = {"campaign": CAMPAIGN, "figure": ALL, "workload": ALL}
    rows = run(conn, render(query_at("panel Verdict per night").sql, dashboard, values, options)).rows
    assert [verdict for _, verdict in rows] == ["fail", "pass", "fail", "pass"]
    assert [moment.timestamp() for moment, _ in rows] == pytest.approx([NIGHT0 + k * DAY for k in range(4)])


def test_the_last_nights_table(conn: psycopg.Connection) -> None:
    dashboard = load_dashboard()
    options = options_for(conn, dashboard, CAMPAIGN)
    values = {"campaign": CAMPAIGN, "figure": ALL, "workload": ALL}
    rows = run(conn, render(query_at("panel Last nights").sql, dashboard, values, options)).dicts()
    assert [row["campaign id"] for row in rows] == ["nightly-n3", "nightly-n2", "nightly-n1", "nightly-n0"]
    n3, n2, n1, n0 = rows
    ab = fixture_record("ab-result.json")
    swap_in = [node["figures"]["swap_in_mibps"]["value"] for run_record in ab["runs"] for node in run_record["nodes"]]
    assert (n2["verdict"], n2["kernel"], n2["comparison"]) == ("fail", "6.1.0-57-amd64", "regression")
    assert n2["primary figure"] == "swap_in_mibps"
    assert float(n2["primary value"]) == pytest.approx(statistics.fmean(swap_in))
    assert n1["kernel"] == "6.1.0-58-amd64, 6.1.192-swaplab+" and n1["comparison"] is None
    assert n1["primary figure"] == "swap_out_mibps"
    assert float(n1["primary value"]) == pytest.approx(statistics.fmean([10.83, 10.28, 12.94, 12.76]))
    assert (n0["verdict"], n0["comparison"]) == ("fail", None)
    # The old record: no figures, no comparisons (null in the record), no failure.
    assert (n3["verdict"], n3["primary value"], n3["comparison"]) == ("pass", None, None)


def test_regressions_are_marked_with_the_campaigns_reason(conn: psycopg.Connection) -> None:
    dashboard = load_dashboard()
    options = options_for(conn, dashboard, CAMPAIGN)
    values = {"campaign": CAMPAIGN, "figure": ALL, "workload": ALL}
    rows = run(conn, render(query_at("annotation Regressions").sql, dashboard, values, options)).dicts()
    (reason,) = fixture_record("ab-result.json")["reasons"]
    assert reason.startswith("regression: pc0 vs base (small): swap_in_mibps")
    assert [(row["time"].timestamp(), row["text"], row["tags"]) for row in rows] == [
        (pytest.approx(NIGHT0 + 2 * DAY), reason, "regression,nightly-n2")
    ]


def test_change_points_are_marked_for_the_campaign_figures_and_workloads_shown(conn: psycopg.Connection) -> None:
    dashboard = load_dashboard()
    options = options_for(conn, dashboard, CAMPAIGN)
    sql = query_at("annotation Change points").sql

    def marks(figure: str | list[str], workload: str | list[str]) -> list[dict[str, Any]]:
        values = {"campaign": CAMPAIGN, "figure": figure, "workload": workload}
        return run(conn, render(sql, dashboard, values, options)).dicts()

    rows = marks(ALL, ALL)
    assert [row["time"].timestamp() for row in rows] == pytest.approx(
        [NIGHT0 + DAY, NIGHT0 + 2 * DAY, NIGHT0 + 2 * DAY]
    )
    unknown, worse, better = rows
    assert worse["text"] == "swap_in_mibps / small: 6.1.0-58-amd64 -> 6.1.0-57-amd64: 8.350 -> 5.910 (-29.2 %)"
    assert worse["tags"] == "change point,swap_in_mibps,worse"
    assert better["text"] == "swap_out_mibps / overcommit: 6.1.0-58-amd64 -> 6.1.0-57-amd64: 12.850 -> 25.000 (94.6 %)"
    assert better["tags"] == "change point,swap_out_mibps,better"
    assert unknown["text"] == "swap_out_mibps: ? -> ?: 10.560 -> 12.850 (change n/a)"
    assert [row["text"] for row in marks(["swap_in_mibps"], ALL)] == [worse["text"]]
    # A change point of another workload is not shown; one without a workload always is.
    assert [row["text"] for row in marks(ALL, ["small"])] == [unknown["text"], worse["text"]]


def test_every_query_runs_on_an_empty_database(postgres_server: PostgresServer) -> None:
    """A new stack: no campaign yet, so no option anywhere; no query may fail on that."""
    dashboard = load_dashboard()
    name = create_schema(postgres_server)
    try:
        with postgres_server.connect(name) as empty:
            read_only(empty)
            # Grafana's value for a variable without options; "All" of nothing is no value.
            options = options_for(empty, dashboard, "")
            assert options == {"campaign": [], "figure": [], "workload": []}
            values = {"campaign": "", "figure": ALL, "workload": ALL}
            for query in sql_queries(dashboard):
                assert run(empty, render(query.sql, dashboard, values, options)).rows == [], query.where
    finally:
        postgres_server.drop_database(name)


def test_render_mirrors_grafana() -> None:
    dashboard = {
        "templating": {
            "list": [
                {"name": "one", "type": "query"},
                {"name": "many", "type": "query", "multi": True, "includeAll": True},
                {"name": "custom", "type": "query", "multi": True, "includeAll": True, "allValue": "NULL"},
            ]
        }
    }
    values: dict[str, str | list[str]] = {"one": "o'x", "many": ["a", "b'c"], "custom": ALL}
    options = {"many": ["a", "b'c", "d"]}
    assert render("'$one' ${one} [[one]]", dashboard, values, options) == "'o''x' o''x o''x"
    assert render("IN ($many) ${many:raw}", dashboard, values, options) == "IN ('a','b''c') a,b'c"
    assert render("IN ($many)", dashboard, {**values, "many": ALL}, options) == "IN ('a','b''c','d')"
    assert render("IN ($many)", dashboard, {**values, "many": "a"}, options) == "IN ('a')"
    assert render("$custom", dashboard, values, options) == "NULL"
    start, end = datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 25, 0, 0, 0, 500000, tzinfo=UTC)
    macros = "$__timeFilter(t) AND $__unixEpochFilter(c.x) AND $__timeFrom() < $__unixEpochTo()"
    rendered = render(macros, dashboard, {}, {}, (start, end))
    assert rendered == (
        "t BETWEEN '2026-11-19T00:00:00Z' AND '2026-11-25T00:00:00.5Z'"
        f" AND c.x >= {int(start.timestamp())} AND c.x <= {int(end.timestamp())}"
        f" AND '2026-11-19T00:00:00Z' < {int(end.timestamp())}"
    )
    # The macro engine's argument stops at the first ")", as Grafana's does.
    nested = render("$__timeFilter(to_timestamp(x))", dashboard, {}, {}, (start, end))
    assert nested.startswith("to_timestamp(x BETWEEN")
    with pytest.raises(KeyError):
        render("$nothing", dashboard, values, options)
    with pytest.raises(ValueError):
        render("$__timeGroup(t, 1h)", dashboard, values, options)
    with pytest.raises(ValueError):
        render("${many:csv}", dashboard, values, options)
