-- Reads one stretch of an owner's live sessions, in listing order.
--
-- KEYS[1] the owner's index, KEYS[2] the expiry set, KEYS[3] the index registry
-- ARGV[1] the session key prefix, ARGV[2] now (ms), ARGV[3] how many live
-- sessions are wanted, ARGV[4] how many index members to examine at most,
-- ARGV[5] start strictly after this created_at (ms; '' from the start),
-- ARGV[6] ... and this id (hex)
--
-- The index scores each id by created_at; Redis orders equal scores by the
-- member's bytes, which for lowercase hex ids is the ids' byte order: the
-- index order is the listing order (created_at, id).
--
-- Returns {records, last score examined, last id examined, finished} where
-- each record is {id, flat field/value list of its hash}; records whose
-- expires_at is not a time are returned too (the caller reports them).
-- Members whose session hash is gone (expired out of Redis) are dropped from
-- the store's bookkeeping on the way.
local index = KEYS[1]
local now = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])

local start = 0
if ARGV[5] ~= '' then
  local rank = redis.call('ZRANK', index, ARGV[6])
  local score = rank and tonumber(redis.call('ZSCORE', index, ARGV[6]))
  if rank and score == tonumber(ARGV[5]) then
    start = rank + 1
  else
    -- The cursor's member is gone: count what sorts before or at it.
    start = redis.call('ZCOUNT', index, '-inf', '(' .. ARGV[5])
    local ties = redis.call('ZRANGE', index, ARGV[5], ARGV[5], 'BYSCORE')
    for _, id in ipairs(ties) do
      if not bytes_at_most(id, ARGV[6]) then
        break
      end
      start = start + 1
    end
  end
end

local records, dead = {}, {}
local last_score, last_id = '', ''
local examined = 0
local finished = 0
local chunk_size = 64
while #records < wanted and examined < budget do
  local chunk = redis.call('ZRANGE', index, start, start + chunk_size - 1, 'WITHSCORES')
  if #chunk == 0 then
    finished = 1
    break
  end
  local i = 1
  while i < #chunk and #records < wanted and examined < budget do
    local id = chunk[i]
    examined = examined + 1
    last_id, last_score = id, chunk[i + 1]
    local fields = redis.call('HGETALL', ARGV[1] .. id)
    if #fields == 0 then
      dead[#dead + 1] = id
    else
      local expires_at = nil
      for j = 1, #fields, 2 do
        if fields[j] == 'expires_at' then
          expires_at = millis(fields[j + 1])
        end
      end
      if expires_at == nil or expires_at > now then
        records[#records + 1] = {id, fields}
      end
    end
    i = i + 2
    start = start + 1
  end
end

for _, id in ipairs(dead) do
  forget(KEYS[2], KEYS[3], id)
  redis.call('ZREM', index, id)
end
return {records, last_score, last_id, finished}
