"""The kernel config's check: does the final ``.config`` give what a swaplab node needs?

olddefconfig drops, without a word, every option whose ``depends on`` is not met (a
fragment asking for ``CONFIG_SWAP=y`` without ``CONFIG_BLOCK=y`` gets no swap at all), and
the kernel then builds and boots into a node that cannot swap. So after the config step the
build reads the ``.config`` back and names each required option that is not built in,
with its ``depends on`` expression (read from the tree's Kconfig files) and which symbols
of that expression are not set::

    SWAP is not set: it depends on MMU && BLOCK && !ARCH_NO_SWAP; BLOCK is not set

Also here: the check of a user's base config file or fragment before it reaches kconfig.

The tree is the build's (a patch may have put links or a FIFO in it): its Kconfig files
are read without following links and bounded (workers.untrusted); a ``source`` that leads
to a link, out of the tree or into a loop is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from workers import untrusted

# What a node needs built in (=y), mirroring workers/kbuild/swaplab.config (whose comments
# say why). Helpers the fragment sets only to reach these (NET, NETDEVICES, VIRTIO_MENU ...)
# are not repeated: a missing helper shows up as the unmet dependency of one of these.
REQUIRED: tuple[str, ...] = (
    # boot and run busybox's /init, see the console
    "64BIT", "BINFMT_ELF", "BINFMT_SCRIPT", "PRINTK", "PRINTK_TIME",
    "TTY", "SERIAL_8250", "SERIAL_8250_CONSOLE",
    "PROC_FS", "PROC_SYSCTL", "SYSFS", "DEVTMPFS", "DEVTMPFS_MOUNT", "TMPFS",
    "BLK_DEV_INITRD", "RD_GZIP",
    # what glibc's dropbear and busybox call at run time
    "MULTIUSER", "FUTEX", "EPOLL", "SIGNALFD", "TIMERFD", "EVENTFD", "SHMEM",
    "FILE_LOCKING", "POSIX_TIMERS", "UNIX98_PTYS",
    # QEMU's virtio devices
    "PCI", "VIRTIO_PCI", "VIRTIO_NET", "HW_RANDOM_VIRTIO",
    # network: udhcpc (PACKET), sshd, NFS
    "PACKET", "UNIX", "INET",
    # swap over NFSv4.1/4.2
    "BLOCK", "SWAP", "NFS_FS", "NFS_V4", "NFS_V4_1", "NFS_V4_2", "NFS_SWAP", "SUNRPC_SWAP",
    # what the sampler reads and what makes a failure readable
    "PSI", "VM_EVENT_COUNTERS", "DETECT_HUNG_TASK", "KALLSYMS", "BUG",
    "RTC_CLASS", "RTC_DRV_CMOS",
)  # fmt: skip

# swaplab's own fragment, merged last (after the user's) so a node always gets REQUIRED.
SWAPLAB_FRAGMENT = Path(__file__).with_name("swaplab.config")

# The only architecture swaplab builds for: `source "arch/$(SRCARCH)/Kconfig"` reads this one.
SRCARCH = "x86"

_SET = re.compile(r"CONFIG_([A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# CONFIG_([A-Za-z0-9_]+) is not set")
_ENTRY = re.compile(r"(?:config|menuconfig)\s+([A-Za-z0-9_]+)\s*$")
_SOURCE = re.compile(r'(o?r?source)\s+"([^"]+)"')
_MACRO = re.compile(r"\$\([^()]*(?:\([^()]*\)[^()]*)*\)")
_TOKEN = re.compile(r'\s*(\|\||&&|!=|<=|>=|[!()=<>]|"[^"]*"|[A-Za-z0-9_.+-]+)')
_VALUE = re.compile(r'[ymn]|-?[0-9]+|(0[xX])?[0-9a-fA-F]+|"(?:[^"\\]|\\.)*"')
_CONSTANTS = {"y": 2, "m": 1, "n": 0}
# Bounds on reading a tree's Kconfig files (6.1's x86 build reads about 1,500 of them).
_KCONFIG_FILE_MAX = 4 * untrusted.MIB
_KCONFIG_FILES_MAX = 20_000
_KCONFIG_BYTES_MAX = 256 * untrusted.MIB
_KCONFIG_DEPTH_MAX = 64


@dataclass
class MissingOption:
    """A required option the final ``.config`` does not build in, and why kconfig says so."""

    name: str
    depends_on: str  # its `depends on` expression as the tree's Kconfig states it ("" for none)
    # The symbols of depends_on that make it false: NAME (not set, but needed) or !NAME (set,
    # but must not be). Empty: the dependencies hold.
    unmet: list[str] = field(default_factory=list)
    # Following unmet symbols down to the ones whose own dependencies hold: what to set
    # (NFS_SWAP's unmet is SWAP, its root cause BLOCK). Same as unmet when it goes no deeper.
    root_causes: list[str] = field(default_factory=list)
    # The symbols whose `select` would turn it on, none of them set (an option without a
    # prompt, like SUNRPC_SWAP, is on only when something selects it).
    selectors_unset: list[str] = field(default_factory=list)
    defined: bool = True  # False: no Kconfig file of this tree defines it (renamed? too old?)
    value: str = "n"  # its value in the .config: "n" (or absent), or "m" (a module, not built in)


# ---------------------------------------------------------------- .config files


def parse_config(text: str) -> dict[str, str]:
    """A ``.config`` or fragment as name (no ``CONFIG_``) -> value; ``n`` for "is not set".

    Values are kept as written (a string keeps its quotes); the last line for a name wins,
    as in kconfig's merge. Like kconfig, only lines starting in the first column count.
    """
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.rstrip()
        if match := _SET.fullmatch(line):
            values[match[1]] = match[2]
        elif match := _UNSET.fullmatch(line):
            values[match[1]] = "n"
    return values


def config_file_problem(path: Path) -> str | None:
    """What is wrong with a user's base config or fragment, naming the first bad line; None if fine.

    Only ``CONFIG_X=value``, ``# CONFIG_X is not set``, other comments and blank lines are
    allowed: kconfig skips anything else with a warning at most, so a typo would silently
    not configure what the user meant.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"{path}: cannot be read: {exc.strerror or exc}"
    if b"\0" in data:
        return f"{path}: is not a text file (it holds NUL bytes)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{path}: is not UTF-8 text (byte {exc.start} is not)"
    for number, raw in enumerate(text.splitlines(), start=1):
        if problem := _line_problem(raw.rstrip()):
            return f"{path}:{number}: {problem}: {raw.strip()[:80]!r}"
    return None


