"""The network fence, as data: the nftables ruleset (libnftables JSON) built from the settings,
and what a read-back listing proves. Pure: the sidecar's `fence` module runs `nft` and `ss`.

Table `inet killswitch`, one per network namespace:

- `out` (hook output) sends TCP packets to a fenced endpoint (sets `ep4`, `ep6`: address .
  port) to `guard`: first `kill` (empty unless the kill fence is up), then a connection
  attempt (a SYN) from a uid outside `allow` is added to the dynamic set `bypass`, counted
  (counter `refused`) and reset. Only SYNs are judged: packets of a closing connection
  (a TIME_WAIT socket's ACK) carry no socket owner and must never count as a bypass.
- `inp` (hook input) sends TCP packets from a fenced endpoint to `killin`.
- The kill fence is one rule in `kill` (counter `killed`, reset: every uid, every packet)
  and one in `killin` (reset: the venue side of an established connection is told too).

Re-installing the standing rules never touches `kill`/`killin` nor the counters: a kill
fence found at start is kept, and the counters outlive the sidecar with the table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from killswitch.core.node.bounds import uint_or

TABLE = "killswitch"
FAMILY = "inet"
STANDING_CHAINS = ("out", "inp", "guard")
KILL_CHAINS = ("kill", "killin")
REFUSED = "refused"  # counter: connection attempts refused by the standing rule
KILLED = "killed"  # counter: packets refused by the kill fence
BYPASS_SET = "bypass"  # uids caught by the standing rule, read and emptied by the sidecar
BYPASS_SET_SIZE = 65536
CAP_NET_ADMIN = 12  # bit in /proc/<pid>/status CapEff
CAP_SYS_ADMIN = 21
GRANT_HINT = (
    "--fence needs CAP_NET_ADMIN: grant it with systemd AmbientCapabilities=CAP_NET_ADMIN "
    "(and CapabilityBoundingSet=CAP_NET_ADMIN), or the container's cap_add: [NET_ADMIN]"
)
NETNS_HINT = (
    "--fence-netns needs CAP_SYS_ADMIN to enter the namespace (setns) and, under systemd, "
    "RestrictNamespaces=net: add the drop-in killswitch-sidecar@.service.d/fence-netns.conf, "
    "or run the sidecar inside the namespace (NetworkNamespacePath=) without --fence-netns"
)


class FenceError(ValueError):
    """A fence setting is invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A venue endpoint: a TCP address and port. Sorted by family, address, port."""

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def __lt__(self, other: Endpoint) -> bool:
        return (self.addr.version, int(self.addr), self.port) < (
            other.addr.version, int(other.addr), other.port,
        )  # fmt: skip

    def __str__(self) -> str:
        return (
            f"[{self.addr}]:{self.port}" if self.addr.version == 6 else f"{self.addr}:{self.port}"
        )


def parse_endpoint(value: str) -> Endpoint:
    """`ADDR:PORT`, an IPv6 address in brackets (`[2001:db8::5]:9878`); never a name (a name
    would be resolved once, and the venue's addresses may move under it)."""
    host, sep, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise FenceError(f"fence: {value!r}: put an IPv6 address in brackets, e.g. [::1]:9878")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise FenceError(f"fence: {value!r} is not ADDR:PORT, e.g. 10.0.0.5:9878")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise FenceError(f"fence: {value!r}: {host!r} is not an IP address") from None
    return Endpoint(addr, int(port))


def parse_uid(value: object) -> int:
    uid = int(str(value))
    if not 0 <= uid < 2**32 - 1:
        raise ValueError("a uid is 0..4294967294")
    return uid


@dataclass(frozen=True, slots=True)
class FenceSpec:
    """What to fence: the endpoints and the uids that may connect to them."""

    endpoints: tuple[Endpoint, ...]
    allow_uids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise FenceError("fence: no endpoint given")
        if not self.allow_uids:
            raise FenceError("fence-allow-uid: at least one uid must be allowed")

    @property
    def v4(self) -> list[Endpoint]:
        return sorted(e for e in self.endpoints if e.addr.version == 4)

    @property
    def v6(self) -> list[Endpoint]:
        return sorted(e for e in self.endpoints if e.addr.version == 6)


# -- the ruleset ----------------------------------------------------------------------------


def _obj(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": _obj("rule", chain=chain, expr=list(expr))}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _pair(proto: str, addr: str, port: str) -> dict[str, Any]:
    return {
        "concat": [
            {"payload": {"protocol": proto, "field": addr}},
            {"payload": {"protocol": "tcp", "field": port}},
        ]
    }


_TCP = _match({"meta": {"key": "l4proto"}}, "tcp")
_RESET = {"reject": {"type": "tcp reset"}}
_ADD_UID = {"set": {"op": "add", "elem": {"meta": {"key": "skuid"}}, "set": f"@{BYPASS_SET}"}}


def _flags(*names: str) -> dict[str, Any]:
    return {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, list(names)]}


def _elems(endpoints: Iterable[Endpoint]) -> list[dict[str, Any]]:
    return [{"concat": [str(e.addr), e.port]} for e in endpoints]


def standing(spec: FenceSpec, found: Listing | None = None) -> dict[str, Any]:
    """The standing rules, as one `nft -j -f -` transaction. Sets and rules are replaced;
    the kill chains and the counters are created if missing and otherwise kept. `found`: the
    table as listed before (nft 1.0's JSON cannot name the flag `add @bypass` gave that set,
    and adding it again without the flag fails: a set found is not added)."""
    keep_bypass = found is not None and BYPASS_SET in found.sets
    cmds: list[dict[str, Any]] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": _obj("counter", name=REFUSED)},
        {"add": _obj("counter", name=KILLED)},
        {"add": _obj("set", name="allow", type="uid")},
        {"add": _obj("set", name="ep4", type=["ipv4_addr", "inet_service"])},
        {"add": _obj("set", name="ep6", type=["ipv6_addr", "inet_service"])},
        *(
            ()
            if keep_bypass
            else ({"add": _obj("set", name=BYPASS_SET, type="uid", size=BYPASS_SET_SIZE)},)
        ),
        {"add": _obj("chain", name="out", type="filter", hook="output", prio=0, policy="accept")},
        {"add": _obj("chain", name="inp", type="filter", hook="input", prio=0, policy="accept")},
        *({"add": _obj("chain", name=c)} for c in ("guard", *KILL_CHAINS)),
        *({"flush": _obj("set", name=s)} for s in ("allow", "ep4", "ep6")),
        *({"flush": _obj("chain", name=c)} for c in STANDING_CHAINS),
        {"add": _obj("element", name="allow", elem=sorted(set(spec.allow_uids)))},
    ]
    for name, eps in (("ep4", spec.v4), ("ep6", spec.v6)):
        if eps:
            cmds.append({"add": _obj("element", name=name, elem=_elems(eps))})
    for proto, name in (("ip", "ep4"), ("ip6", "ep6")):
        cmds.append(_rule("out", _match(_pair(proto, "daddr", "dport"), f"@{name}"),
                          {"jump": {"target": "guard"}}))  # fmt: skip
        cmds.append(_rule("inp", _match(_pair(proto, "saddr", "sport"), f"@{name}"),
                          {"jump": {"target": "killin"}}))  # fmt: skip
    cmds += [
        _rule("guard", {"jump": {"target": "kill"}}),
        _rule(
            "guard", _match(_flags("syn", "ack"), "syn", "!="), {"accept": None}
        ),  # not a connection attempt
        _rule("guard", _match({"meta": {"key": "skuid"}}, "@allow"), {"accept": None}),
        _rule("guard", _TCP, _ADD_UID, {"counter": REFUSED}, _RESET),  # named, counted, reset
    ]
    return {"nftables": cmds}


