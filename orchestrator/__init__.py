"""Control plane of swaplab: CLI, campaign spec, planning, verdicts and reports."""
