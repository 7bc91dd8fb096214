-- Deletes one batch of an owner's sessions (organization or subject).
--
-- KEYS[1] the owner's index, KEYS[2] the expiry set, KEYS[3] the index registry
-- ARGV[1] the session key prefix, ARGV[2] the batch size
--
-- Returns {ids whose session hash existed, members left in the index}; the
-- caller repeats until none are left.
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local deleted = {}
for _, id in ipairs(ids) do
  if redis.call('DEL', ARGV[1] .. id) == 1 then
    deleted[#deleted + 1] = id
  end
  forget(KEYS[2], KEYS[3], id)
  -- In case the registry had no entry naming this index.
  redis.call('ZREM', KEYS[1], id)
end
return {deleted, redis.call('ZCARD', KEYS[1])}
