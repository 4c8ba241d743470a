"""A patched kernel end to end: Debian's kernel source, a one-patch series made at test
time (a log line at swap activation), tinyconfig + swaplab's node fragment, built through
tuxmake on the build queue before any node is leased, booted in the local lab, a small
workload passing on it, and the node itself proving which kernel it ran.

One real build serves the module (cold: a few minutes on 2 cores; ccache and the
artifact cache make later ones fast).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.campaign import load_campaign
from model.paths import cache_dir
from model.state import run_key
from tests.conftest import require_tools
from tests.e2e.stack import Lab
from workers.kbuild import artifacts
from workers.kbuild.build import build_kernel
from workers.kbuild.tree import GIT_IDENTITY, from_debian, worktree

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
LAB = "kbuild"
MARK = "swaplab-patch: swap activated"
SWAPON_LINE = re.compile(r'^\s*pr_info\("Adding %uk swap on', re.M)
SUBJECTS = ["mm: swap: say when swap is activated", "mm: swap: say what swap_setup() sets"]
COMMENT = "/* swaplab test: the readahead order and the swap cache, set once at boot. */\n"


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), *GIT_IDENTITY, *args], check=True, capture_output=True, text=True
    ).stdout


def make_series(kernels: Path) -> Path:
    """A two-patch series against today's Debian source (made now: the package moves): a
    log line at swap activation, then a comment (a second patch for a prefix to leave out)."""
    tree = from_debian("linux-source-6.1", lambda _text: None)
    with worktree(tree, kernels / "wt") as src:
        _harmless_two(src)
        (kernels / "series.mbox").write_text(_git(src, "format-patch", "--stdout", "HEAD~2"))
    return kernels / "series.mbox"


def _harmless_two(src: Path) -> None:
    """The series' first two patches: a log line at swap activation, a comment (.c files only)."""
    swapfile = src / "mm" / "swapfile.c"
    text = swapfile.read_text()
    match = SWAPON_LINE.search(text)
    assert match, "mm/swapfile.c has no swapon message to patch next to"
    swapfile.write_text(text[: match.start()] + f'\tpr_info("{MARK}\\n");\n' + text[match.start() :])
    _commit(src, SUBJECTS[0])
    swap = src / "mm" / "swap.c"
    swap.write_text(
        swap.read_text().replace("void __init swap_setup(void)\n", COMMENT + "void __init swap_setup(void)\n", 1)
    )
    assert COMMENT in swap.read_text(), "mm/swap.c has no swap_setup() to comment"
    _commit(src, SUBJECTS[1])


def _commit(src: Path, subject: str) -> None:
    _git(src, "commit", "-q", "-a", "--author", "Swap Tester <swap@example.org>", "-m", subject)


def series_dir() -> Path:
    return cache_dir("tests", "kbuild-e2e")


def write_lab(folder: Path, kernels: Path) -> Path:
    inventory = folder / "kbuild.yml"
    inventory.write_text(
        (REPO / "tests/fixtures/labs/e2e.yml")
        .read_text()
        .replace("swaplab_lab: e2e", f"swaplab_lab: {LAB}\n    swaplab_kernel_dirs: [{kernels}]")
        .replace("12052", "12055")
        .replace("47241", "47251")
        # One node: the campaign's two kernels then run back to back on it.
        .replace("        node2: {ansible_port: 47242}\n", "")
    )
    return inventory


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_tools(("redis-server", "qemu-system-x86_64", "ganesha.nfsd", "prometheus", "gcc", "make", "git"))
    folder = tmp_path_factory.mktemp("kbuild")
    # The series is made anew (its commit dates differ: a new artifact, really built each
    # time) but always at this path: builds that name the same files share a lineage, whose
    # tree and ccache make the rebuild warm, as for a nightly campaign.
    kernels = series_dir()
    make_series(kernels)
    the_stack = Lab(folder, ["control", f"lab.{LAB}", "build"], [write_lab(folder, kernels)])
    the_stack.start()
    yield the_stack
    the_stack.cli("nfs", "stop", "-i", str(folder / "kbuild.yml"))
    the_stack.stop()


