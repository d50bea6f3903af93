-- The aggregator leader lease of a node: acquire, renew (compare-and-extend) or release.
-- Expiry runs on Redis server time (PX), so no aggregator's clock decides who leads.
-- KEYS: 1 leader key
-- ARGV: 1 token of the caller, 2 ttl ms ("0": release the lease if the caller holds it)
-- Returns {1, holder, pttl, repaired} if the caller holds the lease after this call, else
-- {0, holder, pttl, repaired} (holder "" when nobody holds it). A lease without a TTL, or a
-- leader key of another type, was written by hand and would silence trips forever: it is
-- deleted, and `repaired` says what was found ("" when nothing was wrong).
local repaired = ''
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'string' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
  repaired = 'leader key of type ' .. kind
elseif kind == 'string' and redis.call('PTTL', KEYS[1]) == -1 then
  repaired = 'lease without TTL held by ' .. string.sub(redis.call('GET', KEYS[1]), 1, 80)
  redis.call('DEL', KEYS[1])
end
local cur = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
if ttl == 0 then
  if cur == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return {0, '', 0, repaired}
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, cur, ttl, repaired}
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  return {1, ARGV[1], ttl, repaired}
end
return {0, cur, redis.call('PTTL', KEYS[1]), repaired}
