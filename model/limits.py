"""The limits ``swaplab-node`` puts on its arguments, for validating campaigns up front.

A value the node tool refuses stops the run on the node with a usage error, which then
looks like a kernel failure. The campaign model checks every value that reaches the tool
against these limits instead, so such a campaign is refused before anything runs.

The limits are decided in workers/node_tools/swaplab-node.c (``HOG_MIB_MAX`` ...) and
printed by ``swaplab-node limits``; tests/unit/test_node_tool_limits.py fails when that
output differs from ``NODE_TOOL_LIMITS``, so a change on one side must be made on both.
All limits are inclusive. The derived ones are written as the C file derives them.
"""

from __future__ import annotations

from typing import Final

_UINT64_MAX: Final = 2**64 - 1
_NS_PER_MS: Final = 10**6
_NS_PER_S: Final = 10**9
_PAGES_PER_MIB: Final = 2**20 // 4096

# hog --mib: MiB the workload touches on a node.
HOG_MIB_MIN: Final = 1
HOG_MIB_MAX: Final = 1 << 20
# hog --passes: passes x pages (at most HOG_MIB_MAX MiB of pages) is a 64-bit page count.
HOG_PASSES_MIN: Final = 1
HOG_PASSES_MAX: Final = _UINT64_MAX // (HOG_MIB_MAX * _PAGES_PER_MIB)
# hog --seed: any unsigned 64-bit value.
HOG_SEED_MIN: Final = 0
HOG_SEED_MAX: Final = _UINT64_MAX
# hog --start-at: CLOCK_REALTIME ns on the node, any unsigned 64-bit value.
HOG_START_AT_MIN: Final = 0
HOG_START_AT_MAX: Final = _UINT64_MAX
# sample --interval-ms: the next tick's deadline (< 1 s of ns + the interval in ns) is 64-bit.
SAMPLE_INTERVAL_MS_MIN: Final = 1
SAMPLE_INTERVAL_MS_MAX: Final = (_UINT64_MAX - (_NS_PER_S - 1)) // _NS_PER_MS

# The same limits under the names ``swaplab-node limits`` prints.
NODE_TOOL_LIMITS: dict[str, int] = {
    "hog_mib_max": HOG_MIB_MAX,
    "hog_mib_min": HOG_MIB_MIN,
    "hog_passes_max": HOG_PASSES_MAX,
    "hog_passes_min": HOG_PASSES_MIN,
    "hog_seed_max": HOG_SEED_MAX,
    "hog_seed_min": HOG_SEED_MIN,
    "hog_start_at_max": HOG_START_AT_MAX,
    "hog_start_at_min": HOG_START_AT_MIN,
    "sample_interval_ms_max": SAMPLE_INTERVAL_MS_MAX,
    "sample_interval_ms_min": SAMPLE_INTERVAL_MS_MIN,
}
