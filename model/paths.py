"""Where swaplab keeps what it generates: kernel cache, node images, keys, lab state, the
embedded services' data and credentials, and the results.

Everything lives under one user cache directory (``$SWAPLAB_CACHE``, default
``$XDG_CACHE_HOME/swaplab`` or ``~/.cache/swaplab``) so a clean clone never carries
generated files and two checkouts share the expensive kernel downloads.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root of swaplab's cache; created on first use."""
    explicit = os.environ.get("SWAPLAB_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "swaplab"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    """A sub-directory of the cache (``kernels``, ``images``, ``keys``, ``labs/<lab>`` ...)."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
