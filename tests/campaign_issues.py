"""The first issue ``swaplab validate`` finds in a campaign text, for tests of its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.campaign import load_campaign
from model.yamlpos import SpecError


def first_issue(tmp_path: Path, text: str) -> tuple[int | None, str, str]:
    """Line, field and message of the first issue of ``text`` saved as campaign.yaml."""
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_campaign(path)
    issue = caught.value.issues[0]
    assert issue.file.endswith("campaign.yaml")
    return issue.line, issue.field, issue.message
