"""Redis ACL users for one node, built from the key layout in `keys`, so the two never drift.

Roles (see docs/SECURITY.md):

- `ks-sidecar-<node>-<host>`: calls its round trip, a pre-loaded Redis Function (`FCALL`;
  no EVAL, EVALSHA, SCRIPT, nor FUNCTION but `FUNCTION LIST` to check the library's code: it
  cannot run Lua of its own, so it cannot hold the server in a busy script), and writes only its own host's keys
  (`ks:{N}:h:<host>:*`); reads the node state and scopes (read-only patterns, never declared as a
  function key, because Redis treats every FCALL key as written); subscribes to kill notices and
  publishes its confirmations. Once per boot it SADDs its name to the node's `hosts` set
  (how off-roster hosts are found) and it reads the state's signed arm `proof` with the
  state. It cannot write the node state, the roster, the audit chain,
  the leader lease or another host's keys, and it cannot publish on the events channel (a
  forged kill notice): it only listens there. On Redis Cluster its client also needs
  `CLUSTER SLOTS`, `COMMAND` and `ASKING` (the slot map, the command table, a migrating slot).
- `ks-aggregator-<node>`: loads the sidecars' Functions library (`FUNCTION LOAD`, never
  FLUSH, DELETE or RESTORE) and runs its own scripts; every key and channel of its node and
  the fleet leader lease
  (`--fleet-max-orders`); in the fleet's node set it may add and list, never remove (so one
  node's credential cannot hide another node from `kill --fleet`).
- `ks-operator`: every killswitch key and channel (kill, arm, status, audit, watch).
  There is no read-only role: `status` reads in one script (`read.lua`) for an atomic view,
  and Redis ACLs require write access to every key a script declares.
- `default` is off: a connection that does not authenticate can do nothing.

Passwords are stored as SHA-256 (`#<hex>`), never in the clear. Generate a file with
`python -m killswitch.store.acl NODE HOST1,HOST2,...` (random passwords, printed once as the
URLs to give each process).
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from collections.abc import Mapping, Sequence

from killswitch.store.keys import FLEET_LEADER_KEY, NODES_KEY, PREFIX, NodeKeys

_CONNECTION = "+ping +client|setname +client|id +hello +auth"
# What redis-py's Cluster client sends before and around a command (a no-op on one server):
# CLUSTER SLOTS learns the slot map, COMMAND reads the command table to find each command's
# keys (COMMAND GETKEYS where key specs are not enough), ASKING follows an ASK redirection
# while a slot migrates. None touches data; the service users hold COMMAND and ASKING
# already (@connection).
_CLUSTER = "+cluster|slots +command +asking"
# Only what a loaded library offers (no Lua of its own), and reading which code is loaded
# under its library's name (its integrity check): never FUNCTION LOAD, DELETE or FLUSH.
_FUNCTIONS = "+fcall +fcall_ro +function|list"
_SIDECAR_CMDS = f"-@all {_CONNECTION} {_CLUSTER} {_FUNCTIONS} +time +hmget +hgetall +hset " \
    "+xadd +publish +sadd +subscribe +unsubscribe"  # fmt: skip
# Redis 7 ACL selectors: a command passes when the root rules or one selector allow it whole.
# A sidecar publishes only on its confirmations channel; kill notices it may only hear.
_LISTEN = "+subscribe +unsubscribe"
# The fleet registry: an aggregator adds its own node and lists the others, never removes one
# (`forget --node`, two operators, is the only way out of what `kill --fleet` covers).
_REGISTRY_CMDS = "+sadd +sscan +smembers +sismember +scard"
# Everything a service or an operator needs, minus what could wipe or reconfigure the server.
_SERVICE_CMDS = f"-@all +@read +@write +@scripting +@pubsub +@connection {_CONNECTION} " \
    "-@dangerous -script|flush -function|flush -function|delete -function|restore +info +config|get +wait +time " \
    "+cluster|slots"  # fmt: skip


def sidecar_user(node: str, host: str) -> str:
    return f"ks-sidecar-{node}-{host}"


def aggregator_user(node: str) -> str:
    return f"ks-aggregator-{node}"


OPERATOR_USER = "ks-operator"


def users(node: str, hosts: Sequence[str]) -> list[str]:
    """Every user name of a node's ACL, in file order (after `default`)."""
    return [*(sidecar_user(node, h) for h in hosts), aggregator_user(node), OPERATOR_USER]


def acl_lines(node: str, hosts: Sequence[str], passwords: Mapping[str, str]) -> list[str]:
    """The lines of a Redis ACL file (`aclfile`) for `node`; `passwords` maps user -> secret."""
    k = NodeKeys(node)

    def pw(user: str) -> str:
        return "#" + hashlib.sha256(passwords[user].encode("utf-8")).hexdigest()

    lines = ["user default off resetkeys resetchannels -@all"]
    for h in hosts:
        hk = k.host(h)
        lines.append(
            f"user {sidecar_user(node, h)} on {pw(sidecar_user(node, h))} resetkeys resetchannels "
            f"~{hk.prefix}* ~{k.hosts} %R~{k.state} %R~{k.scopes} &{k.confirms} "
            f"{_SIDECAR_CMDS} (&{k.events} &{k.confirms} {_LISTEN})"
        )
    lines.append(
        f"user {aggregator_user(node)} on {pw(aggregator_user(node))} resetkeys resetchannels "
        f"~{k.base}:* ~{FLEET_LEADER_KEY} &{k.base}:* {_SERVICE_CMDS} "
        f"(~{NODES_KEY} {_REGISTRY_CMDS})"
    )
    lines.append(
        f"user {OPERATOR_USER} on {pw(OPERATOR_USER)} resetkeys resetchannels "
        f"~{PREFIX}:* &{PREFIX}:* {_SERVICE_CMDS}"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m killswitch.store.acl NODE HOST1,HOST2,...`: an ACL file on stdout, random
    passwords; each user's password goes to stderr once, as `user password` lines."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m killswitch.store.acl NODE HOST1,HOST2,...", file=sys.stderr)
        return 2
    node, hosts = args[0], [h for h in args[1].split(",") if h]
    passwords = {u: secrets.token_urlsafe(24) for u in users(node, hosts)}
    print("\n".join(acl_lines(node, hosts, passwords)))
    for user, secret in passwords.items():
        print(f"{user} {secret}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
