"""Baseboard management controllers: powering a lab's real machines and choosing their next boot.

A bare-metal node is powered through its BMC (``base.Bmc``): on, off, cycle, the next
boot device, its power state. IPMI-over-LAN is the first protocol (``ipmi``, through
pyghmi); another (Redfish) implements the same protocol. Credentials come from the
environment or a file only its owner can read (``credentials``), and never reach a log,
a progress line, a result or a process's argv. ``simulator`` runs OpenIPMI's ``ipmi_sim``
as the BMC of a lab-in-a-box machine, whose chassis commands start and stop it through
``chassis``.
"""
