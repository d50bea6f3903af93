-- Arm the node with a new epoch above every epoch stored or reported by a host (`floor`).
-- An ARMED node whose epoch is at least the floor is left alone (nothing to do).
-- KEYS: 1 node state, 2 audit stream
-- ARGV: 1 actor, 2 reason, 3 approvers (comma separated), 4 floor epoch, 5 events channel
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'ver')
local state = cur[1] or ''
local epoch = tonumber(cur[2]) or 0
local ver = tonumber(cur[3]) or 0
local floor = tonumber(ARGV[4])
if state == 'ARMED' and epoch >= floor and epoch > 0 then
  return {0, epoch, ver, tostring(now), state}
end
local new_epoch = math.max(epoch, floor) + 1
local new_ver = ver + 1
redis.call('HSET', KEYS[1], 'state', 'ARMED', 'epoch', new_epoch, 'ver', new_ver,
  'reason', ARGV[2], 'actor', ARGV[1], 'cause', '', 'approvers', ARGV[3], 'ts_ms', now,
  'armed_ms', now)
redis.call('XADD', KEYS[2], '*', 'action', 'arm', 'actor', ARGV[1], 'reason', ARGV[2],
  'approvers', ARGV[3], 'epoch', new_epoch, 'ver', new_ver, 'ts_ms', now,
  'prev_state', state, 'prev_epoch', epoch)
redis.call('PUBLISH', ARGV[5], 'ARMED ' .. new_epoch .. ' ' .. new_ver)
return {1, new_epoch, new_ver, tostring(now), state}
