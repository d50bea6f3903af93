-- One atomic read of a node: server time first, then the state, the aggregator's view, the
-- leader lease, whether a roster is stored, and for each roster host its report, its
-- confirmation and (when asked) its new flow entries. Read-only; every key is one node's
-- (one hash slot), so it runs the same on a single Redis and on Redis Cluster.
--
-- KEYS: state, aggregator view, leader, roster, scopes, then per host: report, confirm, flow
-- The scopes hash (scoped kills) is returned last, after every host.
-- ARGV: with_flows ("1"/"0"), then per host the last flow ID seen ("" = from the start)
local t = redis.call('TIME')
local out = {t, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
             redis.call('GET', KEYS[3]) or '', redis.call('EXISTS', KEYS[4])}
local with_flows = ARGV[1] == '1'
local n = (#KEYS - 5) / 3
for i = 0, n - 1 do
  local k = 6 + 3 * i
  out[#out + 1] = redis.call('HGETALL', KEYS[k])
  out[#out + 1] = redis.call('HGETALL', KEYS[k + 1])
  if with_flows then
    local after = ARGV[2 + i]
    local from = '-'
    if after ~= nil and after ~= '' then from = '(' .. after end
    out[#out + 1] = redis.call('XRANGE', KEYS[k + 2], from, '+')
  end
end
out[#out + 1] = redis.call('HGETALL', KEYS[5])
return out
