"""The one YAML loader: every bad file is a SpecError naming file and line, never a
traceback or a hang, and good files load as plain YAML would read them."""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from model.yamlpos import (
    MAX_ALIASES,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    LocatedYaml,
    SpecError,
    SpecIssue,
    YamlFloat,
    load_located,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    [
        *REPO.glob("campaigns/*.yaml"),
        *REPO.glob("inventory/*.yml"),
        *REPO.glob("tests/fixtures/labs/*.yml"),
        *REPO.glob("tests/fixtures/campaigns/*.yaml"),
        *REPO.glob("tests/fixtures/criteria/*.yaml"),
    ]
)


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "input.yaml"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def refusal(path: Path) -> SpecIssue:
    with pytest.raises(SpecError) as caught:
        load_located(path)
    [issue] = caught.value.issues
    assert issue.file == str(path)
    return issue


def refusal_of(tmp_path: Path, content: str | bytes) -> SpecIssue:
    return refusal(write(tmp_path, content))


def nested(depth: int) -> str:
    """A mapping with ``depth`` collections nested in one another, the innermost on line ``depth``."""
    return "".join("  " * level + f"k{level}:\n" for level in range(depth - 1)) + "  " * (depth - 1) + "- x\n"


def laughs(levels: int, width: int = 9) -> str:
    """The "billion laughs": each level is a list of ``width`` aliases to the level below."""
    text = "a0: &a0 [" + ", ".join(["lol"] * width) + "]\n"
    for level in range(1, levels + 1):
        text += f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]\n"
    return text


# 1. Regular files only, checked before reading.


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "campaign.yaml"
    os.mkfifo(fifo)
    issue = refusal(fifo)
    assert issue.line is None
    assert "not a regular file (a FIFO)" in issue.message


def test_a_device_is_refused_without_being_read() -> None:
    issue = refusal(Path("/dev/zero"))
    assert "not a regular file (a character device)" in issue.message


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert "not a regular file (a directory)" in refusal(tmp_path).message


def test_a_missing_file_cannot_be_read(tmp_path: Path) -> None:
    issue = refusal(tmp_path / "nowhere.yaml")
    assert issue.message == "cannot read file: No such file or directory"


# 2. At most MAX_BYTES.


def test_a_file_of_exactly_the_limit_loads(tmp_path: Path) -> None:
    head = "a: 1\n# "
    path = write(tmp_path, head + "x" * (MAX_BYTES - len(head) - 1) + "\n")
    assert path.stat().st_size == MAX_BYTES
    assert load_located(path).data == {"a": 1}


def test_a_file_one_byte_over_the_limit_is_refused(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "a: 1\n" + "#" * (MAX_BYTES - 5) + "\n")
    assert issue.line is None
    assert f"larger than {MAX_BYTES} bytes" in issue.message


# 3. UTF-8 text, and characters YAML accepts.


def test_bytes_that_are_not_utf8_name_their_line_and_value(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "name: x\ndescription: caf\xe9\n".encode("latin-1"))
    assert issue.line == 2
    assert "not UTF-8" in issue.message
    assert "0xe9" in issue.message


def test_a_nul_byte_names_its_line(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "name: x\nnodes: 1\ndescription: a\x00b\n")
    assert issue.line == 3
    assert "character 0x00 is not allowed" in issue.message


def test_a_control_character_names_its_line(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "name: x\ndescription: a\x1bb\n")
    assert issue.line == 2
    assert "0x1b" in issue.message


def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "name: x\nnodes: [2\nswap: 1\n")
    assert issue.line == 3
    assert issue.message.startswith("invalid YAML: ")


# 4. Duplicate keys.


def test_a_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = "name: x\n" + "".join(f"k{line}: 1\n" for line in range(2, 12)) + "workloads: []\nnodes: 1\nworkloads: [1]\n"
    issue = refusal_of(tmp_path, text)
    assert issue.line == 14
    assert issue.field == "workloads"
    assert issue.message == "duplicate key 'workloads' (first at line 12)"


def test_a_duplicate_key_in_a_nested_mapping(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "node:\n  ram_mib: 1\n  cpus: 1\n  ram_mib: 2\n")
    assert (issue.line, issue.field) == (4, "node.ram_mib")
    assert "first at line 2" in issue.message


