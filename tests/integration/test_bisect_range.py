"""A bisection over a git range, on a real repository: the commits of good..bad read
oldest first with their subjects, authors and diff stats; a range with merges, a good
commit that is not an ancestor, an unknown ref refused (by the CLI with the file, line and
field); nothing the repository's configuration names is run; and the control plane's
bisection (real redis-server, the fake lab of test_bisector) asks for each prefix's commit
by its id, even after the branch moved, and names commit 3 of 4.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from model.campaign import Campaign, load_campaign
from model.kernel import GitSource
from orchestrator import bisector
from orchestrator.cli import main
from orchestrator.cli.bisect_cmds import _answer_lines, _series_or_exit
from orchestrator.store import CampaignStore
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)
from tests.integration.test_bisector import Lab
from workers.kbuild.git_range import RangeError, read_range

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[2]
AUTHOR = "Swap Tester <swap@example.org>"
CULPRIT_AUTHOR = "Page Cluster <cluster@example.org>"
# (file, subject) of the range's commits, oldest first: commit 3 is the slow one.
COMMITS = [
    ("mm/swapfile.c", "mm: a log line"),
    ("mm/swap.c", "mm: a comment"),
    ("mm/swap.c", "mm: swap: read swap back one page at a time"),
    ("mm/page_io.c", "mm: another comment"),
]
_ENV = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")} | {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


@dataclass(frozen=True)
class Repo:
    path: Path
    good: str  # tagged v1
    commits: list[str]  # the range's, oldest first; main is the last


def _git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=Swap Tester", "-c", "user.email=swap@example.org"]
    argv = ["git", "-C", str(repo), *identity, *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=_ENV).stdout.strip()


def _commit(repo: Path, file: str, subject: str, author: str = AUTHOR) -> str:
    path = repo / file
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(f"/* {subject} */\n")
    _git(repo, "add", file)
    _git(repo, "commit", "-q", f"--author={author}", "-m", subject)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def linear(tmp_path: Path) -> Repo:
    """A base tagged v1, then four linear commits on main; commit 3 by another author."""
    repo = tmp_path / "linux"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    good = _commit(repo, "mm/swap.c", "the base")
    _git(repo, "tag", "v1")
    commits = [
        _commit(repo, file, subject, CULPRIT_AUTHOR if index == 3 else AUTHOR)
        for index, (file, subject) in enumerate(COMMITS, 1)
    ]
    return Repo(repo, good, commits)


def _merge_into_main(repo: Repo) -> str:
    """A side branch from commit 2 merged into main: the range v1..main then holds a merge."""
    _git(repo.path, "checkout", "-q", "-b", "side", repo.commits[1])
    _commit(repo.path, "mm/vmscan.c", "mm: vmscan: a side change")
    _git(repo.path, "checkout", "-q", "main")
    _git(repo.path, "merge", "-q", "--no-edit", "side")
    return _git(repo.path, "rev-parse", "HEAD")


def test_the_range_is_its_commits_oldest_first_each_described(linear: Repo) -> None:
    found = read_range(linear.path, "v1", "main")
    assert found.good == linear.good and found.prefixes == [linear.good, *linear.commits]
    assert [entry.subject for entry in found.commits] == [subject for _, subject in COMMITS]
    assert [entry.author for entry in found.commits] == [AUTHOR, AUTHOR, CULPRIT_AUTHOR, AUTHOR]
    third = found.commits[2].stat.splitlines()
    assert third[0].split() == ["mm/swap.c", "|", "1", "+"] and third[1].strip() == "1 file changed, 1 insertion(+)"
    # Commit ids name the ends as well as branches and tags do.
    part = read_range(linear.path, linear.good, linear.commits[1])
    assert part.prefixes == [linear.good, *linear.commits[:2]]


def test_a_range_with_merges_an_end_out_of_line_or_an_unknown_ref_is_refused(linear: Repo) -> None:
    merge = _merge_into_main(linear)
    with pytest.raises(RangeError, match=f"holds 1 merge.*{merge[:12]}.*linear range only") as caught:
        read_range(linear.path, "v1", "main")
    assert caught.value.field == "good"
    assert read_range(linear.path, "v1", linear.commits[2]).prefixes[-1] == linear.commits[2]  # below the merge
    with pytest.raises(RangeError, match="main is not an ancestor of v1"):
        read_range(linear.path, "main", "v1")
    with pytest.raises(RangeError, match="not an ancestor"):  # two branches side by side
        read_range(linear.path, "side", linear.commits[3])
    with pytest.raises(RangeError, match="holds no commit"):
        read_range(linear.path, "v1", "v1")
    with pytest.raises(RangeError, match="has no commit 'mm-next'") as unknown:
        read_range(linear.path, "v1", "mm-next")
    assert unknown.value.field == "ref"
    with pytest.raises(RangeError, match="is not a branch, tag or commit name"):
        read_range(linear.path, "v1", "--output=/tmp/x")


def test_nothing_the_repository_configuration_names_is_run(linear: Repo, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    trap = tmp_path / "trap.sh"
    # Logs each call; as gpg.program it also signs (a made-up signature git takes as one).
    trap.write_text(
        f"""#!/bin/sh
