"""Mutation testing: mutmut over the core decisions, and a catalogue of Lua mutants over the scripts.

`./dev mutants` runs both. mutmut mutates the Python modules named in pyproject.toml
(`[tool.mutmut]`) and runs the tests selected there. No Python tool mutates Lua, so the scripts'
mutants are written out here, one per branch condition or effect that matters, each named
after what it breaks: every one is applied in turn (through a pytest plugin that rewrites the
script as `Store` and the Lua tests load it) and must make a test fail.

    python -m kstest.mutants [--lua-only | --python-only] [--fresh]

Exit 0 when every mutant is killed or listed in EQUIVALENT (with its reason), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from killswitch.store import scripts

ENV = "KILLSWITCH_LUA_MUTANT"
LUA_TESTS = ["tests/live/test_lua.py", "tests/live/test_notice.py"]


@dataclass(frozen=True, slots=True)
class LuaMutant:
    name: str
    script: str
    old: str
    new: str


LUA_MUTANTS: tuple[LuaMutant, ...] = (
    # kill.lua: the fence, the armed-only refusal, the epoch rule, the effects
    LuaMutant("kill_fence_off", "kill", "if ARGV[8] ~= '' and redis.pcall('GET', KEYS[3]) ~= ARGV[8] then", "if false then"),
    LuaMutant("kill_fence_always", "kill", "if ARGV[8] ~= '' and redis.pcall('GET', KEYS[3]) ~= ARGV[8] then", "if ARGV[8] ~= '' then"),
    LuaMutant("kill_fence_on_operator_kill", "kill", "if ARGV[8] ~= '' and", "if ARGV[8] == '' and"),
    LuaMutant("kill_not_armed_off", "kill", "if ARGV[7] == '1' and state ~= 'ARMED' then", "if false then"),
    LuaMutant("kill_not_armed_only_killed", "kill", "state ~= 'ARMED' then", "state == 'KILLED' then"),
    LuaMutant("kill_rekill_strict_floor", "kill", "state == 'KILLED' and epoch >= floor", "state == 'KILLED' and epoch > floor"),
    LuaMutant("kill_rekill_epoch_zero", "kill", "epoch >= floor and epoch > 0 then\n  new_epoch = epoch", "epoch >= floor then\n  new_epoch = epoch"),
    LuaMutant("kill_rekill_always_new_epoch", "kill", "if state == 'KILLED' and epoch >= floor", "if false and epoch >= floor"),
    LuaMutant("kill_ignores_floor", "kill", "new_epoch = math.max(epoch, floor) + 1", "new_epoch = epoch + 1"),
    LuaMutant("kill_same_ver", "kill", "local new_ver = ver + 1", "local new_ver = ver"),
    LuaMutant("kill_no_notice", "kill", "redis.call('PUBLISH', ARGV[5], 'KILLED ' .. ks_str(new_epoch) .. ' ' .. ks_str(new_ver))", ""),
    LuaMutant("kill_no_audit", "kill", "audit_append(KEYS[2], KEYS[4], entry)", ""),
    LuaMutant("kill_refusal_not_audited", "kill", "return refuse('fenced')", "return {0, epoch, ver, ks_str(now), state, 'fenced'}"),
    LuaMutant("kill_ceiling_off", "kill", "local implausible = ceiling > 0 and epoch > ceiling", "local implausible = false"),
    LuaMutant("kill_ceiling_inclusive", "kill", "and epoch > ceiling", "and epoch >= ceiling"),
    LuaMutant("kill_junk_not_noted", "kill", "elseif implausible or (cur[2] and ks_uint(cur[2], nil) == nil) then", "elseif false then"),
    # arm.lua: completes a signed arm only while its request is current
    LuaMutant("arm_ignores_moved_epoch", "arm", "if epoch ~= ks_uint(ARGV[6], -1) or", "if false or"),
    LuaMutant("arm_ignores_moved_ver", "arm", "or ver ~= ks_uint(ARGV[7], -1) or", "or"),
    LuaMutant("arm_allows_no_lift", "arm", "or new_epoch <= epoch then", "or new_epoch < epoch then"),
    LuaMutant("arm_ignores_expiry", "arm", "if now > ks_uint(ARGV[8], 0) then", "if false then"),
    LuaMutant("arm_ignores_ceiling", "arm", "if ceiling > 0 and epoch > ceiling then epoch = 0 end", ""),
    LuaMutant("arm_keeps_cause", "arm", "'cause', '', ", ""),
    LuaMutant("arm_drops_proof", "arm", "'proof', ARGV[9])", "'proof', '')"),
    LuaMutant("arm_keeps_pending", "arm", "redis.call('DEL', KEYS[5])", ""),
    LuaMutant("arm_refusal_unaudited", "arm", "audit_append(KEYS[2], KEYS[3], {'action', 'refused'", "local _ = ({'action', 'refused'"),
    LuaMutant("arm_no_notice", "arm", "redis.call('PUBLISH', ARGV[5], 'ARMED ' .. ks_str(new_epoch) .. ' ' .. ks_str(new_ver))", ""),
    # flush.lua: counting once, and the notice's one-call confirmation
    LuaMutant("flush_always_same_boot", "flush", "if prev[1] == boot then", "if true then"),
    LuaMutant("flush_never_same_boot", "flush", "if prev[1] == boot then", "if false then"),
    LuaMutant("flush_negative_delta", "flush", "local d_allowed = math.max(allowed - prev_allowed, 0)", "local d_allowed = allowed - prev_allowed"),
    LuaMutant("flush_proof_always_sent", "flush", "if digest == ARGV[28] then proof = '' end", ""),
    LuaMutant("flush_proof_never_sent", "flush", "local proof = s[5] or ''", "local proof = ''"),
    LuaMutant("flush_flow_needs_both", "flush", "if d_allowed > 0 or d_blocked > 0 or", "if d_allowed > 0 and d_blocked > 0 or"),
    LuaMutant("flush_cancels_alone_no_flow", "flush", "or d_cancels > 0 then", "then"),
    LuaMutant("flush_new_boot_ignores_acked_cancels", "flush", "prev_cancels = tonumber(ARGV[24]) or 0", "prev_cancels = 0"),
    LuaMutant("flush_extra_without_extras", "flush", "if #ARGV >= 30 then", "if #ARGV >= 29 then"),
    LuaMutant("flush_scopes_not_returned", "flush", "local scopes = redis.call('HGETALL', ARGV[27])", "local scopes = {}"),
    LuaMutant("flush_lifts_always_sent", "flush", "if not (same and string.sub(scopes[i], 1, 5) == 'lift:') then", "if true then"),
    LuaMutant("flush_lifts_never_sent", "flush", "if not (same and string.sub(scopes[i], 1, 5) == 'lift:') then", "if string.sub(scopes[i], 1, 5) ~= 'lift:' then"),
    LuaMutant("flush_held_without_hold", "flush", "if ARGV[19] ~= '0' and s[1] == 'KILLED'", "if s[1] == 'KILLED'"),
    LuaMutant("flush_held_any_state", "flush", "ARGV[19] ~= '0' and s[1] == 'KILLED' and", "ARGV[19] ~= '0' and"),
    LuaMutant("flush_held_any_epoch", "flush", "and s[2] == ARGV[19]", ""),
    LuaMutant("flush_held_confirms_twice", "flush", "and (s[2] ~= ARGV[20] or s[3] ~= ARGV[21])", ""),
    LuaMutant("flush_held_ignores_ver", "flush", "(s[2] ~= ARGV[20] or s[3] ~= ARGV[21])", "(s[2] ~= ARGV[20])"),
    LuaMutant("flush_held_report_untouched", "flush", "if confirm_epoch > tonumber(ARGV[6]) then", "if false then"),
    LuaMutant("flush_confirm_zero", "flush", "if confirm_epoch > 0 then", "if confirm_epoch >= 0 then"),
    LuaMutant("flush_no_confirm_publish", "flush", "redis.call('PUBLISH', ARGV[15], ARGV[16] .. ' ' .. confirm_epoch .. ' ' .. confirm_ver)", ""),
    LuaMutant("flush_closed_flag_lost", "flush", "view, closed_confirm = tonumber(s[2]), s[3], 'KILLED', '1'", "view, closed_confirm = tonumber(s[2]), s[3], 'KILLED', '0'"),
    # lease.lua
    LuaMutant("lease_release_by_anyone", "lease", "if cur == ARGV[1] then redis.call('DEL', KEYS[1]) end", "redis.call('DEL', KEYS[1])"),
    LuaMutant("lease_renew_by_anyone", "lease", "if cur == ARGV[1] then\n  redis.call('PEXPIRE'", "if cur then\n  redis.call('PEXPIRE'"),
    LuaMutant("lease_steal", "lease", "if not cur then", "if true then"),
    LuaMutant("lease_no_expiry", "lease", "redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)", "redis.call('SET', KEYS[1], ARGV[1])"),
    LuaMutant("lease_keeps_ttl_less_lease", "lease", "elseif kind == 'string' and redis.call('PTTL', KEYS[1]) == -1 then", "elseif false then"),
    # read.lua
    LuaMutant("read_flows_inclusive", "read", "from = '(' .. after", "from = after"),
    LuaMutant("read_flows_never", "read", "local with_flows = ARGV[1] == '1'", "local with_flows = false"),
    LuaMutant("read_flows_from_start", "read", "if after ~= nil and after ~= '' then", "if false then"),
    LuaMutant("read_wrong_type_fails", "read", "local r = redis.pcall(...)", "local r = redis.call(...)"),
    LuaMutant("read_scopes_dropped", "read", "local scopes = safe({}, 'HGETALL', KEYS[5])", "local scopes = {}"),
    # roster.lua
    LuaMutant("roster_always_changes", "roster", "if same then return 0 end", ""),
    LuaMutant("roster_ignores_names", "roster", "if current[i] ~= wanted[i] then same = false break end", ""),
    LuaMutant("roster_ignores_count", "roster", "local same = #current == #wanted", "local same = true"),
    # scope.lua
    LuaMutant("scope_lift_of_absent_changes", "scope", "if ARGV[1] == 'arm' and not exists and ARGV[15] ~= '1' then", "if false then"),
    LuaMutant("scope_lift_keeps_scope", "scope", "redis.call('HDEL', KEYS[1], field)", ""),
    LuaMutant("scope_lift_without_proof", "scope", "redis.call('HSET', KEYS[1], 'lift:' .. field, ARGV[12])", ""),
    LuaMutant("scope_kill_keeps_old_proof", "scope", "redis.call('HDEL', KEYS[1], 'lift:' .. field)", ""),
    LuaMutant("scope_no_notice", "scope", "redis.call('PUBLISH', ARGV[7], 'SCOPE ' .. ver)", ""),
    LuaMutant("scope_no_audit", "scope", "audit_append(KEYS[2], KEYS[4], entry)", ""),
    # prelude.lua (in front of kill, arm, roster, audit_event, scope): the chain, bounded reads
    LuaMutant("prelude_chain_unlinked", "prelude", "local entry = {'seq', ks_str(seq + 1), 'prev', prev}", "local entry = {'seq', ks_str(seq + 1), 'prev', ''}"),
    LuaMutant("prelude_head_not_moved", "prelude", "redis.call('HSET', head, 'seq', ks_str(seq + 1), 'hash', digest, 'id', id)", ""),
    LuaMutant("prelude_head_seq_unbounded", "prelude", "string.match(h[1], '^%d+$') and #h[1] <= 15", "tonumber(h[1])"),
    LuaMutant("prelude_junk_type_kept", "prelude", "    redis.call('DEL', key)\n    return found", "    return found"),
    LuaMutant("prelude_uint_no_pattern", "prelude", "or not string.match(s, '^%d+$') then", "then"),
    LuaMutant("prelude_repair_not_noted", "prelude", "if bad_stream or bad_head then", "if false then"),
)  # fmt: skip

# Python mutants that survive on purpose: mutmut name -> why no test can tell them apart.
# The numbers are mutmut's and change when the function changes: review the list then.
_FALSY = "a falsy value the code only tests for truth (`if x`, `x and ...`), never compares"
_UNUSED = "set in __init__ but always overwritten by apply() before the gate can read it"
EQUIVALENT: dict[str, str] = {
    "killswitch.core.node.state.xǁNodeReadǁfrom_hash__mutmut_8": (
        "state '' instead of None for a garbage state: both fail the `in (ARMED, KILLED)` test "
        "on the next line and the read is built with None either way"
    ),
    "killswitch.core.node.state.x_observe__mutmut_13": (
        "UNARMED read drops epoch=0: only reached with max_epoch 0, where no path has set a "
        "non-zero view epoch (every read with epoch > 0 raises max_epoch)"
    ),
    "killswitch.core.node.state.x_observe__mutmut_14": "same as _13 for ver: ver is only set with an epoch > 0",
    "killswitch.core.node.state.x_observe__mutmut_67": "regression='' dropped: the dataclass default is ''",
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_12": (
        "the default logger's name: services pass their own logger; the name is not a decision"
    ),
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_13": "as _12",
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_14": "as _12",
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_15": _FALSY + " (_open None)",
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_17": _UNUSED
    + " (_deadline, read only when _open)",
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_18": _UNUSED + " (_deadline)",
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_24": _UNUSED
    + " (_allow, returned only when open)",
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_25": _UNUSED + " (_allow)",
    "killswitch.core.enforce.gate.xǁGateǁ__init____mutmut_26": _UNUSED + " (_allow)",
    "killswitch.core.enforce.gate.xǁGateǁ_refuse__mutmut_5": (
        "`STALE if self._open else self._reason` -> `self._reason`: the gate is only open on an "
        "ARMED view, whose block_reason is STALE, so both give 'stale'"
    ),
    "killswitch.core.enforce.gate.xǁGateǁapply__mutmut_4": _FALSY + " (_open None)",
    "killswitch.core.enforce.gate.xǁGateǁclose__mutmut_1": _FALSY + " (_open None)",
    "killswitch.core.enforce.gate.xǁGateǁhold__mutmut_5": _FALSY + " (_open None)",
}


def pytest_configure(config: object) -> None:
    """Plugin hook (`-p kstest.mutants`): apply the mutant named in the environment."""
    raw = os.environ.get(ENV)
    if not raw:
        return
    m = LuaMutant(**json.loads(raw))
    original = scripts.plain_script

    def mutated(name: str) -> str:
        text = original(name)
        return text.replace(m.old, m.new) if name == m.script else text

    scripts.plain_script = mutated


def check_catalogue(root: Path) -> list[str]:
    """Every mutant's text must occur exactly once in its script (the catalogue tracks edits)."""
    problems = []
    for m in LUA_MUTANTS:
        text = (root / "killswitch" / "store" / "lua" / f"{m.script}.lua").read_text("utf-8")
        if text.count(m.old) != 1:
            problems.append(
                f"{m.name}: {m.old!r} occurs {text.count(m.old)} times in {m.script}.lua"
            )
    return problems


