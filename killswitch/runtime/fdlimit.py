"""Fit the gate's connection cap to the process's open-file limit, with a reserve.

Every gate connection is a file descriptor; so are the Redis connections, the metrics
server, the state and recorder files, the log and an `--on-kill` command's pipes. A cap that
uses the whole limit leaves a full gate unable to run `--on-kill` (EMFILE) or to write its
state file, so the cap must leave `FD_RESERVE` descriptors free. It never lowers a limit.
"""

from __future__ import annotations

import resource

from killswitch.runtime.config import ConfigError

FD_RESERVE = 64  # descriptors kept free of gate connections (Redis, files, --on-kill)


def fit_max_conns(given: int | None, default: int) -> tuple[int, str]:
    """The connection cap to run with and a warning ("" none).

    The soft limit is raised (up to the hard limit) when the cap needs it. A cap given
    explicitly that cannot fit is refused (ConfigError, exit 2) naming both numbers; the
    default shrinks to fit, with a warning.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = default if given is None else given
    need = want + FD_RESERVE
    if soft != resource.RLIM_INFINITY and need > soft:
        top = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if top > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
                soft = top
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY or need <= soft:
        return want, ""
    room = soft - FD_RESERVE
    if given is not None or room < 1:
        raise ConfigError(
            f"max-conns: {want} connections do not fit the open-file limit {soft} with "
            f"{FD_RESERVE} kept free (Redis, state file, --on-kill): lower --max-conns to "
            f"{max(room, 0)} or raise the limit (ulimit -n, LimitNOFILE=)"
        )
    return room, (
        f"max-conns {want} does not fit the open-file limit {soft} with {FD_RESERVE} kept "
        f"free: serving at most {room} connections"
    )
