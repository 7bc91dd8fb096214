-- Shared by the scripts that remove sessions (prepended to each).
--
-- Removes session `id` from the store's bookkeeping: from every owner index
-- its entry in the index registry names, that entry, and the expiry set.
-- The session hash itself is the caller's to delete (or already gone).
local function forget(expiry, registry, id)
  local entry = redis.call('HGET', registry, id)
  if entry then
    local ok, names = pcall(cjson.decode, entry)
    if ok and type(names) == 'table' then
      for _, name in ipairs(names) do
        if type(name) == 'string' then
          redis.call('ZREM', name, id)
        end
      end
    end
    redis.call('HDEL', registry, id)
  end
  redis.call('ZREM', expiry, id)
end

-- Whether `a` sorts before or equal to `b` byte by byte, as Redis orders
-- members of equal score (Lua's own `<` follows the server's locale).
local function bytes_at_most(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a <= #b
end

-- A stored time in whole milliseconds, or nil when it is not one.
local function millis(text)
  if type(text) == 'string' and string.match(text, '^%d+$') then
    return tonumber(text)
  end
  return nil
end
