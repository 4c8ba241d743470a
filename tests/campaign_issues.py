"""Campaign texts for tests of validation, and the first issue ``swaplab validate`` finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.campaign import load_campaign
from model.yamlpos import SpecError

REPO = Path(__file__).resolve().parents[1]
# A small valid campaign on the embedded lab; tests append what they check (faults:, criteria:).
CAMPAIGN_HEAD = f"""\
name: unit
lab: {REPO / "inventory" / "local.yml"}
kernels: [{{package: linux-image-amd64}}]
node: {{ram_mib: 256}}
swap: {{size_mib: 512}}
workloads: [{{name: w, mib: 384}}]
"""


def first_issue(tmp_path: Path, text: str) -> tuple[int | None, str, str]:
    """Line, field and message of the first issue of ``text`` saved as campaign.yaml."""
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_campaign(path)
    issue = caught.value.issues[0]
    assert issue.file.endswith("campaign.yaml")
    return issue.line, issue.field, issue.message
