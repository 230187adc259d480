-- Record that redelivered entries are about to run (the poison cap counts runs that never
-- finish), for the lease holder only. Values are set, never incremented: safe to repeat.
--
-- KEYS[1] state hash, KEYS[2] lease
-- ARGV[1] lease token, ARGV[2..] pairs: entry id, runs started so far (this one included)
-- Returns 1, or 0 when the lease is not held.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 's:' .. ARGV[i], ARGV[i + 1])
end
return 1
