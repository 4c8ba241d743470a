"""NFS server backends, chosen by the inventory's ``swaplab_nfs`` value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers.nfs.base import NfsExport, NfsServer, NfsServerError

NfsFactory = Callable[[str, dict[str, Any]], NfsServer]
_BACKENDS: dict[str, NfsFactory] = {}


def register_backend(name: str) -> Callable[[NfsFactory], NfsFactory]:
    """Class decorator: make a backend available as ``swaplab_nfs: <name>``."""

    def add(factory: NfsFactory) -> NfsFactory:
        _BACKENDS[name] = factory
        return factory

    return add


def backend_names() -> list[str]:
    """Names an inventory may use for ``swaplab_nfs``."""
    return sorted(_BACKENDS)


def make_nfs_server(backend: str, lab: str, settings: dict[str, Any]) -> NfsServer:
    """The NFS server of ``lab``; ``settings`` are the inventory's ``swaplab_nfs_*`` vars."""
    try:
        factory = _BACKENDS[backend]
    except KeyError:
        raise NfsServerError(
            f"lab {lab}: unknown NFS backend {backend!r} (known: {', '.join(backend_names())})"
        ) from None
    return factory(lab, settings)


from workers.nfs import ganesha  # noqa: E402,F401  (registers the built-in backend)

__all__ = ["NfsExport", "NfsServer", "NfsServerError", "make_nfs_server", "register_backend"]
