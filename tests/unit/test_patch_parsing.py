"""The pure parts of patch application: reading a diff, git am's answers and a mail's subject.

The real ``git am`` against the real tree is tests/integration/test_patch_series.py.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.kbuild.patches import (
    AppliedPatch,
    FileDiff,
    Hunk,
    PatchError,
    failed_location,
    failure_message,
    gits_words,
    message_subject,
    parse_diff,
    parse_log,
    read_series,
    rejected_hunk,
    stopped_at,
    strip_subject,
)

# What `git am --show-current-patch=diff` prints: diffstat, two files, a removed line that
# looks like a header, a file without a final newline, the mail signature.
SHOWN = """\
---
 fs/nfs/file.c | 4 ++--
 mm/swapfile.c | 2 +-
 2 files changed, 3 insertions(+), 3 deletions(-)

diff --git a/fs/nfs/file.c b/fs/nfs/file.c
index 1111111..2222222 100644
--- a/fs/nfs/file.c
+++ b/fs/nfs/file.c
@@ -10,3 +10,3 @@
 a
-b
+B
 c
@@ -480,4 +480,4 @@ static int nfs_swap_activate(struct swap_info_struct *sis, struct file *file,
 x
--- not a header
+++ nor this
 y
diff --git a/mm/swapfile.c b/mm/swapfile.c
index 3333333..4444444 100644
--- a/mm/swapfile.c
+++ b/mm/swapfile.c
@@ -1 +1 @@
-old
+new
\\ No newline at end of file
--\x20
2.39.5
"""


def test_a_git_diff_is_read_file_by_file_hunk_by_hunk() -> None:
    nfs, swap = parse_diff(SHOWN)
    assert (nfs.old, nfs.new, swap.old, swap.new) == (
        "fs/nfs/file.c",
        "fs/nfs/file.c",
        "mm/swapfile.c",
        "mm/swapfile.c",
    )
    assert [(h.old_start, h.old_len) for h in nfs.hunks] == [(10, 3), (480, 4)]
    assert nfs.hunks[1].text.splitlines()[-2:] == ["+++ nor this", " y"]
    assert swap.hunks == [Hunk(1, 1, "@@ -1 +1 @@\n-old\n+new\n\\ No newline at end of file")]


def test_new_files_and_plain_diffs_are_read_too() -> None:
    created = "diff --git a/new.c b/new.c\nnew file mode 100644\n--- /dev/null\n+++ b/new.c\n@@ -0,0 +1,2 @@\n+a\n+b\n"
    [diff] = parse_diff(created)
    assert (diff.old, diff.new, diff.hunks[0].old_start, diff.hunks[0].old_len) == (None, "new.c", 0, 0)
    plain = (
        "--- linux.orig/a.c\t2024-01-01 00:00:00\n+++ linux/a.c\t2024-01-02 00:00:00\n@@ -1 +1 @@\n-x\n+y\n"
        "--- linux.orig/b.c\n+++ linux/b.c\n@@ -5,2 +5,1 @@\n k\n-z\n"
    )
    assert [(d.old, d.new, len(d.hunks)) for d in parse_diff(plain)] == [("a.c", "a.c", 1), ("b.c", "b.c", 1)]


def test_a_blank_context_line_a_mailer_stripped_stays_in_its_hunk() -> None:
    [diff] = parse_diff("--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n")
    assert diff.hunks[0].text == "@@ -1,3 +1,3 @@\n a\n\n-b\n+c"


@given(
    st.lists(st.text(alphabet="-+ @\\ab", max_size=5), max_size=12),
    st.lists(st.text(alphabet="-+ @\\ab", max_size=5), max_size=12),
)
def test_any_unified_diff_is_split_into_exactly_its_hunks(old: list[str], new: list[str]) -> None:
    lines = list(difflib.unified_diff(old, new, "a/f.c", "b/f.c", lineterm="", n=2))
    files = parse_diff("\n".join(lines))
    if not lines:
        assert files == []
        return
    [diff] = files
    assert "\n".join(hunk.text for hunk in diff.hunks) == "\n".join(lines[2:])
    for hunk in diff.hunks:
        body = hunk.text.splitlines()[1:]
        assert hunk.old_len == sum(1 for line in body if line[:1] in (" ", "-"))


def test_a_hunk_covers_its_old_range_and_an_insertion_its_start() -> None:
    hunk = Hunk(480, 4, "")
    assert [hunk.covers(n) for n in (479, 480, 483, 484)] == [False, True, True, False]
    assert Hunk(7, 0, "").covers(7) and not Hunk(7, 0, "").covers(8)


def test_the_rejected_hunk_is_the_one_covering_the_line_else_the_first() -> None:
    files = parse_diff(SHOWN)
    assert rejected_hunk(files, "fs/nfs/file.c", 481).startswith("@@ -480,4")
    assert rejected_hunk(files, "fs/nfs/file.c", 300).startswith("@@ -10,3")
    assert rejected_hunk(files, "fs/nfs/file.c", None).startswith("@@ -10,3")
    assert rejected_hunk(files, "mm/other.c", 1) == ""
    assert rejected_hunk(files, None, None) == ""
    assert rejected_hunk([FileDiff("bin", "bin")], "bin", 1) == ""


AM_STDOUT = """\
Applying: mm: swap: say when swapon is called
Applying: nfs: swap: name the swapfile that has holes
Patch failed at 0002 nfs: swap: name the swapfile that has holes
When you have resolved this problem, run "git am --continue".
If you prefer to skip this patch, run "git am --skip" instead.
To restore the original branch and stop patching, run "git am --abort".
"""
AM_STDERR = """\
error: patch failed: fs/nfs/file.c:487
error: fs/nfs/file.c: patch does not apply
hint: Use 'git am --show-current-patch=diff' to see the failed patch
"""


def test_git_ams_answer_gives_the_subject_the_place_and_its_words() -> None:
    assert stopped_at(AM_STDOUT) == "nfs: swap: name the swapfile that has holes"
    assert stopped_at("Patch is empty.\n") is None
    words = gits_words(AM_STDOUT, AM_STDERR)
    assert words == ["error: patch failed: fs/nfs/file.c:487", "error: fs/nfs/file.c: patch does not apply"]
    assert failed_location(words, []) == ("fs/nfs/file.c", 487)
    assert failed_location(["error: patch failed: odd:name.c:12"], []) == ("odd:name.c", 12)


def test_a_failure_without_a_line_still_names_the_file_of_the_patch() -> None:
    files = parse_diff(SHOWN)
    assert failed_location(["error: mm/swapfile.c: does not exist in index"], files) == ("mm/swapfile.c", None)
    assert failed_location(["error: No valid patches in input"], files) == (None, None)


def test_the_message_names_position_subject_place_words_and_hunk() -> None:
    message = failure_message(
        2, 3, "nfs: x", "fs/nfs/file.c", 487, "@@ -487,1 +487,1 @@\n-a\n+b", ["error: e"], rejected=True
    )
    assert message.splitlines() == [
        "patch 2/3 'nfs: x' does not apply at fs/nfs/file.c:487",
        "git am: error: e",
        "rejected hunk:",
        "@@ -487,1 +487,1 @@",
        "-a",
        "+b",
    ]
    assert failure_message(1, 1, "x", None, None, "", ["Patch is empty."], rejected=False) == (
        "patch 1/1 'x' stopped git am\ngit am: Patch is empty."
    )
    assert failure_message(1, 1, "", None, None, "", [], rejected=False) == "patch 1/1 (no subject) stopped git am"


@pytest.mark.parametrize(
    ("raw", "subject"),
    [
        ("[PATCH 2/3] mm: swap: x", "mm: swap: x"),
        ("[PATCH v2 03/17] [RFC]  nfs:   y", "nfs: y"),
        ("Re: [PATCH] z", "z"),
        ("mm: [bracket] kept inside", "mm: [bracket] kept inside"),
    ],
)
def test_subject_tags_are_stripped_like_git_mailinfo(raw: str, subject: str) -> None:
    assert strip_subject(raw) == subject


def test_a_mails_subject_is_decoded_and_unfolded(tmp_path: Path) -> None:
    mail = tmp_path / "0001"
    mail.write_bytes(b"From: A <a@b>\nSubject: [PATCH 1/2] nfs: =?UTF-8?q?caf=C3=A9?=\n and more\n\nbody\n")
    assert message_subject(mail) == "nfs: caf\u00e9 and more"
    assert message_subject(tmp_path / "missing") == ""


def test_the_log_reads_back_subjects_and_authors() -> None:
    out = "mm: a\x1fAnn <ann@x>\x00nfs: b\x1fBob <bob@x>"
    assert parse_log(out) == [AppliedPatch("mm: a", "Ann <ann@x>"), AppliedPatch("nfs: b", "Bob <bob@x>")]
    assert parse_log("") == []


def test_a_series_is_an_mbox_or_a_directorys_patches_in_name_order(tmp_path: Path) -> None:
    mbox = tmp_path / "series.mbox"
    mbox.write_text("From x\n")
    assert [(file.name, file.data) for file in read_series(mbox)] == [("series.mbox", b"From x\n")]
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("0002-b.patch", "0010-j.patch", "0001-a.patch", "README", "notes.txt"):
        (folder / name).write_text(name)
    assert [file.name for file in read_series(folder)] == ["0001-a.patch", "0002-b.patch", "0010-j.patch"]
    assert read_series(folder)[0].data == b"0001-a.patch"
    with pytest.raises(PatchError, match="neither an mbox file nor a directory"):
        read_series(tmp_path / "nowhere")


def test_a_series_member_that_is_no_regular_file_is_refused_unread(tmp_path: Path) -> None:
    """A link (to anything), a FIFO (it would block) or a directory named like a patch."""
    secret = tmp_path / "secret"
    secret.write_text("Subject: the secret line\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for index, make in enumerate(
        (lambda p: p.symlink_to(secret), lambda p: p.symlink_to(fifo), lambda p: os.mkfifo(p), lambda p: p.mkdir())
    ):
        folder = tmp_path / f"series{index}"
        folder.mkdir()
        (folder / "0002-fine.patch").write_text("From x\n")
        make(folder / "0001-bad.patch")
        with pytest.raises(PatchError, match=r"0001-bad\.patch") as refused:
            read_series(folder)
        assert "secret line" not in str(refused.value)
    linked = tmp_path / "linked.mbox"
    linked.symlink_to(secret)
    with pytest.raises(PatchError, match="symbolic link") as refused:
        read_series(linked)
    assert "secret line" not in str(refused.value)
