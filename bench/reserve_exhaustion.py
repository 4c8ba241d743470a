"""The reserve-exhaustion rate: how often swap-out over NFS runs the memory reserves dry, per kernel.

    .venv/bin/python bench/reserve_exhaustion.py [--kernel PACKAGE[@SUITE] ...] [--repeats 10]
                                                 [--campaign FILE] [--inventory FILE]
                                                 [--loss PCT] [--json]

Writing a page out over NFS needs memory (socket buffers, RPC and NFS requests) exactly
when memory has run out; the kernel draws it from the reserves (``vm.min_free_kbytes``,
PF_MEMALLOC sockets). When they run dry a swap-out fails — "Write error -12 on dio
swapfile" on the console, a kernel fail in swaplab — and allocations fail ("page
allocation failure"). For each kernel the benchmark runs a copy of the campaign (default
``bench/campaigns/reserve.yaml``: Debian's default reserves on a 256 MiB node, repeated)
through ``swaplab run`` on one node of the lab, one run at a time, and counts the runs
whose console shows each, with a 95 % Wilson interval. ``--loss PCT`` adds loss on the
node's link from the first MiB swapped out to the end (a lab with a lab network: ``--inventory
inventory/netlab.yml``). Kernels are Debian packages, ``@suite`` for another release:
``linux-image-amd64@bullseye`` (5.10), ``linux-image-amd64`` (bookworm: 6.1),
``linux-image-amd64@trixie`` (6.12).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from noise_floor import CAMPAIGN_TIMEOUT_S, REPO, campaign_copy, log, run_swaplab, wilson  # bench/noise_floor.py

from model.campaign import load_campaign

DEFAULT_CAMPAIGN = REPO / "bench" / "campaigns" / "reserve.yaml"
DEFAULT_KERNELS = ("linux-image-amd64@bullseye", "linux-image-amd64", "linux-image-amd64@trixie")
SIGNS = {
    "swap write error -12": re.compile(r"Write error -12 on dio swapfile"),
    "page allocation failure": re.compile(r"page allocation failure"),
}


def kernel_block(kernel: str) -> str:
    """The campaign's ``kernels:`` block for ``package[@suite]``."""
    package, _, suite = kernel.partition("@")
    entry = f"  - package: {package}\n" + (f"    suite: {suite}\n" if suite else "")
    return "kernels:\n" + entry


def kernel_copy(base: Path, kernel: str, workdir: Path, inventory: Path | None, loss: float | None) -> Path:
    """The campaign copy of one kernel: its kernel, lab and (with ``loss``) a loss fault."""
    text = base.read_text()
    text, count = re.subn(r"^kernels:\n(?:[ -].*\n)+", kernel_block(kernel), text, count=1, flags=re.MULTILINE)
    if count != 1:
        raise SystemExit(f"{base}: no block-style 'kernels:' list to replace")
    lab = inventory.resolve() if inventory is not None else Path(load_campaign(base).lab.inventory)
    # The copy lives elsewhere: its lab by absolute path (a JSON string is YAML).
    text = re.sub(r"^lab:.*$", f"lab: {json.dumps(str(lab))}", text, count=1, flags=re.MULTILINE)
    if loss is not None:
        text += f"faults:\n  - {{kind: loss, target: node-1, percent: {loss:g}, after_swapped_mib: 1, for_s: 3600}}\n"
    source = workdir / f"{re.sub(r'[^a-z0-9.-]', '-', kernel)}-{base.name}"
    source.write_text(text)
    return source


def count_signs(record: Mapping[str, Any]) -> dict[str, Any]:
    """Per sign, the runs whose console shows it; and the runs' verdicts."""
    results = Path(str(record.get("result_dir", "")))
    runs = record.get("runs") or []
    seen = {sign: 0 for sign in SIGNS}
    verdicts: dict[str, int] = {}
    kernels = set()
    for run in runs:
        verdicts[run.get("verdict", "?")] = verdicts.get(run.get("verdict", "?"), 0) + 1
        kernels.add(str((run.get("kernel_info") or {}).get("release") or run.get("kernel_label") or "?"))
        console = "".join(path.read_text(errors="replace") for path in (results / run["run_id"]).glob("*/console.log"))
        for sign, pattern in SIGNS.items():
            seen[sign] += bool(pattern.search(console))
    rates = {}
    for sign, hits in seen.items():
        low, high = wilson(hits, len(runs))
        rates[sign] = {"runs": hits, "of": len(runs), "rate": hits / len(runs) if runs else None, "ci95": [low, high]}
    return {"kver": sorted(kernels), "verdicts": verdicts, "signs": rates, "campaign_id": record.get("campaign_id")}


def render(report: Mapping[str, Any]) -> str:
    lines = [f"reserve exhaustion: {report['campaign']} ({report['link']})", ""]
    header = f"{'kernel':<32} {'kver':<18} {'runs':>4}  " + "  ".join(f"{sign:<30}" for sign in SIGNS)
    lines += [header, "-" * len(header)]
    for kernel, entry in report["kernels"].items():
        cells = []
        for sign in SIGNS:
            rate = entry["signs"][sign]
            low, high = rate["ci95"]
            cells.append(
                f"{rate['runs']}/{rate['of']} = {100 * (rate['rate'] or 0):4.0f} % [{100 * low:.0f}, {100 * high:.0f}]".ljust(
                    30
                )
            )
        runs = sum(entry["verdicts"].values())
        lines.append(f"{kernel:<32} {','.join(entry['kver']):<18} {runs:>4}  " + "  ".join(cells))
        lines.append(f"{'':<32} verdicts: {entry['verdicts']}; campaign {entry['campaign_id']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kernel", action="append", help="package[@suite]; repeat for several (default: 5.10, 6.1, 6.12)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--campaign", type=Path, default=DEFAULT_CAMPAIGN)
    parser.add_argument("--inventory", type=Path, help="the lab to run on (default: the campaign's)")
    parser.add_argument("--loss", type=float, help="percent of the node's frames dropped (lab network only)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="swaplab-reserve-"))  # kept: the runs' evidence
    report: dict[str, Any] = {
        "campaign": str(args.campaign),
        "link": f"{args.loss:g} % loss" if args.loss else "a perfect link",
        "repeats": args.repeats,
        "kernels": {},
    }
    for kernel in args.kernel or DEFAULT_KERNELS:
        log(f"{kernel}: {args.repeats} run(s), one at a time")
        source = kernel_copy(args.campaign, kernel, work, args.inventory, args.loss)
        copy_dir = work / re.sub(r"[^a-z0-9.-]", "-", kernel)
        copy_dir.mkdir()
        copy = campaign_copy(source, copy_dir, args.repeats)
        record = run_swaplab(copy, copy_dir / "results", CAMPAIGN_TIMEOUT_S)
        report["kernels"][kernel] = count_signs(record)
        log(f"{kernel}: {report['kernels'][kernel]['signs']}; results in {copy_dir / 'results'}")
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
