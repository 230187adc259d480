-- Enqueue one message atomically: deduplicate, number, then add to the stream (or the
-- partition's delay set). Either all of it happens or none of it does.
--
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] idempotency hash, KEYS[4] sequence counter,
-- KEYS[5] the message's view (a hash: encoded message and seq; unused when ARGV[8] is 0)
-- ARGV[1] encoded message
-- ARGV[2] the idempotency record (the message without its arguments)
-- ARGV[3] idempotency ttl in ms (0: no deduplication)
-- ARGV[4] "1" to assign a sequence number
-- ARGV[5] sequence floor used when the counter does not exist ("" : none given)
-- ARGV[6] "1" when a missing counter must be seeded by the caller (returns {2})
-- ARGV[7] delay in ms (0: enqueue now)
-- ARGV[8] lifetime of the view in ms (0: no view)
-- Returns {0, stream id, seq} for a new message, {1, original message, seq, stream id}
-- for a duplicate, {2} when the caller must supply a sequence floor.
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  local existing = redis.call('HMGET', KEYS[3], 'm', 'seq', 'id')
  if existing[1] then
    return {1, existing[1], existing[2] or '', existing[3] or ''}
  end
end

local seq = ''
if ARGV[4] == '1' then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    if ARGV[5] ~= '' then
      redis.call('SET', KEYS[4], ARGV[5])
    elseif ARGV[6] == '1' then
      return {2}
    end
  end
  seq = tostring(redis.call('INCR', KEYS[4]))
end

local id = ''
local delay = tonumber(ARGV[7])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + delay, seq .. '|' .. ARGV[1])
else
  id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'seq', seq)
end

if ttl > 0 then
  redis.call('HSET', KEYS[3], 'm', ARGV[2], 'seq', seq, 'id', id)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
local view_ttl = tonumber(ARGV[8])
if view_ttl > 0 then
  redis.call('HSET', KEYS[5], 'm', ARGV[1], 'seq', seq)
  redis.call('PEXPIRE', KEYS[5], view_ttl)
end
return {0, id, seq}
