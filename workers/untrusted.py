"""Files someone else controls, read and unpacked by root without following their links.

A submitter's kernel files (a ``.deb``, a modules directory, patches, configs, a source
tarball) and everything a build left behind are read here, so that a link planted in them
never makes root read, write or unpack anything outside them:

- every path is opened one component at a time with ``O_NOFOLLOW`` from a directory we
  hold open (a link anywhere in it is refused, not followed), and a file must be a
  regular one (a FIFO or a device is refused before it is opened);
- reads are bounded, and errors name the file and why it was refused, never its content;
- archives and trees are unpacked or copied member by member into a fresh directory of
  ours: no link leaving the tree, no device file, FIFO or socket, no setuid/setgid file,
  no hard link to a file outside, no member written through a link; and the result is
  walked again before anything else (depmod, decompression, the image builder) touches it.
"""

from __future__ import annotations

import errno
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

MIB = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_MAX_HOPS = 40  # symlinks followed while checking where one leads (the kernel's own limit)


class RefusedFile(Exception):
    """A file or member that is not what swaplab reads: the message says which and why."""


@dataclass(frozen=True)
class TreeRules:
    """What an unpacked or copied tree may hold, beyond the rules every tree follows.

    ``drop_link``: links to leave out instead of checking them (kbuild's ``build`` and
    ``source`` links back to its own trees). ``no_git``: refuse a ``.git`` anywhere (a
    source tree becomes a repository of ours, and a ``.git`` of theirs would configure
    the git that root runs on it).
    """

    max_bytes: int
    max_entries: int = 500_000
    max_depth: int = 64
    drop_link: Callable[[tuple[str, ...]], bool] = lambda _parts: False
    no_git: bool = False


def kbuild_link(parts: tuple[str, ...]) -> bool:
    """``lib/modules/<kver>/build`` and ``source`` (or ``build``/``source`` of a ``<kver>`` root)."""
    if not parts or parts[-1] not in ("build", "source"):
        return False
    return len(parts) == 1 or (len(parts) >= 3 and parts[-3] == "modules")


# ---------------------------------------------------------------- opening without links


def open_dir(path: Path, dir_fd: int | None = None) -> int:
    """An fd of directory ``path`` (relative to ``dir_fd``, or absolute), no link on the way."""
    if path.is_absolute():
        fd, parts = os.open("/", _DIR_FLAGS), path.parts[1:]
    else:
        fd, parts = os.open(".", _DIR_FLAGS, dir_fd=dir_fd), path.parts
    walked = Path("/") if path.is_absolute() else Path()
    for part in parts:
        walked /= part
        if part == "..":
            os.close(fd)
            raise RefusedFile(f"{walked}: '..' is not followed")
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as err:
            raise RefusedFile(_why(walked, err, "a directory", _lstat_mode(part, fd))) from None
        finally:
            os.close(fd)
        fd = nxt
    return fd


def _lstat_mode(name: str, dir_fd: int) -> int | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return None


def open_regular(path: Path, dir_fd: int | None = None) -> int:
    """An fd of the regular file ``path`` (see :func:`open_dir`); the caller closes it."""
    parent = open_dir(path.parent, dir_fd)
    try:
        return open_in(parent, path.name, shown=path)
    finally:
        os.close(parent)


def open_in(dir_fd: int, name: str, shown: Path | str | None = None) -> int:
    """An fd of the regular file ``name`` in ``dir_fd``: checked before it is opened (a FIFO
    would block, a device answer), and the same file after."""
    label = shown if shown is not None else name
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as err:
        raise RefusedFile(_why(label, err, "a regular file")) from None
    if not stat.S_ISREG(before.st_mode):
        raise RefusedFile(f"{label} is {_kind(before.st_mode)}, not a regular file")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as err:
        raise RefusedFile(_why(label, err, "a regular file")) from None
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(after.st_mode):
        os.close(fd)
        raise RefusedFile(f"{label} changed while it was opened")
    return fd