def _line_problem(line: str) -> str | None:
    """Why one line (trailing blanks removed) is not a config line; None when it is one."""
    if not line.strip() or _UNSET.fullmatch(line):
        return None
    if line.lstrip().startswith("#"):
        # A mistyped "# CONFIG_X is not set" is read as a comment: X would stay as it was.
        if re.match(r"#\s*CONFIG_\w+\s+is\s+not\s+set", line.lstrip()):
            return 'not exactly "# CONFIG_NAME is not set" (kconfig would take it for a comment)'
        return None
    if line[0].isspace():
        return "indented (kconfig reads a setting only from the first column)"
    if not (match := _SET.fullmatch(line)):
        return "not a CONFIG_NAME=value line"
    if not _VALUE.fullmatch(match[2]):
        return "the value is not y, m, n, a number or a double-quoted string"
    return None


# ---------------------------------------------------------------- Kconfig files


@dataclass(frozen=True)
class Kconfig:
    """What the check needs from a tree's Kconfig files, per symbol (names without CONFIG_)."""

    depends_on: dict[str, str]  # its dependency expression ("" for none)
    selected_by: dict[str, list[str]]  # the symbols whose `select` turns it on


def read_kconfig(tree: Path | int) -> Kconfig:
    """Every ``config``/``menuconfig`` symbol of the x86 build: its dependencies and selectors.

    Reads the tree's Kconfig files the way kconfig does for ARCH=x86_64: from the top-level
    ``Kconfig``, following ``source`` (so another architecture's Kconfig, and its own
    ``config MMU``, never count). A symbol's expression is its ``depends on`` lines plus
    those of the enclosing ``if ... endif``, ``menu ... endmenu`` and ``choice ...
    endchoice`` blocks, across ``source`` too, joined with " && "; a symbol defined in
    several places gets the " || " of its definitions (as in kconfig). Left out: a prompt's
    own ``if`` (``bool "x" if EXPERT``: it hides the question, the default still applies),
    ``visible if``, a ``select``'s ``if``, and the implicit menu nesting under a preceding
    ``config`` (it adds no dependency). ``tree``: its path, or an fd of it.
    """
    found: dict[str, list[str]] = {}
    selected_by: dict[str, list[str]] = {}
    with _TreeFiles.of(tree) as files:
        entries = _entries(files)
    for entry in entries:
        found.setdefault(entry.name, []).append(_join(entry.dependencies(), "&&"))
        for target in entry.selects:
            selected_by.setdefault(target, []).append(entry.name)
    depends_on = {name: "" if "" in exprs else _join(exprs, "||") for name, exprs in found.items()}
    return Kconfig(depends_on, {name: list(dict.fromkeys(who)) for name, who in selected_by.items()})


