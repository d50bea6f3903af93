"""A Redis ACL refusal (NOPERM) read out of an error: which permission is missing, and the
one-line hint that names the ACL rule to add.

Every process that meets one fails closed as before (a sidecar blocks, a command exits 1);
this module only makes it say why instead of a generic failure. It reads error text and
exception chains, nothing else: no I/O, and never the password of a URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["GUIDE", "Denial", "denial", "redis_user"]

GUIDE = "docs/DEPLOY.md, Redis ACL users"
# Redis 7.0 says "this user has no permissions to run the 'x' command"; 7.2 and later
# "User u has no permissions to run the 'x' command". Subcommands read `function|list`.
_COMMAND = re.compile(r"no permissions to run the '([^']{1,64})' command", re.IGNORECASE)
_KEY = re.compile(r"no permissions to access (?:one of the keys|a key)", re.IGNORECASE)
_CHANNEL = re.compile(r"no permissions to access (?:one of the channels|a channel)", re.IGNORECASE)
# A command a script (our Functions library, our Lua) called: Redis does not name it.
_SCRIPT = re.compile(r"user executing the script can't", re.IGNORECASE)
_NAME = re.compile(r"[a-z0-9_.|-]{1,64}")
_CHAIN = 8  # how far along __cause__ / __context__ a refusal is looked for


@dataclass(frozen=True, slots=True)
class Denial:
    """One ACL refusal: `kind` is "command", "key", "channel" or "script"; `command` the
    command Redis refused (lower case, `container|sub` for a subcommand; "" unless a command)."""

    kind: str
    command: str = ""

    @property
    def permission(self) -> str:
        """A bounded word naming what is missing, for logs and metric labels."""
        return self.command if self.kind == "command" else self.kind

    @property
    def rule(self) -> str:
        """The ACL rule (or the kind of rule) that would allow it."""
        if self.kind == "command":
            return f"+{self.command}"
        if self.kind == "key":
            return "~<pattern> for the key"
        if self.kind == "channel":
            return "&<pattern> for the channel"
        return "+<command> for what the script calls"

    def line(self, user: str) -> str:
        """One line for an operator: what Redis refused to whom, and the rule to add."""
        if self.kind == "command":
            what = f"may not run '{self.command}'"
            fix = f"add `{self.rule}` to its rules"
        elif self.kind == "script":
            what = "may not run a command that a killswitch script calls"
            fix = "give it the rules `python -m killswitch.store.acl` generates"
        else:
            what = f"may not access a {self.kind} this command uses"
            fix = f"give it the {self.kind} patterns `python -m killswitch.store.acl` generates"
        return f"Redis user {user} {what} (NOPERM, its ACL): {fix} ({GUIDE})"


def _one(text: str) -> Denial | None:
    m = _COMMAND.search(text)
    if m:
        name = m.group(1).lower()
        return Denial("command", name if _NAME.fullmatch(name) else "unknown")
    if _KEY.search(text):
        return Denial("key")
    if _CHANNEL.search(text):
        return Denial("channel")
    if _SCRIPT.search(text):
        return Denial("script")
    return None


def denial(e: BaseException) -> Denial | None:
    """The ACL refusal `e` reports, or carries in its chain (redis-py's Cluster client turns
    a NOPERM of `CLUSTER SLOTS` into "Cluster mode is not enabled", the NOPERM as its cause
    or context); None when it is something else."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [e]
    while todo and len(seen) < _CHAIN:
        cur = todo.pop(0)
        if any(cur is s for s in seen):
            continue
        seen.append(cur)
        found = _one(str(cur))
        if found is not None:
            return found
        todo.extend(x for x in (cur.__cause__, cur.__context__) if x is not None)
    return None


def redis_user(url: str) -> str:
    """The Redis user a URL logs in as (`default` when it names none); never the password."""
    try:
        return unquote(urlsplit(url).username or "") or "default"
    except ValueError:
        return "default"