@pytest.fixture(scope="module")
def campaign(stack: Lab) -> Path:
    path = stack.tmp / "patched.yaml"
    path.write_text(
        """\
name: patched
lab: kbuild.yml
kernels:
  - build:
      source: {debian: linux-source-6.1}
      patches: SERIES
      config: {base: tinyconfig}
  - package: linux-image-amd64     # then Debian's kernel, right after, on the same node
nodes: 1
node: {ram_mib: 256, sysctl: {vm.min_free_kbytes: 16384}}
swap: {size_mib: 512}
workloads:
  - {name: small, mib: 320, timeout_s: 240}
criteria:
  # The README's own pattern over a recording rule: every series in the window must meet it.
  - name: swap_out_rate_avg
    expr: avg_over_time(lab_node:swaplab_node_swap_out_bytes:rate10s{ {{ sel }} }[{{ window }}])
    op: ">"
    value: 1048576
""".replace("SERIES", str(series_dir() / "series.mbox"))
    )
    return path


@pytest.fixture(scope="module")
def built(stack: Lab, campaign: Path) -> dict[str, Any]:
    """`swaplab build`: the real build, once for the module."""
    began = time.monotonic()
    # Fresh: the kernel a clean build makes, which the incremental builds below must equal.
    proc = stack.cli("build", "--fresh", "--json", str(campaign), timeout=3600)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    return {**row, "seconds": time.monotonic() - began}


@pytest.fixture(scope="module")
def patched_run(stack: Lab, campaign: Path, built: dict[str, Any]) -> dict[str, Any]:
    proc = stack.cli("submit", "--wait", "--json", str(campaign), timeout=1200)
    result = json.loads(proc.stdout)
    return {"code": proc.returncode, "result": result, "stderr": proc.stderr}


def test_the_build_applies_the_series_and_pins_its_identity(built: dict[str, Any]) -> None:
    assert built["status"] == "ok"
    assert [p["subject"] for p in built["patches"]] == SUBJECTS
    assert built["incremental"] is False
    assert built["patches"][0]["author"] == "Swap Tester <swap@example.org>"
    assert built["release"].endswith(f"-swaplab-{built['hash'][:8]}")
    assert "swaplab@swaplab" not in built["uts_version"] and built["uts_version"].startswith("#1")
    print(f"\ncold-or-cached build: {built['seconds']:.0f} s (build itself {built['build_seconds']} s)")


def test_the_patched_kernel_boots_and_passes_a_small_workload(patched_run: dict[str, Any]) -> None:
    run = patched_run["result"]["runs"][0]
    [node] = run["nodes"]
    assert (patched_run["code"], node["verdict"]) == (0, "pass"), node["reasons"]
    assert node["swap_out_mib"] > 64


def test_the_node_proves_it_ran_the_built_kernel_and_its_patch(
    stack: Lab, patched_run: dict[str, Any], built: dict[str, Any]
) -> None:
    run = patched_run["result"]["runs"][0]
    [node] = run["nodes"]
    kernel = node["kernel"]
    assert kernel["artifact"] == built["hash"]
    assert kernel["uname_r"] == built["release"]
    assert kernel["uname_v"] == built["uts_version"]
    assert built["release"] in kernel["proc_version"]
    console = (Path(patched_run["result"]["result_dir"]) / "r001" / "node1" / "console.log").read_text(errors="replace")
    assert MARK in console  # the patch's own effect, printed by the node's kernel at swapon
    # Built before any node was leased: the run's events show the build, then provisioning.
    assert patched_run["stderr"].index("building") < patched_run["stderr"].index("provisioning")


def test_the_same_inputs_are_not_built_again(stack: Lab, campaign: Path, built: dict[str, Any]) -> None:
    began = time.monotonic()
    proc = stack.cli("build", "--json", str(campaign), timeout=600)
    [again] = json.loads(proc.stdout)
    assert proc.returncode == 0 and again["hash"] == built["hash"]
    assert time.monotonic() - began < 60, "a cached build took as long as a build"
    assert "cached" in proc.stderr
    listed = json.loads(stack.cli("kernels", "--json").stdout)
    assert built["hash"] in [row["hash"] for row in listed["kernels"]]
    assert listed["disk_bytes"]["artifacts"] > 0