def read_regular(path: Path, limit: int, dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (else refused)."""
    with os.fdopen(open_regular(path, dir_fd), "rb") as handle:
        return read_bounded(handle, limit, path)


def read_bounded(handle: IO[bytes], limit: int, shown: Path | str) -> bytes:
    """Everything ``handle`` holds, refused when it is more than ``limit`` bytes."""
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise RefusedFile(f"{shown} is larger than {_size(limit)}")
    return data


def _why(path: Path | str, err: OSError, wanted: str, mode: int | None = None) -> str:
    if (mode is not None and stat.S_ISLNK(mode)) or err.errno == errno.ELOOP:
        return f"{path} is a symbolic link (links are not followed)"
    if mode is not None and err.errno == errno.ENOTDIR:
        return f"{path} is {_kind(mode)}, not {wanted}"
    reasons = {errno.ENOENT: "does not exist", errno.EACCES: "cannot be read (permission denied)"}
    return f"{path} {reasons.get(err.errno or 0, f'cannot be opened ({err.strerror})')}"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _size(limit: int) -> str:
    return f"{limit / MIB:.0f} MiB" if limit >= MIB else f"{limit} bytes"


# ---------------------------------------------------------------- writing into our own tree


class _Writer:
    """Creates a tree under ``root_fd`` (a fresh directory of ours), never through a link."""

    def __init__(self, root_fd: int, rules: TreeRules, label: str) -> None:
        self.root_fd, self.rules, self.label = root_fd, rules, label
        self.written = 0
        self.entries = 0
        self._cached: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def count(self, parts: tuple[str, ...]) -> None:
        self.entries += 1
        if self.entries > self.rules.max_entries:
            raise RefusedFile(f"{self.label} holds more than {self.rules.max_entries} entries")
        if len(parts) > self.rules.max_depth:
            raise RefusedFile(f"{self.label} nests deeper than {self.rules.max_depth} directories")
        if self.rules.no_git and ".git" in parts:
            raise RefusedFile(f"{self.label}: {'/'.join(parts)} is inside a .git directory (not taken)")

    def parent(self, parts: tuple[str, ...]) -> int:
        """An fd of directory ``parts`` (created as needed); the writer keeps it open."""
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.root_fd)
        for index, part in enumerate(parts):
            with suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                mode = _lstat_mode(part, fd)
                os.close(fd)
                where = "/".join(parts[: index + 1])
                raise RefusedFile(_why(f"{self.label}: {where}", err, "a directory", mode)) from None
            os.close(fd)
            fd = nxt
        self.close()
        self._cached = (parts, fd)
        return fd

    def directory(self, parts: tuple[str, ...]) -> None:
        if parts:
            self.parent(parts)

    def file(self, parts: tuple[str, ...], source: IO[bytes], executable: bool) -> None:
        mode = 0o755 if executable else 0o644
        parent = self.parent(parts[:-1])
        try:
            fd = os.open(parts[-1], _NEW_FILE, mode, dir_fd=parent)
        except FileExistsError:
            raise RefusedFile(f"{self.label}: {'/'.join(parts)} appears twice") from None
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                self.written += len(chunk)
                if self.written > self.rules.max_bytes:
                    raise RefusedFile(f"{self.label} unpacks to more than {_size(self.rules.max_bytes)}")
                out.write(chunk)
            os.fchmod(out.fileno(), mode)  # not the umask's choice, and never setuid

    def symlink(self, parts: tuple[str, ...], target: str) -> None:
        if target.startswith("/") or not _lexically_inside(parts[:-1], target):
            raise RefusedFile(f"{self.label}: {'/'.join(parts)} is a link leaving the tree (-> {target})")
        try:
            os.symlink(target, parts[-1], dir_fd=self.parent(parts[:-1]))
        except FileExistsError:
            raise RefusedFile(f"{self.label}: {'/'.join(parts)} appears twice") from None

    def hardlink(self, parts: tuple[str, ...], target: tuple[str, ...]) -> None:
        source_dir = self.parent(target[:-1])
        src_fd = os.dup(source_dir)
        try:
            linked = os.stat(target[-1], dir_fd=src_fd, follow_symlinks=False)
            if not stat.S_ISREG(linked.st_mode):
                raise RefusedFile(f"{self.label}: {'/'.join(parts)} is a hard link to a non-file")
            os.link(target[-1], parts[-1], src_dir_fd=src_fd, dst_dir_fd=self.parent(parts[:-1]), follow_symlinks=False)
        except FileNotFoundError:
            raise RefusedFile(f"{self.label}: {'/'.join(parts)} is a hard link to a file not in the tree") from None
        except FileExistsError:
            raise RefusedFile(f"{self.label}: {'/'.join(parts)} appears twice") from None
        finally:
            os.close(src_fd)


def _lexically_inside(where: tuple[str, ...], target: str) -> bool:
    depth = len(where)
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part != ".":
            depth += 1
    return True


def _member_parts(name: str, label: str) -> tuple[str, ...]:
    path = PurePosixPath(name)
    if path.is_absolute():
        raise RefusedFile(f"{label}: {name} is an absolute path")
    parts = tuple(part for part in path.parts if part != ".")
    if ".." in parts:
        raise RefusedFile(f"{label}: {name} climbs out of the tree ('..')")
    return parts


# ---------------------------------------------------------------- archives


def extract_tar(archive: tarfile.TarFile, dest: Path, rules: TreeRules, label: str) -> None:
    """Unpack ``archive`` (read as a stream) into the empty directory ``dest``, member by
    member, then check the whole tree (see the module docstring)."""
    with _dir_fd(dest) as root_fd:
        writer = _Writer(root_fd, rules, label)
        try:
            for member in archive:
                _extract_member(archive, member, writer, label)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
            raise RefusedFile(f"{label} is not a readable archive ({type(err).__name__})") from None
        finally:
            writer.close()
        check_tree(root_fd, rules, label)


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, writer: _Writer, label: str) -> None:
    parts = _member_parts(member.name, label)
    if not parts:
        return  # "./": the tree itself
    writer.count(parts)
    shown = "/".join(parts)
    if member.mode & (stat.S_ISUID | stat.S_ISGID) and not member.isdir():
        raise RefusedFile(f"{label}: {shown} is setuid/setgid")
    if member.isdir():
        writer.directory(parts)
    elif member.isreg():
        source = archive.extractfile(member)
        assert source is not None
        writer.file(parts, source, bool(member.mode & 0o111))
    elif member.issym():
        if not writer.rules.drop_link(parts):
            writer.symlink(parts, member.linkname)
    elif member.islnk():
        writer.hardlink(parts, _member_parts(member.linkname, label))
    else:
        raise RefusedFile(f"{label}: {shown} is {_tar_kind(member)} (not taken)")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    return f"a member of type {member.type!r}"


# ---------------------------------------------------------------- copying a directory


def copy_tree(source_fd: int, dest: Path, rules: TreeRules, label: str) -> None:
    """Copy the directory ``source_fd`` (someone else's) into the empty directory ``dest``
    (ours) by the same rules as an archive: links are read, never followed."""
    with _dir_fd(dest) as root_fd:
        writer = _Writer(root_fd, rules, label)
        try:
            _copy_dir(source_fd, (), writer, label)
        finally:
            writer.close()
        check_tree(root_fd, rules, label)


def _copy_dir(dir_fd: int, where: tuple[str, ...], writer: _Writer, label: str) -> None:
    for entry in sorted(os.scandir(dir_fd), key=lambda item: item.name):
        parts = (*where, entry.name)
        writer.count(parts)
        info = entry.stat(follow_symlinks=False)
        shown = f"{label}/{'/'.join(parts)}"
        if stat.S_ISDIR(info.st_mode):
            writer.directory(parts)
            child = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _copy_dir(child, parts, writer, label)
            finally:
                os.close(child)
        elif stat.S_ISLNK(info.st_mode):
            if not writer.rules.drop_link(parts):
                writer.symlink(parts, os.readlink(entry.name, dir_fd=dir_fd))
        elif stat.S_ISREG(info.st_mode):
            if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                raise RefusedFile(f"{shown} is setuid/setgid")
            with os.fdopen(open_in(dir_fd, entry.name, shown), "rb") as source:
                writer.file(parts, source, bool(info.st_mode & 0o111))
        else:
            raise RefusedFile(f"{shown} is {_kind(info.st_mode)} (not taken)")


# ---------------------------------------------------------------- checking a tree


def check_tree(root_fd: int, rules: TreeRules, label: str) -> None:
    """Walk the tree again: links resolve inside it (following them as the kernel would),
    nothing but directories, regular files and links, no setuid/setgid, and every name of a
    hard-linked file lies inside the tree."""
    names: dict[tuple[int, int], int] = {}
    links: dict[tuple[int, int], int] = {}
    for parts, info in walk(root_fd):
        shown = f"{label}: {'/'.join(parts)}"
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink("/".join(parts), dir_fd=root_fd)
            if not _resolves_inside(root_fd, parts[:-1], target):
                raise RefusedFile(f"{shown} is a link leaving the tree (-> {target})")
        elif stat.S_ISREG(info.st_mode):
            if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                raise RefusedFile(f"{shown} is setuid/setgid")
            if info.st_nlink > 1:
                key = (info.st_dev, info.st_ino)
                names[key] = names.get(key, 0) + 1
                links[key] = info.st_nlink
        elif not stat.S_ISDIR(info.st_mode):
            raise RefusedFile(f"{shown} is {_kind(info.st_mode)} (not taken)")
    if any(names[key] < links[key] for key in names):
        raise RefusedFile(f"{label}: a file in it is a hard link to a file outside it")


def walk(dir_fd: int) -> Iterator[tuple[tuple[str, ...], os.stat_result]]:
    """Every entry below ``dir_fd`` (path parts, lstat), directories before their content;
    links are reported, never followed. No recursion: any depth is walked."""
    pending: list[tuple[int, tuple[str, ...]]] = [(os.dup(dir_fd), ())]
    while pending:
        fd, where = pending.pop()
        try:
            for entry in os.scandir(fd):
                parts = (*where, entry.name)
                info = entry.stat(follow_symlinks=False)
                yield parts, info
                if stat.S_ISDIR(info.st_mode):
                    pending.append((os.open(entry.name, _DIR_FLAGS, dir_fd=fd), parts))
        finally:
            os.close(fd)


def _resolves_inside(root_fd: int, where: tuple[str, ...], target: str) -> bool:
    """Whether ``target`` (a link in directory ``where``) stays in the tree, resolved the
    way the kernel resolves it: through the links it meets, not by its text alone (a link
    to ``x/..`` where ``x`` is a link to ``.`` leads out)."""
    if target.startswith("/"):
        return False
    current = list(where)
    pending = list(PurePosixPath(target).parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return False
            current.pop()
            continue
        current.append(part)
        try:
            info = os.stat("/".join(current), dir_fd=root_fd, follow_symlinks=False)
        except OSError:
            continue  # dangling: nothing to follow, the rest is read as text
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            inner = os.readlink("/".join(current), dir_fd=root_fd)
            if hops > _MAX_HOPS or inner.startswith("/"):
                return False
            current.pop()
            pending = [*PurePosixPath(inner).parts, *pending]
    return True


@contextmanager
def _dir_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)
