"""The layering holds at run time too: reading a campaign loads no driver, Celery or SSH.

import-linter (scripts/test) checks the static arrows; these tests check what a process
actually loads, which catches an import hidden in a function body as well.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("celery", "paramiko", "fabric", "workers.drivers.qemu", "workers.drivers.ssh", "workers.tasks")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    return list(json.loads(proc.stdout.splitlines()[-1]))


def test_loading_a_campaign_imports_only_the_model() -> None:
    loaded = _loaded_after(
        "from pathlib import Path\nfrom model.campaign import load_campaign\n"
        "load_campaign(Path('campaigns/pair.yaml'))"
    )
    ours = {name.split(".")[0] for name in loaded} & {"model", "orchestrator", "workers"}
    assert ours == {"model"}
    assert [name for name in (*HEAVY, "redis") if name in loaded] == []


def test_the_cli_validates_without_celery_ssh_or_a_driver() -> None:
    loaded = _loaded_after(
        "from click.testing import CliRunner\nfrom orchestrator.cli import main\n"
        "result = CliRunner().invoke(main, ['validate', 'campaigns/smoke.yaml'])\n"
        "assert result.exit_code == 0, result.output"
    )
    assert [name for name in HEAVY if name in loaded] == []
