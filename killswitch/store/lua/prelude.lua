-- The prelude of every script that changes a node's state: bounded integer parsing and the audit
-- chain. audit_append(stream, head, fields) appends one entry whose `hash` is
-- sha256(canonical(seq, prev, fields)) and moves the chain head (seq, hash, id), so a removed,
-- inserted, altered or trimmed entry, and a deleted tail, break the chain `audit --verify` walks.
-- canonical: for each (name, value) pair in order, `<bytes>:<name><bytes>:<value>`, starting
-- with seq and prev; `killswitch.core.proof.auditchain` computes the same bytes.
-- Redis Lua has no sha256 (only sha1hex), so it is written out here on the `bit` library.
local function ks_sha256(msg)
  local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
  local ror, rshift, lshift, tobit = bit.ror, bit.rshift, bit.lshift, bit.tobit
  local k = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2}
  local h0, h1, h2, h3 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
  local h4, h5, h6, h7 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  local len = #msg
  local bits = len * 8
  msg = msg .. '\128' .. string.rep('\0', (55 - len) % 64)
  -- 64-bit big-endian length; messages here are far below 2^32 bytes
  local hi = math.floor(bits / 4294967296)
  local lo = bits % 4294967296
  msg = msg .. string.char(
    math.floor(hi / 16777216) % 256, math.floor(hi / 65536) % 256,
    math.floor(hi / 256) % 256, hi % 256,
    math.floor(lo / 16777216) % 256, math.floor(lo / 65536) % 256,
    math.floor(lo / 256) % 256, lo % 256)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = string.byte(msg, chunk + i * 4, chunk + i * 4 + 3)
      w[i] = tobit(lshift(a, 24) + lshift(b, 16) + lshift(c, 8) + d)
    end
    for i = 16, 63 do
      local x, y = w[i - 15], w[i - 2]
      local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
      local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
      w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for i = 0, 63 do
      local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(band(e, f), band(bnot(e), g))
      local t1 = tobit(h + S1 + ch + k[i + 1] + w[i])
      local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      local t2 = tobit(S0 + maj)
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    h0, h1, h2, h3 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d)
    h4, h5, h6, h7 = tobit(h4 + e), tobit(h5 + f), tobit(h6 + g), tobit(h7 + h)
  end
  return bit.tohex(h0) .. bit.tohex(h1) .. bit.tohex(h2) .. bit.tohex(h3) ..
    bit.tohex(h4) .. bit.tohex(h5) .. bit.tohex(h6) .. bit.tohex(h7)
end

-- Lua's tostring() prints 2^53 - 1 as 9.007199254741e+15: integers are formatted exactly.
local function ks_str(v)
  if type(v) == 'number' and v == math.floor(v) and math.abs(v) <= 9007199254740991 then
    return string.format('%d', v)
  end
  return tostring(v)
end

local function ks_canon(pairs_list)
  local out = {}
  for i = 1, #pairs_list, 2 do
    local name, value = tostring(pairs_list[i]), tostring(pairs_list[i + 1])
    out[#out + 1] = #name .. ':' .. name .. #value .. ':' .. value
  end
  return table.concat(out)
end

-- A key killswitch owns that holds another type (written by hand) is junk: it is deleted so the
-- change that must happen (a kill above all) still happens. Returns the type found, or nil.
local function ks_own_type(key, want)
  local found = redis.call('TYPE', key).ok
  if found ~= want and found ~= 'none' then
    redis.call('DEL', key)
    return found
  end
  return nil
end

-- fields: a flat list name, value, name, value, ... (values already strings or numbers).
-- Returns the new entry's stream ID. Junk in the head never stops the append: the chain then
-- starts over visibly (verify names the break) and the state change is still recorded.
local function audit_append(stream, head, fields)
  local bad_stream, bad_head = ks_own_type(stream, 'stream'), ks_own_type(head, 'hash')
  local h = redis.call('HMGET', head, 'seq', 'hash')
  local seq = 0
  if h[1] and string.match(h[1], '^%d+$') and #h[1] <= 15 then seq = tonumber(h[1]) end
  local prev = h[2] or ''
  local entry = {'seq', ks_str(seq + 1), 'prev', prev}
  for i = 1, #fields do entry[#entry + 1] = ks_str(fields[i]) end
  if bad_stream or bad_head then
    entry[#entry + 1] = 'repaired'
    entry[#entry + 1] = 'audit keys of the wrong type deleted: ' .. tostring(bad_stream) ..
      ',' .. tostring(bad_head)
  end
  local digest = ks_sha256(ks_canon(entry))
  entry[#entry + 1] = 'hash'
  entry[#entry + 1] = digest
  local id = redis.call('XADD', stream, '*', unpack(entry))
  redis.call('HSET', head, 'seq', ks_str(seq + 1), 'hash', digest, 'id', id)
  return id
end

-- A stored count or epoch, or `default` when the value is not a plain non-negative integer
-- at most 2^53 - 1 (what a Lua number and a JSON reader hold exactly): junk such as
-- "1e29", "-3", "7.5" or 30 digits never reaches arithmetic.
local KS_INT_MAX = 9007199254740991
local function ks_uint(s, default)
  if type(s) ~= 'string' or #s == 0 or #s > 16 or not string.match(s, '^%d+$') then
    return default
  end
  local n = tonumber(s)
  if n > KS_INT_MAX then return default end
  return n
end