cat >/dev/null
echo "$0 $*" >>{marker}
printf '\\n[GNUPG:] SIG_CREATED D 1 8 00 0 X\\n' >&2
printf -- '-----BEGIN PGP SIGNATURE-----\\n\\nAAAA\\n-----END PGP SIGNATURE-----\\n'
"""
    )
    trap.chmod(0o755)
    for key in ("gpg.program", "core.fsmonitor", "diff.external", "diff.trap.textconv", "core.pager"):
        _git(linear.path, "config", key, str(trap))
    for key, value in (("log.showSignature", "true"), ("color.ui", "always"), ("core.quotePath", "false")):
        _git(linear.path, "config", key, value)
    (linear.path / ".git" / "info" / "attributes").write_text("* diff=trap\n")
    (linear.path / "mm" / "zswap.c").write_text("/* a signed commit */\n")
    _git(linear.path, "add", "mm/zswap.c")
    _git(linear.path, "-c", "user.signingkey=X", "commit", "-q", "-S", "-m", "mm: a signed commit")
    marker.unlink()

    found = read_range(linear.path, "v1", "main")
    assert not marker.exists(), marker.read_text()
    assert [entry.subject for entry in found.commits][-1] == "mm: a signed commit" and len(found.commits) == 5
    assert not any("\x1b" in entry.stat for entry in found.commits)  # no colour either
    # The trap is live: plain git would have run it (to check the signature).
    _git(linear.path, "log", "--stat", "v1..main")
    assert "--verify" in marker.read_text()


def _lab_file(tmp_path: Path) -> Path:
    lab = tmp_path / "lab.yml"
    text = (REPO / "inventory" / "local.yml").read_text()
    lab.write_text(text.replace("swaplab_lab: local", f"swaplab_lab: local\n    swaplab_kernel_dirs: [{tmp_path}]", 1))
    return lab


def _campaign_file(tmp_path: Path, source: str, extra: str = "", name: str = "range") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""\
name: range
lab: {_lab_file(tmp_path)}
kernels:
  - build:
      source: {source}{extra}
node: {{ram_mib: 256}}
swap: {{size_mib: 512}}
workloads: [{{name: small, mib: 320}}]
repeats: 4
compare: {{primary: swap_in_mibps, figures: {{swap_in_mibps: {{tolerance: 0.25}}}}}}
"""
    )
    return path


def test_the_cli_validates_a_range_and_lists_its_commits(linear: Repo, tmp_path: Path) -> None:
    path = _campaign_file(tmp_path, f"{{git: {linear.path}, ref: main, good: v1}}")
    assert CliRunner().invoke(main, ["validate", str(path)]).exit_code == 0  # a campaign like any other

    shown = CliRunner().invoke(main, ["bisect", "--validate", str(path)])
    assert shown.exit_code == 0, shown.output
    assert f"bisection of 4 commit(s) after {linear.good[:12]}" in shown.output
    assert f"  0. {linear.good[:12]} (good)" in shown.output
    assert f"  3. {linear.commits[2][:12]} mm: swap: read swap back one page at a time" in shown.output
    listed = json.loads(CliRunner().invoke(main, ["bisect", "--validate", "--json", str(path)]).stdout)
    assert listed["commits"] == [linear.good, *linear.commits] and listed["patches"][2] == COMMITS[2][1]


