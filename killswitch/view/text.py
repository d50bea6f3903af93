"""Operator text (reasons, actors, host regressions) made safe to print on one terminal line.

Pure. Text is stored as given; only its display escapes control characters, ANSI escape
sequences, line and paragraph separators, unusual spaces and bidirectional overrides, so what someone
typed can never rewrite a terminal, fake a second entry or hide part of itself.
"""

from __future__ import annotations


def escape(text: object) -> str:
    """One line, every invisible or terminal-controlling character written as an escape."""
    out: list[str] = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif not ch.isprintable():  # Cc, Cf, Cs, Co, Cn and every Z* but the space
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")  # fmt: skip
        else:
            out.append(ch)
    return "".join(out)


def safe_line(text: object) -> str:
    """`text` as one terminal line: like `escape`, but a backslash stays as it is, so text
    already escaped is not escaped twice. The last pass over every line a view prints, so a
    value read from Redis that no field-level `escape` caught (a host's `release`, a scope's
    reason) still cannot move the cursor, clear the screen or start a line of its own."""
    out: list[str] = []
    for ch in str(text):
        if ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")  # fmt: skip
    return "".join(out)


def safe_text(lines: list[str]) -> str:
    """Lines joined for the terminal, each made safe on its own (`safe_line`)."""
    return "\n".join(safe_line(line) for line in lines)
