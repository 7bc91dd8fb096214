-- The extend-only renewal, atomic on the server.
--
-- KEYS[1] the session hash, KEYS[2] the expiry set
-- ARGV[1] the session id (hex), ARGV[2] the new expires_at (ms),
-- ARGV[3] now (ms), ARGV[4] the new Redis expiry (ms: expires_at + retention)
--
-- Moves expires_at to ARGV[2] only if that is later than the stored value
-- and the stored value is still in the future (never backwards, never
-- reviving). Returns the stored expires_at afterwards, nil when there is no
-- session, or the stored text unchanged when it is not a time (the caller
-- reports it as malformed).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local stored = redis.call('HGET', KEYS[1], 'expires_at')
if not stored then
  return ''
end
local stored_ms = millis(stored)
if stored_ms and tonumber(ARGV[2]) > stored_ms and stored_ms > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  return ARGV[2]
end
return stored
