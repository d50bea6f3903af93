-- Forget: what an off-roster host left in Redis (op `host`), or the two steps of removing a
-- node from the fleet registry (op `request`: the first operator's signed request, pending;
-- op `node`: the second operator completes it). Every step is audited in the same call. The
-- registry itself lives outside the node's hash slot: the caller removes the node from it
-- after `node` succeeds.
-- Runs after prelude.lua (ks_uint, ks_str, audit_append).
-- op host:    KEYS 1 roster, 2 hosts set, 3 audit, 4 audit head, 5 report, 6 flow, 7 confirm
--             ARGV 1 "host", 2 actor, 3 actor kind, 4 host, 5 reason
-- op request: KEYS 1 pending, 2 audit, 3 audit head
--             ARGV 1 "request", 2 principal, 3 signed message, 4 signature, 5 expires ms,
--             6 reason, 7 key fingerprint
-- op node:    KEYS 1 pending, 2 audit, 3 audit head
--             ARGV 1 "node", 2 actor (principals joined by +), 3 signed message (must be the
--             pending one), 4 reason, 5 key fingerprints
-- Returns {changed (1|0), refusal ("" | "on_roster" | "not_pending" | "expired")}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
if op == 'host' then
  local audit, head = KEYS[3], KEYS[4]
  if redis.pcall('SISMEMBER', KEYS[1], ARGV[4]) == 1 then
    audit_append(audit, head, {'action', 'refused', 'attempt', 'forget', 'actor', ARGV[2],
      'actor_kind', ARGV[3], 'host', ARGV[4], 'reason', ARGV[5], 'refused', 'on_roster',
      'ts_ms', now})
    return {0, 'on_roster'}
  end
  local gone = redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
  gone = gone + redis.pcall('SREM', KEYS[2], ARGV[4])
  audit_append(audit, head, {'action', 'forget', 'actor', ARGV[2], 'actor_kind', ARGV[3],
    'host', ARGV[4], 'reason', ARGV[5], 'removed', gone, 'ts_ms', now})
  return {1, ''}
end
local expires = ks_uint(ARGV[5], 0)
if op == 'request' then
  if expires <= now then return {0, 'expired'} end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'msg', ARGV[3], 'sig', ARGV[4], 'principal', ARGV[2],
    'expires_ms', ks_str(expires))
  redis.call('PEXPIRE', KEYS[1], expires - now)
  audit_append(KEYS[2], KEYS[3], {'action', 'forget_request', 'actor', ARGV[2],
    'actor_kind', 'signed', 'key', ARGV[7], 'reason', ARGV[6], 'ts_ms', now,
    'expires_ms', expires})
  return {1, ''}
end
-- op node: only the request still pending (not replaced, not expired) can be completed
if redis.pcall('HGET', KEYS[1], 'msg') ~= ARGV[3] then
  audit_append(KEYS[2], KEYS[3], {'action', 'refused', 'attempt', 'forget_node',
    'actor', ARGV[2], 'actor_kind', 'signed', 'key', ARGV[5], 'reason', ARGV[4],
    'refused', 'not_pending', 'ts_ms', now})
  return {0, 'not_pending'}
end
redis.call('DEL', KEYS[1])
audit_append(KEYS[2], KEYS[3], {'action', 'forget_node', 'actor', ARGV[2],
  'actor_kind', 'signed', 'key', ARGV[5], 'reason', ARGV[4], 'ts_ms', now})
return {1, ''}
