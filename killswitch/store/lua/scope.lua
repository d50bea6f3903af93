-- A scoped kill (one host, or one symbol on every host) or its lift, audited and announced.
-- The node state is not touched: the rest of the node trades on.
-- Runs after prelude.lua (audit_append).
-- KEYS: 1 scopes hash, 2 audit stream, 3 node state, 4 audit chain head
-- ARGV: 1 op ("kill" | "arm"), 2 kind ("host" | "symbol"), 3 value, 4 actor, 5 reason,
--       6 approvers (comma separated, arm only), 7 events channel
-- Returns {changed, scope ver, now_ms}. A kill of an active scope bumps the version so every
-- host proves it again (like killing a killed node); lifting an absent scope changes nothing.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local field = ARGV[2] .. ':' .. ARGV[3]
local exists = redis.call('HEXISTS', KEYS[1], field) == 1
if ARGV[1] == 'arm' and not exists then
  return {0, tonumber(redis.call('HGET', KEYS[1], '_ver') or '0'), tostring(now)}
end
local ver = redis.call('HINCRBY', KEYS[1], '_ver', 1)
if ARGV[1] == 'kill' then
  redis.call('HSET', KEYS[1], field, cjson.encode({ver = ver, ts_ms = now, actor = ARGV[4],
    reason = ARGV[5]}))
else
  redis.call('HDEL', KEYS[1], field)
end
local node = redis.call('HMGET', KEYS[3], 'state', 'epoch')
audit_append(KEYS[2], KEYS[4], {'action', ARGV[1] .. '_' .. ARGV[2], 'actor', ARGV[4],
  'reason', ARGV[5], 'approvers', ARGV[6], 'scope', field, 'scope_ver', ver, 'ts_ms', now,
  'state', node[1] or '', 'epoch', node[2] or '0'})
redis.call('PUBLISH', ARGV[7], 'SCOPE ' .. ver)
return {1, ver, tostring(now)}
