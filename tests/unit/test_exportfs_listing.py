"""How ``swaplab lab check`` reads ``exportfs -v``: a node's export must name that node alone."""

from __future__ import annotations

from pathlib import Path

from model.lab import load_lab
from workers.lab.check import _exported_to

REPO = Path(__file__).resolve().parents[2]
EXPORTFS = """\
/srv/swaplab/exports/node1
\t\t10.77.0.11/32(sync,wdelay,hide,no_subtree_check,sec=sys,rw,secure,no_root_squash,no_all_squash)
/srv/swaplab/exports/node2
\t\t10.77.0.11/32(sync,wdelay,hide,no_subtree_check,sec=sys,rw,secure,no_root_squash,no_all_squash)
"""


def test_an_export_counts_only_for_the_address_it_names() -> None:
    lab = load_lab(REPO / "inventory" / "netlab.yml")
    node1, node2 = lab.node("node1"), lab.node("node2")
    assert _exported_to(EXPORTFS, "/srv/swaplab/exports/node1", node1)
    # node2's directory is exported, but to node1's address: not node2's export.
    assert not _exported_to(EXPORTFS, "/srv/swaplab/exports/node2", node2)
    assert not _exported_to(EXPORTFS, "/srv/swaplab/exports/node3", node1)
    assert not _exported_to(EXPORTFS.replace("10.77.0.11/32", "*"), "/srv/swaplab/exports/node1", node1)