def test_the_same_key_in_two_mappings_is_no_duplicate(tmp_path: Path) -> None:
    assert load_located(write(tmp_path, "a: {x: 1}\nb: {x: 2}\n")).data == {"a": {"x": 1}, "b": {"x": 2}}


# 5. Keys are text.


@pytest.mark.parametrize(
    ("key", "kind"),
    [("1", "a number"), ("4.5", "a number"), ("yes", "a boolean"), ("off", "a boolean"), ("~", "null")],
)
def test_a_key_that_yaml_reads_as_another_type_is_refused(tmp_path: Path, key: str, kind: str) -> None:
    issue = refusal_of(tmp_path, f"node:\n  ram_mib: 1\n  {key}: x\n")
    assert (issue.line, issue.field) == (3, "node")
    assert f"mapping key {key!r} is read as {kind}" in issue.message
    assert "quote it" in issue.message


@pytest.mark.parametrize(("key", "kind"), [("[a, b]", "list"), ("{a: 1}", "mapping")])
def test_a_collection_as_key_is_refused(tmp_path: Path, key: str, kind: str) -> None:
    issue = refusal_of(tmp_path, f"a: 1\n? {key}\n: x\n")
    assert issue.line == 2
    assert f"a mapping key must be plain text, not a {kind}" in issue.message


def test_quoted_keys_are_text(tmp_path: Path) -> None:
    assert load_located(write(tmp_path, "\"1\": a\n'yes': b\n")).data == {"1": "a", "yes": "b"}


# 6. Depth.


def test_the_deepest_nesting_allowed_loads(tmp_path: Path) -> None:
    assert load_located(write(tmp_path, nested(MAX_DEPTH))).data is not None


def test_one_level_deeper_is_refused_where_it_exceeds(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, nested(MAX_DEPTH + 1))
    assert issue.line == MAX_DEPTH + 1
    assert f"nested more than {MAX_DEPTH} collections deep" in issue.message


