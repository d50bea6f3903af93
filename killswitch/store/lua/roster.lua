-- Store the node's roster; audit only when it changes.
-- KEYS: 1 roster set, 2 audit stream
-- ARGV: 1 actor, 2.. host names (sorted by the caller)
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
redis.call('XADD', KEYS[2], '*', 'action', 'roster', 'actor', ARGV[1],
  'reason', 'roster set to ' .. table.concat(wanted, ','), 'ts_ms', now,
  'prev', table.concat(current, ','))
return 1
