-- One atomic read of a node: server time first, then the state, the aggregator's view, the
-- leader lease, whether a roster is stored (as a set: junk of another type reads as none), and for each roster host its report, its
-- confirmation and (when asked) its new flow entries. Read-only; every key is one node's
-- (one hash slot), so it runs the same on a single Redis and on Redis Cluster.
-- A key of the wrong type (written by hand) reads as empty instead of failing the whole read,
-- so `kill` and `status` work whatever junk is in Redis; the count of such keys is returned.
--
-- KEYS: state, aggregator view, leader, roster, scopes, seen-hosts set, pending signed arm
-- request, then per host: report, confirm, flow
-- The scopes hash (scoped kills) is returned last, after every host.
-- ARGV: with_flows ("1"/"0"), then per host the last flow ID seen ("" = from the start)
-- Returns {time, state, view, leader, roster exists, per host..., leader PTTL, wrong types,
-- seen hosts, pending request, scopes}
local wrong = 0
local function safe(empty, ...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    wrong = wrong + 1
    return empty
  end
  return r
end
local t = redis.call('TIME')
local leader = safe('', 'GET', KEYS[3])
local out = {t, safe({}, 'HGETALL', KEYS[1]), safe({}, 'HGETALL', KEYS[2]),
             leader or '', (redis.call('TYPE', KEYS[4]).ok == 'set') and 1 or 0}
local with_flows = ARGV[1] == '1'
local n = (#KEYS - 7) / 3
for i = 0, n - 1 do
  local k = 8 + 3 * i
  out[#out + 1] = safe({}, 'HGETALL', KEYS[k])
  out[#out + 1] = safe({}, 'HGETALL', KEYS[k + 1])
  if with_flows then
    local after = ARGV[2 + i]
    local from = '-'
    if after ~= nil and after ~= '' then from = '(' .. after end
    out[#out + 1] = safe({}, 'XRANGE', KEYS[k + 2], from, '+')
  end
end
out[#out + 1] = redis.call('PTTL', KEYS[3])
local seen = safe({}, 'SMEMBERS', KEYS[6])
local pending = safe({}, 'HGETALL', KEYS[7])
local scopes = safe({}, 'HGETALL', KEYS[5])
out[#out + 1] = wrong
out[#out + 1] = seen
out[#out + 1] = pending
out[#out + 1] = scopes
return out
