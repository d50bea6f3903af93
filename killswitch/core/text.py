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
