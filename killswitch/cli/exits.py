"""How a command ends when it cannot do its job: one line on stderr, then its exit code."""

from __future__ import annotations

import sys


def fail(command: str, message: str, code: int) -> int:
    """One line on stderr (control characters shown escaped, passwords hidden), then `code`."""
    from killswitch.store.redisurl import scrub

    text = scrub(message).encode("unicode_escape", "backslashreplace").decode("ascii")
    print(f"killswitch {command}: {text}", file=sys.stderr)
    from killswitch.runtime import logs

    logs.flush()
    return code
