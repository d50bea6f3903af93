-- Record the first operator's signed arm request, pending until a second operator signs it.
-- It replaces any earlier request (a request binds the node's current epoch and ver, so an
-- older one is void anyway) and expires on Redis server time.
-- KEYS: 1 node state, 2 pending request, 3 audit stream
-- ARGV: 1 lifted epoch, 2 lifted ver, 3 signed message, 4 signature, 5 principal,
--       6 expires ms (server time), 7 reason
-- Returns {recorded (1|0), now_ms, refusal ("" | "moved" | "expired")}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'ver')
if (tonumber(cur[1]) or 0) ~= tonumber(ARGV[1]) or (tonumber(cur[2]) or 0) ~= tonumber(ARGV[2]) then
  return {0, tostring(now), 'moved'}
end
local expires = tonumber(ARGV[6])
if expires <= now then
  return {0, tostring(now), 'expired'}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'msg', ARGV[3], 'sig', ARGV[4], 'principal', ARGV[5],
  'expires_ms', expires, 'ts_ms', now)
redis.call('PEXPIRE', KEYS[2], expires - now)
redis.call('XADD', KEYS[3], '*', 'action', 'arm_request', 'actor', ARGV[5], 'reason', ARGV[7],
  'epoch', ARGV[1], 'ver', ARGV[2], 'ts_ms', now, 'expires_ms', expires)
return {1, tostring(now), ''}
