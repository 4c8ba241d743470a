"""NFS server backends, chosen by the inventory's ``swaplab_nfs`` value."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from workers.lab.nfs.base import NfsExport, NfsServer, NfsServerError

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
    return sorted(set(_MODULES) | set(_BACKENDS))


# Where each built-in backend lives: imported when a lab uses it (knfsd brings SSH and Ansible).
_MODULES = {"ganesha": "workers.lab.nfs.ganesha", "knfsd": "workers.lab.nfs.knfsd"}


def make_nfs_server(backend: str, lab: str, settings: dict[str, Any]) -> NfsServer:
    """The NFS server of ``lab``; ``settings`` are the inventory's ``swaplab_nfs_*`` vars."""
    if backend not in _BACKENDS and backend in _MODULES:
        importlib.import_module(_MODULES[backend])  # registers its factory
    factory = _BACKENDS.get(backend)
    if factory is None:
        raise NfsServerError(f"lab {lab}: unknown NFS backend {backend!r} (known: {', '.join(backend_names())})")
    return factory(lab, settings)


__all__ = ["NfsExport", "NfsServer", "NfsServerError", "backend_names", "make_nfs_server", "register_backend"]
