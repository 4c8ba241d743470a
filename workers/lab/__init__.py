"""The lab's shared services: the lab network now (``workers.lab.network``); the NFS servers,
the server VMs and the boot server will move here later."""