def test_the_run_record_names_the_built_kernel_and_its_patches(
    patched_run: dict[str, Any], built: dict[str, Any]
) -> None:
    info = patched_run["result"]["runs"][0]["kernel_info"]
    assert info["artifact"] == built["hash"] and info["release"] == built["release"]
    assert info["patches"] == SUBJECTS


def test_a_run_window_holds_only_that_runs_series(stack: Lab, patched_run: dict[str, Any]) -> None:
    """Two kernels back to back on one node: the second run's window opens seconds after the
    first ended, while the first's recorded rate would still be in range. Judged over the
    second window, the recording rule holds one series, its own kernel's, and the criterion
    passes for both kernels (the first's trailing series once failed the second: exit 3)."""
    first, second = patched_run["result"]["runs"]
    assert patched_run["code"] == 0, [n["reasons"] for r in (first, second) for n in r["nodes"]]
    assert second["window"]["start"] - first["window"]["end"] < 30  # back to back
    rule = "lab_node:swaplab_node_swap_out_bytes:rate10s"
    window, kver = second["window"], second["nodes"][0]["kernel"]["kver"]
    # Both the selector swaplab renders (every label pinned) and a bare lab/node one.
    for selector in (f'lab="kbuild",node="node1",kernel="{kver}",scenario="small"', 'lab="kbuild",node="node1"'):
        series = stack.prometheus.api.query(f"avg_over_time({rule}{{{selector}}}[{window['seconds']}s])", window["end"])
        assert [labels["kernel"] for labels, _value in series] == [kver], (selector, series)
    for run in (first, second):
        [criterion] = [c for c in run["nodes"][0]["criteria"] if c["name"] == "swap_out_rate_avg"]
        assert criterion["outcome"] == "pass", criterion


def _objects(since: float) -> tuple[int, list[str]]:
    """The objects in the lineage's kept build directory, and those (re)made since ``since``
    (the build runs make --silent: its log names none)."""
    lineages = artifacts.kbuild_dir() / "lineages"
    lock = max(lineages.glob(".*.lock"), key=lambda path: path.stat().st_mtime)  # touched at each use
    work = lineages / lock.name.removeprefix(".").removesuffix(".lock") / "work" / "build"
    objects = list(work.rglob("*.o"))
    return len(objects), sorted(str(o.relative_to(work)) for o in objects if o.stat().st_mtime >= since)


def test_a_prefix_builds_incrementally_and_the_same_kernel_as_a_fresh_build(
    campaign: Path, built: dict[str, Any]
) -> None:
    """A lineage keeps its last build's tree and objects: the series' first patch alone, then
    the whole series again, each recompile what differs — and the whole series built that way
    is the very kernel the fresh build made (release, version string, config, bzImage)."""
    spec = load_campaign(campaign).spec.kernels[0].build
    assert spec is not None
    fresh = artifacts.find(built["hash"])
    assert fresh is not None and fresh.meta["incremental"] is False
    fresh_files = {name: (fresh.path / name).read_bytes() for name in ("bzImage", "config")}

    began = time.time()
    first = build_kernel(spec.prefix(1), lambda _text: None)
    total, remade = _objects(began)
    assert first.meta["incremental"] is True
    assert [patch["subject"] for patch in first.meta["patches"]] == SUBJECTS[:1]
    assert first.meta["release"] != built["release"] and first.meta["uts_version"].startswith("#1 ")
    # Recompiled: the patched files and what the release string reaches, not the tree.
    assert "mm/swap.o" in remade and "mm/swapfile.o" in remade and len(remade) < total / 10, remade

    shutil.rmtree(fresh.path)  # the whole series again, on top of the prefix's tree this time
    began = time.time()
    again = build_kernel(spec, lambda _text: None)
    _total, remade_again = _objects(began)
    assert (again.hash, again.meta["incremental"]) == (built["hash"], True)
    assert (again.meta["release"], again.meta["uts_version"]) == (built["release"], built["uts_version"])
    assert (again.path / "config").read_bytes() == fresh_files["config"]
    assert (again.path / "bzImage").read_bytes() == fresh_files["bzImage"]
    assert "mm/swap.o" in remade_again and len(remade_again) < total / 10, remade_again
    print(
        f"\nfresh build {fresh.meta['build_seconds']} s ({total} objects); incremental: prefix 1 "
        f"{first.meta['build_seconds']} s ({len(remade)} remade), whole {again.meta['build_seconds']} s "
        f"({len(remade_again)} remade)"
    )


