-- Keep failed entries pending and record, durably, their attempt counts and when they may
-- run again, for the lease holder only. Values are set, never incremented, so running it
-- twice (a reply lost) changes nothing the second time.
--
-- KEYS[1] state hash, KEYS[2] lease
-- ARGV[1] lease token, ARGV[2] delay in ms, ARGV[3..] triples: entry id, attempts, starts
-- Returns 1, or 0 when the lease is not held.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local retry_at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  redis.call('HSET', KEYS[1], 'r:' .. id, retry_at)
  if tonumber(ARGV[i + 1]) > 0 then
    redis.call('HSET', KEYS[1], 'a:' .. id, ARGV[i + 1])
  end
  if tonumber(ARGV[i + 2]) > 0 then
    redis.call('HSET', KEYS[1], 's:' .. id, ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[1], 's:' .. id)
  end
end
return 1
