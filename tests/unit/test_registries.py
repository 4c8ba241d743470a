"""What an inventory may name (``model.lab``, checked by ``swaplab validate``) and what a
worker can run (the registries in ``workers/``) are the same sets: a name validation
accepts is never one no worker can drive, and a backend a worker has is never refused."""

from __future__ import annotations

from model.lab import DRIVER_KINDS, NFS_BACKENDS
from workers.drivers import driver_names
from workers.nfs import backend_names


def test_every_driver_kind_the_model_knows_has_a_worker_driver_and_back() -> None:
    assert sorted(DRIVER_KINDS) == driver_names()


def test_every_nfs_backend_the_model_knows_has_a_worker_backend_and_back() -> None:
    assert sorted(NFS_BACKENDS) == backend_names()
