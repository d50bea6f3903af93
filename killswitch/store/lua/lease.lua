-- The aggregator leader lease of a node: acquire, renew (compare-and-extend) or release.
-- Expiry runs on Redis server time (PX), so no aggregator's clock decides who leads.
-- KEYS: 1 leader key
-- ARGV: 1 token of the caller, 2 ttl ms ("0": release the lease if the caller holds it)
-- Returns {1, holder, pttl} if the caller holds the lease after this call, else {0, holder, pttl}
-- (holder "" when nobody holds it).
local cur = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
if ttl == 0 then
  if cur == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return {0, '', 0}
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, cur, ttl}
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  return {1, ARGV[1], ttl}
end
return {0, cur, redis.call('PTTL', KEYS[1])}
