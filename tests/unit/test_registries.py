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
    "import importlib, json; from workers.drivers import driver_names; import workers.lab.nfs as nfs; "
    "names = nfs.backend_names(); [importlib.import_module(module) for module in nfs._MODULES.values()]; "
    "print(json.dumps({'drivers': driver_names(), 'backends': names, 'registered': sorted(nfs._BACKENDS)}))"
)


def _worker_registries() -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", READ], capture_output=True, text=True, check=True, timeout=60)
    registries: dict[str, list[str]] = json.loads(out.stdout)
    return registries


def test_the_models_names_and_the_workers_registries_are_the_same_sets() -> None:
    registries = _worker_registries()
    assert sorted(DRIVER_KINDS) == registries["drivers"]
    assert sorted(NFS_BACKENDS) == registries["backends"]
    # Each backend's module, once loaded, registers the backend it is named for.
    assert sorted(NFS_BACKENDS) == registries["registered"]