# -- swaplab bisect over the prefixes of a series ------------------------------------------------
# The module's last tests: they write their series where the one above was (a lineage is
# the files a build names), so each prefix builds incrementally in the tree the builds above
# left warm.

BISECT_SUBJECTS = [*SUBJECTS, "mm: swap: read swap back one page at a time", "mm: page_io: a comment"]
REFUSAL = "mm: swap: refuse every swapon"
READAHEAD = "\t\tpage_cluster = 3;\n"
ROOT_ONLY = "\tif (!capable(CAP_SYS_ADMIN))\n\t\treturn -EPERM;\n"
BISECT_CAMPAIGN = """\
name: NAME
lab: kbuild.yml
kernels:
  - build:
      source: {debian: linux-source-6.1}
      patches: SERIES
      config: {base: tinyconfig}
nodes: 1
# The least that decides: a workload just over the node's RAM (its initramfs takes much of
# it, so nearly all of the workload goes out and comes back in: ~190 MiB each way).
node: {ram_mib: 144, sysctl: {vm.min_free_kbytes: 16384}}
swap: {size_mib: 256}
workloads:
  - {name: small, mib: 160, timeout_s: 300}
compare:
  primary: swap_in_mibps
  figures: {swap_in_mibps: {tolerance: 0.25}}
repeats: REPEATS
"""


def make_bisect_series(kernels: Path) -> tuple[str, str]:
    """Two series of four patches sharing their first three (the very same commits): the
    harmless two above, then patch 3 sets the kernel's swap readahead (``page_cluster``) to
    0 in ``swap_setup()``; for the figure patch 4 is a comment, for the verdict patch 4
    refuses every swapon."""
    tree = from_debian("linux-source-6.1", lambda _text: None)
    with worktree(tree, kernels / "wt") as src:
        _harmless_two(src)
        swap = src / "mm" / "swap.c"
        text = swap.read_text()
        assert READAHEAD in text, "swap_setup() no longer sets page_cluster to 3"
        swap.write_text(
            text.replace("\t\tpage_cluster = 2;\n", "\t\tpage_cluster = 0;\n").replace(
                READAHEAD, "\t\tpage_cluster = 0;\n"
            )
        )
        _commit(src, BISECT_SUBJECTS[2])
        third = _git(src, "rev-parse", "HEAD").strip()
        page_io = src / "mm" / "page_io.c"
        page_io.write_text("/* swaplab test: a comment, nothing more. */\n" + page_io.read_text())
        _commit(src, BISECT_SUBJECTS[3])
        figure = _git(src, "format-patch", "--stdout", "HEAD~4")
        _git(src, "reset", "-q", "--hard", third)
        swapfile = src / "mm" / "swapfile.c"
        text = swapfile.read_text()
        at = text.index(ROOT_ONLY, text.index("SYSCALL_DEFINE2(swapon"))
        refuse = "\tif (capable(CAP_SYS_ADMIN)) /* swaplab test: root too */\n\t\treturn -EPERM;\n"
        swapfile.write_text(text[:at] + refuse + text[at + len(ROOT_ONLY) :])
        _commit(src, REFUSAL)
        verdict = _git(src, "format-patch", "--stdout", "HEAD~4")
    return figure, verdict


def bisect(stack: Lab, name: str, series: str, repeats: int, *options: str) -> dict[str, Any]:
    """`swaplab bisect --json` over ``series`` (written where the module's series was)."""
    (series_dir() / "series.mbox").write_text(series)
    path = stack.tmp / f"{name}.yaml"
    path.write_text(
        BISECT_CAMPAIGN.replace("NAME", name)
        .replace("SERIES", str(series_dir() / "series.mbox"))
        .replace("REPEATS", str(repeats))
    )
    began = time.monotonic()
    proc = stack.cli("bisect", "--json", *options, str(path), timeout=2400)
    shown = json.loads(proc.stdout)
    records = [
        json.loads((stack.tmp / "results" / step["campaign"] / "result.json").read_text())
        for step in shown["steps"]
        if step["campaign"]  # none: the step took stored runs
    ]
    return {"code": proc.returncode, "shown": shown, "stderr": proc.stderr, "records": records,
            "seconds": time.monotonic() - began}  # fmt: skip


