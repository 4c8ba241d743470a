"""The model layer: what a campaign, a lab, a kernel source, a run spec and a node result
are, how input files are read and validated, and the names of the live state in Redis.

Both planes build on it (``orchestrator`` the control plane, ``workers`` the data plane);
it imports neither. Loading and validating a campaign therefore never imports a node
driver, Celery or paramiko (checked by import-linter and tests/unit/test_layers.py).
"""