def kill_fence() -> dict[str, Any]:
    """The kill fence: every packet to or from a fenced endpoint reset, every uid."""
    return {
        "nftables": [
            *({"flush": _obj("chain", name=c)} for c in KILL_CHAINS),
            _rule("kill", _TCP, {"counter": KILLED}, _RESET),
            # not the resets the kill rule sends the local socket: they come "from" the venue
            _rule("killin", _TCP, _match(_flags("rst"), "rst", "!="), _RESET),
        ]
    }


def lift() -> dict[str, Any]:
    """The kill fence lifted (the standing rules stay)."""
    return {"nftables": [{"flush": _obj("chain", name=c)} for c in KILL_CHAINS]}


def forget_bypass(uids: Iterable[int]) -> dict[str, Any]:
    """Empty the read uids from the `bypass` set, so a later attempt shows up again."""
    return {"nftables": [{"delete": _obj("element", name=BYPASS_SET, elem=sorted(set(uids)))}]}


def cut_filter(endpoints: Sequence[Endpoint]) -> str:
    """`ss -K` filter for the established connections to the endpoints."""
    return "( " + " or ".join(f"dst {e}" for e in sorted(endpoints)) + " )"


# -- reading it back ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listing:
    """What `nft -j list table inet killswitch` showed (`found` False: no table)."""

    found: bool = False
    counters: Mapping[str, int] = field(default_factory=dict)  # name -> packets
    sets: Mapping[str, frozenset[Any]] = field(default_factory=dict)
    rules: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # chain -> handles
    hooks: Mapping[str, str] = field(default_factory=dict)  # base chain -> hook

    @property
    def killed(self) -> bool:
        """The kill fence is up (both of its rules in place)."""
        return all(len(self.rules.get(c, ())) == 1 for c in KILL_CHAINS)

    @property
    def refused(self) -> int:
        return self.counters.get(REFUSED, 0)

    @property
    def bypass_uids(self) -> tuple[int, ...]:
        return tuple(sorted(u for u in self.sets.get(BYPASS_SET, ()) if isinstance(u, int)))


