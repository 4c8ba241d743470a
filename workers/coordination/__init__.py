"""How workers and the control plane coordinate through Redis: node leases, node health,
the start barrier, a run's attempt state, and the progress streams."""
