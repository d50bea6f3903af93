-- A node's signed, staged rollout: record a first signature (pending), complete a step with two
-- signatures, mark a promoted rollout complete, or note the release an arm approved. Every
-- change and every refusal is audited here, in the same call. Nobody trusts what this script
-- checks: the aggregator and `arm` verify the stored signatures themselves; this only keeps an
-- honest operator from completing a step that is no longer current.
-- Runs after prelude.lua (ks_uint, ks_str, ks_own_type, audit_append).
-- KEYS: 1 rollout record, 2 pending step, 3 audit stream, 4 audit chain head
-- ARGV: 1 op, then per op:
--   request  2 step, 3 seq, 4 message, 5 signature, 6 principal, 7 expires ms, 8 reason
--   step     2 step, 3 seq, 4 proof, 5 approvers (comma separated), 6 expires ms, 7 from,
--            8 to, 9 hosts (comma separated), 10 reason
--   complete 2 seq, 3 to, 4 actor
--   approve  2 release, 3 actor
-- Returns {changed (1|0), now_ms, refusal ("" | "moved" | "expired" | "current")}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
ks_own_type(KEYS[1], 'hash')
ks_own_type(KEYS[2], 'hash')
local cur = redis.call('HMGET', KEYS[1], 'seq', 'phase', 'to', 'approved')
local seq, phase = ks_uint(cur[1], 0), cur[2] or ''
local active = phase == 'canary' or phase == 'promoted'
local op = ARGV[1]

local function refuse(attempt, actor, reason, why)
  audit_append(KEYS[3], KEYS[4], {'action', 'refused', 'attempt', attempt, 'actor', actor,
    'reason', reason, 'refused', why, 'rollout', ARGV[3] or '', 'ts_ms', now})
  return {0, ks_str(now), why}
end

-- Whether `step` of rollout `n` can start from the stored record.
local function current(step, n)
  if step == 'begin' then return seq + 1 == n and not active end
  if step == 'promote' then return seq == n and phase == 'canary' end
  if step == 'abort' then return seq == n and active end
  return false
end

if op == 'request' then
  local step, n, expires = ARGV[2], ks_uint(ARGV[3], -1), ks_uint(ARGV[7], 0)
  if not current(step, n) then return refuse('rollout_' .. step, ARGV[6], ARGV[8], 'moved') end
  if expires <= now then return refuse('rollout_' .. step, ARGV[6], ARGV[8], 'expired') end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'msg', ARGV[4], 'sig', ARGV[5], 'principal', ARGV[6],
    'expires_ms', ks_str(expires), 'ts_ms', ks_str(now))
  redis.call('PEXPIRE', KEYS[2], expires - now)
  audit_append(KEYS[3], KEYS[4], {'action', 'rollout_request', 'actor', ARGV[6],
    'reason', ARGV[8], 'step', step, 'rollout', n, 'ts_ms', now, 'expires_ms', expires})
  return {1, ks_str(now), ''}
end

if op == 'step' then
  local step, n, approvers = ARGV[2], ks_uint(ARGV[3], -1), ARGV[5]
  local actor = string.gsub(approvers, ',', '+')
  if not current(step, n) then return refuse('rollout_' .. step, actor, ARGV[10], 'moved') end
  if now > ks_uint(ARGV[6], 0) then
    return refuse('rollout_' .. step, actor, ARGV[10], 'expired')
  end
  if step == 'begin' then
    redis.call('HDEL', KEYS[1], 'promote', 'promote_by', 'abort', 'abort_by', 'done_ms')
    redis.call('HSET', KEYS[1], 'seq', ks_str(n), 'phase', 'canary', 'from', ARGV[7],
      'to', ARGV[8], 'hosts', ARGV[9], 'reason', ARGV[10], 'begin', ARGV[4],
      'begin_by', approvers, 'ts_ms', ks_str(now))
  elseif step == 'promote' then
    redis.call('HSET', KEYS[1], 'phase', 'promoted', 'promote', ARGV[4],
      'promote_by', approvers, 'ts_ms', ks_str(now))
  else
    redis.call('HSET', KEYS[1], 'phase', 'aborted', 'abort', ARGV[4], 'abort_by', approvers,
      'ts_ms', ks_str(now), 'done_ms', ks_str(now))
  end
  redis.call('DEL', KEYS[2])
  audit_append(KEYS[3], KEYS[4], {'action', 'rollout_' .. step, 'actor', actor,
    'reason', ARGV[10], 'approvers', approvers, 'rollout', n, 'from', ARGV[7], 'to', ARGV[8],
    'hosts', ARGV[9], 'ts_ms', now, 'proof_sha1', redis.sha1hex(ARGV[4])})
  return {1, ks_str(now), ''}
end

if op == 'complete' then
  if seq ~= ks_uint(ARGV[2], -1) or phase ~= 'promoted' or cur[3] ~= ARGV[3] then
    return {0, ks_str(now), 'moved'}  -- another instance completed it, or an operator aborted
  end
  redis.call('HSET', KEYS[1], 'phase', 'complete', 'approved', ARGV[3], 'ts_ms', ks_str(now),
    'done_ms', ks_str(now))
  audit_append(KEYS[3], KEYS[4], {'action', 'rollout_complete', 'actor', ARGV[4],
    'reason', 'every roster host runs the promoted release', 'rollout', seq, 'to', ARGV[3],
    'ts_ms', now})
  return {1, ks_str(now), ''}
end

if op == 'approve' then
  -- An arm approves the release its roster runs only when none is approved yet: after that
  -- only a completed rollout moves it.
  if active or (cur[4] or '') ~= '' or ARGV[2] == '' then return {0, ks_str(now), 'current'} end
  redis.call('HSET', KEYS[1], 'approved', ARGV[2])
  audit_append(KEYS[3], KEYS[4], {'action', 'release_approved', 'actor', ARGV[3],
    'reason', 'the release the roster ran when the signed arm executed', 'release', ARGV[2],
    'ts_ms', now})
  return {1, ks_str(now), ''}
end
return redis.error_reply('rollout.lua: unknown op ' .. tostring(op))
