-- Purges one batch of sessions that expired before a given time.
--
-- KEYS[1] the expiry set, KEYS[2] the index registry
-- ARGV[1] the session key prefix, ARGV[2] before (ms, exclusive), ARGV[3] the
-- batch size
--
-- Returns {sessions purged, members examined}; the caller repeats while a
-- whole batch was examined. A session whose hash says it lives on (the set
-- lagged behind) is re-scored and kept; one whose hash is not a record is
-- purged with the rest.
local ids = redis.call('ZRANGE', KEYS[1], '-inf', '(' .. ARGV[2], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
local before = tonumber(ARGV[2])
local purged = 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local stored = redis.pcall('HGET', key, 'expires_at')
  local expires_at = millis(stored)
  if expires_at and expires_at >= before then
    redis.call('ZADD', KEYS[1], stored, id)
  else
    redis.call('DEL', key)
    forget(KEYS[1], KEYS[2], id)
    purged = purged + 1
  end
end
return {purged, #ids}
