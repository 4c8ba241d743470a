"""Where swaplab keeps what it generates: kernel cache, node images, keys, lab state, the
embedded services' data and credentials, and the results.

Everything lives under one user cache directory (``$SWAPLAB_CACHE``, default
``$XDG_CACHE_HOME/swaplab`` or ``~/.cache/swaplab``) so a clean clone never carries
generated files and two checkouts share the expensive kernel downloads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

# The cache holds the labs' SSH keys, node images carrying the nodes' host key, the results
# database and the embedded services' credentials: the root and every directory swaplab
# makes in it are 0700. No other user needs a path through it (the build user is given its
# directories by bind mounts, workers/kbuild/sandbox.py).
PRIVATE_DIR_MODE = 0o700


def cache_root() -> Path:
    """The root of swaplab's cache; created on first use, 0700."""
    explicit = os.environ.get("SWAPLAB_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "swaplab"
    ours = not root.exists() or "swaplab" in root.name
    root.mkdir(parents=True, exist_ok=True)
    if ours:  # a directory given as SWAPLAB_CACHE that is not swaplab's keeps its mode
        restrict(root, PRIVATE_DIR_MODE)
    return root


def cache_dir(*parts: str) -> Path:
    """A sub-directory of the cache (``kernels``, ``images``, ``keys``, ``labs/<lab>`` ...).

    Directories it makes are 0700, and the top-level one is narrowed to 0700 when an older
    swaplab left it wider.
    """
    root = cache_root()
    names = Path(*parts).parts if parts else ()
    path = root
    for name in names:
        path = path / name
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=PRIVATE_DIR_MODE)
    if names:
        restrict(root / names[0], PRIVATE_DIR_MODE)
    return path


def restrict(path: Path, mode: int) -> None:
    """Take away the permission bits of ``path`` that ``mode`` does not grant.

    Only on what this user owns, and never on a sticky directory (``/tmp`` given as the
    cache): a shared directory's mode is not swaplab's to change.
    """
    info = path.stat()
    current = info.st_mode & 0o7777
    if info.st_uid != os.geteuid() or current & 0o1000 or not current & 0o777 & ~mode:
        return
    path.chmod(current & mode)


def results_root() -> Path:
    """Where result directories go (``$SWAPLAB_RESULTS``, default ./results), shared with the CLI on one host."""
    return Path(os.environ.get("SWAPLAB_RESULTS", "results")).resolve()


def private_file(path: Path, content: str) -> None:
    """Write ``content`` readable by this user only (0600, in a 0700 directory), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)
    tmp.replace(path)


class UnsafePath(RuntimeError):
    """A path swaplab was about to write through is not one it can trust (a link, another owner)."""


def own_subdir(root: Path, name: str) -> int:
    """An fd of directory ``root/name``, created if missing, never through a link.

    ``name`` is one path component (a campaign id, checked by the caller). The directory
    must belong to this user: a directory someone else made beforehand could hold links
    that turn our writes into theirs. The caller closes the fd.
    """
    if not name or "/" in name or name in (".", ".."):
        raise UnsafePath(f"not a single path component: {name!r}")
    root.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=root_fd)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        except OSError as err:  # ELOOP / ENOTDIR: a link or a file stands there
            raise UnsafePath(f"{root / name} is not a directory of ours ({err.strerror})") from None
    finally:
        os.close(root_fd)
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise UnsafePath(f"{root / name} belongs to another user; refusing to write into it")
    return fd


def replace_file(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``name`` in the directory ``dir_fd`` atomically, never through a link.

    The data goes to a fresh file (O_EXCL|O_NOFOLLOW, a random name) that is then renamed
    over ``name``: rename replaces a link standing at ``name`` instead of following it,
    and a reader never sees half a file.
    """
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), mode)  # the umask must not decide who may read a result
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def private_dir(path: Path) -> Path:
    """``path`` as a directory of this user that nobody else may enter (0700), created if
    missing; refused when it is a link or another user's (they could plant files in it)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is not a directory (a link?)")
    if info.st_uid != os.geteuid():
        raise UnsafePath(f"{path} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path