def kconfig_dependencies(tree: Path | int) -> dict[str, str]:
    """Every symbol of the tree's x86 Kconfig and its ``depends on`` expression (see read_kconfig)."""
    return read_kconfig(tree).depends_on


@dataclass
class _Entry:
    """One ``config NAME`` entry as read: its own lines and the blocks around it."""

    name: str
    enclosing: list[list[str]]  # the open if/menu/choice blocks' expressions, outermost first
    own: list[str] = field(default_factory=list)  # its `depends on` expressions
    selects: list[str] = field(default_factory=list)

    def dependencies(self) -> list[str]:
        return [expr for block in self.enclosing for expr in block] + self.own


class _TreeFiles:
    """The tree's files, read by path relative to it: no link followed, bounded."""

    def __init__(self, root_fd: int, shown: str) -> None:
        self.root_fd, self.shown = root_fd, shown
        self.read_count = self.read_bytes = 0

    @classmethod
    @contextmanager
    def of(cls, tree: Path | int) -> Iterator[_TreeFiles]:
        fd = untrusted.open_dir(tree) if isinstance(tree, Path) else os.dup(tree)
        try:
            yield cls(fd, str(tree) if isinstance(tree, Path) else "the tree")
        finally:
            os.close(fd)

    def exists(self, path: PurePosixPath) -> bool:
        try:
            os.stat(str(path), dir_fd=self.root_fd, follow_symlinks=False)
        except OSError:
            return False
        return True

    def read_text(self, path: PurePosixPath) -> str:
        self.read_count += 1
        if self.read_count > _KCONFIG_FILES_MAX:
            raise untrusted.RefusedFile(f"{self.shown}: more than {_KCONFIG_FILES_MAX} Kconfig files are sourced")
        if not self.exists(path):
            raise FileNotFoundError(f"{self.shown}/{path} does not exist")
        data = untrusted.read_regular(Path(path), _KCONFIG_FILE_MAX, dir_fd=self.root_fd)
        self.read_bytes += len(data)
        if self.read_bytes > _KCONFIG_BYTES_MAX:
            raise untrusted.RefusedFile(
                f"{self.shown}: its Kconfig files hold more than {_KCONFIG_BYTES_MAX >> 20} MiB"
            )
        return data.decode(errors="replace")


@dataclass
class _Frame:
    """One Kconfig file being read, and the blocks enclosing the `source` that named it."""

    lines: list[str]
    path: PurePosixPath  # relative to the tree
    outer: list[list[str]]
    index: int = 0
    blocks: list[list[str]] = field(default_factory=list)  # this file's open if/menu/choice

    def enclosing(self) -> list[list[str]]:
        return [*self.outer, *self.blocks]


