-- One sidecar round trip: report counts, optionally confirm an applied state, read the node state.
-- This single call is the host's lease: the gate stays open only while these succeed.
-- KEYS: 1 host report, 2 host flow stream, 3 host confirm, 4 node's seen-hosts set (the
--       sidecar's own keys and the one set it adds itself to)
-- ARGV: 1 boot id, 2 allowed (cumulative since boot), 3 blocked (cumulative),
--       4 acked allowed, 5 acked blocked (cumulative values of this boot's last acknowledged flush),
--       6 max_epoch, 7 view, 8 gate, 9 orders_per_s, 10 stale_after_ms, 11 regression,
--       12 flow retention ms, 13 confirm epoch (0: none), 14 confirm ver, 15 confirms channel,
--       16 host, 17 version, 18 pid, 19 held epoch (0: none),
--       20, 21 epoch and ver this host already confirmed (never confirmed twice),
--       22 cancels (cumulative), 23 orders refused by a local limit (cumulative, part of blocked),
--       24, 25 acked cancels and limit refusals,
--       26 the node state key, 27 the scopes hash key (returned after the node state: scoped
--          kills are read on the same lease), both read only and not declared: Redis ACLs
--          treat every declared EVAL key as written, and a sidecar's credential must not be
--          able to write them (same hash slot as KEYS, so Redis Cluster routes the script),
--       28 digest (sha1) of the arm proof this host already holds, 29 why the host refuses
--          the current arm ("" none: unsigned, bad_signature, unlisted, ...),
--       30.. extra report fields as name, value pairs
-- The reply: state, epoch, ver, reason, now, closed confirm, proof digest, proof, the kill's
-- fence flag ("1": `kill --fence`), the boot and pid that wrote the host's report before this
-- call (a second live process claiming the host's name), then the scopes hash as name,
-- value pairs.
-- The proof (the last signed arm) is returned only when its digest differs from ARGV[28]:
-- the host verifies it once per change, never per order and never per round trip. Likewise
-- the scopes' lift proofs (`lift:*` fields) are returned only when the scopes `_ver` differs
-- from the `scope_ver` this host reports (in the extra fields): it acts on them only then.
-- A held epoch means: a kill notice for it closed this host's gate before this call, and the
-- host recorded (epoch, KILLED) in its local state first. A KILLED read at exactly that epoch
-- is then confirmed in this same call: the host provably blocks and remembers it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local boot = ARGV[1]
local allowed = tonumber(ARGV[2])
local blocked = tonumber(ARGV[3])

-- Counts are cumulative, so a flush whose reply was lost and is sent again adds nothing twice.
-- If the report vanished (Redis lost its data) fall back to what this boot last saw acknowledged.
local cancels = tonumber(ARGV[22]) or 0
local limited = tonumber(ARGV[23]) or 0
local prev = redis.call('HMGET', KEYS[1], 'boot', 'allowed', 'blocked', 'cancels', 'limited',
  'pid')
if prev[1] ~= boot then
  redis.call('SADD', KEYS[4], ARGV[16])  -- once per boot: how the aggregator finds off-roster hosts
end
local prev_allowed, prev_blocked, prev_cancels, prev_limited
if prev[1] == boot then
  prev_allowed = tonumber(prev[2]) or 0
  prev_blocked = tonumber(prev[3]) or 0
  prev_cancels = tonumber(prev[4]) or 0
  prev_limited = tonumber(prev[5]) or 0
else
  prev_allowed = tonumber(ARGV[4])
  prev_blocked = tonumber(ARGV[5])
  prev_cancels = tonumber(ARGV[24]) or 0
  prev_limited = tonumber(ARGV[25]) or 0
end
local d_allowed = math.max(allowed - prev_allowed, 0)
local d_blocked = math.max(blocked - prev_blocked, 0)
local d_cancels = math.max(cancels - prev_cancels, 0)
local d_limited = math.max(limited - prev_limited, 0)
if d_allowed > 0 or d_blocked > 0 or d_cancels > 0 then
  local entry = {'a', d_allowed, 'b', d_blocked}
  if d_cancels > 0 then table.insert(entry, 'c'); table.insert(entry, d_cancels) end
  if d_limited > 0 then table.insert(entry, 'l'); table.insert(entry, d_limited) end
  redis.call('XADD', KEYS[2], 'MINID', '~', tostring(now - tonumber(ARGV[12])), '*',
    unpack(entry))
end
if #ARGV >= 30 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 30))
end

redis.call('HSET', KEYS[1],
  'cancels', cancels, 'limited', limited,
  'boot', boot, 'allowed', allowed, 'blocked', blocked, 'ts_ms', now,
  'max_epoch', ARGV[6], 'view', ARGV[7], 'gate', ARGV[8], 'orders_per_s', ARGV[9],
  'stale_after_ms', ARGV[10], 'regression', ARGV[11], 'version', ARGV[17], 'pid', ARGV[18],
  'proof', ARGV[29])

local s = redis.call('HMGET', ARGV[26], 'state', 'epoch', 'ver', 'reason', 'proof', 'fence')
local proof = s[5] or ''
local digest = redis.sha1hex(proof)
if digest == ARGV[28] then proof = '' end
local confirm_epoch, confirm_ver, view = tonumber(ARGV[13]), ARGV[14], ARGV[7]
local closed_confirm = '0'
if ARGV[19] ~= '0' and s[1] == 'KILLED' and s[2] == ARGV[19]
   and (s[2] ~= ARGV[20] or s[3] ~= ARGV[21]) then
  confirm_epoch, confirm_ver, view, closed_confirm = tonumber(s[2]), s[3], 'KILLED', '1'
  if confirm_epoch > tonumber(ARGV[6]) then
    -- the host applies this read on reply; report what it will enforce, not what it had
    redis.call('HSET', KEYS[1], 'max_epoch', confirm_epoch, 'view', 'KILLED', 'gate', 'closed')
  end
end
if confirm_epoch > 0 then
  redis.call('HSET', KEYS[3], 'host', ARGV[16], 'epoch', confirm_epoch, 'ver', confirm_ver,
    'view', view, 'applied_ms', now, 'blocked', blocked)
  redis.call('PUBLISH', ARGV[15], ARGV[16] .. ' ' .. confirm_epoch .. ' ' .. confirm_ver)
end
-- The flight recorder's frozen file of a kill (reported once it exists) belongs to that
-- kill's confirmation; a confirmation of another epoch names none. (HMGET, HSET and PUBLISH
-- only: the commands a sidecar's ACL user has.) A file newly named is published on the
-- confirms channel too, so a `kill` waiting for it wakes at once.
local rec = redis.call('HMGET', KEYS[1], 'recorder_epoch', 'recorder_file', 'recorder_digest',
  'recorder_complete')
local named = redis.call('HMGET', KEYS[3], 'epoch', 'recorder_file')
if rec[2] and rec[2] ~= '' and named[1] == rec[1] then
  redis.call('HSET', KEYS[3], 'recorder_file', rec[2], 'recorder_digest', rec[3] or '',
    'recorder_complete', rec[4] or '0')
  if named[2] ~= rec[2] then
    redis.call('PUBLISH', ARGV[15], ARGV[16] .. ' ' .. rec[1] .. ' recorder')
  end
elseif named[2] and named[2] ~= '' and named[1] ~= rec[1] then
  redis.call('HSET', KEYS[3], 'recorder_file', '', 'recorder_digest', '', 'recorder_complete', '0')
end
local out = {s[1] or '', s[2] or '0', s[3] or '0', s[4] or '', tostring(now), closed_confirm,
  digest, proof, s[6] or '', prev[1] or '', prev[6] or ''}
local scopes = redis.call('HGETALL', ARGV[27])
local applied = redis.call('HMGET', KEYS[1], 'scope_ver')[1]
local same = false
for i = 1, #scopes, 2 do
  if scopes[i] == '_ver' then same = scopes[i + 1] == applied end
end
for i = 1, #scopes, 2 do
  if not (same and string.sub(scopes[i], 1, 5) == 'lift:') then
    table.insert(out, scopes[i])
    table.insert(out, scopes[i + 1])
  end
end
return out
