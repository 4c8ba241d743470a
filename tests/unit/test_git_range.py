"""A git range's commits as ``git log`` prints them for a bisection: one entry per commit,
its subject, author and diff stat, and nothing else taken for a commit."""

from __future__ import annotations

import pytest

from workers.kbuild.git_range import Range, RangeCommit, RangeError, parse_log

ONE = "1" * 40
TWO = "2" * 40
LOG = (
    f"\0{ONE}\nSwap Tester <swap@example.org>\nmm: a log line\n\n"
    " mm/swapfile.c | 1 +\n 1 file changed, 1 insertion(+)\n"
    f"\0{TWO}\nA. N. Other <other@example.org>\nmm: nothing\n"
)


def test_each_commit_is_read_with_its_subject_author_and_stat_in_order() -> None:
    assert parse_log(LOG) == [
        RangeCommit(
            ONE,
            "mm: a log line",
            "Swap Tester <swap@example.org>",
            " mm/swapfile.c | 1 +\n 1 file changed, 1 insertion(+)",
        ),
        RangeCommit(TWO, "mm: nothing", "A. N. Other <other@example.org>", "(no change)"),
    ]
    assert parse_log("") == []


def test_a_header_without_a_commit_id_is_refused() -> None:
    with pytest.raises(RangeError, match="where a commit id belongs"):
        parse_log("\0not-a-commit\nX <x@y>\nsubject\n")


def test_prefix_zero_is_the_good_commit_and_prefix_k_the_kth_of_the_range() -> None:
    good = "0" * 40
    ranged = Range(good, parse_log(LOG))
    assert ranged.prefixes == [good, ONE, TWO]
