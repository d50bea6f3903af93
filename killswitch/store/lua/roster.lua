-- Store the node's roster; audit only when it changes.
-- Runs after prelude.lua (audit_append).
-- KEYS: 1 roster set, 2 audit stream, 3 audit chain head
-- ARGV: 1 actor, 2.. host names (sorted by the caller)
-- Returns 0 unchanged, 1 replaced, 2 created: no roster was stored (as a set) before this
-- write, which the caller tells apart from a first store (Redis lost its data).
ks_own_type(KEYS[1], 'set')
local existed = redis.call('EXISTS', KEYS[1]) == 1
local current = redis.call('SMEMBERS', KEYS[1])
table.sort(current)
local wanted = {}
for i = 2, #ARGV do wanted[#wanted + 1] = ARGV[i] end
local same = #current == #wanted
if same then
  for i = 1, #wanted do
    if current[i] ~= wanted[i] then same = false break end
  end
end
if same then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], unpack(wanted))
audit_append(KEYS[2], KEYS[3], {'action', 'roster', 'actor', ARGV[1],
  'reason', 'roster set to ' .. table.concat(wanted, ','), 'ts_ms', now,
  'prev_roster', table.concat(current, ',')})
if existed then return 1 end
return 2