@pytest.fixture(scope="module")
def bisect_series(stack: Lab) -> tuple[str, str]:
    return make_bisect_series(series_dir())


def restart_the_worker_in_the_first_step(stack: Lab, done: threading.Event) -> None:
    """Once the first step's campaign (after the ends) is running its first run, the control
    worker is stopped (warm: that run ends) and a new one started: it must resume both."""
    while not done.wait(0.5):
        for key in stack.client.scan_iter("swaplab:bisection:*"):
            child = str(stack.client.hget(key, "child") or "")
            steps = json.loads(stack.client.hget(key, "steps") or "[]")
            if len(steps) == 1 and child and stack.client.hget(run_key(child, "r001"), "status") == "running":
                assert stack.worker is not None
                stack.worker.stop(timeout_s=120)
                stack.start_worker()
                RESTARTED.append(child)
                return


RESTARTED: list[str] = []


@pytest.fixture(scope="module")
def by_figure(stack: Lab, bisect_series: tuple[str, str]) -> dict[str, Any]:
    done = threading.Event()
    restarter = threading.Thread(target=restart_the_worker_in_the_first_step, args=(stack, done), daemon=True)
    restarter.start()
    try:
        return bisect(stack, "readahead", bisect_series[0], 4)
    finally:
        done.set()
        restarter.join(150)


@pytest.fixture(scope="module")
def by_verdict(stack: Lab, bisect_series: tuple[str, str], by_figure: dict[str, Any]) -> dict[str, Any]:
    return bisect(stack, "refused", bisect_series[1], 1, "--on", "verdict")