def test_the_cli_refuses_a_range_with_merges_naming_the_file_line_and_field(linear: Repo, tmp_path: Path) -> None:
    _merge_into_main(linear)
    path = _campaign_file(tmp_path, f"\n        git: {linear.path}\n        ref: main\n        good: v1")
    refused = CliRunner().invoke(main, ["bisect", "--validate", str(path)])
    assert refused.exit_code == 2
    assert f"{path}:8: kernels[0].build.source.good: v1..main in {linear.path} holds 1 merge(s)" in refused.output

    unknown = _campaign_file(
        tmp_path, f"\n        git: {linear.path}\n        ref: mm-next\n        good: v1", name="unknown"
    )
    refused = CliRunner().invoke(main, ["bisect", "--validate", str(unknown)])
    assert refused.exit_code == 2 and f"{unknown}:7: kernels[0].build.source.ref: " in refused.output

    both = _campaign_file(tmp_path, f"{{git: {linear.path}, good: v1}}", f"\n      patches: {path}", name="both")
    refused = CliRunner().invoke(main, ["bisect", "--validate", str(both)])
    assert refused.exit_code == 2 and "a patch series or a git range, not both" in refused.output


def _bisected(
    redis_server: RedisServer, campaign: Campaign, series: bisector.Series, repo: Repo
) -> tuple[dict[str, Any] | None, list[list[str]]]:
    """The bisection run to its end on the fake lab; main gains a commit once it began."""
    client = redis_server.client()
    store = CampaignStore(client)
    labels = [f"build:linux@{commit}" for commit in series.commits or []]
    lab = Lab(store, prefix_of=labels.index)
    bid = bisector.create(client, campaign, series, "figure", max_repeats=8)
    _commit(repo.path, "mm/swap.c", "mm: a commit on main after the bisection began")

    asked: list[list[str]] = []
    while bisector.advance(client, store, bid, lab.submit):
        sources = [
            kernel.build.source for kernel in store.campaign_model(lab.submitted[-1]).spec.kernels if kernel.build
        ]
        assert all(isinstance(source, GitSource) and source.good is None for source in sources)
        asked.append(lab.finish(lab.submitted[-1]))
    return bisector.read(client, bid), asked


def test_a_bisection_over_a_range_builds_each_commit_by_its_id_and_names_commit_3(
    redis_server: RedisServer, linear: Repo, tmp_path: Path
) -> None:
    path = _campaign_file(tmp_path, f"{{git: {linear.path}, ref: main, good: v1}}")
    campaign = load_campaign(path)
    series = _series_or_exit(path, campaign, as_json=False)
    shown, asked = _bisected(redis_server, campaign, series, linear)

    good, _, two, three, four = (f"build:linux@{commit}" for commit in [linear.good, *linear.commits])
    # The ends interleaved (good and bad), then commit 2, a base run, commit 3; main moved
    # on meanwhile, and nothing asked for it.
    assert asked == [[good, four, four, good, good, four, four, good], [two] * 4, [good], [three] * 4]
    assert shown is not None and shown["status"] == "done"
    result = shown["result"]
    assert (result["outcome"], result["first_bad"], result["describe"]) == (
        "culprit",
        3,
        "commit 3 is the first bad one",
    )
    assert result["commits"] == {"last_good": linear.commits[1], "first_bad": linear.commits[2]}
    culprit = result["culprit"]
    assert (culprit["commit"], culprit["subject"], culprit["author"]) == (
        linear.commits[2],
        COMMITS[2][1],
        CULPRIT_AUTHOR,
    )
    assert "mm/swap.c" in culprit["stat"]
    assert f"  commit 3 {linear.commits[2][:12]}: {COMMITS[2][1]} ({CULPRIT_AUTHOR})" in _answer_lines(shown)
