-- Deletes one session and its index entries.
--
-- KEYS[1] the session hash, KEYS[2] the expiry set, KEYS[3] the index registry
-- ARGV[1] the session id (hex)
--
-- Returns 1 when the session hash existed, 0 otherwise.
local existed = redis.call('DEL', KEYS[1])
forget(KEYS[2], KEYS[3], ARGV[1])
return existed
