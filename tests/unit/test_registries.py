"""What an inventory may name (``model.lab``, checked by ``swaplab validate``) and what a
worker can run (the registries in ``workers/``) are the same sets: a name validation
accepts is never one no worker can drive, and a backend a worker has is never refused.

The registries are read in a fresh interpreter, as a worker starts: other tests register
fakes into this process's."""

from __future__ import annotations

import json
import subprocess
import sys

from model.lab import DRIVER_KINDS, NFS_BACKENDS

READ = (
    "import json; from workers.drivers import driver_names; from workers.nfs import backend_names; "
    "print(json.dumps({'drivers': driver_names(), 'backends': backend_names()}))"
)


def _worker_registries() -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", READ], capture_output=True, text=True, check=True, timeout=60)
    registries: dict[str, list[str]] = json.loads(out.stdout)
    return registries


def test_the_models_names_and_the_workers_registries_are_the_same_sets() -> None:
    registries = _worker_registries()
    assert sorted(DRIVER_KINDS) == registries["drivers"]
    assert sorted(NFS_BACKENDS) == registries["backends"]
