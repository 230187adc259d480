-- Keep a failed head entry pending and hold its partition back until retry_at.
-- The attempt count is durable: it survives worker crashes and restarts.
--
-- KEYS[1] state hash
-- ARGV[1] delay in ms, ARGV[2] "1" to count an attempt for ARGV[4],
-- ARGV[3] new batch limit (0: unchanged), ARGV[4] head entry id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local attempts = tonumber(redis.call('HGET', KEYS[1], 'a:' .. ARGV[4]) or '0')
if ARGV[2] == '1' then
  attempts = redis.call('HINCRBY', KEYS[1], 'a:' .. ARGV[4], 1)
end
redis.call('HSET', KEYS[1], 'retry_at', now + tonumber(ARGV[1]))
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], 'batch_limit', ARGV[3])
end
return attempts
