-- Record the first operator's signed arm request, pending until a second operator signs it.
-- It replaces any earlier request (a request binds the node's current epoch and ver, so an
-- older one is void anyway) and expires on Redis server time. Recorded and refused requests
-- are both audited here, in the same call.
-- Runs after prelude.lua (ks_uint, ks_str, audit_append).
-- KEYS: 1 node state, 2 pending request, 3 audit stream, 4 audit chain head
-- ARGV: 1 lifted epoch, 2 lifted ver, 3 signed message, 4 signature, 5 principal,
--       6 expires ms (server time), 7 reason, 8 ceiling: a stored epoch above it is junk and
--       counts as 0 ("0": none), as in arm.lua
-- Returns {recorded (1|0), now_ms, refusal ("" | "moved" | "expired")}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.pcall('HMGET', KEYS[1], 'epoch', 'ver')
if type(cur) == 'table' and cur.err then cur = {} end
local lifted_epoch, lifted_ver = ks_uint(ARGV[1], -1), ks_uint(ARGV[2], -1)
local expires = ks_uint(ARGV[6], 0)
local function refuse(why)
  audit_append(KEYS[3], KEYS[4], {'action', 'refused', 'attempt', 'arm_request',
    'actor', ARGV[5], 'reason', ARGV[7], 'refused', why, 'epoch', ARGV[1], 'ver', ARGV[2],
    'ts_ms', now})
  return {0, ks_str(now), why}
end
local epoch = ks_uint(cur[1], 0)
local ceiling = ks_uint(ARGV[8], 0)
if ceiling > 0 and epoch > ceiling then epoch = 0 end
if epoch ~= lifted_epoch or ks_uint(cur[2], 0) ~= lifted_ver then
  return refuse('moved')
end
if expires <= now then
  return refuse('expired')
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'msg', ARGV[3], 'sig', ARGV[4], 'principal', ARGV[5],
  'expires_ms', ks_str(expires), 'ts_ms', ks_str(now))
redis.call('PEXPIRE', KEYS[2], expires - now)
audit_append(KEYS[3], KEYS[4], {'action', 'arm_request', 'actor', ARGV[5], 'reason', ARGV[7],
  'epoch', ARGV[1], 'ver', ARGV[2], 'ts_ms', now, 'expires_ms', expires})
return {1, ks_str(now), ''}