def _entries(tree: _TreeFiles) -> list[_Entry]:
    """Every config entry, reading the files with an explicit stack (no recursion)."""
    entries: list[_Entry] = []
    top = PurePosixPath("Kconfig")
    stack = [_Frame(_logical_lines(tree.read_text(top)), top, [])]
    deps: list[str] | None = None  # where `depends on` lines go: the entry, menu or choice being read
    entry: _Entry | None = None  # the config entry being read (for its `select` lines)
    while stack:
        frame = stack[-1]
        if frame.index >= len(frame.lines):
            stack.pop()
            continue
        line = frame.lines[frame.index]
        frame.index += 1
        word = line.split(None, 1)[0] if line else ""
        if word == "depends" and deps is not None:
            # Blanks normalized: a `\` continuation or a stray double blank reads as one.
            deps.append(" ".join(line.removeprefix("depends").strip().removeprefix("on").split()))
        elif word == "select" and entry is not None:
            entry.selects.append(line.split()[1])
        elif word not in _PROPERTIES:
            # Any other keyword ends the entry being read and may open the next one.
            deps, entry = _keyword(tree, stack, frame, line, word, entries)
    return entries


def _keyword(
    tree: _TreeFiles, stack: list[_Frame], frame: _Frame, line: str, word: str, entries: list[_Entry]
) -> tuple[list[str] | None, _Entry | None]:
    """Act on a line that starts a new item; (where its `depends on` go, the config entry)."""
    if match := _ENTRY.fullmatch(line):
        entries.append(_Entry(match[1], frame.enclosing()))
        return entries[-1].own, entries[-1]
    if word in ("if", "menu", "choice"):
        block = [" ".join(line[2:].split())] if word == "if" else []
        frame.blocks.append(block)
        return (None if word == "if" else block), None
    if word in ("endif", "endmenu", "endchoice") and frame.blocks:
        frame.blocks.pop()
    elif word == "comment":
        return [], None  # a comment's `depends on` is its own
    elif (source := _SOURCE.match(line)) and (child := _sourced(tree, frame.path, source[1], source[2])):
        if len(stack) >= _KCONFIG_DEPTH_MAX:
            raise untrusted.RefusedFile(f"{tree.shown}: {child} is sourced more than {_KCONFIG_DEPTH_MAX} deep")
        stack.append(_Frame(_logical_lines(tree.read_text(child)), child, frame.enclosing()))
    return None, None


# An entry's properties: lines that do not end it (help text is already gone).
_PROPERTIES = frozenset(
    {"bool", "tristate", "int", "hex", "string", "prompt", "default", "def_bool", "def_tristate",
     "imply", "range", "option", "modules", "transitional", "optional", "visible", ""}
)  # fmt: skip


def _sourced(tree: _TreeFiles, here: PurePosixPath, keyword: str, target: str) -> PurePosixPath | None:
    """The file a `source`/`rsource`/`osource`/`orsource` names (None: optional and absent)."""
    target = target.replace("$(SRCARCH)", SRCARCH)
    path = (here.parent if keyword in ("rsource", "orsource") else PurePosixPath()) / target
    if path.is_absolute() or ".." in path.parts:
        raise untrusted.RefusedFile(f"{tree.shown}/{here}: sources {target}, which is not a path in the tree")
    if tree.exists(path):
        return path  # a link or a non-file there is refused when it is read
    if keyword.startswith("o"):
        return None
    raise FileNotFoundError(f"{tree.shown}/{here}: sources {target}, which is not in the tree")


