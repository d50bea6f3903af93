-- Complete a two-person arm: store the signed proof, the new epoch and the signed roster.
-- Refused (nothing written but the audited refusal) when the node moved since the request was
-- signed (its epoch or ver changed: a kill, another arm), when the request expired (server
-- time), or when the signed epoch does not lift the stored one. Gates verify the proof
-- themselves; this script only keeps an honest operator from completing a stale request.
-- Runs after prelude.lua (ks_uint, ks_str, ks_own_type, audit_append).
-- KEYS: 1 node state, 2 audit stream, 3 audit chain head, 4 roster set, 5 pending request
-- ARGV: 1 actor, 2 reason, 3 approvers (comma separated), 4 new epoch, 5 events channel,
--       6 lifted epoch, 7 lifted ver, 8 expires ms (server time), 9 proof,
--       10 ceiling: a stored epoch above it is junk and counts as 0 ("0": none), as in kill.lua,
--       11.. roster hosts
-- Returns {changed, epoch, ver, now_ms, prev_state, refusal ("" | "moved" | "expired")}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
ks_own_type(KEYS[1], 'hash')
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'ver')
local state = cur[1] or ''
local epoch = ks_uint(cur[2], 0)
local ver = ks_uint(cur[3], 0)
local new_epoch = ks_uint(ARGV[4], 0)
local ceiling = ks_uint(ARGV[10], 0)
if ceiling > 0 and epoch > ceiling then epoch = 0 end
local function refuse(why)
  audit_append(KEYS[2], KEYS[3], {'action', 'refused', 'attempt', 'arm', 'actor', ARGV[1],
    'reason', ARGV[2], 'approvers', ARGV[3], 'refused', why, 'epoch', epoch, 'ts_ms', now,
    'prev_state', state})
  return {0, epoch, ver, ks_str(now), state, why}
end
if epoch ~= ks_uint(ARGV[6], -1) or ver ~= ks_uint(ARGV[7], -1) or new_epoch <= epoch then
  return refuse('moved')
end
if now > ks_uint(ARGV[8], 0) then
  return refuse('expired')
end
local new_ver = ver + 1
redis.call('HSET', KEYS[1], 'state', 'ARMED', 'epoch', ks_str(new_epoch), 'ver', ks_str(new_ver),
  'reason', ARGV[2], 'actor', ARGV[1], 'cause', '', 'approvers', ARGV[3], 'ts_ms', ks_str(now),
  'armed_ms', ks_str(now), 'proof', ARGV[9])
local roster = {}
for i = 11, #ARGV do roster[#roster + 1] = ARGV[i] end
if #roster > 0 then  -- the signed roster replaces the stored one (never empty when signed)
  redis.call('DEL', KEYS[4])
  redis.call('SADD', KEYS[4], unpack(roster))
end
redis.call('DEL', KEYS[5])
audit_append(KEYS[2], KEYS[3], {'action', 'arm', 'actor', ARGV[1], 'reason', ARGV[2],
  'approvers', ARGV[3], 'epoch', new_epoch, 'ver', new_ver, 'ts_ms', now,
  'prev_state', state, 'prev_epoch', epoch, 'roster', table.concat(roster, ','),
  'proof_sha1', redis.sha1hex(ARGV[9])})
redis.call('PUBLISH', ARGV[5], 'ARMED ' .. ks_str(new_epoch) .. ' ' .. ks_str(new_ver))
return {1, new_epoch, new_ver, ks_str(now), state, ''}
