"""The `Examples:` section of each verb's `--help`: what an operator types most often.

Text only; `cli.parser` puts it above the exit codes. Every verb has one (a test checks).
"""

from __future__ import annotations

EXAMPLES: dict[str, tuple[str, ...]] = {
    "sidecar": (
        "killswitch sidecar --node smars --host or-01 --listen unix:/run/killswitch/gate.sock \\",
        "    --operators /etc/killswitch/operators --metrics-port 9100 --attest /opt/smars/bin/router",
        "killswitch sidecar --node smars --host or-01 --listen unix:/run/killswitch/gate.sock \\",
        "    --fix tcp:127.0.0.1:9878=tcp:10.0.0.5:9878   # the FIX session to the venue, gated",
    ),
    "aggregator": (
        "killswitch aggregator --node smars --hosts or-01,or-02,or-03 --max-orders 5000 "
        "--window 10 \\",
        "    --operators /etc/killswitch/operators --metrics-port 9101 --require-durable",
        "killswitch aggregator --node smars --hosts or-01,or-02 --shadow baseline   "
        "# try a rule first",
    ),
    "arm": (
        "killswitch arm --node smars --key ~/.ssh/id_ed25519 --reason 'open'   # alice: exit 5",
        "killswitch arm --node smars --key ~/.ssh/id_ed25519                   # bob: exit 0",
        "killswitch arm --node smars --host or-03 --key ~/.ssh/id_ed25519      "
        "# lift a scoped kill",
    ),
    "resume": ("killswitch resume --node smars --key ~/.ssh/id_ed25519   # the same as arm",),
    "rollout": (
        "killswitch rollout --node smars --release DIGEST --hosts or-01 --key ~/.ssh/id_ed25519",
        "killswitch rollout --node smars --promote --key ~/.ssh/id_ed25519",
        "killswitch rollout --node smars          # show the rollout",
    ),
    "kill": (
        "killswitch kill --node smars --reason 'runaway router' --operator alice",
        "killswitch kill --node smars --host or-03 --reason haunted     # one host",
        "killswitch kill --node smars --symbol KCG --reason 'bad feed'  # one symbol",
        "killswitch kill --fleet --reason 'firm-wide stop' --json       # every node",
    ),
    "forget": (
        "killswitch forget --node smars --host or-09 --reason decommissioned   # audited",
        "killswitch forget --node old-test --key ~/.ssh/id_ed25519   # alice: 5, then bob: 0",
    ),
    "status": (
        "killswitch status --node smars          # exit 3 names hosts that do not agree",
        "killswitch status --fleet --json",
    ),
    "watch": ("killswitch watch --node smars", "killswitch watch --fleet --once | less"),
    "audit": (
        "killswitch audit --node smars --limit 20",
        "killswitch audit --node smars --verify --file /var/lib/killswitch/audit-smars.jsonl",
    ),
    "demo": ("killswitch demo", "killswitch demo --json --plot knight.svg"),
    "backtest": (
        "killswitch export --node smars > today.csv",
        "killswitch backtest --counts today.csv --max-host-share 0.5 --json",
    ),
    "export": ("killswitch export --node smars > today.csv",),
    "recorder": (
        "killswitch recorder /var/lib/killswitch/smars@or-0*.rec     # every host, one timeline",
        "killswitch recorder smars@or-08.7.rec --csv > kill-7.csv      # a kill's frozen file",
        "killswitch recorder --node smars --around 7 --host or-08     # pulled from the sidecars",
    ),
    "loadgen": ("killswitch loadgen --listen tcp:127.0.0.1:7000 --rate 50 --duration 10",),
    "alertsink": (
        "killswitch alertsink                  # GET http://127.0.0.1:9095/alerts: what arrived",
        "killswitch alertsink --bind 0.0.0.0   # Alertmanager's webhook url: http://HOST:9095/alerts",
    ),
    "config": (
        "killswitch config --check --config /etc/killswitch/killswitch.toml",
        "killswitch config --check sidecar     # one verb's settings and where they come from",
    ),
}


def section(verb: str) -> str:
    """`examples:` and the verb's lines, indented, for the help epilog ("" if none)."""
    lines = EXAMPLES.get(verb, ())
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines) + "\n\n" if lines else ""