def _logical_lines(text: str) -> list[str]:
    """A Kconfig file's lines: stripped, comments, help text and `\\` continuations removed."""
    lines: list[str] = []
    help_indent: int | None = None  # inside help text: the indentation it started with (0: not yet known)
    carry = ""
    for raw in text.splitlines():
        if help_indent is not None:
            if not raw.strip():
                continue
            indent = len(raw.expandtabs()) - len(raw.expandtabs().lstrip())
            if help_indent == 0:
                help_indent = indent
            if indent >= help_indent and indent > 0:
                continue
            help_indent = None
        line = carry + _strip_comment(raw).strip()
        if line.endswith("\\"):
            carry = line[:-1] + " "
            continue
        carry = ""
        if line in ("help", "---help---"):
            help_indent = 0
            continue
        lines.append(line)
    return lines


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    if "#" not in line:
        return line
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:index]
    return line


def _join(exprs: Iterable[str], op: str) -> str:
    """Distinct non-empty expressions joined with ``op``; parenthesized where precedence needs it."""
    unique = list(dict.fromkeys(expr for expr in exprs if expr))
    if len(unique) <= 1:
        return unique[0] if unique else ""
    other = "||" if op == "&&" else "&&"
    return f" {op} ".join(f"({expr})" if other in expr else expr for expr in unique)


# ---------------------------------------------------------------- the check


def missing_options(
    config_text: str,
    tree: Path | int,
    required: Iterable[str] = REQUIRED,
    kconfig: Kconfig | None = None,
) -> list[MissingOption]:
    """Each required option the ``.config`` does not build in (=y), with its unmet dependencies.

    ``kconfig`` (from :func:`read_kconfig`) saves reading the tree again.
    """
    config = parse_config(config_text)
    known = read_kconfig(tree) if kconfig is None else kconfig
    return [_missing(name, config, known) for name in required if config.get(name) != "y"]


def _missing(name: str, config: Mapping[str, str], kconfig: Kconfig) -> MissingOption:
    value = config.get(name, "n")
    if name not in kconfig.depends_on:
        return MissingOption(name, "", defined=False, value=value)
    expr = kconfig.depends_on[name]
    unmet = _unmet(expr, config)
    selectors = kconfig.selected_by.get(name, [])
    unset = [] if any(config.get(who) in ("y", "m") for who in selectors) else selectors
    return MissingOption(name, expr, unmet, _root_causes(unmet, config, kconfig.depends_on), unset, value=value)


def _root_causes(unmet: list[str], config: Mapping[str, str], depends_on: Mapping[str, str]) -> list[str]:
    """The unmet symbols followed through their own unmet dependencies, down to the last ones."""
    roots: list[str] = []
    todo, seen = list(reversed(unmet)), set(unmet)
    while todo:
        name = todo.pop()
        below = [] if name.startswith("!") else _unmet(depends_on.get(name, ""), config)
        fresh = [symbol for symbol in below if symbol not in seen]
        seen.update(fresh)
        if below:
            todo.extend(reversed(fresh))
        elif name not in roots:
            roots.append(name)
    return roots


def describe(missing: Iterable[MissingOption]) -> str:
    """One line per missing option, for a person: what is not set and what it waits for."""
    return "\n".join(_describe_one(option) for option in missing)


def _describe_one(option: MissingOption) -> str:
    if option.value != "n":
        # A module: kconfig allowed it, so the dependencies are at least m.
        deps = f" (it depends on {option.depends_on}: one of those may be a module too)" if option.depends_on else ""
        return f"{option.name} is {option.value}, not built in (y){deps}"
    head = f"{option.name} is not set"
    if not option.defined:
        return f"{head}: this tree's Kconfig does not define it (renamed, or not in this kernel version?)"
    if option.unmet:
        line = f"{head}: it depends on {option.depends_on}; {_state(option.unmet)}"
        if set(option.root_causes) != set(option.unmet):
            line += f" (at the root: {_state(option.root_causes)})"
        return line
    holds = f"it depends on {option.depends_on}, which holds" if option.depends_on else "it has no dependencies"
    if option.selectors_unset:
        return f"{head}: {holds}; it is turned on by {' or '.join(option.selectors_unset)}, not set"
    return f"{head}: {holds}, so the base config or a fragment leaves it off"


