"""Text from nodes and guests made safe to show: on a terminal, in a report, in a mail.

A guest's console line, a reason quoting it, a ``uname -r``, a hostname or any string a
worker put in Redis is written by whoever controls the kernel under test. Shown raw, an
escape sequence in it retitles the window, clears the screen, recolours or hides lines,
or (on some terminals) answers back as if typed; a bidi override makes a line read
differently from what it says. :func:`printable` is the one place such text passes
before it is shown.
"""

from __future__ import annotations

import re
import unicodedata

# Whole sequences go, not only their ESC: "\x1b[31m" would otherwise leave "[31m" behind.
# A string sequence (OSC, DCS, SOS, PM, APC) goes with its body only when it is
# terminated; an unterminated one loses its introducer and the rest stays visible text.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"  # CSI: colours, cursor moves, erasing
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x80-\x9f]*(?:\x07|\x1b\\|\x9c)"  # titles, clipboard
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"  # every other escape (charsets, keypad, reset)
)
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x85\u2028\u2029]")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # C0 but the newline a caller kept, DEL, C1
# Beyond ASCII: format characters (bidi embeddings, overrides, isolates and marks,
# zero-width and tag characters), lone surrogates, and the non-characters XML cannot carry.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_NON_CHARACTERS = frozenset("\ufffe\uffff")


def printable(value: object, *, lines: bool = False) -> str:
    """``value`` as text that cannot drive a terminal: no escape sequence, control or bidi
    character. Line breaks become spaces, or newlines with ``lines``; a tab a space."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    text = _SEQUENCE.sub("", text)
    text = _CONTROL.sub("", _LINE_BREAK.sub("\n" if lines else " ", text).replace("\t", " "))
    if text.isascii():
        return text
    return "".join(ch for ch in text if ch.isascii() or not _hidden(ch))


def _hidden(ch: str) -> bool:
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES or ch in _NON_CHARACTERS
