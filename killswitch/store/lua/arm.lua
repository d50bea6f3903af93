-- Arm the node with a new epoch above every epoch stored or reported by a host (`floor`).
-- An ARMED node whose epoch is at least the floor is left alone (nothing to do).
-- Runs after prelude.lua (ks_uint, ks_str, audit_append).
-- KEYS: 1 node state, 2 audit stream, 3 audit chain head
-- ARGV: 1 actor, 2 reason, 3 approvers (comma separated), 4 floor epoch, 5 events channel,
--       6 ceiling: a stored epoch above it is junk and ignored ("0": none), as in kill.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
ks_own_type(KEYS[1], 'hash')
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'ver')
local state = cur[1] or ''
local epoch = ks_uint(cur[2], 0)
local ver = ks_uint(cur[3], 0)
local floor = ks_uint(ARGV[4], 0)
local ceiling = ks_uint(ARGV[6], 0)
if ceiling > 0 and epoch > ceiling then epoch = 0 end
if state == 'ARMED' and epoch >= floor and epoch > 0 then
  return {0, epoch, ver, ks_str(now), state}
end
local new_epoch = math.max(epoch, floor) + 1
local new_ver = ver + 1
redis.call('HSET', KEYS[1], 'state', 'ARMED', 'epoch', ks_str(new_epoch), 'ver', ks_str(new_ver),
  'reason', ARGV[2], 'actor', ARGV[1], 'cause', '', 'approvers', ARGV[3], 'ts_ms', ks_str(now),
  'armed_ms', ks_str(now))
audit_append(KEYS[2], KEYS[3], {'action', 'arm', 'actor', ARGV[1], 'reason', ARGV[2],
  'approvers', ARGV[3], 'epoch', new_epoch, 'ver', new_ver, 'ts_ms', now,
  'prev_state', state, 'prev_epoch', epoch})
redis.call('PUBLISH', ARGV[5], 'ARMED ' .. ks_str(new_epoch) .. ' ' .. ks_str(new_ver))
return {1, new_epoch, new_ver, ks_str(now), state}
