-- A scoped kill (one host, or one symbol on every host) or its signed lift, audited and
-- announced. The node state is not touched: the rest of the node trades on.
-- Runs after prelude.lua (ks_uint, ks_str, audit_append).
-- KEYS: 1 scopes hash, 2 audit stream, 3 node state, 4 audit chain head, 5 pending request
-- ARGV: 1 op ("kill" | "arm"), 2 kind ("host" | "symbol"), 3 value, 4 actor, 5 reason,
--       6 approvers (comma separated, arm only), 7 events channel,
--       arm only (the two operators' signed request, see core/armproof.py):
--       8 lifted node epoch, 9 lifted node ver, 10 lifted scopes version, 11 expires ms
--       (server time), 12 proof, 13 ceiling: a stored epoch above it counts as 0 (as arm.lua),
--       14 cause of a kill ("" none: an operator's; "bypass": the host's network fence)
-- Returns {changed, scope ver, now_ms, refusal ("" | "moved" | "expired")}. A kill of an
-- active scope bumps the version so every host proves it again (like killing a killed node);
-- lifting an absent scope changes nothing. A lift whose request no longer matches the node
-- (a kill, an arm, another scoped kill since it was signed) or expired is refused, audited.
-- A lift leaves its proof in field `lift:<kind>:<value>`: each host verifies it before it
-- stops enforcing the scope. A new kill of the scope removes the proof it voids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local field = ARGV[2] .. ':' .. ARGV[3]
local exists = redis.call('HEXISTS', KEYS[1], field) == 1
local cur_ver = ks_uint(redis.call('HGET', KEYS[1], '_ver'), 0)
if ARGV[1] == 'arm' and not exists then
  return {0, cur_ver, ks_str(now), ''}
end
local node = redis.call('HMGET', KEYS[3], 'state', 'epoch', 'ver')
local proof_sha1 = ''
if ARGV[1] == 'arm' then
  local epoch = ks_uint(node[2], 0)
  local ceiling = ks_uint(ARGV[13], 0)
  if ceiling > 0 and epoch > ceiling then epoch = 0 end
  local why = ''
  if epoch ~= ks_uint(ARGV[8], -1) or ks_uint(node[3], 0) ~= ks_uint(ARGV[9], -1)
     or cur_ver ~= ks_uint(ARGV[10], -1) then
    why = 'moved'
  elseif now > ks_uint(ARGV[11], 0) then
    why = 'expired'
  end
  if why ~= '' then
    audit_append(KEYS[2], KEYS[4], {'action', 'refused', 'attempt', 'arm_' .. ARGV[2],
      'actor', ARGV[4], 'reason', ARGV[5], 'approvers', ARGV[6], 'scope', field,
      'refused', why, 'scope_ver', cur_ver, 'ts_ms', now})
    return {0, cur_ver, ks_str(now), why}
  end
  proof_sha1 = redis.sha1hex(ARGV[12])
  redis.call('DEL', KEYS[5])
end
local ver = redis.call('HINCRBY', KEYS[1], '_ver', 1)
if ARGV[1] == 'kill' then
  local rec = {ver = ver, ts_ms = now, actor = ARGV[4], reason = ARGV[5]}
  if (ARGV[14] or '') ~= '' then rec.cause = ARGV[14] end
  redis.call('HSET', KEYS[1], field, cjson.encode(rec))
  redis.call('HDEL', KEYS[1], 'lift:' .. field)
else
  redis.call('HDEL', KEYS[1], field)
  redis.call('HSET', KEYS[1], 'lift:' .. field, ARGV[12])
end
local entry = {'action', ARGV[1] .. '_' .. ARGV[2], 'actor', ARGV[4],
  'reason', ARGV[5], 'approvers', ARGV[6], 'scope', field, 'scope_ver', ver, 'ts_ms', now,
  'state', node[1] or '', 'epoch', node[2] or '0'}
if (ARGV[14] or '') ~= '' then
  entry[#entry + 1] = 'cause'
  entry[#entry + 1] = ARGV[14]
end
if proof_sha1 ~= '' then
  entry[#entry + 1] = 'proof_sha1'
  entry[#entry + 1] = proof_sha1
end
audit_append(KEYS[2], KEYS[4], entry)
redis.call('PUBLISH', ARGV[7], 'SCOPE ' .. ver)
return {1, ver, ks_str(now), ''}
