"""The flags of the two services, `sidecar` and `aggregator` (the rest of the command line is
in `parser`). Same rules as there: every flag defaults to None ("not given").
"""

from __future__ import annotations

import argparse

from killswitch.runtime.config import STATE_DIR_HELP


def sidecar_flags(s: argparse.ArgumentParser) -> None:
    """The `sidecar` verb's flags."""
    s.add_argument("--host", help="this host's name on the node's roster")
    s.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="unix:/path or tcp:127.0.0.1:PORT (repeatable)",
    )
    s.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve Prometheus /metrics on this port"
    )
    s.add_argument(
        "--flush-interval",
        type=float,
        metavar="S",
        help="seconds between Redis round trips (default 0.1); an idle host (no orders, "
        "nothing to confirm) makes one every third of --stale-after instead",
    )
    s.add_argument(
        "--stale-after",
        type=float,
        metavar="S",
        help="block all orders when no round trip succeeded for this long (default 1.0)",
    )
    s.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the highest seen epoch, the boot id and the scoped kills are kept across "
        f"restarts (default: {STATE_DIR_HELP}; '' for none: every start then needs arm --host)",
    )
    s.add_argument(
        "--metrics-listen", metavar="ADDR",
        help="address /metrics and /healthz bind to (default 127.0.0.1; 0.0.0.0 to be scraped "
        "from another host or container)",
    )  # fmt: skip
    s.add_argument(
        "--socket-mode", metavar="MODE",
        help="permission bits of unix gate sockets in octal, e.g. 660 (default: the umask)",
    )  # fmt: skip
    s.add_argument(
        "--socket-group", metavar="GROUP",
        help="group that owns unix gate sockets (with --socket-mode 660: who may trade)",
    )  # fmt: skip
    s.add_argument(
        "--max-conns", type=int, metavar="N",
        help="gate connections at once (default 1024); at the cap the oldest connection that "
        "never sent a request makes room, else the newcomer gets ERR",
    )  # fmt: skip
    s.add_argument(
        "--line-timeout", type=float, metavar="S",
        help="close a gate connection holding a partial request line this long (default 5)",
    )  # fmt: skip
    s.add_argument(
        "--limits",
        metavar="PATH",
        help="local pre-trade limits (TOML: max_qty, max_notional, max_orders_per_s, "
        '[symbols."SYM"] overrides); an order over one gets BLOCK ... limit',
    )
    s.add_argument(
        "--on-kill",
        metavar="CMD",
        help="shell command run once per kill epoch (e.g. a venue mass-cancel), in a process "
        "group of its own; its result (exit N, timeout after 30 s, interrupted) is reported in "
        "status --json. On stop a running command gets --on-kill-grace to finish, then its "
        "whole group gets SIGTERM and, 2 s later, SIGKILL",
    )
    s.add_argument(
        "--on-kill-grace", type=float, metavar="S",
        help="seconds a running --on-kill command may still finish when the sidecar stops "
        "(default 10, at most 30; never past its timeout). Give the service manager's stop "
        "timeout at least this plus 5 s",
    )  # fmt: skip
    s.add_argument(
        "--attest",
        action="append",
        metavar="PATH",
        help="a file or glob whose bytes are part of this host's release (repeatable): the "
        "trading binary, its config, its flag files, the --limits file. Hashed (SHA-256) at "
        "start, on SIGHUP and when a file's size or mtime changes; a file that cannot be read "
        "blocks this host; a roster running different releases is split",
    )
    s.add_argument(
        "--attest-interval",
        type=float,
        metavar="S",
        help="seconds between checks for changed attested files (default 2)",
    )


def aggregator_flags(a: argparse.ArgumentParser, with_rules: bool) -> None:
    """The `aggregator` verb's flags; the trip rules' flags only `with_rules` (the verb being
    run is the aggregator, or not known), so other verbs do not import the rules to parse."""
    a.add_argument("--hosts", metavar="H1,H2,...", help="the node's roster")
    if with_rules:
        from killswitch.cli import rulecli

        rulecli.add_rule_flags(a)
    lb = a.add_argument_group(
        "limit-burst rule",
        "Kill the node when the hosts' local --limits refuse more than N orders within "
        "--limit-window on at least --limit-min-hosts hosts (default off).",
    )
    lb.add_argument("--max-limit-refusals", type=int, metavar="N", help="the rule's N")
    lb.add_argument("--limit-window", type=float, metavar="S", help="window (default 1.0)")
    lb.add_argument("--limit-min-hosts", type=int, metavar="N", help="hosts (default 2)")
    a.add_argument(
        "--on-haunted",
        choices=("kill", "isolate"),
        help="when the host-share rule trips: kill the node (default) or kill only the haunted "
        "host (a scoped kill, lifted by arm --host)",
    )
    a.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve Prometheus /metrics on this port"
    )
    a.add_argument(
        "--metrics-listen", metavar="ADDR",
        help="address /metrics binds to (default 127.0.0.1; 0.0.0.0 to be scraped from "
        "another host or container)",
    )  # fmt: skip
    a.add_argument(
        "--tick", type=float, metavar="S", help="seconds between evaluations (default 0.1)"
    )
    a.add_argument(
        "--confirm-timeout",
        type=float,
        metavar="S",
        help="name unconfirmed hosts after this long (default 5)",
    )
    a.add_argument(
        "--instance",
        metavar="NAME",
        help="this aggregator's name in the leader lease and metrics (default hostname-pid)",
    )
    a.add_argument(
        "--lease-ttl",
        type=float,
        metavar="S",
        help="leader lease: a standby takes over this long after the leader stops (default 2)",
    )
    a.add_argument(
        "--fleet-max-orders",
        type=int,
        metavar="N",
        help="firm-wide cap: kill every node of the fleet (cause fleet_cap) when more than N "
        "orders were sent across all nodes within --window (one aggregator of the fleet, the "
        "fleet lease holder, sums and acts)",
    )
    a.add_argument(
        "--require-durable",
        action="store_true",
        default=None,
        help="refuse to start (exit 2) unless Redis runs with appendonly (use in production)",
    )
    a.add_argument(
        "--audit-log",
        metavar="PATH",
        help="append the node's audit chain to this JSONL file, so the trail survives a wiped "
        "Redis ('' for none; default audit-NODE.jsonl in the sidecar's default --state-dir)",
    )
