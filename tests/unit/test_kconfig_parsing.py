"""The kernel config check on small strings and a small Kconfig tree (no kernel source needed).

The same functions run against Debian's real kernel tree in
tests/integration/test_kconfig.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.kbuild.kconfig import (
    MissingOption,
    config_file_problem,
    describe,
    kconfig_dependencies,
    missing_options,
    parse_config,
    read_kconfig,
)

# ---------------------------------------------------------------- parse_config


def test_parse_config_reads_values_and_not_set_lines() -> None:
    text = (
        "#\n# Automatically generated file; DO NOT EDIT.\n#\n"
        "CONFIG_SWAP=y\n"
        "CONFIG_NFS_FS=m\n"
        "# CONFIG_BLOCK is not set\n"
        'CONFIG_LOCALVERSION="-swaplab"\n'
        "CONFIG_NR_CPUS=64\n"
        "CONFIG_PHYSICAL_START=0x1000000\n"
    )
    assert parse_config(text) == {
        "SWAP": "y",
        "NFS_FS": "m",
        "BLOCK": "n",
        "LOCALVERSION": '"-swaplab"',
        "NR_CPUS": "64",
        "PHYSICAL_START": "0x1000000",
    }


def test_parse_config_last_line_wins_like_a_merge() -> None:
    assert parse_config("CONFIG_PSI=y\n# CONFIG_PSI is not set\n") == {"PSI": "n"}
    assert parse_config("# CONFIG_PSI is not set\r\nCONFIG_PSI=y\r\n") == {"PSI": "y"}


def test_parse_config_ignores_what_kconfig_ignores() -> None:
    # Indented lines, other comments, a misspelt "not set": kconfig does not read them either.
    text = "  CONFIG_A=y\n# just a comment\n#CONFIG_B is not set\nCONFIG_C\n\n"
    assert parse_config(text) == {}


# ---------------------------------------------------------------- config_file_problem


def _file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "user.config"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_a_good_fragment_has_no_problem(tmp_path: Path) -> None:
    text = (
        "# my fragment\n\n"
        "CONFIG_PSI=y\n"
        "# CONFIG_DEBUG_INFO is not set\n"
        'CONFIG_LOCALVERSION="-test \\"q\\""\n'
        "CONFIG_NR_CPUS=8\n"
        "CONFIG_PHYSICAL_START=0x1000000\n"
        "CONFIG_NFS_FS=m   \n"
        "    # an indented comment\n"
    )
    assert config_file_problem(_file(tmp_path, text)) is None


def test_swaplab_fragment_itself_has_no_problem() -> None:
    assert config_file_problem(Path("workers/kbuild/swaplab.config")) is None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("CONFIG_PSI=y\nPSI=y\n", 2, "not a CONFIG_NAME=value line"),
        ("CONFIG_PSI=y\nCONFIG_SWAP\n", 2, "not a CONFIG_NAME=value line"),
        ("CONFIG_PSI=\n", 1, "the value is not"),
        ("CONFIG_PSI=yes\n", 1, "the value is not"),
        ('CONFIG_LOCALVERSION="-oops\n', 1, "the value is not"),
        ("CONFIG_PSI=y\n  CONFIG_SWAP=y\n", 2, "indented"),
        ("\n\n#CONFIG_PSI is not set\n", 3, 'not exactly "# CONFIG_NAME is not set"'),
        ("# CONFIG_PSI is  not set\n", 1, 'not exactly "# CONFIG_NAME is not set"'),
        ("CONFIG_A=y\nCONFIG_B=y x\nCONFIG C=y\n", 2, "the value is not"),
    ],
)
def test_config_file_problem_names_the_first_bad_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    problem = config_file_problem(_file(tmp_path, text))
    assert problem is not None
    assert problem.startswith(f"{tmp_path / 'user.config'}:{line}: "), problem
    assert words in problem


def test_config_file_problem_refuses_binary_and_non_utf8(tmp_path: Path) -> None:
    assert "not a text file" in (config_file_problem(_file(tmp_path, b"CONFIG_A=y\n\0\1\2")) or "")
    assert "not UTF-8" in (config_file_problem(_file(tmp_path, b"# caf\xe9\nCONFIG_A=y\n")) or "")


def test_config_file_problem_of_a_missing_file(tmp_path: Path) -> None:
    assert "cannot be read" in (config_file_problem(tmp_path / "absent.config") or "")


# ---------------------------------------------------------------- describe


def test_describe_one_line_per_missing_option() -> None:
    missing = [
        MissingOption("SWAP", "MMU && BLOCK && !ARCH_NO_SWAP", ["BLOCK"], ["BLOCK"]),
        MissingOption("NFS_SWAP", "NETWORK_FILESYSTEMS && NFS_FS && SWAP", ["SWAP"], ["BLOCK"]),
        MissingOption("SUNRPC_SWAP", "NETWORK_FILESYSTEMS && SUNRPC", [], [], ["NFS_SWAP"]),
        MissingOption("PSI", ""),
        MissingOption("FUTEX", "!(SPARC32 && SMP)", []),
        MissingOption("SWAP_NEW", "", defined=False),
        MissingOption("NFS_FS", "NETWORK_FILESYSTEMS && INET", value="m"),
        MissingOption("THING", "!X86_32 && FOO=y", ["!X86_32", "FOO=y"], ["!X86_32", "FOO=y"]),
    ]
    assert describe(missing).splitlines() == [
        "SWAP is not set: it depends on MMU && BLOCK && !ARCH_NO_SWAP; BLOCK is not set",
        "NFS_SWAP is not set: it depends on NETWORK_FILESYSTEMS && NFS_FS && SWAP; SWAP is not set"
        " (at the root: BLOCK is not set)",
        "SUNRPC_SWAP is not set: it depends on NETWORK_FILESYSTEMS && SUNRPC, which holds;"
        " it is turned on by NFS_SWAP, not set",
        "PSI is not set: it has no dependencies, so the base config or a fragment leaves it off",
        "FUTEX is not set: it depends on !(SPARC32 && SMP), which holds, so the base config or a fragment leaves it off",
        "SWAP_NEW is not set: this tree's Kconfig does not define it (renamed, or not in this kernel version?)",
        "NFS_FS is m, not built in (y) (it depends on NETWORK_FILESYSTEMS && INET: one of those may be a module too)",
        "THING is not set: it depends on !X86_32 && FOO=y; X86_32 is set, FOO=y does not hold",
    ]


def test_describe_nothing_missing_is_empty() -> None:
    assert describe([]) == ""


# ---------------------------------------------------------------- a small Kconfig tree

TOP = """\
mainmenu "Test $(SRCARCH) Kernel Configuration"
source "arch/$(SRCARCH)/Kconfig"