def _state(symbols: list[str]) -> str:
    """The symbols' state in words: ["BLOCK", "!X86_32"] is "BLOCK is not set, X86_32 is set"."""
    return ", ".join(_one_state(name) for name in symbols)


def _one_state(name: str) -> str:
    if name.startswith("!"):
        return f"{name[1:]} is set"
    if re.search(r"[=<>]", name):
        return f"{name} does not hold"  # a comparison, e.g. SERIAL_8250=y when it is m
    return f"{name} is not set"


# ---------------------------------------------------------------- Kconfig expressions


def _unmet(expr: str, config: Mapping[str, str]) -> list[str]:
    """The symbols of ``expr`` that make it false under ``config`` (see MissingOption.unmet)."""
    tokens = [token for token in _TOKEN.findall(_MACRO.sub("y", expr)) if token]
    if not tokens:
        return []
    parser = _Parser(tokens, config)
    _value, unmet = parser.parse_or()
    return list(dict.fromkeys(unmet))


class _Parser:
    """A Kconfig expression evaluated in tristate logic (n=0, m=1, y=2), recursive descent.

    Each rule returns (value, the symbols to blame if the value is n). A macro such as
    ``$(cc-option,...)`` was replaced by ``y``: the compiler was asked when configuring.
    """

    def __init__(self, tokens: list[str], config: Mapping[str, str]) -> None:
        self.tokens = tokens
        self.config = config
        self.at = 0

    def _peek(self) -> str:
        return self.tokens[self.at] if self.at < len(self.tokens) else ""

    def _take(self) -> str:
        token = self._peek()
        self.at += 1
        return token

    def parse_or(self) -> tuple[int, list[str]]:
        value, blame = self.parse_and()
        while self._peek() == "||":
            self._take()
            right, more = self.parse_and()
            value, blame = max(value, right), blame + more
        return value, (blame if value == 0 else [])

    def parse_and(self) -> tuple[int, list[str]]:
        value, blame = self.parse_not()
        blame = blame if value == 0 else []
        while self._peek() == "&&":
            self._take()
            right, more = self.parse_not()
            value, blame = min(value, right), blame + (more if right == 0 else [])
        return value, blame

    def parse_not(self) -> tuple[int, list[str]]:
        if self._peek() == "!":
            self._take()
            value, _blame = self.parse_not()
            return 2 - value, self._negated_blame(value)
        return self.parse_atom()

    def _negated_blame(self, inner_value: int) -> list[str]:
        """``!X`` is false because X is set: blame ``!X`` (the token before this position)."""
        token = self.tokens[self.at - 1] if self.at else ""
        return [f"!{token}"] if inner_value and re.fullmatch(r"[A-Za-z0-9_]+", token) else []

    def parse_atom(self) -> tuple[int, list[str]]:
        token = self._take()
        if token == "(":
            value, blame = self.parse_or()
            if self._peek() == ")":
                self._take()
            return value, blame
        if self._peek() in ("=", "!=", "<", ">", "<=", ">="):
            return self._compare(token, self._take(), self._take())
        value = self._tristate(token)
        return value, ([token] if value == 0 and token not in _CONSTANTS else [])

    def _compare(self, left: str, op: str, right: str) -> tuple[int, list[str]]:
        a, b = self._string(left), self._string(right)
        x, y = _number(a), _number(b)
        if op in ("=", "!="):
            holds = (a == b) == (op == "=")
        elif x is not None and y is not None:
            holds = {"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]
        else:
            holds = {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
        return (2, []) if holds else (0, [f"{left}{op}{right}"])

    def _tristate(self, token: str) -> int:
        if token in _CONSTANTS:
            return _CONSTANTS[token]
        return _CONSTANTS.get(self.config.get(token, "n"), 0)

    def _string(self, token: str) -> str:
        """A comparison operand's value: a string's text, a symbol's value ("n" if unset), or itself."""
        if token.startswith('"'):
            return token.strip('"')
        if token in self.config:
            return self.config[token].strip('"')
        return token if token in _CONSTANTS or _number(token) is not None else "n"


def _number(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None