def run_lua(root: Path) -> tuple[list[str], int]:
    """Apply each Lua mutant; return the names of survivors and how many were killed."""
    survivors, killed = [], 0
    for m in LUA_MUTANTS:
        env = dict(os.environ, **{ENV: json.dumps(asdict(m))})
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
             "-p", "kstest.mutants", *LUA_TESTS],
            cwd=root, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            survivors.append(m.name)
            print(f"  SURVIVED {m.name}")
        elif done.returncode == 1:
            killed += 1
            print(f"  killed   {m.name}")
        else:
            print(done.stdout[-2000:], done.stderr[-2000:])
            raise SystemExit(f"mutants: pytest could not run for {m.name} (exit {done.returncode})")
    return survivors, killed


def run_python(root: Path, fresh: bool) -> tuple[list[str], int]:
    """mutmut over the modules in pyproject.toml; return survivors and the killed count."""
    if fresh:
        shutil.rmtree(root / "mutants", ignore_errors=True)
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "run", "--max-children", "2"], cwd=root, check=False)
    done = subprocess.run(
        [*mutmut, "results", "--all", "true"], cwd=root, capture_output=True, text=True, check=False
    )
    survivors, killed = [], 0
    for line in done.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if status == "killed":
            killed += 1
        elif status in ("survived", "no tests", "timeout", "suspicious"):
            survivors.append(name)
    return survivors, killed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mutants", description=__doc__.splitlines()[0])
    only = p.add_mutually_exclusive_group()
    only.add_argument("--lua-only", action="store_true")
    only.add_argument("--python-only", action="store_true")
    p.add_argument("--fresh", action="store_true", help="forget mutmut's cached results")
    a = p.parse_args(argv)
    root = Path.cwd()
    problems = check_catalogue(root)
    if problems:
        print(
            "mutants: the Lua catalogue no longer matches the scripts:\n  " + "\n  ".join(problems)
        )
        return 2
    bad: list[str] = []
    started = time.monotonic()
    if not a.lua_only:
        survivors, killed = run_python(root, a.fresh)
        unexplained = [s for s in survivors if s not in EQUIVALENT]
        print(f"python: {killed} killed, {len(survivors)} survived "
              f"({len(survivors) - len(unexplained)} equivalent, listed in EQUIVALENT)")  # fmt: skip
        bad += unexplained
    if not a.python_only:
        survivors, killed = run_lua(root)
        print(f"lua: {killed} killed, {len(survivors)} survived of {len(LUA_MUTANTS)}")
        bad += survivors
    print(f"mutants: {time.monotonic() - started:.0f} s")
    for name in bad:
        print(f"mutants: SURVIVED (not known equivalent) {name}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
