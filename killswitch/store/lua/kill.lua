-- Record a kill of the node and announce it. Killing a killed node keeps its epoch (a new
-- `ver` makes hosts confirm again); otherwise the kill takes a new epoch above every epoch
-- stored or reported by a host (`floor`), so lost or restored Redis data cannot hide it.
-- KEYS: 1 node state, 2 audit stream, 3 aggregator leader lease
-- ARGV: 1 actor, 2 reason, 3 cause, 4 floor epoch, 5 events channel, 6 audit action,
--       7 only if armed ("1": an automatic trip never re-kills or kills an unarmed node),
--       8 fence: a lease token the caller must still hold ("": no fence, an operator's kill)
-- Returns {changed, epoch, ver, now_ms, prev_state, refusal ("" | "not_armed" | "fenced")}.
-- The fence makes a paused aggregator that wakes up after losing its lease harmless.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'ver')
local state = cur[1] or ''
local epoch = tonumber(cur[2]) or 0
local ver = tonumber(cur[3]) or 0
local floor = tonumber(ARGV[4])
if ARGV[8] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[8] then
  return {0, epoch, ver, tostring(now), state, 'fenced'}
end
if ARGV[7] == '1' and state ~= 'ARMED' then
  return {0, epoch, ver, tostring(now), state, 'not_armed'}
end
local new_epoch
if state == 'KILLED' and epoch >= floor and epoch > 0 then
  new_epoch = epoch
else
  new_epoch = math.max(epoch, floor) + 1
end
local new_ver = ver + 1
redis.call('HSET', KEYS[1], 'state', 'KILLED', 'epoch', new_epoch, 'ver', new_ver,
  'reason', ARGV[2], 'actor', ARGV[1], 'cause', ARGV[3], 'ts_ms', now, 'killed_ms', now)
redis.call('XADD', KEYS[2], '*', 'action', ARGV[6], 'actor', ARGV[1], 'reason', ARGV[2],
  'cause', ARGV[3], 'epoch', new_epoch, 'ver', new_ver, 'ts_ms', now,
  'prev_state', state, 'prev_epoch', epoch)
redis.call('PUBLISH', ARGV[5], 'KILLED ' .. new_epoch .. ' ' .. new_ver)
return {1, new_epoch, new_ver, tostring(now), state, ''}
