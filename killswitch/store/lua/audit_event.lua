-- Append one entry to the node's audit chain: for what no other script records, such as an
-- attempt refused before it reached Redis (who, what, why refused).
-- Runs after prelude.lua (audit_append).
-- KEYS: 1 audit stream, 2 audit chain head
-- ARGV: name, value, name, value, ... (the caller puts `action` first; ts_ms is added here)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = {}
for i = 1, #ARGV do fields[#fields + 1] = ARGV[i] end
fields[#fields + 1] = 'ts_ms'
fields[#fields + 1] = now
return audit_append(KEYS[1], KEYS[2], fields)
