"""Read a sidecar's `--limits` TOML file once, at start-up, into `core.enforce.limits.Limits`.

The digest of the exact bytes read is kept beside the limits: it is part of what the host
reports as its release, so two hosts with different limits are visibly different.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

from killswitch.core.enforce.limits import Limits, LimitsError, parse_limits
from killswitch.runtime.config import ConfigError


def load_limits(path: str) -> tuple[Limits, str]:
    """(limits, sha256 hex of the file); ConfigError names the file and what is wrong."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"limits: file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"limits: cannot read {path}: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"limits: {path} is not valid UTF-8 TOML: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"limits: {path} is not valid TOML: {e}") from None
    try:
        limits = parse_limits(doc)
    except LimitsError as e:
        raise ConfigError(f"limits: {path}: {e}") from None
    return limits, hashlib.sha256(raw).hexdigest()
