"""The services' settings (`sidecar`, `aggregator`) and the trip rules' (the aggregator's
and `backtest`'s), a part of the table of options (`core.settings.options`, which lists them)."""

from __future__ import annotations

from killswitch.core.settings.option import (
    CAP_PER_HOST_PER_S,
    DAY,
    RATE_HEADROOM,
    Bound,
    N,
    Option,
    S,
)

SERVICES = ("sidecar", "aggregator")
RULE_VERBS = ("aggregator", "backtest")  # the trip rules' flags: one definition for both
_AGG_RULES = "trip rules"
# The trip rules' section: each option in it sets the `MonitorConfig` field of its name.
RULE_GROUP = _AGG_RULES
_BURST = "limit-burst rule"
_FENCE = "network fence"

SERVICE_OPTIONS: tuple[Option, ...] = (
    # -- sidecar --------------------------------------------------------------------------
    Option("host", ("sidecar",), "this host's name on the node's roster", kind="host",
           metavar="HOST"),
    Option("listen", ("sidecar",), "gate address, unix:/path or tcp:127.0.0.1:PORT "
           "(repeatable)", kind="listen", repeat=True, metavar="ADDR"),
    Option("flush-interval", ("sidecar",), "seconds between Redis round trips; an idle host "
           "(no orders, nothing to confirm) makes one every third of --stale-after instead",
           kind="float", default=0.1, bound=S(0.01, 5.0), metavar="S"),
    Option("state-dir", ("sidecar",), "where the highest seen epoch, the boot id and the "
           "scoped kills are kept across restarts ('' for none, with a warning: every start "
           "is then a new boot that blocks until arm --host)",
           metavar="DIR", derived="$STATE_DIRECTORY (systemd), else "
           "$XDG_STATE_HOME/killswitch, else ~/.local/state/killswitch, else "
           "/var/lib/killswitch, whichever is writable first; else a directory under the temp "
           "dir, with a warning", empty=True),
    Option("socket-mode", ("sidecar",), "permission bits of unix gate sockets in octal, e.g. "
           "660", kind="mode", metavar="MODE", unset="the umask"),
    Option("socket-group", ("sidecar",), "group that owns unix gate sockets (with "
           "--socket-mode 660: who may trade)", kind="group", metavar="GROUP"),
    Option("max-conns", ("sidecar",), "gate connections at once; at the cap the oldest "
           "connection that never sent a request makes room, else the newcomer gets ERR",
           kind="int", default=1024, bound=N(1, 100_000), metavar="N"),
    Option("line-timeout", ("sidecar",), "close a gate connection holding a partial request "
           "line this long", kind="float", default=5.0, bound=S(0.1, 600.0), metavar="S"),
    Option("limits", ("sidecar",), "local pre-trade limits (TOML: max_qty, max_notional, "
           'max_orders_per_s, [symbols."SYM"] overrides); an order over one gets BLOCK ... '
           "limit", metavar="PATH"),
    Option("on-kill", ("sidecar",), "shell command run once per kill epoch (e.g. a venue "
           "mass-cancel), in a process group of its own; its result (exit N, timeout after "
           "30 s, interrupted) is reported in status --json. On stop a running command gets "
           "--on-kill-grace to finish, then its whole group gets SIGTERM and, 2 s later, "
           "SIGKILL", metavar="CMD"),
    Option("on-kill-grace", ("sidecar",), "seconds a running --on-kill command may still "
           "finish when the sidecar stops (never past its 30 s timeout). Give the service "
           "manager's stop timeout at least this plus 5 s", kind="float", default=10.0,
           bound=S(0.0, 30.0), metavar="S"),
    Option("attest", ("sidecar",), "a file or glob whose bytes are part of this host's "
           "release (repeatable): the trading binary, its config, its flag files, the "
           "--limits file. Hashed (SHA-256) at start, on SIGHUP, when the kernel reports a "
           "change (inotify), when a file's size, mtime or ctime changes and in full every "
           "5 minutes; a file that cannot be read blocks this host; a roster running "
           "different releases is split", kind="list", repeat=True, metavar="PATH"),
    Option("attest-interval", ("sidecar",), "seconds between checks for changed attested "
           "files (their size, mtime, ctime), besides change notifications", kind="float", default=2.0, bound=S(0.1, 3600.0),
           metavar="S"),
    Option("fix", ("sidecar",), "relay a FIX session (FIX.4.2, FIX.4.4, FIXT.1.1) through "
           "this host's gate, e.g. tcp:127.0.0.1:9878=tcp:10.0.0.5:9878 (repeatable): orders "
           "(35=D, G, E, AB) pass only when the gate allows them, a blocked one is answered "
           "with an ExecutionReport (39=8) and never reaches UPSTREAM; cancels (35=F, q) "
           "always pass", kind="fixroute", repeat=True, metavar="LISTEN=UPSTREAM"),
    Option("event-loop", ("sidecar",), "the sidecar's event loop: asyncio's own, or uvloop "
           "(libuv's; less interpreter work per message, so less latency added by the FIX "
           "gateway: docs/PERFORMANCE.md)", kind="choice", choices=("asyncio", "uvloop"),
           default="asyncio"),
    Option("fence", ("sidecar",), "a venue endpoint (repeatable; IPv6 as [ADDR]:PORT): "
           "connections to it from uids not allowed are refused and counted, and kill this "
           "host while ARMED (cause bypass); needs CAP_NET_ADMIN", kind="list", repeat=True,
           metavar="ADDR:PORT", group=_FENCE),
    Option("fence-allow-uid", ("sidecar",), "a uid that may connect to the fenced endpoints "
           "(repeatable): the gateway's", kind="list", repeat=True, metavar="UID",
           derived="the sidecar's own uid", group=_FENCE),
    Option("fence-netns", ("sidecar",), "fence this network namespace (/run/netns/NAME; "
           "entering it needs CAP_SYS_ADMIN) instead of the sidecar's own", kind="host",
           metavar="NAME", unset="the sidecar's own", group=_FENCE),
    Option("fence-on-kill", ("sidecar",), "raise the kill fence on every kill, not only on "
           "kill --fence (every connection to the endpoints refused and cut, cancels "
           "included)", kind="flag", default=False, group=_FENCE),
    Option("recorder", ("sidecar",), "the flight recorder's ring file: every gate decision, "
           "memory-mapped ('' for none; docs/RECORDER.md)", metavar="PATH",
           derived="<state-dir>/<node>@<host>.rec", empty=True),
    Option("recorder-size", ("sidecar",), "records the flight recorder keeps, newest first "
           "(160 bytes each; the file is allocated at start)", kind="int", default=65_536,
           bound=N(16, 2**24), metavar="N"),
    Option("recorder-freeze", ("sidecar",), "a kill freezes the records from S seconds before "
           "it to S after it into <node>@<host>.<epoch>.rec beside the ring", kind="int",
           default=60, bound=Bound(1, 3600, "s", whole=True), metavar="S"),
    Option("recorder-writer", ("sidecar",), "what writes each record: native (the C writer, "
           "refused if it was not built at install), python, or auto (native where built)",
           kind="choice", choices=("auto", "native", "python"), default="auto"),
    # -- aggregator -----------------------------------------------------------------------
    Option("hosts", ("aggregator",), "the node's roster: proposed until the first signed "
           "arm, then only a signed arm changes it", kind="roster", metavar="H1,H2,..."),
    Option("confirm-timeout", ("aggregator",), "name unconfirmed hosts after this long",
           kind="float", default=5.0, bound=S(0.1, 3600.0), metavar="S"),
    Option("instance", ("aggregator",), "this aggregator's name in the leader lease and "
           "metrics", metavar="NAME", derived="hostname-pid"),
    Option("lease-ttl", ("aggregator",), "leader lease: a standby takes over this long after "
           "the leader stops", kind="float", default=2.0, bound=S(0.5, 60.0), metavar="S"),
    Option("fleet-max-orders", ("aggregator",), "firm-wide cap: kill every node of the fleet "
           "(cause fleet_cap) when more than N orders were sent across all nodes within "
           "--window (one aggregator of the fleet, the fleet lease holder, sums and acts)",
           kind="int", bound=N(1, 10**9), metavar="N", unset="off"),
    Option("require-durable", ("aggregator",), "refuse to start (exit 2) unless Redis runs "
           "with appendonly (use in production)", kind="flag", default=False),
    Option("audit-log", ("aggregator",), "append the node's audit chain to this JSONL file, "
           "so the trail survives a wiped Redis ('' for none)", metavar="PATH",
           derived="audit-NODE.jsonl in the sidecar's default --state-dir", empty=True),
    Option("max-limit-refusals", ("aggregator",), "kill the node when the hosts' local "
           "--limits refuse more than N orders within --limit-window on at least "
           "--limit-min-hosts hosts", kind="int", bound=N(1, 10**9), metavar="N",
           unset="off", group=_BURST),
    Option("limit-window", ("aggregator",), "the limit-burst rule's window", kind="float",
           default=1.0, bound=S(0.1, 3600.0), metavar="S", group=_BURST),
    Option("limit-min-hosts", ("aggregator",), "hosts the limit-burst rule needs",
           kind="int", default=2, bound=N(1, 10_000), metavar="N", group=_BURST),
    # -- the trip rules: aggregator and backtest ------------------------------------------
    Option("max-orders", RULE_VERBS, "static cap: kill when more than N orders were sent "
           "across the node within --window (never shadowed by the aggregator)", kind="int",
           bound=N(1, 10**9), metavar="N",
           derived=f"{CAP_PER_HOST_PER_S:,} orders/s per roster host (backtest: per host in the "
           "counts) over --window",
           group=_AGG_RULES),
    Option("window", RULE_VERBS, "sliding window in seconds", kind="float", default=10.0,
           bound=S(0.1, 3600.0), metavar="S", group=_AGG_RULES),
    Option("baseline-multiplier", RULE_VERBS, "kill when the window holds more than X times "
           "the learned baseline ('off' disables the rule)", kind="multiplier", default=5.0,
           bound=Bound(1.0001, 1e6), metavar="X", group=_AGG_RULES),
    Option("breach-windows", RULE_VERBS, "consecutive windows a baseline or host-share breach "
           "must last", kind="int", default=2, bound=N(1, 1000), metavar="N", group=_AGG_RULES),
    Option("min-orders", RULE_VERBS, "the baseline and host-share rules never trip a window "
           "below N orders", kind="int", default=100, bound=N(0, 10**9), metavar="N",
           group=_AGG_RULES),
    Option("warmup", RULE_VERBS, "seconds of learning before the baseline rule may trip",
           kind="float", default=300.0, bound=S(0.0, 7 * DAY), metavar="S", group=_AGG_RULES),
    Option("max-host-share", RULE_VERBS, "kill when one host sends more than this fraction "
           "of the window, e.g. 0.5", kind="fraction", metavar="F", unset="off",
           group=_AGG_RULES),
    Option("haunted-ratio", RULE_VERBS, "report a host as haunted at X times its peers' "
           "median", kind="float", default=5.0, bound=Bound(1.0001, 1e6), metavar="X",
           group=_AGG_RULES),
    Option("shadow", RULE_VERBS, "rules that only report ('would have tripped at ...'), "
           "never kill: a comma list of {causes}, or 'all'", kind="shadow", metavar="RULES",
           unset="none", group=_AGG_RULES),
    Option("max-rate", RULE_VERBS, "rate cap: kill when more than N orders per second were "
           "sent across the node within --fast-window; 'auto' derives it from --max-orders "
           f"({RATE_HEADROOM:g}x its average rate)", kind="rate", default="off",
           bound=Bound(0.001, 1e9, "orders/s"), metavar="N", group=_AGG_RULES),
    Option("fast-window", RULE_VERBS, "the fast window of the fast rules (baseline_fast, "
           "host_share_fast, max_rate), in seconds; they are off unless it is shorter than "
           "--window", kind="float", default=1.0, bound=S(0.1, 3600.0), metavar="S",
           group=_AGG_RULES),
    Option("fast-multiplier", RULE_VERBS, "baseline_fast: kill when the fast window holds "
           "more than X times the baseline's rate ('off' disables the rule)",
           kind="multiplier", default=8.0, bound=Bound(1.0001, 1e6), metavar="X",
           group=_AGG_RULES),
    Option("fast-breach", RULE_VERBS, "seconds a fast breach must hold, to filter one tick's "
           "noise (0 trips at the first breaching tick)", kind="float", default=0.1,
           bound=S(0.0, 3600.0), metavar="S", group=_AGG_RULES),
    Option("fast-min-orders", RULE_VERBS, "the fast baseline and host-share rules never trip "
           "a fast window below N orders", kind="int", default=50, bound=N(0, 10**9),
           metavar="N", group=_AGG_RULES),
    Option("fast-host-share", RULE_VERBS, "host_share_fast: the --max-host-share limit on the "
           "fast window too (with --max-host-share)", kind="switch", default=True,
           metavar="on|off", group=_AGG_RULES),
    Option("half-life", RULE_VERBS, "half-life of the baseline's moving average in seconds",
           kind="float", default=45.0, bound=S(0.1, 30 * DAY), metavar="S", group=_AGG_RULES),
    Option("profile-bucket", RULE_VERBS, "width of a time-of-day profile bucket in seconds",
           kind="float", default=300.0, bound=S(1.0, DAY), metavar="S", group=_AGG_RULES),
    Option("profile-half-life", RULE_VERBS, "half-life of a profile bucket, in time spent in "
           "it", kind="float", default=900.0, bound=S(0.1, 30 * DAY), metavar="S",
           group=_AGG_RULES),
    # -- guarded learning, breach span and the runaway rule (docs/ANOMALY.md) -------------
    Option("breach-span", RULE_VERBS, "a baseline or host-share breach trips once it lasted "
           "--breach-windows - 1 windows in total within the last N windows, so a pulsing "
           "flood cannot reset it (--breach-windows - 1: only an unbroken breach)", kind="int",
           bound=N(1, 1000), metavar="N", derived="--breach-windows + 1", group=_AGG_RULES),
    Option("baseline-band", RULE_VERBS, "a window confirmed normal is learned as at most X "
           "times the baseline ('off', with --baseline-doubling off: learn as earlier "
           "releases did)", kind="multiplier", default=1.5, bound=Bound(1.0, 1e6),
           metavar="X", group=_AGG_RULES),
    Option("baseline-doubling", RULE_VERBS, "the learned baseline rises at most 2x in S "
           "seconds unless a re-arm accepts a level ('off' lifts the bound)",
           kind="multiplier", default=3600.0, bound=S(1.0, 30 * DAY), metavar="S",
           group=_AGG_RULES),
    Option("baseline-slow-half-life", RULE_VERBS, "half-life of the baseline's slow moving "
           "average, which remembers the level through a lull ('off' for none)",
           kind="multiplier", default=7200.0, bound=S(0.1, 30 * DAY), metavar="S",
           group=_AGG_RULES),
    Option("runaway-growth", RULE_VERBS, "runaway: kill when the node's volume grew more "
           "than X times in each of --runaway-steps steps of --runaway-step windows, above "
           "the band of the baseline ('off' disables the rule)", kind="multiplier",
           default=1.15, bound=Bound(1.0001, 1e6), metavar="X", group=_AGG_RULES),
    Option("runaway-step", RULE_VERBS, "windows per step of the runaway rule", kind="int",
           default=2, bound=N(1, 1000), metavar="N", group=_AGG_RULES),
    Option("runaway-steps", RULE_VERBS, "consecutive steps of growth the runaway rule needs",
           kind="int", default=4, bound=N(1, 100), metavar="N", group=_AGG_RULES),
)  # fmt: skip