config MMU
\tdef_bool y

menuconfig BLOCK
\tbool "Enable the block layer" if EXPERT
\tdefault y
\thelp
\t  Help text is not read:
\t  depends on NOT_A_DEPENDENCY
\t  config NOT_A_SYMBOL

if BLOCK
source "block/Kconfig"
endif # BLOCK

menu "Memory"
\tdepends on MMU

config SWAP
\tbool "Swap" # a trailing comment
\tdepends on BLOCK && \\
\t  !ARCH_NO_SWAP
endmenu

comment "a comment's dependency is its own"
\tdepends on COMMENT_ONLY

choice
\tprompt "Allocator"
\tdepends on MMU || NOMMU_SLAB
config SLUB
\tbool "SLUB"
config SLOB
\tbool "SLOB"
endchoice

config NFS_SWAP
\tbool "Swap over NFS"
\tdepends on NFS_FS
\tdepends on SWAP
\tselect SUNRPC_SWAP

config SUNRPC_SWAP
\tbool

config NFS_FS
\ttristate "NFS"
\tdepends on INET

config INET
\tbool "TCP/IP"

config SERIAL_CONSOLE
\tbool "console"
\tdepends on SERIAL=y

config SERIAL
\ttristate "serial"

orsource "Kconfig.optional-and-absent"
"""

ARCH = """\
config X86
\tdef_bool y
config ARCH_NO_SWAP
\tdef_bool n
config MMU
\tdepends on ARM
"""

BLOCK = """\
config BLK_DEV_LOOP
\ttristate "Loop"
\tdepends on SWAP || INET
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "Kconfig").write_text(TOP)
    (tmp_path / "arch" / "x86").mkdir(parents=True)
    (tmp_path / "arch" / "x86" / "Kconfig").write_text(ARCH)
    # Another architecture's Kconfig is never read (kconfig does not source it for x86).
    (tmp_path / "arch" / "arm").mkdir(parents=True)
    (tmp_path / "arch" / "arm" / "Kconfig").write_text("config ARM_ONLY\n\tbool\n")
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "Kconfig").write_text(BLOCK)
    return tmp_path


