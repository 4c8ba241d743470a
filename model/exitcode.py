"""Exit codes of every swaplab command, in one place (docs/ARCHITECTURE.md, "Verdicts and exit codes")."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a swaplab command's exit status means to a script or CI job."""

    PASS = 0
    KERNEL_FAIL = 1  # some run failed a built-in kernel health check
    BAD_INPUT_OR_INFRA = 2  # bad input, or infra-error with nothing failed
    CRITERIA_FAIL = 3  # only user criteria (thresholds) failed
    INVALID = 4  # a run could not be judged
    INTERRUPTED = 130
