-- Complete a two-person arm: store the signed proof, the new epoch and the signed roster.
-- Refused (nothing written) when the node moved since the request was signed (its epoch or
-- ver changed: a kill, another arm), when the request expired (server time), or when the
-- signed epoch does not lift the stored one. Gates verify the proof themselves; this script
-- only keeps an honest operator from completing a request that is no longer current.
-- KEYS: 1 node state, 2 audit stream, 3 roster set, 4 pending request
-- ARGV: 1 actor, 2 reason, 3 approvers (comma separated), 4 new epoch, 5 events channel,
--       6 lifted epoch, 7 lifted ver, 8 expires ms (server time), 9 proof, 10.. roster hosts
-- Returns {changed, epoch, ver, now_ms, prev_state, refusal ("" | "moved" | "expired")}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'ver')
local state = cur[1] or ''
local epoch = tonumber(cur[2]) or 0
local ver = tonumber(cur[3]) or 0
local new_epoch = tonumber(ARGV[4])
if epoch ~= tonumber(ARGV[6]) or ver ~= tonumber(ARGV[7]) or new_epoch <= epoch then
  return {0, epoch, ver, tostring(now), state, 'moved'}
end
if now > tonumber(ARGV[8]) then
  return {0, epoch, ver, tostring(now), state, 'expired'}
end
local new_ver = ver + 1
redis.call('HSET', KEYS[1], 'state', 'ARMED', 'epoch', new_epoch, 'ver', new_ver,
  'reason', ARGV[2], 'actor', ARGV[1], 'cause', '', 'approvers', ARGV[3], 'ts_ms', now,
  'armed_ms', now, 'proof', ARGV[9])
local roster = {}
for i = 10, #ARGV do roster[#roster + 1] = ARGV[i] end
redis.call('DEL', KEYS[3])
redis.call('SADD', KEYS[3], unpack(roster))
redis.call('DEL', KEYS[4])
redis.call('XADD', KEYS[2], '*', 'action', 'arm', 'actor', ARGV[1], 'reason', ARGV[2],
  'approvers', ARGV[3], 'epoch', new_epoch, 'ver', new_ver, 'ts_ms', now,
  'prev_state', state, 'prev_epoch', epoch, 'roster', table.concat(roster, ','))
redis.call('PUBLISH', ARGV[5], 'ARMED ' .. new_epoch .. ' ' .. new_ver)
return {1, new_epoch, new_ver, tostring(now), state, ''}