def test_deep_flow_nesting_is_refused_without_recursion(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "a: 1\nb: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert issue.line == 2
    assert "nested more than" in issue.message


def test_depth_counts_what_an_alias_stands_for(tmp_path: Path) -> None:
    # Each anchor is shallow, but chained they would build data 40 levels deep.
    text = "a0: &a0 [x]\n" + "".join(f"a{n}: &a{n} [*a{n - 1}]\n" for n in range(1, 40))
    issue = refusal_of(tmp_path, text)
    assert issue.line == MAX_DEPTH
    assert "counting what *a30 stands for" in issue.message


# 7. Aliases.


def test_a_self_referencing_anchor_is_refused(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "name: x\na: &a [*a]\n")
    assert issue.line == 2
    assert "anchor &a refers to itself" in issue.message


def test_a_self_reference_deeper_inside_is_refused(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "a: &a\n  b:\n    - c: *a\n")
    assert issue.line == 3
    assert "anchor &a refers to itself" in issue.message


def test_the_billion_laughs_are_refused(tmp_path: Path) -> None:
    # a0 is 10 values, a1 1 + 9 * 10, a2 820, a3 7381, a4 66430: past MAX_NODES on line 5.
    issue = refusal_of(tmp_path, laughs(9))
    assert issue.line == 5
    assert f"more than {MAX_NODES} values once aliases are expanded" in issue.message


def test_too_many_aliases_are_refused(tmp_path: Path) -> None:
    text = "base: &b x\nuses:\n" + "- *b\n" * (MAX_ALIASES + 1)
    issue = refusal_of(tmp_path, text)
    assert issue.line == 3 + MAX_ALIASES
    assert f"more than {MAX_ALIASES} aliases" in issue.message


def test_the_node_count_includes_each_expansion(tmp_path: Path) -> None:
    # Keys count too: root + key + 3000 values, then 1 + 3000 per use.
    text = "big: &big [" + ", ".join(["1"] * 2999) + "]\nuse1: *big\nuse2: *big\n"
    assert len(load_located(write(tmp_path, text)).data["use2"]) == 2999
    issue = refusal_of(tmp_path, text + "use3: *big\n")
    assert (issue.line, issue.field) == (4, "")
    assert "values once aliases are expanded" in issue.message


def test_an_alias_without_anchor_is_refused(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "a: 1\nb: *nowhere\n")
    assert issue.line == 2
    assert "alias *nowhere has no anchor" in issue.message


def test_a_shared_block_used_three_times_loads(tmp_path: Path) -> None:
    text = (
        "defaults: &defaults\n"
        "  passes: 1\n"
        "  timeout_s: 300\n"
        "workloads:\n"
        "  - {name: a, mib: 384, <<: *defaults}\n"
        "  - {name: b, mib: 512, <<: *defaults}\n"
        "  - *defaults\n"
    )
    doc = load_located(write(tmp_path, text))
    shared = {"passes": 1, "timeout_s": 300}
    assert doc.data["workloads"] == [
        {"name": "a", "mib": 384, **shared},
        {"name": "b", "mib": 512, **shared},
        shared,
    ]


# 8. One parse.


def test_the_text_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsers: list[object] = []
    original = yaml.parser.Parser.__init__

    def counting(self: yaml.parser.Parser) -> None:
        parsers.append(self)
        original(self)

    monkeypatch.setattr(yaml.parser.Parser, "__init__", counting)
    assert load_located(write(tmp_path, "a: &x [1, 2]\nb: *x\n")).data == {"a": [1, 2], "b": [1, 2]}
    assert len(parsers) == 1


# 9. Floats keep their text.


def test_a_float_keeps_its_source_text(tmp_path: Path) -> None:
    data = load_located(write(tmp_path, "nfs:\n  version: 4.10\nratio: 1.5\nnodes: 2\nname: x\n")).data
    version = data["nfs"]["version"]
    assert isinstance(version, YamlFloat)
    assert version == 4.1
    assert version.source == "4.10"
    assert data["ratio"].source == "1.5"
    assert type(data["nodes"]) is int
    assert type(data["name"]) is str


def test_a_yaml_float_survives_pickle_and_copy() -> None:
    number = YamlFloat(4.1, "4.10")
    for again in (pickle.loads(pickle.dumps(number)), copy.deepcopy(number)):
        assert again == 4.1
        assert isinstance(again, YamlFloat)
        assert again.source == "4.10"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("2024-13-45", "cannot read '2024-13-45' as timestamp: month must be in 1..12"),
        ("!!bool maybe", "cannot read 'maybe' as bool"),
        ("!!timestamp soon", "cannot read 'soon' as timestamp"),
        ("!!python/object:os.system x", "could not determine a constructor"),
    ],
)
def test_a_value_that_cannot_be_built_names_its_line(tmp_path: Path, value: str, words: str) -> None:
    issue = refusal_of(tmp_path, f"name: x\nwhen: {value}\n")
    assert issue.line == 2
    assert words in issue.message


def test_an_overlong_number_is_refused(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "name: x\nminutes: 1" + ":00" * 5000 + "\n")
    assert issue.line == 2
    assert "a number of 15001 characters" in issue.message


def test_only_one_document_per_file(tmp_path: Path) -> None:
    issue = refusal_of(tmp_path, "a: 1\n---\nb: 2\n")
    assert issue.line == 2
    assert "second YAML document" in issue.message


# 10. Lines, without walking through aliases.


def test_every_key_and_item_has_its_line(tmp_path: Path) -> None:
    text = "name: x\nworkloads:\n  - name: w\n    mib: 384\n  - mib: 512\nnode: {ram_mib: 256}\n"
    lines = load_located(write(tmp_path, text)).lines
    assert lines == {
        (): 1,
        ("name",): 1,
        ("workloads",): 2,
        ("workloads", 0): 3,
        ("workloads", 0, "name"): 3,
        ("workloads", 0, "mib"): 4,
        ("workloads", 1): 5,
        ("workloads", 1, "mib"): 5,
        ("node",): 6,
        ("node", "ram_mib"): 6,
    }


