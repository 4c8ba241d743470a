"""Faults injected into a run's NFS path: the actions on the lab and the injector that times them."""
