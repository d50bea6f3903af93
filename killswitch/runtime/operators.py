"""Loads the operators' allowed-signers file (`--operators`), once, at start-up.

The parsing and every rule about the file live in `core.proof.sshsig`; this module only reads the
file and turns every problem into a `ConfigError` that names the file and the line. Like
OpenSSH's StrictModes, a file that group or others may write (or one in a directory they may
write without the sticky bit) is refused: whoever can edit it could add a second key of
their own and arm alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from killswitch.core.proof.sshsig import Operators, SignersError, parse_allowed_signers
from killswitch.runtime.config import ConfigError

MAX_FILE_BYTES = 1024 * 1024


def load_operators(path: str) -> Operators:
    """The operators in `path` (ConfigError when it cannot be read or lists nobody)."""
    try:
        _check_modes(Path(path))
        data = Path(path).read_bytes()[: MAX_FILE_BYTES + 1]
    except FileNotFoundError:
        raise ConfigError(f"operators: file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"operators: cannot read {path}: {e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"operators: {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        ops = parse_allowed_signers(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"operators: {path} is not UTF-8 text") from None
    except SignersError as e:
        raise ConfigError(f"operators: {path}: {e}") from None
    if not ops.keys:
        raise ConfigError(
            f"operators: {path} lists no key for the killswitch namespace "
            '(one line per key: <principal> namespaces="killswitch" <key-type> <base64>)'
        )
    return ops


def _check_modes(path: Path) -> None:
    """ConfigError when `path`, or the directory holding it, is writable by group or others."""
    st = os.stat(path)  # FileNotFoundError / OSError: reported by the caller
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"operators: {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):o}); anyone who can edit it could add a key: "
            f"chmod go-w {path}"
        )
    d = os.stat(path.resolve().parent)
    if d.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not d.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"operators: the directory of {path} is writable by group or others (mode "
            f"{stat.S_IMODE(d.st_mode):o}); anyone who can write there could replace the file"
        )