def parse_listing(doc: Mapping[str, Any]) -> Listing:
    """A listing from `nft -j list table` output (objects of other tables are ignored)."""
    counters: dict[str, int] = {}
    sets: dict[str, frozenset[Any]] = {}
    rules: dict[str, list[int]] = {}
    hooks: dict[str, str] = {}
    found = False
    for item in doc.get("nftables", ()):
        if not isinstance(item, dict) or len(item) != 1:
            continue
        kind, body = next(iter(item.items()))
        if not isinstance(body, dict) or body.get("family") != FAMILY:
            continue
        if kind == "table":
            found = found or body.get("name") == TABLE
            continue
        if body.get("table") != TABLE:
            continue
        if kind == "counter":
            counters[str(body.get("name"))] = int(body.get("packets", 0))
        elif kind == "set":
            sets[str(body.get("name"))] = frozenset(_elem(e) for e in body.get("elem", ()))
        elif kind == "chain":
            rules.setdefault(str(body.get("name")), [])
            if "hook" in body:
                hooks[str(body["name"])] = str(body["hook"])
        elif kind == "rule":
            rules.setdefault(str(body.get("chain")), []).append(int(body.get("handle", 0)))
    return Listing(found, counters, sets, {c: tuple(h) for c, h in rules.items()}, hooks)


def _elem(e: Any) -> Any:
    if isinstance(e, dict) and "concat" in e:
        addr, port = e["concat"]
        return (str(ipaddress.ip_address(addr)), int(port))
    if isinstance(e, dict) and "elem" in e:  # an element with attributes
        return _elem(e["elem"].get("val"))
    return e


def problems(listing: Listing, spec: FenceSpec, *, killed: bool) -> list[str]:
    """What the read-back does not prove ([] when the fence is as intended): the standing
    rules always, and the kill fence up (`killed`) or down."""
    if not listing.found:
        return [f"table {FAMILY} {TABLE} is missing"]
    out: list[str] = []
    for chain, hook in (("out", "output"), ("inp", "input")):
        if listing.hooks.get(chain) != hook:
            out.append(f"chain {chain} is not hooked on {hook}")
    for chain, n in (("out", 2), ("inp", 2), ("guard", 4)):
        if len(listing.rules.get(chain, ())) != n:
            out.append(f"chain {chain} has {len(listing.rules.get(chain, ()))} rules, not {n}")
    if listing.sets.get("allow", frozenset()) != frozenset(spec.allow_uids):
        out.append("set allow does not hold the allowed uids")
    want = {(str(e.addr), e.port) for e in spec.endpoints}
    if listing.sets.get("ep4", frozenset()) | listing.sets.get("ep6", frozenset()) != want:
        out.append("sets ep4/ep6 do not hold the fenced endpoints")
    for name in (REFUSED, KILLED):
        if name not in listing.counters:
            out.append(f"counter {name} is missing")
    if killed and not listing.killed:
        out.append("the kill fence is not in place")
    if not killed and any(listing.rules.get(c) for c in KILL_CHAINS):
        out.append("the kill fence is still in place")
    return out


# -- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bypass:
    """Connection attempts the standing rule refused since the last read, and who made them."""

    attempts: int
    uids: tuple[int, ...]

    def named(self) -> str:
        return ",".join(map(str, self.uids)) or "unknown"


def refused_since(last: int | None, listing: Listing) -> Bypass | None:
    """New refusals since the counter was last read (`last` None: the first read, which only
    sets the baseline; a counter that went down was reset by hand: a new baseline too)."""
    now = listing.refused
    if last is None or now <= last:
        return None
    return Bypass(now - last, listing.bypass_uids)


def has_cap(status_text: str, bit: int = CAP_NET_ADMIN) -> bool:
    """Whether /proc/<pid>/status text shows capability `bit` in the effective set."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split(":", 1)[1].strip(), 16) >> bit & 1)
            except ValueError:
                return False
    return False


def fence_view(
    roster: Sequence[str],
    state: str,
    epoch: int,
    requested: bool,
    reports: Mapping[str, Mapping[str, str]],
) -> tuple[list[str], dict[str, str]]:
    """From the hosts' reports: the roster hosts whose kill fence is proven for this kill
    (`fenced`), and those whose fence is not proven, with why (`fence_failed`): a standing
    fence that failed in any state, and, when the kill asked for the fence, every roster host
    that has not proven it."""
    fenced: list[str] = []
    failed: dict[str, str] = {}
    for h in roster:
        rep = reports.get(h, {})
        if (
            state == "KILLED"
            and rep.get("fence") == "killed"
            and uint_or(rep.get("fence_epoch")) == epoch
        ):
            fenced.append(h)
        elif rep.get("fence") == "failed":
            failed[h] = rep.get("fence_problem", "")[:300] or "not proven"
        elif requested and state == "KILLED":
            failed[h] = "kill fence not proven" if rep.get("fence") else "no --fence on this host"
    return fenced, failed
