"""Errors every service shares; imports nothing heavy, so the CLI can catch them cheaply."""

from __future__ import annotations


class StartupError(RuntimeError):
    """A resource the service needs at start is unusable (a port in use, a path that is not a
    stale socket, a directory it cannot write); the message is one line naming it.

    `code` is the exit code the CLI gives it: 2 when a setting points at the wrong thing,
    1 when the resource is busy or failing right now.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
