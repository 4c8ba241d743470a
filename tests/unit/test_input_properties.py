"""Property-based input tests: whatever a campaign or inventory file holds, validation
answers within the time bound with either a clean SpecError naming the file, or a model;
and a file that validates means exactly what it says.

In-process (no CLI process per example). CI loads the derandomized "ci" profile
(tests/conftest.py); a developer's run explores new examples each time.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.campaign import load_campaign
from model.lab import load_lab
from model.yamlpos import SpecError

REPO = Path(__file__).resolve().parents[2]
INVENTORY_TEXT = (REPO / "inventory" / "local.yml").read_text()
INVENTORY = yaml.safe_load(INVENTORY_TEXT)
SMOKE = yaml.safe_load((REPO / "campaigns" / "smoke.yaml").read_text())
SMOKE["lab"] = "lab.yml"
BOUND_S = 2.0
# Many examples share one directory: each writes its files anew.
EXAMPLES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- values a mistaken file may hold ------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "\n", "4.10", "true", "0x10", "1e3", "../../etc/passwd", "é", "\u202e", "a\nb"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(data: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``data`` (mapping keys and list indexes)."""
    found = [here]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*here, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*here, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with a few values replaced, keys deleted or unknown keys added."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if len(_paths(data)) < 2:
            break  # nothing left to mutate
        path = draw(st.sampled_from(_paths(data)[1:]))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace" or not isinstance(parent, dict):
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _answer(load: Any, path: Path) -> Any:
    """The model, or None for a clean SpecError naming ``path``; never anything else, never slow."""
    began = time.monotonic()
    try:
        return load(path)
    except SpecError as err:
        assert err.issues and all(issue.file == str(path) or issue.file.endswith(".yml") for issue in err.issues)
        return None
    finally:
        assert time.monotonic() - began < BOUND_S


# -- never a traceback, never a hang -------------------------------------------------------------------


@EXAMPLES
@given(data=mutated(SMOKE))
def test_a_mutated_campaign_is_a_model_or_a_clean_error(tmp_path: Path, data: dict[str, Any]) -> None:
    (tmp_path / "lab.yml").write_text(INVENTORY_TEXT)
    path = tmp_path / "c.yaml"
    path.write_text(_dump(data))
    _answer(load_campaign, path)


@EXAMPLES
@given(data=mutated(INVENTORY))
def test_a_mutated_inventory_is_a_model_or_a_clean_error(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(_dump(data))
    _answer(load_lab, path)


@st.composite
def damaged_text(draw: st.DrawFn) -> bytes:
    """The smoke campaign's text with bytes, lines or YAML constructs spliced in."""
    text = _dump(SMOKE).encode()
    lines = text.split(b"\n")
    at = draw(st.integers(min_value=0, max_value=len(lines)))
    insert = draw(
        st.one_of(
            st.binary(max_size=20),
            st.text(max_size=20).map(str.encode),
            st.sampled_from(lines).map(lambda line: line),  # a duplicated key
            st.integers(min_value=1, max_value=200).map(lambda n: b"deep: " + b"[" * n + b"]" * n),
            st.integers(min_value=1, max_value=12).map(_laughs),
            st.just(b"x: &a [*a]"),
        )
    )
    return b"\n".join([*lines[:at], insert, *lines[at:]])


def _laughs(levels: int) -> bytes:
    rows = ["l0: &l0 [a, a, a, a, a, a, a, a, a, a]"]
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(rows).encode()


@EXAMPLES
@given(raw=damaged_text())
def test_a_damaged_campaign_file_is_a_model_or_a_clean_error(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "lab.yml").write_text(INVENTORY_TEXT)
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    _answer(load_campaign, path)


# -- nothing valid-looking changes meaning -------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True)
# Text as a person writes it (YAML folds its line-break characters, such as NEL, in plain scalars).
prose = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30)


@st.composite
def valid_campaigns(draw: st.DrawFn) -> dict[str, Any]:
    """Campaigns that must validate, written as a lab engineer would."""
    ram = draw(st.integers(min_value=128, max_value=1024))
    swap = draw(st.integers(min_value=64, max_value=4096))
    workloads = [
        {
            "name": name,
            "mib": draw(st.integers(min_value=ram + 1, max_value=ram + swap)),
            "passes": draw(st.integers(min_value=1, max_value=5)),
            "timeout_s": draw(st.integers(min_value=1, max_value=3600)),
        }
        for name in draw(st.lists(names, min_size=1, max_size=3, unique=True))
    ]
    return {
        "name": draw(names),
        "description": draw(prose),
        "lab": "lab.yml",
        "kernels": [{"package": draw(st.sampled_from(["linux-image-amd64", "linux-image-cloud-amd64"]))}],
        "nodes": draw(st.integers(min_value=1, max_value=4)),
        "node": {
            "ram_mib": ram,
            "sysctl": draw(
                st.dictionaries(st.from_regex(r"vm\.[a-z_]{1,20}", fullmatch=True), st.integers(0, 2**40), max_size=2)
            ),
        },
        "nfs": {
            "version": draw(st.sampled_from(["4.1", "4.2"])),
            "mount_options": draw(
                st.lists(st.sampled_from(["hard", "soft", "timeo=600", "retrans=3", "noac"]), max_size=3)
            ),
        },
        "swap": {"size_mib": swap},
        "workloads": workloads,
        "repeats": draw(st.integers(min_value=1, max_value=3)),
    }


def _says(given: Any, normalized: Any) -> bool:
    """Every value the file gives is the value the model holds (defaults may fill the rest)."""
    if isinstance(given, dict):
        return isinstance(normalized, dict) and all(_says(value, normalized.get(key)) for key, value in given.items())
    if isinstance(given, list):
        return isinstance(normalized, list) and len(given) == len(normalized) and all(map(_says, given, normalized))
    return bool(given == normalized and type(given) is type(normalized))


@EXAMPLES
@given(data=valid_campaigns())
def test_a_valid_campaign_means_what_the_file_says(tmp_path: Path, data: dict[str, Any]) -> None:
    (tmp_path / "lab.yml").write_text(INVENTORY_TEXT)
    path = tmp_path / "c.yaml"
    path.write_text(_dump(data))
    campaign = _answer(load_campaign, path)
    assert campaign is not None, "a campaign written within every rule was refused"
    assert _says(data, campaign.spec.model_dump(mode="json"))
