-- Record a kill of the node and announce it. Killing a killed node keeps its epoch (a new
-- `ver` makes hosts confirm again); otherwise the kill takes a new epoch above every epoch
-- stored or reported by a host (`floor`), so lost or restored Redis data cannot hide it.
-- Runs after prelude.lua (ks_uint, ks_str, audit_append).
-- KEYS: 1 node state, 2 audit stream, 3 aggregator leader lease, 4 audit chain head
-- ARGV: 1 actor, 2 reason, 3 cause, 4 floor epoch, 5 events channel, 6 audit action,
--       7 only if armed ("1": an automatic trip never re-kills or kills an unarmed node),
--       8 fence: a lease token the caller must still hold ("": no fence, an operator's kill),
--       9 ceiling: a stored epoch above it is junk and ignored ("0": none; the caller passes
--         floor + the largest plausible jump, so a hand-written epoch cannot make every
--         host refuse the kill as implausible),
--       10 network fence ("1": `kill --fence`, hosts raise their kill fence; kept by a kill of
--          a killed node without it, cleared by a kill that takes a new epoch without it),
--       11 actor kind ("signed" | "claimed" | "service"; "" or absent: not recorded),
--       12 the signing key's SHA256 fingerprint ("" or absent: none)
-- Returns {changed, epoch, ver, now_ms, prev_state, refusal ("" | "not_armed" | "fenced")}.
-- The fence makes a paused aggregator that wakes up after losing its lease harmless. A refused
-- trip is audited too. Junk in the stored epoch or ver never stops a kill: it counts as 0 and
-- the floor (what hosts report) keeps the new epoch above everything the fleet has seen.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bad_type = ks_own_type(KEYS[1], 'hash')
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'ver')
local state = cur[1] or ''
local epoch = ks_uint(cur[2], 0)
local ver = ks_uint(cur[3], 0)
local floor = ks_uint(ARGV[4], 0)
local ceiling = ks_uint(ARGV[9], 0)
local implausible = ceiling > 0 and epoch > ceiling
if implausible then epoch = 0 end
local function refuse(why)
  audit_append(KEYS[2], KEYS[4], {'action', 'refused', 'attempt', ARGV[6], 'actor', ARGV[1],
    'reason', ARGV[2], 'cause', ARGV[3], 'refused', why, 'epoch', epoch, 'ts_ms', now,
    'prev_state', state})
  return {0, epoch, ver, ks_str(now), state, why}
end
if ARGV[8] ~= '' and redis.pcall('GET', KEYS[3]) ~= ARGV[8] then
  return refuse('fenced')
end
if ARGV[7] == '1' and state ~= 'ARMED' then
  -- an automatic trip of a node that is not armed changes nothing and is routine: not audited
  return {0, epoch, ver, ks_str(now), state, 'not_armed'}
end
local new_epoch
if state == 'KILLED' and epoch >= floor and epoch > 0 then
  new_epoch = epoch
else
  new_epoch = math.max(epoch, floor) + 1
end
local new_ver = ver + 1
if ARGV[10] == '1' then
  redis.call('HSET', KEYS[1], 'fence', '1')
elseif new_epoch ~= epoch then
  redis.call('HDEL', KEYS[1], 'fence')
end
redis.call('HSET', KEYS[1], 'state', 'KILLED', 'epoch', ks_str(new_epoch), 'ver', ks_str(new_ver),
  'reason', ARGV[2], 'actor', ARGV[1], 'cause', ARGV[3], 'ts_ms', ks_str(now),
  'killed_ms', ks_str(now))
local entry = {'action', ARGV[6], 'actor', ARGV[1], 'reason', ARGV[2], 'cause', ARGV[3],
  'epoch', new_epoch, 'ver', new_ver, 'ts_ms', now, 'prev_state', state, 'prev_epoch', epoch}
if ARGV[10] == '1' then
  entry[#entry + 1] = 'fence'
  entry[#entry + 1] = '1'
end
for i, name in ipairs({'actor_kind', 'key'}) do
  if ARGV[10 + i] and ARGV[10 + i] ~= '' then
    entry[#entry + 1] = name
    entry[#entry + 1] = ARGV[10 + i]
  end
end
if bad_type then
  entry[#entry + 1] = 'junk'
  entry[#entry + 1] = 'node state was a ' .. bad_type .. ', replaced'
elseif implausible or (cur[2] and ks_uint(cur[2], nil) == nil) then
  entry[#entry + 1] = 'junk'
  entry[#entry + 1] = 'stored epoch ' .. string.sub(cur[2], 1, 40) .. ' ignored'
end
audit_append(KEYS[2], KEYS[4], entry)
if ARGV[10] == '1' then
  -- hosts raise the kill fence at once, before their next round trip reads `fence`; sent
  -- first, as a host's handler of KILLED writes its state file (an fsync) before the next
  redis.call('PUBLISH', ARGV[5], 'FENCE ' .. ks_str(new_epoch))
end
redis.call('PUBLISH', ARGV[5], 'KILLED ' .. ks_str(new_epoch) .. ' ' .. ks_str(new_ver))
return {1, new_epoch, new_ver, ks_str(now), state, ''}
