"""Apply a patch series to a worktree the way a mailing list delivers it: with ``git am``.

A series is an mbox (``git format-patch --stdout``, ``b4 am``) or a directory of
``git format-patch -o`` files, applied in name order. Every patch becomes a commit that keeps
its subject and author; the committer is swaplab, dated like the author, so one base and one
series always give the same commits. There is no ``--3way``: a patch applies to exactly
this tree, or the series is refused with the patch's position and subject, the file and line
git names, the hunk it rejected and git's own words, and the worktree is back at its base.

git runs with swaplab's settings only — no system or user configuration, no hooks, the C
locale, no ``GIT_*`` variables — because a user's ``am.threeWay``, commit signing or hook
must not change what applies, ``GIT_DIR`` would redirect ``-C``, and a translated git would
word its errors so that they no longer parse.

The series is the submitter's: its files are read without following links (a
``0001.patch`` that is a link, a FIFO or a device is refused unread, and no error quotes a
refused file), bounded, and copied; git only ever reads the copies. In a build the commits
are made by the build user in the build's own tree (workers.kbuild.build passes the git
to run); ``git mailsplit`` runs here, on the copies.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from workers import untrusted
from workers.kbuild.tree import GIT_IDENTITY, TreeError

_AM = ("am", "--patch-format=mbox", "--no-3way", "--no-gpg-sign", "--committer-date-is-author-date")
_FAILED_AT = re.compile(r"^Patch failed at (\d+) (.*)$", re.MULTILINE)
_PATCH_FAILED = re.compile(r"^error: patch failed: (.+):(\d+)$")
_DIFF_GIT = re.compile(r"^diff --git a/(.+) b/(.+)$")
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
# git am's progress and its advice on resuming (we abort instead): not part of the error.
_NOT_THE_ERROR = re.compile(
    r"^(Applying: |Patch failed at |hint: |When you have resolved|If you prefer to skip|To record the empty|To restore the original)"
)
# What git mailinfo strips from a subject: "Re:", "[PATCH v2 3/7]", "[RFC]" ... at its start.
_SUBJECT_TAGS = re.compile(r"^(?:\s*(?:re\s*:|\[[^\]]*\]))+\s*", re.IGNORECASE)
# Bounds on a series: a large kernel series is a few MiB.
SERIES_MAX_BYTES = 64 * untrusted.MIB
SERIES_MAX_FILES = 1000

# Runs ``git <args>`` in the worktree the series goes on; ``check``: PatchError if it fails.
Git = Callable[[Sequence[str], bool], subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class SeriesFile:
    """One file of a series as read (a copy: nothing reads the submitter's file again)."""

    name: str
    data: bytes


@dataclass(frozen=True)
class AppliedPatch:
    """One patch of the series as committed."""

    subject: str  # without "[PATCH n/m]"
    author: str  # "Name <email>"


@dataclass(frozen=True)
class Hunk:
    """One ``@@ -a,b +c,d @@`` hunk: where it applies in the old file, and its text (header included)."""

    old_start: int
    old_len: int
    text: str

    def covers(self, line: int) -> bool:
        """Whether ``line`` of the old file lies in this hunk (a pure insertion covers its start)."""
        return self.old_start <= line < self.old_start + max(self.old_len, 1)


@dataclass(frozen=True)
class FileDiff:
    """One file of a diff: its old and new paths (None for /dev/null) and its hunks."""

    old: str | None
    new: str | None
    hunks: list[Hunk] = field(default_factory=list)


class PatchError(TreeError):
    """A series could not be applied: which patch, where, and what git said."""

    def __init__(
        self,
        message: str,
        *,
        index: int = 0,
        total: int = 0,
        subject: str = "",
        file: str | None = None,
        line: int | None = None,
        hunk: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.index = index  # 1-based; 0 when no patch is to blame (an empty series)
        self.total = total
        self.subject = subject
        self.file = file
        self.line = line
        self.hunk = hunk
        self.detail = detail


def read_series(patches: Path) -> list[SeriesFile]:
    """The files of a series, read: an mbox is itself, a directory its ``*.patch`` files in
    name order. Nothing is followed: a link or a non-regular file is refused, unread."""
    try:
        fd = untrusted.open_dir(patches)
    except untrusted.RefusedFile:
        return [SeriesFile(patches.name, _read_one(patches))]
    try:
        # git format-patch numbers its files (0001-..., 0002-...): name order is series order.
        names = sorted(name for name in os.listdir(fd) if name.endswith(".patch"))
        if len(names) > SERIES_MAX_FILES:
            raise PatchError(f"patch series {patches} has more than {SERIES_MAX_FILES} patches")
        series = [SeriesFile(name, _read_one(patches / name, fd)) for name in names]
    finally:
        os.close(fd)
    if sum(len(file.data) for file in series) > SERIES_MAX_BYTES:
        raise PatchError(f"patch series {patches} is larger than {SERIES_MAX_BYTES >> 20} MiB")
    return series


# What begins each message of an mbox (git format-patch's own line).
_MBOX_FROM = b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"


def messages(series: list[SeriesFile], label: str) -> list[SeriesFile]:
    """The series one patch a file, in the order git am takes them: an mbox's messages
    split as git splits them, each an mbox of one."""
    with tempfile.TemporaryDirectory(prefix="swaplab-series-") as scratch:
        staged = stage_series(series, Path(scratch) / "files")
        if not staged:
            return []
        into = Path(scratch) / "split"
        into.mkdir()
        total = _split(staged, into, label)
        return [
            SeriesFile(f"{index:04d}.patch", _as_mbox((into / f"{index:04d}").read_bytes()))
            for index in range(1, total + 1)
        ]


def describe(message: SeriesFile) -> tuple[str, str, str]:
    """A patch's subject (as git am commits it), author and diff stat (``git apply --stat``
    of the copy: git only reads it)."""
    headers = BytesHeaderParser(policy=default_policy).parsebytes(message.data)
    with tempfile.NamedTemporaryFile(prefix="swaplab-patch-", suffix=".patch") as copy:
        copy.write(message.data)
        copy.flush()
        proc = subprocess.run(
            ["git", "apply", "--stat", copy.name],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            env=_git_env(),
            check=False,
        )
    stat = (
        proc.stdout.strip()
        if proc.returncode == 0
        else f"(no diff stat: {' '.join(gits_words(proc.stdout, proc.stderr))[:200]})"
    )
    return strip_subject(str(headers.get("Subject", ""))), " ".join(str(headers.get("From", "")).split()), stat


def _as_mbox(message: bytes) -> bytes:
    # git mailsplit keeps each message's "From " line; a lone message may have had none.
    return message if message.startswith(b"From ") else _MBOX_FROM + message


def _read_one(path: Path, dir_fd: int | None = None) -> bytes:
    try:
        if dir_fd is None:
            return untrusted.read_regular(path, SERIES_MAX_BYTES)
        with os.fdopen(untrusted.open_in(dir_fd, path.name, path), "rb") as handle:
            return untrusted.read_bounded(handle, SERIES_MAX_BYTES, path)
    except untrusted.RefusedFile as refused:
        if dir_fd is None and not _exists(path):
            raise PatchError(f"patch series {path} is neither an mbox file nor a directory of .patch files") from None
        raise PatchError(f"patch series: {refused}") from None


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except OSError:
        return False
    return True


def stage_series(series: list[SeriesFile], into: Path) -> list[Path]:
    """The series' non-blank files written into ``into`` (ours), in order: what git reads."""
    into.mkdir(parents=True, exist_ok=True)
    staged = []
    # A blank file is no message at all (git mailsplit would call it a broken mbox).
    for index, file in enumerate((file for file in series if file.data.strip()), 1):
        path = into / f"{index:04d}.patch"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as out:
            out.write(file.data)
            os.fchmod(out.fileno(), 0o644)  # the build user reads them, whatever the umask
        staged.append(path)
    return staged


def apply_series(worktree: Path, patches: Path) -> list[AppliedPatch]:
    """Commit each patch of the series on the worktree's HEAD, in order, or none of them."""
    series = read_series(patches)
    with tempfile.TemporaryDirectory(prefix="swaplab-series-") as copies:
        files = stage_series(series, Path(copies))
        return apply_staged(local_git(worktree), files, [str(path) for path in files], str(patches))


def apply_staged(git: Git, files: list[Path], inside: list[str], label: str) -> list[AppliedPatch]:
    """Commit the staged series (``files`` here, ``inside`` where ``git`` sees them) on HEAD."""
    if not files:
        raise PatchError(f"patch series {label} is empty: it holds no patch")
    base = git(["rev-parse", "--verify", "HEAD"], True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="swaplab-split-") as split:
        total = _split(files, Path(split), label)
        am = git([*_AM, "--", *inside], False)
        if am.returncode != 0:
            raise _failure(git, base, total, Path(split), am)
    return parse_log(git(["log", "--reverse", "-z", "--format=%s%x1f%an <%ae>", f"{base}..HEAD"], True).stdout)


def local_git(worktree: Path) -> Git:
    """``git -C worktree`` run by this process, with swaplab's settings only."""
    return lambda args, check: _git(worktree, *args, check=check)


def _split(files: list[Path], into: Path, label: str) -> int:
    """The number of messages in the series, split as git am splits it (into 0001, 0002 ...)."""
    argv = ["git", "mailsplit", "-b", f"-o{into}", "--", *map(str, files)]
    proc = subprocess.run(
        argv, capture_output=True, encoding="utf-8", errors="replace", env=_git_env(), cwd=into, check=False
    )
    if proc.returncode != 0:
        words = "; ".join(gits_words(proc.stdout, proc.stderr))
        raise PatchError(f"patch series {label} is not an mbox: {words}")
    return int(proc.stdout.strip())


def _failure(git: Git, base: str, total: int, split: Path, am: subprocess.CompletedProcess[str]) -> PatchError:
    """Undo the partial series (back to ``base``) and say which patch failed, where and why."""
    applied = git(["rev-list", "--count", f"{base}..HEAD"], True).stdout.strip()
    index = int(applied or 0) + 1  # the patches before the failing one are committed
    diff = git(["am", "--show-current-patch=diff"], False).stdout
    git(["am", "--abort"], False)  # fails harmlessly when no session started
    stopped = stopped_at(am.stdout)
    subject = stopped or message_subject(split / f"{index:04d}")
    words = gits_words(am.stdout, am.stderr)
    files = parse_diff(diff)
    file, line = failed_location(words, files)
    hunk = rejected_hunk(files, file, line)
    message = failure_message(index, total, subject, file, line, hunk, words, rejected=stopped is not None)
    return PatchError(
        message, index=index, total=total, subject=subject, file=file, line=line, hunk=hunk, detail="\n".join(words)
    )


def _git(worktree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["git", "-C", str(worktree), *GIT_IDENTITY, "-c", "core.hooksPath=/dev/null", *args]
    # errors="replace": a patch in Latin-1 must still make a readable message.
    proc = subprocess.run(argv, capture_output=True, encoding="utf-8", errors="replace", env=_git_env(), check=False)
    if check and proc.returncode != 0:
        raise PatchError(f"git {' '.join(args[:2])} in {worktree}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _git_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    return env | {"LC_ALL": "C", "LANGUAGE": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


# -- reading git's answers (pure) -------------------------------------------------------------------------
def parse_log(out: str) -> list[AppliedPatch]:
    """``git log -z --format=%s%x1f%an <%ae>`` as applied patches."""
    patches = []
    for entry in out.split("\0"):
        if entry.strip():
            subject, author = entry.strip("\n").split("\x1f", 1)
            patches.append(AppliedPatch(subject, author))
    return patches


def stopped_at(am_stdout: str) -> str | None:
    """The subject in git am's "Patch failed at 0002 <subject>" (None if it stopped otherwise)."""
    match = _FAILED_AT.search(am_stdout)
    return match.group(2).strip() if match else None


def gits_words(stdout: str, stderr: str) -> list[str]:
    """git's error lines, without its progress and its advice on how to resume."""
    lines = (line.strip() for line in f"{stdout}\n{stderr}".splitlines())
    return [line for line in lines if line and not _NOT_THE_ERROR.match(line)]


def failed_location(words: list[str], files: list[FileDiff]) -> tuple[str | None, int | None]:
    """The file (and line, when git names one) the failure is about."""
    for word in words:
        if match := _PATCH_FAILED.match(word):
            return match.group(1), int(match.group(2))
    # Other failures name the file alone: "error: mm/x.c: does not exist in index".
    names = [name for diff in files for name in (diff.old, diff.new) if name]
    for word in words:
        for name in names:
            if word.startswith(f"error: {name}: "):
                return name, None
    return None, None


def rejected_hunk(files: list[FileDiff], file: str | None, line: int | None) -> str:
    """The hunk of ``file`` whose old range covers ``line``; else the file's first hunk; else ""."""
    for diff in files:
        if file is not None and file in (diff.old, diff.new) and diff.hunks:
            covering = [hunk for hunk in diff.hunks if line is not None and hunk.covers(line)]
            return (covering or diff.hunks)[0].text
    return ""


def message_subject(message: Path) -> str:
    """A mail's subject as git am commits it ("[PATCH 2/3]" and "Re:" stripped), "" if none."""
    try:
        with message.open("rb") as mail:
            subject = str(BytesHeaderParser(policy=default_policy).parse(mail).get("Subject", ""))
    except OSError:
        return ""
    return strip_subject(subject)


def strip_subject(subject: str) -> str:
    """A subject without its leading tags: "[PATCH v2 2/3] mm: x" -> "mm: x"."""
    return _SUBJECT_TAGS.sub("", " ".join(subject.split()))


def failure_message(
    index: int,
    total: int,
    subject: str,
    file: str | None,
    line: int | None,
    hunk: str,
    words: list[str],
    *,
    rejected: bool,
) -> str:
    """The message: "patch 2/3 'mm: x' does not apply at mm/x.c:120", git's lines, the rejected hunk.

    ``rejected``: git said "Patch failed at" (the patch does not apply), rather than stopping
    on it for another reason (an empty patch, a mail without a diff).
    """
    what = "does not apply" if rejected else "stopped git am"
    where = f" at {file}:{line}" if file and line is not None else f" at {file}" if file else ""
    named = f"'{subject}'" if subject else "(no subject)"
    lines = [f"patch {index}/{total} {named} {what}{where}", *(f"git am: {word}" for word in words)]
    if hunk:
        lines += ["rejected hunk:", hunk]
    return "\n".join(lines)


# -- reading a diff (pure) --------------------------------------------------------------------------------
def parse_diff(text: str) -> list[FileDiff]:
    """The files and hunks of a unified diff (git's or plain ``diff -u``), in order."""
    files: list[FileDiff] = []
    lines = text.splitlines()
    at = 0
    while at < len(lines):
        line = lines[at]
        if match := _DIFF_GIT.match(line):
            files.append(FileDiff(match.group(1), match.group(2)))
        elif line.startswith("--- ") and at + 1 < len(lines) and lines[at + 1].startswith("+++ "):
            named = FileDiff(_path(line[4:]), _path(lines[at + 1][4:]))
            # After "diff --git" the ---/+++ pair refines that file (/dev/null); otherwise it starts one.
            if files and not files[-1].hunks:
                files[-1] = named
            else:
                files.append(named)
            at += 1
        elif (header := _HUNK_HEADER.match(line)) and files:
            hunk, at = _read_hunk(lines, at, header)
            files[-1].hunks.append(hunk)
            continue
        at += 1
    return files


def _read_hunk(lines: list[str], at: int, header: re.Match[str]) -> tuple[Hunk, int]:
    """The hunk starting at ``lines[at]`` and the index after it, read by its line counts.

    Counting (not pattern matching) is what tells a removed line "--- x" from the next
    file's header, and where the hunk ends when a mail signature follows it.
    """
    old_start = int(header.group(1))
    old_len = int(header.group(2)) if header.group(2) is not None else 1
    new_len = int(header.group(4)) if header.group(4) is not None else 1
    body, old_left, new_left = [lines[at]], old_len, new_len
    at += 1
    while at < len(lines) and (old_left > 0 or new_left > 0 or lines[at].startswith("\\")):
        tag = lines[at][:1]
        if tag in (" ", ""):  # "": a blank context line whose space a mailer ate
            old_left, new_left = old_left - 1, new_left - 1
        elif tag == "-":
            old_left -= 1
        elif tag == "+":
            new_left -= 1
        elif tag != "\\":  # "\ No newline at end of file" counts for neither side
            break  # a truncated hunk: keep what there is
        body.append(lines[at])
        at += 1
    return Hunk(old_start, old_len, "\n".join(body)), at


def _path(name: str) -> str | None:
    """A ---/+++ path without its a/ or b/ and any timestamp; None for /dev/null."""
    name = name.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    return name.split("/", 1)[1] if "/" in name else name