def test_kconfig_dependencies_of_a_small_tree(tree: Path) -> None:
    assert kconfig_dependencies(tree) == {
        "X86": "",
        "ARCH_NO_SWAP": "",
        "MMU": "",  # one definition without dependencies: never limited
        "BLOCK": "",  # a prompt's "if EXPERT" is no dependency
        "BLK_DEV_LOOP": "BLOCK && (SWAP || INET)",  # the `if` around the `source`
        "SWAP": "MMU && BLOCK && !ARCH_NO_SWAP",  # the menu's, then its own (continued line)
        "SLUB": "MMU || NOMMU_SLAB",
        "SLOB": "MMU || NOMMU_SLAB",
        "NFS_SWAP": "NFS_FS && SWAP",
        "SUNRPC_SWAP": "",
        "NFS_FS": "INET",
        "INET": "",
        "SERIAL_CONSOLE": "SERIAL=y",
        "SERIAL": "",
    }


def test_read_kconfig_knows_who_selects_what(tree: Path) -> None:
    assert read_kconfig(tree).selected_by == {"SUNRPC_SWAP": ["NFS_SWAP"]}


def test_missing_options_names_unmet_dependencies_down_to_the_root(tree: Path) -> None:
    config = "CONFIG_MMU=y\n# CONFIG_BLOCK is not set\nCONFIG_INET=y\nCONFIG_NFS_FS=y\nCONFIG_SERIAL=m\n"
    required = ("MMU", "INET", "SWAP", "NFS_SWAP", "SUNRPC_SWAP", "SERIAL_CONSOLE", "SERIAL", "GONE")
    missing = missing_options(config, tree, required)
    assert missing == [
        MissingOption("SWAP", "MMU && BLOCK && !ARCH_NO_SWAP", ["BLOCK"], ["BLOCK"]),
        MissingOption("NFS_SWAP", "NFS_FS && SWAP", ["SWAP"], ["BLOCK"]),
        MissingOption("SUNRPC_SWAP", "", [], [], ["NFS_SWAP"]),
        MissingOption("SERIAL_CONSOLE", "SERIAL=y", ["SERIAL=y"], ["SERIAL=y"]),
        MissingOption("SERIAL", "", value="m"),
        MissingOption("GONE", "", defined=False),
    ]


def test_missing_options_negations_and_alternatives(tree: Path) -> None:
    # SWAP: !ARCH_NO_SWAP fails because it is set; BLK_DEV_LOOP: one side of the || is enough.
    config = "CONFIG_MMU=y\nCONFIG_BLOCK=y\nCONFIG_ARCH_NO_SWAP=y\nCONFIG_INET=y\n"
    missing = missing_options(config, tree, ("SWAP", "BLK_DEV_LOOP"))
    assert [(m.name, m.unmet) for m in missing] == [("SWAP", ["!ARCH_NO_SWAP"]), ("BLK_DEV_LOOP", [])]
    assert "ARCH_NO_SWAP is set" in describe(missing)


def test_nothing_missing_when_all_required_are_built_in(tree: Path) -> None:
    assert missing_options("CONFIG_SWAP=y\nCONFIG_INET=y\n", tree, ("SWAP", "INET")) == []


def test_a_tree_without_a_top_level_kconfig_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        kconfig_dependencies(tmp_path)


def test_a_missing_sourced_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Kconfig").write_text('source "fs/Kconfig"\n')
    with pytest.raises(FileNotFoundError, match="fs/Kconfig"):
        kconfig_dependencies(tmp_path)