def _builds(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each kernel the bisection's campaigns ran, by label: its build's meta."""
    found = {}
    for record in records:
        for run in record["runs"]:
            artifact = artifacts.find(run["kernel_info"]["artifact"])
            assert artifact is not None
            found[run["kernel_label"]] = artifact.meta
    return found


def _timing(bisection: dict[str, Any]) -> str:
    steps = bisection["shown"]["steps"]
    runs = sum(step["runs_s"] for step in steps)
    built = _builds(bisection["records"])
    builds = ", ".join(
        f"{label.rsplit('[', 1)[-1].rstrip(']')}: {meta['build_seconds']} s{' incremental' if meta['incremental'] else ''}"
        for label, meta in sorted(built.items())
    )
    return f"{bisection['seconds']:.0f} s, of which runs {runs:.0f} s; builds ({builds})"


def test_bisect_names_the_patch_that_slowed_swap_in_by_the_figure(by_figure: dict[str, Any]) -> None:
    shown, result = by_figure["shown"], by_figure["shown"]["result"]
    assert by_figure["code"] == 3, by_figure["stderr"][-3000:]
    # The control worker was restarted in the middle of the first step: the bisection went on.
    assert [shown["steps"][1]["campaign"]] == RESTARTED
    assert (result["outcome"], result["culprit"]["position"]) == ("culprit", 3), result
    assert result["culprit"]["subject"] == BISECT_SUBJECTS[2]
    assert result["culprit"]["author"] == "Swap Tester <swap@example.org>"
    assert "mm/swap.c" in result["culprit"]["stat"] and "1 file changed" in result["culprit"]["stat"]
    # Its effect, by the comparison's statistics: before it (prefix 2) against with it (prefix 3).
    assert result["change"].startswith("swap_in_mibps: ") and result["change"].endswith("regression")
    assert statistics.median(result["after"]) < 0.7 * statistics.median(result["before"])
    # The log: the ends, then git's order (the middle, then the half left), a base run between.
    assert [(s["prefix"], s["step"]) for s in shown["steps"]] == [(4, "bad"), (2, "good"), (0, "base"), (3, "bad")]
    assert all(s["runs_s"] > 0 and s["lab_s"] >= s["runs_s"] for s in shown["steps"])
    assert "prefix 3 x4: bad" in by_figure["stderr"]
    print(f"\nbisection by the figure: {_timing(by_figure)}")


def test_each_step_is_a_campaign_of_the_prefix_and_the_ends_interleave(by_figure: dict[str, Any]) -> None:
    ends, two, base, three = by_figure["records"]
    labels = [run["kernel_label"] for run in sorted(ends["runs"], key=lambda run: run["started_at"])]
    zero, whole = (f"build:linux-source-6.1+series.mbox[:{k}]" for k in (0, 4))
    assert labels == [zero, whole, whole, zero, zero, whole, whole, zero]  # A B B A, counterbalanced
    for record, prefix, count in ((two, 2, 4), (base, 0, 1), (three, 3, 4)):
        assert [run["kernel_label"] for run in record["runs"]] == [
            f"build:linux-source-6.1+series.mbox[:{prefix}]"
        ] * count
        assert all(run["verdict"] == "pass" for run in record["runs"])
    # Each prefix its own kernel with its patches; those of the series built incrementally
    # (the lineage was warm), each in well under a cold build's time.
    built = _builds(by_figure["records"])
    assert [len(meta["patches"]) for _label, meta in sorted(built.items())] == [0, 2, 3, 4]
    assert len({meta["hash"] for meta in built.values()}) == 4
    assert all(meta["incremental"] for label, meta in built.items() if not label.endswith("[:0]")), built


def test_bisect_on_the_verdict_names_the_patch_that_breaks_swapon_and_reuses_stored_runs(
    by_figure: dict[str, Any], by_verdict: dict[str, Any]
) -> None:
    shown, result = by_verdict["shown"], by_verdict["shown"]["result"]
    assert by_verdict["code"] == 3, by_verdict["stderr"][-3000:]
    assert (result["outcome"], result["culprit"]["position"]) == ("culprit", 4), result
    assert result["culprit"]["subject"] == REFUSAL and "mm/swapfile.c" in result["culprit"]["stat"]
    # No base run between steps (a verdict does not drift with the host), and prefixes 2 and
    # 3 are the figure's very commits: the same kernels (build hashes) under the same
    # settings, so their stored runs answer those steps without the lab.
    assert [(s["prefix"], s["step"]) for s in shown["steps"]] == [(4, "bad"), (2, "good"), (3, "good")]
    figure_campaigns = {step["prefix"]: step["campaign"] for step in by_figure["shown"]["steps"]}
    for step in shown["steps"][1:]:
        assert (step["campaign"], step["runs_s"]) == ("", 0.0), step
        assert step["reused"] == [figure_campaigns[step["prefix"]]]
    assert "no lab time: stored runs of" in by_verdict["stderr"]
    [ends] = by_verdict["records"]
    [whole] = [run for run in ends["runs"] if run["kernel_label"].endswith("[:4]")]
    [node] = whole["nodes"]
    assert whole["verdict"] == "fail" and "swapon" in node["failure"]["reason"], node["failure"]
    print(f"\nbisection by the verdict: {_timing(by_verdict)}")


def test_a_bisection_and_its_steps_are_in_the_results_database_and_the_history(
    stack: Lab, by_figure: dict[str, Any], by_verdict: dict[str, Any]
) -> None:
    bid = by_figure["shown"]["id"]
    assert all(record["bisection"] == bid for record in by_figure["records"])
    listed = json.loads(stack.cli("history", "--bisections", "--json").stdout)
    answers = {row["id"]: (row["outcome"], row["culprit"], row["campaigns"]) for row in listed}
    assert answers[bid] == ("culprit", 3, [step["campaign"] for step in by_figure["shown"]["steps"]])
    assert answers[by_verdict["shown"]["id"]][:2] == ("culprit", 4)
    steps = json.loads(stack.cli("history", "--bisection", bid, "--json").stdout)
    assert sorted(row["campaign_id"] for row in steps) == sorted(r["campaign_id"] for r in by_figure["records"])
    assert all(row["bisection"] == bid for row in steps)
    text = stack.cli("report", by_figure["records"][1]["campaign_id"]).stdout
    assert f"a step of {bid}" in " ".join(text.split())
    status = stack.cli("bisect", "--status", bid, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["result"]["culprit"]["position"] == 3