def test_an_alias_has_its_own_line_and_is_not_walked(tmp_path: Path) -> None:
    text = "base: &b\n  x: 1\nlist:\n  - 0\n  - *b\nuse: *b\n"
    doc = load_located(write(tmp_path, text))
    assert doc.lines[("list", 1)] == 5
    assert doc.lines[("use",)] == 6
    assert ("use", "x") not in doc.lines
    assert ("list", 1, "x") not in doc.lines
    assert doc.line_of(("use", "x")) == 6


# The files the product ships and tests with load as plain YAML reads them.


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: str(path.relative_to(REPO)))
def test_shipped_files_still_load(path: Path) -> None:
    doc = load_located(path)
    assert isinstance(doc, LocatedYaml)
    assert doc.data == yaml.safe_load(path.read_text())
    assert doc.lines[()] >= 1


def test_the_shipped_files_are_all_found() -> None:
    names = {path.parent.name for path in SHIPPED}
    assert {"campaigns", "inventory", "labs"} <= names


# 11. Every file is answered within 2 seconds.


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    return path


def _file(text: str) -> Callable[[Path], Path]:
    return lambda tmp_path: write(tmp_path, text)


_KEYS = "".join(f"key{index}: {index}\n" for index in range(MAX_NODES))
WORST_CASES: dict[str, Callable[[Path], Path]] = {
    "billion laughs, 9 levels": _file(laughs(9)),
    "billion laughs, 30 levels": _file(laughs(30, width=10)),
    "self reference": _file("a: &a [*a, *a, {b: *a}]\n"),
    "one anchor used many times": _file("a: &a [" + ", ".join(["x"] * 9000) + "]\n" + "b: *a\n" * 100),
    "flow nesting": _file("[" * (MAX_BYTES // 2 - 1) + "]" * (MAX_BYTES // 2 - 1)),
    "mapping nesting": _file("{a: " * (MAX_BYTES // 5)),
    "block nesting": _file("- " * (MAX_BYTES // 2 - 1)),
    "too many keys": _file(_KEYS * (MAX_BYTES // len(_KEYS))),
    "many anchors": _file("".join(f"- &a{index} x\n" for index in range(MAX_NODES + 1))),
    "a megabyte of newlines": _file("\n" * MAX_BYTES),
    "a megabyte of comments": _file("#" * (MAX_BYTES - 1) + "\n"),
    "a megabyte of escapes": _file('a: "' + "\\t" * (MAX_BYTES // 2 - 4) + '"\n'),
    "a megabyte scalar": _file("a: " + "x" * (MAX_BYTES - 4) + "\n"),
    "a megabyte of digits": _file("a: 1" + "0" * (MAX_BYTES - 6) + "\n"),
    "a megabyte base-60 number": _file("a: 1" + ":00" * (MAX_BYTES // 3 - 2) + "\n"),
    "a megabyte almost a number": _file("a: 1" + ":1" * (MAX_BYTES // 2 - 4) + "x\n"),
    "one byte too many": _file("#" * MAX_BYTES + "\n"),
    "a fifo": _fifo,
    "a device": lambda tmp_path: Path("/dev/zero"),
}


def _cpu_seconds(path: Path) -> float:
    started = time.process_time()
    with contextlib.suppress(SpecError):
        load_located(path)
    return time.process_time() - started


@pytest.fixture(scope="module")
def plain_megabyte_s(tmp_path_factory: pytest.TempPathFactory) -> float:
    """CPU seconds this host takes to read an ordinary file of the largest size allowed."""
    path = write(tmp_path_factory.mktemp("plain"), "a: " + "x" * (MAX_BYTES - 4) + "\n")
    return max(_cpu_seconds(path), 0.05)


@pytest.mark.parametrize("build", WORST_CASES.values(), ids=WORST_CASES.keys())
def test_no_file_costs_more_than_a_few_plain_ones(
    tmp_path: Path, build: Callable[[Path], Path], plain_megabyte_s: float
) -> None:
    """No input blows up: the worst costs a small multiple of an ordinary file of the same
    size (CPU time, so a busy host neither hides a blow-up nor fails a sound loader; a
    fifo or a device that would block is caught by the test's timeout)."""
    path = build(tmp_path)
    assert _cpu_seconds(path) < 6 * plain_megabyte_s
